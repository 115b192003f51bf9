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
ENV = dict(os.environ, PYTHONWARNINGS="ignore", MKL_DEBUG_CPU_TYPE="5")


def fast_overrides(tmp_path, **extra):
    """A T2T-ViT-7 run at 32 px on lit_data that takes seconds: 5 optimizer steps of 4 images per epoch."""
    o = {"Global.device": "cpu", "Global.img_size": 32, "Global.epochs": 3, "Global.output_dir": str(tmp_path / "out"),
         "Global.log_dir": str(tmp_path / "log"), "Global.print_every": 1, "Data.global_batch_size": 4,
         "Data.batch_size": 4, "Data.num_workers": 0}
    o.update(extra)
    return ["-o"] + [f"{k}={v}" for k, v in o.items()]


def command(name, *args, config=DEMO, nproc=1, extra_launch=()):
    """The command line of tools/NAME (with `-c config` unless config is None), launched on nproc processes."""
    cmd = [sys.executable]
    if nproc > 1 or extra_launch:
        if "--log_dir" not in extra_launch:  # the launcher's own logs, which default to ./log of the repo
            # one folder per test session: the launcher echoes workerlog.0, which concurrent sessions would share
            logs = os.path.join(tempfile.gettempdir(), f"t2t_launch_logs_{os.getpid()}")
            extra_launch = (*extra_launch, "--log_dir", logs)
        cmd += ["-m", "paddle.distributed.launch", "--nproc_per_node", str(nproc), *extra_launch]
    return cmd + [os.path.join(ROOT, "tools", name), *(["-c", config] if config else []), *map(str, args)]


def run_tool(name, *args, timeout=300, **kwargs):
    """Run tools/NAME to completion (killed after `timeout` s); kwargs: config (None: no -c), nproc, extra_launch
    (paddle.distributed.launch flags)."""
    return subprocess.run(command(name, *args, **kwargs), capture_output=True, text=True, cwd=ROOT, env=ENV,
                          timeout=timeout)


def tool_with_fault(fault, name, *args, timeout=300):
    """Run a tool on one process through tests/faults.py, which injects `fault` (a list of its arguments)."""
    cmd = [sys.executable, os.path.join(ROOT, "tests", "faults.py"), *map(str, fault), "--",
           os.path.join(ROOT, "tools", name), "-c", DEMO, *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=timeout)


def start(name, *args, log_file=None, **kwargs):
    """Start a tool in the background, its output going to log_file, in a session of its own (so that
    os.killpg(proc.pid, sig) is what Ctrl-C on a terminal does: the signal reaches it and its data workers)."""
    out = open(log_file, "w") if log_file else subprocess.DEVNULL
    return subprocess.Popen(command(name, *args, **kwargs), stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                            env=ENV, start_new_session=True)


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
