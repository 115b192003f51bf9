"""The mean of a run's checkpoints (tools/avg_checkpoints.py; timm's avg_checkpoints.py): which ones, their mean,
and the weights file it is written to.

Candidates are the run's periodic checkpoints (ckpt-eEEEE-sSSSSSS.pdckpt) and, for --best, best.pdckpt when it is
none of them (by content: a copy of one is the same candidate). The last N are the newest by (epoch, step); the N
best are ranked by the validation top-1 the run recorded for the weights averaged (model or EMA) at the
checkpoint's epoch, in its metrics.jsonl (a checkpoint records only the best so far, not its own accuracy); a
checkpoint saved mid-epoch, or at an epoch that was not validated, has none. All inputs must be of one model,
size, class list and eval preprocessing, which the averaged file states as a checkpoint does (so every tool runs
it as its run was evaluated); the mean is taken in float64 and stored in float32, as timm does. Each input is
read twice (once to choose, once to add), never all at once.
"""
import glob
import io
import json
import os

import numpy as np
import paddle

from . import artifact, atomic
from .checkpoint import CKPT_PATTERN, load_file, refuse_nonfinite, sha256_of, weights_from
from .errors import UserError, shown
from .runtime import read_metrics

MODEL_FIELDS = ("arch", "img_size", "class_names")  # a training checkpoint's own fields
# What every averaged checkpoint must share: the model, and the eval preprocessing the averaged file states.
IDENTITY = MODEL_FIELDS + artifact.EVAL_KEYS
FORMATS = (".safetensors", ".pdparams")


def candidates(folder, with_best):
    """The run's periodic checkpoints in (epoch, step) order, then best.pdckpt if with_best and it is none of them."""
    if not os.path.isdir(folder):
        raise UserError(f"--input {shown(folder)}: not a folder (give a run's Global.output_dir)")
    found = sorted(p for p in glob.glob(os.path.join(folder, "ckpt-e*.pdckpt"))
                   if CKPT_PATTERN.match(os.path.basename(p)))
    best = os.path.join(folder, "best.pdckpt")
    if with_best and os.path.isfile(best) and not any(os.path.samefile(best, p) for p in found):
        found.append(best)
    return found


def _sha256(path):
    with open(path, "rb") as f:
        return sha256_of(f)


def describe(path, which):
    """What selecting needs of one checkpoint (identity, epoch, step, run, sha256, log folder), tensors dropped."""
    state = load_file(path)
    if not isinstance(state, dict) or not {"model", "epoch", "step", *MODEL_FIELDS} <= set(state):
        raise UserError(f"{shown(path)} is not a training checkpoint of this repo")
    weights, _ = weights_from(state, path, which)  # no EMA weights in it: said here, before anything is averaged
    settings, _, _ = artifact.checkpoint_says(state, weights, path)
    size = state["img_size"]
    config = state.get("config") if isinstance(state.get("config"), dict) else {}
    return {"file": path, "sha256": _sha256(path), "epoch": int(state["epoch"]), "step": int(state["step"]),
            "run": state.get("run") or "", "arch": state["arch"],
            "img_size": list(size) if isinstance(size, (list, tuple)) else size,
            "class_names": list(state["class_names"]), "log_dir": config.get("Global", {}).get("log_dir") or "",
            **{key: settings[key] for key in artifact.EVAL_KEYS if key in settings}}


def check_one_model(inputs):
    """One line naming every identity field in which the inputs differ (they would not average to a model)."""
    def value(i, key):
        names = i["class_names"]
        if key == "class_names":
            return f"{len(names)} classes {', '.join(map(str, names[:3]))}{' ...' if len(names) > 3 else ''}"
        return i.get(key)

    differ = []
    for key in IDENTITY:
        if len({json.dumps(i.get(key)) for i in inputs}) > 1:
            each = ", ".join(f"{os.path.basename(i['file'])}: {value(i, key)}" for i in inputs)
            differ.append(f"{key} ({each})")
    if differ:
        raise UserError(f"cannot average checkpoints of different models: they differ in {'; '.join(differ)}")


def recorded_top1(inputs, which, metrics):
    """Each input's validation top-1 (of `which` weights) from metrics.jsonl: that of its run at its epoch, the
    last such record; None where there is none (mid-epoch, or an epoch not validated)."""
    records = read_metrics(metrics, "val")
    for i in inputs:
        mine = [r for r in records if r.get("model") == which and r.get("epoch") == i["epoch"] and
                (not i["run"] or not r.get("run") or r["run"] == i["run"])]
        i["top1"] = mine[-1]["top1"] if i["step"] == 0 and mine else None
    return inputs


def metrics_file(inputs, given):
    """--metrics, else the metrics.jsonl of the log folder the checkpoints recorded (Global.log_dir)."""
    path = given or os.path.join(inputs[0]["log_dir"], "metrics.jsonl")
    if not os.path.isfile(path):
        raise UserError(f"--best ranks checkpoints by the validation top-1 of the run's metrics.jsonl, and "
                        f"{shown(path)} does not exist: pass --metrics LOG_DIR/metrics.jsonl")
    return path


def select(folder, n, best, which, metrics=None):
    """The inputs (describe()'s dicts, with 'top1' under best) to average: the last n or the n best."""
    if n < 1:
        raise UserError(f"-n {n}: average at least one checkpoint")
    paths = candidates(folder, best)
    if len(paths) < n:
        raise UserError(f"-n {n}: {shown(folder)} holds {len(paths)} checkpoint(s) to choose from "
                        f"({', '.join(os.path.basename(p) for p in paths) or 'none'}); the run keeps the last "
                        "Global.keep_last periodic ones and best.pdckpt")
    if not best:
        inputs = [describe(p, which) for p in paths[-n:]]
    else:
        inputs = [describe(p, which) for p in paths]
        # best.pdckpt is a copy of its periodic checkpoint where hard links fail (atomic.link_or_copy) and after a
        # run folder is copied (cp -r, rsync): the same weights are one candidate, not two
        inputs = [i for k, i in enumerate(inputs) if all(i["sha256"] != j["sha256"] for j in inputs[:k])]
        check_one_model(inputs)
        recorded_top1(inputs, which, metrics_file(inputs, metrics))
        ranked = [i for i in inputs if i["top1"] is not None]
        if len(ranked) < n:
            missing = [os.path.basename(i["file"]) for i in inputs if i["top1"] is None]
            raise UserError(f"-n {n} --best: only {len(ranked)} of the checkpoints in {shown(folder)} have a "
                            f"recorded validation top-1 ({which}); none for {', '.join(missing)}")
        # the best first; among equals the newer, as the run's own best would be the first to reach it
        inputs = sorted(ranked, key=lambda i: (-i["top1"], -i["epoch"]))[:n]
    check_one_model(inputs)
    return inputs


def average(inputs, which):
    """{name: float32 mean} of the inputs' `which` weights (summed in float64), after checking names and shapes."""
    total, names = None, None
    for i in inputs:
        state, _ = weights_from(load_file(i["file"]), i["file"], which)
        refuse_nonfinite(state, i["file"])
        arrays = {k: np.asarray(v.numpy() if hasattr(v, "numpy") else v) for k, v in state.items()}
        shapes = {k: list(v.shape) for k, v in arrays.items()}
        if total is None:
            total, names = {k: v.astype(np.float64) for k, v in arrays.items()}, shapes
            continue
        if shapes != names:
            differ = sorted(set(shapes) ^ set(names)) + [k for k in shapes if k in names and shapes[k] != names[k]]
            raise UserError(f"{shown(i['file'])} does not fit {shown(inputs[0]['file'])}: "
                            f"{', '.join(differ[:8])}{' ...' if len(differ) > 8 else ''} differ")
        for k, v in arrays.items():
            total[k] += v
    info = np.finfo(np.float32)
    return {k: np.clip(v / len(inputs), info.min, info.max).astype(np.float32) for k, v in total.items()}


def metadata(inputs, which, best):
    """What the averaged file says of itself (strings: a safetensors header holds nothing else): what its
    checkpoints say, under the keys every tool reads (artifact.SAFETENSORS_KEYS), and where it comes from."""
    first = inputs[0]
    settings = {"Global.model": first["arch"], "Global.img_size": first["img_size"],
                "Global.num_classes": len(first["class_names"]),
                **{key: first[key] for key in artifact.EVAL_KEYS if key in first}, "class_names": first["class_names"]}
    sources = [{k: i[k] for k in ("file", "sha256", "epoch", "step", "top1") if k in i} for i in inputs]
    return {**{key: json.dumps(value) for key, value in settings.items()}, "which": which,
            "averaged": f"{'best' if best else 'last'} {len(inputs)}", "inputs": json.dumps(sources)}


def output_format(path):
    """.safetensors or .pdparams, from --output's name, or one line saying what is accepted."""
    ext = os.path.splitext(path)[1]
    if ext not in FORMATS:
        raise UserError(f"--output {shown(path)}: name a .safetensors or .pdparams file")
    return ext


def write(path, state, meta):
    """state -> path (.safetensors with `meta` in its header; .pdparams, a plain state dict, with `meta` beside it
    in PATH.json), each through atomic.py; returns path's sha256."""
    if output_format(path) == ".safetensors":
        from safetensors.numpy import save
        data = save({k: np.ascontiguousarray(v) for k, v in state.items()}, metadata=meta)
    else:
        buf = io.BytesIO()
        paddle.save({k: paddle.to_tensor(v) for k, v in state.items()}, buf)
        data = buf.getvalue()
        atomic.write_bytes(path + ".json", (json.dumps(meta, indent=2) + "\n").encode())
    atomic.write_bytes(path, data)
    return _sha256(path)
