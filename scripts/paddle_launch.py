"""`python -m paddle.distributed.launch ARGS`, but exiting 128 + the signal's number when a signal stopped it.

paddle.distributed.launch ends its workers on SIGTERM / SIGINT and exits with the bare signal number (15, 2),
which a scheduler cannot tell from a failure (2 is also a worker's exit code for bad input). This runs the
launcher in this process, notes the signal its handlers receive, and maps the exit code (what
scripts/launch.sh runs for several processes or machines).
"""
import runpy
import signal
import sys

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def main():
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

    signal.signal = noting
    sys.argv = ["paddle.distributed.launch", *sys.argv[1:]]
    code = 0
    try:
        runpy.run_module("paddle.distributed.launch", run_name="__main__", alter_sys=True)
    except SystemExit as e:
        code = e.code
    return 128 + received[0] if received else code


if __name__ == "__main__":
    sys.exit(main())
