"""Run a script with a fault injected: writes to some files failing, or signals at a chosen moment.

    python tests/faults.py GLOB ERRNO [AFTER_BYTES] -- tools/train.py ARGS...
    python tests/faults.py --signal SIGTERM MODULE.FUNCTION CALL [COUNT] -- tools/train.py ARGS...

Files whose name matches GLOB, opened for writing through Python's open() (also as /proc/self/fd/N) (paddle.save, logging and VisualDL
all use it), fail with ERRNO (a name: ENOSPC, EROFS, EACCES): once AFTER_BYTES have been written to them
(the disk fills up mid-file), or when opened if AFTER_BYTES is not given. Needs no root and no mount.

With --signal, the CALL-th call of MODULE.FUNCTION (e.g. t2tvit.engine.evaluate, paddle.save) gets the signal as it
starts; with COUNT 2, a second one 1.5 s later, once the function has done its work (a save is written but
not yet renamed into place).
"""
import builtins
import errno
import fnmatch
import importlib
import os
import runpy
import signal
import sys
import time


class FailingFile:
    """A file object whose writes fail once `budget` characters or bytes have been written."""

    def __init__(self, f, budget, err, path):
        self._f, self._budget, self._err, self._path = f, budget, err, path

    def write(self, data):
        if len(data) > self._budget:
            raise OSError(self._err, os.strerror(self._err), self._path)
        self._budget -= len(data)
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()

    def __iter__(self):
        return iter(self._f)


def real_name(file):
    """The file's own name, also when it is opened through /proc/self/fd/N (the atomic writer's temporaries)."""
    file = os.fspath(file)
    return os.readlink(file) if file.startswith("/proc/self/fd/") else file


def install(pattern, err, after_bytes=None):
    real_open = builtins.open

    def failing_open(file, mode="r", *args, **kwargs):
        # A descriptor (tempfile.mkstemp's) or a /proc/self/fd/N path is matched by the file it has open.
        name = real_name(f"/proc/self/fd/{file}" if isinstance(file, int) else file) \
            if isinstance(file, (int, str, os.PathLike)) else None
        if name is not None and set(mode) & set("wax+") and fnmatch.fnmatch(os.path.basename(name), pattern):
            if after_bytes is None:
                raise OSError(err, os.strerror(err), os.fspath(name))
            return FailingFile(real_open(file, mode, *args, **kwargs), after_bytes, err, os.fspath(name))
        return real_open(file, mode, *args, **kwargs)

    builtins.open = failing_open


def signal_at(sig, target, call, count=1):
    module_name, name = target.rsplit(".", 1)
    module = importlib.import_module(module_name)
    real, calls = getattr(module, name), []

    def wrapper(*args, **kwargs):
        calls.append(1)
        if len(calls) != call:
            return real(*args, **kwargs)
        os.kill(os.getpid(), sig)
        if count == 1:
            return real(*args, **kwargs)
        time.sleep(1.5)
        result = real(*args, **kwargs)
        os.kill(os.getpid(), sig)
        return result

    setattr(module, name, wrapper)


def main():
    split = sys.argv.index("--")
    spec, script = sys.argv[1:split], sys.argv[split + 1:]
    sys.argv = script
    sys.path.insert(0, os.path.dirname(os.path.abspath(script[0])))
    if spec[0] == "--signal":
        signal_at(getattr(signal, spec[1]), spec[2], *map(int, spec[3:]))
    else:
        install(spec[0], getattr(errno, spec[1]), int(spec[2]) if len(spec) > 2 else None)
    runpy.run_path(script[0], run_name="__main__")


if __name__ == "__main__":
    main()
