"""One speed through every path: predict.py, the Python API and the benchmark run an export with the same runtime
settings, decided in one place (t2tvit/backends.py), with no per-call work a plain session does not do; and a
user's script that builds the dynamic model gets the CPU settings the benchmark's workers run with."""
import glob
import json
import os
import subprocess
import sys

import numpy as np
import paddle
import pytest

import t2tvit
from benchmarking.sessions import PLAIN_BACKENDS, plain_session, session_settings
from runner import ROOT, run_main
from t2tvit import backends, cpu_env, pretrained
from t2tvit.deploy import create_predictor
from t2tvit.export import export
from t2tvit.export_files import ONNX_FILE
from t2tvit.t2t import create_model

SIZE = 32
PHOTO = sorted(glob.glob(os.path.join(ROOT, "lit_data", "val", "*", "*.JPEG")))[0]
MAKERS = {"openvino": "compile_openvino", "onnxruntime": "onnxruntime_session"}  # where backends.py decides


@pytest.fixture(scope="module")
def small_export(tmp_path_factory):
    paddle.seed(0)
    model = create_model("t2t_vit_7", img_size=SIZE, num_classes=3)
    model.eval()
    out = str(tmp_path_factory.mktemp("export"))
    export(model, SIZE, out, formats=("paddle", "onnx"))
    return out


@pytest.mark.parametrize("backend", PLAIN_BACKENDS)
def test_predict_the_python_api_and_the_benchmark_run_an_export_with_the_same_settings(small_export, monkeypatch,
                                                                                       backend):
    made = []
    real = getattr(backends, MAKERS[backend])
    monkeypatch.setattr(backends, MAKERS[backend], lambda *a, **k: made.append(real(*a, **k)) or made[-1])
    r = run_main("predict.py", PHOTO, "--inference-dir", small_export, "--backend", backend, config=None)
    assert r.returncode == 0 and "class_id is: " in r.stdout, r.stderr
    create_predictor(small_export, backend)  # the Python API, and the benchmark's engine rows (paddle_measures.py)
    plain_session(backend, os.path.join(small_export, ONNX_FILE), "fp32", None)  # its plain rows and direct route
    assert len(made) == 3  # each path made its session through the one function
    settings = [session_settings(session) for session in made]
    assert settings[0] == settings[1] == settings[2]
    cores = cpu_env.usable_cores()
    if backend == "openvino":
        assert settings[0] == {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", "INFERENCE_NUM_THREADS": str(cores),
                               "INFERENCE_PRECISION_HINT": "f32"}
    else:
        assert (settings[0]["intra_op_num_threads"], settings[0]["inter_op_num_threads"]) == (cores, 1)


def test_the_openvino_predictor_keeps_no_hold_on_the_callers_images_and_computes_the_plain_sessions_logits(
        small_export):
    predictor = create_predictor(small_export, "openvino", threads=1)
    images = np.random.RandomState(0).standard_normal((2, 3, SIZE, SIZE)).astype("float32")
    logits = predictor(images)
    assert not np.shares_memory(predictor.request.get_input_tensor(0).data, images)  # copied in: nothing kept
    assert not np.shares_memory(logits, predictor.request.get_output_tensor(0).data)  # the caller's own logits
    compiled = plain_session("openvino", os.path.join(small_export, ONNX_FILE), "fp32", 1)[0]
    assert np.abs(compiled(images) - logits).max() == 0.0


# Loaded at interpreter start (PYTHONPATH): records the environment when the script first imports paddle, and
# stops the process there.
SPY = '''
import importlib.abc, json, os, sys
class Spy(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "paddle":
            with open(os.environ["SPY_FILE"], "w") as f:
                json.dump({k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_DEBUG_CPU_TYPE")}, f)
            os._exit(0)
sys.meta_path.insert(0, Spy())
'''


def script_env(**extra):
    """The environment of a user's script started from a shell that set none of the CPU settings, plus extra."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_DEBUG_CPU_TYPE")
           and not k.startswith("PADDLE_")}
    return dict(env, **extra)


def test_a_users_script_that_imports_t2tvit_first_gets_the_benchmarks_cpu_settings(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(SPY)
    env = script_env(PYTHONPATH=os.pathsep.join([str(tmp_path), os.path.join(ROOT, "tools")]),
                     SPY_FILE=str(tmp_path / "seen.json"))
    script = "import t2tvit\nmodel = t2tvit.create_model('t2t_vit_7')\n"
    subprocess.run([sys.executable, "-c", script], env=env, cwd=str(tmp_path), timeout=300, check=True)
    seen = json.loads((tmp_path / "seen.json").read_text())
    # The benchmark's workers: OMP_NUM_THREADS = --threads, whose default is the usable cores; cpu_env the rest.
    assert seen == {"OMP_NUM_THREADS": str(cpu_env.usable_cores()),
                    "MKL_DEBUG_CPU_TYPE": "5" if cpu_env.is_amd_cpu() else None}


# A script that imports Paddle before the API: Paddle chose one math thread when it loaded (no OMP_NUM_THREADS);
# the API's first use gives it the process's share through Paddle's own set_num_threads, once, unless the process
# was started with OMP_NUM_THREADS (the user's choice) or shares the machine's cores with other ranks.
PADDLE_FIRST = '''
import json, os
import paddle
calls = []
real = paddle.base.core.set_num_threads
paddle.base.core.set_num_threads = lambda n: calls.append(n) or real(n)
import t2tvit
t2tvit.create_model("t2t_vit_7", img_size=32, num_classes=2)
t2tvit.create_transform(t2tvit.create_model("t2t_vit_7", img_size=32, num_classes=2))
print(json.dumps({"calls": calls, "omp": os.environ["OMP_NUM_THREADS"]}))
'''


@pytest.mark.parametrize("started_with,caught_up", [({}, True), ({"OMP_NUM_THREADS": "1"}, False),
                                                     ({"PADDLE_LOCAL_SIZE": "64"}, False)])
def test_a_script_that_imports_paddle_first_gets_its_share_of_the_cores_unless_it_asked_otherwise(started_with,
                                                                                                caught_up):
    env = script_env(PYTHONPATH=os.path.join(ROOT, "tools"), **started_with)
    r = subprocess.run([sys.executable, "-c", PADDLE_FIRST], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    seen = json.loads(r.stdout.strip().splitlines()[-1])
    cores = cpu_env.usable_cores()
    if caught_up and cores >= 2:
        assert seen == {"calls": [cores], "omp": str(cores)}
    else:
        assert seen["calls"] == [] and seen["omp"] == "1"


def test_create_model_keeps_freed_memory_as_every_command_does(monkeypatch):
    calls = []
    monkeypatch.setattr(pretrained, "keep_freed_memory", lambda: calls.append(1))
    t2tvit.create_model("t2t_vit_7", img_size=SIZE, num_classes=2)
    assert calls == [1]


def test_every_openvino_path_compiles_through_the_process_s_one_core(small_export, monkeypatch):
    # A Core per model crashed the suite (SIGSEGV in a later test's signal handler): backends.openvino_core
    # says why. predict.py, the Python API and the benchmark's plain sessions each compile here.
    import openvino as ov

    made = []
    real = ov.Core
    monkeypatch.setattr(ov, "Core", lambda *a, **k: made.append(real(*a, **k)) or made[-1])
    monkeypatch.setattr(backends, "_OPENVINO", {})
    r = run_main("predict.py", PHOTO, "--inference-dir", small_export, "--backend", "openvino", config=None)
    assert r.returncode == 0, r.stderr
    create_predictor(small_export, "openvino", threads=1)
    plain_session("openvino", os.path.join(small_export, ONNX_FILE), "fp32", 1)
    assert len(made) == 1
