"""Top-1 / top-k accuracy over the whole validation set, on one process or many.

    python tools/val.py [--weights FILE] [-c CONFIG] [--img-size S] [-o Key=Value ...]
    python -m paddle.distributed.launch --devices 0,1 tools/val.py ...

--weights takes a checkpoint of this repo (.pdckpt; the better of model and EMA that the run recorded as best,
or --which) or converted official weights (.pdparams / .safetensors). Without it: Global.output_dir/best.pdckpt.
A checkpoint says what it is (model, size, classes, eval preprocessing, and the run's config, validation data
included): it alone is enough, and a -c / -o that says otherwise is an error (t2tvit/tool_config.py); --img-size
evaluates it at another size. Each process evaluates a disjoint share of the images (no padding), so every
image counts exactly once. Accuracy is top-1 and top-k, k = min(5, classes).
--dataset real | v2 | a | r | sketch evaluates ImageNet-ReaL, -V2, -A, -R or -Sketch as papers report them
(t2tvit/eval_sets.py); --results-file F.csv|F.json appends a row of results to F (t2tvit/results_file.py).
"""
import t2tvit.cpu_env  # noqa: F401  (first: sets CPU threads before Paddle loads)
import argparse
import os
import sys

from t2tvit import results_file
from t2tvit.dataset import is_imagenet
from t2tvit.errors import UserError, cli
from t2tvit.eval_sets import KINDS, EvalSet
from t2tvit.quiet import add_verbose_flag
from t2tvit.runtime import Runtime, make_logger
from t2tvit.tool_config import Loaded, add_weights_args, class_names_differ


@cli
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_verbose_flag(add_weights_args(ap))
    ap.add_argument("--dataset", default="imagenet", choices=KINDS,
                    help="imagenet: the config's val split; real: it with ReaL labels; v2, a, r, sketch: ImageNetV2, "
                         "-A, -R, -Sketch in Data.root (docs/evaluation.md)")
    ap.add_argument("--results-file", default="", help="append a row of results to this .csv or .json file")
    args = ap.parse_args(argv)
    if args.results_file:
        results_file.check(args.results_file)  # a wrong name or file fails now, not after the evaluation
    loaded = Loaded(args)
    cfg, art = loaded.cfg, loaded.art
    if art.class_names and args.dataset == "imagenet":  # the split's labels must mean the weights' classes
        differ = class_names_differ(cfg, art.class_names)
        if differ:
            raise UserError(f"the classes of {art.path} are not those of the validation set (Data.classes "
                            f"{cfg.Data.classes} of {cfg.Data.root}): {differ}")
    rt = Runtime(cfg)
    log = make_logger("val", os.path.join(cfg.Global.log_dir, "val.log"), rt.is_main)
    model = loaded.model()  # on the device Runtime chose
    evalset = EvalSet(args.dataset, cfg)
    log.info(art.loaded_line())
    for note in loaded.notes + evalset.notes():
        log.info(f"note: {note}")
    log.info(f"evaluating {cfg.Global.model} at {cfg.Global.img_size} px on {evalset.root} with {rt.world} "
             "process(es)")
    result = evalset.evaluate(model, rt, log, cfg.Global.print_every)
    k = min(5, cfg.Global.num_classes)
    imagenet = "ImageNet " if is_imagenet(cfg, art.class_names) else ""
    log.info(f"{imagenet}final val acc is:{result['top1']:.4f}, top{k}: {result['top5']:.4f}, "
             f"images: {result['images']}")
    if args.dataset != "imagenet":
        log.info(evalset.summary(result))
    if args.results_file and rt.is_main:
        row = results_file.row(model, art.path, art.which, art.sha256, cfg, evalset, result)
        rows = results_file.append(args.results_file, row)
        log.info(f"results: row {rows} of {args.results_file}")


if __name__ == "__main__":
    sys.exit(main())
