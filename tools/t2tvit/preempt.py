"""Stopping a training run on SIGTERM / SIGINT without losing the step in flight.

The first signal only asks: the trainer finishes its optimizer step, every rank agrees on the same step
boundary (the request travels in the all-reduce the trainer does each step anyway), rank 0 writes a complete
checkpoint and the run exits with 128 + the signal's number. A second signal stops at once (the step in
flight is lost, the newest complete checkpoint stays). Repeats of a signal within REPEAT_WINDOW seconds count
as one: paddle.distributed.launch forwards one SIGTERM to its workers up to three times, 0.2 s apart.

Paddle installs a C++ handler for SIGTERM when it is imported (the "FatalError: Termination signal" dump);
Python's signal.signal replaces it, so `install()` must run after `import paddle`. Data loader workers fork
from the trainer and inherit this handler: there it ignores the signal (a terminal's Ctrl-C and a scheduler's
SIGTERM reach every process of the job, but the trainer needs its workers to finish the step and ends them
itself), unless the trainer is gone or exiting (multiprocessing's exit hook sends SIGTERM), when it exits.
"""
import contextlib
import ctypes
import mmap
import multiprocessing
import os
import shlex
import signal
import sys
import threading
import time

SIGNALS = (signal.SIGTERM, signal.SIGINT)
REPEAT_WINDOW = 1.0  # seconds
BACKSTOP = 10.0  # seconds a second signal leaves the process to unwind before it is ended outright


class Stopped(BaseException):
    """The run stops on a signal; `at_once` when a second one cut the step in flight short.

    A BaseException, like KeyboardInterrupt, so that no `except Exception` (logging's, Paddle's) swallows it.
    """

    def __init__(self, signum, at_once=False):
        super().__init__(signal_name(signum))
        self.signum = signum or signal.SIGTERM  # a rank that saw no signal follows the one that did
        self.at_once = at_once
        self.logged = False  # whether the line saying where the run stopped was written

    @property
    def exit_code(self):
        return 128 + self.signum


def signal_name(signum):
    return signal.Signals(signum).name if signum else "a signal on another process"


class GracefulStop:
    """Install with `install(log)`; `requested` says whether a stop was asked for on this process."""

    def __init__(self):
        self.pid = os.getpid()
        self.signum = None
        self.starting = False
        self.first_at = 0.0
        self.log = None
        self._exiting = mmap.mmap(-1, 1)  # shared with forked data loader workers: 1 once the trainer exits
        self._at_exit_now = []

    @property
    def requested(self):
        return self.signum is not None

    def install(self, log=None):
        """Handle SIGTERM / SIGINT from now on (and take any that hold_signals() kept waiting): until started(), a
        signal ends the process at once (one line, the on_exit_now steps, 128 + its number); after it, the first one
        asks for a stop at a step boundary."""
        self.log = log
        self.starting = True
        for sig in SIGNALS:
            signal.signal(sig, self._handle)
        release_signals()
        return self

    def started(self):
        """Training begins: from now on a first signal stops the run after its current step, with a checkpoint."""
        self.starting = False

    def on_exit_now(self, release):
        """Call `release` (e.g. the output folder's lock) also when the backstop ends the process outright."""
        self._at_exit_now.append(release)

    def exiting(self):
        """From now on signals end the data loader workers and are ignored by the trainer.

        Call it before the interpreter exits, however it exits: multiprocessing's exit hook ends the
        workers that are still running with SIGTERM, and waits for them.
        """
        self._exiting[0] = 1

    def _handle(self, signum, frame):
        if os.getpid() != self.pid:
            self._handle_in_worker(signum)
            return
        if self._exiting[0]:
            return
        now = time.monotonic()
        if self.starting:  # nothing to save yet: end at once (raising here could unwind through Paddle's C++)
            self.exiting()
            if self.log:
                self.log.warning(f"{signal_name(signum)} received while starting: stopped, nothing was trained")
            self._end_now(signum, self._at_exit_now)
        if self.signum is None:
            self.signum, self.first_at = signum, now
            if self.log:
                self.log.warning(f"{signal_name(signum)} received: stopping after the current step with a "
                                 "checkpoint (a second signal stops at once)")
        elif now - self.first_at > REPEAT_WINDOW:
            self.exiting()
            timer = threading.Timer(BACKSTOP, self._end_now, (signum, self._at_exit_now))
            timer.daemon = True
            timer.start()
            raise Stopped(signum, at_once=True)

    def adopt_workers(self, loader):
        """Make the workers of a paddle.io.DataLoader (or of a wrapper's `.loader`) use this handler.

        Paddle's worker loop installs a C++ SIGTERM handler that kills the worker, which would make the
        trainer fail mid-step ("DataLoader process exited"); worker_init_fn runs after it and puts ours back.
        """
        loader = getattr(loader, "loader", loader)
        previous = getattr(loader, "worker_init_fn", None)

        def init(worker_id):
            for sig in SIGNALS:
                signal.signal(sig, self._handle)
            die_with_parent()
            if previous is not None:
                previous(worker_id)

        if hasattr(loader, "worker_init_fn"):
            loader.worker_init_fn = init

    def _handle_in_worker(self, signum):
        if self._exiting[0] or os.getppid() != self.pid:
            raise SystemExit(0)  # a clean exit: Paddle's worker loop frees its shared memory on the way out

    @staticmethod
    def _end_now(signum, releases):
        """The unwinding after a second signal is stuck (e.g. in a collective whose peer is gone)."""
        for child in multiprocessing.active_children():
            child.kill()
        for release in releases:
            release()
        os._exit(128 + signum)


def hold_signals():
    """Keep SIGTERM and SIGINT waiting until a handler is in place (GracefulStop.install, exit_on_signals): call it
    first thing in a command, before Paddle is imported. Meanwhile Python's SIGINT would be a KeyboardInterrupt
    traceback, and Paddle's import puts in its C++ SIGTERM handler (a FatalError dump); a signal held here is
    taken by our handler the moment it is installed. Threads started meanwhile keep them blocked, so they always
    reach the main thread."""
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)


def release_signals():
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)


_UNDO_ON_STOP = []  # what exit_on_signals' handler undoes before ending the process, newest first


@contextlib.contextmanager
def undone_on_stop(undo):
    """Inside, a stop by exit_on_signals calls `undo()` (remove a temporary, release a lock) before the process ends."""
    _UNDO_ON_STOP.append(undo)
    try:
        yield
    finally:
        _UNDO_ON_STOP.remove(undo)


@contextlib.contextmanager
def exit_on_signals():
    """For a command with nothing to finish on a stop (predict, export): inside, SIGTERM / SIGINT end it at once with
    one line, `stopped by SIGINT`, and exit status 128 + the signal's number (including a signal hold_signals()
    kept waiting), after the undo steps registered with undone_on_stop. The process ends from the handler itself
    (os._exit): an exception raised there would unwind through whatever Paddle runs at that moment (its dy2static
    translator catches and reprints it, a C++ frame may crash). The handlers before it are put back on leaving
    (commands run in-process by the tests)."""
    # The line goes to stderr as it is now: a stop may come while quiet.filtered_output has fd 2 on a pipe whose
    # reader thread would never get to pass it on before the process ends.
    stderr = os.dup(2)

    def handle(signum, frame):
        for sig in SIGNALS:  # one stop: a repeat (a launcher forwards up to three) changes nothing
            signal.signal(sig, signal.SIG_IGN)
        os.write(stderr, f"stopped by {signal_name(signum)}\n".encode())  # not print(): the signal may have cut one
        for undo in reversed(_UNDO_ON_STOP):
            with contextlib.suppress(Exception):
                undo()
        with contextlib.suppress(Exception):  # what was printed so far (predict's lines) stays printed
            sys.stdout.flush()
        os._exit(128 + signum)

    previous = {sig: signal.signal(sig, handle) for sig in SIGNALS}
    release_signals()
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        os.close(stderr)


def die_with_parent():
    """Linux: have the kernel send this process SIGTERM when its parent dies, even by SIGKILL."""
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: Paddle's workers notice a dead parent within 5 s
        pass


def launch_argv():
    """The command that started this run: the launcher's when it is the parent (paddle.distributed.launch, or
    scripts/paddle_launch.py, which runs it), else ours."""
    for pid in (os.getppid(), os.getpid()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = [a.decode() for a in f.read().split(b"\0")[:-1]]
        except OSError:
            continue
        if pid == os.getpid() or any(a.startswith("paddle.distributed.launch") or
                                     os.path.basename(a) == "paddle_launch.py" for a in argv):
            return argv
    return [sys.executable, *sys.argv]


def resume_argv(checkpoint, argv):
    """`argv` with --resume pointing at `checkpoint` (any --resume it had removed)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--resume":
            skip = True
        elif not a.startswith("--resume="):
            out.append(a)
    return out + ["--resume", checkpoint]


def resume_command(checkpoint, argv=None):
    """`argv` (default: this run's command) with --resume pointing at `checkpoint`, as a shell command."""
    return shlex.join(resume_argv(checkpoint, list(argv or launch_argv())))


class Interruptible:
    """A loader whose iteration stops (raises Stopped) when every rank agrees to, checked before each batch.

    Ranks may hold different numbers of batches (validation splits the set without padding), so the
    agreement, a collective, runs only for the batches every rank has: `common` of them.
    """

    def __init__(self, loader, stop, runtime):
        self.loader, self.stop, self.rt = loader, stop, runtime
        self.common = None

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        if self.common is None:
            counts = [0.0] * self.rt.world
            counts[self.rt.rank] = len(self.loader)
            self.common = int(min(self.rt.all_sum(counts)))
        for i, batch in enumerate(self.loader):
            if i < self.common and self.rt.all_sum([float(self.stop.requested)])[0] > 0:
                raise Stopped(self.stop.signum)
            yield batch
