"""Classifying images with any forward function: finding image files, batching, records, JSON lines.

Used by tools/predict.py with a dynamic model or a deployment backend; the records are the JSONL lines:
{"path", "class_id", "class_name", "topk": [[id, name, prob], ...]} (+ "logits"), or {"path", "error"}.
"""
import itertools
import json
import os
import sys

import numpy as np

from .dataset import IMG_EXTENSIONS
from .decode import BadImage
from .errors import UserError


def image_paths(paths):
    """The image files named by `paths` (files as given; folders recursively, sorted), lazily."""
    for path in paths:
        if not os.path.exists(path):
            raise UserError(f"image not found: {path}")
    for path in paths:
        if not os.path.isdir(path):
            yield path
            continue
        found = False
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                if name.lower().endswith(IMG_EXTENSIONS):
                    found = True
                    yield os.path.join(root, name)
        if not found:
            print(f"warning: no images ({', '.join(IMG_EXTENSIONS)}) under {path}", file=sys.stderr)


def softmax(logits):
    z = np.exp(logits.astype(np.float64) - logits.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def prediction(path, logits, names, topk, with_logits=False):
    """The JSONL record of one image: path, class_id, class_name, topk [[id, name, prob], ...] (+ logits)."""
    name = lambda c: names[c] if c < len(names) else "?"
    probs = softmax(logits)
    top = np.argsort(-probs, kind="stable")[:min(topk, len(probs))]
    record = {"path": path, "class_id": int(top[0]), "class_name": name(top[0]),
              "topk": [[int(c), name(c), float(probs[c])] for c in top]}
    if with_logits:
        record["logits"] = [float(v) for v in logits]
    return record


def print_prediction(record):
    """The original repo's `class_id is: N` line, then the class name and the top-k probabilities."""
    print(record["path"])
    print(f"class_id is: {record['class_id']}")
    print(f"class name: {record['class_name']}")
    print(f"top-{len(record['topk'])}: " + ", ".join(f"{c} {n} ({p:.4f})" for c, n, p in record["topk"]))


class JsonLines:
    """FILE.jsonl written as FILE.jsonl.partial, a flushed line at a time, renamed to FILE.jsonl at the end."""

    def __init__(self, path):
        self.path, self.partial = path, path + ".partial"
        try:
            self.file = open(self.partial, "w")
        except OSError as e:
            raise UserError(f"--output {path}: cannot write {self.partial}: {e.strerror}") from None

    def write(self, records):
        for record in records:
            self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def finish(self):
        self.file.close()
        os.replace(self.partial, self.path)


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
                print(f"cannot read image {path}: {e.reason}", file=sys.stderr, flush=True)
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
