"""User-facing errors: one clear line and a non-zero exit, never a traceback for bad input."""
import functools
import os
import sys


class UserError(Exception):
    """Bad input from the user (file, key or value); the message names the culprit."""


class StorageError(UserError):
    """An OSError while writing a file (no space, permission, read-only file system): the path and why."""

    def __init__(self, path, err):
        self.path, self.reason = path, err.strerror or str(err)
        super().__init__(f"cannot write {path}: {self.reason}")


def cli(main):
    """Run `main()` and turn a UserError into `error: <message>` on stderr with exit code 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            sys.exit(2)

    return wrapper


def shown(path):
    """`path` (or a class name) as it can be printed on one line: as is when every character is printable, else
    repr-style.

    A file name may hold a newline (which could forge a `class_id is: N` line in predict's output), control
    characters, or surrogates (os.fsdecode of a name that is not UTF-8), which a strict UTF-8 stdout cannot
    encode; repr() escapes all of them and never raises.
    """
    text = os.fsdecode(path) if isinstance(path, bytes) else str(path)
    return text if text.isprintable() else repr(text)
