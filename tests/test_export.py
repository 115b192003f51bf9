"""Exported inference models compute the dynamic model's logits at any batch size; bad input fails cleanly."""
import glob
import os
import subprocess
import sys

import numpy as np
import paddle
import pytest

import infer
from infer import Predictor, model_files
from t2tvit.t2t import create_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPORT = os.path.join(ROOT, "tools", "export_model.py")
INFER = os.path.join(ROOT, "tools", "infer.py")
CONFIG = os.path.join(ROOT, "config", "t2t_vit_7.yaml")
SMALL = ["-o", "Global.img_size=64", "Global.num_classes=10"]
IMAGE = sorted(glob.glob(os.path.join(ROOT, "lit_data", "val", "*", "*.JPEG")))[0]


def run(script, *args):
    return subprocess.run([sys.executable, script, *map(str, args)], capture_output=True, text=True, cwd=ROOT)


def one_error_line(r):
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert r.returncode != 0 and len(errors) == 1 and "Traceback" not in r.stderr, r.stderr
    return errors[0]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    paddle.seed(5)
    model = create_model("t2t_vit_7", img_size=64, num_classes=10)
    paddle.save(model.state_dict(), str(tmp / "weights.pdparams"))
    out = tmp / "inference"
    r = run(EXPORT, "-c", CONFIG, "--weights", tmp / "weights.pdparams", "--out", out, *SMALL)
    assert r.returncode == 0, r.stderr
    model.eval()
    return model, str(out)


def logits_of(model, x):
    with paddle.no_grad():
        return model(paddle.to_tensor(x)).numpy()


@pytest.mark.parametrize("avx512", [True, False])
def test_exported_logits_equal_dynamic_ones_for_two_batch_sizes(exported, monkeypatch, avx512):
    model, out = exported
    if not avx512:  # the predictor an AVX2-only CPU gets, without the pass that dies there
        monkeypatch.setattr(infer, "cpu_flags", lambda: {"avx2"})
    predictor = Predictor(out, threads=2)
    for batch in (1, 3):
        x = np.random.RandomState(batch).standard_normal((batch, 3, 64, 64)).astype("float32")
        got = predictor(x)
        assert got.shape == (batch, 10)
        assert np.abs(got - logits_of(model, x)).max() < 1e-4


def test_export_writes_this_paddles_format_and_what_the_graph_takes(exported):
    _, out = exported
    model_file, _, meta = model_files(out)
    assert os.path.basename(model_file) in infer.MODEL_FILES
    assert meta == {"model": "t2t_vit_7", "input": "x", "img_size": 64, "num_classes": 10}


def test_predictor_rejects_images_of_another_size(exported):
    with pytest.raises(infer.UserError, match=r"\[N, 3, 64, 64\]"):
        Predictor(exported[1], threads=1)(np.zeros((1, 3, 32, 32), np.float32))


def test_infer_cli_classifies_an_image(exported):
    r = run(INFER, IMAGE, "--inference-dir", exported[1], "-c", CONFIG, *SMALL, "--threads", "1", "--topk", "3")
    assert r.returncode == 0, r.stderr
    assert "class_id is: " in r.stdout and "top-3: " in r.stdout


def test_predict_with_inference_dir_agrees_with_dynamic_weights(exported, tmp_path):
    predict = os.path.join(ROOT, "tools", "predict.py")
    weights = os.path.join(os.path.dirname(exported[1]), "weights.pdparams")
    engine = run(predict, IMAGE, "--inference-dir", exported[1], "-c", CONFIG, *SMALL)
    dynamic = run(predict, IMAGE, "--weights", weights, "-c", CONFIG, *SMALL)
    assert engine.returncode == 0 and dynamic.returncode == 0, engine.stderr + dynamic.stderr
    assert "class_id is: " in engine.stdout and engine.stdout.split("\n")[1] == dynamic.stdout.split("\n")[1]


def test_infer_cli_config_of_another_img_size_is_one_line(exported):
    r = run(INFER, IMAGE, "--inference-dir", exported[1], "-c", CONFIG)
    assert "takes 64 px images but the config says Global.img_size=224" in one_error_line(r)


@pytest.mark.parametrize("case", ["missing_weights", "weights_of_another_model"])
def test_export_bad_weights_one_line_and_nothing_written(tmp_path, case):
    weights = tmp_path / "weights.pdparams"
    if case == "weights_of_another_model":
        paddle.save(create_model("t2t_vit_10", img_size=64, num_classes=10).state_dict(), str(weights))
    out = tmp_path / "inference"
    r = run(EXPORT, "-c", CONFIG, "--weights", weights, "--out", out, *SMALL)
    line = one_error_line(r)
    assert ("not found" if case == "missing_weights" else "unexpected: blocks.7") in line
    assert sorted(p.name for p in tmp_path.iterdir()) == (["weights.pdparams"] if weights.exists() else [])
