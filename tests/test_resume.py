"""Runs survive SIGKILL, SIGTERM and SIGINT and resume exactly; 1, 2 processes or 2 machines follow the same recipe."""
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest

from runner import (ENV, ONE, ROOT, children, error_lines, fast_overrides, free_port, losses, processes_mentioning, start,
                    run_tool, tool_with_fault, wait_for_steps)
from t2tvit.checkpoint import load_file
from t2tvit.runlock import LOCK_NAME
from t2tvit.runtime import MetricsFile, read_metrics
from t2tvit.shared_dir import TOKEN_NAME

LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[(\d{8}-\d{6}-\d+-[0-9a-f]{4})\] \S")
STOP_LINE = re.compile(r"stopped by (SIG\w+) at epoch (\d+)/3, step (\d+)/5, checkpoint (\S+); resume with: (.+)")


def final_weights(out_dir):
    return {k: v.numpy() for k, v in load_file(os.path.join(out_dir, "latest.pdckpt"))["model"].items()}


def val_metrics(log_dir):
    return [(r["epoch"], r["model"], r["top1"], r["top5"]) for r in read_metrics(log_dir / MetricsFile.NAME, "val")]


def assert_same_weights(a, b, tol=1e-5):
    assert a.keys() == b.keys()
    worst = max(float(np.abs(a[k] - b[k]).max()) for k in a)
    assert worst <= tol, worst


def interrupt(tmp_path, args, sig, to="process", nproc=1):
    """Run train.py and send sig at a random step; returns (the process, its output). `to`: process, group (what
    Ctrl-C on a terminal reaches: the trainer and its data workers), workers (each launched worker's group)."""
    log = tmp_path / f"{sig.name}.log"
    proc = start("train.py", *args, log_file=log, nproc=nproc)
    wait_for_steps(proc, tmp_path / "log", random.Random().randint(2, 10))
    time.sleep(random.random() * 0.2)
    if to == "group":
        os.killpg(proc.pid, sig)
    elif to == "workers":
        for worker in children(proc.pid):
            os.killpg(worker, sig)
    else:
        proc.send_signal(sig)
    proc.wait(timeout=120)
    time.sleep(0.5)
    assert not processes_mentioning(str(tmp_path / "out")), "a trainer or data worker outlived the run"
    assert sig == signal.SIGKILL or not list((tmp_path / "out").glob("*.tmp*"))  # SIGKILL may cut a save
    assert sig == signal.SIGKILL or not (tmp_path / "out" / LOCK_NAME).exists()  # the folder's lock was released
    return proc, log.read_text()


def assert_every_line_names_its_run(log_dir, runs):
    """Each train.log line reads `DATE TIME [RUN] message`; each metrics.jsonl record has its `run`: `runs` ids."""
    lines = [line for line in (log_dir / "train.log").read_text().splitlines() if LOG_LINE.match(line)]
    records = read_metrics(log_dir / MetricsFile.NAME)
    line_runs = [LOG_LINE.match(line).group(1) for line in lines]
    assert len(set(line_runs)) == runs and {r["run"] for r in records} == set(line_runs)
    # the config dump's lines continue a logged message; every other line starts with its run id
    assert all(LOG_LINE.match(line) or not line.startswith("20") for line in (log_dir / "train.log").read_text().splitlines())


def assert_resumed_exactly(logged, expected, out_dir, reference_dir):
    assert set(logged) == set(expected)
    for key, value in logged.items():
        assert value == expected[key], key
    assert not list(out_dir.glob("*.tmp*"))
    assert_same_weights(final_weights(out_dir), final_weights(reference_dir), tol=0)


@pytest.mark.slow
def test_sigkill_then_resume_continues_exactly(tmp_path, one_process_run):
    args = fast_overrides(tmp_path, **ONE, **{"Global.save_every_steps": 1})
    proc, text = interrupt(tmp_path, args, signal.SIGKILL)
    before = losses(tmp_path / "log")
    assert proc.returncode == -signal.SIGKILL and len(before) < 15

    latest = tmp_path / "out" / "latest.pdckpt"
    state = load_file(str(latest))  # always a complete checkpoint
    resumed = run_tool("train.py", *args)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed from {latest}: epoch {state['epoch'] + 1}, step {state['step']}" in resumed.stdout
    assert f"warning: {tmp_path / 'out' / LOCK_NAME} was left by a run that is gone" in resumed.stdout  # taken over
    assert_resumed_exactly(losses(tmp_path / "log"), one_process_run[1], tmp_path / "out",
                           one_process_run[0] / "out")


def resume_after_stop(tmp_path, sig, log_text):
    """Check the one stop line and its checkpoint, then run the command it gives."""
    stops = STOP_LINE.findall(log_text)
    assert len(stops) == 1, log_text[-3000:]
    name, epoch, step, path, command = stops[0]
    state = load_file(path)
    assert name == sig.name and (state["epoch"] + 1, state["step"]) == (int(epoch), int(step))
    assert path.startswith(str(tmp_path / "out")) and "Traceback" not in log_text
    resumed = subprocess.run(shlex.split(command), capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize("sig, to", [(signal.SIGTERM, "process"), (signal.SIGINT, "group")],
                         ids=["SIGTERM to the trainer", "SIGINT to its process group, as Ctrl-C"])
def test_signal_on_one_process_stops_at_a_step_with_a_checkpoint_and_resumes_exactly(tmp_path, one_process_run,
                                                                                     sig, to):
    proc, text = interrupt(tmp_path, fast_overrides(tmp_path, **ONE), sig, to)
    assert proc.returncode == 128 + sig, text[-3000:]
    resume_after_stop(tmp_path, sig, text)
    assert_every_line_names_its_run(tmp_path / "log", runs=2)
    logged = losses(tmp_path / "log")  # the steps of both runs
    assert_resumed_exactly(logged, one_process_run[1], tmp_path / "out", one_process_run[0] / "out")


@pytest.mark.slow
@pytest.mark.parametrize("sig, to", [(signal.SIGTERM, "launcher"), (signal.SIGINT, "workers")],
                         ids=["SIGTERM to the launcher", "SIGINT to every worker"])
def test_signal_on_two_processes_stops_both_at_one_step_and_resumes_exactly(tmp_path, two_process_run, sig, to):
    proc, text = interrupt(tmp_path, fast_overrides(tmp_path, **{"Data.num_workers": 1}), sig, to, nproc=2)
    # scripts/launch.sh maps a signalled launcher's bare signal number to 128 + it, as a stopped worker exits
    assert proc.returncode == 128 + sig, text[-3000:]
    log = tmp_path / "log" / "train.log"  # rank 0's
    resume_after_stop(tmp_path, sig, log.read_text())
    expected = losses(two_process_run[0] / "log")
    assert_resumed_exactly(losses(tmp_path / "log"), expected, tmp_path / "out", two_process_run[0] / "out")


@pytest.mark.slow
@pytest.mark.parametrize("fault, stop", [
    (("t2tvit.engine.evaluate", 1, 1), "stopped by SIGTERM at epoch 1/3, step 5/5, checkpoint "),
    (("paddle.save", 1, 1), "stopped by SIGTERM at epoch 2/3, step 1/5, checkpoint "),
    (("paddle.save", 2, 2), "stopped at once by a second SIGTERM at epoch 3/3, step 0/5 (work since the newest "
                            "checkpoint is lost): newest complete checkpoint "),
], ids=["one during validation", "one during a save", "a second one during a save"])
def test_signals_during_validation_or_a_save_stop_cleanly_and_resume_exactly(tmp_path, one_process_run, fault, stop):
    args = fast_overrides(tmp_path, **ONE)
    r = tool_with_fault(("--signal", "SIGTERM", *fault), "train.py", *args)
    assert r.returncode == 128 + signal.SIGTERM and "Traceback" not in r.stderr, r.stderr[-3000:]
    line = [line for line in r.stdout.splitlines() if "stopped" in line]
    assert len(line) == 1 and stop in line[0], r.stdout[-3000:]
    checkpoint = line[0].split(stop)[1].split(";")[0]
    assert os.path.samefile(checkpoint, tmp_path / "out" / "latest.pdckpt")  # complete, and the newest
    assert not list((tmp_path / "out").glob("*.tmp*"))
    resumed = run_tool("train.py", *args, "--resume", checkpoint)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_resumed_exactly(losses(tmp_path / "log"), one_process_run[1],
                           tmp_path / "out", one_process_run[0] / "out")


@pytest.mark.slow
def test_unreadable_latest_falls_back_to_the_newest_readable_checkpoint(tmp_path, one_process_run):
    out = tmp_path / "out"
    os.makedirs(out)
    for name in ("ckpt-e0001-s000000.pdckpt", "ckpt-e0002-s000000.pdckpt"):
        shutil.copyfile(one_process_run[0] / "out" / name, out / name)
    with open(out / "latest.pdckpt", "wb") as f:  # what a storage fault leaves: a truncated file
        f.write((one_process_run[0] / "out" / "latest.pdckpt").read_bytes()[:5000])
    args = fast_overrides(tmp_path, **ONE)
    r = run_tool("train.py", *args)
    assert r.returncode == 0, r.stderr[-2000:]
    warning = [line for line in r.stdout.splitlines() if "warning: cannot read" in line]
    assert len(warning) == 1 and str(out / "latest.pdckpt") in warning[0]
    assert warning[0].endswith(f"resuming from {out / 'ckpt-e0002-s000000.pdckpt'}, the newest readable checkpoint")
    after = losses(tmp_path / "log")
    assert sorted(after) == [(3, s) for s in range(1, 6)]
    assert all(after[k] == one_process_run[1][k] for k in after)
    assert_same_weights(final_weights(out), final_weights(one_process_run[0] / "out"), tol=0)

    (tmp_path / "damaged.pdckpt").write_bytes(b"\0" * 100)
    r = run_tool("train.py", *args, "--resume", str(tmp_path / "damaged.pdckpt"))
    assert r.returncode == 2 and len(error_lines(r)) == 1 and "damaged.pdckpt" in error_lines(r)[0]


@pytest.mark.slow
def test_accumulation_on_one_process_equals_two_processes(tmp_path, two_process_run):
    # Recipe on: augmentation, mixup/cutmix, drop path all draw from (seed, epoch, step, batch position).
    r = run_tool("train.py", *fast_overrides(tmp_path, **{"Data.batch_size": 2}))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "global batch 4 = 2 per device x 1 device(s) x 2 accumulation step(s)" in r.stdout
    assert_same_weights(final_weights(tmp_path / "out"), final_weights(two_process_run[0] / "out"))


@pytest.mark.slow
def test_two_machines_train_like_two_processes(tmp_path, two_process_run):
    nodes = {"nnodes": 2, "master": f"127.0.0.1:{free_port()}"}
    args = fast_overrides(tmp_path)
    second = start("train.py", *args, **nodes, launch_log_dir=tmp_path / "node1")
    first = run_tool("train.py", *args, **nodes, launch_log_dir=tmp_path / "node0")
    assert second.wait(timeout=300) == 0 and first.returncode == 0, first.stdout[-3000:]
    log = (tmp_path / "log" / "train.log").read_text()  # written by rank 0, on whichever node it landed
    assert "x 2 device(s)" in log
    assert (tmp_path / "out" / TOKEN_NAME).is_file()  # both machines checked that they share the output folder
    assert_same_weights(final_weights(tmp_path / "out"), final_weights(two_process_run[0] / "out"))
    val, ref = (val_metrics(d / "log") for d in (tmp_path, two_process_run[0]))
    assert len(val) == 6 and val == ref
