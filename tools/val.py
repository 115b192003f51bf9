"""Top-1 / top-5 accuracy over the whole validation set, on one process or many.

    python tools/val.py -c config/t2t_vit_7.yaml [--weights FILE] [-o Key=Value ...]
    python -m paddle.distributed.launch --devices 0,1 tools/val.py -c ...

--weights takes converted official weights (.pdparams) or a checkpoint of this repo (.pdckpt; the better of
model and EMA, as recorded when it was saved). Without it: Global.output_dir/best.pdckpt.
Each process evaluates a disjoint share of the images (no padding), so every image counts exactly once.
"""
import cpu_env  # noqa: F401  (first: sets CPU threads before Paddle loads)
import argparse
import os
import sys

import paddle

from checkpoint import load_weights, weights_or_best
from config import add_config_args, config_from_args
from dataset import build_loader
from errors import cli
from runtime import Runtime, Timer, make_logger
from t2t import create_model


@paddle.no_grad()
def evaluate(model, loader, runtime, log=None, print_every=0):
    """Returns (top1, top5, images) over every rank's share of the set."""
    was_training = model.training
    model.eval()
    correct1 = correct5 = seen = 0
    timer = Timer()
    read_time = 0.0
    for i, (images, labels) in enumerate(loader):
        read_time += timer.lap()
        logits = model(images)
        top5 = paddle.topk(logits.astype("float32"), k=min(5, logits.shape[-1]), axis=-1)[1]
        hits = (top5 == labels.reshape([-1, 1]).astype(top5.dtype)).astype("int64")
        correct1 += int(hits[:, 0].sum())
        correct5 += int(hits.sum())
        seen += labels.shape[0]
        timer.lap()
        if log and print_every and (i + 1) % print_every == 0:
            log.info(f"Step [{i + 1}/{len(loader)}], acc: {correct1 / seen:.4f}, read_time: {read_time / (i + 1):.4f}")
    correct1, correct5, seen = runtime.all_sum([correct1, correct5, seen])
    if was_training:  # Paddle 2.6's Layer.train() takes no argument
        model.train()
    return correct1 / max(seen, 1), correct5 / max(seen, 1), int(seen)


@cli
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_config_args(ap)
    ap.add_argument("--weights", default="", help=".pdparams weights or .pdckpt checkpoint")
    ap.add_argument("--which", default="best", choices=["best", "model", "ema"],
                    help="for a .pdckpt: which weights to evaluate")
    args = ap.parse_args(argv)
    cfg = config_from_args(args)
    rt = Runtime(cfg)
    log = make_logger("val", os.path.join(cfg.Global.log_dir, "val.log"), rt.is_main)
    weights = weights_or_best(args.weights, cfg.Global.output_dir)
    model = create_model(cfg.Global.model, img_size=cfg.Global.img_size, num_classes=cfg.Global.num_classes)
    which, notes = load_weights(model, weights, prefer=args.which)
    loader, _ = build_loader(cfg, "val", rt.world, rt.rank)
    for note in notes:
        log.info(f"note: {note}")
    log.info(f"evaluating {weights} ({which}) on {cfg.Data.root} with {rt.world} process(es)")
    top1, top5, n = evaluate(model, loader, rt, log, cfg.Global.print_every)
    log.info(f"ImageNet final val acc is:{top1:.4f}, top5: {top5:.4f}, images: {n}")


if __name__ == "__main__":
    sys.exit(main())
