"""Opening the files a run is given: regular files only (never a hang on a FIFO), text read line by line within a
budget (never a whole file at once), each refusal saying what the file is.

Used for weights and checkpoints (checkpoint.load_file), images (decode.py) and list and class files (dataset.py).
"""
import os
import stat

KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
         (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


class NotRegular(OSError):
    """The path names something other than a regular file; `kind` says what ("a folder", "a FIFO (named pipe)")."""

    def __init__(self, path, kind):
        super().__init__(f"{path} is {kind}, not a file")
        self.kind = kind


class TooLarge(ValueError):
    """A text file over its byte budget, or a line over its length budget; the message says which and where."""


def open_regular(path, mode="rb", **kwargs):
    """`path` opened if it is a regular file; NotRegular for anything else, OSError (FileNotFoundError, ...) as
    open() raises it. O_NONBLOCK keeps open() from waiting for a FIFO's writer, and the type is checked on the
    opened descriptor (fstat), so the file cannot be swapped between a check and the open."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        mode_bits = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode_bits):
            raise NotRegular(path, next((kind for test, kind in KINDS if test(mode_bits)), "not a regular file"))
        os.set_blocking(fd, True)
        f = open(fd, mode, **kwargs)
    except BaseException:
        os.close(fd)
        raise
    if "b" in mode:
        f.raw.name = path  # messages (Pillow's, ours) name the file by it, not by the descriptor
    return f


def text_lines(path, max_bytes, max_line):
    """(line number, line without its end) of the UTF-8 text file `path`, streamed; a BOM at its start (some
    Windows editors write one) is dropped. TooLarge for a file over max_bytes or a line over max_line characters;
    OSError / NotRegular / UnicodeDecodeError as reading raises them."""
    with open_regular(path, "r", encoding="utf-8-sig") as f:
        size = os.fstat(f.fileno()).st_size
        if size > max_bytes:
            raise TooLarge(f"{size:,} bytes, over the {max_bytes:,} a file of this kind may have")
        read = 0
        for lineno, line in enumerate(iter(lambda: f.readline(max_line + 1), ""), 1):
            read += len(line)
            if len(line.rstrip("\r\n")) > max_line:
                raise TooLarge(f"line {lineno} is over {max_line:,} characters")
            if read > max_bytes:  # it grew while being read
                raise TooLarge(f"over the {max_bytes:,} bytes a file of this kind may have")
            yield lineno, line.rstrip("\r\n")
