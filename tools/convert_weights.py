"""Convert an official PyTorch T2T-ViT checkpoint (e.g. 71.7_T2T_ViT_7.pth.tar) to Paddle weights.

    python tools/convert_weights.py --src 71.7_T2T_ViT_7.pth.tar --dst weights/t2t_vit_7.safetensors \
        --model t2t_vit_7 [--img-size 224 | HxW | H W] [--num-classes 1000] [--sha256 HEX]

Names are identical in both frameworks; only Linear weights change layout ([out, in] -> [in, out]).
The result is checked key by key against the Paddle model and re-loaded strictly before it is kept.
--dst X.safetensors writes the format to publish (nothing in it can run code); X.pdparams a Paddle pickle.
--src may also be a full checkpoint of the official main.py (its `args` is an argparse.Namespace).
torch is needed by this tool alone: pip install -r requirements-convert.txt
"""
import t2tvit.cpu_env  # noqa: F401  (first: sets CPU threads before Paddle loads)
from t2tvit.preempt import exit_on_signals, hold_signals

# run as a command: until main(), a signal while torch and Paddle load waits, then is one line (not a traceback)
if __name__ == "__main__":
    hold_signals()
import argparse
import hashlib
import io
import os
import sys

import numpy as np
import paddle

from t2tvit import atomic
from t2tvit.checkpoint import HashingReader, check_sha256, load_file, match_state_dict, open_weights
from t2tvit.errors import UserError, cli, shown
from t2tvit.lockfile import OutputLock
from t2tvit.quiet import add_verbose_flag
from t2tvit.sizes import parse_size
from t2tvit.t2t import create_model, linear_weight_names

STATE_KEYS = ("state_dict_ema", "state_dict", "model")


def read_torch_state_dict(path, sha256=None):
    try:
        import torch
    except ImportError:
        raise UserError("converting PyTorch checkpoints needs torch: pip install -r requirements-convert.txt "
                        "(the CPU wheel is enough; training and inference never need it)") from None
    with open_weights(path, "--src") as f:  # read once: the digest is that of the very bytes unpickled
        reader = HashingReader(f)
        data = io.BytesIO(reader.read())
        if sha256:
            check_sha256(reader, path, sha256)
    try:
        # weights_only: a checkpoint from the internet must not be able to run code when unpickled. The one
        # class beyond tensors and plain types allowed is argparse.Namespace: the official main.py (timm's
        # CheckpointSaver) stores its command line as `args` in every full checkpoint.
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(data, map_location="cpu", weights_only=True)
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


def encode(state, dst):
    """The bytes of weights file dst for {name: paddle tensor}: safetensors by its suffix, else paddle.save's."""
    if dst.endswith(".safetensors"):
        from safetensors.numpy import save
        return save({k: np.ascontiguousarray(v.numpy()) for k, v in state.items()})
    buf = io.BytesIO()
    paddle.save(state, buf)
    return buf.getvalue()


def write_file(data, dst):
    """dst := data through atomic.py's exclusive temporary: whole or untouched; an OSError is one UserError line.
    DST.lock keeps a second converter off dst; holding it, the temporaries of a killed one are removed."""
    try:
        os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
        lock = OutputLock(dst, f"--dst {shown(dst)}")
        try:
            for path in atomic.remove_stale_temporaries(dst):
                print(f"note: removed {shown(path)}, left by a conversion that was killed", file=sys.stderr)
            atomic.write_bytes(dst, data)
        finally:
            lock.release()
    except OSError as e:
        raise UserError(f"cannot write {dst}: {e.strerror or e}") from None


def convert(src, dst, model_name, img_size=224, num_classes=1000, sha256=None):
    """Write Paddle weights for `model_name` at dst; returns (notes on regenerated/dropped keys, dst's sha256)."""
    model = create_model(model_name, img_size=img_size, num_classes=num_classes)
    state = read_torch_state_dict(src, sha256)
    transposed = set(linear_weight_names(model))
    state = {k: np.ascontiguousarray(v.T) if k in transposed else v for k, v in state.items()}
    head = state.get("head.weight")
    drop_head = head is not None and head.shape[1] != num_classes
    state, notes = match_state_dict(model, state, src, drop_head=drop_head)
    model.set_state_dict(state)
    data = encode(model.state_dict(), dst)
    write_file(data, dst)
    # Prove the file loads strictly into a freshly built model before reporting success.
    fresh = create_model(model_name, img_size=img_size, num_classes=num_classes)
    match_state_dict(fresh, load_file(dst), dst)
    return notes, hashlib.sha256(data).hexdigest()


@cli
@exit_on_signals()
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_verbose_flag(ap)
    ap.add_argument("--src", required=True, help="official .pth / .pth.tar file")
    ap.add_argument("--dst", required=True, help="output .safetensors (to publish) or .pdparams file")
    ap.add_argument("--model", required=True, help="model name, e.g. t2t_vit_7")
    ap.add_argument("--img-size", nargs="+", default=["224"], metavar="S",
                    help="target size: S, HxW or H W (multiples of 16); re-makes the position table for it")
    ap.add_argument("--num-classes", type=int, default=1000,
                    help="classes of the target model; another count drops the 1000-class head (fine-tuning)")
    ap.add_argument("--sha256", default="", help="hex sha256 --src must have (refused otherwise)")
    args = ap.parse_args(argv)
    args.img_size = parse_size(args.img_size)
    notes, digest = convert(args.src, args.dst, args.model, args.img_size, args.num_classes, args.sha256)
    for note in notes:
        print(f"note: {note}")
    print(f"wrote {args.dst} ({args.model}, img_size {'x'.join(map(str, args.img_size))}, {args.num_classes} classes), "
          f"sha256 {digest}")


if __name__ == "__main__":
    sys.exit(main())
