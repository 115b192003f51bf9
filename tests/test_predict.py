"""tools/predict.py at scale: files and folders, fixed-size batches, JSON lines with logits, unreadable images."""
import glob
import json
import os
import shutil

import numpy as np
import paddle
import pytest

from runner import ROOT, error_lines, run_main, run_tool, tool_with_fault
from t2tvit import classify
from t2tvit.config import load_config
from t2tvit.t2t import create_model
from t2tvit.transforms import build_transform

CONFIG = os.path.join(ROOT, "config", "t2t_vit_7.yaml")
PHOTOS = sorted(glob.glob(os.path.join(ROOT, "lit_data", "val", "*", "*.JPEG")))
SIZE, CLASSES = 32, 5
SMALL = ["-o", f"Global.img_size={SIZE}", f"Global.num_classes={CLASSES}"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    paddle.seed(3)
    model = create_model("t2t_vit_7", img_size=SIZE, num_classes=CLASSES)
    model.eval()
    path = tmp_path_factory.mktemp("weights") / "weights.pdparams"
    paddle.save(model.state_dict(), str(path))
    return str(path), model


def photo_tree(root):
    """root/a/{0,1,2}.JPEG, root/b/c/{3,4}.JPEG, root/b/broken.jpg, root/notes.txt (not an image); returns the
    image paths in the order predict visits them."""
    layout = {"a/0.JPEG": 0, "a/1.JPEG": 1, "a/2.JPEG": 2, "b/c/3.JPEG": 3, "b/c/4.JPEG": 4}
    for rel, i in layout.items():
        os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
        shutil.copy(PHOTOS[i], os.path.join(root, rel))
    (root / "b" / "broken.jpg").write_bytes(b"\xff\xd8 not a JPEG")
    (root / "notes.txt").write_text("not an image")
    return [str(root / p) for p in ("a/0.JPEG", "a/1.JPEG", "a/2.JPEG", "b/broken.jpg", "b/c/3.JPEG", "b/c/4.JPEG")]


@pytest.mark.slow
def test_predict_on_a_folder_writes_one_json_line_per_image_and_goes_on_past_a_broken_one(weights, tmp_path):
    path, model = weights
    expected_paths = photo_tree(tmp_path / "photos") + [PHOTOS[5]]
    out = tmp_path / "predictions.jsonl"
    r = run_tool("predict.py", tmp_path / "photos", PHOTOS[5], "--weights", path, "--batch-size", "2", "--topk", "3",
             "--output", out, "--logits", *SMALL, config=CONFIG)
    assert r.returncode == 1, r.stderr  # non-zero: one image could not be read
    assert f"cannot read image {expected_paths[3]}" in r.stderr and "1 of 7 images could not be read" in r.stderr
    assert sorted(os.listdir(tmp_path)) == ["photos", "predictions.jsonl"]  # no partial, no lock left
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [rec["path"] for rec in records] == expected_paths
    assert set(records[3]) == {"path", "error"} and records[3]["error"]
    good = [rec for rec in records if "error" not in rec]
    transform = build_transform(load_config(CONFIG, SMALL[1:]), "val")
    with paddle.no_grad():
        logits = model(paddle.to_tensor(np.stack([transform(rec["path"]) for rec in good]))).numpy()
    ids = [line for line in r.stdout.splitlines() if line.startswith("class_id is: ")]
    assert ids == [f"class_id is: {rec['class_id']}" for rec in good]
    for rec, row in zip(good, logits):
        assert set(rec) == {"path", "class_id", "class_name", "topk", "logits"}
        assert np.abs(np.array(rec["logits"]) - row).max() < 1e-5
        assert [c for c, _, _ in rec["topk"]] == list(np.argsort(-row)[:3])
        assert rec["class_id"] == rec["topk"][0][0] and rec["class_name"] == rec["topk"][0][1]
        probs = np.exp(row - row.max()) / np.exp(row - row.max()).sum()
        assert np.allclose([p for _, _, p in rec["topk"]], probs[np.argsort(-row)[:3]], atol=1e-6)


class Counting:
    """An iterator over `paths` that counts how many have been drawn."""

    def __init__(self, paths):
        self.paths, self.drawn = iter(paths), 0

    def __iter__(self):
        return self

    def __next__(self):
        path = next(self.paths)
        self.drawn += 1
        return path


def test_predict_reads_and_runs_at_most_batch_size_images_at_a_time(capsys):
    paths = Counting([f"img{i}.png" for i in range(7)])
    calls = []

    def forward(images):
        calls.append((len(images), paths.drawn))
        return np.tile(np.arange(CLASSES, dtype="float32"), (len(images), 1))

    done, failed = classify.classify(paths, lambda p: np.zeros((3, 2, 2), "float32"), forward, list("abcde"),
                                     topk=2, batch_size=3)
    assert (done, failed) == (7, 0)
    assert calls == [(3, 3), (3, 6), (1, 7)]  # each batch read just before it runs, never more
    assert capsys.readouterr().out.count("class_id is: 4") == 7


def test_predict_interrupted_keeps_every_finished_line_and_no_whole_looking_file(tmp_path):
    def forward(images):
        if forward.calls:
            raise KeyboardInterrupt
        forward.calls += 1
        return np.zeros((len(images), CLASSES), "float32")

    forward.calls = 0
    with pytest.raises(KeyboardInterrupt), classify.JsonLines(str(tmp_path / "p.jsonl")) as out:
        classify.classify([f"img{i}.png" for i in range(5)], lambda p: np.zeros(3), forward, list("abcde"),
                          topk=1, batch_size=2, out=out)
    partials = glob.glob(str(tmp_path / "p.jsonl.*.partial"))
    assert os.listdir(tmp_path) == [os.path.basename(partials[0])]  # no p.jsonl, and the lock released
    lines = open(partials[0]).read().splitlines()
    assert [json.loads(line)["path"] for line in lines] == ["img0.png", "img1.png"]


@pytest.mark.slow
@pytest.mark.parametrize("case", ["bf16_without_inference_dir", "folder_without_images", "logits_without_output"])
def test_predict_misuse_is_one_error_line(weights, tmp_path, case):
    args = {"bf16_without_inference_dir": [PHOTOS[0], "--precision", "bf16"],
            "folder_without_images": [tmp_path],
            "logits_without_output": [PHOTOS[0], "--logits"]}[case]
    r = run_main("predict.py", *args, "--weights", weights[0], *SMALL, config=CONFIG)
    errors = error_lines(r)
    assert r.returncode != 0 and len(errors) == 1 and "Traceback" not in r.stderr, r.stderr
    assert {"bf16_without_inference_dir": "--precision applies to an exported model",
            "folder_without_images": "no images found",
            "logits_without_output": "give --output too"}[case] in errors[0]


@pytest.mark.slow
def test_predict_on_a_full_disk_is_one_error_line_and_leaves_no_final_file(weights, tmp_path):
    out = tmp_path / "p.jsonl"
    r = tool_with_fault(["*.partial", "ENOSPC", 100], "predict.py", *PHOTOS[:3], "--weights", weights[0],
                        "--output", out, "--batch-size", "1", *SMALL)
    errors = error_lines(r)
    assert r.returncode == 2 and len(errors) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "No space left on device" in errors[0] and ".partial" in errors[0]
    assert not out.exists() and not os.path.exists(f"{out}.lock")
