"""A rank that dies or hangs ends the job with one line and the run restarts itself from its newest checkpoint
(scripts/paddle_launch.py, t2tvit/watchdog.py); ranks that do not share Global.output_dir are refused before the
first step (t2tvit/shared_dir.py)."""
import contextlib
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import types

import numpy as np
import pytest

from runner import (DEMO, ENV, ROOT, children, error_lines, fast_overrides, free_port, losses, processes_mentioning,
                    run_tool, start, wait_for_steps)
from t2tvit.checkpoint import CheckpointDir, RunComplete, atomic_save, load_file
from t2tvit.errors import UserError
from t2tvit.shared_dir import TOKEN_NAME, digest_number, follow, resume_point
from test_resume import assert_resumed_exactly

SUPERVISOR = os.path.join(ROOT, "scripts", "paddle_launch.py")
RANK_FAILED = 75
HOST = re.escape(socket.gethostname())


# ---- the supervisor's policy, on a stand-in tool that fails as told (no Paddle: fast) ----

FLAKY = """
import os, signal, sys
count, plan = sys.argv[1], sys.argv[2].split(",")
n = int(open(count).read()) if os.path.exists(count) else 0
open(count, "w").write(str(n + 1))
what = plan[min(n, len(plan) - 1)]
if what == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
sys.exit(int(what))
"""


def supervise(tmp_path, plan, restarts):
    """scripts/paddle_launch.py --restarts N on a tool that ends as `plan` says, one attempt after another
    (kill: SIGKILL, else that exit code); returns (the result, how many attempts ran)."""
    tool = tmp_path / "flaky.py"
    tool.write_text(FLAKY)
    count = tmp_path / "attempts"
    r = subprocess.run([sys.executable, SUPERVISOR, "--restarts", str(restarts), str(tool), str(count), plan],
                       capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=120)
    return r, int(count.read_text())


def test_a_killed_process_is_restarted_and_the_run_ends_as_its_last_attempt_does(tmp_path):
    r, attempts = supervise(tmp_path, "kill,1,0", restarts=2)
    assert r.returncode == 0 and attempts == 3, r.stderr
    lines = r.stderr.splitlines()
    assert re.fullmatch(rf"rank 0 of 1 \(host {HOST}, pid \d+\) was killed by SIGKILL; restarting every rank "
                        r"\(restart 1 of 2\) from where it started", lines[0]), lines
    assert re.fullmatch(r"rank 0 of 1 \(.*\) exited with code 1; restarting every rank \(restart 2 of 2\) .*",
                        lines[1]), lines


def test_when_no_restart_is_left_the_last_line_names_the_rank_and_the_command_that_resumes(tmp_path):
    r, attempts = supervise(tmp_path, "kill", restarts=1)
    assert r.returncode == RANK_FAILED and attempts == 2
    command = shlex.join([sys.executable, SUPERVISOR, "--restarts", "1", str(tmp_path / "flaky.py"),
                          str(tmp_path / "attempts"), "kill"])
    assert re.fullmatch(rf"rank 0 of 1 \(host {HOST}, pid \d+\) was killed by SIGKILL after 1 restart\(s\); the run "
                        rf"resumes from where it started with: {re.escape(command)}", r.stderr.splitlines()[-1])


@pytest.mark.parametrize("code", [2, 130, 143], ids=["a user error", "SIGINT", "SIGTERM"])
def test_a_user_error_or_a_stop_by_a_signal_is_never_retried(tmp_path, code):
    r, attempts = supervise(tmp_path, str(code), restarts=3)
    assert r.returncode == code and attempts == 1 and "restart" not in r.stderr


def test_a_bad_restart_count_is_one_error_line(tmp_path):
    r = subprocess.run([sys.executable, SUPERVISOR, "--restarts", "many", "tools/train.py"], capture_output=True,
                       text=True, cwd=ROOT, env=ENV, timeout=60)
    assert r.returncode == 2 and error_lines(r) == [
        "error: scripts/paddle_launch.py: --restarts (MAX_RESTARTS) must be a whole number >= 0, not 'many'"]


# ---- the watchdog, in a process of its own (it ends the process it runs in) ----

def watched(body, timeout=1.0):
    code = (f"import sys, time; sys.path.insert(0, {os.path.join(ROOT, 'tools')!r})\n"
            f"from t2tvit import watchdog\nwatchdog.start({timeout})\n{body}")
    began = time.monotonic()
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    return r, time.monotonic() - began


def test_a_process_that_keeps_making_progress_is_left_alone():
    r, _ = watched("for _ in range(60):\n    time.sleep(0.05); watchdog.progress()\n"
                   "watchdog.stop(); time.sleep(2)")  # 3 s of progress, then 2 s stopped: both past the timeout
    assert r.returncode == 0 and r.stderr == "", r.stderr


def test_a_process_stuck_holding_the_gil_dumps_its_stacks_and_is_ended_by_sigalrm():
    # libc's sleep called through PyDLL keeps the GIL for 60 s: no Python thread or handler could run meanwhile
    r, took = watched("import ctypes\ndef stuck():\n    ctypes.PyDLL(None).sleep(60)\nstuck()")
    assert r.returncode == -signal.SIGALRM and took < 30, (r.returncode, took)
    assert r.stderr.startswith("Timeout (0:00:01)!\n"), r.stderr
    assert re.search(r'File "<string>", line 6 in stuck\n  File "<string>", line 7 in <module>', r.stderr), r.stderr


# ---- several ranks, one output folder (in this process: threads stand for the ranks) ----

class ThreadRanks:
    """all_sum over `world` threads (each a rank), as Runtime.all_sum over processes."""

    def __init__(self, world):
        self.world, self.slots, self.barrier = world, [None] * world, threading.Barrier(world, timeout=60)

    def runtime(self, rank):
        return types.SimpleNamespace(world=self.world, rank=rank, is_main=rank == 0,
                                     all_sum=lambda values: self.all_sum(rank, values))

    def all_sum(self, rank, values):
        self.slots[rank] = list(values)
        self.barrier.wait()
        total = [float(sum(v)) for v in zip(*self.slots)]
        self.barrier.wait()
        return total

    def resume_points(self, folders, decide=None):
        """resume_point on each rank, rank r seeing folders[r], rank 0 deciding with `decide(ckpts, warn)` (default:
        CheckpointDir.resume_from, auto); [(path, state) or what it raised] per rank, and rank 0's warnings."""
        results, warnings = [None] * self.world, []
        decide = decide or (lambda ckpts, warn: ckpts.resume_from("auto", warn))

        def rank(r):
            ckpts = CheckpointDir(str(folders[r]))
            try:
                results[r] = resume_point(self.runtime(r), ckpts, "run-7", lambda: decide(ckpts, warnings.append))
            except (UserError, RunComplete) as e:
                results[r] = e

        threads = [threading.Thread(target=rank, args=(r,)) for r in range(self.world)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        return results, warnings


def checkpoint(path, epoch, step):
    atomic_save({"model": {"w": np.full([2], epoch, "float32")}, "optimizer": {}, "epoch": epoch, "step": step},
                str(path))


def test_every_rank_resumes_from_the_file_rank_0_chose_and_loads_it_itself(tmp_path):
    checkpoint(tmp_path / "ckpt-e0002-s000000.pdckpt", 2, 0)
    (tmp_path / "latest.pdckpt").write_bytes(b"damaged")  # rank 0 falls back to the newest readable one, once
    results, warnings = ThreadRanks(2).resume_points([tmp_path, tmp_path])
    assert len(warnings) == 1 and "resuming from" in warnings[0]
    (path0, state0), (path1, state1) = results
    assert path0 == path1 == str(tmp_path / "ckpt-e0002-s000000.pdckpt")
    assert state1 is not state0 and (state1["epoch"], state1["step"]) == (2, 0)
    token = json.loads((tmp_path / TOKEN_NAME).read_text())
    assert token["run"] == "run-7" and token["resume"] == path0 and (token["epoch"], token["step"]) == (2, 0)


def test_ranks_that_see_different_folders_all_stop_with_one_line_saying_it_must_be_shared(tmp_path):
    folders = [tmp_path / "node0", tmp_path / "node1"]
    for folder in folders:
        folder.mkdir()
    checkpoint(folders[0] / "latest.pdckpt", 3, 0)
    results, _ = ThreadRanks(2).resume_points(folders)
    assert all(isinstance(r, UserError) for r in results), results
    for r, folder in zip(results, folders):
        assert str(r).startswith(f"Global.output_dir {folder} is not one folder shared by every rank: rank 1 does not "
                                 f"see what rank 0 wrote there"), r
        assert str(r).endswith("it must be shared storage (a network file system) mounted at the same path on each; "
                               "nothing was trained")
    assert f"cannot read {folders[1] / TOKEN_NAME}" in str(results[1])


@pytest.mark.parametrize("outcome", [UserError("Global.resume: no checkpoint at x.pdckpt"),
                                     RunComplete("x.pdckpt has trained all 3 epochs of its run")],
                         ids=["a refusal", "a finished run"])
def test_what_rank_0_decides_instead_of_a_checkpoint_ends_every_rank_the_same_way(tmp_path, outcome):
    def decide(ckpts, warn):
        raise outcome

    (first, second), _ = ThreadRanks(2).resume_points([tmp_path, tmp_path], decide)
    assert first is outcome and type(second) is type(outcome), second  # nobody waits for the others in vain
    assert str(second).startswith("rank 0 ") and not (tmp_path / TOKEN_NAME).exists()


def test_a_checkpoint_that_differs_from_rank_0s_or_a_stale_token_is_refused(tmp_path):
    checkpoint(tmp_path / "a.pdckpt", 3, 0)
    data = json.dumps({"run": "r", "resume": str(tmp_path / "a.pdckpt"), "epoch": 3, "step": 0,
                       "sha256": "0" * 64}).encode()
    (tmp_path / TOKEN_NAME).write_bytes(data)
    with pytest.raises(UserError, match="the checkpoint rank 0 resumes from is not the same file here"):
        follow(str(tmp_path / TOKEN_NAME), digest_number(data))
    with pytest.raises(UserError, match="is not the one rank 0 wrote for this run"):
        follow(str(tmp_path / TOKEN_NAME), digest_number(data + b" "))


# ---- on two processes (gloo), as users run them ----

def train_sh(tmp_path, args, restarts, log_file):
    """`MAX_RESTARTS=N NPROC=2 bash scripts/train.sh ARGS`, in a session of its own, output to log_file."""
    env = dict(ENV, PYTHON=sys.executable, CONFIG=DEMO, NPROC="2", MAX_RESTARTS=str(restarts),
               LAUNCH_LOG_DIR=str(tmp_path / "launch"))
    return subprocess.Popen(["bash", "scripts/train.sh", *args], stdout=open(log_file, "w"), stderr=subprocess.STDOUT,
                            cwd=ROOT, env=env, start_new_session=True)


def rank_pid(proc, rank, timeout=120):
    """pid of the process of `rank` among the children of proc (the supervisor)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for pid in children(proc.pid):
            try:
                with open(f"/proc/{pid}/environ", "rb") as f:
                    if f"PADDLE_TRAINER_ID={rank}".encode() in f.read().split(b"\0"):
                        return pid
            except OSError:
                pass
        time.sleep(0.1)
    raise AssertionError(f"no rank {rank} under pid {proc.pid}")


def line_in(path, pattern, timeout):
    """The first line of the file at path matching pattern, waiting up to timeout seconds for it."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if os.path.isfile(path):
            found = [line for line in open(path).read().splitlines() if re.search(pattern, line)]
            if found:
                return found[0]
        time.sleep(0.2)
    return None


def assert_same_as_uninterrupted(tmp_path, reference):
    """Losses, final weights and final EMA of the run in tmp_path equal the uninterrupted run's, bit for bit."""
    assert_resumed_exactly(losses(tmp_path / "log"), losses(reference / "log"), tmp_path / "out", reference / "out")
    ema, want = (load_file(str(d / "out" / "latest.pdckpt"))["ema"] for d in (tmp_path, reference))
    assert ema.keys() == want.keys() and all(np.array_equal(ema[k].numpy(), want[k].numpy()) for k in ema)


def fail_a_rank(tmp_path, sig, restarts, **settings):
    """Start two processes with MAX_RESTARTS=restarts, send sig to rank 1 at a random step of the first epochs;
    returns (the supervisor's process, its output file, when the signal was sent)."""
    args = fast_overrides(tmp_path, **{"Global.save_every_steps": 1, **settings})
    output = tmp_path / "train_sh.txt"
    proc = train_sh(tmp_path, args, restarts, output)
    wait_for_steps(proc, tmp_path / "log", np.random.randint(2, 9))
    victim = rank_pid(proc, 1)
    os.kill(victim, sig)
    return proc, output, time.time(), victim


def finish(proc, tmp_path, timeout=400):
    """Wait for the run to end; whatever is left of it after that (a failed test) is ended."""
    try:
        proc.wait(timeout=timeout)
    finally:
        for pid in processes_mentioning(str(tmp_path / "out")):
            for sig in (signal.SIGCONT, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)


@pytest.mark.slow
def test_a_killed_rank_restarts_every_rank_and_the_run_ends_as_if_uninterrupted(tmp_path, two_process_run):
    proc, output, killed_at, victim = fail_a_rank(tmp_path, signal.SIGKILL, restarts=2)
    line = line_in(tmp_path / "log" / "train.log", "restarting every rank", timeout=120)
    assert line and time.time() - killed_at < 60, "the job did not notice the dead rank"
    finish(proc, tmp_path)
    assert proc.returncode == 0, output.read_text()[-3000:]
    assert re.search(rf"\] rank 1 of 2 \(host {HOST}, pid {victim}\) was killed by SIGKILL; restarting every rank "
                     rf"\(restart 1 of 2\) from {tmp_path / 'out' / 'latest.pdckpt'} \(= ckpt-e\d{{4}}-s\d{{6}}"
                     r"\.pdckpt\)$", line), line
    assert_same_as_uninterrupted(tmp_path, two_process_run.folder)
    assert not processes_mentioning(str(tmp_path / "out"))


@pytest.mark.slow
def test_with_restarts_off_a_killed_rank_is_the_last_line_and_its_command_resumes_exactly(tmp_path, two_process_run):
    proc, output, _, victim = fail_a_rank(tmp_path, signal.SIGKILL, restarts=0)
    finish(proc, tmp_path, timeout=120)
    text = output.read_text()
    last = text.splitlines()[-1]
    assert proc.returncode == RANK_FAILED, text[-3000:]
    m = re.fullmatch(rf"rank 1 of 2 \(host {HOST}, pid {victim}\) was killed by SIGKILL; the run resumes from "
                     rf"(\S+) \(= ckpt-e\d{{4}}-s\d{{6}}\.pdckpt\) with: (.+)", last)
    assert m and m.group(1) == str(tmp_path / "out" / "latest.pdckpt"), last
    assert open(tmp_path / "log" / "train.log").read().splitlines()[-1].endswith("] " + last)
    resumed = subprocess.run(shlex.split(m.group(2)), capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert_same_as_uninterrupted(tmp_path, two_process_run.folder)


@pytest.mark.slow
def test_a_stopped_rank_ends_the_job_through_the_watchdog_and_the_run_resumes_and_finishes(tmp_path, two_process_run):
    # gloo gives up on a silent peer after 30 s by itself (Paddle sets no other timeout): the watchdog comes first
    timeout = 15
    proc, output, stopped_at, victim = fail_a_rank(tmp_path, signal.SIGSTOP, restarts=3,
                                                   **{"Global.hang_timeout": timeout})
    line = line_in(tmp_path / "log" / "train.log", "made no progress", timeout=timeout + 120)
    took = time.time() - stopped_at
    finish(proc, tmp_path)
    assert line and took < timeout + 45, (took, output.read_text()[-3000:])
    log = tmp_path / "launch" / "workerlog.0"
    assert re.search(rf"\] rank 0 of 2 \(host {HOST}, pid \d+\) made no progress for {timeout} s: its watchdog wrote "
                     rf"its threads' Python stacks to {log} and ended it; at that moment rank 1 \(pid {victim}\) was "
                     r"stopped \(SIGSTOP\); restarting every rank \(restart 1 of 3\) from ", line), line
    dump = log.read_text().split(f"Timeout (0:00:{timeout})!\n", 1)
    assert len(dump) == 2 and re.search(r'File ".*tools/t2tvit/engine.py", line \d+ in \w+', dump[1]), dump[-1][:3000]
    assert proc.returncode == 0, output.read_text()[-3000:]
    assert_same_as_uninterrupted(tmp_path, two_process_run.folder)


@pytest.mark.slow
def test_two_machines_that_do_not_share_the_output_folder_are_refused_before_the_first_step(tmp_path):
    nodes = {"nnodes": 2, "master": f"127.0.0.1:{free_port()}"}
    second = start("train.py", *fast_overrides(tmp_path / "node1"), **nodes, launch_log_dir=tmp_path / "launch1",
                   log_file=tmp_path / "node1.txt")
    first = run_tool("train.py", *fast_overrides(tmp_path / "node0"), **nodes, launch_log_dir=tmp_path / "launch0")
    assert second.wait(timeout=300) == 2 and first.returncode == 2, first.stdout[-3000:] + first.stderr[-3000:]
    for node, stderr in (("node0", first.stderr), ("node1", open(tmp_path / "node1.txt").read())):
        last = stderr.splitlines()[-1]
        assert re.fullmatch(rf"error: Global.output_dir {tmp_path / node / 'out'} is not one folder shared by every "
                            r"rank: rank 1 does not see what rank 0 wrote there.*it must be shared storage \(a network "
                            r"file system\) mounted at the same path on each; nothing was trained", last), last
        assert not losses(tmp_path / node / "log") and not list((tmp_path / node / "out").glob("*.pdckpt"))
