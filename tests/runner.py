"""Run the repo's tools as a user would: subprocesses on lit_data with small, fast settings, each with a timeout.

The helpers every test module shares (tests/conftest.py turns the main ones into fixtures): ROOT, the reference
fixtures' folder, run_tool / start / tool_with_fault, error_lines, losses, fast_overrides.
"""
import os
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from t2tvit.runtime import MetricsFile, read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIT_DATA = os.path.join(ROOT, "lit_data")
DEMO = os.path.join(ROOT, "config", "t2t_vit_7_demo.yaml")
# The official code's outputs (read-only, maintained beside the repo; see its README).
REFERENCE = os.path.join(ROOT, "..", "shared", "fixtures", "t2t_vit_7")
needs_reference = pytest.mark.skipif(not os.path.isdir(REFERENCE), reason=f"the reference fixtures are not at "
                                     f"{REFERENCE} (they are maintained beside the repo, see its README)")
ENV = dict(os.environ, PYTHONWARNINGS="ignore")


def fast_overrides(tmp_path, **extra):
    """A T2T-ViT-7 run at 32 px on lit_data that takes seconds: 5 optimizer steps of 4 images per epoch."""
    o = {"Global.device": "cpu", "Global.img_size": 32, "Global.epochs": 3, "Global.output_dir": str(tmp_path / "out"),
         "Global.log_dir": str(tmp_path / "log"), "Global.print_every": 1, "Data.global_batch_size": 4,
         "Data.batch_size": 4, "Data.num_workers": 0}
    o.update(extra)
    return ["-o"] + [f"{k}={v}" for k, v in o.items()]


def command(name, *args, config=DEMO, nproc=1, nnodes=None, master=None, launch_log_dir=None):
    """(command line, environment) of tools/NAME with `-c config` (none if config is None): run directly on one
    process, or on several through scripts/launch.sh, as users launch them (NPROC; NNODES and MASTER)."""
    args = [str(a) for a in args]
    if nproc == 1 and nnodes is None:
        return [sys.executable, os.path.join(ROOT, "tools", name), *(["-c", config] if config else []), *args], ENV
    # The launcher's own logs: one folder per test session (it echoes workerlog.0, which sessions would share).
    logs = launch_log_dir or os.path.join(tempfile.gettempdir(), f"t2t_launch_logs_{os.getpid()}")
    env = dict(ENV, PYTHON=sys.executable, NPROC=str(nproc), CONFIG=config or DEMO, LAUNCH_LOG_DIR=str(logs))
    if nnodes:
        env.update(NNODES=str(nnodes), MASTER=master)
    return ["bash", os.path.join(ROOT, "scripts", "launch.sh"), name, *args], env


def run_tool(name, *args, timeout=300, **kwargs):
    """Run tools/NAME to completion (killed after `timeout` s); kwargs: those of command()."""
    cmd, env = command(name, *args, **kwargs)
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout)


def tool_with_fault(fault, name, *args, timeout=300):
    """Run a tool on one process through tests/faults.py, which injects `fault` (a list of its arguments)."""
    cmd = [sys.executable, os.path.join(ROOT, "tests", "faults.py"), *map(str, fault), "--",
           os.path.join(ROOT, "tools", name), "-c", DEMO, *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=timeout)


def start(name, *args, log_file=None, **kwargs):
    """Start a tool in the background, its output going to log_file, in a session of its own (so that
    os.killpg(proc.pid, sig) is what Ctrl-C on a terminal does: the signal reaches it and its data workers)."""
    out = open(log_file, "w") if log_file else subprocess.DEVNULL
    cmd, env = command(name, *args, **kwargs)
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env, start_new_session=True)


def wait_for_steps(proc, log_dir, steps, timeout=240):
    """Wait until the run logging to log_dir has logged `steps` optimizer steps (or the process ends)."""
    deadline = time.time() + timeout
    while proc.poll() is None and time.time() < deadline:
        if len(losses(log_dir)) >= steps:
            return
        time.sleep(0.05)


def processes_mentioning(text):
    """pids of the processes (other than this one) whose command line contains text: a run's leftovers."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if text.encode() in f.read() and int(pid) != os.getpid():
                    found.append(int(pid))
        except OSError:
            pass
    return found


def children(pid):
    """pids of the child processes of pid."""
    kids = []
    for p in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{p}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                    kids.append(int(p))
        except (OSError, IndexError, ValueError):
            pass
    return kids


def losses(log_dir):
    """{(epoch, step): loss} of every logged optimizer step, from the run's metrics.jsonl (a step logged again
    by a resumed run counts with its later line)."""
    path = os.path.join(log_dir, MetricsFile.NAME)
    if not os.path.isfile(path):
        return {}
    return {(r["epoch"], r["step"]): r["loss"] for r in read_metrics(path, "train")}


def error_lines(result):
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
