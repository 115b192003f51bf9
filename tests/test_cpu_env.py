"""Every command sets the CPU environment itself before Paddle loads: `python tools/X.py` and `bash scripts/X.sh`
see the same settings, a user's own settings win, and processes started by paddle.distributed.launch share
the cores."""
import ast
import glob
import json
import os
import subprocess
import sys

import pytest

from t2tvit import cpu_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = ("train", "val", "predict", "infer", "export_model", "benchmark")
KEYS = ("OMP_NUM_THREADS", "MKL_DEBUG_CPU_TYPE")

# Loaded at interpreter start (PYTHONPATH): when a tools/ script first imports paddle, record the environment
# at that moment and stop the process (the launcher itself, which is not a tools/ script, carries on).
SPY = '''
import importlib.abc, json, os, sys
class Spy(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "paddle" and os.path.basename(os.path.dirname(os.path.abspath(sys.argv[0]))) == "tools":
            seen = {k: os.environ.get(k) for k in %r}
            seen["tool"] = os.path.basename(sys.argv[0])
            with open(os.path.join(os.environ["SPY_DIR"], "env.%%d.json" %% os.getpid()), "w") as f:
                json.dump(seen, f)
            os._exit(0)
sys.meta_path.insert(0, Spy())
''' % (KEYS,)


@pytest.fixture
def spy(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(SPY)
    out = tmp_path / "seen"
    out.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in KEYS and not k.startswith("PADDLE_")}
    env.update(PYTHONPATH=str(tmp_path), SPY_DIR=str(out), PYTHON=sys.executable)

    def run(cmd, **extra):
        for f in out.iterdir():
            f.unlink()
        subprocess.run(cmd, cwd=ROOT, env={**env, **extra}, capture_output=True, text=True, timeout=300)
        seen = [json.load(open(f)) for f in sorted(glob.glob(str(out / "env.*.json")))]
        assert seen, f"{cmd}: no tools/ process imported paddle"
        return seen

    return run


def expected(**environ):
    return {k: environ.get(k) or cpu_env.cpu_settings(environ).get(k) for k in KEYS}


def settings(seen):
    return {k: seen[k] for k in KEYS}


@pytest.mark.parametrize("tool", TOOLS)
def test_each_command_imports_it_first(tool):
    tree = ast.parse(open(os.path.join(ROOT, "tools", f"{tool}.py")).read())
    first = next(node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom)))
    assert isinstance(first, ast.Import) and first.names[0].name == "t2tvit.cpu_env"


@pytest.mark.parametrize("tool", [t for t in TOOLS if t != "benchmark"])  # benchmark imports paddle in workers
def test_each_command_sets_the_environment_before_paddle_loads(spy, tool):
    [seen] = spy([sys.executable, f"tools/{tool}.py", "--help"])
    assert settings(seen) == expected()
    assert int(seen["OMP_NUM_THREADS"]) == cpu_env.usable_cores()
    assert (seen["MKL_DEBUG_CPU_TYPE"] == "5") == cpu_env.is_amd_cpu()


@pytest.mark.parametrize("tool", ("train", "val"))
def test_script_and_direct_python_see_the_same_environment(spy, tool):
    [direct] = spy([sys.executable, f"tools/{tool}.py"])
    [script] = spy(["bash", f"scripts/{tool}.sh"])
    assert settings(direct) == settings(script) == expected()


def test_the_users_settings_win(spy):
    [seen] = spy(["bash", "scripts/train.sh"], OMP_NUM_THREADS="3", MKL_DEBUG_CPU_TYPE="0")
    assert settings(seen) == {"OMP_NUM_THREADS": "3", "MKL_DEBUG_CPU_TYPE": "0"}


def test_launched_processes_share_the_cores(spy):
    seen = spy(["bash", "scripts/train.sh"], NPROC="2")
    assert len(seen) == 2
    share = str(max(1, cpu_env.usable_cores() // 2))
    assert [s["OMP_NUM_THREADS"] for s in seen] == [share, share]
    assert settings(seen[0]) == expected(PADDLE_LOCAL_SIZE="2")


def test_settings_follow_the_local_process_count():
    cores = cpu_env.usable_cores()
    assert cpu_env.cpu_settings({"PADDLE_LOCAL_SIZE": str(cores * 4)})["OMP_NUM_THREADS"] == "1"
    assert cpu_env.cpu_settings({"PADDLE_LOCAL_SIZE": "bad"})["OMP_NUM_THREADS"] == str(cores)
    assert cpu_env.cpu_settings({"OMP_NUM_THREADS": "7", "MKL_DEBUG_CPU_TYPE": "4"}) == {}


def test_commands_do_not_pass_on_paddles_ccache_note():
    # Paddle 3.x warns on import that ccache is missing (for C++ extensions, which nothing here builds).
    r = subprocess.run([sys.executable, "tools/predict.py", "--help"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and "usage:" in r.stdout and "ccache" not in r.stderr, r.stderr
