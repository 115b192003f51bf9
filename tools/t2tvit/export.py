"""Export a T2T-ViT: the Paddle Inference program and model.onnx, checked against the dynamic model.

export() writes those files from a dynamic model; export_checked() (what tools/export_model.py calls) writes
them into a private temporary folder, checks each against the dynamic model (check_export), quantises int8
models if asked (t2tvit/quantize.py), and only then replaces the output folder's model files.
"""
import importlib.util
import inspect
import os
import shutil
import sys
import tempfile

import numpy as np
import yaml

from . import export_meta
from .atomic import TEMP_MARK, remove_stale_temporaries
from .backends import OnnxRuntimePredictor, Predictor
from .errors import StorageError, UserError, shown
from .export_files import FORMATS, META_FILE, ONNX_FILE, PREFIX, model_files
from .export_meta import INPUT_NAME
from .lockfile import OutputLock
from .preempt import undone_on_stop
from .quantize import quantize_export
from .sizes import image_hw

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


def export(model, img_size, out_dir, formats=None, description=None):
    """Trace `model` (in eval mode) for [N, 3, H, W] inputs (img_size S or (H, W)) and save it under out_dir: the
    Paddle program always (it is also what model.onnx is converted from), model.onnx if "onnx" is in
    `formats` (default: parse_formats()), and META_FILE: `description` (export_meta.description(): the model,
    the eval preprocessing, the class names and the weights exported; default: the model with default.yaml's
    preprocessing)."""
    import paddle

    h, w = image_hw(img_size)
    if (h, w) != tuple(model.img_size):
        raise ValueError(f"export at {img_size} of a model built for {model.img_size}")
    spec = [paddle.static.InputSpec([None, 3, h, w], "float32", INPUT_NAME)]
    # full_graph: one whole static program (Paddle 3.x would otherwise trace through SOT with fallbacks).
    static = paddle.jit.to_static(model, input_spec=spec, full_graph=True)
    paddle.jit.save(static, os.path.join(out_dir, PREFIX))
    with open(os.path.join(out_dir, META_FILE), "w", encoding="utf-8") as f:
        yaml.safe_dump(description or export_meta.description(model), f, sort_keys=False, allow_unicode=True)
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
    import paddle

    x = np.random.RandomState(0).standard_normal((batch, 3, *image_hw(img_size))).astype("float32")
    with paddle.no_grad():
        expected = model(paddle.to_tensor(x)).numpy()
    return {fmt: float(np.abs(CHECKERS[fmt](model_dir, threads=1)(x) - expected).max()) for fmt in formats}


def replace_files(src_dir, dst_dir, formats):
    """Move META_FILE and the files of `formats` from src_dir into dst_dir, first removing every model file
    of a previous export from dst_dir (so no file there can belong to other weights).

    META_FILE is the export's commit record: removed first and moved in last, so that at every moment (a crash
    included) dst_dir holds a whole export, the previous or the new one, or none that any reader accepts."""
    os.makedirs(dst_dir, exist_ok=True)
    for name in (META_FILE,) + sum(FORMATS.values(), ()):
        if os.path.lexists(os.path.join(dst_dir, name)):
            os.remove(os.path.join(dst_dir, name))
    for name in sum((FORMATS[fmt] for fmt in formats), ()) + (META_FILE,):
        if os.path.exists(os.path.join(src_dir, name)):
            os.replace(os.path.join(src_dir, name), os.path.join(dst_dir, name))


def export_checked(model, img_size, out_dir, formats, calib=None, description=None):
    """export() into a fresh temporary folder beside out_dir (mkdtemp: private, unpredictable), check every
    format against `model`, quantise int8 models calibrated on the images `calib` (if given; t2tvit/quantize.py),
    and only then replace out_dir's model files. Returns {format: max |logits difference|}; raises UserError,
    writing nothing, when a format differs by more than CHECK_TOL, and StorageError (nothing partial left)
    when a write fails. OUT.lock beside out_dir keeps a second export off it (and names the holder); holding it,
    the temporaries of a killed export are removed, and a stop by a signal (preempt.exit_on_signals) removes
    this one's."""
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UserError(f"--out {out_dir} exists and is not a directory")
    try:
        os.makedirs(os.path.dirname(out_dir), exist_ok=True)
    except OSError as e:
        raise StorageError(e.filename or out_dir, e) from None
    lock = OutputLock(out_dir, f"--out {shown(out_dir)}")  # OUT.lock: one export into a folder at a time
    try:
        with undone_on_stop(lock.release):
            return _export_locked(model, img_size, out_dir, formats, calib, description)
    finally:
        lock.release()


def _export_locked(model, img_size, out_dir, formats, calib, description):
    """export_checked's work, holding out_dir's lock: the temporaries a killed export left are its own to remove."""
    tmp = None
    try:
        for path in remove_stale_temporaries(out_dir):
            print(f"note: removed {shown(path)}, left by an export that was killed", file=sys.stderr)
        tmp = tempfile.mkdtemp(dir=os.path.dirname(out_dir), prefix=os.path.basename(out_dir) + TEMP_MARK)
        with undone_on_stop(lambda: shutil.rmtree(tmp, ignore_errors=True)):
            export(model, img_size, tmp, formats, description)
            diffs = check_export(model, tmp, img_size, formats)
            bad = {fmt: d for fmt, d in diffs.items() if not d <= CHECK_TOL}
            if bad:
                raise UserError("nothing written: the exported model's logits differ from the dynamic model's by "
                                + ", ".join(f"{d:.3g} ({RUNTIME_NAMES[fmt]})" for fmt, d in bad.items())
                                + f" > {CHECK_TOL}: a converter or runtime fault on this version and CPU")
            if calib is not None:
                quantize_export(tmp, calib)
                formats = (*formats, "int8")
            replace_files(tmp, out_dir, formats)
    except OSError as e:
        raise StorageError(e.filename or out_dir, e) from None
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    return diffs
