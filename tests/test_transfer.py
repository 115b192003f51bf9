"""Transfer: class subsets as list files (tools/make_subset.py), pretraining on some Fashion-MNIST classes and
fine-tuning on others at another size beating the same recipe from scratch, and the two runs in one chart."""
import os
import re

import numpy as np
import pytest
from PIL import Image

import idx_to_dataset
import make_subset
import plot_curve
from runner import ROOT, run_tool

MINI = os.path.join(ROOT, "tests", "data", "fashion_mnist_mini")
VAL_LINE = re.compile(r"Epoch \[(\d+)/\d+\] val \(model\): top1 ([\d.]+), top5 [\d.]+ on (\d+) images")


def call(main, capsys, *args):
    """(exit status, stdout, error lines) of a tool's main() in this process."""
    try:
        status = main([str(a) for a in args])
    except SystemExit as e:
        status = e.code
    out, err = capsys.readouterr()
    return status or 0, out, [line for line in err.splitlines() if line.startswith("error:")]


@pytest.fixture
def tiny(tmp_path):
    """Classes a, b, c, d of 6, 6, 3, 6 one-pixel PNGs, as class folders and as train.txt, and e of none."""
    root = tmp_path / "ds"
    lines = []
    for label, (name, n) in enumerate([("a", 6), ("b", 6), ("c", 3), ("d", 6)]):
        os.makedirs(root / "train" / name)
        for i in range(n):
            Image.new("RGB", (1, 1)).save(root / "train" / name / f"{i}.png")
            lines.append(f"train/{name}/{i}.png {label}\n")
    (root / "train.txt").write_text("".join(lines))
    (root / "classes.txt").write_text("a\nb\nc\nd\ne\n")
    return root


def read_pairs(path):
    return [(p, int(label)) for p, label in (line.rsplit(" ", 1) for line in path.read_text().splitlines())]


def test_a_subset_renumbers_the_chosen_classes_in_the_order_given_and_names_them(tiny, capsys):
    status, out, _ = call(make_subset.main, capsys, "--root", tiny, "--split", "train", "--classes", "3,1",
                          "--out", "sub.txt")
    assert status == 0
    assert read_pairs(tiny / "sub.txt") == [(f"train/d/{i}.png", 0) for i in range(6)] + [
        (f"train/b/{i}.png", 1) for i in range(6)]
    assert (tiny / "classes_3_1.txt").read_text() == "d\nb\n"
    assert "labels: 3 d -> 0, 1 b -> 1" in out
    assert not [f for f in os.listdir(tiny) if ".tmp" in f]  # the atomic writes left no temporary behind


def test_per_class_subsets_are_deterministic_nested_and_the_same_from_folders_and_lists(tiny, capsys):
    def subset(n, seed, *source):
        out = f"s{n}_{seed}_{len(source)}.txt"
        args = ["--root", tiny, "--split", "train", "--classes", "0-1", "--per-class", n, "--seed", seed, *source]
        assert call(make_subset.main, capsys, *args, "--out", out)[0] == 0
        return read_pairs(tiny / out)

    two, four = subset(2, 0), subset(4, 0)
    assert len(two) == 4 and [label for _, label in two] == [0, 0, 1, 1]
    assert set(two) < set(four)  # the 2 images of a seed are among its 4
    assert subset(2, 0) == two and subset(2, 0, "--list", "") == two
    assert subset(2, 1) != two  # another seed, other images (of C(6, 2)^2 = 225 choices)


@pytest.mark.parametrize("args, message", [
    (["--classes", "1-7"], "class 5 is outside [0, 5)"),
    (["--classes", "3-4"], "class 4 (e) has no images in"),
    (["--classes", "0,x"], "is not a list of class indices"),
    (["--classes", "2-1"], "runs backwards"),
    (["--classes", "0,0-1"], "names a class twice"),
    (["--classes", "0-2", "--per-class", "4"], "class 2 (c) has 3 images in"),
    (["--classes", "0", "--out", "../escape.txt"], "must be a file name relative to --root"),
    (["--classes", "0", "--out", "train.txt"], "is the list file drawn from"),
    (["--classes", "0", "--list", "nope.txt"], "list file not found"),
    (["--classes", "0", "--names", "nope.txt"], "Data.classes: 'nope.txt' is neither"),
])
def test_make_subset_refuses_bad_input_in_one_line_and_writes_nothing(tiny, capsys, args, message):
    before = sorted(os.listdir(tiny))
    args = ["--root", tiny, "--split", "train", "--out", "sub.txt", *args]
    status, _, errors = call(make_subset.main, capsys, *args)
    assert status == 2 and len(errors) == 1 and message in errors[0], errors
    assert sorted(os.listdir(tiny)) == before


@pytest.mark.parametrize("args, message", [
    (["a", "b", "--label", "A", "--out", "x.png"], "--label: 1 labels for 2 runs"),
    (["a", "b"], "--out: several runs make one chart"),
])
def test_plot_curve_refuses_labels_that_do_not_match_the_runs(capsys, args, message):
    status, _, errors = call(plot_curve.main, capsys, *args)
    assert status == 2 and len(errors) == 1 and message in errors[0], errors


@pytest.fixture(scope="module")
def transfer(tmp_path_factory):
    """The experiment of config/fmnist_*.yaml at CI size on the committed mini set (300 training images per
    class): pretrain on classes 0-4 (1,500 images, 4 epochs at 32 px), then fine-tune on 10 images per class of
    classes 5-9 at 48 px, and the same recipe from scratch; both validated on the 500 test images of 5-9.

    At this size the recipe is short and sharp: 100 steps of 10 images at lr 1e-3 with layer decay 0.75 (the
    lower blocks keep most of what they learnt). Measured with Global.seed 0-3: fine-tuned 57.6/59.4/59.8/55.2%,
    scratch 45.0/56.2/57.0/50.6% (gaps +12.6/+3.2/+2.8/+4.6 points). Without layer decay (20 images per class,
    50 steps, lr 5e-4 or 1e-3; or 10 per class, 100 steps, lr 5e-4) the gap ranged from -9 to +10 points over
    seeds 0-2: the minute of pretraining learns too little to transfer reliably through the change of size
    unless the fine-tuning spares the lower blocks.
    """
    tmp = tmp_path_factory.mktemp("transfer")
    root = tmp / "fashion"
    assert idx_to_dataset.main(["--src", MINI, "--out", str(root)]) is None
    for split, classes, per_class, out in (("train", "0-4", 0, "train_0to4.txt"), ("val", "0-4", 0, "val_0to4.txt"),
                                           ("train", "5-9", 10, "train_5to9_10.txt"),
                                           ("val", "5-9", 0, "val_5to9.txt")):
        make_subset.main(["--root", str(root), "--split", split, "--classes", classes, "--per-class", str(per_class),
                          "--out", out])
    common = ["-o", f"Data.root={root}", "Global.device=cpu", "Data.num_workers=0", "EMA.enable=false",
              "Global.eval_every=100"]
    runs = {}

    def train(name, config, *overrides):
        r = run_tool("train.py", *common, f"Global.output_dir={tmp / name / 'out'}",
                     f"Global.log_dir={tmp / name / 'log'}", *overrides, config=os.path.join(ROOT, "config", config),
                     timeout=600)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        runs[name] = r.stdout

    train("pretrain", "fmnist_pretrain_0to4.yaml", "Global.epochs=4", "Data.batch_size=50",
          "Data.global_batch_size=50")
    recipe = ["Data.train_list=train_5to9_10.txt", "Global.epochs=20", "Data.batch_size=10",
              "Data.global_batch_size=10", "Optimizer.lr=0.001", "Optimizer.layer_decay=0.75"]
    pretrained = tmp / "pretrain" / "out" / "best.pdckpt"
    train("finetune", "fmnist_finetune_5to9.yaml", *recipe, f"Global.pretrained={pretrained}")
    train("scratch", "fmnist_scratch_5to9.yaml", *recipe)
    return tmp, runs


def top1(stdout, epochs, images):
    [(epoch, value, n)] = VAL_LINE.findall(stdout)
    assert (int(epoch), int(n)) == (epochs, images)
    return float(value)


@pytest.mark.slow
def test_fine_tuning_from_other_classes_at_another_size_beats_the_same_recipe_from_scratch(transfer):
    tmp, runs = transfer
    # 5 of 10 classes learnt for a minute: far above the 20% of chance on their 500 test images
    assert top1(runs["pretrain"], 4, 500) >= 0.6
    # What was re-made, on the log's "fine-tuning from" line: the table for 3 x 3 patches + cls instead of
    # 2 x 2 + cls, and the 5-class head although the pretrained one has 5 outputs too (Global.reset_head).
    [line] = [x for x in runs["finetune"].splitlines() if "fine-tuning from" in x]
    assert f"fine-tuning from {tmp / 'pretrain' / 'out' / 'best.pdckpt'} (model)" in line
    assert "pos_embed [1, 5, 256] -> [1, 10, 256]: regenerated for this img_size" in line
    assert "head.weight [256, 5] dropped: re-initialised for 5 new classes (reset_head)" in line
    assert "fine-tuning from" not in runs["scratch"]
    tuned, scratch = top1(runs["finetune"], 20, 500), top1(runs["scratch"], 20, 500)
    # seed 0 (this test, twice) measured 57.6% against 45.0%; the smallest gap over seeds 0-3 was 2.8 points
    # (see the fixture)
    assert tuned >= scratch + 0.02, (tuned, scratch)


@pytest.mark.slow
def test_plot_curve_draws_the_fine_tuned_and_scratch_runs_in_one_chart(transfer, capsys):
    tmp, runs = transfer
    out = tmp / "transfer.png"
    status, stdout, errors = call(plot_curve.main, capsys, tmp / "finetune" / "log", tmp / "scratch" / "log",
                                  "--label", "fine-tuned", "--label", "from scratch", "--out", out)
    assert status == 0 and errors == []
    assert Image.open(out).format == "PNG" and np.asarray(Image.open(out)).std() > 0
    tuned, scratch = top1(runs["finetune"], 20, 500), top1(runs["scratch"], 20, 500)
    assert (f"fine-tuned: val top-1 (model) {tuned:.4f} at epoch 20; "
            f"from scratch: val top-1 (model) {scratch:.4f} at epoch 20") in stdout
