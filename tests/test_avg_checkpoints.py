"""tools/avg_checkpoints.py: the mean of a run's last or best checkpoints (model or EMA weights), written as
.safetensors or .pdparams with its inputs recorded; checkpoints of different models are refused."""
import json
import os
import re
import shutil

import numpy as np
import paddle
import pytest

import t2tvit
from runner import error_lines, fast_overrides, run_main
from t2tvit import artifact, config
from t2tvit.checkpoint import atomic_save, load_file, sha256_of, training_state
from t2tvit.dataset import imagenet_names
from t2tvit.ema import ModelEMA
from t2tvit.optim import build_optimizer
from t2tvit.t2t import create_model

# model and EMA val top-1 recorded at epochs 1, 2, 3: the best two are epochs 1 and 3 for the model, 2 and 3 for
# the EMA, and the last two epochs 2 and 3
TOP1 = {"model": {1: 0.7, 2: 0.5, 3: 0.6}, "ema": {1: 0.1, 2: 0.3, 3: 0.2}}


def make_run(folder, epochs=(1, 2, 3), arch="t2t_vit_7", img_size=32, classes=1000, run="run-1", names=None,
             overrides=()):
    """A run folder of end-of-epoch checkpoints (random weights per epoch, EMA weights different again) written as
    training writes them, its metrics.jsonl, and {epoch: (model state, EMA state)} as numpy."""
    cfg = config.load_config(config.SCHEMA_PATH, [f"Global.model={arch}", f"Global.img_size={img_size}",
                                                   f"Global.num_classes={classes}",
                                                   f"Global.log_dir={folder / 'log'}",
                                                   f"Global.output_dir={folder / 'out'}", *overrides])
    os.makedirs(folder / "out", exist_ok=True)
    os.makedirs(folder / "log", exist_ok=True)
    states = {}
    for epoch in epochs:
        paddle.seed(epoch)
        model = create_model(arch, img_size=img_size, num_classes=classes)
        ema = ModelEMA(model, 0.9)
        paddle.seed(100 + epoch)
        ema.set_state_dict(create_model(arch, img_size=img_size, num_classes=classes).state_dict())
        state = training_state(model, build_optimizer(model, cfg), ema, None,
                               {"epoch": epoch, "step": 0, "best": {"acc": 0.7, "which": "model", "epoch": 1},
                                "skips": 0}, arch, 4, img_size, names or [f"c{i}" for i in range(classes)],
                               cfg.to_dict(), run)
        atomic_save(state, str(folder / "out" / f"ckpt-e{epoch:04d}-s000000.pdckpt"))
        states[epoch] = tuple({k: v.numpy() for k, v in s.items()} for s in (state["model"], state["ema"]))
    with open(folder / "log" / "metrics.jsonl", "w") as f:
        for epoch in epochs:
            for which in ("model", "ema"):
                f.write(json.dumps({"kind": "val", "epoch": epoch, "model": which, "top1": TOP1[which][epoch],
                                    "top5": 1.0, "images": 20, "run": run}) + "\n")
    return folder / "out", states


def mean(states, epochs, which):
    k = 0 if which == "model" else 1
    return {name: ((states[epochs[0]][k][name].astype(np.float64) + states[epochs[1]][k][name].astype(np.float64))
                   / 2).astype(np.float32) for name in states[epochs[0]][k]}


def average(*args):
    return run_main("avg_checkpoints.py", *map(str, args), config=None)


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("run"))


@pytest.mark.parametrize("flags,epochs,which", [([], (2, 3), "model"), (["--best"], (1, 3), "model"),
                                                (["--ema"], (2, 3), "ema"), (["--best", "--ema"], (2, 3), "ema")])
def test_the_average_of_two_checkpoints_is_their_element_wise_mean(tmp_path, run_folder, flags, epochs, which):
    out, states = run_folder
    path = tmp_path / "avg.safetensors"
    r = average("--input", out, "-n", 2, *flags, "--output", path)
    assert r.returncode == 0, r.stderr
    got = load_file(str(path))
    want = mean(states, epochs, which)
    assert sorted(got) == sorted(want)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    from safetensors import safe_open
    with safe_open(str(path), framework="numpy") as f:
        meta = f.metadata()
    inputs = json.loads(meta["inputs"])
    ordered = sorted(epochs, key=lambda e: -TOP1[which][e]) if "--best" in flags else list(epochs)
    assert [i["epoch"] for i in inputs] == ordered
    for i in inputs:
        with open(i["file"], "rb") as f:
            assert i["sha256"] == sha256_of(f)
        assert i["sha256"] in r.stdout
    assert (meta["Global.model"], meta["Global.img_size"], meta["which"]) == ('"t2t_vit_7"', "32", which)
    assert len(json.loads(meta["class_names"])) == 1000


def test_a_pdparams_average_is_a_plain_state_dict_with_its_record_beside_it(tmp_path, run_folder):
    out, states = run_folder
    path = tmp_path / "avg.pdparams"
    r = average("--input", out, "-n", 2, "--output", path)
    assert r.returncode == 0, r.stderr
    got = load_file(str(path))
    for name, value in mean(states, (2, 3), "model").items():
        np.testing.assert_array_equal(got[name].numpy(), value, err_msg=name)
    record = json.loads((tmp_path / "avg.pdparams.json").read_text())
    assert [i["epoch"] for i in json.loads(record["inputs"])] == [2, 3]


@pytest.mark.slow
def test_the_averaged_file_evaluates_through_val(tmp_path):
    # a run of ImageNet's classes: the averaged file states them (its header), and val.py refuses weights whose
    # classes are not those of the validation set (lit_data's are ImageNet's)
    out, _ = make_run(tmp_path / "run", names=imagenet_names())
    path = tmp_path / "avg.safetensors"
    assert average("--input", out, "-n", 3, "--output", path).returncode == 0
    r = run_main("val.py", "--weights", path, *fast_overrides(tmp_path, **{"Global.num_classes": 1000}))
    assert r.returncode == 0, r.stderr
    assert "ImageNet final val acc is:" in r.stdout and "images: 20" in r.stdout


def test_best_averages_a_copied_best_pdckpt_once_not_beside_its_own_periodic_checkpoint(tmp_path):
    # best.pdckpt is a hard link to a periodic checkpoint, or a copy where links fail (atomic.link_or_copy) and
    # after `cp -r` / rsync of the run: a copy must not count that checkpoint twice
    out, states = make_run(tmp_path, epochs=(1, 2, 3))
    shutil.copyfile(out / "ckpt-e0001-s000000.pdckpt", out / "best.pdckpt")  # epoch 1: the model's best (0.7)
    path = tmp_path / "avg.safetensors"
    r = average("--input", out, "-n", 2, "--best", "--output", path)
    assert r.returncode == 0, r.stderr
    assert "best.pdckpt" not in r.stdout
    got = load_file(str(path))
    for name, value in mean(states, (1, 3), "model").items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)


def test_the_averaged_file_says_its_model_size_classes_and_preprocessing_as_the_tools_read_them(tmp_path):
    # a 48 px, 3-class run evaluated with crop_pct 1.0: the tools take all of it from the averaged file, as from
    # its checkpoints (were it only in fields they do not read, they would run it at the config's 224 px)
    names = ["ant", "bee", "cow"]
    out, _ = make_run(tmp_path / "run", epochs=(1, 2), img_size=48, classes=3, names=names,
                      overrides=["Data.crop_pct=1.0"])
    path = tmp_path / "avg.safetensors"
    assert average("--input", out, "-n", 2, "--output", path).returncode == 0
    _, art = artifact.read_weights(str(path))
    assert {k: art.settings.get(k) for k in ("Global.model", "Global.img_size", "Global.num_classes",
                                              "Data.crop_pct")} == {"Global.model": "t2t_vit_7",
                                                                    "Global.img_size": 48, "Global.num_classes": 3,
                                                                    "Data.crop_pct": 1.0}
    assert art.class_names == names
    model = t2tvit.create_model("t2t_vit_7", pretrained=str(path))
    assert (model.img_size, model.num_classes, model.pretrained_cfg["label_names"]) == ((48, 48), 3, names)
    assert model.pretrained_cfg["crop_pct"] == 1.0 and model.pretrained_notes == []


def test_checkpoints_of_different_models_sizes_or_classes_are_refused_in_one_line(tmp_path):
    out, _ = make_run(tmp_path / "a", epochs=(1,))
    other, _ = make_run(tmp_path / "b", epochs=(2,), img_size=48, classes=10)
    os.replace(other / "ckpt-e0002-s000000.pdckpt", out / "ckpt-e0002-s000000.pdckpt")
    r = average("--input", out, "-n", 2, "--output", tmp_path / "x.safetensors")
    assert r.returncode == 2 and len(error_lines(r)) == 1
    assert "differ in img_size (ckpt-e0001-s000000.pdckpt: 32, ckpt-e0002-s000000.pdckpt: 48); class_names " \
           "(ckpt-e0001-s000000.pdckpt: 1000 classes c0, c1, c2 ..." in r.stderr
    assert not (tmp_path / "x.safetensors").exists()


def test_checkpoints_evaluated_with_other_preprocessing_are_refused_in_one_line(tmp_path):
    out, _ = make_run(tmp_path / "a", epochs=(1,))
    other, _ = make_run(tmp_path / "b", epochs=(2,), overrides=["Data.crop_pct=1.0"])
    os.replace(other / "ckpt-e0002-s000000.pdckpt", out / "ckpt-e0002-s000000.pdckpt")
    r = average("--input", out, "-n", 2, "--output", tmp_path / "x.safetensors")
    assert r.returncode == 2 and len(error_lines(r)) == 1
    assert "differ in Data.crop_pct (ckpt-e0001-s000000.pdckpt: 0.9, ckpt-e0002-s000000.pdckpt: 1.0)" in r.stderr
    assert not (tmp_path / "x.safetensors").exists()


@pytest.mark.parametrize("args,message", [
    (["-n", 4], "-n 4: .* holds 3 checkpoint"),
    (["-n", 0], "average at least one"),
    (["-n", 2, "--best", "--metrics", "nowhere.jsonl"], "nowhere.jsonl does not exist"),
    (["-n", 2, "--output", "x.pt"], r"name a \.safetensors or \.pdparams file"),
])
def test_what_cannot_be_averaged_is_one_error_line(tmp_path, run_folder, args, message):
    out, _ = run_folder
    if "--output" not in args:
        args = args + ["--output", tmp_path / "x.safetensors"]
    r = average("--input", out, *args)
    assert r.returncode == 2 and len(error_lines(r)) == 1
    assert re.search(message, r.stderr), r.stderr


def test_best_counts_only_checkpoints_with_a_validation_of_their_own(tmp_path):
    out, _ = make_run(tmp_path, epochs=(1, 2))
    lines = (tmp_path / "log" / "metrics.jsonl").read_text().splitlines()
    (tmp_path / "log" / "metrics.jsonl").write_text("\n".join(lines[:2]) + "\n")  # epoch 2 never validated
    r = average("--input", out, "-n", 2, "--best", "--output", tmp_path / "x.safetensors")
    assert r.returncode == 2 and "only 1 of the checkpoints" in r.stderr and "none for ckpt-e0002" in r.stderr
    r = average("--input", out, "-n", 1, "--best", "--output", tmp_path / "x.safetensors")
    assert r.returncode == 0 and "ckpt-e0001" in r.stdout and "ckpt-e0002" not in r.stdout
