"""inference.yml: what an export is and how to feed it, written beside the model files, read back checked.

An export stands alone: with inference.yml, predict.py --inference-dir needs no config, dataset or training
folder. The layout is PaddleClas's (its deploy configs and exported inference.yml) where a field maps, with the
fields PaddleClas has no name for beside them:

    Global:
      model_name: t2t_vit_7            # the variant
      input: x                         # the graph's input: [N, 3, H, W] float32
      img_size: 224                    # S, or [H, W]
      num_classes: 1000
      weights: best.pdckpt             # the file exported (its name), its sha256, model or EMA, epoch
      weights_sha256: 0123...
      weights_which: ema
      epoch: 300
    PreProcess:
      transform_ops:                   # the eval transform exactly: transforms.EvalTransform
      - ResizeImage: {resize_short: 248, interpolation: bicubic, backend: pil, crop_pct: 0.9, long_side: floor}
      - CropImage: {size: 224, offset_rounding: half_up}
      - NormalizeImage: {scale: 0.00392156862745098, mean: [...], std: [...], order: hwc, channel_num: 3}
      - ToCHWImage: null
    PostProcess:
      Topk: {topk: 5, label_list: [tench, goldfish, ...]}

A non-square [H, W] export resizes to `size: [int(W / crop_pct), int(H / crop_pct)]` instead of resize_short and
crops `size: [W, H]` (PaddleClas's [width, height] order). Where our arithmetic is not PaddleClas's it is said:
`long_side: floor` (torchvision truncates the long side, PaddleClas rounds it) and `offset_rounding` (the
crop's offset: half_up, torchvision 0.8's, or half_even; PaddleClas floors). The file is read through the
config's budgeted YAML loader (an alias bomb, a list or a syntax error is one line) and checked field by field:
the values by config/default.yaml's rules, resize_short against crop_pct, label_list against num_classes.
"""
import os

from . import artifact
from .config import SCHEMA_PATH, load_config, read_yaml
from .errors import UserError, shown
from .sizes import image_hw
from .transforms import EvalTransform

META_FILE = "inference.yml"
INPUT_NAME = "x"
TOPK = 5
SCALE = 1 / 255


def _wh(hw):
    """PaddleClas's [width, height] of (H, W); one integer for a square."""
    h, w = hw
    return h if h == w else [w, h]


def description(model, cfg=None, art=None, class_names=None):
    """The inference.yml mapping of `model` (its arch_name, img_size, num_classes), the config's eval
    preprocessing (default: config/default.yaml's), its class names (default: `art`'s) and the weights it was
    exported from (`art`, an artifact.Artifact, or None)."""
    d = (cfg or load_config(SCHEMA_PATH)).Data
    hw = tuple(model.img_size)
    resize = EvalTransform(hw, d.crop_pct).resize_to
    resized = {"resize_short": resize} if isinstance(resize, int) else {"size": [resize[1], resize[0]]}
    names = class_names or (art.class_names if art is not None else None)
    return {
        "Global": {"model_name": model.arch_name, "input": INPUT_NAME, "img_size": hw[0] if hw[0] == hw[1] else
                   list(hw), "num_classes": model.num_classes,
                   "weights": os.path.basename(art.path) if art is not None else None,
                   "weights_sha256": art.sha256 if art is not None else None,
                   "weights_which": art.which if art is not None else None,
                   "epoch": art.epoch if art is not None else None},
        "PreProcess": {"transform_ops": [
            {"ResizeImage": {**resized, "interpolation": d.interpolation, "backend": "pil",
                             "crop_pct": d.crop_pct, "long_side": "floor"}},
            {"CropImage": {"size": _wh(hw), "offset_rounding": d.crop_rounding}},
            {"NormalizeImage": {"scale": SCALE, "mean": list(d.mean), "std": list(d.std), "order": "hwc",
                                "channel_num": 3}},
            {"ToCHWImage": None}]},
        "PostProcess": {"Topk": {"topk": min(TOPK, model.num_classes), "label_list": list(names or [])}},
    }


def read(model_dir):
    """The export in model_dir as an artifact.Artifact (kind 'export', path model_dir), with .input_name."""
    if not os.path.isdir(model_dir):
        raise UserError(f"inference model directory not found: {shown(model_dir)}")
    path = os.path.join(model_dir, META_FILE)
    if not os.path.lexists(path):
        raise UserError(f"{shown(model_dir)} holds no exported model ({META_FILE} is missing); write one with "
                        "tools/export_model.py")
    meta = read_yaml(path, what="model description")
    return _checked(meta, model_dir, shown(path))


class _Fields:
    """Typed access to one mapping of inference.yml: each problem is one UserError naming the field."""

    def __init__(self, mapping, where):
        if not isinstance(mapping, dict):
            raise UserError(f"{where}: expected a mapping, got {type(mapping).__name__}")
        self.mapping, self.where = mapping, where

    def get(self, key, kinds, optional=False):
        if key not in self.mapping or self.mapping[key] is None:
            if optional:
                return None
            raise UserError(f"{self.where}: {key} is missing")
        value = self.mapping[key]
        if not isinstance(value, kinds) or isinstance(value, bool) and bool not in kinds:
            raise UserError(f"{self.where}: {key} {value!r} is not {' or '.join(k.__name__ for k in kinds)}")
        return value


def _checked(meta, model_dir, where):
    top = _Fields(meta, where)
    if "Global" not in meta and {"model", "input", "img_size"} <= set(meta):
        raise UserError(f"{where} was written by an earlier export_model.py (no preprocessing, no class names): "
                        "export the weights again")
    g = _Fields(top.get("Global", (dict,)), f"{where}: Global")
    ops = _Fields(top.get("PreProcess", (dict,)), f"{where}: PreProcess").get("transform_ops", (list,))
    names = ["ResizeImage", "CropImage", "NormalizeImage", "ToCHWImage"]
    if [next(iter(op)) if isinstance(op, dict) and len(op) == 1 else op for op in ops] != names:
        raise UserError(f"{where}: PreProcess.transform_ops must be {', '.join(names)} in this order (the eval "
                        "transform this repo exports)")
    resize, crop, norm = (_Fields(op[name], f"{where}: {name}") for op, name in zip(ops, names[:3]))
    topk = _Fields(_Fields(top.get("PostProcess", (dict,)), f"{where}: PostProcess").get("Topk", (dict,)),
                   f"{where}: PostProcess.Topk")
    if resize.get("backend", (str,)) != "pil" or resize.get("long_side", (str,)) != "floor" or \
            norm.get("order", (str,)) != "hwc" or norm.get("channel_num", (int,)) != 3:
        raise UserError(f"{where}: only backend pil, long_side floor, order hwc and channel_num 3 are what this "
                        "repo's eval transform does")
    settings = artifact.checked({
        "Global.model": g.get("model_name", (str,)), "Global.img_size": g.get("img_size", (int, list)),
        "Global.num_classes": g.get("num_classes", (int,)), "Data.crop_pct": resize.get("crop_pct", (float, int)),
        "Data.interpolation": resize.get("interpolation", (str,)),
        "Data.crop_rounding": crop.get("offset_rounding", (str,)), "Data.mean": norm.get("mean", (list,)),
        "Data.std": norm.get("std", (list,))}, where)
    hw = image_hw(settings["Global.img_size"])
    resize_to = EvalTransform(hw, settings["Data.crop_pct"]).resize_to
    stated = resize.mapping.get("resize_short") if isinstance(resize_to, int) else resize.mapping.get("size")
    expected = resize_to if isinstance(resize_to, int) else [resize_to[1], resize_to[0]]
    if stated != expected or crop.mapping.get("size") != _wh(hw):
        raise UserError(f"{where}: ResizeImage / CropImage do not match img_size {settings['Global.img_size']} "
                        f"and crop_pct {settings['Data.crop_pct']} (resize {expected!r}, crop {_wh(hw)!r} expected)")
    scale = norm.get("scale", (float,))
    if abs(scale - SCALE) > 1e-12:
        raise UserError(f"{where}: NormalizeImage.scale {scale!r} is not 1/255")
    labels = topk.get("label_list", (list,), optional=True) or None
    sha = g.get("weights_sha256", (str,), optional=True)
    if sha is not None and (len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha)):
        raise UserError(f"{where}: Global.weights_sha256 {sha!r} is not a sha256 (64 hex digits)")
    which = g.get("weights_which", (str,), optional=True)
    if which not in (None, "model", "ema", "weights"):
        raise UserError(f"{where}: Global.weights_which {which!r} is not model, ema or weights")
    epoch = g.get("epoch", (int,), optional=True)
    art = artifact.Artifact(model_dir, "export", sha, which or "export", settings,
                            artifact.class_list(labels, settings["Global.num_classes"],
                                                f"{where}: PostProcess.Topk.label_list"),
                            epoch if epoch is None or epoch >= 0 else None)
    art.input_name = g.get("input", (str,))
    art.exported_from = g.get("weights", (str,), optional=True)
    return art
