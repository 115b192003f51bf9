"""Export a trained or converted T2T-ViT for deployment: Paddle Inference and ONNX, dynamic batch dimension.

    python tools/export_model.py --weights FILE --out DIR [-c CONFIG] [--format paddle|onnx|all] [-o Key=Value ...]
                                 [--int8 --calib DIR_OR_LIST [DIR_OR_LIST ...] [--calib-size N]]

Writes DIR/inference.json (Paddle 3.x) or DIR/inference.pdmodel (Paddle 2.6) with DIR/inference.pdiparams
(format paddle: the `paddle` backend) and DIR/model.onnx (format onnx, through paddle2onnx: the `onnxruntime`
and `openvino` backends), with DIR/inference.yml saying what the export is (t2tvit/export_meta.py): the model
and size, the eval preprocessing, the class names and the sha256 of the weights, so that predict.py
--inference-dir DIR needs nothing else. A checkpoint's own model, size, classes and preprocessing are exported
(a -c / -o that says otherwise is an error; --img-size exports at another size). Default format: all where
paddle2onnx and onnxruntime are installed (requirements-deploy.txt), else paddle. Input `x`: [N, 3, S, S]
float32 normalised with Data.mean / Data.std, S = Global.img_size; output: [N, num_classes] logits. Before anything
is written to DIR, each written model is run (Paddle Inference; ONNX Runtime for model.onnx) and must give
the dynamic model's logits within 1e-4; a previous export's model files in DIR are replaced.

--int8 also writes post-training int8 models quantised from model.onnx (t2tvit/quantize.py says what is int8
and what stays float): DIR/model_int8.onnx (ONNX Runtime, static QDQ) and DIR/model_int8.xml/.bin (OpenVINO,
NNCF), calibrated on --calib-size images (default 300, evenly spaced) of --calib (image files, folders, or
.txt lists such as a Data split's list) through the config's eval transform. Run them with tools/predict.py
--precision int8; their top-1 agreement with fp32 on the calibration images is printed.
"""
import t2tvit.cpu_env  # noqa: F401  (first: sets CPU threads before Paddle loads)
from t2tvit.preempt import exit_on_signals, hold_signals

# run as a command: until main(), a signal while Paddle loads waits, then is one line (not a traceback or
# Paddle's dump)
if __name__ == "__main__":
    hold_signals()
import argparse
import os
import sys

import paddle

from t2tvit.errors import UserError, cli
from t2tvit.export import FORMAT_CHOICES, RUNTIME_NAMES, export_checked, parse_formats
from t2tvit.export_meta import description
from t2tvit.quantize import DEFAULT_CALIB_SIZE, calibration_images, int8_agreement_line, int8_matmuls_line
from t2tvit.quiet import add_verbose_flag, filtered_output
from t2tvit.sizes import image_hw
from t2tvit.tool_config import add_weights_args, class_names_for, load_model


@cli
@exit_on_signals()
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_verbose_flag(add_weights_args(ap, required=True))
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--format", choices=FORMAT_CHOICES, default=None,
                    help="paddle (Paddle Inference), onnx (model.onnx) or all; default: all where paddle2onnx "
                         "and onnxruntime are installed, else paddle")
    ap.add_argument("--int8", action="store_true", help="also write int8 models (onnxruntime, openvino)")
    ap.add_argument("--calib", nargs="+", default=[], metavar="DIR_OR_LIST",
                    help="with --int8: calibration images (files, folders, or .txt lists)")
    ap.add_argument("--calib-size", type=int, default=DEFAULT_CALIB_SIZE,
                    help="with --int8: at most this many calibration images (default: %(default)s)")
    args = ap.parse_args(argv)
    formats = parse_formats(args.format)
    if args.int8 and not args.calib:
        raise UserError("--int8 needs calibration images: add --calib DIR_OR_LIST")
    if args.calib and not args.int8:
        raise UserError("--calib applies to --int8: add --int8")
    if args.int8 and "onnx" not in formats:
        raise UserError("--int8 quantises model.onnx: use --format onnx or all")
    if args.calib_size < 1:
        raise UserError("--calib-size must be at least 1")
    if args.format is None and "onnx" not in formats:
        print("note: paddle2onnx / onnxruntime not installed: writing the Paddle Inference model only "
              "(pip install -r requirements-deploy.txt for model.onnx)")
    paddle.set_device("cpu")
    cfg, model, art, notes = load_model(args)
    g = cfg.Global
    print(art.loaded_line())
    for note in notes:
        print(f"note: {note}")
    names, why = class_names_for(cfg, art)
    if why:
        print(f"note: the export holds {why}")
    out = os.path.abspath(args.out)
    calib = calibration_images(cfg, args.calib, args.calib_size) if args.int8 else None
    with filtered_output():  # paddle2onnx's, Paddle's glog, ONNX Runtime's and NNCF's progress and INFO lines
        diffs = export_checked(model, g.img_size, out, formats, calib, description(model, cfg, art, names))
        agreement = int8_agreement_line(out, calib) if args.int8 else None
    files = ", ".join(sorted(os.listdir(out)))
    checks = ", ".join(f"{RUNTIME_NAMES[fmt]} {d:.2g}" for fmt, d in diffs.items())
    print(f"exported {g.model} for [N, 3, {', '.join(map(str, image_hw(g.img_size)))}] inputs to {out}: {files}; "
          f"max |logits - dynamic logits|: {checks}")
    if args.int8:
        print(agreement)
        print(int8_matmuls_line(out))


if __name__ == "__main__":
    sys.exit(main())
