"""From Python, one call from weights to a model: t2tvit.create_model, create_transform, load_classifier.

    model = t2tvit.create_model("t2t_vit_7", pretrained="output/run/best.pdckpt")  # its head, size and classes
    transform = t2tvit.create_transform(model)       # image path -> [3, H, W] float32, as val.py reads it
    model, transform, class_names = t2tvit.load_classifier("output/run/best.pdckpt")

Every model made here carries `pretrained_cfg` (as timm's models do): what its weights are and how to feed it
(architecture, file, sha256, weights model/ema, epoch, num_classes, input_size, crop_pct, interpolation,
crop_rounding, mean, std, label_names), and `pretrained_notes`: what was re-made to fit.
"""
import collections
import logging

from . import artifact, t2t
from .checkpoint import set_checked
from .config import SCHEMA_PATH, load_config
from .errors import UserError, shown
from .runtime import keep_freed_memory
from .sizes import image_hw
from .transforms import EvalTransform, INTERPOLATIONS

log = logging.getLogger("t2tvit")

Classifier = collections.namedtuple("Classifier", "model transform class_names")
DEFAULT_CLASSES, DEFAULT_SIZE = 1000, 224  # a model made without a checkpoint that says otherwise


def create_model(name, pretrained=None, num_classes=None, img_size=None, prefer="best", reset_head=False,
                 features_only=False, out_indices=3, **kwargs):
    """Build variant `name` for num_classes and img_size (S or (H, W)); load `pretrained` if given.

    pretrained: a training checkpoint of this repo (its 'best' of model/EMA unless prefer says 'model' or
    'ema'), a weights file, converted official weights, or whatever else checkpoint.load_file reads.
    num_classes / img_size None: what the checkpoint (or a weights file's metadata) says, so its trained head
    and size are kept; for weights that say nothing (converted official ones), 1000 and 224. Another class
    count or size re-makes what must be re-made: a head of another class count is initialised fresh
    (reset_head: one of the same count too, for other classes), the fixed sinusoid position table is
    regenerated for img_size. What was re-made is logged (logger 't2tvit') and kept in model.pretrained_notes;
    anything else that does not fit is one UserError line.
    features_only: the backbone of blocks out_indices (t2t.FeatureBackbone), made once the weights are loaded.
    kwargs (drop_path_rate, drop_rate, ...) go to the model.
    """
    loaded = artifact.read_weights(str(pretrained), prefer=prefer) if pretrained is not None else None
    model = _made(name, loaded, num_classes, img_size, reset_head, kwargs)
    return t2t.FeatureBackbone(model, out_indices) if features_only else model


def _made(name, loaded, num_classes, img_size, reset_head, kwargs):
    state, art = loaded if loaded else (None, None)
    said = art.settings if art else {}
    if said.get("Global.model", name) != name:
        raise UserError(f"{shown(art.path)} holds {said['Global.model']} weights, not {name}: "
                        f"create_model({said['Global.model']!r}, pretrained=...)")
    num_classes = said.get("Global.num_classes", DEFAULT_CLASSES) if num_classes is None else num_classes
    img_size = said.get("Global.img_size", DEFAULT_SIZE) if img_size is None else img_size
    keep_freed_memory()  # as every command does (runtime.select_device): a user's script runs at the tools' speed
    model = t2t.create_model(name, num_classes=num_classes, img_size=image_hw(img_size), **kwargs)
    model.pretrained_notes = []
    if state is not None:
        model.pretrained_notes = set_checked(model, state, art.path, drop_head=True, new_head=reset_head)
        log.info("loaded %s into %s", art.describe(), name)
        for note in model.pretrained_notes:
            log.info("  %s", note)
    model.pretrained_cfg = pretrained_cfg(model, art, same_classes=not reset_head and num_classes == said.get(
        "Global.num_classes"))
    return model


def pretrained_cfg(model, art=None, same_classes=False):
    """timm's record of what a model's weights are and how to feed it; the eval preprocessing is the weights'
    own where they state it (a checkpoint), else config/default.yaml's (the official one)."""
    data = load_config(SCHEMA_PATH).Data
    said = art.settings if art else {}
    h, w = model.img_size
    record = {"architecture": model.arch_name, "num_classes": model.num_classes, "input_size": (3, h, w)}
    for key in artifact.EVAL_KEYS:
        field = key.split(".")[1]
        value = said.get(key, getattr(data, field))
        record[field] = tuple(value) if isinstance(value, list) else value
    record.update(file=art.path if art else None, sha256=art.sha256 if art else None,
                  weights=art.which if art else None, epoch=art.epoch if art else None,
                  label_names=art.class_names if art is not None and same_classes else None)
    return record


def create_transform(model):
    """Image path -> [3, H, W] float32 for `model`: the eval transform its pretrained_cfg records (resize,
    center crop, interpolation, crop rounding, mean / std), at the model's size; exactly what val.py and
    predict.py feed it (transforms.EvalTransform)."""
    cfg = getattr(model, "pretrained_cfg", None) or pretrained_cfg(model)
    return EvalTransform(tuple(model.img_size), cfg["crop_pct"], INTERPOLATIONS[cfg["interpolation"]], cfg["mean"],
                         cfg["std"], cfg["crop_rounding"])


def load_classifier(path, prefer="best"):
    """Classifier(model in eval mode, its transform, its class names) of a checkpoint (or weights that say which
    model they hold): all that classifying an image file needs."""
    state, art = artifact.read_weights(str(path), prefer=prefer)
    name = art.settings.get("Global.model")
    if name is None:
        raise UserError(f"{shown(art.path)} does not say which model it holds (converted weights do not): use "
                        "t2tvit.create_model(NAME, pretrained=...) and t2tvit.create_transform(model)")
    model = _made(name, (state, art), None, None, False, {})
    model.eval()
    return Classifier(model, create_transform(model), model.pretrained_cfg["label_names"])
