"""A run is one experiment: a rerun resumes it only under its own config (or says why not, in one line), a finished
run is never resumed or overwritten, checkpoint names of any length sort by number, and a run shorter than its
EMA's horizon says so and keeps the better of model and EMA as best. Runs train in this process (run_main)."""
import contextlib
import os
import re
import shutil
import signal

import numpy as np
import paddle
import pytest
import yaml
from PIL import Image

from runner import ROOT, error_lines, fast_overrides, losses, run_main
from t2tvit.checkpoint import CheckpointDir, atomic_save, load_file
from t2tvit.config import SCHEMA_PATH, load_config
from t2tvit.ema import short_run_note
from t2tvit.run_identity import FIXED, IDENTITY, OPERATIONAL, differences
from t2tvit.runtime import MetricsFile, read_metrics

FINETUNE = os.path.join(ROOT, "config", "finetune_example.yaml")
SEED = {"Global.seed": 7}


@contextlib.contextmanager
def pytests_signal_handlers():
    """train.py's main() installs its SIGTERM/SIGINT handlers: give pytest its own back afterwards."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def train(folder, *extra, config=None, **overrides):
    """train.py in this process, with fast_overrides into folder/out and folder/log, its parameter names those of a
    new process (optimizer states are keyed by them), and pytest's signal handlers back afterwards."""
    args = fast_overrides(folder, **SEED, **overrides)
    with paddle.utils.unique_name.guard(), pytests_signal_handlers():
        return run_main("train.py", *args, *extra, **({"config": config} if config else {}))


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 3-epoch run on lit_data (15 steps of 4 images at 32 px); tests work on copies of it."""
    folder = tmp_path_factory.mktemp("finished")
    r = train(folder)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return folder


def copy_run(run, to, names=None):
    """A copy of a run's out/ (hard links: checkpoints are only ever replaced, never written in place; `names`: only
    those) and log/ (copied: logs are appended to)."""
    os.makedirs(to / "out")
    for name in names or os.listdir(run / "out"):
        os.link(run / "out" / name, to / "out" / name)
    shutil.copytree(run / "log", to / "log")
    return to


def snapshot(folder):
    """Every file under folder with its inode, size and modification time: what 'touched nothing' compares."""
    found = {}
    for dirpath, _, files in os.walk(folder):
        for name in files:
            st = os.stat(os.path.join(dirpath, name))
            found[os.path.relpath(os.path.join(dirpath, name), folder)] = (st.st_ino, st.st_size, st.st_mtime_ns)
    return found


def weights(path):
    return {k: v.numpy() for k, v in load_file(str(path))["model"].items()}


# --- which keys are the experiment -------------------------------------------------------------------------------

def test_every_key_of_default_yaml_is_classified_deliberately():
    schema = yaml.safe_load(open(SCHEMA_PATH))
    keys = [f"{section}.{key}" for section, values in schema.items() for key in values]
    unclassified = [k for k in keys if k not in IDENTITY and k not in OPERATIONAL]
    assert unclassified == [], "classify these in tools/t2tvit/run_identity.py (IDENTITY or OPERATIONAL)"
    assert len(set(IDENTITY)) == len(IDENTITY) and not set(IDENTITY) & set(OPERATIONAL)
    assert set(IDENTITY) | set(OPERATIONAL) == set(keys)  # and none that default.yaml no longer has
    assert set(FIXED) <= set(IDENTITY)


def test_a_key_not_listed_as_operational_counts_as_identity():
    config = load_config(SCHEMA_PATH).to_dict()
    recorded = load_config(SCHEMA_PATH).to_dict()
    config["Global"]["added_later"] = True  # a key default.yaml gains after the checkpoint was written
    config["Global"]["print_every"] = 7
    assert differences(recorded, config) == [("Global.added_later", None, True)]


def test_keys_a_checkpoint_lacks_stand_at_their_default_and_one_size_has_two_spellings():
    config = load_config(SCHEMA_PATH).to_dict()
    recorded = load_config(SCHEMA_PATH).to_dict()
    del recorded["EMA"]["best"]  # written before EMA.best existed: it behaved as the default
    recorded["Global"]["img_size"] = [224, 224]
    assert differences(recorded, config) == []
    config["EMA"]["best"] = "either"
    assert differences(recorded, config) == [("EMA.best", "ema", "either")]


def test_training_md_names_every_operational_key():
    text = open(os.path.join(ROOT, "docs", "training.md")).read()
    section = text[text.index("## Checkpoints, resume"):text.index("## Preemption and faults")]
    named = set(re.findall(r"`((?:Global|Data)\.\w+)`", section.split("**Operational keys**")[1].split("\n\n")[0]))
    assert named == set(OPERATIONAL)


# --- reruns ----------------------------------------------------------------------------------------------------

def test_rerunning_a_finished_run_says_where_its_best_is_exits_0_and_touches_nothing(finished, tmp_path):
    run = copy_run(finished, tmp_path)
    before = snapshot(run)
    r = train(run)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr[-2000:]
    assert r.stdout.strip().splitlines() == [
        f"{run}/out/latest.pdckpt has trained all 3 epochs of its run: nothing to train. Its best: "
        f"{run}/out/best.pdckpt (top1 {load_file(str(run / 'out' / 'best.pdckpt'))['best']['acc']:.4f}, ema weights, "
        f"epoch {load_file(str(run / 'out' / 'best.pdckpt'))['best']['epoch']}); to train again, use a new "
        "Global.output_dir"]
    assert snapshot(run) == before


@pytest.mark.parametrize("overrides, listed", [
    ({"Optimizer.lr": 0.002}, "Optimizer.lr (checkpoint 0.001, config 0.002)"),
    ({"Optimizer.lr": 0.002, "Global.epochs": 5},
     "Global.epochs (checkpoint 3, config 5), Optimizer.lr (checkpoint 0.001, config 0.002)"),
    ({"Augment.rand_augment": ""}, "Augment.rand_augment (checkpoint rand-m9-mstd0.5-inc1, config '')"),
], ids=["another lr", "another lr and more epochs", "RandAugment off"])
def test_a_rerun_with_another_recipe_is_refused_listing_each_key_and_touches_nothing(finished, tmp_path, overrides,
                                                                                      listed):
    run = copy_run(finished, tmp_path)
    before = snapshot(run)
    r = train(run, **overrides)
    assert r.returncode == 2 and error_lines(r) == [
        f"error: {run}/out/latest.pdckpt is a run of another experiment: this config differs in {listed}; train this "
        "config in a new Global.output_dir, or continue that run with these changes by adding --accept-changes "
        "(each is recorded in train.log and metrics.jsonl)"], r.stderr
    assert not r.stdout.strip() and snapshot(run) == before


def test_a_rerun_at_another_size_is_refused_even_with_accept_changes(finished, tmp_path):
    run = copy_run(finished, tmp_path)
    before = snapshot(run)
    r = train(run, "--accept-changes", **{"Global.img_size": 48, "Optimizer.lr": 0.002})
    assert r.returncode == 2 and error_lines(r) == [
        f"error: {run}/out/latest.pdckpt does not fit this config, which differs in Global.img_size (checkpoint 32, "
        "config 48); it also differs in Optimizer.lr (checkpoint 0.001, config 0.002); a run keeps its Global.model, "
        "Global.img_size, Global.num_classes, Data.global_batch_size and class names: train this config in a new "
        "Global.output_dir"], r.stderr
    assert snapshot(run) == before


def test_operational_keys_change_freely_and_the_run_continues_exactly(finished, tmp_path):
    # Only the epoch-1 checkpoint: an unfinished run, and no latest.pdckpt (auto takes the newest there is).
    run = copy_run(finished, tmp_path, names=["ckpt-e0001-s000000.pdckpt"])
    r = train(run, **{"Global.print_every": 2, "Global.keep_last": 1, "Global.save_every_steps": 2,
                      "Global.eval_every": 2, "Global.log_dir": tmp_path / "elsewhere", "Global.nonfinite": "skip"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert (f"warning: {run}/out/latest.pdckpt does not exist; resuming from {run}/out/ckpt-e0001-s000000.pdckpt, "
            "the newest readable checkpoint") in r.stdout
    assert "config change" not in r.stdout
    every = losses(finished / "log")
    after = losses(tmp_path / "elsewhere")  # each line: the mean loss of the steps since the one before
    assert sorted(after) == [(e, s) for e in (2, 3) for s in (2, 4, 5)]
    assert all(after[(e, s)] == np.mean([every[(e, k)] for k in range(s - 1 if s < 5 else 5, s + 1)]) for e, s in after)
    a, b = weights(run / "out" / "latest.pdckpt"), weights(finished / "out" / "latest.pdckpt")
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_the_same_global_batch_on_other_devices_or_accumulation_resumes(finished, tmp_path):
    run = copy_run(finished, tmp_path, names=["ckpt-e0001-s000000.pdckpt"])
    config = load_config(os.path.join(ROOT, "config", "t2t_vit_7_demo.yaml"),
                         [a for a in fast_overrides(run, **SEED, **{"Data.batch_size": 2})[1:]])
    names = load_file(str(run / "out" / "ckpt-e0001-s000000.pdckpt"))["class_names"]
    path, state = CheckpointDir(str(run / "out")).resume_from("auto", [].append, config.to_dict(), names)
    assert path.endswith("ckpt-e0001-s000000.pdckpt") and state["epoch"] == 1


def test_accepted_changes_continue_the_run_and_each_is_recorded(finished, tmp_path):
    run = copy_run(finished, tmp_path)
    r = train(run, "--accept-changes", **{"Optimizer.lr": 0.002, "Global.epochs": 4})
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [line.split("] ", 1)[1] for line in (run / "log" / "train.log").read_text().splitlines()
             if "config change" in line]
    assert lines == ["config change accepted (--accept-changes) at epoch 4, step 0: Global.epochs 3 -> 4",
                     "config change accepted (--accept-changes) at epoch 4, step 0: Optimizer.lr 0.001 -> 0.002"]
    changes = read_metrics(run / "log" / MetricsFile.NAME, "config_change")
    assert [(c["key"], c["checkpoint"], c["config"], c["epoch"], c["step"]) for c in changes] == [
        ("Global.epochs", 3, 4, 4, 0), ("Optimizer.lr", 0.001, 0.002, 4, 0)]
    assert sorted(losses(run / "log"))[-5:] == [(4, s) for s in range(1, 6)]
    latest = load_file(str(run / "out" / "latest.pdckpt"))
    assert latest["epoch"] == 4 and latest["config"]["Optimizer"]["lr"] == 0.002
    assert train(run, **{"Optimizer.lr": 0.002, "Global.epochs": 4}).returncode == 0  # its config now: finished


# --- a folder that holds a run is never written over ---------------------------------------------------------

def test_a_finished_run_without_latest_is_complete_not_started_again(finished, tmp_path):
    # The case: best.pdckpt and ckpt-e*.pdckpt of a finished run, latest.pdckpt lost in a copy.
    run = copy_run(finished, tmp_path, names=[n for n in os.listdir(finished / "out") if n != "latest.pdckpt"])
    before = snapshot(run)
    r = train(run)
    assert r.returncode == 0 and r.stdout.startswith(
        f"{run}/out/ckpt-e0003-s000000.pdckpt has trained all 3 epochs of its run: nothing to train. Its best: "
        f"{run}/out/best.pdckpt"), r.stdout[-2000:] + r.stderr[-2000:]
    assert snapshot(run) == before


@pytest.mark.parametrize("names", [None, ["best.pdckpt"]], ids=["a whole run", "only its best"])
def test_a_fresh_start_in_a_folder_with_checkpoints_is_refused_naming_them(finished, tmp_path, names):
    run = copy_run(finished, tmp_path, names=names)
    before = snapshot(run)
    r = train(run, **{"Global.resume": ""})
    listed = "best.pdckpt" if names else ("latest.pdckpt, ckpt-e0003-s000000.pdckpt, ckpt-e0002-s000000.pdckpt, "
                                          "ckpt-e0001-s000000.pdckpt and 1 more")
    assert r.returncode == 2 and error_lines(r) == [
        f"error: Global.resume is '' (start afresh), but {run}/out holds a run's checkpoints ({listed}), which a fresh "
        "start would overwrite; continue that run (Global.resume=auto), or train in a new Global.output_dir"]
    assert snapshot(run) == before


def test_resuming_another_folders_checkpoint_into_a_folder_with_checkpoints_is_refused(finished, tmp_path):
    run = copy_run(finished, tmp_path / "a")
    other = copy_run(finished, tmp_path / "b", names=["ckpt-e0001-s000000.pdckpt"])
    before = snapshot(run)
    resume = other / "out" / "ckpt-e0001-s000000.pdckpt"
    r = train(run, "--resume", resume)
    assert r.returncode == 2 and len(error_lines(r)) == 1 and error_lines(r)[0].startswith(
        f"error: Global.resume {resume}: {run}/out holds another run's checkpoints (latest.pdckpt, "), r.stderr
    assert snapshot(run) == before


def test_a_checkpoint_without_its_config_resumes_as_before_checking_its_fields(finished, tmp_path):
    # Written before checkpoints held their config: only arch, img_size and global_batch are compared (as before).
    state = load_file(str(finished / "out" / "ckpt-e0002-s000000.pdckpt"))
    del state["config"]
    os.makedirs(tmp_path / "out")
    atomic_save(state, str(tmp_path / "out" / "ckpt-e0002-s000000.pdckpt"))
    r = train(tmp_path, **{"Global.img_size": 48})
    assert r.returncode == 2 and error_lines(r) == [
        f"error: {tmp_path}/out/ckpt-e0002-s000000.pdckpt does not fit this config, which differs in Global.img_size "
        "(checkpoint 32, config 48); resume it with its own settings, or start afresh in another Global.output_dir"]
    r = train(tmp_path, **{"Optimizer.lr": 0.002})
    assert r.returncode == 0, r.stderr[-2000:]
    assert (f"warning: {tmp_path}/out/ckpt-e0002-s000000.pdckpt records no config (an older version wrote it): only "
            "its model, img_size and global batch are checked against this run's") in r.stdout
    assert f"resumed from {tmp_path}/out/ckpt-e0002-s000000.pdckpt: epoch 3, step 0" in r.stdout
    assert sorted(losses(tmp_path / "log")) == [(3, s) for s in range(1, 6)]


def test_checkpoint_names_of_any_length_sort_by_number_for_pruning_and_resume(tmp_path):
    ckpts = CheckpointDir(str(tmp_path), keep_last=2)
    for epoch, step in ((9998, 0), (9999, 999999), (9999, 1000000), (10000, 0), (10001, 0)):
        ckpts.save({"model": {}, "optimizer": {}, "epoch": epoch, "step": step}, epoch, step)
    assert sorted(os.listdir(tmp_path)) == ["ckpt-e10000-s000000.pdckpt", "ckpt-e10001-s000000.pdckpt",
                                            "latest.pdckpt"]
    os.remove(ckpts.latest)
    warnings = []
    path, state = ckpts.resume_from("auto", warnings.append)
    assert path == str(tmp_path / "ckpt-e10001-s000000.pdckpt") and state["epoch"] == 10001
    assert warnings == [f"warning: {ckpts.latest} does not exist; resuming from {path}, the newest readable "
                        "checkpoint"]
    ckpts = CheckpointDir(str(tmp_path / "steps"), keep_last=1)
    for step in (999999, 1000000):
        ckpts.save({"model": {}, "optimizer": {}, "epoch": 0, "step": step}, 0, step)
    assert sorted(os.listdir(tmp_path / "steps")) == ["ckpt-e0000-s1000000.pdckpt", "latest.pdckpt"]


# --- own data: class names, and the EMA of a short run ---------------------------------------------------------

def class_folders(root, names, per_class=(8, 4)):
    """A dataset of class folders with generated images: each class a colour (red, green, blue), with noise."""
    rng = np.random.RandomState(0)
    colours = np.array([(200, 40, 40), (40, 200, 40), (40, 40, 200)])
    for split, n in zip(("train", "val"), per_class):
        for c, name in enumerate(names):
            os.makedirs(root / split / name)
            for i in range(n):
                pixels = (colours[c] + rng.randn(40, 40, 3) * 20).clip(0, 255).astype("uint8")
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def own_data(tmp_path_factory):
    """Two 3-class datasets (cat, dog, emu; cat, dog, fox), and a finished run of finetune_example.yaml on the first
    from scratch at lr 1e-3: 3 epochs of 3 steps of 8 images, far shorter than its EMA's ~1000-step horizon."""
    folder = tmp_path_factory.mktemp("own")
    first = class_folders(folder / "a", ["cat", "dog", "emu"])
    other = class_folders(folder / "b", ["cat", "dog", "fox"])
    r = own_train(folder, first)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return folder, first, other, r.stdout


def own_train(folder, data, *extra, **overrides):
    return train(folder, *extra, config=FINETUNE, **{
        "Data.root": data, "Global.num_classes": 3, "Global.pretrained": "", "Scheduler.warmup_epochs": 1,
        "Optimizer.lr": 0.001,
        "Data.global_batch_size": 8, "Data.batch_size": 8, **overrides})


def test_another_dataset_is_refused_naming_its_class_names_even_with_accept_changes(own_data, tmp_path):
    folder, first, other, _ = own_data
    run = copy_run(folder, tmp_path)
    before = snapshot(run)
    for extra in ((), ("--accept-changes",)):
        r = own_train(run, other, *extra, **{"Global.epochs": 4})
        assert r.returncode == 2 and error_lines(r) == [
            f"error: {run}/out/latest.pdckpt is a run of another experiment: this config differs in Global.epochs "
            f"(checkpoint 3, config 4), Data.root (checkpoint {first}, config {other}), class names (1 of 3 differ: "
            "#2 'emu' -> 'fox'); a run keeps its Global.model, Global.img_size, Global.num_classes, "
            "Data.global_batch_size and class names: train this config in a new Global.output_dir"], r.stderr
    assert snapshot(run) == before


def test_the_same_classes_in_a_moved_folder_continue_with_accept_changes_and_best_and_latest_agree(own_data,
                                                                                                tmp_path):
    folder, first, _, _ = own_data
    run = copy_run(folder, tmp_path)
    moved = shutil.copytree(first, tmp_path / "moved")
    assert "Data.root (checkpoint" in error_lines(own_train(run, moved, **{"Global.epochs": 4}))[0]
    r = own_train(run, moved, "--accept-changes", **{"Global.epochs": 4})
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"config change accepted (--accept-changes) at epoch 4, step 0: Data.root {first} -> {moved}" in r.stdout
    best, latest = (load_file(str(run / "out" / name)) for name in ("best.pdckpt", "latest.pdckpt"))
    assert best["class_names"] == latest["class_names"] == ["cat", "dog", "emu"]


def test_a_run_shorter_than_its_ema_horizon_says_so_once_and_keeps_the_better_of_model_and_ema(own_data):
    folder, _, _, stdout = own_data
    notes = [line for line in (folder / "log" / "train.log").read_text().splitlines() if "EMA.decay" in line]
    assert len(notes) == 1 and notes[0].endswith(
        "note: this run has 9 optimizer steps, under the ~1000 that EMA.decay 0.998 averages over (2 / (1 - decay)): "
        "the EMA weights will still hold 98% of the starting ones; best.pdckpt is the better of the model and its "
        "EMA (EMA.best: either)")
    val = read_metrics(folder / "log" / MetricsFile.NAME, "val")
    model, ema = ([r["top1"] for r in val if r["model"] == name] for name in ("model", "ema"))
    assert len(model) == len(ema) == 3 and max(ema) < max(model)  # the model learns, its EMA has not moved yet
    best = load_file(str(folder / "out" / "best.pdckpt"))
    assert (best["best"]["acc"], best["best"]["epoch"], best["best_which"]) == (max(model), model.index(max(model)) + 1,
                                                                               "model")


def test_short_run_note_threshold_and_wording():
    assert short_run_note(0.9, 20, "ema") is None and short_run_note(0.99996, 310 * 2502, "ema") is None
    assert short_run_note(0.9, 19, "model").endswith("best.pdckpt follows the model (EMA.best: model)")
    assert "EMA.best=either keeps the better" in short_run_note(0.998, 30, "ema")


def test_own_data_configs_keep_the_better_of_model_and_ema_and_paper_configs_the_official_protocol():
    own = ["finetune_example.yaml", "fashion_mnist.yaml", "fmnist_pretrain_0to4.yaml", "fmnist_finetune_5to9.yaml",
           "fmnist_scratch_5to9.yaml"]
    for name in own:
        assert load_config(os.path.join(ROOT, "config", name)).EMA.best == "either", name
    paper = [n for n in os.listdir(os.path.join(ROOT, "config")) if re.match(r"t2t_vit_[\w]+\.yaml$", n)
             and n != "t2t_vit_7_demo.yaml"]
    assert len(paper) == 11
    for name in paper:
        cfg = load_config(os.path.join(ROOT, "config", name))
        assert (cfg.EMA.best, cfg.EMA.decay, cfg.Global.epochs) == ("ema", 0.99996, 310), name
        assert short_run_note(cfg.EMA.decay, cfg.Global.epochs * (1281167 // cfg.Data.global_batch_size),
                              cfg.EMA.best) is None, name
