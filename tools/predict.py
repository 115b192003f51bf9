"""Classify images with a trained or converted T2T-ViT.

    python tools/predict.py IMAGE [IMAGE ...] [-c CONFIG] [--weights FILE] [--topk 5] [-o Key=Value ...]

Prints `class_id is: N` for each image (as the original repo did), then its class name and the top-k
probabilities. --weights: a .pdckpt checkpoint of this repo (its saved class names are used) or .pdparams
weights (names from Data.classes); default Global.output_dir/best.pdckpt.
"""
import cpu_env  # noqa: F401  (first: sets CPU threads before Paddle loads)
import argparse
import os
import sys

import numpy as np
import paddle

from checkpoint import load_file, load_weights, weights_or_best
from config import add_config_args, config_from_args
from dataset import BadImage, build_transform, class_names
from errors import UserError, cli
from infer import Predictor
from runtime import select_device
from t2t import create_model


def print_predictions(paths, logits, names, topk):
    """The original repo's `class_id is: N` line, then the class name and the top-k probabilities."""
    probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    k = min(topk, probs.shape[1])
    name = lambda c: names[c] if c < len(names) else "?"
    for path, p in zip(paths, probs):
        top = np.argsort(-p)[:k]
        print(path)
        print(f"class_id is: {top[0]}")
        print(f"class name: {name(top[0])}")
        print(f"top-{k}: " + ", ".join(f"{c} {name(c)} ({p[c]:.4f})" for c in top))


def load_images(paths, transform):
    batch = []
    for path in paths:
        if not os.path.isfile(path):
            raise UserError(f"image not found: {path}")
        try:
            batch.append(transform(path))
        except BadImage as e:
            raise UserError(f"cannot read image {e.path}: {e.reason}") from None
    return np.stack(batch)


@cli
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("images", nargs="+", help="image files")
    add_config_args(ap, default_config="config/t2t_vit_7_demo.yaml")
    ap.add_argument("--weights", default="", help=".pdckpt checkpoint or .pdparams weights")
    ap.add_argument("--topk", type=int, default=5)
    ap.add_argument("--inference-dir", default="", help="an exported model (tools/export_model.py) to run instead")
    args = ap.parse_args(argv)
    cfg = config_from_args(args)
    device = select_device(cfg.Global.device)
    transform = build_transform(cfg, "val")
    if args.inference_dir:
        predictor = Predictor(args.inference_dir, device=device)
        predictor.check_img_size(cfg.Global.img_size)
        names = class_names(cfg)
        logits = predictor(load_images(args.images, transform))
    else:
        weights = weights_or_best(args.weights, cfg.Global.output_dir)
        saved = load_file(weights)
        names = saved.get("class_names") if isinstance(saved, dict) and "model" in saved else None
        names = names or class_names(cfg)
        model = create_model(cfg.Global.model, img_size=cfg.Global.img_size, num_classes=cfg.Global.num_classes)
        load_weights(model, weights, loaded=saved)
        model.eval()
        with paddle.no_grad():
            logits = model(paddle.to_tensor(load_images(args.images, transform))).numpy()
    print_predictions(args.images, logits, names, args.topk)

if __name__ == "__main__":
    sys.exit(main())
