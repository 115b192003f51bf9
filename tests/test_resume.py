"""Runs survive SIGKILL and resume exactly; 1, 2 processes or 2 machines follow the same recipe."""
import os
import random
import signal
import time

import numpy as np
import paddle
import pytest

from runner import fast_overrides, free_port, losses, start, tool

SAVE_EVERY_STEP = {"Global.save_every_steps": 1, "Global.seed": 7, "Data.num_workers": 1}


def test_sigkill_then_resume_continues_exactly(tmp_path):
    ref = tool("train.py", *fast_overrides(tmp_path / "ref", **SAVE_EVERY_STEP))
    assert ref.returncode == 0, ref.stderr[-2000:]
    expected = losses(ref.stdout)
    assert len(expected) == 15

    args = fast_overrides(tmp_path / "run", **SAVE_EVERY_STEP)
    log = tmp_path / "killed.log"
    proc = start("train.py", *args, log_file=log)
    target = random.Random().randint(3, 10)  # any moment: here, after some number of logged steps
    deadline = time.time() + 240
    while len(losses(log.read_text())) < target and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(random.random() * 0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = losses(log.read_text())
    assert proc.returncode == -signal.SIGKILL and len(before) < 15

    latest = tmp_path / "run" / "out" / "latest.pdckpt"
    state = paddle.load(str(latest))  # always a complete checkpoint
    resumed = tool("train.py", *args)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed from {latest}: epoch {state['epoch'] + 1}, step {state['step']}" in resumed.stdout
    after = losses(resumed.stdout)
    assert set(before) | set(after) == set(expected)
    for key, value in {**before, **after}.items():
        assert value == expected[key], key
    assert not list((tmp_path / "run" / "out").glob("*.tmp*"))


def final_weights(out_dir):
    return {k: v.numpy() for k, v in paddle.load(os.path.join(out_dir, "latest.pdckpt"))["model"].items()}


def assert_same_weights(a, b, tol=1e-5):
    assert a.keys() == b.keys()
    worst = max(float(np.abs(a[k] - b[k]).max()) for k in a)
    assert worst < tol, worst


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("two")
    r = tool("train.py", *fast_overrides(tmp), nproc=2)
    assert r.returncode == 0, r.stdout[-3000:]
    return tmp, r.stdout


def test_accumulation_on_one_process_equals_two_processes(tmp_path, two_process_run):
    # Recipe on: augmentation, mixup/cutmix, drop path all draw from (seed, epoch, step, batch position).
    r = tool("train.py", *fast_overrides(tmp_path, **{"Data.batch_size": 2}))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "global batch 4 = 2 per device x 1 device(s) x 2 accumulation step(s)" in r.stdout
    assert_same_weights(final_weights(tmp_path / "out"), final_weights(two_process_run[0] / "out"))


def test_two_machines_train_like_two_processes(tmp_path, two_process_run):
    launch = ("--nnodes", "2", "--master", f"127.0.0.1:{free_port()}")
    args = fast_overrides(tmp_path)
    second = start("train.py", *args, extra_launch=(*launch, "--log_dir", str(tmp_path / "node1")))
    first = tool("train.py", *args, extra_launch=(*launch, "--log_dir", str(tmp_path / "node0")))
    assert second.wait(timeout=300) == 0 and first.returncode == 0, first.stdout[-3000:]
    log = (tmp_path / "log" / "train.log").read_text()  # written by rank 0, on whichever node it landed
    assert "x 2 device(s)" in log
    assert_same_weights(final_weights(tmp_path / "out"), final_weights(two_process_run[0] / "out"))
    val = [line.split("val (model)")[1] for line in log.splitlines() if "val (model)" in line]
    ref = [line.split("val (model)")[1] for line in two_process_run[1].splitlines() if "val (model)" in line]
    assert len(val) == 3 and val == ref
