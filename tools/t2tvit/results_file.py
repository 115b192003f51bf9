"""val.py --results-file F.csv | F.json: one row per evaluation, appended, so that tables are built from files.

The fields are timm's validate.py results where one maps (model, top1, top1_err, top5, top5_err in percent,
param_count in millions, img_size, crop_pct, interpolation, checkpoint), then what makes a row reproducible here:
the weights' sha256 and which of them (model / EMA), the dataset, the crop rounding, the images, the exact
parameter count and the GMACs (macs.py), and the ReaL figures of --dataset real. A row is appended by reading the
file, adding the row and writing the whole file again through atomic.py (whole or untouched), holding F.lock
(classify.OutputLock) meanwhile: two evaluations appending at once both land, each row whole. A CSV's header is the
union of its rows' fields in the order they first came; a JSON file is a list of row objects.
"""
import csv
import io
import json
import os
import time

from . import atomic
from .classify import OutputLock
from .errors import StorageError, UserError, shown
from .macs import count_macs, count_parameters

FORMATS = (".csv", ".json")
WAIT_SECONDS = 120  # for another process's append to finish: it takes milliseconds


def results_format(path):
    """'.csv' or '.json' from the file name, or one line saying what is accepted."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in FORMATS:
        raise UserError(f"--results-file {shown(path)}: name a .csv or .json file")
    return ext


def check(path):
    """results_format(path), and that a file already at path is a results file, read as append() reads it: said
    before an evaluation that may take an hour, not after it (append() checks again, holding the lock)."""
    ext = results_format(path)
    _read(path, ext)
    return ext


def row(model, weights, which, sha256, cfg, evalset, result):
    """The results row of one evaluation of the weights file `weights` (its sha256, as loaded: artifact.py;
    result: eval_sets.EvalSet.evaluate's fractions)."""
    h, w = model.img_size
    out = {"model": getattr(model, "arch_name", cfg.Global.model)}
    for key in ("top1", "top5"):
        out[key] = round(100 * result[key], 4)
        out[f"{key}_err"] = round(100 - out[key], 4)
    total = count_parameters(model)[0]
    out.update(param_count=round(total / 1e6, 2), img_size=h if h == w else f"{h}x{w}", crop_pct=cfg.Data.crop_pct,
               interpolation=cfg.Data.interpolation, checkpoint=weights, checkpoint_sha256=sha256, weights=which,
               dataset=evalset.kind, dataset_name=evalset.name, data_dir=evalset.root, images=result["images"],
               crop_rounding=cfg.Data.crop_rounding, params=total,
               gmacs=round(sum(count_macs(model, (h, w)).values()) / 1e9, 3))
    if "real_top1" in result:
        for key in ("real_top1", "real_top5"):
            out[key] = round(100 * result[key], 4)
            out[f"{key}_err"] = round(100 - out[key], 4)
        out["real_images"] = result["real_images"]
    return out


class ResultsLock(OutputLock):
    """F.lock, held while a row is appended to F (classify.OutputLock's lock file); taken by wait_for(F)."""

    class Busy(UserError):
        """Another evaluation holds the lock (for the milliseconds of its append)."""

    def refusal(self, holder):
        return self.Busy(f"{self.what} stayed locked by pid {holder['pid']} on host {holder['host']} for "
                         f"{WAIT_SECONDS} s ({shown(self.path)}); if no evaluation is writing it, remove the lock")

    @classmethod
    def wait_for(cls, path):
        """The lock of results file `path`, once another appender is done with it (at most WAIT_SECONDS)."""
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            try:
                return cls(path, f"results file {shown(path)}")
            except cls.Busy:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


def _read(path, ext):
    """The rows already in path ([] when it does not exist yet)."""
    try:
        with open(path, encoding="utf-8", newline="") as f:
            text = f.read()
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read the results file {shown(path)}: {e}") from None
    if not text.strip():
        return []
    if ext == ".csv":
        rows = list(csv.DictReader(io.StringIO(text)))
        if any(None in r or None in r.values() for r in rows):
            raise UserError(f"{shown(path)} is not a results table (its rows and header differ in length); "
                            "choose another --results-file")
        return rows
    try:
        rows = json.loads(text)
    except ValueError as e:
        raise UserError(f"{shown(path)} is not JSON ({e}); choose another --results-file") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise UserError(f"{shown(path)} is not a results file (a JSON list of rows); choose another --results-file")
    return rows


def _encode(rows, ext):
    if ext == ".json":
        return (json.dumps(rows, indent=2, allow_nan=False) + "\n").encode()
    fields = list(dict.fromkeys(k for r in rows for k in r))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode()


def append(path, new_row):
    """Add new_row to the results file at path (created if missing), under its lock, atomically."""
    ext = results_format(path)
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    except OSError as e:
        raise StorageError(os.path.dirname(os.path.abspath(path)), e) from None
    lock = ResultsLock.wait_for(path)
    try:
        rows = _read(path, ext) + [new_row]
        atomic.write_bytes(path, _encode(rows, ext))
    except OSError as e:
        raise StorageError(path, e) from None
    finally:
        lock.release()
    return len(rows)
