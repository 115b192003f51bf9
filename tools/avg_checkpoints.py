"""Average the weights of a run's checkpoints (timm's avg_checkpoints.py): the last N, or the N best.

    python tools/avg_checkpoints.py --input output/t2t_vit_7 -n 5 [--best] [--ema] --output averaged.safetensors

--input is the run's Global.output_dir. Without --best the N newest periodic checkpoints are averaged; with --best
the N with the highest validation top-1 recorded in the run's metrics.jsonl (--metrics, default the log folder the
checkpoints name). --ema averages their EMA weights instead of the model's. The output is a weights file that
val.py, predict.py, export_model.py and t2tvit.create_model load like converted weights: .safetensors (the inputs,
their sha256 and the model in its header) or .pdparams (a plain state dict; the same record in OUTPUT.json).
Checkpoints of different models, sizes or class lists are refused in one line. See t2tvit/averaging.py.
"""
import t2tvit.cpu_env  # noqa: F401  (first: sets CPU threads before Paddle loads)
import argparse
import sys

from t2tvit import averaging
from t2tvit.checkpoint import load_file, match_state_dict
from t2tvit.errors import cli
from t2tvit.quiet import add_verbose_flag
from t2tvit.t2t import create_model


@cli
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--input", required=True, help="the run's folder of checkpoints (Global.output_dir)")
    ap.add_argument("-n", type=int, default=10, help="how many checkpoints to average (default: %(default)s)")
    ap.add_argument("--best", action="store_true", help="the N best by recorded validation top-1, not the last N")
    ap.add_argument("--ema", action="store_true", help="average the EMA weights (default: the model's)")
    ap.add_argument("--metrics", default="", help="with --best: the run's metrics.jsonl (default: its log folder's)")
    ap.add_argument("--output", required=True, help="the averaged weights: a .safetensors or .pdparams file")
    add_verbose_flag(ap)
    args = ap.parse_args(argv)
    averaging.output_format(args.output)
    which = "ema" if args.ema else "model"
    inputs = averaging.select(args.input, args.n, args.best, which, args.metrics)
    how = f"the {len(inputs)} best by validation top-1" if args.best else f"the last {len(inputs)}"
    print(f"averaging the {which} weights of {how} checkpoints of {inputs[0]['arch']}:")
    for i in inputs:
        top1 = f", val top1 {i['top1']:.4f}" if args.best else ""
        print(f"  {i['file']} (epoch {i['epoch']}, step {i['step']}{top1}), sha256 {i['sha256']}")
    state = averaging.average(inputs, which)
    meta = averaging.metadata(inputs, which, args.best)
    digest = averaging.write(args.output, state, meta)
    # the file loads, strictly, into the model it says it is, before the run says it was written
    model = create_model(inputs[0]["arch"], img_size=inputs[0]["img_size"], num_classes=len(state["head.bias"])
                         if "head.bias" in state else 0)
    match_state_dict(model, load_file(args.output), args.output)
    print(f"wrote {args.output} ({which} weights, {how}), sha256 {digest}"
          + (f"; its record in {args.output}.json" if args.output.endswith(".pdparams") else ""))


if __name__ == "__main__":
    sys.exit(main())
