"""backend="auto" picks the fastest backend by a timing on this machine, cached per machine and model; a
corrupt cache is ignored with a warning."""
import json

import pytest

from t2tvit import backends, deploy, export_files


@pytest.fixture
def model_dir(tmp_path):
    """A folder with every format's model file (placeholders: the timing is injected), the Paddle program in the
    format the installed Paddle runs."""
    d = tmp_path / "model"
    d.mkdir()
    for name in (export_files.META_FILE, export_files.ONNX_FILE, export_files.paddle_programs()[0],
                 export_files.PARAMS_FILE):
        (d / name).write_text(name)
    return str(d)


def fake_timer(seconds, calls):
    def timer(model_dir, backend, precision, threads):
        calls.append(backend)
        return seconds[backend]
    return timer


def test_auto_follows_the_measurement_and_reuses_it_from_the_cache(model_dir, tmp_path):
    cache, calls = str(tmp_path / "cache" / "auto.json"), []
    timer = fake_timer({"openvino": 0.03, "paddle": 0.01, "onnxruntime": 0.02}, calls)
    backend, why = deploy.measured_auto_backend(model_dir, "fp32", 2, cache, timer)
    assert backend == "paddle" and sorted(calls) == sorted(backends.BACKENDS)
    assert why == f"fastest at batch 1 on this CPU (paddle 10.00 ms, onnxruntime 20.00 ms, openvino 30.00 ms; " \
                  f"timed now, cached in {cache})"
    calls.clear()
    assert deploy.measured_auto_backend(model_dir, "fp32", 2, cache, timer)[0] == "paddle" and calls == []
    [key] = json.load(open(cache))
    assert key.startswith(deploy.machine_key() + "/" + export_files.export_digest(model_dir)) and "fp32/2 threads" in key
    # Another model (new weights: new files) is timed again.
    with open(f"{model_dir}/{export_files.ONNX_FILE}", "a") as f:
        f.write("new weights")
    timer = fake_timer({"openvino": 0.01, "paddle": 0.02, "onnxruntime": 0.03}, calls)
    assert deploy.measured_auto_backend(model_dir, "fp32", 2, cache, timer)[0] == "openvino" and len(calls) == 3
    assert len(json.load(open(cache))) == 2


def test_a_corrupt_cache_is_ignored_with_a_warning_and_rewritten(model_dir, tmp_path, capsys):
    cache, calls = tmp_path / "auto.json", []
    cache.write_text("{not json")
    timer = fake_timer({"openvino": 0.02, "paddle": 0.03, "onnxruntime": 0.01}, calls)
    assert deploy.measured_auto_backend(model_dir, "fp32", 1, str(cache), timer)[0] == "onnxruntime"
    assert f"warning: ignoring the corrupt backend timing cache {cache}" in capsys.readouterr().err
    assert len(calls) == 3 and list(json.loads(cache.read_text()).values())[0]["onnxruntime"] == 0.01
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []  # written via os.replace


def test_one_candidate_needs_no_timing(model_dir, tmp_path):
    # int8 models exist for onnxruntime only: nothing to compare.
    (tmp_path / "model" / export_files.INT8_MODEL["onnxruntime"]).write_text("int8")
    backend, why = deploy.measured_auto_backend(model_dir, "int8", 1, str(tmp_path / "c.json"),
                                                fake_timer({}, []))
    assert (backend, why) == ("onnxruntime", "the only installed backend that can run this model")
    assert not (tmp_path / "c.json").exists()
