"""Run a tool and look after its processes: one process, or several processes or machines (paddle.distributed.launch).

    python scripts/paddle_launch.py [--restarts N] [paddle.distributed.launch ARGS] tools/TOOL.py [TOOL ARGS]

What scripts/launch.sh runs for train.py, and for any tool on several processes. With --nproc_per_node, --devices
or --nnodes, paddle.distributed.launch runs in this process (its workers are this process's children); without
them, the tool runs alone, as this process's child. Either way:
- The exit code says what happened: the tool's own (0; 2 for bad input or a storage fault), 128 + the signal's
  number when SIGTERM / SIGINT stopped the run (paddle.distributed.launch itself exits with the bare number, which a
  scheduler cannot tell from a failure: this notes the signal its handlers receive), and RANK_FAILED when a rank
  ended otherwise: killed by a signal, crashed, or ended by its hang watchdog (tools/t2tvit/watchdog.py: killed
  by SIGALRM).
- Such a failure is one line, the last of the output and of the run's train.log: the rank, its host and pid, how
  it ended, the checkpoint the run resumes from and the command that resumes it. The rank's own log (workerlog.N
  in the launcher's --log_dir) keeps what it printed, tracebacks included.
- --restarts N: after a failure, up to N times, every rank starts again, from the newest checkpoint the run wrote
  (or as it first started, if it wrote none), as torchrun --max-restarts does. A user error (2) and a stop by a
  signal (130, 143) are never retried. A restart executes this script again in this process (same pid, so a
  scheduler's signal still reaches it), with what it must remember in STATE_ENV.
The rank that failed is the first to end abnormally, as the kernel tells it: a thread per rank waits for its end
(waitid without reaping it, so that the launcher still collects it), and the first to report a failure names it.
The others followed it: gloo aborts a rank whose peer is gone, and the launcher ends the rest.
"""
import os
import signal


def stop_while_starting(signum, frame):
    """Until the tool runs, a stop ends this process at once with one line (not a KeyboardInterrupt traceback from
    the middle of an import): nothing was started. run_alone and the launcher put their own handlers in its place."""
    os.write(2, f"stopped by {signal.Signals(signum).name} while starting: nothing was run\n".encode())
    os._exit(128 + signum)


# First thing: the imports below take a while on a loaded machine. SIGINT's handler goes in before SIGTERM's, so
# that a process seen catching SIGTERM (/proc/PID/status; Python itself always catches SIGINT) holds both.
for _sig in (signal.SIGINT, signal.SIGTERM):
    signal.signal(_sig, stop_while_starting)

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import runpy  # noqa: E402
import shlex  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))

from t2tvit.preempt import hold_signals, release_signals, resume_argv, signal_name  # noqa: E402  (no Paddle)
from t2tvit.runlock import RUN_ID_ENV, new_run_id  # noqa: E402

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
STOP_CODES = tuple(128 + s for s in STOP_SIGNALS)  # a rank stopped by SIGTERM / SIGINT (tools/t2tvit/preempt.py)
USER_ERROR = 2
RANK_FAILED = 75  # EX_TEMPFAIL: the run can continue, from its newest checkpoint
STATE_ENV = "T2T_SUPERVISOR"  # JSON: {"restarts": done so far, "latest": latest.pdckpt as the first attempt found it}
SEVERAL = ("--nproc_per_node", "--devices", "--nnodes")  # launcher options that mean several processes
# /proc/PID/stat states of a process that is alive but cannot run at all (D, waiting on I/O, comes and goes)
STUCK_STATES = {"T": "stopped (SIGSTOP)", "t": "stopped by a debugger"}


class Rank:
    """One process of the run on this machine: its rank, its log, and how it ended."""

    def __init__(self, popen, rank, world, log):
        self.popen, self.pid, self.rank, self.world, self.log = popen, popen.pid, rank, world, log
        self.status = None  # the exit code, or minus the signal's number

    def describe(self):
        return f"rank {self.rank} of {self.world} (host {socket.gethostname()}, pid {self.pid})"


class Ranks:
    """The run's processes on this machine, and the first of them to end abnormally (with any that were stuck
    at that moment, which may be why it failed: a rank waiting for a stopped one times out)."""

    def __init__(self):
        self.members, self.first, self.stuck = [], None, []
        self._lock = threading.Lock()
        self._threads = []

    def add(self, popen, rank, world, log=None):
        member = Rank(popen, rank, world, log)
        self.members.append(member)
        thread = threading.Thread(target=self._watch, args=(member,), daemon=True)
        thread.start()
        self._threads.append(thread)

    def _watch(self, member):
        try:
            ended = os.waitid(os.P_PID, member.pid, os.WEXITED | os.WNOWAIT)
            killed = ended.si_code in (os.CLD_KILLED, os.CLD_DUMPED)
            status = -ended.si_status if killed else ended.si_status
        except ChildProcessError:  # the launcher collected it first: Popen has its status
            status = member.popen.wait()
        with self._lock:
            member.status = status
            if status != 0 and self.first is None:
                self.first = member
                self.stuck = [f"rank {m.rank} (pid {m.pid}) was {STUCK_STATES[state]}" for m in self.members
                              if m.status is None and (state := process_state(m.pid)) in STUCK_STATES]

    def join(self, timeout=10.0):
        for thread in self._threads:
            thread.join(timeout)


def process_state(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def split_argv(argv):
    """(restarts, launcher args, tool, tool args) of this script's command line."""
    restarts, launch, i = 0, [], 0
    while i < len(argv) and argv[i].startswith("-"):
        name, eq, value = argv[i].partition("=")
        if not eq:
            i += 1
            value = argv[i] if i < len(argv) else ""
        if name == "--restarts":
            if not value.isdigit():
                usage(f"--restarts (MAX_RESTARTS) must be a whole number >= 0, not {value!r}")
            restarts = int(value)
        else:
            launch += [name, value]
        i += 1
    if i >= len(argv):
        usage("no tool to run")
    return restarts, launch, argv[i], argv[i + 1:]


def usage(message):
    print(f"error: scripts/paddle_launch.py: {message}\nusage: {__doc__.splitlines()[2].strip()}", file=sys.stderr)
    sys.exit(USER_ERROR)


def launch_option(launch, name, default=None):
    for key, value in zip(launch[::2], launch[1::2]):
        if key == name:
            return value
    return default


class Run:
    """The settings of a train.py command line that this script needs: Global.output_dir, log_dir and
    hang_timeout, and where the command resumes from (--resume, else Global.resume). None for other tools or
    when the config cannot be read (the tool itself then says why, exit 2)."""

    def __init__(self, cfg, resume):
        self.output_dir, self.log_dir = cfg.Global.output_dir, cfg.Global.log_dir
        self.hang_timeout = cfg.Global.hang_timeout
        self.resume = cfg.Global.resume if resume is None else resume
        self.latest = os.path.join(self.output_dir, "latest.pdckpt")

    @classmethod
    def of(cls, tool, tool_args):
        if os.path.basename(tool) != "train.py":
            return None
        from t2tvit.config import add_config_args, config_from_args
        from t2tvit.errors import UserError
        parser = add_config_args(argparse.ArgumentParser(add_help=False))
        parser.add_argument("--resume", default=None)
        try:
            args, _ = parser.parse_known_args(tool_args)
            return cls(config_from_args(args), args.resume)
        except (UserError, SystemExit):
            return None

    def latest_identity(self):
        try:
            st = os.stat(self.latest)
        except OSError:
            return None
        return [st.st_ino, st.st_mtime_ns, st.st_size]

    def starting_point(self):
        """What the command resumes from as it stands."""
        if self.resume == "auto":
            return self.newest() if os.path.isfile(self.latest) else "nothing yet (it starts afresh)"
        return self.resume or "nothing (Global.resume is empty: it starts afresh)"

    def newest(self):
        from t2tvit.checkpoint import CheckpointDir  # imports Paddle: only once a rank has failed
        return CheckpointDir(self.output_dir).newest()

    def log(self, message, run_id):
        """Append `message` to train.log in its own shape (`DATE TIME [RUN_ID] message`), if the run has one."""
        path = os.path.join(self.log_dir, "train.log")
        if os.path.isfile(path):
            with contextlib.suppress(OSError), open(path, "a") as f:
                f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} [{run_id}] {message}\n")


def run_launcher(launch, tool, tool_args, ranks):
    """paddle.distributed.launch in this process; (its exit code, the stop signals it received)."""
    received = []
    install = signal.signal

    def noting(signum, handler):
        """signal.signal, with the launcher's handlers for STOP_SIGNALS first noting the signal."""
        if signum in STOP_SIGNALS and callable(handler):
            def handle(sig, frame):
                received.append(sig)
                return handler(sig, frame)
            return install(signum, handle)
        return install(signum, handler)

    log_dir = launch_option(launch, "--log_dir", "log")

    class Worker(subprocess.Popen):
        """The launcher's Popen: each process with a PADDLE_TRAINER_ID is a rank to watch."""

        def __init__(self, args, *rest, env=None, **kwargs):
            super().__init__(args, *rest, env=env, **kwargs)
            if env and "PADDLE_TRAINER_ID" in env:
                local = env.get("PADDLE_LOCAL_RANK", str(len(ranks.members)))
                ranks.add(self, int(env["PADDLE_TRAINER_ID"]), int(env.get("PADDLE_TRAINERS_NUM", 0)),
                          os.path.join(log_dir, f"workerlog.{local}"))

    popen = subprocess.Popen
    signal.signal, subprocess.Popen = noting, Worker
    sys.argv = ["paddle.distributed.launch", *launch, tool, *tool_args]
    code = 0
    try:
        runpy.run_module("paddle.distributed.launch", run_name="__main__", alter_sys=True)
    except SystemExit as e:
        code = e.code
    finally:
        signal.signal, subprocess.Popen = install, popen
    return code, received


def run_alone(tool, tool_args, ranks):
    """The tool as this process's child; (its exit code, the stop signals this process received, passed on)."""
    received, children = [], []

    def forward(sig, frame):  # a terminal's Ctrl-C reaches both: the trainer counts repeats within 1 s as one
        received.append(sig)
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(sig)

    # Held while the child starts, so that a stop is never lost nor ends this process with the child running on;
    # the child inherits them held, and train.py takes them once its own handler is in place (preempt.hold_signals).
    hold_signals()
    try:
        for sig in STOP_SIGNALS:
            signal.signal(sig, forward)
        children.append(subprocess.Popen([sys.executable, tool, *tool_args]))
    finally:
        release_signals()
    ranks.add(children[0], 0, 1)
    return children[0].wait(), received


def how_it_ended(member, run):
    status = member.status
    if status >= 0:
        return f"exited with code {status}"
    if -status == signal.SIGALRM:
        limit = f"{run.hang_timeout:g} s" if run else "Global.hang_timeout"
        return (f"made no progress for {limit}: its watchdog wrote its threads' Python stacks to "
                f"{member.log or 'its stderr'} and ended it")
    return f"was killed by {signal_name(-status)}"


def last_error_line(member):
    """The `error:` line a rank wrote to its log (under the launcher, where nobody else shows it last)."""
    if not member.log:
        return None
    try:
        with open(member.log, "rb") as f:
            f.seek(max(0, os.path.getsize(member.log) - (1 << 16)))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    return next((line for line in reversed(lines) if line.startswith("error:")), None)


class Supervisor:
    """One attempt of the run per process: start it, and when a rank failed, say so and restart (re-executing
    this script) or give up."""

    def __init__(self, script, argv):
        self.script = script
        self.restarts, self.launch, self.tool, self.tool_args = split_argv(argv)
        self.run = Run.of(self.tool, self.tool_args)
        self.state = json.loads(os.environ.get(STATE_ENV, "{}"))
        self.done = self.state.setdefault("restarts", 0)
        if "latest" not in self.state:  # the first attempt: latest.pdckpt as it was before the run wrote any
            self.state["latest"] = self.run.latest_identity() if self.run else None

    def attempt(self):
        """Run every rank once; the exit code, or (after a failure, with restarts left) no return."""
        run_id = os.environ[RUN_ID_ENV] = new_run_id()
        ranks = Ranks()
        several = any(option in self.launch[::2] for option in SEVERAL)
        code, received = (run_launcher(self.launch, self.tool, self.tool_args, ranks) if several
                          else run_alone(self.tool, self.tool_args, ranks))
        for sig in STOP_SIGNALS:  # no process of the run is left: a stop asked for from now on is one at once
            signal.signal(sig, lambda signum, frame: sys.exit(128 + signum))
        if received:
            return 128 + received[0]
        if code == 0:
            return 0
        ranks.join()
        failed = ranks.first
        if failed is None:  # the launcher's own error (told above), no rank of this machine failed
            print(f"paddle.distributed.launch exited with code {code}, no rank on this machine failed",
                  file=sys.stderr)
            return code if code == USER_ERROR else RANK_FAILED
        if failed.status == USER_ERROR or failed.status in STOP_CODES:  # bad input, a storage fault; a signal
            # every rank may refuse, each with its line: rank 0's (the lowest here) is the one that says why
            line = last_error_line(min((m for m in ranks.members if m.status == failed.status), key=lambda m: m.rank))
            if line:
                sys.stdout.flush()
                print(line, file=sys.stderr, flush=True)
            return failed.status
        return self.failure(failed, ranks.stuck, run_id)

    def failure(self, failed, stuck, run_id):
        """Say which rank failed and how, then restart every rank from the newest checkpoint, or give up."""
        run = self.run
        what = f"{failed.describe()} {how_it_ended(failed, run)}"
        if stuck:
            what += f"; at that moment {', '.join(stuck)}"
        wrote = run is not None and run.latest_identity() not in (None, self.state["latest"])
        tool_args = resume_argv(run.latest, self.tool_args) if wrote else self.tool_args
        start = run.newest() if wrote else run.starting_point() if run else "where it started"
        if self.done < self.restarts:
            line = f"{what}; restarting every rank (restart {self.done + 1} of {self.restarts}) from {start}"
        else:
            tried = f" after {self.restarts} restart(s)" if self.restarts else ""
            command = shlex.join(self.argv(tool_args, self.restarts > 0))
            line = f"{what}{tried}; the run resumes from {start} with: {command}"
        sys.stdout.flush()
        print(line, file=sys.stderr, flush=True)
        if run:
            run.log(line, run_id)
        if self.done >= self.restarts:
            return RANK_FAILED
        self.state["restarts"] = self.done + 1
        os.environ[STATE_ENV] = json.dumps(self.state)
        os.execv(sys.executable, self.argv(tool_args, True))

    def argv(self, tool_args, restarts):
        """This script's command line with `tool_args` (and --restarts if `restarts`)."""
        return [sys.executable, self.script, *(["--restarts", str(self.restarts)] if restarts else []), *self.launch,
                self.tool, *tool_args]


if __name__ == "__main__":
    sys.exit(Supervisor(sys.argv[0], sys.argv[1:]).attempt())
