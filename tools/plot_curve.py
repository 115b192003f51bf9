"""Draw a training run's learning curve from its metrics file (log_dir/metrics.jsonl, written by tools/train.py).

    python tools/plot_curve.py log/fashion_mnist [--out log/fashion_mnist/curve.png]
    python tools/plot_curve.py log/run_a log/run_b --label A --label B --out compare.png

Each argument may be a run's log folder, its metrics.jsonl, or its train.log (the metrics file beside it is
read). One run: left, the training loss of every log line, at its fractional epoch; right, validation top-1 of
the model and of its EMA after each validated epoch, with the training accuracy of the log lines behind them.
Several runs: their validation top-1 against epoch in one chart (model solid, EMA dashed), named by --label
(default: the log folder's name). A resumed run appends to the same file and may repeat steps; the last value
logged for a step wins.
"""
import t2tvit.cpu_env  # noqa: F401  (first: sets CPU threads before Paddle loads)
import argparse
import datetime
import os
import sys

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402

from t2tvit import errors  # noqa: E402
from t2tvit.quiet import add_verbose_flag  # noqa: E402
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


def save(fig, out):
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


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
    save(fig, out)


def compare(runs, out, title):
    """runs: [(label, curves)]; their validation top-1 against epoch in one chart."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (label, curves), color in zip(runs, plt.rcParams["axes.prop_cycle"].by_key()["color"] * len(runs)):
        for which, style in (("model", "o-"), ("ema", "s--")):
            points = sorted(curves[which].items())
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], style, color=color, ms=4,
                        label=f"{label} ({which}), last {points[-1][1]:.4f}")
    ax.set(xlabel="epoch", ylabel="val top-1", title=title, ylim=(0, 1))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    save(fig, out)


def read_curves(log):
    """(metrics file, curves) of a run's log folder, metrics.jsonl or train.log; UserError if it is none."""
    path = metrics_path(log)
    try:
        curves = curves_of(read_metrics(path))
    except OSError as e:
        raise errors.UserError(f"cannot read {path}: {e.strerror}") from None
    except (ValueError, KeyError, TypeError) as e:
        raise errors.UserError(f"{path} is not a metrics file of tools/train.py ({type(e).__name__}: {e})") from None
    if not curves["train"]:
        raise errors.UserError(f"{path} has no training records")
    return path, curves


def summary(curves):
    last = {w: sorted(curves[w].items())[-1] for w in ("model", "ema") if curves[w]}
    return ", ".join(f"val top-1 ({w}) {v:.4f} at epoch {e}" for w, (e, v) in last.items())


@errors.cli
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_verbose_flag(ap)
    ap.add_argument("log", nargs="+", help="a run's log folder (Global.log_dir), its metrics.jsonl or its "
                                           "train.log; several runs are compared in one chart")
    ap.add_argument("--label", action="append", default=[],
                    help="a run's name in the chart, once per run in order (default: its log folder's name)")
    ap.add_argument("--out", default="", help="PNG to write (default: curve.png in the log folder; "
                                              "required for several runs)")
    ap.add_argument("--title", default="", help="figure title (default: the log folder's name)")
    args = ap.parse_args(argv)
    if args.label and len(args.label) != len(args.log):
        raise errors.UserError(f"--label: {len(args.label)} labels for {len(args.log)} runs (one per run)")
    if len(args.log) > 1 and not args.out:
        raise errors.UserError("--out: several runs make one chart; name the PNG to write")
    runs = [read_curves(log) for log in args.log]
    folders = [os.path.dirname(os.path.abspath(path)) for path, _ in runs]
    labels = args.label or [os.path.basename(f) for f in folders]
    if len(runs) > 1:
        compare([(label, curves) for label, (_, curves) in zip(labels, runs)], args.out,
                args.title or " vs ".join(labels))
        print(f"wrote {args.out}: " + "; ".join(f"{label}: {summary(curves) or 'no validation'}"
                                                for label, (_, curves) in zip(labels, runs)))
        return
    [(path, curves)] = runs
    out = args.out or os.path.join(folders[0], "curve.png")
    plot(curves, out, args.title or labels[0])
    span = curves["times"][-1] - curves["times"][0] if curves["times"] else "?"
    last = summary(curves)
    print(f"wrote {out}: {max(e for e, _ in curves['train'])} epochs, {span} from first to last record"
          + (f", {last}" if last else ""))


if __name__ == "__main__":
    sys.exit(main())
