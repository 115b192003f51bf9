"""Run the repo's tools as a user would: subprocesses on lit_data with small, fast settings, each with a timeout.

The helpers every test module shares (tests/conftest.py turns the main ones into fixtures): ROOT, the reference
fixtures (their folders, official_weights, write_official_checkpoint, official_eval_errors), run_tool / run_main
(the same in this process) / start / tool_with_fault, error_lines, losses, fast_overrides, train_once.
"""
import collections
import contextlib
import importlib
import io
import math
import os
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

import official_fixtures
from t2tvit.runtime import MetricsFile, read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIT_DATA = os.path.join(ROOT, "lit_data")
DEMO = os.path.join(ROOT, "config", "t2t_vit_7_demo.yaml")
# The official code's outputs, in the repo (tests/data/official: made by tools/make_reference.py, see its README).
REFERENCE = official_fixtures.EVAL
TRAIN_REFERENCE = official_fixtures.TRAIN_STEP
ENV = dict(os.environ, PYTHONWARNINGS="ignore")
# The seeded run that resumed runs must reproduce exactly (with or without periodic checkpoints).
ONE = {"Global.seed": 7, "Data.num_workers": 1}
# A finished training run shared by several tests, read-only: its folder (out/, log/), stdout and losses().
TrainedRun = collections.namedtuple("TrainedRun", "folder losses stdout")


def official_weights(folder=REFERENCE):
    """A fixture's weights as the official state dict holds them ({name: array}, torch layout): the seeded tensors
    and the fixed position table (the model's own, which tests/test_model.py proves the official's bit for bit)."""
    from t2tvit.t2t import sinusoid_table
    meta = official_fixtures.read_meta(folder)
    weights = official_fixtures.seeded_weights(meta["weights"]["spec"], meta["weights"]["seed"])
    tokens, dim = (meta["img_size"] // 16) ** 2 + 1, weights["cls_token"].shape[-1]
    return {"pos_embed": sinusoid_table(tokens, dim), **weights}


def write_official_checkpoint(path, folder=REFERENCE):
    """Write a fixture's weights as the official release stores them: {'state_dict_ema': name -> torch tensor}."""
    import torch
    torch.save({"state_dict_ema": {k: torch.from_numpy(v) for k, v in official_weights(folder).items()}}, str(path))
    return str(path)


def official_eval_errors(logits, intermediates):
    """{what: error} of an eval of the reference weights on the reference input against the official outputs: max
    |diff| of the logits; for each intermediate, max |diff| over its kept elements and |norm difference| /
    sqrt(size) (which the max |diff| over all its elements bounds), after checking its shape."""
    meta = official_fixtures.read_meta(REFERENCE)
    with np.load(os.path.join(REFERENCE, "outputs.npz")) as ref:
        errors = {"logits": float(np.abs(logits - ref["logits"]).max())}
        for name, info in meta["intermediates"].items():
            got = intermediates[name]
            assert list(got.shape) == info["shape"], name
            errors[name] = float(np.abs(official_fixtures.sample(got, **meta["sample"]) - ref[name]).max())
            errors[f"{name} norm"] = abs(official_fixtures.norm(got) - info["norm"]) / math.sqrt(got.size)
    return errors


def reference_input():
    meta = official_fixtures.read_meta(REFERENCE)["input"]
    return official_fixtures.random_input(meta["seed"], tuple(meta["shape"]))


def fast_overrides(tmp_path, **extra):
    """A T2T-ViT-7 run at 32 px on lit_data that takes seconds: 5 optimizer steps of 4 images per epoch."""
    o = {"Global.device": "cpu", "Global.img_size": 32, "Global.epochs": 3, "Global.output_dir": str(tmp_path / "out"),
         "Global.log_dir": str(tmp_path / "log"), "Global.print_every": 1, "Data.global_batch_size": 4,
         "Data.batch_size": 4, "Data.num_workers": 0}
    o.update(extra)
    return ["-o"] + [f"{k}={v}" for k, v in o.items()]


def train_once(folder, nproc=1):
    """Train with fast_overrides into folder (ONE's seeded recipe on one process, the default on several): the
    runs tests/conftest.py shares per session instead of each module training its own."""
    extra = ONE if nproc == 1 else {}
    r = run_tool("train.py", *fast_overrides(folder, **extra), nproc=nproc)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert len(losses(folder / "log")) == 15
    return TrainedRun(folder, losses(folder / "log"), r.stdout)


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


def run_main(name, *args, config=DEMO):
    """Run tools/NAME's main() in this process, with run_tool's arguments and result (a CompletedProcess:
    main's return value or exit status, its stdout and stderr), for tests of what a command prints and writes
    that need no process of their own: no second Paddle import (seconds each). A command's own UserError is
    its `error:` line and exit status 2, as on the command line; any other exception fails the test."""
    module = importlib.import_module(os.path.splitext(name)[0])
    argv = [*(["-c", config] if config else []), *map(str, args)]
    out, err, cwd = io.StringIO(), io.StringIO(), os.getcwd()
    os.chdir(ROOT)  # where run_tool runs the tools
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = module.main(argv)
            except SystemExit as e:
                code = e.code
    finally:
        os.chdir(cwd)
    return subprocess.CompletedProcess(argv, code or 0, out.getvalue(), err.getvalue())


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
