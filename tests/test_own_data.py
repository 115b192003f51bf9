"""Own data: IDX conversion, a real learning check on Fashion-MNIST images, fine-tuning and class names."""
import builtins
import errno
import gzip
import json
import os
import re
import struct

import numpy as np
import paddle
import pytest
from PIL import Image

import faults
import idx_to_dataset
from runner import ROOT, error_lines, run_tool
from t2tvit import backends
from t2tvit.checkpoint import load_file
from t2tvit.t2t import create_model

MINI = os.path.join(ROOT, "tests", "data", "fashion_mnist_mini")
FASHION = os.path.join(ROOT, "config", "fashion_mnist.yaml")
FINETUNE = os.path.join(ROOT, "config", "finetune_example.yaml")
VAL_LINE = re.compile(r"Epoch \[(\d+)/\d+\] val \(model\): top1 ([\d.]+), top5 [\d.]+ on (\d+) images")
# int8 against fp32 on the 1,000 held-out images with the minute-trained model (see the test below). Measured
# in CI's suite on an AMD EPYC Zen 3 (AVX2, no VNNI: ONNX Runtime quantises weights to 7 bits there): ONNX
# Runtime int8 agreed on 96.4% (Paddle 3.3.1) and 96.5% (2.6.2) of top-1s. This minute-trained model's margins
# are small; the 99% target is for trained weights on the full test set, not measured yet.
INT8_AGREE, INT8_TOP1_DROP = 0.95, 0.02
NAMES = ["T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def convert(*args):
    return run_tool("idx_to_dataset.py", *args, config=None, timeout=120)


def write_idx(path, array, compress=False):
    data = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    with open(path, "wb") as f:
        f.write(gzip.compress(data) if compress else data)


@pytest.fixture
def idx(tmp_path):
    """Train: 7 images of 5x4 px in 3 classes (gzip); val: 3 images (raw). Pixel (0, 0) holds the index."""
    rng = np.random.default_rng(0)
    files = {}
    for split, labels, compress in (("train", [0, 1, 2, 0, 1, 2, 2], True), ("val", [2, 0, 1], False)):
        images = rng.integers(0, 256, (len(labels), 5, 4), dtype=np.uint8)
        images[:, 0, 0] = np.arange(len(labels))
        ext = ".gz" if compress else ""
        files[split] = (tmp_path / f"{split}-images{ext}", tmp_path / f"{split}-labels{ext}", images, labels)
        write_idx(files[split][0], images, compress)
        write_idx(files[split][1], np.asarray(labels, np.uint8), compress)
    return files


def idx_args(files, out):
    return ["--train-images", files["train"][0], "--train-labels", files["train"][1],
            "--val-images", files["val"][0], "--val-labels", files["val"][1], "--out", out]


@pytest.mark.slow
def test_idx_to_dataset_writes_rgb_pngs_lists_and_classes(idx, tmp_path):
    out = tmp_path / "ds"
    r = convert(*idx_args(idx, out))
    assert r.returncode == 0, r.stderr
    assert (out / "classes.txt").read_text().split("\n") == ["0", "1", "2", ""]
    for split in ("train", "val"):
        _, _, images, labels = idx[split]
        lines = (out / f"{split}.txt").read_text().splitlines()
        assert [int(line.rsplit(" ", 1)[1]) for line in lines] == labels
        for i, line in enumerate(lines):
            rel, label = line.rsplit(" ", 1)
            assert rel == f"{split}/{label}/{i:d}.png"
            img = Image.open(out / rel)
            assert img.mode == "RGB" and img.size == (4, 5)
            a = np.asarray(img)
            assert all((a[..., c] == images[i]).all() for c in range(3))


@pytest.mark.slow
def test_idx_to_dataset_subsets_and_names(idx, tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("cat\ndog/wolf\nbird\n")
    r = convert(*idx_args(idx, tmp_path / "s"), "--class-names", names, "--limit-train", 4, "--limit-val", 2)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "s" / "classes.txt").read_text().split() == ["cat", "dog_wolf", "bird"]
    # stratified: round-robin over the classes in file order -> indices 0 (cat), 1 (dog), 2 (bird), 3 (cat)
    assert (tmp_path / "s" / "train.txt").read_text().split() == [
        "train/cat/0.png", "0", "train/dog_wolf/1.png", "1", "train/bird/2.png", "2", "train/cat/3.png", "0"]
    r = convert(*idx_args(idx, tmp_path / "f"), "--limit-val", 2, "--subset", "first")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "f" / "val.txt").read_text().split() == ["val/2/0.png", "2", "val/0/1.png", "0"]


@pytest.mark.slow
def test_idx_to_dataset_errors_are_one_line(idx, tmp_path):
    junk = tmp_path / "junk"
    junk.write_bytes(b"\x89PNG not an idx file")
    few = tmp_path / "few-labels"
    write_idx(few, np.zeros(3, np.uint8))
    short_names = tmp_path / "two.txt"
    short_names.write_text("a\nb\n")
    cases = [(["--train-images", tmp_path / "nope"], "nope"),
             (["--train-images", junk], "is not an IDX file"),
             (["--train-labels", few], "holds 7 images but"),
             (["--class-names", short_names], "2 names for labels up to 2")]
    for extra, message in cases:
        r = convert(*idx_args(idx, tmp_path / "e"), *extra)
        errors = error_lines(r)
        assert r.returncode == 2 and len(errors) == 1 and message in errors[0], (extra, r.stderr)
    assert convert(*idx_args(idx, tmp_path / "twice")).returncode == 0
    r = convert(*idx_args(idx, tmp_path / "twice"))
    assert r.returncode == 2 and "is not empty" in r.stderr


def convert_in_process(capsys, *args):
    """(exit status, error lines) of idx_to_dataset.main in this process: fast, and a traceback would fail."""
    try:
        status = idx_to_dataset.main([str(a) for a in args])
    except SystemExit as e:
        status = e.code
    return status, [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]


def write_header(path, shape, payload=b""):
    with open(path, "wb") as f:
        f.write(gzip.compress(bytes([0, 0, 8, len(shape)]) + struct.pack(f">{len(shape)}I", *shape) + payload))


@pytest.mark.parametrize("case, message", [
    ("huge_header", "over the 1073741824-byte limit"),
    ("inflates_past_header", "file has more"),
    ("raw_length", "file has 100 bytes"),
    ("zero_size", "images of size 0x4 hold no pixels"),
    ("huge_label", "label 2147483647 is not a class index"),
    ("nul_in_name", "cannot be a folder name"),
])
def test_idx_to_dataset_refuses_hostile_files_up_front_and_writes_nothing(idx, tmp_path, capsys, case, message):
    bad = tmp_path / "bad"
    extra = []
    if case == "huge_header":  # 3 GiB promised by 20 bytes: refused before anything is allocated
        write_header(bad, (3, 1 << 15, 1 << 15))
        extra = ["--train-images", bad]
    elif case == "inflates_past_header":  # 20 MB of zeros after a header promising 7 images of 5x4
        write_header(bad, (7, 5, 4), bytes(20 << 20))
        extra = ["--train-images", bad]
    elif case == "raw_length":
        bad.write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", 1 << 30) + bytes(92))
        extra = ["--train-labels", bad]
    elif case == "zero_size":
        write_header(bad, (7, 0, 4))
        extra = ["--train-images", bad]
    elif case == "huge_label":
        write_idx(bad, np.array([0, 1, 2, 0, 1, 2, 0], ">i4"))
        with open(bad, "r+b") as f:  # type 0x0C (int32), the last label 2**31 - 1
            f.seek(2)
            f.write(b"\x0c")
            f.seek(-4, 2)
            f.write(struct.pack(">i", 2**31 - 1))
        extra = ["--train-labels", bad]
    elif case == "nul_in_name":
        bad.write_text("cat\nd\0g\nbird\n")
        extra = ["--class-names", bad]
    status, errors = convert_in_process(capsys, *idx_args(idx, tmp_path / "out"), *extra)
    assert status == 2 and len(errors) == 1 and message in errors[0], errors
    assert not (tmp_path / "out").exists() and not [p for p in os.listdir(tmp_path) if p.endswith(".partial")]


def test_idx_to_dataset_failing_mid_way_leaves_no_half_made_dataset(idx, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(builtins, "open", builtins.open)  # restored after the test
    faults.install("classes.txt", errno.ENOSPC)  # the last file written
    status, errors = convert_in_process(capsys, *idx_args(idx, tmp_path / "out"))
    assert status == 2 and len(errors) == 1 and "No space left on device" in errors[0], errors
    assert not (tmp_path / "out").exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".out.")]


@pytest.fixture(scope="module")
def fashion(tmp_path_factory):
    """The committed 3,000 + 1,000 real Fashion-MNIST images, converted."""
    root = tmp_path_factory.mktemp("fashion")
    r = convert("--src", MINI, "--out", root)
    assert r.returncode == 0, r.stderr
    return root


@pytest.fixture(scope="module")
def trained(fashion, tmp_path_factory):
    """T2T-ViT-7 trained from scratch on the 3,000 images: ~6 passes, about a minute on 2 cores."""
    out = tmp_path_factory.mktemp("trained")
    overrides = ["-o", f"Data.root={fashion}", f"Global.output_dir={out / 'out'}", f"Global.log_dir={out / 'log'}",
                 "Global.epochs=6", "Global.eval_every=6", "Data.batch_size=100", "Data.global_batch_size=100",
                 "EMA.enable=false", "Global.device=cpu",
                 "Global.img_size=32"]  # the recipe trains at 48 px; 32 keeps this minute's run (and its bounds)
    return run_tool("train.py", *overrides, config=FASHION, timeout=600), out, overrides


@pytest.mark.slow
def test_training_from_scratch_learns_real_images(trained):
    # A broken loss, optimizer, schedule or data path stays near the 10% of chance, a working one reaches
    # ~75% on the 1,000 held-out test images.
    r, out, _ = trained
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    [(epoch, top1, n)] = VAL_LINE.findall(r.stdout)
    assert (epoch, n) == ("6", "1000")
    assert float(top1) >= 0.60, r.stdout[-3000:]
    curve = run_tool("plot_curve.py", out / "log", config=None)
    assert curve.returncode == 0, curve.stderr
    assert (out / "log" / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"val top-1 (model) {float(top1):.4f} at epoch 6" in curve.stdout


@pytest.mark.slow
def test_trained_model_in_bf16_agrees_with_fp32_on_the_held_out_images(trained):
    # The speed target's accuracy half: every deployment backend that runs bf16 on this CPU gives the fp32
    # model's top-1 on >= 99% of the 1,000 held-out Fashion-MNIST images, measured by the benchmark itself.
    r, out, overrides = trained
    assert r.returncode == 0, r.stderr[-2000:]
    bench = run_tool("benchmark.py", *overrides, "--weights", out / "out" / "latest.pdckpt", "--agree-on", "val",
                     "--only", "eval_dynamic", "engine", "--batch", "100", "--warmup", "0", "--repeat", "1",
                     config=FASHION, timeout=600)
    assert bench.returncode == 0, bench.stderr[-2000:]
    [line] = [x for x in bench.stdout.splitlines() if x.startswith("BENCHMARK_JSON ")]
    report = json.loads(line[len("BENCHMARK_JSON "):])
    assert report["compared_images"] == 1000 and report["settings"]["img_size"] == 32
    rows = {r["setting"]: r for r in report["results"]}
    bf16 = [b for b in backends.available_backends() if "bf16" in backends.supported_precisions(b)]
    assert sorted(s for s in rows if s.endswith("bf16")) == sorted(f"{b} bf16" for b in bf16)
    int8 = [b for b in backends.available_backends() if "int8" in backends.supported_precisions(b)]
    assert sorted(s for s in rows if s.endswith("int8")) == sorted(f"{b} int8" for b in int8)
    fp32_top1 = rows["Paddle dynamic graph"]["top1_vs_labels"]
    for setting, row in rows.items():
        if setting.endswith("bf16"):
            assert 0 < row["max_abs_diff"] and row["top1_agreement"] >= 0.99, row
        elif setting.endswith("int8"):
            # Post-training int8 (calibrated on 300 of these images) against fp32 on the 1,000 held-out
            # images (INT8_AGREE above says what is measured).
            assert 0 < row["max_abs_diff"] and row["top1_agreement"] >= INT8_AGREE, (setting, row["top1_agreement"])
            assert fp32_top1 - row["top1_vs_labels"] <= INT8_TOP1_DROP, (fp32_top1, row["top1_vs_labels"], setting)
        else:
            # On some of these images the Performer's normaliser falls to ~1e-8 (its epsilon), which amplifies
            # float rounding: fp32 backends and PyTorch differ from the dynamic graph by up to ~2.6e-4 there
            # (median 6e-7), on logits of std ~1.4; never on a top-1.
            assert row["max_abs_diff"] < 1e-3 and row["top1_agreement"] == 1.0, row


@pytest.mark.slow
def test_finetune_from_1000_class_weights_on_class_folders(fashion, tmp_path):
    # "Official" weights: a 1000-class model at 224 px; the fine-tune is 10 classes at 32 px.
    paddle.seed(7)
    official = create_model("t2t_vit_7", img_size=224, num_classes=1000).state_dict()
    weights = tmp_path / "t2t_vit_7.pdparams"
    paddle.save(official, str(weights))
    folders = tmp_path / "folders"
    for split in ("train", "val"):  # a few images per class, as class folders without list files
        for name in NAMES:
            os.makedirs(folders / split / name)
            for png in sorted(os.listdir(fashion / split / name))[:3]:
                os.link(fashion / split / name / png, folders / split / name / png)
    overrides = ["-o", f"Data.root={folders}", "Global.num_classes=10", "Global.img_size=32",
                 f"Global.output_dir={tmp_path / 'out'}", f"Global.log_dir={tmp_path / 'log'}", "Global.device=cpu",
                 "Data.batch_size=10", "Data.global_batch_size=10", "Data.num_workers=0"]
    r = run_tool("train.py", *overrides, "Global.epochs=2", "Scheduler.warmup_epochs=1", f"Global.pretrained={weights}",
             config=FINETUNE)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert f"fine-tuning from {weights}" in r.stdout
    assert "pos_embed [1, 197, 256] -> [1, 5, 256]: regenerated" in r.stdout
    assert "head.weight [256, 1000] dropped: re-initialised for 10 classes" in r.stdout
    state = load_file(str(tmp_path / "out" / "latest.pdckpt"))
    assert state["class_names"] == sorted(NAMES)
    tuned = state["model"]
    assert list(tuned["head.weight"].shape) == [256, 10]
    # Six AdamW steps at lr <= 1e-4 move a weight by at most ~6e-4; a fresh initialisation would be ~0.1 away.
    for key in ("blocks.0.attn.qkv.weight", "tokens_to_token.attention1.kqv.weight"):
        assert np.abs(tuned[key].numpy() - official[key].numpy()).max() < 2e-3, key

    image = folders / "val" / "Trouser" / sorted(os.listdir(folders / "val" / "Trouser"))[0]
    r = run_tool("predict.py", str(image), *overrides, config=FINETUNE)
    assert r.returncode == 0, r.stderr
    name = re.search(r"class name: (.+)", r.stdout).group(1)
    assert name in NAMES, r.stdout
