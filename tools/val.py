"""Top-1 / top-k accuracy over the whole validation set, on one process or many.

    python tools/val.py [--weights FILE] [-c CONFIG] [--img-size S] [-o Key=Value ...]
    python -m paddle.distributed.launch --devices 0,1 tools/val.py ...

--weights takes a checkpoint of this repo (.pdckpt; the better of model and EMA that the run recorded as best,
or --which) or converted official weights (.pdparams / .safetensors). Without it: Global.output_dir/best.pdckpt.
A checkpoint says what it is (model, size, classes, eval preprocessing, and the run's config, validation data
included): it alone is enough, and a -c / -o that says otherwise is an error (t2tvit/tool_config.py); --img-size
evaluates it at another size. Each process evaluates a disjoint share of the images (no padding), so every
image counts exactly once. Accuracy is top-1 and top-k, k = min(5, classes).
"""
import t2tvit.cpu_env  # noqa: F401  (first: sets CPU threads before Paddle loads)
import argparse
import os
import sys

from t2tvit.dataset import build_loader, is_imagenet
from t2tvit.engine import evaluate
from t2tvit.errors import UserError, cli
from t2tvit.quiet import add_verbose_flag
from t2tvit.runtime import Runtime, make_logger
from t2tvit.tool_config import Loaded, add_weights_args, class_names_differ


@cli
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_verbose_flag(add_weights_args(ap))
    args = ap.parse_args(argv)
    loaded = Loaded(args)
    cfg, art = loaded.cfg, loaded.art
    if art.class_names:  # the split's labels must mean the classes the weights were trained for
        differ = class_names_differ(cfg, art.class_names)
        if differ:
            raise UserError(f"the classes of {art.path} are not those of the validation set (Data.classes "
                            f"{cfg.Data.classes} of {cfg.Data.root}): {differ}")
    rt = Runtime(cfg)
    log = make_logger("val", os.path.join(cfg.Global.log_dir, "val.log"), rt.is_main)
    model = loaded.model()  # on the device Runtime chose
    loader, _ = build_loader(cfg, "val", world_size=rt.world, rank=rt.rank)
    log.info(art.loaded_line())
    for note in loaded.notes:
        log.info(f"note: {note}")
    log.info(f"evaluating {cfg.Global.model} at {cfg.Global.img_size} px on {cfg.Data.root} with {rt.world} "
             "process(es)")
    top1, topk, n = evaluate(model, loader, rt, log, cfg.Global.print_every)
    k = min(5, cfg.Global.num_classes)
    imagenet = "ImageNet " if is_imagenet(cfg, art.class_names) else ""
    log.info(f"{imagenet}final val acc is:{top1:.4f}, top{k}: {topk:.4f}, images: {n}")


if __name__ == "__main__":
    sys.exit(main())
