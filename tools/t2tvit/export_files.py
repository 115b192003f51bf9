"""The files of an exported model directory (tools/export_model.py writes them; every backend reads them).

    model_files(DIR) -> (inference.json or .pdmodel, inference.pdiparams, meta)   the Paddle Inference program
    onnx_file(DIR) -> (model.onnx, meta)                                          what ONNX Runtime and OpenVINO run
    int8_file(DIR, backend)                                                       the int8 model of that backend
    read_meta(DIR)                                                                inference.yml: what the graph takes
                                                                                  (all it says: export_meta.read)

META_FILE is the export's commit record: an export folder without it holds no model that any reader accepts.
"""
import hashlib
import os

from . import export_meta
from .errors import UserError
from .export_meta import META_FILE

PREFIX = "inference"
PIR_PROGRAM, LEGACY_PROGRAM = PREFIX + ".json", PREFIX + ".pdmodel"  # Paddle 3.x (PIR) writes .json, 2.6 .pdmodel
MODEL_FILES = (PIR_PROGRAM, LEGACY_PROGRAM)
PARAMS_FILE = PREFIX + ".pdiparams"
ONNX_FILE = "model.onnx"
# The post-training int8 models (t2tvit/quantize.py), both quantised from model.onnx.
ORT_INT8_FILE = "model_int8.onnx"
OV_INT8_FILE = "model_int8.xml"
OV_INT8_WEIGHTS = "model_int8.bin"
INT8_FILES = (ORT_INT8_FILE, OV_INT8_FILE, OV_INT8_WEIGHTS)
# The int8 model each int8 backend runs.
INT8_MODEL = {"onnxruntime": ORT_INT8_FILE, "openvino": OV_INT8_FILE}
# Export formats and the files each one writes (with META_FILE, which every format needs).
FORMATS = {"paddle": MODEL_FILES + (PARAMS_FILE,), "onnx": (ONNX_FILE,), "int8": INT8_FILES}


def read_meta(model_dir):
    """What the graph takes, from the exported model's META_FILE (read and checked by export_meta.read):
    {model, input, img_size, num_classes}."""
    art = export_meta.read(model_dir)
    return {"model": art.settings["Global.model"], "input": art.input_name,
            "img_size": art.settings["Global.img_size"], "num_classes": art.settings["Global.num_classes"]}


def paddle_major():
    import paddle

    return int(paddle.__version__.split(".")[0])


def paddle_programs():
    """The program files the installed Paddle Inference runs: Paddle 2 cannot read a PIR program (its predictor
    dies with SIGSEGV on one), Paddle 3 reads both."""
    return (LEGACY_PROGRAM,) if paddle_major() < 3 else MODEL_FILES


def runnable_program(model_dir):
    """The program file in model_dir that this Paddle runs, with its params file beside it; None if there is none."""
    if not os.path.isfile(os.path.join(model_dir, PARAMS_FILE)):
        return None
    paths = (os.path.join(model_dir, name) for name in paddle_programs())
    return next((path for path in paths if os.path.isfile(path)), None)


def model_files(model_dir):
    """(model file, params file, meta dict) of the Paddle Inference model in model_dir that this Paddle runs."""
    meta = read_meta(model_dir)
    program = runnable_program(model_dir)
    if program:
        return program, os.path.join(model_dir, PARAMS_FILE), meta
    if os.path.isfile(os.path.join(model_dir, PIR_PROGRAM)):
        raise UserError(f"{os.path.join(model_dir, PIR_PROGRAM)} is a Paddle 3 program, which Paddle "
                        f"{paddle_major()} cannot run: export again where Paddle {paddle_major()} is installed, or "
                        "run this export with --backend onnxruntime or openvino")
    raise UserError(f"{model_dir} holds no Paddle Inference model ({' or '.join(MODEL_FILES)} with "
                    f"{PARAMS_FILE}); export one with tools/export_model.py --format paddle (or all)")


def onnx_file(model_dir):
    """(path of model.onnx, meta dict) of the ONNX model in model_dir."""
    meta = read_meta(model_dir)
    path = os.path.join(model_dir, ONNX_FILE)
    if not os.path.isfile(path):
        raise UserError(f"{model_dir} holds no {ONNX_FILE}; export one with tools/export_model.py --format onnx "
                        f"(or all)")
    return path, meta


def int8_file(model_dir, backend):
    """Path of `backend`'s int8 model in model_dir (written by tools/export_model.py --int8)."""
    read_meta(model_dir)
    path = os.path.join(model_dir, INT8_MODEL[backend])
    if not os.path.isfile(path):
        raise UserError(f"{model_dir} holds no int8 model for {backend} ({INT8_MODEL[backend]}); write it with "
                        f"tools/export_model.py --int8 --calib IMAGES")
    return path


def has_format(model_dir, fmt):
    """Whether model_dir holds a model of format `fmt` that can run here."""
    if fmt == "paddle":
        return runnable_program(model_dir) is not None
    return any(os.path.isfile(os.path.join(model_dir, name)) for name in FORMATS[fmt])


def export_digest(model_dir):
    """A hash of the exported model files in model_dir (a new export is a new model to time)."""
    digest = hashlib.sha256()
    for name in sorted(sum(FORMATS.values(), (META_FILE,))):
        path = os.path.join(model_dir, name)
        if os.path.isfile(path):
            digest.update(name.encode())
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()[:16]
