"""ImageNet-ReaL, -V2, -A, -R and -Sketch (t2tvit/eval_sets.py) and val.py's results file (t2tvit/results_file.py).

Each set's metric is proven on a small folder of its layout, scored by a stub model whose answers are chosen: an
image's red value says which row of a logits table the stub returns for it, so every top-1 / top-5 below is known
in advance. The results file is checked row by row, also with two processes appending at once.
"""
import csv
import hashlib
import json
import multiprocessing
import os

import numpy as np
import paddle
import pytest
from PIL import Image

from runner import error_lines, run_main
from t2tvit import config, eval_sets, results_file
from t2tvit.errors import UserError
from t2tvit.macs import count_macs, count_parameters
from t2tvit.t2t import create_model
from t2tvit.transforms import Normalize

SYNSETS = eval_sets.data_lines(eval_sets.IMAGENET_SYNSETS)
CODE_STEP = 8  # red = CODE_STEP * code: a flat image keeps its value through resize and crop, give or take 1


def make_cfg(root, *overrides):
    return config.load_config(config.SCHEMA_PATH, [f"Data.root={root}", "Global.device=cpu", "Global.img_size=32",
                                                    "Data.batch_size=3", "Data.num_workers=0", *overrides])


def code_image(path, code):
    """A flat 40 x 40 image that the stub reads as `code` (PNG bytes whatever the name says: exact pixels)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (40, 40), (CODE_STEP * code, 0, 0)).save(path, format="PNG")


def ranked(*classes):
    """1000 logits whose top-k are classes[:k]."""
    logits = np.zeros(1000, np.float32)
    for rank, c in enumerate(classes):
        logits[c] = 100.0 - rank
    return logits


class Stub(paddle.nn.Layer):
    """A 1000-class 'model' returning table[code] for an image whose red value is CODE_STEP * code."""

    num_classes = 1000

    def __init__(self, cfg, table):
        super().__init__()
        self.table = np.stack(table)
        self.normalize = Normalize(cfg.Data.mean, cfg.Data.std)

    def forward(self, x):
        red = x[:, 0, 0, 0].numpy() * self.normalize.std255[0] + self.normalize.mean255[0]
        return paddle.to_tensor(self.table[np.round(red / CODE_STEP).astype(int)])


class Ranks:
    """A runtime of `world` processes seen from `rank`, whose all_sum is this rank's share alone (the tests sum
    the shares themselves)."""

    def __init__(self, world=1, rank=0):
        self.world, self.rank, self.is_main = world, rank, rank == 0

    def all_sum(self, values):
        return list(values)


def scored(evalset, stub, world=1):
    """evaluate() over `world` ranks, their shares summed: {top1, top5, images[, real_*]} as counts' fractions."""
    counts = {}
    for rank in range(world):
        r = evalset.evaluate(stub, Ranks(world, rank))
        for metric, images in (("top1", "images"), ("top5", "images"), ("real_top1", "real_images"),
                               ("real_top5", "real_images")):
            if metric in r:
                counts[metric] = counts.get(metric, 0) + round(r[metric] * r[images])
        for images in ("images", "real_images"):
            if images in r:
                counts[images] = counts.get(images, 0) + r[images]
    return {k: v / counts["real_images" if k.startswith("real_top") else "images"] if "top" in k else v
            for k, v in counts.items()}


# ReaL's first six validation images: ILSVRC2012_val_00000001 has no ReaL label, 2 has {970, 795}, 3 {230, 231},
# 4 {809}, 5 {516, 850}, 6 {57} (timm's imagenet_real_labels.json). Their ordinary labels here, and what the stub
# predicts (top-5, best first), chosen so that ordinary and ReaL answers differ:
REAL_CASES = [  # (ordinary label, predictions): ordinary top1 / top5, ReaL top1 / top5
    (65, (65, 1, 2, 3, 4)),       # right / right; no ReaL label: left out of ReaL
    (970, (795, 1, 2, 3, 4)),     # wrong / wrong; right / right (795 is in its set)
    (230, (231, 1, 230, 3, 4)),   # wrong / right; right / right
    (809, (1, 2, 3, 4, 809)),     # wrong / right; wrong / right
    (516, (0, 1, 2, 3, 4)),       # wrong / wrong; wrong / wrong
    (57, (57, 1, 2, 3, 4)),       # right / right; right / right
]


@pytest.mark.parametrize("world", [1, 2])
def test_real_counts_a_prediction_in_the_reassessed_set_and_leaves_out_images_without_labels(tmp_path, world):
    lines = []
    for i, (label, _) in enumerate(REAL_CASES):
        name = f"val/{SYNSETS[label]}/ILSVRC2012_val_{i + 1:08d}.JPEG"
        code_image(str(tmp_path / name), i)
        lines.append(f"{name} {label}")
    (tmp_path / "val.txt").write_text("\n".join(lines) + "\n")
    cfg = make_cfg(tmp_path)
    evalset = eval_sets.EvalSet("real", cfg)
    assert [sorted(s) for s in evalset.real_sets] == [[], [795, 970], [230, 231], [809], [516, 850], [57]]
    r = scored(evalset, Stub(cfg, [ranked(*p) for _, p in REAL_CASES]), world)
    assert r == {"top1": 2 / 6, "top5": 4 / 6, "images": 6, "real_top1": 3 / 5, "real_top5": 4 / 5, "real_images": 5}
    assert "not the published set's figure" in evalset.notes()[0]


def test_real_takes_the_label_set_of_the_file_name_in_the_folder_layout_too(tmp_path):
    code_image(str(tmp_path / "val" / SYNSETS[809] / "ILSVRC2012_val_00000004.JPEG"), 0)
    cfg = make_cfg(tmp_path, "Data.val_list=")
    r = scored(eval_sets.EvalSet("real", cfg), Stub(cfg, [ranked(809, 1, 2, 3, 4)]))
    assert r["real_top1"] == 1.0 and r["real_images"] == 1 and r["top1"] == 1.0


def test_real_refuses_images_that_are_not_imagenet_validation_files(lit_data):
    with pytest.raises(UserError, match=r"imagenet_\d\d\.JPEG is not an ImageNet validation file"):
        eval_sets.EvalSet("real", make_cfg(lit_data))


def class_folders(root, names):
    for name in names:
        os.makedirs(os.path.join(root, name), exist_ok=True)


@pytest.mark.parametrize("kind", ["a", "r"])
def test_imagenet_a_and_r_score_the_logits_of_their_200_classes_only(tmp_path, kind):
    wnids, indices = eval_sets.subset_classes(kind)
    assert len(wnids) == 200 and wnids == sorted(wnids) and [SYNSETS[i] for i in indices] == wnids
    outside = next(c for c in range(1000) if c not in indices)  # a class the set does not have
    class_folders(tmp_path, wnids)
    cases = [  # (position among the 200, predictions over the 1000 classes)
        (0, (outside, indices[0], indices[1], indices[2], indices[3])),  # right only once restricted
        (5, (indices[7], indices[5], indices[1], indices[2], indices[3])),  # top-5 only
        (10, (indices[11], indices[12], indices[13], indices[14], indices[15], indices[10])),  # 6th: wrong
    ]
    for code, (position, _) in enumerate(cases):
        code_image(str(tmp_path / wnids[position] / f"{code}.png"), code)
    cfg = make_cfg(tmp_path)
    evalset = eval_sets.EvalSet(kind, cfg)
    assert sorted(evalset.dataset.labels.tolist()) == [0, 5, 10]
    r = scored(evalset, Stub(cfg, [ranked(*p) for _, p in cases]))
    assert r == {"top1": 1 / 3, "top5": 2 / 3, "images": 3}


def test_v2_labels_folders_by_their_number_not_their_sorted_position(tmp_path):
    class_folders(tmp_path, [str(i) for i in range(1000)])
    cases = [(0, 5), (7, 7), (10, 10), (999, 999)]  # (folder, predicted): "10" sorts before "7" as text
    for code, (folder, _) in enumerate(cases):
        code_image(str(tmp_path / str(folder) / f"{code}.jpeg"), code)
    cfg = make_cfg(tmp_path)
    r = scored(eval_sets.EvalSet("v2", cfg), Stub(cfg, [ranked(p, 1, 2, 3, 4) for _, p in cases]))
    assert r == {"top1": 3 / 4, "top5": 3 / 4, "images": 4}


def test_sketch_labels_wnid_folders_by_the_imagenet_synsets(tmp_path):
    class_folders(tmp_path, SYNSETS)
    code_image(str(tmp_path / "n01440764" / "sketch_0.JPEG"), 0)  # class 0, tench
    code_image(str(tmp_path / "n15075141" / "sketch_1.JPEG"), 1)  # class 999, toilet tissue
    cfg = make_cfg(tmp_path)
    r = scored(eval_sets.EvalSet("sketch", cfg), Stub(cfg, [ranked(0, 1, 2, 3, 4), ranked(998, 1, 2, 3, 4)]))
    assert r == {"top1": 1 / 2, "top5": 1 / 2, "images": 2}


@pytest.mark.parametrize("kind,folders,message", [
    ("v2", [str(i) for i in range(1000) if i != 5], r"1 missing \(5\)"),
    ("v2", SYNSETS, r"1000 missing \(0, 1, 2, 3, 4 \.\.\.\); 1000 foreign \(n01440764"),
    ("sketch", [str(i) for i in range(1000)], "not the ImageNet-Sketch layout"),
    ("a", SYNSETS, r"800 foreign"),
    ("r", eval_sets.subset_classes("r")[0][1:], r"1 missing \(n01443537\)"),
])
def test_a_wrong_layout_is_one_line_naming_the_folders(tmp_path, kind, folders, message):
    class_folders(tmp_path, folders)
    with pytest.raises(UserError, match=message):
        eval_sets.EvalSet(kind, make_cfg(tmp_path))


def test_the_subset_index_files_are_those_of_the_imagenet_synsets():
    for kind in ("a", "r"):
        wnids, indices = eval_sets.subset_classes(kind)
        assert indices == sorted(set(indices)) and len(indices) == 200
    real = json.load(open(eval_sets.REAL_LABELS))
    assert len(real) == 50000 and sum(1 for s in real if s) == 46837
    assert all(0 <= c < 1000 for s in real for c in s)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Random 1000-class T2T-ViT-7 weights at 32 px, and the model they are."""
    paddle.seed(3)
    model = create_model("t2t_vit_7", img_size=32, num_classes=1000)
    path = str(tmp_path_factory.mktemp("weights") / "w.pdparams")
    paddle.save(model.state_dict(), path)
    return path, model


def run_val(weights_path, root, *args):
    return run_main("val.py", "--weights", weights_path, *args, "-o", f"Data.root={root}", "Global.device=cpu",
                    "Global.img_size=32", "Data.num_workers=0", "Data.batch_size=4",
                    f"Global.log_dir={os.path.dirname(weights_path)}")


def test_val_writes_one_results_row_per_run_with_timm_fields_and_what_makes_it_reproducible(tmp_path, weights):
    path, model = weights
    sketch, v2 = tmp_path / "sketch", tmp_path / "v2"
    class_folders(sketch, SYNSETS)
    class_folders(v2, [str(i) for i in range(1000)])
    for i in range(3):
        code_image(str(sketch / SYNSETS[i * 100] / f"{i}.png"), i)
        code_image(str(v2 / str(i * 100) / f"{i}.png"), i)
    table = tmp_path / "results" / "table.csv"
    for root, kind in ((sketch, "sketch"), (v2, "v2")):
        r = run_val(path, root, "--dataset", kind, "--results-file", table)
        assert r.returncode == 0, r.stderr
    with open(table, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["dataset"] for r in rows] == ["sketch", "v2"]
    assert [r["dataset_name"] for r in rows] == ["ImageNet-Sketch", "ImageNetV2"]
    # the same images under the same labels in both layouts: the same answers
    assert rows[0]["top1"] == rows[1]["top1"] and rows[0]["top5"] == rows[1]["top5"]
    digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
    total = count_parameters(model)[0]
    for row in rows:
        assert float(row["top1"]) + float(row["top1_err"]) == pytest.approx(100)
        assert float(row["top5"]) + float(row["top5_err"]) == pytest.approx(100)
        assert row["model"] == "t2t_vit_7" and row["checkpoint"] == path and row["checkpoint_sha256"] == digest
        assert row["weights"] == "weights" and row["images"] == "3" and row["img_size"] == "32"
        assert (row["crop_pct"], row["interpolation"], row["crop_rounding"]) == ("0.9", "bicubic", "half_up")
        assert int(row["params"]) == total and float(row["param_count"]) == round(total / 1e6, 2)
        assert float(row["gmacs"]) == round(sum(count_macs(model, 32).values()) / 1e9, 3)
    assert rows[1]["data_dir"] == str(v2)


def test_a_real_row_holds_the_real_figures_and_a_json_file_is_a_list_of_rows(tmp_path, weights):
    path, _ = weights
    for i, (label, _) in enumerate(REAL_CASES):
        code_image(str(tmp_path / "val" / SYNSETS[label] / f"ILSVRC2012_val_{i + 1:08d}.JPEG"), i)
    out = tmp_path / "real.json"
    r = run_val(path, tmp_path, "--dataset", "real", "--results-file", out, "-o", "Data.val_list=")
    assert r.returncode == 0, r.stderr
    assert "ImageNet-ReaL: top1" in r.stdout and "over the 5 images with ReaL labels" in r.stdout
    rows = json.loads(out.read_text())
    assert len(rows) == 1 and rows[0]["real_images"] == 5 and rows[0]["images"] == 6
    assert rows[0]["real_top1"] + rows[0]["real_top1_err"] == pytest.approx(100)


def test_a_wrong_layout_or_results_file_is_one_error_line_before_any_row(tmp_path, weights):
    path, _ = weights
    class_folders(tmp_path / "v2", [str(i) for i in range(999)])
    r = run_val(path, tmp_path / "v2", "--dataset", "v2", "--results-file", tmp_path / "t.csv")
    assert r.returncode == 2 and len(error_lines(r)) == 1 and "1 missing (999)" in r.stderr
    assert not (tmp_path / "t.csv").exists()
    r = run_val(path, tmp_path / "v2", "--dataset", "v2", "--results-file", tmp_path / "t.txt")
    assert r.returncode == 2 and error_lines(r) == [f"error: --results-file {tmp_path / 't.txt'}: name a .csv or "
                                                    ".json file"]


def test_a_results_file_that_cannot_take_the_row_is_one_line_before_the_evaluation(tmp_path, weights):
    path, _ = weights
    class_folders(tmp_path / "v2", [str(i) for i in range(1000)])
    code_image(str(tmp_path / "v2" / "3" / "0.png"), 0)
    notes = tmp_path / "notes.json"
    notes.write_text('{"not": "a list"}')
    (tmp_path / "folder.csv").mkdir()
    for target, message in ((notes, "is not a results file"), (tmp_path / "folder.csv", "Is a directory")):
        r = run_val(path, tmp_path / "v2", "--dataset", "v2", "--results-file", target)
        assert r.returncode == 2 and len(error_lines(r)) == 1 and message in r.stderr, r.stderr
        assert "final val acc" not in r.stdout  # said before an evaluation whose row would be lost
    assert notes.read_text() == '{"not": "a list"}'


def test_a_file_that_is_not_a_results_file_is_refused_and_left_as_it_was(tmp_path):
    notes = tmp_path / "notes.json"
    notes.write_text('{"not": "a list"}')
    with pytest.raises(UserError, match="is not a results file"):
        results_file.append(str(notes), {"model": "m"})
    assert notes.read_text() == '{"not": "a list"}'
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("a,b\n1,2,3\n")
    with pytest.raises(UserError, match="is not a results table"):
        results_file.append(str(ragged), {"a": 1})
    assert ragged.read_text() == "a,b\n1,2,3\n"


def _append_many(path, writer, count):
    for i in range(count):
        results_file.append(path, {"model": f"w{writer}", "row": i, "top1": 70 + i / 100,
                                   f"only_{writer}": "x" * 2000})


@pytest.mark.parametrize("ext", [".csv", ".json"])
def test_two_processes_appending_at_once_keep_every_row_whole(tmp_path, ext):
    path = str(tmp_path / f"table{ext}")
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_append_many, args=(path, w, 25)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    if ext == ".csv":
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    else:
        rows = json.loads(open(path).read())
    assert len(rows) == 50
    for w in range(2):
        mine = [r for r in rows if r["model"] == f"w{w}"]
        assert [int(r["row"]) for r in mine] == list(range(25))
        assert all(r[f"only_{w}"] == "x" * 2000 for r in mine)
    assert not os.path.exists(path + ".lock")
