"""The config a command runs given weights (or an export) under: what the file says it is, a config only where
it agrees.

    add_weights_args(parser)                  # -c/-o, --weights, --sha256, --which, --img-size
    cfg, model, art, notes = load_model(args) # export_model.py, visualize.py
    loaded = Loaded(args); ...; loaded.model()  # val.py, predict.py: the device is set from loaded.cfg first

The config: -c FILE when given; else the config a checkpoint records (so a checkpoint alone is enough; where to
write logs is never taken from it: NOT_FROM_FILES); else config/t2t_vit_7_demo.yaml (DEFAULT_CONFIG, every
command's default); -o overrides on top. What the artifact
states (artifact.SETTINGS: model, img_size, num_classes, eval preprocessing; and its class names) then decides.
A value that -c or -o gives otherwise is refused in one line naming both values, unless asked for by its own
flag: --img-size S evaluates at another size (the position table is regenerated), said in one note. An
artifact that states nothing (converted official weights) leaves the config in charge, as it always was.
"""
import os

from . import artifact
from .config import DEFAULT_CONFIG, ROOT, add_config_args, config_from_data, load_config
from .errors import UserError, shown
from .sizes import image_hw, parse_size


def add_weights_args(parser, required=False, weights=True, default="Global.output_dir/best.pdckpt"):
    """-c/-o and the flags every command that loads weights takes (weights=False: -c/-o and --img-size)."""
    add_config_args(parser)
    if weights:
        parser.add_argument("--weights", required=required, default="",
                            help=".pdckpt checkpoint (its model, size, classes and preprocessing are used), or "
                                 f".pdparams / .safetensors weights (the config's); default: {default}")
        parser.add_argument("--sha256", default="", help="hex sha256 the weights file must have (refused otherwise)")
        parser.add_argument("--which", default="best", choices=["best", "model", "ema"],
                            help="for a .pdckpt: its model or EMA weights, or the one it recorded as best (default)")
    parser.add_argument("--img-size", nargs="+", default=None, metavar="S",
                        help="run the weights at another size than they were trained at: S, HxW or H W")
    return parser


def config_path(args):
    """The config file named by -c, else the default one."""
    return args.config or DEFAULT_CONFIG


def weights_or_best(args):
    """--weights, else Global.output_dir/best.pdckpt of the -c (or default) config, else say how to get some
    with commands that fit that config."""
    if args.weights:
        return args.weights
    path = config_path(args)
    output_dir = load_config(path, args.override).Global.output_dir
    best = os.path.join(output_dir, "best.pdckpt")
    if os.path.isfile(best):
        return best
    shown_config = os.path.relpath(path, ROOT) if os.path.abspath(path).startswith(ROOT + os.sep) else path
    train = ("bash scripts/train.sh" if os.path.abspath(path) == os.path.abspath(DEFAULT_CONFIG)
             else f"python tools/train.py -c {shown_config}")
    raise UserError(f"no weights: {best} does not exist. Train first ({train}), or pass --weights FILE (a "
                    "checkpoint, or converted official weights: python tools/convert_weights.py --src "
                    "71.7_T2T_ViT_7.pth.tar --dst weights/t2t_vit_7.pdparams --model t2t_vit_7)")


def _set(cfg, dotted, value):
    section, key = dotted.split(".")
    cfg[section][key] = value


def _same(dotted, a, b):
    if dotted == "Global.img_size":
        return image_hw(a) == image_hw(b)
    return (list(a) if isinstance(a, (list, tuple)) else a) == (list(b) if isinstance(b, (list, tuple)) else b)


def _shown_value(value):
    """A value as a message shows it; a size [H, W] as HxW, or S when square."""
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return str(value[0]) if value[0] == value[1] else "x".join(map(str, value))
    return str(value)


def asked(args):
    """{dotted key: where the user set it}: every artifact.SETTINGS key and Data.classes when -c names a config file,
    then the keys of -o."""
    where = {}
    if args.config:
        where = {key: shown(args.config) for key in artifact.SETTINGS + ("Data.classes",)}
    for text in args.override:
        where[text.partition("=")[0].strip()] = f"-o {shown(text)}"
    return where


# What a checkpoint's recorded config may not decide: where a command writes (its logs), and whether list files
# may name images outside Data.root. A file from elsewhere must not send writes or reads outside where they
# belong; these come from the default config (or -o).
NOT_FROM_FILES = ("Global.output_dir", "Global.log_dir", "Data.allow_outside_root")


def recorded_config(art, overrides):
    """The config a checkpoint records, checked over default.yaml, with NOT_FROM_FILES from DEFAULT_CONFIG, then
    the overrides."""
    default = load_config(DEFAULT_CONFIG)
    data = {section: dict(values) if isinstance(values, dict) else values for section, values in art.config.items()}
    for key in NOT_FROM_FILES:
        section, name = key.split(".")
        data.setdefault(section, {})[name] = default[section][name]
    return config_from_data(data, f"{shown(art.path)} (the config it records)", overrides)


def config_for(args, art, size_flag=True):
    """(config, notes) to run `art` (an artifact.Artifact, or None) under; see the module's docstring."""
    if args.config or art is None or art.config is None:
        cfg = load_config(config_path(args), args.override)
    else:
        cfg = recorded_config(art, args.override)
    notes, conflicts = [], []
    where = asked(args)
    size = parse_size(args.img_size) if getattr(args, "img_size", None) else None
    settings = art.settings if art is not None else {}
    kind = art.kind if art is not None else "weights"
    for key, value in settings.items():
        mine = cfg[key.split(".")[0]][key.split(".")[1]]
        if key == "Global.img_size" and size is not None:
            if not _same(key, size, value):
                notes.append(f"running at {_shown_value(list(size))} px (--img-size); the {kind} was made at "
                             f"{_shown_value(value)} px: its position table is regenerated for the new size")
            continue
        if key in where and not _same(key, mine, value):
            conflicts.append(f"{key} {_shown_value(value)} (the {kind}) vs {_shown_value(mine)} ({where[key]})")
        _set(cfg, key, value)
    if size is not None:
        _set(cfg, "Global.img_size", size[0] if size[0] == size[1] else list(size))
    if art is not None and art.class_names and "Data.classes" in where:
        differ = class_names_differ(cfg, art.class_names)
        if differ:
            conflicts.append(f"class names {differ} (the {kind} vs Data.classes {cfg.Data.classes} of "
                             f"{where['Data.classes']})")
    if conflicts:
        how = "; --img-size S runs it at another size" if size_flag and any(
            c.startswith("Global.img_size") for c in conflicts) else ""
        raise UserError(f"{shown(art.path)} and the config disagree: {'; '.join(conflicts)}. Leave these keys to "
                        f"the {kind} (drop -c, or give its values){how}")
    return cfg, notes


def class_names_differ(cfg, names):
    """'' when the config's classes (Data.classes, if it can be resolved here) are `names`; else where they first
    differ, e.g. "['cat', 'dog'] vs ['cat', 'cow']" (at most 3 names each)."""
    from .dataset import class_names

    try:
        own = class_names(cfg)
    except UserError:  # e.g. the class folders of a dataset that is not here: nothing to compare with
        return ""
    if own == names:
        return ""
    first = next((i for i, (a, b) in enumerate(zip(names, own)) if a != b), min(len(names), len(own)))
    return f"{[shown(n) for n in names[first:first + 3]]} vs {[shown(n) for n in own[first:first + 3]]}" + (
        f" (from class {first})" if first else "") + (
        f"; {len(names)} vs {len(own)} classes" if len(names) != len(own) else "")


def class_names_for(cfg, art):
    """(class names, note): the artifact's own, else the config's (Data.classes) when they resolve here and
    number the model's classes; else (None, why), and predictions are shown by class number alone."""
    from .dataset import class_names

    if art is not None and art.class_names:
        return art.class_names, None
    try:
        names = class_names(cfg)
    except UserError as e:  # e.g. Data.classes: folders of a dataset that is not here
        return None, f"no class names ({e})"
    if len(names) != cfg.Global.num_classes:
        return None, (f"no class names: Data.classes {cfg.Data.classes} names {len(names)} classes, the model "
                      f"has {cfg.Global.num_classes}")
    return names, None


class Loaded:
    """A command's --weights (default: the config's best.pdckpt) read, and the config it runs under
    (config_for): .cfg, .art (artifact.Artifact), .notes; .model() builds the model and loads the weights (call it
    once the device is set: a model's parameters are made on the current device)."""

    def __init__(self, args, prefer=None):
        self.state, self.art = artifact.read_weights(weights_or_best(args), args.sha256, prefer or args.which)
        self.cfg, self.notes = config_for(args, self.art)

    def model(self):
        """The model in eval mode with the weights loaded; what loading adapted joins .notes."""
        from .checkpoint import set_checked
        from .t2t import create_model

        g = self.cfg.Global
        model = create_model(g.model, img_size=g.img_size, num_classes=g.num_classes)
        made_at = self.art.settings.get("Global.img_size")
        resized = made_at is not None and image_hw(made_at) != image_hw(g.img_size)  # config_for's note says it
        self.notes += [note for note in set_checked(model, self.state, self.art.path)
                       if not (resized and note.startswith("pos_embed"))]
        self.state = None  # loaded: free the file's arrays
        model.eval()
        return model


def load_model(args, prefer=None):
    """(config, model in eval mode with the weights loaded, Artifact, notes): Loaded(args) and its model, on the
    current device."""
    loaded = Loaded(args, prefer)
    model = loaded.model()
    return loaded.cfg, model, loaded.art, loaded.notes
