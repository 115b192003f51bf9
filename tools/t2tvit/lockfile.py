"""A lock file that names its holder, held by flock for the holder's life: the one mechanism behind train.lock
(runlock.RunLock) and the lock beside an output (OutputLock: predict's FILE.jsonl.lock, export's OUT.lock, the
converter's DST.lock).

The holder's record is written whole into an exclusive temporary beside the lock (mkstemp, flock()ed, fsynced)
and linked into place: os.link never replaces an existing file nor follows a planted symlink, and no reader sees
half a record. An existing lock is judged by its flock: the kernel drops a flock when its process dies however it
dies, so a lock whose flock can be taken is stale, and is replaced by ours (os.replace) once it is checked to be
still the same file. Where fcntl is missing (not POSIX), a holder on this host is judged by its pid. A subclass
gives the record, how to read one, whether another host's lock may be judged by its flock (flock may not cross a
network file system), and its messages.
"""
import contextlib
import os
import socket
import sys
import tempfile

from . import atomic
from .errors import UserError, shown

try:
    import fcntl
except ImportError:  # not POSIX: a dead holder is told by its pid
    fcntl = None


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


class LockFile:
    """acquire(warn) takes `path` holding `record` or raises the subclass's refusal; release() gives it back."""

    judges_other_hosts = False  # True: another host's lock is stale when its flock can be taken here

    def __init__(self, path, record):
        self.path, self.record, self.fd = path, record, None
        self.host = socket.gethostname()

    # ---- what a subclass says ----
    def parse(self, text):
        """The holder named by a lock file's text: a dict with at least 'host' and 'pid' where known."""
        raise NotImplementedError

    def refusal(self, holder):
        """The UserError of a lock held by a live holder."""
        raise NotImplementedError

    def unopenable(self, error):
        """The UserError of a lock path that exists but cannot be opened as a file (a symlink, a folder)."""
        raise NotImplementedError

    def taken_over(self, holder):
        """The warning given when a dead holder's lock is replaced."""
        raise NotImplementedError

    def uncreatable(self, error):
        """What to raise when the temporary cannot be created: the OSError itself unless a subclass says more."""
        return error

    # ---- the mechanism ----
    def acquire(self, warn=print):
        try:
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(self.path)),
                                       prefix=os.path.basename(self.path) + atomic.TEMP_MARK)
        except OSError as e:
            raise self.uncreatable(e) from None
        try:
            if fcntl:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.write(fd, self.record.encode())
            os.fchmod(fd, atomic.FILE_MODE)
            os.fsync(fd)
            for _ in range(20):  # each round: the lock is ours, or held, or stale and its inode changed meanwhile
                try:
                    os.link(tmp, self.path)  # never replaces an existing lock, nor follows a symlink
                    self.fd = fd
                    return self
                except FileExistsError:
                    pass
                if self._take_over_if_stale(tmp, warn):
                    self.fd = fd
                    return self
            raise UserError(f"cannot take {self.path}: it keeps changing (another run starting at once?)")
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
            if self.fd is None:
                os.close(fd)

    def _take_over_if_stale(self, tmp, warn):
        """True once our lock replaced a dead holder's; False to try again; the refusal while a live one holds it."""
        try:
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:
            return False  # released meanwhile: link again
        except OSError as e:
            raise self.unopenable(e) from None
        try:
            holder = self.parse(os.pread(fd, 1 << 16, 0).decode(errors="replace"))
            if not self._stale(fd, holder):
                raise self.refusal(holder)
            try:
                still = os.path.samestat(os.fstat(fd), os.stat(self.path, follow_symlinks=False))
            except FileNotFoundError:  # its holder released it (removed, then unlocked) since we opened it
                return False
            if still:
                os.replace(tmp, self.path)
                warn(self.taken_over(holder))
                return True
            return False
        finally:
            os.close(fd)  # after the replace: while we hold the old file's flock, nobody else judges it

    def _stale(self, fd, holder):
        here = holder.get("host") == self.host
        if not here and not (fcntl and self.judges_other_hosts):
            return False  # another host's: its flock may not reach us, and its pid means nothing here
        if fcntl:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            return True
        try:
            return not pid_alive(int(holder.get("pid", 0)))
        except (TypeError, ValueError):  # no pid to judge by
            return False

    def release(self):
        """Remove the lock if it is still ours (not taken over as stale meanwhile), before closing it: a waiting
        run then never locks a file already gone."""
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            if os.path.samestat(os.fstat(self.fd), os.stat(self.path, follow_symlinks=False)):
                os.remove(self.path)
        os.close(self.fd)
        self.fd = None


class OutputLock(LockFile):
    """An advisory lock on an output file, taken on creation: PATH.lock holds "pid host" (lockfile.LockFile).

    A second writer of the same output is refused with one line naming the holder. The flock ends with its
    process, so a lock file left by a process that died (SIGKILL, power loss) is taken over with a warning,
    whichever host wrote it: the flock alone decides.
    """

    judges_other_hosts = True

    def __init__(self, path, what):
        self.what = what
        super().__init__(path + ".lock", f"{os.getpid()} {socket.gethostname()}\n")
        self.acquire(warn=lambda message: print(message, file=sys.stderr))

    def parse(self, text):
        words = text.split() or ["?"]
        return {"pid": words[0], "host": words[-1]}

    def refusal(self, holder):
        return UserError(f"{self.what} is being written by another run (pid {holder['pid']} on host "
                         f"{holder['host']}, lock {shown(self.path)}): wait for it or choose another output")

    def unopenable(self, error):
        return UserError(f"{self.what}: cannot open the lock {shown(self.path)}: {error.strerror}")

    def uncreatable(self, error):
        return UserError(f"{self.what}: cannot create the lock {shown(self.path)}: {error.strerror}")

    def taken_over(self, holder):
        return f"warning: taking over {shown(self.path)}, left by a run that is no longer alive"
