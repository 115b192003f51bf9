"""Classify images with a trained or converted T2T-ViT, or with an exported model on a deployment backend.

    python tools/predict.py PATH [PATH ...] [-c CONFIG] [--weights FILE] [--topk 5] [--batch-size 32]
                            [--output FILE.jsonl [--logits]] [-o Key=Value ...]
    python tools/predict.py PATH [PATH ...] --inference-dir DIR [--backend auto|paddle|onnxruntime|openvino]
                            [--precision fp32|bf16|int8] [--threads N] [--device cpu|gpu [--gpu-id N] [--trt fp32|fp16]] ...

PATH: image files, and folders searched recursively for images (the extensions of t2tvit.dataset.IMG_EXTENSIONS).
Images are read and classified --batch-size at a time with tools/val.py's eval transform. Prints, per image,
`class_id is: N` (as the original repo did), its class name and the top-k probabilities. --weights: a .pdckpt
checkpoint of this repo (its model, size, preprocessing and class names are used: nothing else is needed) or
.pdparams weights (the config's, names from Data.classes); default Global.output_dir/best.pdckpt.
--inference-dir: an exported model (tools/export_model.py) instead, run by a deployment backend
(t2tvit/backends.py, chosen by t2tvit/deploy.py) (auto: the fastest fp32 one installed); its inference.yml
says the rest. A -c / -o that says otherwise than the checkpoint or export is an error (t2tvit/tool_config.py).
The weights used are named on stderr (path, sha256, epoch, model or EMA). Paths and class names that are not
printable (a newline, a control character, a name that is not UTF-8) are printed repr-style.

--output FILE.jsonl writes one JSON object per image, in input order: {"path", "class_id", "class_name",
"topk": [[id, name, prob], ...]}, with "logits" (every class) under --logits. An image that cannot be read gets
{"path", "error"} (and a line on stderr); the run goes on and exits with status 1 at the end. The lines go to
FILE.jsonl.<random>.partial (created exclusively: a planted file or symlink is never written through), each
flushed as soon as its batch is done, and the file is renamed to FILE.jsonl when the run completes: an
interrupted run keeps every finished line, and never leaves a FILE.jsonl that looks whole. FILE.jsonl.lock
refuses a second run on the same --output (naming its pid and host).
"""
import t2tvit.cpu_env  # noqa: F401  (first: sets CPU threads before Paddle loads)
from t2tvit.preempt import exit_on_signals, hold_signals

# run as a command: until main(), a signal while Paddle loads waits, then is one line (not a traceback or
# Paddle's dump)
if __name__ == "__main__":
    hold_signals()
import argparse
import contextlib
import sys

from t2tvit.classify import JsonLines, classify, image_paths
from t2tvit.backends import BACKENDS, PRECISIONS, Predictor
from t2tvit.deploy import create_predictor
from t2tvit.errors import UserError, cli, shown
from t2tvit.quiet import VERBOSE_FLAGS
from t2tvit.sizes import image_hw, parse_size
from t2tvit.tool_config import Loaded, add_weights_args, class_names_for, config_for
from t2tvit.transforms import build_transform


def engine_forward(args):
    """(forward, config, Artifact, notes) of the exported model in --inference-dir on the chosen backend: its
    inference.yml says what it is (export_meta.py); a -c / -o that says otherwise is refused."""
    from t2tvit.export_meta import read
    from t2tvit.runtime import select_device

    art = read(args.inference_dir)
    if args.img_size and parse_size(args.img_size) != image_hw(art.settings["Global.img_size"]):
        raise UserError(f"--img-size: an exported model runs at the size it was exported at "
                        f"({art.settings['Global.img_size']}); export the weights again at the size you want")
    cfg, notes = config_for(args, art, size_flag=False)
    device = select_device(args.device or cfg.Global.device, gpu_id=args.gpu_id)
    gpu_id = args.gpu_id or 0
    if args.trt:
        if device != "gpu" or args.backend not in ("auto", "paddle"):
            raise UserError("--trt runs the paddle backend on GPU: add --device gpu (and --backend paddle)")
        engine = Predictor(args.inference_dir, device, trt=args.trt, max_batch=args.batch_size, gpu_id=gpu_id)
    else:
        engine = create_predictor(args.inference_dir, args.backend, args.precision, args.threads, device, gpu_id)
    print(f"backend: {engine.backend} {engine.precision} on {device}", file=sys.stderr)
    if args.verbose and engine.auto_reason:
        print(f"auto picked {engine.backend}: {engine.auto_reason}", file=sys.stderr)
    return engine, cfg, art, notes


def dynamic_forward(args):
    """(forward, config, Artifact, notes) of the dynamic model with --weights (or the run's best checkpoint)."""
    import paddle

    from t2tvit.runtime import select_device

    for flag in ("backend", "precision", "threads", "trt"):
        if getattr(args, flag) not in (None, "auto", "fp32"):
            raise UserError(f"--{flag} applies to an exported model: add --inference-dir DIR "
                            f"(write one with tools/export_model.py)")
    loaded = Loaded(args)
    select_device(args.device or loaded.cfg.Global.device, gpu_id=args.gpu_id)
    model = loaded.model()

    def forward(images):
        with paddle.no_grad():
            return model(paddle.to_tensor(images)).numpy()

    return forward, loaded.cfg, loaded.art, loaded.notes


@cli
@exit_on_signals()
def main(argv=None, inference_only=False):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("images", nargs="+", help="image files and folders (searched recursively)")
    add_weights_args(ap, weights=not inference_only)
    ap.add_argument("--inference-dir", required=inference_only, default="",
                    help="an exported model (tools/export_model.py) to run instead of --weights")
    ap.add_argument("--backend", choices=("auto",) + BACKENDS, default="auto",
                    help="with --inference-dir: auto (the fastest here, timed at first use), paddle (Paddle "
                         "Inference), onnxruntime or openvino")
    ap.add_argument("--precision", choices=PRECISIONS, default="fp32",
                    help="with --inference-dir: bf16 on paddle / openvino, on CPUs with AVX512_BF16 or AMX; "
                         "int8 on onnxruntime / openvino (export_model.py --int8), on CPUs with AVX2")
    ap.add_argument("--threads", type=int, default=None, help="with --inference-dir: CPU threads (default: all "
                                                              "cores this process may use)")
    ap.add_argument("--device", choices=("auto", "cpu", "gpu"), default=None, help="default: Global.device")
    ap.add_argument(*VERBOSE_FLAGS, action="store_true",
                    help="also show third-party warnings and notes; with --backend auto, say why it picked one")
    ap.add_argument("--trt", choices=("fp32", "fp16"), default=None, help="GPU: run through TensorRT (fp16: the "
                                                                           "t2t_vit_t_* models only)")
    ap.add_argument("--gpu-id", type=int, default=None, help="the GPU to run on (default: 0)")
    ap.add_argument("--topk", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=32, help="images read and classified at a time")
    ap.add_argument("--output", default="", help="write one JSON line per image to this .jsonl file")
    ap.add_argument("--logits", action="store_true", help="with --output: add every class's logit")
    args = ap.parse_args(argv)
    if args.batch_size < 1 or args.topk < 1:
        raise UserError("--batch-size and --topk must be at least 1")
    if args.logits and not args.output:
        raise UserError("--logits adds the logits to --output FILE.jsonl: give --output too")
    forward, cfg, art, notes = (engine_forward if args.inference_dir else dynamic_forward)(args)
    names, why = class_names_for(cfg, art)
    print(art.loaded_line(), file=sys.stderr)
    for note in notes + ([f"{why}: shown as ?"] if why else []):
        print(f"note: {note}", file=sys.stderr)
    transform = build_transform(cfg, "val")
    with JsonLines(args.output) if args.output else contextlib.nullcontext() as out:
        done, failed = classify(image_paths(args.images), transform, forward, names or [], args.topk, args.batch_size,
                                args.logits, out)
        if out:
            out.finish()
    if done + failed == 0:
        raise UserError(f"no images found in {' '.join(map(shown, args.images))}")
    if failed:
        print(f"{failed} of {done + failed} images could not be read (see the lines above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
