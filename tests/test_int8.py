"""int8: export_model.py --int8 writes quantised models for onnxruntime and openvino that agree with fp32,
predict.py --precision int8 runs them, and what cannot run int8 is refused with one line."""
import os
import shutil
import subprocess

import numpy as np
import paddle
import pytest

from runner import ROOT, command, run_main, run_tool
from t2tvit import backends, cpu_env, export_files, quantize
from t2tvit.deploy import create_predictor
from t2tvit.errors import UserError
from test_export import CONFIG, PHOTOS, SMALL, decisive_model, one_error_line, photos

PHOTO_DIR = os.path.join(ROOT, "lit_data", "val")
# The decisive model (wide top-1 margins, logits of std ~4) on the 20 photos it was calibrated on: both int8
# models give every fp32 top-1 (measured 100%); max |logit diff| measured 1.05 for openvino (onnxruntime:
# below 0.5); asserted with a margin.
INT8_MAX_DIFF = 2.0


@pytest.fixture(scope="module")
def exported_int8(tmp_path_factory):
    """(directory of an export with --int8 calibrated on the photos, export_model's result)."""
    tmp = tmp_path_factory.mktemp("int8")
    paddle.save(decisive_model().state_dict(), str(tmp / "weights.pdparams"))
    out = tmp / "inference"
    r = run_tool("export_model.py", "--weights", tmp / "weights.pdparams", "--out", out, "--int8", "--calib",
                 PHOTO_DIR, "--calib-size", "20", *SMALL, config=CONFIG, timeout=600)
    return str(out), r


@pytest.mark.slow
def test_int8_export_writes_a_model_per_backend_and_reports_its_agreement(exported_int8):
    out, r = exported_int8
    assert r.returncode == 0, r.stderr[-3000:]
    for name in export_files.INT8_FILES:
        assert os.path.getsize(os.path.join(out, name)) > 0
    assert "int8 top-1 agreement with fp32 on the 20 calibration images: onnxruntime 100.0%" in r.stdout


@pytest.mark.slow
@pytest.mark.parametrize("backend", backends.INT8_BACKENDS)
def test_int8_agrees_with_fp32_on_every_photo(exported_int8, backend):
    out, _ = exported_int8
    x = photos()
    fp32 = create_predictor(out, "onnxruntime", "fp32")(x)
    got = create_predictor(out, backend, "int8")(x)
    assert (got.argmax(-1) == fp32.argmax(-1)).all()
    assert 0 < np.abs(got - fp32).max() < INT8_MAX_DIFF  # 0 would mean nothing was quantised


@pytest.mark.slow
def test_both_int8_models_run_every_linear_matmul_in_int8_and_keep_the_performer_features_float(exported_int8):
    # The attention's q/k/v weights are computed in the graph (split, scale): unless the export is folded
    # before NNCF, those 21 MatMuls stay float in OpenVINO (33 of 54 int8, measured).
    import onnx
    out, r = exported_int8
    quantised, kept = quantize.float_kept_matmuls(onnx.load(os.path.join(out, export_files.ONNX_FILE)))
    counts = quantize.openvino_matmul_precisions(os.path.join(out, export_files.OV_INT8_FILE))
    assert counts["int8"] == len(quantised) == 7 * 6 + 9 + 1  # blocks (q, k, v, proj, fc1, fc2), T2T module, head
    # ONNX Runtime too, the head included (its pre-processing fuses the head's MatMul + Add into a Gemm)
    assert quantize.onnx_int8_matmuls(os.path.join(out, export_files.ORT_INT8_FILE)) == len(quantised)
    assert counts["float, into Exp"] > 0 and counts["float, into Exp"] + counts["float"] == len(kept)
    assert quantize.int8_matmuls_line(out) in r.stdout


def test_only_linear_layers_are_quantised_and_the_performer_exp_stays_float(tmp_path):
    # A Linear (constant weight) MatMul is quantised; the random-feature projection feeding Exp, an
    # activation x activation MatMul, and a sum written as a GEMM with a ones vector stay float.
    from onnx import TensorProto, helper
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 4], [0.1 * i for i in range(16)])
    nodes = [helper.make_node("MatMul", ["x", "w"], ["lin"], name="linear"),
             helper.make_node("Add", ["lin", "w"], ["h"], name="bias"),
             helper.make_node("MatMul", ["h", "w"], ["proj"], name="random_features"),
             helper.make_node("Sub", ["proj", "w"], ["shifted"], name="sub"),
             helper.make_node("Exp", ["shifted"], ["e"], name="exp"),
             helper.make_node("MatMul", ["e", "h"], ["y0"], name="act_act"),
             helper.make_node("Constant", [], ["ones"], value=helper.make_tensor("o", TensorProto.FLOAT, [1, 4],
                                                                                 [1.0] * 4)),
             helper.make_node("MatMul", ["ones", "y0"], ["y"], name="token_sum")]  # a sum written as a GEMM
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [w])
    assert quantize.float_kept_matmuls(helper.make_model(graph)) == (
        ["linear"], ["random_features", "act_act", "token_sum"])


@pytest.mark.slow
@pytest.mark.parametrize("backend", ("auto",) + backends.INT8_BACKENDS)
def test_predict_int8_runs_the_quantised_model(exported_int8, backend):
    out, _ = exported_int8
    r = run_tool("predict.py", PHOTOS[0], "--inference-dir", out, "--backend", backend, "--precision", "int8",
                 "--topk", "1", *SMALL, config=CONFIG)
    assert r.returncode == 0, r.stderr
    picked = r.stderr.split("backend: ", 1)[1].split()[0]
    assert picked in backends.INT8_BACKENDS and (backend == "auto" or picked == backend), r.stderr
    assert f"backend: {picked} int8 on cpu" in r.stderr and "class_id is: 0" in r.stdout


@pytest.mark.slow
def test_predict_auto_verbose_says_what_it_picked_and_why(exported_int8, tmp_path):
    out, _ = exported_int8
    cmd, env = command("predict.py", PHOTOS[0], "--inference-dir", out, "--precision", "int8", "-v", *SMALL,
                       config=CONFIG)
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=dict(env, XDG_CACHE_HOME=str(tmp_path)),
                       timeout=300)
    assert r.returncode == 0, r.stderr
    [line] = [x for x in r.stderr.splitlines() if x.startswith("auto picked ")]
    assert "fastest at batch 1 on this CPU (" in line and "timed now, cached in" in line
    assert (tmp_path / "t2tvit" / "auto_backend.json").exists()


@pytest.mark.slow
def test_int8_where_it_cannot_run_is_one_line(exported_int8, tmp_path, monkeypatch):
    out, _ = exported_int8
    r = run_main("predict.py", PHOTOS[0], "--inference-dir", out, "--backend", "paddle", "--precision", "int8",
                 *SMALL, config=CONFIG)
    assert "Paddle Inference has no int8 path here" in one_error_line(r)
    r = run_main("export_model.py", "--weights", tmp_path / "none.pdparams", "--out", tmp_path / "o", "--int8",
                 *SMALL, config=CONFIG)
    assert one_error_line(r).endswith("--int8 needs calibration images: add --calib DIR_OR_LIST")
    r = run_main("export_model.py", "--weights", tmp_path / "none.pdparams", "--out", tmp_path / "o", "--int8",
                 "--calib", tmp_path / "missing", "--format", "paddle", *SMALL, config=CONFIG)
    assert one_error_line(r).endswith("--int8 quantises model.onnx: use --format onnx or all")
    fp32_only = tmp_path / "fp32"
    fp32_only.mkdir()
    for name in (export_files.META_FILE, export_files.ONNX_FILE):
        shutil.copy(os.path.join(out, name), fp32_only / name)
    with pytest.raises(UserError, match="holds no int8 model for onnxruntime"):
        create_predictor(str(fp32_only), "onnxruntime", "int8")
    monkeypatch.setattr(cpu_env, "cpu_flags", lambda: {"sse4_2"})
    with pytest.raises(UserError, match="^int8 needs a CPU with AVX2"):
        create_predictor(out, "openvino", "int8")


def test_calibration_takes_folders_and_lists_evenly_spaced(tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{p} {i}\n" for i, p in enumerate(PHOTOS)))
    assert quantize.calibration_paths([str(listing)], 5) == [PHOTOS[i] for i in (0, 5, 10, 14, 19)]
    assert quantize.calibration_paths([PHOTO_DIR], 20) == PHOTOS
    with pytest.raises(UserError, match="^--calib .*nowhere: no such file or folder$"):
        quantize.calibration_paths([str(tmp_path / "nowhere")], 5)
