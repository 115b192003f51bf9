"""Convert an official PyTorch T2T-ViT checkpoint (e.g. 71.7_T2T_ViT_7.pth.tar) to Paddle weights.

    python tools/convert_weights.py --src 71.7_T2T_ViT_7.pth.tar --dst weights/t2t_vit_7.pdparams \
        --model t2t_vit_7 [--img-size 224 | HxW | H W] [--num-classes 1000]

Names are identical in both frameworks; only Linear weights change layout ([out, in] -> [in, out]).
The result is checked key by key against the Paddle model and re-loaded strictly before it is kept.
torch is needed by this tool alone: pip install -r requirements-convert.txt
"""
import argparse
import os
import sys

import numpy as np
import paddle

from t2tvit.checkpoint import atomic_save, match_state_dict
from t2tvit.errors import UserError, cli
from t2tvit.sizes import parse_size
from t2tvit.t2t import create_model, linear_weight_names

STATE_KEYS = ("state_dict_ema", "state_dict", "model")


def read_torch_state_dict(path):
    try:
        import torch
    except ImportError:
        raise UserError("converting PyTorch checkpoints needs torch: pip install -r requirements-convert.txt "
                        "(the CPU wheel is enough; training and inference never need it)") from None
    if not os.path.isfile(path):
        raise UserError(f"--src: no such file: {path}")
    try:
        # weights_only: a checkpoint from the internet must not be able to run code when unpickled.
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        # torch's own text for this case advises weights_only=False, which is exactly what must not be done.
        raise UserError(f"{path} is not a PyTorch checkpoint of plain tensors ({type(e).__name__}); "
                        "refusing to unpickle anything else") from None
    if isinstance(obj, dict):
        for key in STATE_KEYS:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{path} holds no state dict (looked for {', '.join(STATE_KEYS)} or a bare dict of tensors)")
    return {k[len("module."):] if k.startswith("module.") else k: v.detach().float().numpy() for k, v in obj.items()}


def convert(src, dst, model_name, img_size=224, num_classes=1000):
    """Write Paddle weights for `model_name` at dst; returns the list of notes (regenerated/dropped keys)."""
    model = create_model(model_name, img_size=img_size, num_classes=num_classes)
    state = read_torch_state_dict(src)
    transposed = set(linear_weight_names(model))
    state = {k: np.ascontiguousarray(v.T) if k in transposed else v for k, v in state.items()}
    head = state.get("head.weight")
    drop_head = head is not None and head.shape[1] != num_classes
    state, notes = match_state_dict(model, state, src, drop_head=drop_head)
    model.set_state_dict(state)
    atomic_save(model.state_dict(), dst)
    # Prove the file loads strictly into a freshly built model before reporting success.
    fresh = create_model(model_name, img_size=img_size, num_classes=num_classes)
    match_state_dict(fresh, paddle.load(dst), dst)
    return notes


@cli
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", required=True, help="official .pth / .pth.tar file")
    ap.add_argument("--dst", required=True, help="output .pdparams file")
    ap.add_argument("--model", required=True, help="model name, e.g. t2t_vit_7")
    ap.add_argument("--img-size", nargs="+", default=["224"], metavar="S",
                    help="target size: S, HxW or H W (multiples of 16); re-makes the position table for it")
    ap.add_argument("--num-classes", type=int, default=1000,
                    help="classes of the target model; another count drops the 1000-class head (fine-tuning)")
    args = ap.parse_args(argv)
    args.img_size = parse_size(args.img_size)
    notes = convert(args.src, args.dst, args.model, args.img_size, args.num_classes)
    for note in notes:
        print(f"note: {note}")
    print(f"wrote {args.dst} ({args.model}, img_size {'x'.join(map(str, args.img_size))}, {args.num_classes} classes)")


if __name__ == "__main__":
    sys.exit(main())
