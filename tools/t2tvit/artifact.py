"""What a weights file, training checkpoint or export says it is: one Artifact, read once, used by every tool.

    state, art = read_weights(path, sha256=None, prefer="best")   # the state dict to load, and what it says
    art.settings      # {dotted config key: value} the file states: SETTINGS keys only, e.g. Global.img_size
    art.class_names   # the run's class names in label order, or None
    art.loaded_line() # 'weights: PATH (sha256 0123456789ab, epoch 3, EMA weights)'

A training checkpoint states its run's model, size, class count, eval preprocessing (from the config it
records, checked against config/default.yaml like a file) and class names; a .safetensors file may state
them in its header's metadata (SAFETENSORS_KEYS); converted official weights (.pdparams, or .safetensors
without such metadata) state nothing, so the config decides for them, as it always has. Exports describe
themselves in inference.yml (export_meta.py), read into the same Artifact. tool_config.py decides what a tool
runs under when a config and an artifact both speak.
"""
import json
import os
import struct

from . import checkpoint
from .config import config_from_data
from .errors import UserError, shown

# The settings that make weights what they are: a tool takes them from the file, and a config that says
# otherwise is refused (tool_config.py). EVAL_KEYS is the eval preprocessing the weights were judged with.
EVAL_KEYS = ("Data.crop_pct", "Data.interpolation", "Data.crop_rounding", "Data.mean", "Data.std")
SETTINGS = ("Global.model", "Global.img_size", "Global.num_classes") + EVAL_KEYS
# A .safetensors header's __metadata__ (string -> string) may state: each SETTINGS key under its own name, and
# "class_names", every value JSON-encoded (a bare word is taken as a string).
SAFETENSORS_KEYS = SETTINGS + ("class_names",)
SAFETENSORS_MAX_HEADER = 100 << 20  # the format's own limit on its JSON header
SHA_SHOWN = 12  # hex digits of the sha256 in the `weights:` line


class Artifact:
    """What a file says it is (settings, class names) and which weights of it are used (path, sha256, which,
    epoch, step). kind: 'checkpoint', 'weights' or 'export'."""

    def __init__(self, path, kind, sha256=None, which="weights", settings=None, class_names=None, epoch=None,
                 step=None, config=None):
        self.path, self.kind, self.sha256, self.which = path, kind, sha256, which
        self.settings = dict(settings or {})
        self.class_names = class_names
        self.epoch, self.step = epoch, step
        self.config = config  # a checkpoint's whole recorded config (a dict), else None
        self.exported_from = None  # an export: the name of the weights file it was made from

    @property
    def says_anything(self):
        return bool(self.settings)

    def describe(self):
        """'PATH (sha256 0123..., epoch 3, EMA weights)': which weights these are."""
        parts = [f"exported from {shown(self.exported_from)}"] if self.exported_from else []
        parts += [f"sha256 {self.sha256[:SHA_SHOWN]}"] if self.sha256 else []
        if self.epoch is not None:
            parts.append(f"epoch {self.epoch}" if not self.step else f"epoch {self.epoch + 1} at step {self.step}")
        parts.append({"model": "model weights", "ema": "EMA weights", "weights": "weights",
                      "export": "exported model"}.get(self.which, self.which))
        if self.kind == "weights" and not self.says_anything:
            parts.append("no metadata: the config decides model, size and classes")
        return f"{shown(self.path)} ({', '.join(parts)})"

    def loaded_line(self):
        return f"weights: {self.describe()}"


def file_sha256(path):
    try:
        with open(path, "rb") as f:
            return checkpoint.sha256_of(f)
    except OSError as e:
        raise UserError(f"cannot read {shown(path)}: {e.strerror or e}") from None


def read_weights(path, sha256=None, prefer="best"):
    """(state dict, Artifact) of a weights file or training checkpoint; prefer: 'best', 'model' or 'ema'."""
    path = str(path)
    loaded = checkpoint.load_file(path, sha256)
    state, which = checkpoint.weights_from(loaded, path, prefer)
    digest = file_sha256(path)
    if which == "weights":
        settings, names = safetensors_metadata(path) if path.endswith(".safetensors") else ({}, None)
        return state, Artifact(path, "weights", digest, settings=settings, class_names=names)
    settings, names, config = checkpoint_says(loaded, state, path)
    return state, Artifact(path, "checkpoint", digest, which, settings, names, _count(loaded.get("epoch")),
                           _count(loaded.get("step")), config)


def _count(value):
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def checkpoint_says(loaded, state, path):
    """(settings, class names, config) a training checkpoint states: from the config it records (checked over
    default.yaml), else from its arch / img_size fields and its head's shape."""
    source = f"{shown(path)} (the config it records)"
    recorded = loaded.get("config")
    if isinstance(recorded, dict) and recorded:
        cfg = config_from_data(recorded, source)
        settings = {key: _lookup(cfg, key) for key in SETTINGS}
        config = cfg.to_dict()
    else:
        raw = {"Global.model": loaded.get("arch"), "Global.img_size": loaded.get("img_size"),
               "Global.num_classes": _head_classes(state)}
        settings = checked({k: v for k, v in raw.items() if v is not None}, source)
        config = None
    names = loaded.get("class_names")
    return settings, class_list(names, settings.get("Global.num_classes"), f"{shown(path)}: class_names"), config


def _head_classes(state):
    bias = state.get("head.bias")
    return int(bias.shape[0]) if bias is not None and len(bias.shape) == 1 else None


def _lookup(cfg, dotted):
    section, key = dotted.split(".")
    value = cfg[section][key]
    return list(value) if isinstance(value, (list, tuple)) else value


def checked(settings, source):
    """settings ({dotted key: value}, SETTINGS keys only) checked as config values are; a model name must be a
    known variant."""
    from .t2t import VARIANTS

    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        raise UserError(f"{source}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(SETTINGS)}")
    nested = {}
    for dotted, value in settings.items():
        section, key = dotted.split(".")
        nested.setdefault(section, {})[key] = value
    cfg = config_from_data(nested, source)
    out = {key: _lookup(cfg, key) for key in settings}
    if "Global.model" in out and out["Global.model"] not in VARIANTS:
        raise UserError(f"{source}: unknown model {out['Global.model']!r}; known models: {', '.join(VARIANTS)}")
    return out


def class_list(names, num_classes, source):
    """`names` as a list of class names for num_classes classes, or None when there are none; anything else (not
    a list of strings, another count) is one UserError. Names may hold any character: they are escaped when
    printed (errors.shown)."""
    if names is None or (isinstance(names, (list, tuple)) and not names):
        return None
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise UserError(f"{source} is not a list of names")
    if num_classes is not None and len(names) != num_classes:
        raise UserError(f"{source} holds {len(names)} names for {num_classes} classes")
    return list(names)


def safetensors_metadata(path):
    """(settings, class names) stated in a .safetensors header's __metadata__ (SAFETENSORS_KEYS; others are
    ignored, as safetensors writers put their own there, e.g. {"format": "pt"})."""
    source = f"{shown(path)} (its safetensors metadata)"
    try:
        with open(path, "rb") as f:
            size = struct.unpack("<Q", f.read(8))[0]
            if size > min(SAFETENSORS_MAX_HEADER, os.fstat(f.fileno()).st_size):
                raise ValueError(f"a header of {size} bytes")
            header = json.loads(f.read(size))
    except (OSError, struct.error, ValueError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {shown(path)} as safetensors ({e})") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict):
        return {}, None
    values = {}
    for key in SAFETENSORS_KEYS:
        if key in meta:
            try:
                values[key] = json.loads(meta[key])
            except (TypeError, ValueError):
                values[key] = meta[key]
    names = values.pop("class_names", None)
    settings = checked(values, source)
    return settings, class_list(names, settings.get("Global.num_classes"), f"{source}: class_names")
