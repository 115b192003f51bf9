"""Draw where T2T-ViT looks: the class token's attention rollout, the last block's heads, a T2T layer's query.

    python tools/visualize.py IMAGE [--weights FILE] [-c CONFIG] [-o Key=Value ...] --out X.png [--position Y X]

A checkpoint's own model, size and preprocessing are used (a -c / -o that says otherwise is an error;
--img-size draws at another size); without --weights, the config's model with random initial weights.

Writes, each drawn over the image as the model sees it (the validation crop, Global.img_size):
  X.png        the class token's attention rollout (Abnar & Zuidema 2020) on the H/16 x W/16 patch grid;
  X.heads.png  the last block's class-token attention, one panel per head;
  X.t2t.png    the implied Performer attention of the query at --position (pixels; default: the centre) in
               each T2T layer, on its H/4 x W/4 and H/8 x W/8 grid (the query marked). Transformer T2T
               variants have no Performer layer: their panel strip is not written.
The maps come from t2tvit.attention_maps (recomputed from the layers' inputs; the forward is unchanged).
"""
import t2tvit.cpu_env  # noqa: F401  (first: sets CPU threads before Paddle loads)
import argparse
import sys

import numpy as np
from PIL import Image, ImageDraw

from t2tvit import atomic
from t2tvit.attention_maps import attention_maps
from t2tvit.decode import BadImage
from t2tvit.errors import StorageError, UserError, cli, shown
from t2tvit.quiet import add_verbose_flag
from t2tvit.t2t import create_model
from t2tvit.tool_config import add_weights_args, config_for, load_model
from t2tvit.transforms import build_transform


def overlay(pixels, grid_map, alpha=0.5):
    """The image (uint8 HWC) with `grid_map` scaled to [0, 1], upsampled (bilinear) and coloured over it."""
    from matplotlib import colormaps

    h, w = pixels.shape[:2]
    m = grid_map - grid_map.min()
    m = m / m.max() if m.max() > 0 else m
    up = np.asarray(Image.fromarray((m * 255).astype(np.uint8)).resize((w, h), Image.Resampling.BILINEAR))
    heat = (colormaps["jet"](up / 255.0)[..., :3] * 255).astype(np.uint8)
    return Image.blend(Image.fromarray(pixels), Image.fromarray(heat), alpha)


def save_png(img, path):
    """Write `img` to path whole or not at all (atomic.py: a temporary beside it, renamed; the folder is made)."""
    try:
        with atomic.replacing(path) as tmp:
            img.save(tmp, format="PNG")
    except OSError as e:
        raise StorageError(path, e) from None


def strip(panels):
    out = Image.new("RGB", (sum(p.width for p in panels), panels[0].height))
    for i, p in enumerate(panels):
        out.paste(p, (i * p.width, 0))
    return out


@cli
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("image", help="an image file")
    add_verbose_flag(add_weights_args(ap, default="random initial weights (they only show the mechanics)"))
    ap.add_argument("--out", required=True, help="PNG path; .heads.png and .t2t.png are written beside it")
    ap.add_argument("--position", nargs=2, type=int, metavar=("Y", "X"), help="T2T query, pixels in the crop")
    args = ap.parse_args(argv)
    if not args.out.endswith(".png"):
        raise UserError(f"--out {args.out}: give a .png path")
    if args.weights:
        cfg, model, art, notes = load_model(args)
        names = art.class_names
        for line in [art.loaded_line()] + [f"note: {note}" for note in notes]:
            print(line, file=sys.stderr)
    else:
        cfg, _ = config_for(args, None)
        model = create_model(cfg.Global.model, img_size=cfg.Global.img_size, num_classes=cfg.Global.num_classes)
        names = None
        print("note: no --weights: the maps are those of randomly initialised weights", file=sys.stderr)
    transform = build_transform(cfg, "val")
    try:
        pixels = transform.pixels(args.image).transpose(1, 2, 0)
    except BadImage as e:
        raise UserError(f"cannot read image {shown(e.path)}: {e.reason}") from None
    h, w = model.img_size
    if args.position and not (0 <= args.position[0] < h and 0 <= args.position[1] < w):
        raise UserError(f"--position {args.position[0]} {args.position[1]} is outside the {h}x{w} crop")
    maps = attention_maps(model, transform.normalize(pixels.transpose(2, 0, 1))[None], args.position)
    base = args.out[:-len(".png")]
    save_png(overlay(pixels, maps["rollout_cls"][0]), args.out)
    save_png(strip([overlay(pixels, m) for m in maps["last_heads"][0]]), base + ".heads.png")
    if maps["t2t"]:
        y, x = args.position or (h // 2, w // 2)
        panels = []
        for _, m in maps["t2t"]:
            panel = overlay(pixels, m[0])
            ImageDraw.Draw(panel).ellipse((x - 2, y - 2, x + 2, y + 2), outline=(255, 255, 255))
            panels.append(panel)
        save_png(strip(panels), base + ".t2t.png")
    top = int(np.argmax(maps["logits"][0]))
    name = f" {shown(names[top])}" if names else ""
    print(f"wrote {args.out}, {base}.heads.png" + (f", {base}.t2t.png" if maps["t2t"] else "")
          + f" (top-1 class {top}{name})")


if __name__ == "__main__":
    sys.exit(main())
