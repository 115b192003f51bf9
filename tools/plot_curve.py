"""Draw a training run's learning curve from its metrics file (log_dir/metrics.jsonl, written by tools/train.py).

    python tools/plot_curve.py log/fashion_mnist [--out log/fashion_mnist/curve.png]

The argument may be the run's log folder, its metrics.jsonl, or its train.log (the metrics file beside it is
read). Left: the training loss of every log line, at its fractional epoch. Right: validation top-1 of the model
and of its EMA after each validated epoch, with the training accuracy of the log lines behind them. A resumed
run appends to the same file and may repeat steps; the last value logged for a step wins.
"""
import argparse
import datetime
import os
import sys

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402

from t2tvit import errors  # noqa: E402
from t2tvit.runtime import MetricsFile, read_metrics  # noqa: E402


def curves_of(records):
    """{'train': {(epoch, step): (x, loss, acc)}, 'model'/'ema': {epoch: top1}, 'times': [datetimes]}."""
    curves = {"train": {}, "model": {}, "ema": {}}
    for r in records:
        if r["kind"] == "train":
            curves["train"][r["epoch"], r["step"]] = (r["epoch"] - 1 + r["step"] / r["steps"], r["loss"], r["acc"])
        elif r["kind"] == "val":
            curves[r["model"]][r["epoch"]] = r["top1"]
    curves["times"] = sorted(datetime.datetime.fromtimestamp(r["time"]) for r in records if "time" in r)
    return curves


def metrics_path(path):
    """The metrics.jsonl named by a log folder, the file itself, or a train.log beside it."""
    if os.path.isdir(path):
        return os.path.join(path, MetricsFile.NAME)
    if os.path.basename(path) == MetricsFile.NAME:
        return path
    return os.path.join(os.path.dirname(os.path.abspath(path)), MetricsFile.NAME)


def plot(curves, out, title):
    train = [curves["train"][k] for k in sorted(curves["train"])]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.plot([t[0] for t in train], [t[1] for t in train], color="tab:blue", lw=1.2)
    left.set(xlabel="epoch", ylabel="loss (soft-target cross-entropy)", title="training loss")
    right.plot([t[0] for t in train], [t[2] for t in train], color="0.75", lw=1, label="train (augmented batches)")
    for which, color in (("model", "tab:orange"), ("ema", "tab:green")):
        points = sorted(curves[which].items())
        if points:
            right.plot([p[0] for p in points], [p[1] for p in points], "o-", color=color, ms=4,
                       label=f"val top-1 ({which}), last {points[-1][1]:.4f}")
    right.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1))
    right.legend(loc="lower right")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


@errors.cli
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("log", help="a run's log folder (Global.log_dir), its metrics.jsonl or its train.log")
    ap.add_argument("--out", default="", help="PNG to write (default: curve.png in the log folder)")
    ap.add_argument("--title", default="", help="figure title (default: the log folder's name)")
    args = ap.parse_args(argv)
    path = metrics_path(args.log)
    try:
        curves = curves_of(read_metrics(path))
    except OSError as e:
        raise errors.UserError(f"cannot read {path}: {e.strerror}") from None
    except (ValueError, KeyError, TypeError) as e:
        raise errors.UserError(f"{path} is not a metrics file of tools/train.py ({type(e).__name__}: {e})") from None
    if not curves["train"]:
        raise errors.UserError(f"{path} has no training records")
    folder = os.path.dirname(os.path.abspath(path))
    out = args.out or os.path.join(folder, "curve.png")
    plot(curves, out, args.title or os.path.basename(folder))
    span = curves["times"][-1] - curves["times"][0] if curves["times"] else "?"
    last = {w: sorted(curves[w].items())[-1] for w in ("model", "ema") if curves[w]}
    summary = ", ".join(f"val top-1 ({w}) {v:.4f} at epoch {e}" for w, (e, v) in last.items())
    print(f"wrote {out}: {max(e for e, _ in curves['train'])} epochs, {span} from first to last record"
          + (f", {summary}" if summary else ""))


if __name__ == "__main__":
    sys.exit(main())
