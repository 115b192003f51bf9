"""Exported models (Paddle Inference and ONNX) compute the dynamic model's logits on every deployment backend,
at any batch size; bf16 stays close and agrees on top-1 where the CPU has it; bad input fails cleanly."""
import glob
import os

import numpy as np
import paddle
import pytest
import yaml

import export_model
from runner import ROOT, error_lines, run_main, run_tool
from t2tvit import backends, cpu_env, deploy, export, export_files
from t2tvit.config import load_config
from t2tvit.backends import BACKENDS, BF16_BACKENDS, Predictor
from t2tvit.deploy import create_predictor
from t2tvit.export_files import ONNX_FILE, model_files
from t2tvit.errors import UserError
from t2tvit.t2t import create_model
from t2tvit.transforms import build_transform

CONFIG = os.path.join(ROOT, "config", "t2t_vit_7.yaml")
PHOTOS = sorted(glob.glob(os.path.join(ROOT, "lit_data", "val", "*", "*.JPEG")))
IMAGE = PHOTOS[0]
SIZE, CLASSES = 64, len(PHOTOS)
SMALL = ["-o", f"Global.img_size={SIZE}", f"Global.num_classes={CLASSES}"]
FP32_TOL = 1e-4
# bf16 (8-bit mantissa) against fp32 on the photos: the measured max |logit diff| is 4-6% of the logits' std
# for this model (0.3 / 4.6), and every top-1 margin is at least 1.8.
BF16_REL_TOL = 0.12


def one_error_line(r):
    errors = error_lines(r)
    assert r.returncode != 0 and len(errors) == 1 and "Traceback" not in r.stderr, r.stderr
    return errors[0]


def photos():
    """The lit_data photos through the eval transform at SIZE px, [20, 3, SIZE, SIZE]."""
    transform = build_transform(load_config(CONFIG, [f"Global.img_size={SIZE}"]), "val")
    return np.stack([transform(p) for p in PHOTOS]).astype("float32")


def decisive_model():
    """A T2T-ViT-7 at SIZE px, random backbone, whose head tells the 20 photos apart by a wide margin: class i
    is photo i's centred feature direction (a prototype classifier). Random-init logits have top-2 gaps of
    ~0.01, where top-1 agreement between precisions would mean nothing."""
    paddle.seed(5)
    model = create_model("t2t_vit_7", img_size=SIZE, num_classes=CLASSES)
    model.eval()
    with paddle.no_grad():
        feats = model.forward_features(paddle.to_tensor(photos())).numpy().astype("float64")
    centred = feats - feats.mean(0)
    norms = np.linalg.norm(centred, axis=1, keepdims=True)
    weight = (centred / norms).T * (10 / norms.mean())
    model.head.weight.set_value(weight.astype("float32"))
    model.head.bias.set_value((-feats.mean(0) @ weight).astype("float32"))
    return model


def logits_of(model, x):
    with paddle.no_grad():
        return model(paddle.to_tensor(x)).numpy()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(dynamic model, directory of its export in every format, the photos, the dynamic model's logits)."""
    tmp = tmp_path_factory.mktemp("export")
    model = decisive_model()
    paddle.save(model.state_dict(), str(tmp / "weights.pdparams"))
    out = tmp / "inference"
    r = run_tool("export_model.py", "--weights", tmp / "weights.pdparams", "--out", out, *SMALL, config=CONFIG)
    assert r.returncode == 0, r.stderr
    x = photos()
    return model, str(out), x, logits_of(model, x)


def test_every_deployment_backend_is_installed_where_the_tests_run():
    assert backends.available_backends() == list(BACKENDS)  # requirements-test.txt includes requirements-deploy.txt


@pytest.mark.slow
def test_export_writes_both_formats_and_what_the_graph_takes(exported):
    out = exported[1]
    model_file, _, meta = model_files(out)
    assert os.path.basename(model_file) in export_files.MODEL_FILES
    assert sorted(os.listdir(out)) == sorted([os.path.basename(model_file), "inference.pdiparams",
                                              "inference.yml", ONNX_FILE])
    assert meta == {"model": "t2t_vit_7", "input": "x", "img_size": SIZE, "num_classes": CLASSES}


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_each_backend_computes_the_dynamic_logits_at_two_batch_sizes(exported, backend):
    model, out, _, _ = exported
    predictor = create_predictor(out, backend, "fp32", threads=2)
    assert (predictor.backend, predictor.precision) == (backend, "fp32")
    for batch in (1, 3):  # one model, two batch sizes: the batch axis is dynamic
        x = np.random.RandomState(batch).standard_normal((batch, 3, SIZE, SIZE)).astype("float32")
        got = predictor(x)
        assert got.shape == (batch, CLASSES)
        assert np.abs(got - logits_of(model, x)).max() < FP32_TOL


@pytest.mark.slow
def test_paddle_backend_without_avx512_computes_the_dynamic_logits(exported, monkeypatch):
    # the predictor an AVX2-only CPU gets, without the oneDNN pass that dies there
    monkeypatch.setattr(cpu_env, "cpu_flags", lambda: {"avx2"})
    _, out, x, expected = exported
    assert np.abs(Predictor(out, threads=2)(x[:2]) - expected[:2]).max() < FP32_TOL


@pytest.mark.slow
@pytest.mark.may_skip_in_ci("bf16 needs a CPU with AVX512_BF16 or AMX, and Paddle 3.x for the paddle backend")
@pytest.mark.parametrize("backend", BF16_BACKENDS)
def test_bf16_stays_close_to_fp32_and_agrees_on_every_top1(exported, backend):
    if backends.precision_problem(backend, "bf16"):  # e.g. a CPU without AVX512_BF16 / AMX
        pytest.skip(backends.precision_problem(backend, "bf16"))
    _, out, x, expected = exported
    assert "bf16" in backends.supported_precisions(backend)
    predictor = create_predictor(out, backend, "bf16", threads=2)
    got = predictor(x)
    diff = np.abs(got - expected).max()
    assert 0 < diff < BF16_REL_TOL * expected.std()  # > 0: it really ran in bf16
    assert (got.argmax(1) == expected.argmax(1)).all()


@pytest.mark.slow
def test_bf16_where_unsupported_is_one_clear_reason(exported, monkeypatch):
    monkeypatch.setattr(cpu_env, "cpu_flags", lambda: {"avx2", "avx512f"})
    assert [backends.supported_precisions(b) for b in BACKENDS] == [["fp32"], ["fp32", "int8"], ["fp32", "int8"]]
    with pytest.raises(UserError, match="^bf16 needs a CPU with AVX512_BF16 or AMX; this CPU has neither$"):
        create_predictor(exported[1], "paddle", "bf16")
    monkeypatch.setattr(cpu_env, "cpu_flags", lambda: {"avx512_bf16"})
    assert backends.supported_precisions("onnxruntime") == ["fp32"]
    with pytest.raises(UserError, match="onnxruntime has no bf16"):
        create_predictor(exported[1], "onnxruntime", "bf16")
    with pytest.raises(UserError, match="unknown backend 'tensorflow'"):
        create_predictor(exported[1], "tensorflow")


@pytest.mark.slow
def test_auto_backend_is_the_fastest_installed_whose_model_file_is_there(exported, tmp_path):
    out = exported[1]
    assert deploy.auto_backend(out) == deploy.AUTO_ORDER[0]
    paddle_only = tmp_path / "paddle_only"
    paddle_only.mkdir()
    for name in os.listdir(out):
        if name != ONNX_FILE:
            os.symlink(os.path.join(out, name), paddle_only / name)
    assert deploy.auto_backend(str(paddle_only)) == "paddle"
    with pytest.raises(UserError, match="holds no model.onnx"):
        create_predictor(str(paddle_only), "openvino")


@pytest.mark.slow
def test_a_paddle_3_program_where_paddle_2_runs_is_one_line_and_auto_leaves_it_out(exported, tmp_path, monkeypatch):
    # Paddle Inference 2.6 dies with SIGSEGV creating a predictor on Paddle 3's PIR program (inference.json): an
    # export made under Paddle 3.x and run where requirements-gpu.txt installed Paddle 2.6 must say so instead
    out, paddle_only = tmp_path / "pir", tmp_path / "pir_paddle_only"
    for folder in (out, paddle_only):
        folder.mkdir()
        for name in os.listdir(exported[1]):
            if folder == out or name != ONNX_FILE:
                os.symlink(os.path.join(exported[1], name),
                           folder / ("inference.json" if name.startswith("inference.") and
                                     name.endswith((".json", ".pdmodel")) else name))
    monkeypatch.setattr(export_files, "paddle_major", lambda: 2)
    with pytest.raises(UserError, match=r"inference\.json is a Paddle 3 program, which Paddle 2 cannot run.*"
                                        r"--backend onnxruntime or openvino"):
        create_predictor(str(out), "paddle")
    assert not deploy.runnable(str(out), "paddle", "fp32") and deploy.runnable(str(out), "onnxruntime", "fp32")
    with pytest.raises(UserError, match="no installed backend"):
        deploy.auto_backend(str(paddle_only))


@pytest.mark.slow
def test_export_refuses_and_leaves_nothing_when_onnx_runtime_disagrees(exported, tmp_path, monkeypatch, capsys):
    class Off(backends.OnnxRuntimePredictor):
        def run(self, images):
            return super().run(images) + 2 * FP32_TOL

    monkeypatch.setitem(export.CHECKERS, "onnx", Off)
    weights = os.path.join(os.path.dirname(exported[1]), "weights.pdparams")
    with pytest.raises(SystemExit):
        export_model.main(["-c", CONFIG, "--weights", weights, "--out", str(tmp_path / "inference"), *SMALL])
    assert "nothing written" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_export_onnx_only_replaces_a_previous_export(exported, tmp_path):
    out = tmp_path / "inference"
    out.mkdir()
    for name in os.listdir(exported[1]):  # a previous export of other weights
        (out / name).write_text("stale")
    weights = os.path.join(os.path.dirname(exported[1]), "weights.pdparams")
    r = run_tool("export_model.py", "--weights", weights, "--out", out, "--format", "onnx", *SMALL, config=CONFIG)
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(out)) == ["inference.yml", ONNX_FILE]
    assert "ONNX Runtime on model.onnx" in r.stdout and "Paddle Inference" not in r.stdout
    with pytest.raises(UserError, match="holds no Paddle Inference model"):
        create_predictor(str(out), "paddle")
    x, expected = exported[2][:2], exported[3][:2]
    assert np.abs(create_predictor(str(out), "onnxruntime")(x) - expected).max() < FP32_TOL


@pytest.mark.slow
def test_openvino_profile_says_where_the_time_goes_by_layer_type(exported):
    _, out, x, _ = exported
    rows = backends.openvino_profile(str(out), x[:2], runs=2)
    kinds = [kind for kind, _, _, _ in rows]
    assert "FullyConnected" in kinds and "MVN" in kinds  # the Linear GEMMs and LayerNorm
    assert all(ms >= 0 for _, _, ms, _ in rows) and sum(share for *_, share in rows) == pytest.approx(1.0)
    assert [ms for _, _, ms, _ in rows] == sorted((ms for _, _, ms, _ in rows), reverse=True)


def test_predictor_rejects_images_of_another_size(exported):
    with pytest.raises(UserError, match=rf"\[N, 3, {SIZE}, {SIZE}\]"):
        create_predictor(exported[1], "onnxruntime", threads=1)(np.zeros((1, 3, 32, 32), np.float32))


@pytest.mark.slow
def test_infer_cli_is_predict_with_an_exported_model(exported):
    r = run_tool("infer.py", IMAGE, "--inference-dir", exported[1], *SMALL, "--threads", "1", "--topk", "3",
             config=CONFIG)
    assert r.returncode == 0, r.stderr
    assert "class_id is: 0" in r.stdout and "top-3: " in r.stdout


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_predict_through_each_backend_agrees_with_the_dynamic_model(exported, backend):
    weights = os.path.join(os.path.dirname(exported[1]), "weights.pdparams")
    images = PHOTOS[:3]
    engine = run_tool("predict.py", *images, "--inference-dir", exported[1], "--backend", backend, *SMALL,
                  config=CONFIG)
    assert engine.returncode == 0, engine.stderr
    assert f"backend: {backend} fp32 on cpu" in engine.stderr
    ids = [line for line in engine.stdout.splitlines() if line.startswith("class_id is: ")]
    assert ids == [f"class_id is: {i}" for i in range(3)]  # photo i is class i for the decisive model
    if backend == "paddle":
        dynamic = run_tool("predict.py", *images, "--weights", weights, *SMALL, config=CONFIG)
        assert dynamic.returncode == 0, dynamic.stderr
        assert [line for line in dynamic.stdout.splitlines() if line.startswith("class_id is: ")] == ids


@pytest.mark.slow
def test_infer_cli_config_of_another_img_size_is_one_line(exported):
    r = run_tool("infer.py", IMAGE, "--inference-dir", exported[1], config=CONFIG)
    assert f"Global.img_size {SIZE} (the export) vs 224 ({CONFIG})" in one_error_line(r)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["missing_weights", "weights_of_another_model"])
def test_export_bad_weights_one_line_and_nothing_written(tmp_path, case):
    weights = tmp_path / "weights.pdparams"
    if case == "weights_of_another_model":
        paddle.save(create_model("t2t_vit_10", img_size=SIZE, num_classes=CLASSES).state_dict(), str(weights))
    out = tmp_path / "inference"
    r = run_main("export_model.py", "--weights", weights, "--out", out, *SMALL, config=CONFIG)
    line = one_error_line(r)
    assert ("not found" if case == "missing_weights" else "unexpected: blocks.7") in line
    assert sorted(p.name for p in tmp_path.iterdir()) == (["weights.pdparams"] if weights.exists() else [])


def export_whose_inference_yml_says(exported, tmp_path, size, extra_class):
    """A copy of the export whose inference.yml describes another input size or one class more than its model
    files compute (a stranger's folder), consistent in itself."""
    out = tmp_path / "lying"
    out.mkdir()
    for name in os.listdir(exported[1]):
        os.link(os.path.join(exported[1], name), out / name)
    meta_path = out / "inference.yml"
    meta = yaml.safe_load(meta_path.read_text())
    meta["Global"]["img_size"] = size
    ops = {next(iter(op)): op[next(iter(op))] for op in meta["PreProcess"]["transform_ops"]}
    ops["ResizeImage"]["resize_short"] = int(size / ops["ResizeImage"]["crop_pct"])
    ops["CropImage"]["size"] = size
    if extra_class:
        meta["Global"]["num_classes"] += 1
        names = meta["PostProcess"]["Topk"]["label_list"]
        meta["PostProcess"]["Topk"]["label_list"] = names + ["one more"] if names else names
    meta_path.unlink()  # a hard link to the real export's file
    meta_path.write_text(yaml.safe_dump(meta, sort_keys=False))
    return str(out)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("size, extra_class", [(SIZE // 2, False), (SIZE, True)])
def test_an_inference_yml_that_is_not_its_model_s_own_is_one_line_on_every_backend(exported, tmp_path, backend,
                                                                                     size, extra_class):
    out = export_whose_inference_yml_says(exported, tmp_path, size, extra_class)
    with pytest.raises(UserError) as e:  # before the first batch where the model file declares its input size
        create_predictor(out, backend, threads=1)(np.zeros((1, 3, size, size), np.float32))
    message = str(e.value)
    assert message.startswith(f"{out}: its model file ") and "\n" not in message, message
    assert f"{size} x {size} images" in message and "is inference.yml this model's own?" in message, message
    if extra_class:
        assert f"logits for 1 image(s) of {size} x {size}, not the [1, {CLASSES + 1}]" in message, message
