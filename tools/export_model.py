"""Export a trained or converted T2T-ViT as a Paddle Inference model with a dynamic batch dimension.

    python tools/export_model.py -c CONFIG --weights FILE --out DIR [-o Section.key=value ...]

Writes DIR/inference.json (Paddle 3.x) or DIR/inference.pdmodel (Paddle 2.6) and DIR/inference.pdiparams,
for tools/infer.py, `tools/predict.py --inference-dir DIR` or any Paddle Inference runtime. Input `x`:
[N, 3, S, S] float32 normalised with Data.mean / Data.std, S = Global.img_size; output: [N, num_classes]
logits. Before anything is written to DIR, the exported graph is run and must give the dynamic model's
logits within 1e-4.
"""
import cpu_env  # noqa: F401  (first: sets CPU threads before Paddle loads)
import argparse
import os
import shutil
import sys

import numpy as np
import paddle
import yaml

from checkpoint import load_weights
from config import add_config_args, config_from_args
from errors import UserError, cli
from infer import META_FILE, MODEL_FILES, PREFIX, Predictor
from t2t import create_model

INPUT_NAME = "x"
CHECK_TOL = 1e-4


def export(model, img_size, out_dir):
    """Trace `model` (in eval mode) for [N, 3, img_size, img_size] inputs and save it under out_dir."""
    spec = [paddle.static.InputSpec([None, 3, img_size, img_size], "float32", INPUT_NAME)]
    # full_graph: one whole static program (Paddle 3.x would otherwise trace through SOT with fallbacks).
    static = paddle.jit.to_static(model, input_spec=spec, full_graph=True)
    paddle.jit.save(static, os.path.join(out_dir, PREFIX))
    meta = {"model": model.arch_name, "input": INPUT_NAME, "img_size": img_size, "num_classes": model.num_classes}
    with open(os.path.join(out_dir, META_FILE), "w") as f:
        yaml.safe_dump(meta, f, sort_keys=False)


def check_export(model, model_dir, img_size, batch=2):
    """Max |logits difference| between the exported model and `model` on a random batch."""
    x = np.random.RandomState(0).standard_normal((batch, 3, img_size, img_size)).astype("float32")
    with paddle.no_grad():
        expected = model(paddle.to_tensor(x)).numpy()
    return float(np.abs(Predictor(model_dir, threads=1)(x) - expected).max())


def replace_files(src_dir, dst_dir):
    """Move every file of src_dir into dst_dir, dropping a model file of the other Paddle format there."""
    os.makedirs(dst_dir, exist_ok=True)
    for name in MODEL_FILES:
        stale = os.path.join(dst_dir, name)
        if os.path.exists(stale) and not os.path.exists(os.path.join(src_dir, name)):
            os.remove(stale)
    for name in os.listdir(src_dir):
        os.replace(os.path.join(src_dir, name), os.path.join(dst_dir, name))


@cli
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_config_args(ap)
    ap.add_argument("--weights", required=True, help=".pdckpt checkpoint (its EMA or model weights, whichever "
                                                     "validated better) or .pdparams weights")
    ap.add_argument("--out", required=True, help="output directory")
    args = ap.parse_args(argv)
    cfg = config_from_args(args)
    g = cfg.Global
    paddle.set_device("cpu")
    model = create_model(g.model, img_size=g.img_size, num_classes=g.num_classes)
    which, notes = load_weights(model, args.weights)
    for note in notes:
        print(f"note: {note}")
    model.eval()
    out = os.path.abspath(args.out)
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"--out {args.out} exists and is not a directory")
    tmp = f"{out}.tmp{os.getpid()}"
    try:
        export(model, g.img_size, tmp)
        diff = check_export(model, tmp, g.img_size)
        if not diff <= CHECK_TOL:
            raise RuntimeError(f"the exported model's logits differ from the dynamic model's by {diff:.3g} "
                               f"(> {CHECK_TOL}): a Paddle Inference fault on this Paddle version and CPU")
        replace_files(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    files = ", ".join(sorted(os.listdir(out)))
    source = args.weights if which == "weights" else f"{which} weights of {args.weights}"
    print(f"exported {g.model} ({source}) for [N, 3, {g.img_size}, {g.img_size}] inputs to {out}: {files}; "
          f"max |logits - dynamic logits| = {diff:.2g}")


if __name__ == "__main__":
    sys.exit(main())
