"""Export a trained or converted T2T-ViT for deployment: Paddle Inference and ONNX, dynamic batch dimension.

    python tools/export_model.py -c CONFIG --weights FILE --out DIR [--format paddle|onnx|all] [-o Key=Value ...]

Writes DIR/inference.json (Paddle 3.x) or DIR/inference.pdmodel (Paddle 2.6) with DIR/inference.pdiparams
(format paddle: the `paddle` backend) and DIR/model.onnx (format onnx, through paddle2onnx: the `onnxruntime`
and `openvino` backends), with DIR/inference.yml saying what the graph takes. Default: all where paddle2onnx
and onnxruntime are installed (requirements-deploy.txt), else paddle. Input `x`: [N, 3, S, S] float32
normalised with Data.mean / Data.std, S = Global.img_size; output: [N, num_classes] logits. Before anything
is written to DIR, each written model is run (Paddle Inference; ONNX Runtime for model.onnx) and must give
the dynamic model's logits within 1e-4; a previous export's model files in DIR are replaced.
"""
import t2tvit.cpu_env  # noqa: F401  (first: sets CPU threads before Paddle loads)
import argparse
import os
import sys

import paddle

from t2tvit.checkpoint import load_weights
from t2tvit.config import add_config_args, config_from_args
from t2tvit.deploy import FORMAT_CHOICES, RUNTIME_NAMES, export_checked, parse_formats
from t2tvit.errors import cli
from t2tvit.sizes import image_hw
from t2tvit.t2t import create_model


@cli
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_config_args(ap)
    ap.add_argument("--weights", required=True, help=".pdckpt checkpoint (its EMA or model weights, whichever "
                                                     "validated better) or .pdparams weights")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--format", choices=FORMAT_CHOICES, default=None,
                    help="paddle (Paddle Inference), onnx (model.onnx) or all; default: all where paddle2onnx "
                         "and onnxruntime are installed, else paddle")
    args = ap.parse_args(argv)
    formats = parse_formats(args.format)
    if args.format is None and "onnx" not in formats:
        print("note: paddle2onnx / onnxruntime not installed: writing the Paddle Inference model only "
              "(pip install -r requirements-deploy.txt for model.onnx)")
    cfg = config_from_args(args)
    g = cfg.Global
    paddle.set_device("cpu")
    model = create_model(g.model, img_size=g.img_size, num_classes=g.num_classes)
    which, notes = load_weights(model, args.weights)
    for note in notes:
        print(f"note: {note}")
    model.eval()
    out = os.path.abspath(args.out)
    diffs = export_checked(model, g.img_size, out, formats)
    files = ", ".join(sorted(os.listdir(out)))
    source = args.weights if which == "weights" else f"{which} weights of {args.weights}"
    checks = ", ".join(f"{RUNTIME_NAMES[fmt]} {d:.2g}" for fmt, d in diffs.items())
    print(f"exported {g.model} ({source}) for [N, 3, {', '.join(map(str, image_hw(g.img_size)))}] inputs to {out}: {files}; "
          f"max |logits - dynamic logits|: {checks}")


if __name__ == "__main__":
    sys.exit(main())
