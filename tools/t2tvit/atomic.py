"""Writing a file so that it appears whole or not at all, through a temporary nobody else can hijack.

The temporary is created by mkstemp (O_CREAT|O_EXCL, an unpredictable name, never through a planted symlink) in
the destination's folder, written, fsynced and renamed over the destination with os.replace (which replaces a
symlink there rather than following it); on any failure it is removed. Temporaries are named
DEST_NAME + TEMP_MARK + random, so a start-up can recognise those a killed process left behind.
"""
import contextlib
import os
import re
import shutil
import tempfile

TEMP_MARK = ".tmp"


def _umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# mkstemp creates files 0600; a finished file gets the mode open() would have given it.
FILE_MODE = 0o666 & ~_umask()


@contextlib.contextmanager
def temporary_beside(dest):
    """(fd, path) of a fresh exclusive temporary in dest's folder; removed on leaving, unless renamed away."""
    folder = os.path.dirname(os.path.abspath(dest))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=os.path.basename(dest) + TEMP_MARK)
    try:
        yield fd, tmp
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def fd_path(fd, path):
    """A path that opens the very file `fd` refers to (Linux: /proc/self/fd/N, which no rename or planted
    symlink can redirect), for writers that take a path only (paddle.save); elsewhere the path itself."""
    proc = f"/proc/self/fd/{fd}"
    return proc if os.path.exists(proc) else path


@contextlib.contextmanager
def replacing(dest):
    """Yield a path to write dest's new content to; on success it is fsynced and renamed over dest."""
    with temporary_beside(dest) as (fd, tmp):
        yield fd_path(fd, tmp)
        os.fchmod(fd, FILE_MODE)
        os.fsync(fd)
        os.replace(tmp, dest)


def write_bytes(dest, data):
    """dest := data, atomically."""
    with replacing(dest) as path, open(path, "wb") as f:
        f.write(data)


def link_or_copy(src, dest):
    """Point dest at src's content atomically: a hard link where possible (deleting src keeps dest), else a copy."""
    folder = os.path.dirname(os.path.abspath(dest))
    for _ in range(100):  # a fresh unpredictable name each try; link() never follows a symlink at its target
        tmp = os.path.join(folder, os.path.basename(dest) + TEMP_MARK + os.urandom(6).hex())
        try:
            os.link(src, tmp)
        except FileExistsError:
            continue
        except OSError:  # no hard links on this file system
            break
        try:
            os.replace(tmp, dest)
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise
        return
    with replacing(dest) as path, open(src, "rb") as f, open(path, "wb") as out:
        while chunk := f.read(1 << 20):
            out.write(chunk)


def remove_stale_temporaries(dest):
    """Remove what a killed writer of `dest` left beside it: DEST.tmpXXXXXXXX, the files and folders mkstemp and
    mkdtemp name after it (temporary_beside, export's folder). Call it holding dest's lock (lockfile.OutputLock),
    so that no live writer owns them; returns their paths."""
    folder, name = os.path.split(os.path.abspath(dest))
    pattern = re.compile(re.escape(name + TEMP_MARK) + r"[a-z0-9_]{8}$")  # tempfile's 8 random characters
    stale = [os.path.join(folder, entry) for entry in sorted(os.listdir(folder)) if pattern.match(entry)]
    for path in stale:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
    return stale
