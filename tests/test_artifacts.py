"""Files that say what they are: every tool given a checkpoint (or a weights file's metadata, or an export) takes
its model, size, classes and preprocessing from it, refuses a config that says otherwise in one line, names the
weights it loaded; an export classifies with nothing beside it; class names never forge output."""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import paddle
import pytest
import yaml
from PIL import Image

import benchmark
import t2tvit
from runner import ROOT, error_lines, run_main, run_tool
from t2tvit import export_meta, tool_config
from t2tvit.artifact import read_weights
from t2tvit.checkpoint import training_state
from t2tvit.config import load_config
from t2tvit.dataset import class_folders
from t2tvit.ema import ModelEMA
from t2tvit.errors import UserError
from t2tvit.transforms import build_transform

FINETUNE = os.path.join(ROOT, "config", "finetune_example.yaml")
T2T_7 = os.path.join(ROOT, "config", "t2t_vit_7.yaml")
CLASSES = ["blue", "green", "red"]
SIZE = 32
COLOURS = {"blue": (30, 40, 200), "green": (30, 180, 40), "red": (200, 30, 30)}


def make_class_folders(root, per_class=4, classes=CLASSES):
    """root/{train,val}/<class>/*.png: noisy images of each class's colour, 40 x 48 px."""
    rng = np.random.RandomState(0)
    for split in ("train", "val"):
        for name in classes:
            os.makedirs(root / split / name)
            for i in range(per_class):
                noise = rng.randint(-40, 40, (40, 48, 3))
                pixels = np.clip(np.array(COLOURS.get(name, (128, 128, 128))) + noise, 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    return root


def decisive(model, root):
    """Give `model` a head that tells the colours apart by a wide margin (a prototype per class, from its own
    features of the val images), so that top-1 answers are stable enough to compare across backends."""
    transform = build_transform(load_config(FINETUNE, [f"Global.img_size={SIZE}"]), "val")
    model.eval()
    with paddle.no_grad():
        feats = [model.forward_features(paddle.to_tensor(np.stack(
            [transform(str(p)) for p in sorted((root / "val" / name).iterdir())]))).numpy().mean(0)
            for name in CLASSES]
    feats = np.array(feats, "float64")
    centred = feats - feats.mean(0)
    weight = (centred / np.linalg.norm(centred, axis=1, keepdims=True)).T * 20
    model.head.weight.set_value(weight.astype("float32"))
    model.head.bias.set_value((-feats.mean(0) @ weight).astype("float32"))


def checkpoint_of(folder, data_root, size=SIZE, names=CLASSES, epoch=2, **extra):
    """A training checkpoint as train.py writes it (checkpoint.training_state), of a T2T-ViT-7 run on the class
    folders of data_root at `size` px, its EMA recorded as best; returns its path."""
    overrides = [f"Data.root={data_root}", f"Global.num_classes={len(names)}", f"Global.img_size={size}",
                 "Global.pretrained=", f"Global.output_dir={folder}/out", f"Global.log_dir={folder}/log",
                 "Global.device=cpu", "Data.num_workers=0", *[f"{k}={v}" for k, v in extra.items()]]
    cfg = load_config(FINETUNE, overrides)
    paddle.seed(4)
    model = t2tvit.create_model("t2t_vit_7", num_classes=len(names), img_size=size)
    if names == CLASSES and size == SIZE:
        decisive(model, data_root)
    ema = ModelEMA(model, 0.9)
    opt = paddle.optimizer.AdamW(parameters=model.parameters())
    state = training_state(model, opt, ema, None, {"epoch": epoch, "step": 0, "skips": 0,
                                                   "best": {"acc": 1.0, "which": "ema", "epoch": epoch}},
                           "t2t_vit_7", cfg.Data.global_batch_size, size, names, cfg.to_dict())
    path = folder / "best.pdckpt"
    paddle.save(state, str(path))
    return str(path)


def use_default_config(folder, monkeypatch):
    """Make every command's default config one that writes its logs under folder rather than the repository's log/."""
    path = folder / "default.yaml"
    path.write_text(f"_base_: {os.path.join(ROOT, 'config', 't2t_vit_7_demo.yaml')}\nGlobal:\n"
                    f"  output_dir: {folder / 'out'}\n  log_dir: {folder / 'log'}\n")
    monkeypatch.setattr(tool_config, "DEFAULT_CONFIG", str(path))
    return path


@pytest.fixture(autouse=True)
def default_config(tmp_path, monkeypatch):
    return use_default_config(tmp_path, monkeypatch)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(folder, its class-folder dataset, a checkpoint of a 32 px, 3-class run on it)."""
    folder = tmp_path_factory.mktemp("run")
    data = make_class_folders(folder / "data")
    return folder, data, checkpoint_of(folder, data)


def one_error(r):
    errors = error_lines(r)
    assert r.returncode == 2 and len(errors) == 1 and "Traceback" not in r.stderr, r.stdout + r.stderr
    return errors[0]


def predicted(r):
    """[(class id, class name)] of predict's output."""
    assert r.returncode == 0, r.stderr
    ids = re.findall(r"^class_id is: (\d+)$", r.stdout, re.M)
    names = re.findall(r"^class name: (.*)$", r.stdout, re.M)
    return list(zip(map(int, ids), names))


def test_val_given_only_a_checkpoint_evaluates_it_at_its_own_size_on_its_own_classes(run):
    folder, data, ckpt = run
    r = run_main("val.py", "--weights", ckpt, config=None)
    assert r.returncode == 0, r.stderr
    sha = read_weights(ckpt)[1].sha256
    assert f"weights: {ckpt} (sha256 {sha[:12]}, epoch 2, EMA weights)" in r.stdout
    # the checkpoint's own size and data (no -c, no -o): the decisive head gets every colour right
    assert "evaluating t2t_vit_7 at 32 px" in r.stdout and str(data) in r.stdout
    # 3 classes, not ImageNet's: no "ImageNet" in the line, and top-k is top-3
    assert re.search(r"^.* final val acc is:1\.0000, top3: 1\.0000, images: 12$", r.stdout, re.M)
    assert "ImageNet" not in r.stdout and "top5" not in r.stdout


@pytest.mark.parametrize("config,overrides,expected", [
    (None, ["Global.img_size=64"], "Global.img_size 32 (the checkpoint) vs 64 (-o Global.img_size=64)"),
    (FINETUNE, [], "Global.img_size 32 (the checkpoint) vs 224 ({c}); Global.num_classes 3 (the checkpoint) vs 10"),
    (None, ["Data.crop_pct=1.0"], "Data.crop_pct 0.9 (the checkpoint) vs 1.0 (-o Data.crop_pct=1.0)"),
    (None, ["Global.model=t2t_vit_10"], "Global.model t2t_vit_7 (the checkpoint) vs t2t_vit_10"),
])
def test_a_config_that_disagrees_with_the_checkpoint_is_one_line_naming_both_values(run, config, overrides,
                                                                                   expected):
    _, data, ckpt = run
    r = run_main("val.py", "--weights", ckpt, "-o", f"Data.root={data}", *overrides, config=config)
    line = one_error(r)
    assert f"error: {ckpt} and the config disagree: " + expected.format(c=config) in line
    assert "drop -c" in line and ("--img-size S" in line) == ("img_size" in expected)


def test_where_to_write_is_never_taken_from_a_checkpoint(tmp_path, default_config):
    # A checkpoint from elsewhere names a log folder of its choosing: val.py logs where the default config says.
    data = make_class_folders(tmp_path / "data", per_class=1)
    ckpt = checkpoint_of(tmp_path, data, **{"Global.log_dir": tmp_path / "elsewhere", "Data.allow_outside_root": "true"})
    r = run_main("val.py", "--weights", ckpt, config=None)
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "elsewhere").exists() and (tmp_path / "log" / "val.log").is_file()
    assert tool_config.config_for(argparse.Namespace(config=None, override=[], img_size=None),
                                  read_weights(ckpt)[1])[0].Data.allow_outside_root is False


@pytest.mark.slow
def test_val_sh_without_config_evaluates_a_checkpoint_of_any_run(run, tmp_path):
    # scripts/launch.sh passes -c only when CONFIG is set: the checkpoint alone decides, as with tools/val.py
    _, _, ckpt = run
    env = {k: v for k, v in os.environ.items() if k != "CONFIG"}
    env["PYTHON"] = sys.executable  # the interpreter under test, as tests/runner.py passes it to the scripts
    r = subprocess.run(["bash", os.path.join(ROOT, "scripts", "val.sh"), "--weights", ckpt, "-o",
                        f"Global.log_dir={tmp_path}"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert r.returncode == 0 and "final val acc is:1.0000, top3: 1.0000, images: 12" in r.stdout, r.stderr


def test_a_config_that_agrees_with_the_checkpoint_is_fine(run):
    _, data, ckpt = run
    r = run_main("val.py", "--weights", ckpt, "-o", f"Data.root={data}", "Global.num_classes=3",
                 f"Global.img_size={SIZE}", config=FINETUNE)
    assert r.returncode == 0 and "final val acc is:1.0000" in r.stdout, r.stderr


def test_img_size_evaluates_at_another_size_and_says_so_in_one_line(run):
    _, _, ckpt = run
    r = run_main("val.py", "--weights", ckpt, "--img-size", "48", config=None)
    assert r.returncode == 0, r.stderr
    notes = [line for line in r.stdout.splitlines() if "note: running at 48 px (--img-size)" in line]
    assert len(notes) == 1 and "made at 32 px" in notes[0] and "evaluating t2t_vit_7 at 48 px" in r.stdout


def test_val_refuses_a_validation_set_of_other_classes(run, tmp_path):
    _, _, ckpt = run
    other = make_class_folders(tmp_path / "other", per_class=1, classes=["blue", "cyan", "red"])
    r = run_main("val.py", "--weights", ckpt, "-o", f"Data.root={other}", config=None)
    assert "are not those of the validation set" in one_error(r) and "'green'" in r.stderr and "'cyan'" in r.stderr


def test_converted_weights_that_say_nothing_keep_the_config_in_charge(tmp_path):
    paddle.seed(2)
    path = tmp_path / "w.pdparams"
    paddle.save(t2tvit.create_model("t2t_vit_7", num_classes=5, img_size=SIZE).state_dict(), str(path))
    image = make_class_folders(tmp_path / "d", per_class=1) / "val" / "red" / "0.png"
    r = run_main("predict.py", image, "--weights", path, "-o", f"Global.img_size={SIZE}", "Global.num_classes=5",
                 config=T2T_7)
    assert len(predicted(r)) == 1
    assert "no metadata: the config decides model, size and classes" in r.stderr
    # Data.classes imagenet1k names 1000 classes, the model has 5: no ImageNet names for them
    assert predicted(r)[0][1] == "?" and "no class names: Data.classes imagenet1k names 1000" in r.stderr


@pytest.mark.parametrize("tool", ["predict.py", "visualize.py", "export_model.py"])
def test_every_tool_names_the_weights_it_loaded_and_uses_the_checkpoint_alone(run, tool, tmp_path):
    _, data, ckpt = run
    image = data / "val" / "red" / "0.png"
    args = {"predict.py": [image, "--weights", ckpt],
            "visualize.py": [image, "--weights", ckpt, "--out", tmp_path / "a.png"],
            "export_model.py": ["--weights", ckpt, "--out", tmp_path / "inference", "--format", "paddle"]}[tool]
    r = run_main(tool, *args, config=None)
    assert r.returncode == 0, r.stderr
    sha = read_weights(ckpt)[1].sha256
    assert f"weights: {ckpt} (sha256 {sha[:12]}, epoch 2, EMA weights)" in r.stdout + r.stderr
    if tool == "predict.py":
        assert predicted(r) == [(2, "red")]
    if tool == "visualize.py":
        assert "(top-1 class 2 red)" in r.stdout and Image.open(tmp_path / "a.png").size == (SIZE, SIZE)


def test_which_takes_the_model_or_ema_weights_and_says_so(run):
    _, data, ckpt = run
    r = run_main("predict.py", data / "val" / "red" / "0.png", "--weights", ckpt, "--which", "model", config=None)
    assert r.returncode == 0 and "epoch 2, model weights)" in r.stderr


def test_inference_yml_holds_model_size_preprocessing_class_names_and_the_weights_sha256(run, tmp_path):
    _, _, ckpt = run
    out = tmp_path / "inference"
    r = run_main("export_model.py", "--weights", ckpt, "--out", out, "--format", "paddle",
                 "--img-size", "48", config=None)
    assert r.returncode == 0, r.stderr
    meta = yaml.safe_load((out / "inference.yml").read_text())
    assert meta["Global"] == {"model_name": "t2t_vit_7", "input": "x", "img_size": 48, "num_classes": 3,
                              "weights": "best.pdckpt", "weights_sha256": read_weights(ckpt)[1].sha256,
                              "weights_which": "ema", "epoch": 2}
    # PaddleClas's transform_ops, with the eval transform's arithmetic: floor(48 / 0.9) = 53
    assert meta["PreProcess"]["transform_ops"] == [
        {"ResizeImage": {"resize_short": 53, "interpolation": "bicubic", "backend": "pil", "crop_pct": 0.9,
                         "long_side": "floor"}},
        {"CropImage": {"size": 48, "offset_rounding": "half_up"}},
        {"NormalizeImage": {"scale": 1 / 255, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                            "order": "hwc", "channel_num": 3}},
        {"ToCHWImage": None}]
    assert meta["PostProcess"] == {"Topk": {"topk": 3, "label_list": CLASSES}}
    art = export_meta.read(str(out))
    assert (art.settings["Global.img_size"], art.class_names, art.exported_from) == (48, CLASSES, "best.pdckpt")


def test_a_non_square_export_says_width_and_height_in_paddleclas_order(tmp_path):
    model = t2tvit.create_model("t2t_vit_7", num_classes=2, img_size=(64, 32))
    ops = export_meta.description(model)["PreProcess"]["transform_ops"]
    assert ops[0]["ResizeImage"]["size"] == [35, 71] and ops[1]["CropImage"]["size"] == [32, 64]


@pytest.mark.slow
def test_an_export_of_a_run_classifies_with_nothing_beside_it_on_every_backend(tmp_path):
    # A real run on class folders of its own (tools/train.py), exported; then its dataset and training folder
    # are deleted and predict --inference-dir, with no -c, gives the checkpoint's top-1 and names on every backend.
    data = make_class_folders(tmp_path / "data", per_class=3)
    run_dir = tmp_path / "run"
    overrides = ["-o", f"Data.root={data}", "Global.num_classes=3", f"Global.img_size={SIZE}", "Global.pretrained=",
                 "Global.epochs=2", "Scheduler.warmup_epochs=1", "Data.batch_size=9", "Data.global_batch_size=9",
                 f"Global.output_dir={run_dir}/out", f"Global.log_dir={run_dir}/log", "Global.device=cpu",
                 "Data.num_workers=0"]
    assert run_tool("train.py", *overrides, config=FINETUNE).returncode == 0
    ckpt = str(run_dir / "out" / "best.pdckpt")
    images = sorted(str(p) for p in (data / "val").rglob("*.png"))
    photos = tmp_path / "photos"
    os.makedirs(photos)
    for i, path in enumerate(images):
        shutil.copy(path, photos / f"{i}.png")
    dynamic = predicted(run_main("predict.py", photos, "--weights", ckpt, config=None))
    export = run_main("export_model.py", "--weights", ckpt, "--out", tmp_path / "inference", config=None)
    assert export.returncode == 0, export.stderr
    shutil.rmtree(data)
    shutil.rmtree(run_dir)
    assert len(dynamic) == len(images) and {name for _, name in dynamic} <= set(CLASSES)
    for backend in ("paddle", "onnxruntime", "openvino"):
        r = run_main("predict.py", photos, "--inference-dir", tmp_path / "inference", "--backend", backend,
                     config=None)
        assert predicted(r) == dynamic, backend
        assert "exported from best.pdckpt" in r.stderr


def test_a_five_class_export_with_the_default_config_prints_its_own_names_not_imagenet_s(tmp_path):
    # issue 31 item 4: the export's classes are read from it when nothing is asked, and checked when something is
    names = ["a", "b", "c", "d", "e"]
    data = make_class_folders(tmp_path / "data", per_class=1, classes=names)
    ckpt = checkpoint_of(tmp_path, data, names=names)
    out = tmp_path / "inference"
    assert run_main("export_model.py", "--weights", ckpt, "--out", out, "--format", "paddle",
                    config=None).returncode == 0
    shutil.rmtree(data / "train")
    r = run_main("predict.py", data / "val" / "a" / "0.png", "--inference-dir", out, "--backend", "paddle",
                 config=None)
    assert predicted(r)[0][1] in names and "tench" not in r.stdout
    r = run_main("predict.py", data / "val" / "a" / "0.png", "--inference-dir", out, "--backend", "paddle",
                 config=T2T_7)
    line = one_error(r)
    assert "Global.num_classes 5 (the export) vs 1000" in line and "class names ['a', 'b', 'c']" in line
    r = run_main("predict.py", data / "val" / "a" / "0.png", "--inference-dir", out, "--img-size", "64",
                 config=None)
    assert "an exported model runs at the size it was exported at" in one_error(r)


@pytest.fixture(scope="module")
def paddle_export(run, tmp_path_factory):
    """An export (paddle format) of run's checkpoint, made once: each test edits a copy of it."""
    _, _, ckpt = run
    folder = tmp_path_factory.mktemp("paddle_export")
    with pytest.MonkeyPatch.context() as monkeypatch:
        use_default_config(folder, monkeypatch)
        assert run_main("export_model.py", "--weights", ckpt, "--out", folder / "inference", "--format", "paddle",
                        config=None).returncode == 0
    return folder / "inference"


@pytest.mark.parametrize("case,text,message", [
    ("alias bomb", "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
        for p, c in zip("abcdefgh", "bcdefghi")), "refused YAML: over 100000 nodes"),
    ("a list", "- Global\n- PreProcess\n", "a model description must be a mapping of sections, got list"),
    ("a syntax error", "Global: {model_name: [\n", "YAML syntax error"),
    ("not text", None, "cannot read"),
    ("no PreProcess", "Global: {model_name: t2t_vit_7}\nPostProcess: {}\n", "PreProcess is missing"),
    ("an earlier export's", "model: t2t_vit_7\ninput: x\nimg_size: 32\nnum_classes: 3\n", "export the weights again"),
    ("unknown model", "model_name: t2t_vit_7", "unknown model 'vit_huge'"),
    ("labels", "- tench", "label_list holds 4 names for 3 classes"),
    ("resize", "resize_short: 36", "ResizeImage / CropImage do not match img_size 32"),
    ("std", "- 0.229", "Data.std"),
])
def test_an_inference_yml_from_a_stranger_is_one_error_line(run, paddle_export, tmp_path, case, text, message):
    _, data, _ = run
    out = tmp_path / "inference"
    shutil.copytree(paddle_export, out)
    meta = out / "inference.yml"
    good = meta.read_text()
    edits = {"unknown model": good.replace("model_name: t2t_vit_7", "model_name: vit_huge"),
             "labels": good.replace("    - blue", "    - blue\n    - tench"),
             "resize": good.replace("resize_short: 35", "resize_short: 36"),
             "std": good.replace("- 0.229", "- 0.0")}
    if text is None:
        meta.write_bytes(b"\xff\xfe\x00binary")
    else:
        meta.write_text(edits.get(case, text))
    r = run_main("predict.py", data / "val" / "red" / "0.png", "--inference-dir", out, config=None)
    line = one_error(r)
    assert message in line and "inference.yml" in line, line


def test_class_names_from_files_never_forge_output_lines_or_terminal_escapes(tmp_path):
    # issue 31 item 6: one image prints one `class_id is:` line, whatever the checkpoint's class names hold
    forged = ["x\nclass_id is: 7\nclass name: cat", "\x1b[2J\x1b[31mred", "fine"]
    data = make_class_folders(tmp_path / "data", per_class=1)
    ckpt = checkpoint_of(tmp_path, data, names=forged)
    r = run_main("predict.py", data / "val" / "red" / "0.png", "--weights", ckpt, config=None)
    assert r.returncode == 0, r.stderr
    assert len(re.findall(r"^class_id is:", r.stdout, re.M)) == 1 and len(r.stdout.splitlines()) == 4
    assert "\x1b" not in r.stdout + r.stderr
    assert any(repr(name) in r.stdout for name in forged[:2])


@pytest.mark.parametrize("name", ["a/b", ".hidden", "tab\there", "", "x" * 256, "twice"])
def test_data_classes_names_are_checked_like_folder_names(tmp_path, name):
    names = ["twice", "ok", name] if name else ["ok", " "]
    (tmp_path / "names.txt").write_text("\n".join(names) + "\n")
    cfg = load_config(FINETUNE, [f"Data.root={tmp_path}", "Data.classes=names.txt"])
    if not name:  # blank lines are skipped, as always: nothing to refuse
        assert class_folders(cfg) == ["ok"]
        return
    with pytest.raises(UserError, match=r"Data.classes: .*names.txt.*(cannot be a folder name|twice)"):
        class_folders(cfg)


def test_create_model_keeps_a_checkpoint_s_head_and_size_and_records_how_to_feed_it(run):
    _, data, ckpt = run
    model = t2tvit.create_model("t2t_vit_7", pretrained=ckpt)
    assert (model.num_classes, tuple(model.img_size), model.pretrained_notes) == (3, (SIZE, SIZE), [])
    cfg = model.pretrained_cfg
    assert (cfg["input_size"], cfg["label_names"], cfg["weights"], cfg["epoch"]) == ((3, SIZE, SIZE), CLASSES,
                                                                                      "ema", 2)
    assert cfg["sha256"] == read_weights(ckpt)[1].sha256 and cfg["crop_pct"] == 0.9
    # another class count re-makes the head (fine-tuning): the names no longer apply
    other = t2tvit.create_model("t2t_vit_7", pretrained=ckpt, num_classes=5)
    assert other.pretrained_cfg["label_names"] is None and "head.weight" in " ".join(other.pretrained_notes)
    with pytest.raises(UserError, match="holds t2t_vit_7 weights, not t2t_vit_10"):
        t2tvit.create_model("t2t_vit_10", pretrained=ckpt)


def test_create_model_of_weights_that_say_nothing_keeps_today_s_defaults(tmp_path):
    path = tmp_path / "w.pdparams"
    paddle.save(t2tvit.create_model("t2t_vit_7", num_classes=5, img_size=SIZE).state_dict(), str(path))
    model = t2tvit.create_model("t2t_vit_7", pretrained=path)
    assert (model.num_classes, tuple(model.img_size)) == (1000, (224, 224))
    assert model.pretrained_cfg["label_names"] is None and model.pretrained_cfg["crop_pct"] == 0.9


def test_create_transform_and_load_classifier_give_val_s_pixels_and_answers(run):
    _, data, ckpt = run
    clf = t2tvit.load_classifier(ckpt)
    image = str(data / "val" / "green" / "1.png")
    cfg = load_config(FINETUNE, [f"Global.img_size={SIZE}"])
    np.testing.assert_array_equal(clf.transform(image), build_transform(cfg, "val")(image))
    np.testing.assert_array_equal(t2tvit.create_transform(clf.model)(image), clf.transform(image))
    with paddle.no_grad():
        logits = clf.model(paddle.to_tensor(clf.transform(image)[None])).numpy()[0]
    assert clf.class_names[int(logits.argmax())] == "green" and not clf.model.training
    path = data / "w.pdparams"
    paddle.save(clf.model.state_dict(), str(path))
    with pytest.raises(UserError, match="does not say which model it holds"):
        t2tvit.load_classifier(path)


def safetensors_with(path, state, metadata):
    from safetensors.numpy import save_file
    save_file({k: np.ascontiguousarray(v.numpy()) for k, v in state.items()}, str(path), metadata=metadata)


def test_a_safetensors_file_s_metadata_says_what_it_is(run, tmp_path):
    _, data, ckpt = run
    model = t2tvit.create_model("t2t_vit_7", pretrained=ckpt)
    path = tmp_path / "w.safetensors"
    safetensors_with(path, model.state_dict(), {"format": "pt", "Global.model": "t2t_vit_7",
                                                "Global.img_size": "32", "Global.num_classes": "3",
                                                "class_names": json.dumps(CLASSES)})
    r = run_main("predict.py", data / "val" / "red" / "0.png", "--weights", path, config=None)
    assert predicted(r) == [(2, "red")] and "no metadata" not in r.stderr
    assert t2tvit.load_classifier(path).class_names == CLASSES
    safetensors_with(path, model.state_dict(), {"Global.img_size": "30"})
    r = run_main("predict.py", data / "val" / "red" / "0.png", "--weights", path, config=None)
    assert "w.safetensors (its safetensors metadata)" in one_error(r) and "multiple of 16" in r.stderr


def test_benchmark_weights_decide_its_model_size_and_classes_before_any_worker_starts(run, capsys):
    _, _, ckpt = run
    args = argparse.Namespace(config=None, override=[], model=None, img_size=None, weights=ckpt)
    benchmark.settle_config(args)
    assert (args.model, args.img_size) == ("t2t_vit_7", SIZE) and "Global.num_classes=3" in args.override
    assert load_config(args.config, args.override).Data.crop_pct == 0.9
    assert f"weights: {ckpt}" in capsys.readouterr().err
    args = argparse.Namespace(config=None, override=[], model="t2t_vit_10", img_size=None, weights=ckpt)
    with pytest.raises(UserError, match=r"Global.model t2t_vit_7 \(the checkpoint\) vs t2t_vit_10"):
        benchmark.settle_config(args)


def test_hints_name_commands_that_fit_the_config(tmp_path):
    image = os.path.join(ROOT, "lit_data", "val", "n01614925", "imagenet_17.JPEG")
    r = run_main("val.py", "-o", f"Global.output_dir={tmp_path}", config=None)
    assert "Train first (bash scripts/train.sh)" in one_error(r)
    r = run_main("predict.py", image, "-o", f"Global.output_dir={tmp_path}", config=FINETUNE)
    assert "Train first (python tools/train.py -c " in one_error(r) and "finetune_example.yaml)" in r.stderr
