"""Draw a training run's learning curve from its train.log.

    python tools/plot_curve.py log/fashion_mnist/train.log [--out log/fashion_mnist/curve.png]

Left: the training loss of every log line, at its fractional epoch. Right: validation top-1 of the model
and of its EMA after each validated epoch, with the training accuracy of the log lines behind them. A
resumed run appends to the same log and may repeat steps; the last value logged for a step wins.
"""
import argparse
import datetime
import os
import re
import sys

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402

from t2tvit import errors  # noqa: E402

STAMP = r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) "
TRAIN = re.compile(STAMP + r"Epoch \[(\d+)/(\d+)\], Step \[(\d+)/(\d+)\], Loss: ([^,]+), acc: ([^,]+),", re.M)
VAL = re.compile(STAMP + r"Epoch \[(\d+)/\d+\] val \((model|ema)\): top1 ([\d.]+)", re.M)


def parse_log(text):
    """{'train': {(epoch, step): (x, loss, acc)}, 'model'/'ema': {epoch: top1}, 'times': [datetimes]}."""
    curves = {"train": {}, "model": {}, "ema": {}}
    for _, epoch, _, step, steps, loss, acc in TRAIN.findall(text):
        e, s = int(epoch), int(step)
        curves["train"][e, s] = (e - 1 + s / int(steps), float(loss), float(acc))
    for _, epoch, which, top1 in VAL.findall(text):
        curves[which][int(epoch)] = float(top1)
    curves["times"] = sorted(datetime.datetime.strptime(t, "%Y-%m-%d %H:%M:%S")
                             for t in re.findall(STAMP, text, re.M))
    return curves


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
    ap.add_argument("log", help="a train.log written by tools/train.py")
    ap.add_argument("--out", default="", help="PNG to write (default: curve.png beside the log)")
    ap.add_argument("--title", default="", help="figure title (default: the log's folder name)")
    args = ap.parse_args(argv)
    try:
        with open(args.log, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise errors.UserError(f"cannot read {args.log}: {e.strerror}") from None
    curves = parse_log(text)
    if not curves["train"]:
        raise errors.UserError(f"{args.log} has no training log lines (`Epoch [e/E], Step [i/N], Loss: ...`)")
    folder = os.path.dirname(os.path.abspath(args.log))
    out = args.out or os.path.join(folder, "curve.png")
    plot(curves, out, args.title or os.path.basename(folder))
    span = curves["times"][-1] - curves["times"][0]
    last = {w: sorted(curves[w].items())[-1] for w in ("model", "ema") if curves[w]}
    summary = ", ".join(f"val top-1 ({w}) {v:.4f} at epoch {e}" for w, (e, v) in last.items())
    print(f"wrote {out}: {max(e for e, _ in curves['train'])} epochs, {span} from first to last log line"
          + (f", {summary}" if summary else ""))


if __name__ == "__main__":
    sys.exit(main())
