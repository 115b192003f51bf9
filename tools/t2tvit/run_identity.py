"""Which config keys make a training run the experiment it is, and how two runs' configs differ in them.

A run is one experiment: resuming compares the config a checkpoint recorded with the new one (checkpoint.py
decides what to do about a difference). Every key of config/default.yaml is either operational (how and where the
run is carried out: logs, checkpoints, workers, the device; free to change between the sessions of one run) or
part of the run's identity (the model and its sizes, the data, the classes, the whole recipe). A key not listed as
operational counts as identity, so a key added to default.yaml later cannot let another experiment resume
unnoticed; tests/test_run_identity.py makes each new key a deliberate choice between the two lists below.
"""
from .config import SCHEMA_PATH, load_config
from .errors import UserError
from .sizes import image_hw

# How a run is carried out, not what it computes or how it is judged (and why each may change).
OPERATIONAL = {
    "Global.device": "the device it runs on (float32 everywhere; mixed precision is Global.amp)",
    "Global.output_dir": "where checkpoints go: a run may be moved, or continued elsewhere with --resume",
    "Global.log_dir": "where its logs go",
    "Global.eval_every": "how often it is validated",
    "Global.print_every": "how often it logs",
    "Global.save_every_steps": "how often it checkpoints",
    "Global.keep_last": "how many checkpoints it keeps",
    "Global.resume": "how this session starts",
    "Global.nonfinite": "what a NaN loss does: the line that stops a run on one suggests changing it",
    "Global.max_skips": "how many NaN steps Global.nonfinite=skip tolerates",
    "Global.grad_checkpointing": "whether activations are kept or recomputed in backward: the same gradients, bit for "
                                 "bit (tests/test_grad_checkpointing.py), in less memory",
    "Global.hang_timeout": "how long a process may go without progress before it is ended and the run restarted",
    "Data.batch_size": "the most images a device holds: the global batch (identity) stays whole",
    "Data.num_workers": "how many processes read the images",
    "Data.use_shared_memory": "how the workers hand batches over (the same batches either way)",
    "Data.timeout": "how long the trainer waits for a batch before it stops with an error",
    "Data.allow_outside_root": "a permission: the list files say which images are used",
}

# What the experiment is: model and sizes, data and classes, evaluation, and the recipe (every other key).
IDENTITY = (
    "Global.model", "Global.img_size", "Global.num_classes", "Global.seed", "Global.epochs", "Global.pretrained",
    "Global.reset_head", "Global.amp", "Global.amp_level",
    "Model.drop_rate", "Model.attn_drop_rate", "Model.drop_path_rate",
    "Data.root", "Data.train_list", "Data.val_list", "Data.classes", "Data.global_batch_size", "Data.crop_pct",
    "Data.interpolation", "Data.crop_rounding", "Data.mean", "Data.std", "Data.reduced_decode",
    "Augment.rand_augment", "Augment.train_interpolation", "Augment.scale", "Augment.ratio", "Augment.hflip",
    "Augment.reprob", "Augment.mixup", "Augment.cutmix", "Augment.mixup_prob", "Augment.switch_prob",
    "Augment.smoothing",
    "Optimizer.lr", "Optimizer.weight_decay", "Optimizer.betas", "Optimizer.eps", "Optimizer.layer_decay",
    "Scheduler.warmup_epochs", "Scheduler.warmup_lr", "Scheduler.min_lr", "Scheduler.cooldown_epochs", "Scheduler.by",
    "EMA.enable", "EMA.decay", "EMA.best",
)

# The identity a run's tensors, data order and files are made of: these never change within a run, even with
# --accept-changes (a new Global.output_dir is the way), and neither do its class names (CLASS_NAMES), so that
# best.pdckpt and latest.pdckpt of one folder always name the same classes.
FIXED = ("Global.model", "Global.img_size", "Global.num_classes", "Data.global_batch_size")
CLASS_NAMES = "class names"


def flatten(config, prefix=""):
    """{'Section.key': value} of a nested config dict."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + str(key)] = value
    return flat


def same(key, a, b):
    """Whether two values of one config key mean the same."""
    if key == "Global.img_size":  # 224 and [224, 224] are one size
        try:
            return image_hw(a) == image_hw(b)
        except UserError:
            pass
    return a == b


def shown(value):
    """A config value as a message shows it: text without quotes, but '' visible."""
    return repr(value) if value == "" else str(value)


def differences(recorded, config):
    """[(key, recorded value, config value)] of every identity key whose values differ, in config order.

    recorded: the config a checkpoint holds; config: this run's (nested dicts). A key the checkpoint's version
    did not have yet stands at its config/default.yaml value, what that version did without it.
    """
    saved, wanted, default = flatten(recorded), flatten(config), flatten(load_config(SCHEMA_PATH).to_dict())
    return [(key, saved.get(key, default.get(key)), value) for key, value in wanted.items()
            if key not in OPERATIONAL and not same(key, saved.get(key, default.get(key)), value)]


def class_difference(recorded, wanted):
    """'' when the class lists are equal, else what differs, shortly (a list may hold 1000 names)."""
    recorded, wanted = list(recorded), list(wanted)
    if recorded == wanted:
        return ""
    if len(recorded) != len(wanted):
        return f"{CLASS_NAMES} (checkpoint {len(recorded)} names, config {len(wanted)} names)"
    at = [i for i, (a, b) in enumerate(zip(recorded, wanted)) if a != b]
    first = ", ".join(f"#{i} {recorded[i]!r} -> {wanted[i]!r}" for i in at[:3])
    return f"{CLASS_NAMES} ({len(at)} of {len(wanted)} differ: {first}{' ...' if len(at) > 3 else ''})"
