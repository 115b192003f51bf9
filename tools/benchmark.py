"""Measure T2T-ViT's speed on this machine, side by side with PyTorch running the official model.

    python tools/benchmark.py [-c CONFIG] [-o Section.key=value ...] [--model NAME] [--batch 32]
                              [--img-size S] [--threads N] [--rounds R] [--weights FILE]
                              [--agree-on photos|val] [--official-repo PATH] [--only MEASURE ...]

In one run, each measure in a fresh process (so that its environment applies and its peak memory is its own):
  torch_eval     PyTorch (if installed) running the official T2T-ViT (tools/torch_reference.py, proven
                 against the official code by the tests) under no_grad: the yardstick of every eval ratio
  torch_train    its training step: forward, soft-target loss, backward, AdamW (drop path 0.1)
  direct         the direct route: the same official model (or, with --official-repo PATH, the official code of
                 that checkout of yitu-opensource/T2T-ViT, imported at run time; it needs timm 0.3.4) with the
                 same weights, exported as a user without this repo would (torch.onnx.export, run by OpenVINO
                 in fp32 and bf16 and by ONNX Runtime in fp32; openvino.convert_model of the torch module, run
                 by OpenVINO in fp32 and bf16; bf16 where the CPU has it), with our rows' runtime settings
  eval_dynamic   Paddle's dynamic-graph model under no_grad
  train          Paddle's training step, as torch_train (the yardstick of its ratio)
  engine         the exported model in every installed deployment backend x precision (t2tvit/backends.py),
                 through t2tvit.deploy.create_predictor: the path of predict.py and the Python API
  plain          the same files in a plain OpenVINO / ONNX Runtime session (`compiled(x)`, `session.run`) with
                 the same settings: the engine rows against these say what the predictor path costs
  data_train     one data worker running the full recipe's train transform, the official pixels (full decode,
                 RandomResizedCrop, flip, RandAugment m9; uint8 out: normalisation, mixup and erasing happen
                 on the batch) on ImageNet-sized JPEGs (500x375, made from lit_data)
  data_train_reduced  the same with Data.reduced_decode (JPEGs decoded at 1/2-1/8 scale where the crop allows)
  data_val       the same for the validation transform (full decode, resize, center crop, normalisation)
The model, image size, classes and transforms come from the config (default config/t2t_vit_7_demo.yaml, every
command's; --model and --img-size override it), or from --weights where they say what they are (a checkpoint:
its model, size, classes and eval preprocessing; a -c / -o / --model that says otherwise is an error,
--img-size measures at another size; t2tvit/tool_config.py). Each model measure is timed on a random batch
(warm-up runs, then --repeat timed runs; with --rounds R every measure runs R times, interleaved, and images/s
is the median of all its timed runs) and also run once on real images through the val transform: the 20 photos
of lit_data/val, or with --agree-on val the config's validation split (at most --agree-limit images, evenly spaced). Its max |logit
difference| and top-1 agreement are against Paddle's float32 dynamic-graph model with the same weights
(--weights, else random init, seed 0; random-init logits have tiny top-2 gaps, so top-1 agreement means more
with trained weights: the report gives the reference's top-2 gaps). Threads default to the cores of this
process, as every tool sets them (tools/t2tvit/cpu_env.py). Records the CPU model and flags; prints a table and
one JSON line (prefix `BENCHMARK_JSON `).

Every eval row is reported as a ratio to PyTorch (torch_eval) and to the direct route's best row of the same
precision (vs_direct; int8 to the best fp32; latency_vs_direct for the batch-1 p50), each engine row as a ratio
to the plain session of the same runtime and file (vs_plain, latency_vs_plain). Each row's per-round images/s
are reported as min / median / max; rounds more than 15% apart print a warning (a busy machine?).

Every eval measure (PyTorch, Paddle dynamic, each backend x precision, int8 included) also gets its batch-1
latency (p50 / p99 over --latency-runs runs after the warm-up; default 200) and its throughput at each of
--throughput-batches (default 1 8 32). The run measures the machine's GEMM rate in every round, keeping the
highest (gemm_rates: a 1024^2 matmul, the faster of PyTorch and OpenVINO, in fp32, and in bf16 and int8 where
the CPU has them; gemm_rounds in the JSON holds each round's) and reports
each eval row as a fraction of the model's compute-bound limit, GEMM rate / (2 x MACs per image) (model_macs:
every matrix product and LayerNorm, as tools/count_macs.py counts them). With --agree-on val each row's top-1
against the split's labels is reported too. int8 models are calibrated on --calib DIR_OR_LIST (e.g. training
images: up to 300, evenly spaced, through the val transform), else on up to 300 of the compared images.
"""
import t2tvit.cpu_env  # noqa: F401  (first: sets CPU threads before Paddle loads)
import argparse
import json
import os
import sys

from benchmarking.driver import drive
from benchmarking.settings import MEASURES
from benchmarking.worker import WORKERS, worker
from t2tvit.config import DEFAULT_CONFIG, ROOT
from t2tvit.errors import UserError, cli
from t2tvit.quiet import add_verbose_flag


def settle_config(args):
    """What every worker runs: --config (default DEFAULT_CONFIG) with overrides, --model and --img-size, or what
    --weights says it is (the config may not say otherwise); checked here, before any worker starts."""
    from t2tvit.artifact import SETTINGS, read_weights
    from t2tvit.config import load_config
    from t2tvit.tool_config import config_for

    if not args.weights:
        cfg = load_config(args.config or DEFAULT_CONFIG, args.override)  # a bad file or key: one line
        args.config = args.config or DEFAULT_CONFIG
        args.model = args.model or cfg.Global.model
        args.img_size = args.img_size or cfg.Global.img_size
        return
    _, art = read_weights(args.weights)
    asked = argparse.Namespace(config=args.config, img_size=[str(args.img_size)] if args.img_size else None,
                               override=args.override + ([f"Global.model={args.model}"] if args.model else []))
    cfg, notes = config_for(asked, art)
    for line in [art.loaded_line()] + [f"note: {note}" for note in notes]:
        print(line, file=sys.stderr)
    args.config = args.config or DEFAULT_CONFIG
    # The workers read the config again: what the weights said goes to them as overrides.
    args.override = args.override + [f"{key}={json.dumps(cfg[key.split('.')[0]][key.split('.')[1]])}"
                                     for key in SETTINGS if key != "Global.img_size"]
    args.model = cfg.Global.model
    args.img_size = cfg.Global.img_size
    if not isinstance(args.img_size, int):
        raise UserError(f"the benchmark measures square images: --img-size S (the weights are {args.img_size})")


@cli
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-c", "--config", default=None,
                    help="config giving the model, image size, classes and transforms (default: "
                         f"{os.path.relpath(DEFAULT_CONFIG, ROOT)})")
    ap.add_argument("-o", "--override", nargs="+", default=[], metavar="Section.key=value",
                    help="override config keys, e.g. -o Data.root=data/fashion_mnist")
    add_verbose_flag(ap)
    ap.add_argument("--model", help="model variant (default: the config's Global.model)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--img-size", type=int, help="image size (default: the config's Global.img_size)")
    ap.add_argument("--threads", type=int, default=t2tvit.cpu_env.usable_cores(),
                    help="math threads (default: the cores of this process; data workers always use 1)")
    ap.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    ap.add_argument("--weights", help="weights or checkpoint to load (default: random init, seed 0)")
    ap.add_argument("--agree-on", choices=("photos", "val"), default="photos",
                    help="images the logits are compared on: the 20 lit_data/val photos, or the config's "
                         "validation split (e.g. the Fashion-MNIST test set)")
    ap.add_argument("--official-repo", metavar="PATH",
                    help="the direct route exports the official code of this checkout of yitu-opensource/T2T-ViT "
                         "(needs timm 0.3.4; default: tools/torch_reference.py, proven equal to it)")
    ap.add_argument("--calib", nargs="+", metavar="DIR_OR_LIST",
                    help="int8 calibration images (default: up to 300 of the compared images)")
    ap.add_argument("--agree-limit", type=int, default=10000,
                    help="with --agree-on val: at most this many images, evenly spaced over the split")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=1,
                    help="run every measure this many times, interleaved; images/s is the median of all runs")
    ap.add_argument("--only", nargs="+", metavar="MEASURE", default=list(MEASURES),
                    help=f"a subset of {' '.join(MEASURES)}")
    ap.add_argument("--data-images", type=int, default=40, help="JPEGs per data-pipeline run")
    ap.add_argument("--stages", action="store_true",
                    help="also time each stage of the model (eval forward; training forward + backward), in "
                         "Paddle and PyTorch")
    ap.add_argument("--latency-runs", type=int, default=200,
                    help="batch-1 runs timed for the latency p50 / p99 of each eval measure (0: none)")
    ap.add_argument("--throughput-batches", type=int, nargs="+", default=[1, 8, 32], metavar="N",
                    help="batch sizes of each eval measure's throughput (images/s)")
    ap.add_argument("--worker", choices=WORKERS,
                    help=argparse.SUPPRESS)
    ap.add_argument("--work-dir", help=argparse.SUPPRESS)
    ap.add_argument("--tag", help=argparse.SUPPRESS)
    ap.add_argument("--engine-backend", help=argparse.SUPPRESS)
    ap.add_argument("--precision", help=argparse.SUPPRESS)
    ap.add_argument("--direct-route", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if not args.worker:
        settle_config(args)
    for key in ("batch", "threads", "repeat", "rounds", "data_images", "agree_limit"):
        if getattr(args, key) < 1:
            raise UserError(f"--{key.replace('_', '-')} must be at least 1")
    if args.latency_runs < 0 or min(args.throughput_batches) < 1:
        raise UserError("--latency-runs must be at least 0 and --throughput-batches at least 1")
    if args.img_size % 16:
        raise UserError(f"--img-size {args.img_size} is not a multiple of 16")
    unknown = sorted(set(args.only) - set(MEASURES))
    if unknown:
        raise UserError(f"--only: unknown measurement(s) {', '.join(unknown)}; choose from {', '.join(MEASURES)}")
    if args.worker:
        return worker(args)  # PyTorch's workers never load Paddle: two OpenMP runtimes in one process slow both
    from t2tvit.t2t import VARIANTS
    if args.model not in VARIANTS:
        raise UserError(f"unknown model {args.model!r}; known models: {', '.join(VARIANTS)}")
    return drive(args)


if __name__ == "__main__":
    sys.exit(main())
