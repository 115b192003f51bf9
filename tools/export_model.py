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
import cpu_env  # noqa: F401  (first: sets CPU threads before Paddle loads)
import argparse
import importlib.util
import inspect
import os
import shutil
import sys

import numpy as np
import paddle
import yaml

from checkpoint import load_weights
from config import add_config_args, config_from_args
from errors import UserError, cli
from infer import FORMATS, META_FILE, ONNX_FILE, PREFIX, OnnxRuntimePredictor, Predictor, model_files
from t2t import create_model

INPUT_NAME = "x"
CHECK_TOL = 1e-4
ONNX_OPSET = 17  # LayerNormalization is one op from opset 17 on
FORMAT_CHOICES = ("paddle", "onnx", "all")


def onnx_export_installed():
    return all(importlib.util.find_spec(m) is not None for m in ("paddle2onnx", "onnxruntime"))


def parse_formats(choice=None):
    """--format paddle | onnx | all -> the formats to write; None: all if ONNX export is installed."""
    if choice is None:
        return ("paddle", "onnx") if onnx_export_installed() else ("paddle",)
    if choice not in FORMAT_CHOICES:
        raise UserError(f"unknown export format {choice!r}; use one of {', '.join(FORMAT_CHOICES)}")
    if choice != "paddle" and not onnx_export_installed():
        raise UserError(f"--format {choice} needs paddle2onnx and onnxruntime (to convert and to check the "
                        f"result): pip install -r requirements-deploy.txt")
    return ("paddle", "onnx") if choice == "all" else (choice,)


def export(model, img_size, out_dir, formats=None):
    """Trace `model` (in eval mode) for [N, 3, img_size, img_size] inputs and save it under out_dir: the
    Paddle program always (it is also what model.onnx is converted from), model.onnx if "onnx" is in
    `formats` (default: parse_formats())."""
    spec = [paddle.static.InputSpec([None, 3, img_size, img_size], "float32", INPUT_NAME)]
    # full_graph: one whole static program (Paddle 3.x would otherwise trace through SOT with fallbacks).
    static = paddle.jit.to_static(model, input_spec=spec, full_graph=True)
    paddle.jit.save(static, os.path.join(out_dir, PREFIX))
    meta = {"model": model.arch_name, "input": INPUT_NAME, "img_size": img_size, "num_classes": model.num_classes}
    with open(os.path.join(out_dir, META_FILE), "w") as f:
        yaml.safe_dump(meta, f, sort_keys=False)
    if "onnx" in (formats or parse_formats()):
        to_onnx(out_dir)


def to_onnx(model_dir):
    """Convert the Paddle program in model_dir to model_dir/model.onnx (paddle2onnx, dynamic batch axis)."""
    import paddle2onnx

    model_file, params_file, _ = model_files(model_dir)
    out = os.path.join(model_dir, ONNX_FILE)
    options = {"save_file": out, "opset_version": ONNX_OPSET, "enable_onnx_checker": True, "verbose": False}
    # paddle2onnx 2.x (Paddle 3) folds constants with Polygraphy by default, which pip-installs missing modules
    # at run time: "none" turns it off (ONNX Runtime and OpenVINO fold constants when they load the model).
    # paddle2onnx 1.x (Paddle 2.6) has no such step and no such option.
    if "optimize_tool" in inspect.signature(paddle2onnx.export).parameters:
        options["optimize_tool"] = "none"
    try:
        paddle2onnx.export(model_file, params_file, **options)
    except Exception as e:  # it logs the cause and then fails on its own unset result
        raise UserError(f"paddle2onnx could not convert the exported program (its log above says why): {e}")
    if not os.path.isfile(out):
        raise UserError("paddle2onnx wrote no ONNX model (its log above says why)")


# The runtime that checks each format: Paddle Inference for the Paddle program, ONNX Runtime for model.onnx.
CHECKERS = {"paddle": Predictor, "onnx": OnnxRuntimePredictor}
RUNTIME_NAMES = {"paddle": "Paddle Inference", "onnx": "ONNX Runtime on model.onnx"}


def check_export(model, model_dir, img_size, formats, batch=2):
    """{format: max |logits difference| between its runtime and `model`} on a random batch."""
    x = np.random.RandomState(0).standard_normal((batch, 3, img_size, img_size)).astype("float32")
    with paddle.no_grad():
        expected = model(paddle.to_tensor(x)).numpy()
    return {fmt: float(np.abs(CHECKERS[fmt](model_dir, threads=1)(x) - expected).max()) for fmt in formats}


def replace_files(src_dir, dst_dir, formats):
    """Move META_FILE and the files of `formats` from src_dir into dst_dir, first removing every model file
    of a previous export from dst_dir (so no file there can belong to other weights)."""
    os.makedirs(dst_dir, exist_ok=True)
    for name in sum(FORMATS.values(), ()):
        if os.path.exists(os.path.join(dst_dir, name)):
            os.remove(os.path.join(dst_dir, name))
    for name in sum((FORMATS[fmt] for fmt in formats), (META_FILE,)):
        if os.path.exists(os.path.join(src_dir, name)):
            os.replace(os.path.join(src_dir, name), os.path.join(dst_dir, name))


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
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"--out {args.out} exists and is not a directory")
    tmp = f"{out}.tmp{os.getpid()}"
    try:
        export(model, g.img_size, tmp, formats)
        diffs = check_export(model, tmp, g.img_size, formats)
        bad = {fmt: d for fmt, d in diffs.items() if not d <= CHECK_TOL}
        if bad:
            raise UserError("nothing written: the exported model's logits differ from the dynamic model's by "
                            + ", ".join(f"{d:.3g} ({RUNTIME_NAMES[fmt]})" for fmt, d in bad.items())
                            + f" > {CHECK_TOL}: a converter or runtime fault on this version and CPU")
        replace_files(tmp, out, formats)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    files = ", ".join(sorted(os.listdir(out)))
    source = args.weights if which == "weights" else f"{which} weights of {args.weights}"
    checks = ", ".join(f"{RUNTIME_NAMES[fmt]} {d:.2g}" for fmt, d in diffs.items())
    print(f"exported {g.model} ({source}) for [N, 3, {g.img_size}, {g.img_size}] inputs to {out}: {files}; "
          f"max |logits - dynamic logits|: {checks}")


if __name__ == "__main__":
    sys.exit(main())
