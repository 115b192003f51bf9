"""Classify images with a trained or converted T2T-ViT, or with an exported model on a deployment backend.

    python tools/predict.py PATH [PATH ...] [-c CONFIG] [--weights FILE] [--topk 5] [--batch-size 32]
                            [--output FILE.jsonl [--logits]] [-o Key=Value ...]
    python tools/predict.py PATH [PATH ...] --inference-dir DIR [--backend auto|paddle|onnxruntime|openvino]
                            [--precision fp32|bf16] [--threads N] [--device cpu|gpu] [--trt fp32|fp16] ...

PATH: image files, and folders searched recursively for images (the extensions of dataset.IMG_EXTENSIONS).
Images are read and classified --batch-size at a time with tools/val.py's eval transform. Prints, per image,
`class_id is: N` (as the original repo did), its class name and the top-k probabilities. --weights: a .pdckpt
checkpoint of this repo (its saved class names are used) or .pdparams weights (names from Data.classes);
default Global.output_dir/best.pdckpt. --inference-dir: an exported model (tools/export_model.py) instead,
run by tools/infer.py's backends (auto: the fastest fp32 one installed).

--output FILE.jsonl writes one JSON object per image, in input order: {"path", "class_id", "class_name",
"topk": [[id, name, prob], ...]}, with "logits" (every class) under --logits. An image that cannot be read gets
{"path", "error"} (and a line on stderr); the run goes on and exits with status 1 at the end. The lines go to
FILE.jsonl.partial, each flushed as soon as its batch is done, and the file is renamed to FILE.jsonl when the
run completes: an interrupted run keeps every finished line, and never leaves a FILE.jsonl that looks whole.
"""
import cpu_env  # noqa: F401  (first: sets CPU threads before Paddle loads)
import argparse
import itertools
import json
import os
import sys

import numpy as np

from config import add_config_args, config_from_args
from dataset import IMG_EXTENSIONS, BadImage, build_transform, class_names
from errors import UserError, cli
from infer import BACKENDS, PRECISIONS, Predictor, create_predictor


def image_paths(paths):
    """The image files named by `paths` (files as given; folders recursively, sorted), lazily."""
    for path in paths:
        if not os.path.exists(path):
            raise UserError(f"image not found: {path}")
    for path in paths:
        if not os.path.isdir(path):
            yield path
            continue
        found = False
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                if name.lower().endswith(IMG_EXTENSIONS):
                    found = True
                    yield os.path.join(root, name)
        if not found:
            print(f"warning: no images ({', '.join(IMG_EXTENSIONS)}) under {path}", file=sys.stderr)


def softmax(logits):
    z = np.exp(logits.astype(np.float64) - logits.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def prediction(path, logits, names, topk, with_logits=False):
    """The JSONL record of one image: path, class_id, class_name, topk [[id, name, prob], ...] (+ logits)."""
    name = lambda c: names[c] if c < len(names) else "?"
    probs = softmax(logits)
    top = np.argsort(-probs, kind="stable")[:min(topk, len(probs))]
    record = {"path": path, "class_id": int(top[0]), "class_name": name(top[0]),
              "topk": [[int(c), name(c), float(probs[c])] for c in top]}
    if with_logits:
        record["logits"] = [float(v) for v in logits]
    return record


def print_prediction(record):
    """The original repo's `class_id is: N` line, then the class name and the top-k probabilities."""
    print(record["path"])
    print(f"class_id is: {record['class_id']}")
    print(f"class name: {record['class_name']}")
    print(f"top-{len(record['topk'])}: " + ", ".join(f"{c} {n} ({p:.4f})" for c, n, p in record["topk"]))


class JsonLines:
    """FILE.jsonl written as FILE.jsonl.partial, a flushed line at a time, renamed to FILE.jsonl at the end."""

    def __init__(self, path):
        self.path, self.partial = path, path + ".partial"
        try:
            self.file = open(self.partial, "w")
        except OSError as e:
            raise UserError(f"--output {path}: cannot write {self.partial}: {e.strerror}") from None

    def write(self, records):
        for record in records:
            self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def finish(self):
        self.file.close()
        os.replace(self.partial, self.path)


def classify(paths, transform, forward, names, args, out=None):
    """Classify every image of `paths`, --batch-size at a time; returns (images classified, unreadable)."""
    done = failed = 0
    paths = iter(paths)
    while True:
        chunk = list(itertools.islice(paths, args.batch_size))
        if not chunk:
            return done, failed
        records, images = [], []
        for path in chunk:
            try:
                images.append(transform(path))
                records.append({"path": path})
            except BadImage as e:
                print(f"cannot read image {path}: {e.reason}", file=sys.stderr, flush=True)
                records.append({"path": path, "error": e.reason})
        logits = iter(forward(np.stack(images)) if images else ())
        for i, record in enumerate(records):
            if "error" in record:
                failed += 1
                continue
            records[i] = prediction(record["path"], next(logits), names, args.topk, args.logits)
            print_prediction(records[i])
            done += 1
        sys.stdout.flush()
        if out:
            out.write(records)


def engine_forward(args, cfg):
    """(forward, class names) of the exported model in --inference-dir on the chosen backend."""
    from runtime import select_device

    device = select_device(args.device or cfg.Global.device)
    if args.trt:
        if device != "gpu" or args.backend not in ("auto", "paddle"):
            raise UserError("--trt runs the paddle backend on GPU: add --device gpu (and --backend paddle)")
        engine = Predictor(args.inference_dir, device, trt=args.trt, max_batch=args.batch_size)
    else:
        engine = create_predictor(args.inference_dir, args.backend, args.precision, args.threads, device)
    engine.check_img_size(cfg.Global.img_size)
    print(f"backend: {engine.backend} {engine.precision} on {device}", file=sys.stderr)
    return engine, class_names(cfg)


def dynamic_forward(args, cfg):
    """(forward, class names) of the dynamic model with --weights (or the run's best checkpoint)."""
    import paddle

    from checkpoint import load_file, load_weights, weights_or_best
    from runtime import select_device
    from t2t import create_model

    for flag in ("backend", "precision", "threads", "trt"):
        if getattr(args, flag) not in (None, "auto", "fp32"):
            raise UserError(f"--{flag} applies to an exported model: add --inference-dir DIR "
                            f"(write one with tools/export_model.py)")
    select_device(args.device or cfg.Global.device)
    weights = weights_or_best(args.weights, cfg.Global.output_dir)
    saved = load_file(weights)
    names = saved.get("class_names") if isinstance(saved, dict) and "model" in saved else None
    model = create_model(cfg.Global.model, img_size=cfg.Global.img_size, num_classes=cfg.Global.num_classes)
    load_weights(model, weights, loaded=saved)
    model.eval()

    def forward(images):
        with paddle.no_grad():
            return model(paddle.to_tensor(images)).numpy()

    return forward, names or class_names(cfg)


@cli
def main(argv=None, inference_only=False):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("images", nargs="+", help="image files and folders (searched recursively)")
    add_config_args(ap, default_config="config/t2t_vit_7_demo.yaml")
    if not inference_only:
        ap.add_argument("--weights", default="", help=".pdckpt checkpoint or .pdparams weights")
    ap.add_argument("--inference-dir", required=inference_only, default="",
                    help="an exported model (tools/export_model.py) to run instead of --weights")
    ap.add_argument("--backend", choices=("auto",) + BACKENDS, default="auto",
                    help="with --inference-dir: auto (the fastest fp32 backend installed), paddle (Paddle "
                         "Inference), onnxruntime or openvino")
    ap.add_argument("--precision", choices=PRECISIONS, default="fp32",
                    help="with --inference-dir: bf16 on paddle / openvino, on CPUs with AVX512_BF16 or AMX")
    ap.add_argument("--threads", type=int, default=None, help="with --inference-dir: CPU threads (default: all "
                                                              "cores this process may use)")
    ap.add_argument("--device", choices=("auto", "cpu", "gpu"), default=None, help="default: Global.device")
    ap.add_argument("--trt", choices=("fp32", "fp16"), default=None, help="GPU: run through TensorRT")
    ap.add_argument("--topk", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=32, help="images read and classified at a time")
    ap.add_argument("--output", default="", help="write one JSON line per image to this .jsonl file")
    ap.add_argument("--logits", action="store_true", help="with --output: add every class's logit")
    args = ap.parse_args(argv)
    if args.batch_size < 1 or args.topk < 1:
        raise UserError("--batch-size and --topk must be at least 1")
    if args.logits and not args.output:
        raise UserError("--logits adds the logits to --output FILE.jsonl: give --output too")
    cfg = config_from_args(args)
    transform = build_transform(cfg, "val")
    forward, names = (engine_forward if args.inference_dir else dynamic_forward)(args, cfg)
    out = JsonLines(args.output) if args.output else None
    done, failed = classify(image_paths(args.images), transform, forward, names, args, out)
    if out:
        out.finish()
    if done + failed == 0:
        raise UserError(f"no images found in {' '.join(args.images)}")
    if failed:
        print(f"{failed} of {done + failed} images could not be read (see the lines above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
