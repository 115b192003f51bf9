"""One training run per output folder: Global.output_dir/train.lock, and the run id of every log line.

The lock file holds its holder as JSON (host, pid, started, command, run) and, where fcntl exists, a flock
held for the run's life: the kernel drops the flock when the holder dies however it dies, so a lock whose
flock can be taken on this host is stale and is taken over with a warning. A lock from another host cannot
be judged from here (flock may not cross a network file system): the run refuses, naming the holder.
The file is written whole into an exclusive temporary and linked into place, so no reader sees half of it.
"""
import contextlib
import json
import os
import secrets
import socket
import tempfile
import time

from . import atomic
from .errors import UserError

try:
    import fcntl
except ImportError:  # not POSIX: a dead holder is told by its pid
    fcntl = None

LOCK_NAME = "train.lock"


def new_run_id():
    """A run's id: its start time, pid and random hex (unique across restarts and hosts)."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{secrets.token_hex(2)}"


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def describe(holder):
    return (f"host {holder.get('host')}, pid {holder.get('pid')}, started {holder.get('started')}, "
            f"run {holder.get('run')}: {holder.get('command')}")


class RunLock:
    """acquire() takes folder/train.lock or raises UserError naming its holder; release() gives it back."""

    def __init__(self, folder, run_id, command):
        self.folder, self.path = folder, os.path.join(folder, LOCK_NAME)
        self.holder = {"host": socket.gethostname(), "pid": os.getpid(),
                       "started": time.strftime("%Y-%m-%d %H:%M:%S %z"), "run": run_id, "command": command}
        self.fd = None

    def acquire(self, warn=print):
        os.makedirs(self.folder, exist_ok=True)
        fd = self._write_own()
        try:
            for _ in range(20):  # each round: the lock is ours, or held, or stale and its inode changed meanwhile
                try:
                    os.link(self._tmp, self.path)  # never replaces an existing lock, nor follows a symlink
                    self.fd = fd
                    return self
                except FileExistsError:
                    pass
                if self._take_over_if_stale(fd, warn):
                    self.fd = fd
                    return self
            raise UserError(f"cannot take {self.path}: it keeps changing (another run starting at once?)")
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self._tmp)
            if self.fd is None:
                os.close(fd)

    def _write_own(self):
        fd, self._tmp = tempfile.mkstemp(dir=self.folder, prefix=LOCK_NAME + atomic.TEMP_MARK)
        if fcntl:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, (json.dumps(self.holder) + "\n").encode())
        os.fchmod(fd, atomic.FILE_MODE)
        os.fsync(fd)
        return fd

    def _take_over_if_stale(self, own_fd, warn):
        """True once our lock replaced a dead run's; False to try again; UserError while a live run holds it."""
        try:
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:
            return False  # released meanwhile: link again
        except OSError as e:
            raise UserError(f"{self.path} is not a lock file of this repo ({e.strerror}): remove it if no run "
                            "uses this folder") from None
        try:
            with os.fdopen(os.dup(fd)) as f:
                text = f.read(1 << 16)
            try:
                holder = json.loads(text)
                if not isinstance(holder, dict):
                    raise ValueError
            except ValueError:
                holder = {}
            if not self._stale(fd, holder):
                raise UserError(f"Global.output_dir {self.folder} is in use by another training run ({describe(holder)}); "
                                f"wait for it to end or use another Global.output_dir (if that run is gone, "
                                f"remove {self.path})")
            if os.path.samestat(os.fstat(fd), os.stat(self.path, follow_symlinks=False)):
                os.replace(self._tmp, self.path)
                warn(f"warning: {self.path} was left by a run that is gone ({describe(holder)}): taken over")
                return True
            return False
        finally:
            os.close(fd)

    def _stale(self, fd, holder):
        if holder.get("host") != self.holder["host"]:
            return False  # another host's: its flock may not reach us, and its pid means nothing here
        if fcntl:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            return True
        return not pid_alive(int(holder.get("pid", 0)))

    def release(self):
        """Remove the lock if it is still ours (not taken over as stale meanwhile)."""
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            if os.path.samestat(os.fstat(self.fd), os.stat(self.path, follow_symlinks=False)):
                os.remove(self.path)
        os.close(self.fd)
        self.fd = None
