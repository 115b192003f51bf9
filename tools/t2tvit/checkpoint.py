"""Reading, checking and atomically writing weights and training checkpoints.

Two kinds of file:
- weights (`.pdparams`): a flat {structured name: tensor} state dict, what the converter writes;
- training checkpoints (`.pdckpt`): a dict with 'model', 'ema', 'optimizer', 'epoch', 'step', 'best', ... .
Every write goes to a temporary file in the same folder and is renamed into place, so a crash while saving
never leaves a partial file under the final name.
"""
import glob
import hashlib
import math
import os
import re

import numpy as np
import paddle

from . import atomic
from .errors import StorageError, UserError
from .inputs import NotRegular, open_regular
from .run_identity import CLASS_NAMES, FIXED, class_difference, differences, flatten, same, shown
from .safe_load import load_paddle_file

# At least 4 and 6 digits (the names are zero-padded to those), more past epoch 9999 or step 999999.
CKPT_PATTERN = re.compile(r"^ckpt-e(\d{4,})-s(\d{6,})\.pdckpt$")


def atomic_save(obj, path):
    """paddle.save(obj, path) through an exclusive temporary (atomic.py): path holds all of obj or its old content."""
    with atomic.replacing(path) as tmp:
        paddle.save(obj, tmp)


def atomic_link(src, dst):
    """Point dst at src's content atomically (a hard link where possible, so deleting src keeps dst)."""
    atomic.link_or_copy(src, dst)


class HashingReader:
    """A binary file read through, hashing every byte handed out (read, readline, readinto): the digest is that of
    the bytes that were parsed, not of a second read of a file that may have changed meanwhile."""

    def __init__(self, f):
        self.f, self.digest = f, hashlib.sha256()

    def read(self, n=-1):
        data = self.f.read(n)
        self.digest.update(data)
        return data

    def readline(self, n=-1):
        data = self.f.readline(n)
        self.digest.update(data)
        return data

    def readinto(self, buffer):
        n = self.f.readinto(buffer)
        self.digest.update(memoryview(buffer)[:n])
        return n

    def hexdigest(self):
        """The sha256 of the whole file: what was read, then the rest (a pickle's reader stops at its end mark)."""
        for block in iter(lambda: self.f.read(1 << 20), b""):
            self.digest.update(block)
        return self.digest.hexdigest()


def sha256_of(f):
    """Hex sha256 of an open binary file, read from its start; leaves it at the start again."""
    digest = HashingReader(f).hexdigest()
    f.seek(0)
    return digest


def check_sha256(reader, path, sha256):
    """UserError unless the file `reader` (a HashingReader) went through has the hex digest `sha256`."""
    got = reader.hexdigest()
    if got != sha256.strip().lower():
        raise UserError(f"{path}: sha256 is {got}, not the expected {sha256}; refusing a file that is "
                        "not the one published")


def open_weights(path, what="weights file"):
    """`path` opened for reading, or a UserError saying why not: missing, a folder, a FIFO, unreadable."""
    try:
        return open_regular(path)
    except FileNotFoundError:
        raise UserError(f"{what} not found: {path}") from None
    except NotRegular as e:
        raise UserError(f"{what} {path} is {e.kind}, not a file") from None
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None


def read_safetensors(f, path):
    """{name: numpy array} of a .safetensors file (a JSON header and raw bytes: nothing in it can run).

    numpy has no bfloat16: a file holding one is refused (convert it to float32) rather than guessed at.
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load
    try:
        return load(f.read())
    except (SafetensorError, ValueError, TypeError, KeyError) as e:
        if "BF16" in str(e) or "bfloat16" in str(e).lower():
            raise UserError(f"{path} holds bfloat16 tensors, which are not read here (numpy has no bfloat16); "
                            "save the weights as float32") from None
        raise UserError(f"cannot read {path} as safetensors ({type(e).__name__}: {e})") from None


def load_file(path, sha256=None):
    """The content of a weights file (.pdparams or .safetensors) or training checkpoint (.pdckpt).

    Never runs anything the file says (see safe_load). sha256: the hex digest the file must have, checked on the
    very bytes parsed (the file is read once); a file that fails it is refused whatever it holds.
    """
    with open_weights(path) as f:
        reader = HashingReader(f) if sha256 else f
        try:
            content = (read_safetensors if path.endswith(".safetensors") else load_paddle_file)(reader, path)
        except UserError:
            if sha256:  # a damaged or substituted download: the digest is the clearer message
                check_sha256(reader, path, sha256)
            raise
        if sha256:
            check_sha256(reader, path, sha256)
        return content


def refuse_nonfinite(state, source):
    """A UserError naming every tensor of `state` holding NaN or inf (weights like that predict nonsense)."""
    bad = []
    for k, v in state.items():
        if isinstance(v, paddle.Tensor):
            v = v.astype("float32") if v.dtype in (paddle.float16, paddle.bfloat16) else v
            v = v.numpy()
        v = np.asarray(v)
        if v.dtype.kind == "f":
            n = int(v.size - np.count_nonzero(np.isfinite(v)))
            if n:
                bad.append(f"{k} ({n} of {v.size})")
    if bad:
        raise UserError(f"{source} holds non-finite (NaN/inf) weights in {len(bad)} tensor(s): "
                        f"{', '.join(bad[:8])}{' ...' if len(bad) > 8 else ''}; refusing to load them")


def weights_from(obj, path, prefer="best"):
    """The model state dict inside a loaded file: a bare state dict, or a training checkpoint's model/EMA.

    prefer: 'model', 'ema', or 'best' (whichever the checkpoint recorded as the better one).
    """
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        which = obj.get("best_which", "model") if prefer == "best" else prefer
        if which == "ema" and not obj.get("ema"):
            raise UserError(f"{path} holds no EMA weights")
        return obj["ema" if which == "ema" else "model"], which
    if isinstance(obj, dict) and obj and all(hasattr(v, "shape") for v in obj.values()):
        return obj, "weights"
    raise UserError(f"{path} is neither a weights file nor a training checkpoint of this repo")


# Casts that lose nothing: a half-precision file into a float32 model; and float32 into a model that holds half
# precision weights itself (AMP O2), which paddle.amp.decorate rounds the same way. Any other dtype is refused.
EXACT_CASTS = {("float16", "float32"), ("bfloat16", "float32"), ("float32", "float16"), ("float32", "bfloat16")}


def dtype_name(tensor):
    """'float32', 'bfloat16', ... of a paddle Tensor or numpy array (Paddle 2.6 and 3.x spell theirs alike)."""
    if isinstance(tensor, paddle.Tensor):
        return str(tensor.dtype).replace("paddle.", "")
    return np.asarray(tensor).dtype.name


def match_state_dict(model, state, source, drop_head=False, new_head=False):
    """Check `state` against `model` by name, shape and dtype; return the dict to load.

    The fixed sinusoid position table is taken from the model when the token count differs (it is a
    function of img_size, not learned). With drop_head, a classifier of another class count is left out
    (reported) so the model keeps its fresh head for fine-tuning; new_head leaves out one of the same count
    too (its classes are other ones: Global.reset_head). Anything else that does not fit is a UserError
    listing every missing, unexpected and mis-shaped key. A tensor of another dtype is cast where that is
    exact (EXACT_CASTS: float16 -> float32, reported) and refused in one line otherwise (float64, integers).
    """
    own = model.state_dict()
    out, notes = {}, []
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    misshaped, not_tensors = [], []
    for k, v in state.items():
        if k not in own:
            continue
        if not isinstance(v, (paddle.Tensor, np.ndarray)):
            not_tensors.append(f"{k} ({type(v).__name__})")
            continue
        want, got = list(own[k].shape), list(v.shape)
        if new_head and k.startswith("head."):
            notes.append(f"{k} {got} dropped: re-initialised for {model.num_classes} new classes (reset_head)")
        elif want == got:
            out[k] = v
        elif k == "pos_embed":
            notes.append(f"pos_embed {got} -> {want}: regenerated for this img_size")
        elif drop_head and k.startswith("head."):
            notes.append(f"{k} {got} dropped: re-initialised for {model.num_classes} classes")
        else:
            misshaped.append(f"{k} (file {got}, model {want})")
    # A headless model (num_classes=0) and a headless file are fine for fine-tuning too: nothing to re-make.
    headless = [k for k in missing + unexpected if drop_head and k.startswith("head.")]
    if headless:
        notes.append(f"{', '.join(headless)}: not in {'the file' if headless[0] in own else 'the model'}, "
                     f"{'initialised fresh' if headless[0] in own else 'left out'}")
    missing = [k for k in missing if k not in headless]
    unexpected = [k for k in unexpected if k not in headless]
    if missing or unexpected or misshaped or not_tensors:
        parts = [f"{name}: {_listed(keys)}" for name, keys in (("missing", missing), ("unexpected", unexpected),
                                                                ("mis-shaped", misshaped), ("not tensors", not_tensors))
                 if keys]
        raise UserError(f"{source} does not fit model {type(model).__name__}"
                        f"({getattr(model, 'arch_name', '')}): {'; '.join(parts)}")
    return _cast_exactly(out, own, source, notes), notes


def _listed(keys):
    return f"{', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}"


def _cast_exactly(state, own, source, notes):
    """state with each tensor in its model tensor's dtype where EXACT_CASTS allows it (noted); else a UserError
    naming the keys and dtypes."""
    casts, refused = {}, {}
    for k, v in state.items():
        pair = dtype_name(v), dtype_name(own[k])
        if pair[0] != pair[1]:
            (casts if pair in EXACT_CASTS else refused).setdefault(pair, []).append(k)
    if refused:
        raise UserError(f"{source} holds tensors of a dtype the model does not take: " + "; ".join(
            f"{got} where the model has {want} ({_listed(keys)})" for (got, want), keys in refused.items())
            + "; only float16 / bfloat16 -> float32 convert exactly: save the weights as float32")
    for (got, want), keys in casts.items():
        for k in keys:
            v = state[k]
            state[k] = (v if isinstance(v, paddle.Tensor) else paddle.to_tensor(v)).astype(want)
        notes.append(f"{len(keys)} {got} tensor(s) cast to the model's {want} (exact)")
    return state


def set_checked(model, state, source, drop_head=False, new_head=False):
    """Load `state` into model after checking its names, shapes, dtypes and values; returns what was adapted."""
    state, notes = match_state_dict(model, state, source, drop_head=drop_head, new_head=new_head)
    refuse_nonfinite(state, source)
    model.set_state_dict({k: paddle.to_tensor(v) if isinstance(v, np.ndarray) else v for k, v in state.items()})
    return notes


def load_weights(model, path, prefer="best", drop_head=False, loaded=None, sha256=None, new_head=False):
    """Load a weights file or training checkpoint (or its already `loaded` content) into model.

    drop_head and new_head: as match_state_dict takes them.

    Returns (which, notes): which weights were taken ('model', 'ema' or 'weights') and what was adapted.
    """
    state, which = weights_from(load_file(path, sha256) if loaded is None else loaded, path, prefer)
    return which, set_checked(model, state, path, drop_head=drop_head, new_head=new_head)


PROGRESS_KEYS = ("epoch", "step", "best", "skips")
# A counter past these is no run's: ten million epochs or optimizer steps in an epoch.
MAX_COUNT = 10_000_000


def checked_progress(state, path):
    """The progress {epoch, step, best, skips} of training checkpoint `state`, each field checked (a whole number
    in range; best = {acc: a finite number, which: model | ema, epoch: -1 or more}), with 'model' and 'optimizer'
    dicts; else a UserError naming the field, so a crafted or damaged checkpoint never reaches the loop."""
    def count(v, low=0):
        return isinstance(v, int) and not isinstance(v, bool) and low <= v < MAX_COUNT

    if not isinstance(state, dict):
        raise UserError(f"{path} holds a {type(state).__name__}, not a training checkpoint")
    best = state.get("best")
    checks = [("model", isinstance(state.get("model"), dict), "a dict of tensors"),
              ("optimizer", isinstance(state.get("optimizer"), dict), "a dict"),
              ("epoch", count(state.get("epoch")), f"a whole number in [0, {MAX_COUNT:,})"),
              ("step", count(state.get("step")), f"a whole number in [0, {MAX_COUNT:,})"),
              ("skips", count(state.get("skips")), f"a whole number in [0, {MAX_COUNT:,})"),
              ("best", isinstance(best, dict), "a dict {acc, which, epoch}")]
    if isinstance(best, dict):
        acc = best.get("acc")
        checks += [("best.acc", isinstance(acc, (int, float)) and not isinstance(acc, bool) and math.isfinite(acc),
                    "a finite number"),
                   ("best.which", best.get("which") in ("model", "ema"), "model or ema"),
                   ("best.epoch", count(best.get("epoch"), low=-1), f"a whole number in [-1, {MAX_COUNT:,})")]
    for field, ok, want in checks:
        if not ok:
            value = state.get(field) if "." not in field else best.get(field.split(".")[1])
            shown = "missing" if value is None else f"{type(value).__name__} {value!r:.60}"
            raise UserError(f"{path}: the checkpoint's {field} is {shown}, not {want}: not a checkpoint this "
                            "repo wrote; resume from another one, or start afresh in another Global.output_dir")
    return {k: state[k] for k in PROGRESS_KEYS}


def training_state(model, optimizer, ema, scaler, progress, arch, global_batch, img_size, class_names, config,
                   run_id=None):
    """A training checkpoint (.pdckpt): the one place its layout is written (read by restore_training and
    weights_from). progress: epoch and step reached, best {acc, which, epoch}, skipped steps; run: the id of
    the run that wrote it."""
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "ema": ema.state_dict() if ema else {}, "scaler": scaler.state_dict() if scaler else {},
            **{k: progress[k] for k in PROGRESS_KEYS}, "best_which": progress["best"]["which"],
            "arch": arch, "global_batch": global_batch, "img_size": img_size, "class_names": list(class_names),
            "config": config, "run": run_id or ""}


def run_fit(config):
    """The settings a run can only continue under: they decide tensor shapes, the schedule or the data order."""
    flat = flatten(config)
    return {k: flat[k] for k in FIXED}


def restore_training(state, path, model, optimizer, ema=None, scaler=None, config=None):
    """Load a training checkpoint into the run's parts; returns its progress {epoch, step, best, skips}.

    config: this run's config as a dict. A checkpoint saved under other shape-, schedule- or order-deciding
    settings (run_fit) is refused with one line listing them all; its tensors then load strictly. (Whether the
    checkpoint is this run's at all is CheckpointDir.resume_from's question, asked before anything is built.)
    """
    progress = checked_progress(state, path)
    saved = state.get("config") if isinstance(state.get("config"), dict) else None
    try:
        recorded = run_fit(saved)
    except (KeyError, AttributeError):  # a checkpoint without its config: the fields training_state always writes
        recorded = {"Global.model": state.get("arch"), "Global.img_size": state.get("img_size"),
                    "Data.global_batch_size": state.get("global_batch")}
    wanted = run_fit(config)
    differ = [f"{k} (checkpoint {recorded[k]}, config {wanted[k]})" for k in recorded
              if not same(k, recorded[k], wanted[k])]
    if differ:
        raise UserError(f"{path} does not fit this config, which differs in {', '.join(differ)}; resume it with "
                        "its own settings, or start afresh in another Global.output_dir")
    set_checked(model, state["model"], f"{path} (model)")
    if ema and state.get("ema"):
        set_checked(ema.module, state["ema"], f"{path} (ema)")
    optimizer.set_state_dict(state["optimizer"])
    if scaler and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    return progress


class RunComplete(Exception):
    """The run to resume has trained every epoch of its config: nothing to train (train.py exits with 0)."""


class CheckpointDir:
    """The checkpoints of one run: ckpt-eEEEE-sSSSSSS.pdckpt, latest.pdckpt and best.pdckpt.

    latest and best are links to complete files only, so `latest` always names a checkpoint that was fully
    written; the oldest periodic ones beyond keep_last are deleted, never best.
    """

    def __init__(self, root, keep_last=3):
        self.root = root
        self.keep_last = keep_last
        self.latest = os.path.join(root, "latest.pdckpt")
        self.best = os.path.join(root, "best.pdckpt")

    def remove_stale_temporaries(self):
        """Half-written files of a process that was killed while saving: call it holding the folder's lock
        (runlock.py), so that no live run owns them. Old (NAME.tmpPID) and new (mkstemp) names alike."""
        for tmp in glob.glob(os.path.join(self.root, "*.pdckpt" + atomic.TEMP_MARK + "*")):
            try:
                os.remove(tmp)
            except OSError as e:
                raise StorageError(tmp, e) from None

    def save(self, state, epoch, step, is_best=False):
        """Write the checkpoint of (epoch, step); an OSError becomes a StorageError naming the file."""
        path = target = self.path(epoch, step)
        try:
            atomic_save(state, path)
            for target in [self.latest] + ([self.best] if is_best else []):
                atomic_link(path, target)
            target = self.root
            self._prune()
        except OSError as e:
            raise StorageError(target, e) from None
        return path

    def path(self, epoch, step):
        return os.path.join(self.root, f"ckpt-e{epoch:04d}-s{step:06d}.pdckpt")

    def newest(self):
        """'latest.pdckpt (= ckpt-....pdckpt)': the newest complete checkpoint, or 'none yet'."""
        if not os.path.isfile(self.latest):
            return "none yet"
        twins = [p for p in self._periodic() if os.path.samefile(p, self.latest)]
        return self.latest + (f" (= {os.path.basename(twins[0])})" if twins else "")

    def _periodic(self):
        """The periodic checkpoints, oldest first: by (epoch, step) as numbers, whatever their digit count."""
        found = []
        for p in glob.glob(os.path.join(self.root, "ckpt-e*.pdckpt")):
            m = CKPT_PATTERN.match(os.path.basename(p))
            if m:
                found.append(((int(m.group(1)), int(m.group(2))), p))
        return [p for _, p in sorted(found)]

    def _prune(self):
        periodic = self._periodic()
        for old in periodic[:-self.keep_last] if self.keep_last > 0 else periodic:
            if not os.path.samefile(old, self.latest):
                os.remove(old)

    def _files(self):
        """The folder's checkpoint files, newest first: latest, the periodic ones, best."""
        return [p for p in [self.latest] + self._periodic()[::-1] + [self.best] if os.path.isfile(p)]

    def resume_from(self, resume, warn, config=None, class_names=None, accept_changes=False):
        """(path, loaded checkpoint) to resume from, or (None, None) to start afresh: Global.resume = 'auto' | '' |
        a path. Call it before anything is written; it asks no other process, so with several, rank 0 can decide
        and hand the path to the others (which load it and restore; RunComplete and errors end them all).

        'auto' takes the newest readable checkpoint of the folder: latest.pdckpt, else (saying why through `warn`)
        the newest periodic one, then best.pdckpt; a folder without any starts afresh. A fresh start ('') or a
        checkpoint from elsewhere never writes over a folder that holds checkpoints: that is an error.

        With config (this run's, a dict) and class_names, the checkpoint must be a run of this experiment
        (run_identity.py): a difference in an identity key is an error listing each, unless accept_changes (the
        trainer then records them); the model, sizes, global batch and class names never change. A checkpoint
        that has trained all of config's epochs raises RunComplete.
        """
        files = self._files()
        if resume == "":
            if files:
                raise UserError(f"Global.resume is '' (start afresh), but {self.root} holds a run's checkpoints "
                                f"({self._names(files)}), which a fresh start would overwrite; continue that run "
                                "(Global.resume=auto), or train in a new Global.output_dir")
            return None, None
        if resume == "auto":
            if not files:
                return None, None
            path, state = self._newest_readable(files, warn)
        else:
            if not os.path.isfile(resume):
                raise UserError(f"Global.resume: no checkpoint at {resume}")
            if files and not os.path.samefile(os.path.dirname(os.path.abspath(resume)), self.root):
                raise UserError(f"Global.resume {resume}: {self.root} holds another run's checkpoints "
                                f"({self._names(files)}), which resuming into it would overwrite; continue {resume} "
                                "in a new Global.output_dir, or the folder's own run with Global.resume=auto")
            path, state = resume, self._read(resume)
        if config is not None:
            self._check_same_run(path, state, config, class_names, accept_changes, warn)
            epoch, epochs = state["epoch"], config["Global"]["epochs"]
            if isinstance(epoch, int) and epoch >= epochs:
                raise RunComplete(f"{path} has trained all {epochs} epochs of its run: nothing to train. Its best: "
                                  f"{self._best_of(path, state)}; to train again, use a new Global.output_dir")
        return path, state

    @staticmethod
    def _names(files):
        names = [os.path.basename(p) for p in files]
        return ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")

    @staticmethod
    def _read(path):
        state = load_file(path)
        if not (isinstance(state, dict) and {"model", "optimizer", "epoch", "step"} <= set(state)):
            raise UserError(f"{path} is not a training checkpoint")
        return state

    def _newest_readable(self, files, warn):
        skipped = [] if os.path.isfile(self.latest) else [f"{self.latest} does not exist"]
        for path in files:
            try:
                state = self._read(path)
            except UserError as e:
                skipped.append(str(e))
                continue
            if skipped:
                warn(f"warning: {'; '.join(skipped)}; resuming from {path}, the newest readable checkpoint")
            return path, state
        raise UserError(f"Global.resume=auto: no readable checkpoint in {self.root} ({'; '.join(skipped)}). "
                        "Pass --resume PATH, or move the folder away to start afresh")

    @staticmethod
    def _check_same_run(path, state, config, class_names, accept_changes, warn):
        recorded = state.get("config")
        if not isinstance(recorded, dict):
            warn(f"warning: {path} records no config (an older version wrote it): only its model, img_size and "
                 "global batch are checked against this run's")
            return
        differ = differences(recorded, config)
        recorded_names = state.get("class_names") if isinstance(state.get("class_names"), (list, tuple)) else []
        classes = class_difference(recorded_names, class_names) if class_names is not None else ""
        fixed = [f"{k} (checkpoint {shown(a)}, config {shown(b)})" for k, a, b in differ if k in FIXED]
        other = [f"{k} (checkpoint {shown(a)}, config {shown(b)})" for k, a, b in differ if k not in FIXED]
        other += [classes] * bool(classes)
        if fixed:
            what = f"{path} does not fit this config, which differs in {', '.join(fixed)}" + \
                (f"; it also differs in {', '.join(other)}" if other else "")
        else:
            what = f"{path} is a run of another experiment: this config differs in {', '.join(other)}"
        if fixed or classes:
            raise UserError(f"{what}; a run keeps its {', '.join(FIXED)} and {CLASS_NAMES}: train this config "
                            "in a new Global.output_dir")
        if differ and not accept_changes:
            raise UserError(f"{what}; train this config in a new Global.output_dir, or continue that run with these "
                            "changes by adding --accept-changes (each is recorded in train.log and metrics.jsonl)")

    @staticmethod
    def _best_of(path, state):
        best = os.path.join(os.path.dirname(path), "best.pdckpt")
        record = state.get("best") if isinstance(state.get("best"), dict) else {}
        acc = record.get("acc")
        return (f"{best if os.path.isfile(best) else 'best.pdckpt is missing'} (top1 "
                f"{f'{acc:.4f}' if isinstance(acc, float) else acc}, {record.get('which')} weights, epoch "
                f"{record.get('epoch')})")
