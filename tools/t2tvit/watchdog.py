"""A training process that makes no progress ends itself, with every thread's Python stack in its log.

`start(timeout)` arms the watchdog; `progress()` (the Trainer calls it after each optimizer step, Runtime.all_sum
after each collective it completes, at least once per validation batch) re-arms it; `stop()` disarms it. When `timeout` seconds
pass without progress, the process writes the Python stack of each of its threads to stderr (under
paddle.distributed.launch: the rank's own log, workerlog.N) and, half a second later, is ended by SIGALRM.

Neither step needs the Python interpreter to run: a rank stuck in a collective may hold the GIL inside Paddle's
C++ code, where no Python thread or signal handler would ever run. faulthandler writes the stacks from a C thread
of its own, and the kernel's interval timer (setitimer) sends SIGALRM, whose default action ends the process (no
part of Paddle handles SIGALRM). "Killed by SIGALRM" is how scripts/paddle_launch.py tells a hang from a crash.
Timers are not inherited across fork, so data loader workers never fire it.
"""
import faulthandler
import signal
import sys
import time

# Re-arming starts a faulthandler thread: done at most once per min(RESOLUTION, T / 10) seconds, so a watchdog of T
# seconds fires after between 0.9 T (T - 1 s for T >= 10 s) and T seconds without progress, at no cost per step
# worth counting.
RESOLUTION = 1.0
KILL_AFTER = 0.5  # seconds between the stack dump and SIGALRM: the dump is complete before the process ends

_state = {"timeout": 0.0, "armed_at": None, "file": None, "previous": signal.SIG_DFL}


def start(timeout, file=None):
    """Arm: after `timeout` seconds without progress(), dump every thread's stack to `file` (default stderr; the
    process's own stderr where that is no file, e.g. captured by a test) and end the process by SIGALRM. 0 leaves
    it off."""
    stop()
    if timeout and timeout > 0:
        file = file or sys.stderr
        try:
            file.fileno()
        except (AttributeError, ValueError, OSError):
            file = sys.__stderr__
        # SIG_DFL: an ignored SIGALRM would survive the exec that started us; stop() puts the previous one back
        _state.update(timeout=float(timeout), file=file, previous=signal.signal(signal.SIGALRM, signal.SIG_DFL))
        _arm(time.monotonic())


def progress():
    """This process completed a step or a collective: the watchdog's countdown starts again."""
    armed_at = _state["armed_at"]
    if armed_at is not None:
        now = time.monotonic()
        if now - armed_at >= min(RESOLUTION, _state["timeout"] / 10):
            _arm(now)


def stop():
    """Disarm (the run is over: its exit may take as long as it takes)."""
    if _state["armed_at"] is not None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        faulthandler.cancel_dump_traceback_later()
        signal.signal(signal.SIGALRM, _state["previous"] or signal.SIG_DFL)  # None: one set outside Python
        _state["armed_at"] = None


def _arm(now):
    timeout = _state["timeout"]
    faulthandler.dump_traceback_later(timeout, repeat=False, file=_state["file"], exit=False)
    signal.setitimer(signal.ITIMER_REAL, timeout + KILL_AFTER)
    _state["armed_at"] = now
