"""Top-1 / top-5 accuracy over the whole validation set, on one process or many.

    python tools/val.py -c config/t2t_vit_7.yaml [--weights FILE] [-o Key=Value ...]
    python -m paddle.distributed.launch --devices 0,1 tools/val.py -c ...

--weights takes converted official weights (.pdparams) or a checkpoint of this repo (.pdckpt; the better of
model and EMA that the run recorded as best). Without it: Global.output_dir/best.pdckpt.
Each process evaluates a disjoint share of the images (no padding), so every image counts exactly once.
--dataset real | v2 | a | r | sketch evaluates ImageNet-ReaL, -V2, -A, -R or -Sketch as papers report them
(t2tvit/eval_sets.py); --results-file F.csv|F.json appends a row of results to F (t2tvit/results_file.py).
"""
import t2tvit.cpu_env  # noqa: F401  (first: sets CPU threads before Paddle loads)
import argparse
import os
import sys

from t2tvit.checkpoint import load_weights, weights_or_best
from t2tvit.config import add_config_args, config_from_args
from t2tvit import results_file
from t2tvit.errors import cli
from t2tvit.eval_sets import KINDS, EvalSet
from t2tvit.runtime import Runtime, make_logger
from t2tvit.t2t import create_model


@cli
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_config_args(ap)
    ap.add_argument("--weights", default="", help=".pdparams or .safetensors weights, or .pdckpt checkpoint")
    ap.add_argument("--sha256", default="", help="hex sha256 the weights file must have (refused otherwise)")
    ap.add_argument("--which", default="best", choices=["best", "model", "ema"],
                    help="for a .pdckpt: which weights to evaluate")
    ap.add_argument("--dataset", default="imagenet", choices=KINDS,
                    help="imagenet: the config's val split; real: it with ReaL labels; v2, a, r, sketch: ImageNetV2, "
                         "-A, -R, -Sketch in Data.root (docs/evaluation.md)")
    ap.add_argument("--results-file", default="", help="append a row of results to this .csv or .json file")
    args = ap.parse_args(argv)
    if args.results_file:
        results_file.results_format(args.results_file)  # a wrong name fails now, not after the evaluation
    cfg = config_from_args(args)
    rt = Runtime(cfg)
    log = make_logger("val", os.path.join(cfg.Global.log_dir, "val.log"), rt.is_main)
    weights = weights_or_best(args.weights, cfg.Global.output_dir)
    model = create_model(cfg.Global.model, img_size=cfg.Global.img_size, num_classes=cfg.Global.num_classes)
    which, notes = load_weights(model, weights, prefer=args.which, sha256=args.sha256)
    evalset = EvalSet(args.dataset, cfg)
    for note in notes + evalset.notes():
        log.info(f"note: {note}")
    log.info(f"evaluating {weights} ({which}) on {cfg.Data.root} with {rt.world} process(es)")
    result = evalset.evaluate(model, rt, log, cfg.Global.print_every)
    log.info(f"ImageNet final val acc is:{result['top1']:.4f}, top5: {result['top5']:.4f}, images: {result['images']}")
    if args.dataset != "imagenet":
        log.info(evalset.summary(result))
    if args.results_file and rt.is_main:
        rows = results_file.append(args.results_file, results_file.row(model, weights, which, cfg, evalset, result))
        log.info(f"results: row {rows} of {args.results_file}")


if __name__ == "__main__":
    sys.exit(main())
