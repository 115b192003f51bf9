"""YAML configs checked against config/default.yaml, with PaddleClas-style `-o Section.key=value` overrides.

config/default.yaml is the schema: it names every key, and each default's type is the key's type. A config
file deep-merges over its `_base_` (a path relative to the file, itself possibly with a `_base_`), and the
whole chain over default.yaml. Anything unknown, mistyped or out of range stops here with one line naming
the file or override at fault, before a run spends hours on it.
"""
import copy
import difflib
import math
import os
import re

import yaml

from . import errors
from .augment import RandAugment
from .sizes import image_hw

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCHEMA_PATH = os.path.join(ROOT, "config", "default.yaml")
# Every command's config when -c is not given: the lit_data demo that scripts/train.sh trains.
DEFAULT_CONFIG = os.path.join(ROOT, "config", "t2t_vit_7_demo.yaml")

CHOICES = {
    "Global.device": ("auto", "cpu", "gpu"),
    "Global.amp": ("none", "fp16", "bf16"),
    "Global.amp_level": ("O1", "O2"),
    "Global.nonfinite": ("stop", "skip"),
    "EMA.best": ("ema", "model", "either"),
    "Scheduler.by": ("epoch", "step"),
    "Augment.train_interpolation": ("random", "bilinear", "bicubic"),
    "Data.interpolation": ("bilinear", "bicubic"),
    "Data.crop_rounding": ("half_up", "half_even"),
}

# PyYAML reads `1e-3` (no dot) as a string; a float key accepts it rather than fail on a YAML 1.1 quirk.
_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


class _Dumper(yaml.SafeDumper):
    """Sections as blocks, lists on one line: the layout of the config files themselves."""


_Dumper.add_representer(list, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True))


class Config:
    """Nested config: `cfg.Data.root` and `cfg["Data"]["root"]` both work, and so does assignment."""

    def __init__(self, data):
        object.__setattr__(self, "_data", {k: Config(v) if isinstance(v, dict) else v for k, v in data.items()})

    def __getattr__(self, name):
        if name.startswith("__"):  # keeps copy/pickle from asking for a `_data` that is not set yet
            raise AttributeError(name)
        try:
            return self._data[name]
        except KeyError:
            raise AttributeError(f"config has no key '{name}'") from None

    def __setattr__(self, name, value):
        self._data[name] = value

    def __getitem__(self, key):
        return self._data[key]

    def __setitem__(self, key, value):
        self._data[key] = value

    def __contains__(self, key):
        return key in self._data

    def __iter__(self):
        return iter(self._data)

    def keys(self):
        return self._data.keys()

    def items(self):
        return self._data.items()

    def to_dict(self):
        return {k: v.to_dict() if isinstance(v, Config) else (list(v) if isinstance(v, (list, tuple)) else v)
                for k, v in self._data.items()}

    def dump(self):
        return yaml.dump(self.to_dict(), Dumper=_Dumper, sort_keys=False)

    def __repr__(self):
        return f"Config({self.to_dict()!r})"


# A config is a few KiB: past these, a file or -o value is a mistake or an attack (a few hundred bytes of
# nested aliases expand to a billion nodes, which the constructor and our merging would then walk).
YAML_MAX_BYTES = 1 << 20
YAML_MAX_NODES = 100_000


class YAMLBudgetError(Exception):
    """A YAML document over the budget: too large once its aliases are expanded, recursive, or too deep."""


def _expanded_nodes(node, sizes):
    """How many nodes `node` stands for with every alias expanded, counted without expanding anything (each
    shared node once, memoised by id); raises YAMLBudgetError past YAML_MAX_NODES or on a recursive alias."""
    if id(node) in sizes:
        if sizes[id(node)] is None:
            raise YAMLBudgetError("a recursive alias")
        return sizes[id(node)]
    sizes[id(node)] = None
    children = node.value if isinstance(node, yaml.SequenceNode) else \
        [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else ()
    total = 1 + sum(_expanded_nodes(child, sizes) for child in children)
    if total > YAML_MAX_NODES:
        raise YAMLBudgetError(f"over {YAML_MAX_NODES} nodes once its aliases are expanded")
    sizes[id(node)] = total
    return total


def _clip(text, width=60):
    """repr(text), cut to `width` characters: a message stays one readable line whatever a value holds."""
    shown = repr(text)
    return shown if len(shown) <= width else f"{shown[:width]}... ({len(str(text)):,} characters)"


# YAML 1.1 (PyYAML) reads `1:30` as 90 (base 60) and `010` as 8 (octal): nobody writing an epoch count or a seed
# means that, and YAML 1.2 dropped both; they are refused, saying what they would have been.
_BASE_60 = re.compile(r"[-+]?\d[\d_]*(:[0-5]?\d)+(\.[\d_]*)?$")
_OCTAL = re.compile(r"[-+]?0[0-7_]+$")


class _BudgetLoader(yaml.SafeLoader):
    """yaml.safe_load (no python tags) that refuses a document over the node budget before constructing it, YAML
    1.1's base-60 and leading-zero octal numbers, and an explicit `!!` tag whose value does not convert, each as a
    ConstructorError naming the value (never a ValueError or AttributeError from inside PyYAML)."""

    def construct_document(self, node):
        try:
            _expanded_nodes(node, {})
        except RecursionError:
            raise YAMLBudgetError("nested too deeply") from None
        return super().construct_document(node)

    def construct_object(self, node, deep=False):
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, TypeError, AttributeError, KeyError, IndexError, OverflowError) as e:
            tag = node.tag.replace("tag:yaml.org,2002:", "!!")
            reason = "over Python's 4300 digits" if "digits" in str(e) else f"{type(e).__name__}"
            raise yaml.constructor.ConstructorError(None, None, f"{_clip(node.value)} is not a valid {tag} ({reason})",
                                                    node.start_mark) from None

    def _refuse_yaml11_number(self, node):
        text = str(node.value)
        if _BASE_60.match(text) or (node.tag.endswith(":int") and _OCTAL.match(text)):
            kind = "base 60" if ":" in text else "octal: a leading 0"
            value = (yaml.SafeLoader.construct_yaml_int if node.tag.endswith(":int")
                     else yaml.SafeLoader.construct_yaml_float)(self, node)
            raise yaml.constructor.ConstructorError(
                None, None, f"{_clip(text)} is {value} in YAML 1.1 ({kind}), surely not what was meant; write the "
                            "number itself, or quote it for a string", node.start_mark)

    def construct_yaml_int(self, node):
        self._refuse_yaml11_number(node)
        return super().construct_yaml_int(node)

    def construct_yaml_float(self, node):
        self._refuse_yaml11_number(node)
        return super().construct_yaml_float(node)


_BudgetLoader.add_constructor("tag:yaml.org,2002:int", _BudgetLoader.construct_yaml_int)
_BudgetLoader.add_constructor("tag:yaml.org,2002:float", _BudgetLoader.construct_yaml_float)


def _load_yaml(text):
    """yaml.safe_load within the budget: YAMLBudgetError for a document too large, deep or recursive."""
    if len(text) > YAML_MAX_BYTES:
        raise YAMLBudgetError(f"over {YAML_MAX_BYTES} bytes")
    try:
        return yaml.load(text, Loader=_BudgetLoader)
    except RecursionError:  # the composer itself recurses once per nesting level
        raise YAMLBudgetError("nested too deeply") from None


def read_yaml(path, why="", what="config file"):
    """The mapping in YAML file `path` (a `what`), read within the budget; anything else is one UserError."""
    if not os.path.isfile(path):
        raise errors.UserError(f"{what} not found: {path}{why}")
    if os.path.getsize(path) > YAML_MAX_BYTES:  # checked before reading: never load a huge file
        raise errors.UserError(f"{path}: too large for a {what} (over {YAML_MAX_BYTES} bytes)")
    try:
        with open(path, encoding="utf-8") as f:
            data = _load_yaml(f.read())
    except YAMLBudgetError as e:
        raise errors.UserError(f"{path}: refused YAML: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else path
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        kind = "YAML value error" if isinstance(e, yaml.constructor.ConstructorError) else "YAML syntax error"
        raise errors.UserError(f"{where}: {kind}: {problem}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise errors.UserError(f"cannot read {path} as a {what}: {getattr(e, 'strerror', None) or e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise errors.UserError(f"{path}: a {what} must be a mapping of sections, got {type(data).__name__}")
    return data


def _flat_keys(tree, prefix=""):
    keys = []
    for k, v in tree.items():
        keys.append(prefix + k)
        if isinstance(v, dict):
            keys += _flat_keys(v, f"{prefix}{k}.")
    return keys


def _unknown(kind, dotted, source, schema):
    known = [k for k in _flat_keys(schema) if ("." in k) == (kind == "key")]
    section, _, leaf = dotted.rpartition(".")
    same_leaf = [k for k in known if k.rpartition(".")[2] == leaf]  # the right key in the wrong section
    if same_leaf:
        suggestion = f"; did you mean {' or '.join(repr(k) for k in same_leaf)}?"
    else:
        # Leaves are compared, not whole dotted keys: a shared section prefix would make anything look close.
        def score(k):
            return difflib.SequenceMatcher(None, leaf.lower(), k.rpartition(".")[2].lower()).ratio()
        best = max(known, key=lambda k: (score(k), k.rpartition(".")[0] == section))
        if score(best) >= 0.6:
            suggestion = f"; did you mean '{best}'?"
        else:
            names = _lookup(schema, section) if kind == "key" else schema
            suggestion = f"; known: {', '.join(names)}"
    return errors.UserError(f"unknown config {kind} '{dotted}' (in {source}){suggestion}")


def _lookup(schema, dotted):
    node = schema
    for part in dotted.split("."):
        node = node[part]
    return node


def _type_name(default):
    if isinstance(default, list):
        return f"a list of {len(default)} {_type_name(default[0]).split()[1]}s"
    return {bool: "a boolean (true/false)", int: "an integer", float: "a number", str: "a string"}[type(default)]


def _coerce(value, default):
    """`value` as the type of `default`, or raise ValueError."""
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _FLOAT_TEXT.match(value.strip()):
            return float(value)
    elif isinstance(default, str):
        if value is None:  # `key:` with nothing after it
            return ""
        if isinstance(value, str):
            return value
    elif isinstance(default, list):
        if isinstance(value, list) and len(value) == len(default):
            return [_coerce(v, d) for v, d in zip(value, default)]
    raise ValueError


# Keys that take one integer S (an S x S image) or [H, W].
SIZE_KEYS = ("Global.img_size",)


def _check_value(dotted, value, default, source):
    try:
        value = _coerce(value, [default, default] if dotted in SIZE_KEYS and isinstance(value, list) else default)
    except ValueError:
        hint = " (quote it to make it a string)" if isinstance(default, str) else ""
        what = "an integer or [height, width]" if dotted in SIZE_KEYS else _type_name(default)
        raise errors.UserError(f"config key '{dotted}' (in {source}): {_clip(value)} is not {what}{hint}") from None
    if any(isinstance(v, float) and not math.isfinite(v) for v in (value if isinstance(value, list) else [value])):
        raise errors.UserError(f"config key '{dotted}' (in {source}): {value!r} is not finite (inf and nan are "
                               "never a setting)")
    choices = CHOICES.get(dotted)
    if choices and value not in choices:
        raise errors.UserError(f"config key '{dotted}' (in {source}): {value!r} is not one of "
                               f"{' | '.join(choices)}")
    return value


def _merge(target, data, schema, root, source, origin, prefix=""):
    """Check `data` against `schema` and write it over `target`; `origin` records where each key was set."""
    for key, value in data.items():
        dotted = prefix + str(key)
        if key not in schema:
            raise _unknown("key" if prefix else "section", dotted, source, root)
        default = schema[key]
        if isinstance(default, dict):
            if value is None:  # a section heading with nothing under it
                continue
            if not isinstance(value, dict):
                raise errors.UserError(f"config section '{dotted}' (in {source}) must be a mapping of keys, "
                                       f"got {value!r}")
            _merge(target[key], value, default, root, source, origin, dotted + ".")
        else:
            target[key] = _check_value(dotted, value, default, source)
            origin[dotted] = source


def _load_chain(path, schema, target, origin, chain=(), why=""):
    real = os.path.realpath(path)
    if real in chain:
        raise errors.UserError(f"config file {path}: its _base_ chain comes back to it")
    data = read_yaml(path, why)
    base = data.pop("_base_", None)
    if base is not None:
        if not isinstance(base, str) or not base:
            raise errors.UserError(f"config file {path}: _base_ must be a file name, got {base!r}")
        _load_chain(os.path.join(os.path.dirname(path), base), schema, target, origin, chain + (real,),
                    f" (the _base_ of {path})")
    _merge(target, data, schema, schema, path, origin)


def _split_override(text):
    key, eq, raw = text.partition("=")
    key = key.strip()
    if not eq or "." not in key or not all(key.split(".")):
        raise errors.UserError(f"malformed override -o {text!r}: expected Section.key=value, "
                               f"e.g. -o Data.root=/data/ILSVRC2012")
    return key, raw


def _parse_override(text, schema):
    key, raw = _split_override(text)
    source = f"-o {text}"
    node = schema
    parts = key.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            raise _unknown("key", key, source, schema) if i else _unknown("section", part, source, schema)
        node = node[part]
    if isinstance(node, dict):
        raise errors.UserError(f"malformed override -o {text!r}: '{key}' is a section; set its keys one by one")
    try:
        value = _load_yaml(raw) if raw.strip() else ""
    except YAMLBudgetError as e:
        raise errors.UserError(f"override -o {key}=...: refused YAML value: {e}") from None
    except yaml.constructor.ConstructorError as e:
        if not isinstance(node, str):
            raise errors.UserError(f"override -o {key}: {e.problem}") from None
        value = None  # a string key takes the text (below)
    except yaml.YAMLError:
        raise errors.UserError(f"override -o {_clip(text)}: cannot parse the value {_clip(raw)}") from None
    if isinstance(node, str) and not isinstance(value, (str, list, dict)):
        value = raw.strip()  # `-o Data.root=2012` or `-o Global.resume=off` mean the text, not a number or a bool
    return parts, value, source


# Cheap sanity checks, each a value that would crash or silently waste a run.
RANGES = (
    (lambda v: v > 0, "must be > 0",
     ("Global.num_classes", "Global.epochs", "Global.eval_every", "Global.print_every",
      "Data.batch_size", "Data.global_batch_size", "Optimizer.lr", "Optimizer.eps")),
    (lambda v: v >= 0, "must be >= 0",
     ("Global.save_every_steps", "Global.keep_last", "Global.max_skips", "Global.hang_timeout",
      "Data.num_workers", "Data.timeout", "Augment.mixup", "Augment.cutmix", "Optimizer.weight_decay",
      "Scheduler.warmup_epochs", "Scheduler.cooldown_epochs", "Scheduler.warmup_lr", "Scheduler.min_lr")),
    (lambda v: 0 <= v < 2**63, "must be in [0, 2**63)", ("Global.seed",)),
    (lambda v: 0 <= v <= 1, "is not a probability in [0, 1]",
     ("Augment.mixup_prob", "Augment.switch_prob", "Augment.hflip", "Augment.reprob")),
    (lambda v: 0 < v <= 1, "must be in (0, 1]", ("Data.crop_pct", "Optimizer.layer_decay")),
    (lambda v: 0 < v[0] <= v[1], "must be [low, high] with 0 < low <= high", ("Augment.scale", "Augment.ratio")),
    (lambda v: min(v) > 0, "must all be > 0", ("Data.std",)),
    (lambda v: 0 <= v < 1, "must be in [0, 1)",
     ("Model.drop_rate", "Model.attn_drop_rate", "Model.drop_path_rate", "Augment.smoothing", "EMA.decay")),
    (lambda v: all(0 <= b < 1 for b in v), "must all be in [0, 1)", ("Optimizer.betas",)),
)


# Where a value stops being a setting and becomes a typo or an attack: a 1e9-class head is a 1 TB allocation, a
# global batch past 2**24 more images than any data set feeds one step. Inclusive, for each number of a list;
# default.yaml's comment of each key says its bounds as `LOW to HIGH` (a test checks it).
BOUNDS = {
    "Global.num_classes": (1, 100_000),
    "Global.img_size": (16, 4_096),
    "Global.epochs": (1, 100_000),
    "Data.batch_size": (1, 65_536),
    "Data.global_batch_size": (1, 16_777_216),
    "Data.num_workers": (0, 1_024),
    "Data.mean": (0.0, 1.0),
    "Data.std": (0.001, 1.0),
}


def bounds_text(low, high):
    """`LOW to HIGH` as default.yaml's comments and the errors write it: 1 to 100,000; 0.001 to 1."""
    def number(v):
        return f"{v:,}" if isinstance(v, int) else f"{v:g}"
    return f"{number(low)} to {number(high)}"


def _check_ranges(cfg, origin):
    def fail(key, message):
        raise errors.UserError(f"config key '{key}' (in {origin.get(key, os.path.relpath(SCHEMA_PATH))}): "
                               f"{_clip(_lookup(cfg, key))} {message}")

    for ok, message, keys in RANGES:
        for key in keys:
            if not ok(_lookup(cfg, key)):
                fail(key, message)
    for key in SIZE_KEYS:
        try:
            image_hw(_lookup(cfg, key))
        except errors.UserError:
            fail(key, "is not a multiple of 16 (the T2T module reduces by 16), nor [height, width] of such")
    for key, (low, high) in BOUNDS.items():
        value = _lookup(cfg, key)
        if not all(low <= v <= high for v in (value if isinstance(value, list) else [value])):
            fail(key, f"is outside {bounds_text(low, high)}")
    if cfg.Augment.rand_augment:
        try:
            RandAugment.from_spec(cfg.Augment.rand_augment)
        except errors.UserError as e:
            fail("Augment.rand_augment", f"is not a RandAugment spec: {e}")
    o, s = cfg.Optimizer, cfg.Scheduler
    if s.min_lr > o.lr:
        fail("Scheduler.min_lr", f"is above Optimizer.lr {o.lr!r}: the cosine would rise")
    if cfg.Global.epochs <= s.warmup_epochs + s.cooldown_epochs:
        fail("Global.epochs", f"leaves no cosine phase after {s.warmup_epochs} warmup and {s.cooldown_epochs} "
                              "cooldown epochs; lower Scheduler.warmup_epochs / Scheduler.cooldown_epochs")


def load_config(path, overrides=()):
    """The config at `path` over its `_base_` chain over default.yaml, then `overrides` ("Section.key=value")."""
    return _built(lambda schema, merged, origin: _load_chain(path, schema, merged, origin), overrides)


def config_from_data(data, source, overrides=()):
    """A config recorded as a mapping (a checkpoint's, or settings a weights file or export states), checked
    over default.yaml as a file would be, then `overrides`; `source` names it in errors."""
    if not isinstance(data, dict):
        raise errors.UserError(f"{source}: a config must be a mapping of sections, got {type(data).__name__}")
    return _built(lambda schema, merged, origin: _merge(merged, data, schema, schema, source, origin), overrides)


def _built(load, overrides):
    """default.yaml, what `load(schema, merged, origin)` writes over it, then the overrides; checked."""
    schema = read_yaml(SCHEMA_PATH)
    merged = copy.deepcopy(schema)
    origin = {}
    load(schema, merged, origin)
    for text in overrides:
        parts, value, source = _parse_override(text, schema)
        node = merged
        for part in parts[:-1]:
            node = node[part]
        node[parts[-1]] = _check_value(".".join(parts), value, _lookup(schema, ".".join(parts)), source)
        origin[".".join(parts)] = source
    cfg = Config(merged)
    _check_ranges(cfg, origin)
    return cfg


def add_config_args(parser):
    """`-c/--config FILE` (None when not given: DEFAULT_CONFIG) and `-o/--override Section.key=value ...`
    (repeatable; several may follow one -o)."""
    parser.add_argument("-c", "--config", default=None,
                        help=f"YAML config (default: {os.path.relpath(DEFAULT_CONFIG, ROOT)} of this repository)")
    parser.add_argument("-o", "--override", action="extend", nargs="+", default=[], metavar="Section.key=value",
                        help="override a config key, e.g. -o Data.root=/data/ILSVRC2012 Global.epochs=100")
    return parser


def config_from_args(args):
    return load_config(args.config or DEFAULT_CONFIG, args.override)
