"""Run a script with writes to some files failing, as on a full disk or a read-only file system.

    python tests/faults.py GLOB ERRNO [AFTER_BYTES] -- tools/train.py ARGS...

Files whose name matches GLOB, opened for writing through Python's open() (paddle.save, logging and VisualDL
all use it), fail with ERRNO (a name: ENOSPC, EROFS, EACCES): once AFTER_BYTES have been written to them
(the disk fills up mid-file), or when opened if AFTER_BYTES is not given. Needs no root and no mount.
"""
import builtins
import errno
import fnmatch
import os
import runpy
import sys


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


def install(pattern, err, after_bytes=None):
    real_open = builtins.open

    def failing_open(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and set(mode) & set("wax+") and \
                fnmatch.fnmatch(os.path.basename(os.fspath(file)), pattern):
            if after_bytes is None:
                raise OSError(err, os.strerror(err), os.fspath(file))
            return FailingFile(real_open(file, mode, *args, **kwargs), after_bytes, err, os.fspath(file))
        return real_open(file, mode, *args, **kwargs)

    builtins.open = failing_open


def main():
    split = sys.argv.index("--")
    spec, script = sys.argv[1:split], sys.argv[split + 1:]
    install(spec[0], getattr(errno, spec[1]), int(spec[2]) if len(spec) > 2 else None)
    sys.argv = script
    sys.path.insert(0, os.path.dirname(os.path.abspath(script[0])))
    runpy.run_path(script[0], run_name="__main__")


if __name__ == "__main__":
    main()
