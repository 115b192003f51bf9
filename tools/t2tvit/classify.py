"""Classifying images with any forward function: finding image files, batching, records, JSON lines.

Used by tools/predict.py with a dynamic model or a deployment backend; the records are the JSONL lines:
{"path", "class_id", "class_name", "topk": [[id, name, prob], ...]} (+ "logits"), or {"path", "error"}.
"""
import itertools
import json
import os
import sys
import tempfile

import numpy as np

from .atomic import FILE_MODE
from .dataset import IMG_EXTENSIONS
from .decode import BadImage
from .errors import StorageError, UserError, shown
from .lockfile import OutputLock
from .preempt import undone_on_stop


def image_paths(paths):
    """The image files named by `paths` (files as given; folders recursively, sorted), lazily.

    Symlinked sub-folders are followed, each real folder (st_dev, st_ino) visited once, so a link loop ends.
    """
    for path in paths:
        if not os.path.exists(path):
            raise UserError(f"image not found: {shown(path)}")
    for path in paths:
        if not os.path.isdir(path):
            yield path
            continue
        found = False
        visited = {_identity(path)}
        for root, dirs, files in os.walk(path, followlinks=True):
            fresh = []
            for d in sorted(dirs):
                key = _identity(os.path.join(root, d))
                if key not in visited:
                    visited.add(key)
                    fresh.append(d)
            dirs[:] = fresh
            for name in sorted(files):
                if name.lower().endswith(IMG_EXTENSIONS):
                    found = True
                    yield os.path.join(root, name)
        if not found:
            print(f"warning: no images ({', '.join(IMG_EXTENSIONS)}) under {shown(path)}", file=sys.stderr)


def _identity(folder):
    st = os.stat(folder)
    return st.st_dev, st.st_ino


def softmax(logits):
    z = np.exp(logits.astype(np.float64) - logits.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def prediction(path, logits, names, topk, with_logits=False):
    """The JSONL record of one image: path, class_id, class_name, topk [[id, name, prob], ...] (+ logits)."""
    name = lambda c: names[c] if c < len(names) else "?"
    if not np.isfinite(logits).all():  # would print nan and write a bare NaN, which is not JSON
        raise UserError(f"{shown(path)}: the model's outputs are not finite (NaN or inf): are the weights finite?")
    probs = softmax(logits)
    top = np.argsort(-probs, kind="stable")[:min(topk, len(probs))]
    record = {"path": path, "class_id": int(top[0]), "class_name": name(top[0]),
              "topk": [[int(c), name(c), float(probs[c])] for c in top]}
    if with_logits:
        record["logits"] = [float(v) for v in logits]
    return record


def print_prediction(record):
    """The original repo's `class_id is: N` line, then the class name and the top-k probabilities. Class names,
    like paths, come from files (a checkpoint, Data.classes, an export): any that is not printable is shown
    repr-style, so one image prints exactly these four lines and no terminal escape."""
    print(shown(record["path"]))
    print(f"class_id is: {record['class_id']}")
    print(f"class name: {shown(record['class_name'])}")
    print(f"top-{len(record['topk'])}: " + ", ".join(f"{c} {shown(n)} ({p:.4f})" for c, n, p in record["topk"]))


class JsonLines:
    """FILE.jsonl written a flushed line at a time to FILE.jsonl.<random>.partial, renamed to FILE.jsonl at the end.

    The partial is created exclusively with an unpredictable name (mkstemp), so a file or symlink planted
    beside the output is never written through; FILE.jsonl.lock keeps a second run off the same output. Lines
    are strict JSON (a NaN is refused, not written as a bare NaN) and ASCII: a file name that is not UTF-8 is
    kept in Python's surrogateescape form, written as \\udcXX escapes, so os.fsencode(json.loads(line)["path"])
    gives back the exact bytes of the name. Use as a context manager: the lock is released on every exit,
    and an interrupted or failed run keeps its finished lines in the partial.
    """

    def __init__(self, path):
        self.path = path
        self.lock = OutputLock(path, f"--output {shown(path)}")
        folder, name = os.path.split(os.path.abspath(path))
        try:
            fd, self.partial = tempfile.mkstemp(dir=folder, prefix=name + ".", suffix=".partial", text=True)
            self.file = open(fd, "w", encoding="ascii")
        except OSError as e:
            self.lock.release()
            raise UserError(f"--output {shown(path)}: cannot write in {shown(folder)}: {e.strerror}") from None

    def __enter__(self):
        self._undo = undone_on_stop(self.lock.release)  # a stop by a signal (preempt.exit_on_signals) frees it too
        self._undo.__enter__()
        return self

    def __exit__(self, *exc):
        self._undo.__exit__(*exc)
        if not self.file.closed:
            try:
                self.file.close()
            except OSError:  # already reported by the write that failed
                pass
        self.lock.release()

    def _storage(self, call, *args):
        try:
            return call(*args)
        except OSError as e:
            raise StorageError(shown(self.partial), e) from None

    def write(self, records):
        for record in records:
            self._storage(self.file.write, json.dumps(record, allow_nan=False) + "\n")
        self._storage(self.file.flush)

    def finish(self):
        self._storage(os.fchmod, self.file.fileno(), FILE_MODE)  # mkstemp made it 0600; the output follows the umask
        self._storage(self.file.close)
        self._storage(os.replace, self.partial, self.path)


def classify(paths, transform, forward, names, topk=5, batch_size=32, with_logits=False, out=None):
    """Classify every image of `paths`, batch_size at a time, printing each and writing its record to `out`
    (a JsonLines); returns (images classified, unreadable)."""
    done = failed = 0
    paths = iter(paths)
    while True:
        chunk = list(itertools.islice(paths, batch_size))
        if not chunk:
            return done, failed
        records, images = [], []
        for path in chunk:
            try:
                images.append(transform(path))
                records.append({"path": path})
            except BadImage as e:
                print(f"cannot read image {shown(path)}: {e.reason}", file=sys.stderr, flush=True)
                records.append({"path": path, "error": e.reason})
        logits = iter(forward(np.stack(images)) if images else ())
        for i, record in enumerate(records):
            if "error" in record:
                failed += 1
                continue
            records[i] = prediction(record["path"], next(logits), names, topk, with_logits)
            print_prediction(records[i])
            done += 1
        sys.stdout.flush()
        if out:
            out.write(records)
