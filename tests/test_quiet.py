"""Quiet by default: known third-party noise is kept off every command's output, each message by name; -v shows
it; a warning that concerns the run (Paddle's AMP falling back) is never hidden."""
import os
import subprocess
import sys
import warnings

import pytest

from runner import ROOT
from t2tvit import quiet

NOISE = [b"W1206 05:53:35.215341 13354 eager_utils.cc:3584] Paddle static graph(PIR) not support input out tensor "
         b"for now!!!!!",
         b"I1206 05:53:45.531502 13354 pir_interpreter.cc:1606] New Executor is Running ...",
         b"[Paddle2ONNX] Start parsing the Paddle model file...",
         b"2026-12-06 05:53:39 [INFO]\tONNX model saved in /tmp/x/model.onnx.",
         b"\x1b[0;93m2026-12-06 05:53:48.287999204 [W:onnxruntime:, graph.cc:5809 CleanUnusedInitializersAndNodeArgs] "
         b"Removing initializer 'p2o.pd_op.full.27.0'.\x1b[m",
         b"INFO:nncf:Not adding activation input quantizer for operation: 29 MatMul.2",
         "Statistics collection \u2501\u2501\u2501\u2501 100% 6/6 \u2022 0:00:00".encode()]
KEPT = [b"exported t2t_vit_7 for [N, 3, 64, 64] inputs", b"E1206 05:53:35.215341 13354 x.cc:1] a C++ error",
        b"error: something the user must see", b"WARNING: a warning of ours"]


@pytest.fixture
def filtering():
    was = quiet.is_verbose()
    quiet.set_verbose(False)
    yield
    quiet.set_verbose(was)


def test_known_third_party_lines_are_dropped_and_everything_else_passes_in_order(capfd, filtering):
    with quiet.filtered_output():
        for i, line in enumerate(NOISE + KEPT):
            os.write(1 + i % 2, line + b"\n")  # as C++ or print writes them, on either stream
        print("python's own print", flush=True)
    out, err = capfd.readouterr()
    shown = (out + err).encode()
    assert not [n for n in NOISE if n in shown]
    assert all(k in shown for k in KEPT) and "python's own print" in out


def test_verbose_filters_nothing(capfd, filtering):
    quiet.set_verbose(True)
    with quiet.filtered_output():
        for line in NOISE:
            os.write(2, line + b"\n")
    err = capfd.readouterr().err
    assert all(n.decode() in err for n in NOISE)


def test_only_the_named_warnings_are_filtered_and_amp_warnings_always_reach_the_user(filtering):
    with warnings.catch_warnings(record=True) as caught:
        quiet.set_verbose(False)  # catch_warnings restores the filters afterwards: install ours inside it
        warnings.warn("Skip loading for pos_embed. pos_embed is not found in the provided dict.", UserWarning)
        warnings.warn("No ccache found. Please be aware that recompiling ...", UserWarning)
        warnings.warn("bfloat16 is not supported on this device, falling back to float32 (AMP)", UserWarning)
        warnings.warn("a UserWarning nobody listed", UserWarning)
    assert [str(w.message) for w in caught] == ["bfloat16 is not supported on this device, falling back to float32 "
                                                "(AMP)", "a UserWarning nobody listed"]


def test_launch_sh_silences_no_warning_category():
    with open(os.path.join(ROOT, "scripts", "launch.sh")) as f:
        assert "PYTHONWARNINGS" not in "".join(line for line in f if not line.startswith("#"))


def run(*argv):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    env["OMP_NUM_THREADS"] = "2"  # what cpu_env sets on a 2-core machine: Paddle notes it at import
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)


@pytest.mark.slow
def test_a_command_started_as_python_tools_x_prints_no_third_party_note_unless_verbose():
    # count_macs.py imports Paddle and the model, and nothing else: its output is the table alone
    quiet_run = run("tools/count_macs.py", "--model", "t2t_vit_7")
    assert quiet_run.returncode == 0 and quiet_run.stderr == "", quiet_run.stderr
    loud = run("tools/count_macs.py", "--model", "t2t_vit_7", "-v")
    assert loud.returncode == 0 and "OMP_NUM_THREADS set to 2" in loud.stderr  # (and Paddle 3.x: "No ccache found")
    assert loud.stdout == quiet_run.stdout


# Not user commands: the PyTorch reference model, and the reference fixtures' maker and its module, which run under
# a Python with torch and timm 0.3.4 (tests/data/official/README.md), where Paddle's settings and noise are moot.
TOOLS = sorted(name for name in os.listdir(os.path.join(ROOT, "tools"))
               if name.endswith(".py") and name not in ("torch_reference.py", "infer.py", "make_reference.py",
                                                        "official_fixtures.py"))


@pytest.mark.parametrize("tool", TOOLS)
def test_every_command_imports_cpu_env_first_and_takes_v(tool, capsys, monkeypatch):
    with open(os.path.join(ROOT, "tools", tool)) as f:
        first_import = next(line for line in f if line.startswith(("import ", "from ")))
    assert first_import.startswith("import t2tvit.cpu_env")
    module = __import__(tool[:-3])
    monkeypatch.setattr(sys, "argv", [tool, "--help"])
    with pytest.raises(SystemExit) as done:
        module.main()
    assert done.value.code == 0 and "-v, --verbose" in capsys.readouterr().out


@pytest.mark.slow
def test_an_export_prints_its_own_lines_only(tmp_path):
    import paddle
    import t2tvit

    path = tmp_path / "w.pdparams"
    paddle.save(t2tvit.create_model("t2t_vit_7", num_classes=3, img_size=32).state_dict(), str(path))
    r = run("tools/export_model.py", "--weights", str(path), "--out", str(tmp_path / "inference"), "-o",
            "Global.img_size=32", "Global.num_classes=3", "-c", os.path.join(ROOT, "config", "t2t_vit_7.yaml"),
            "--int8", "--calib", os.path.join(ROOT, "lit_data", "val"), "--calib-size", "4")
    assert r.returncode == 0 and r.stderr == "", r.stderr  # no glog, ONNX Runtime, NNCF or Paddle note
    assert [line.split(" ")[0] for line in r.stdout.splitlines()] == [
        "weights:", "note:", "exported", "int8", "int8"], r.stdout
