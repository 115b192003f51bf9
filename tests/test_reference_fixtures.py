"""The official code's reference fixtures travel with the repo and are what tools/make_reference.py made: each file
has the sha256 its meta.json records, the weights and inputs that are not stored regenerate bit for bit, and the
README is the tool's. Regenerating them from the official code (twice, byte for byte) needs a checkout of it and
timm 0.3.4, which CI does not install: T2T_OFFICIAL_REPO=PATH (and T2T_REFERENCE_PYTHON, a Python that has them)
runs that test.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

import make_reference
import official_fixtures as fx
from runner import REFERENCE, ROOT, TRAIN_REFERENCE, error_lines, official_weights, run_main
from t2tvit.errors import UserError

FOLDERS = [REFERENCE, TRAIN_REFERENCE]
OFFICIAL_REPO = os.environ.get("T2T_OFFICIAL_REPO")


def tree_bytes(folder):
    """{path relative to folder: bytes} of every file under folder."""
    return {os.path.relpath(os.path.join(d, n), folder): open(os.path.join(d, n), "rb").read()
            for d, _, names in os.walk(folder) for n in names}


@pytest.mark.parametrize("folder", FOLDERS, ids=os.path.basename)
def test_every_fixture_file_has_the_sha256_its_meta_json_records(folder):
    meta = fx.read_meta(folder)
    files = sorted(f for f in os.listdir(folder) if f != fx.META)
    assert files == sorted(meta["files_sha256"]) and len(files) >= 1
    assert {f: fx.file_sha256(os.path.join(folder, f)) for f in files} == meta["files_sha256"]


def test_the_fixtures_are_a_few_mb_of_npz_json_and_markdown_with_nothing_pickled():
    total = 0
    for path in tree_bytes(fx.FIXTURES):
        full = os.path.join(fx.FIXTURES, path)
        total += os.path.getsize(full)
        assert path.endswith((".npz", ".json", ".md")), path
        if path.endswith(".npz"):
            with np.load(full, allow_pickle=False) as stored:
                assert all(stored[k].dtype.kind in "fiu" for k in stored.files), path
    assert total < 3_000_000, total


@pytest.mark.parametrize("folder", FOLDERS, ids=os.path.basename)
def test_the_seeded_weights_regenerate_bit_for_bit(folder):
    meta = fx.read_meta(folder)["weights"]
    weights = fx.seeded_weights(meta["spec"], meta["seed"])
    assert fx.digest(weights) == meta["sha256"]
    assert fx.digest(fx.seeded_weights(meta["spec"], meta["seed"] + 1)) != meta["sha256"]  # the check can fail
    # every tensor of T2T-ViT-7's state dict but the fixed position table [1, 197, 256]
    assert len(weights) == 110 and sum(w.size for w in weights.values()) == 4310222 - 197 * 256


def test_the_seeded_weights_follow_their_recipe():
    w = official_weights()
    for name in ("tokens_to_token.attention1.w", "tokens_to_token.attention2.w"):
        assert w[name].shape == (32, 64)
        np.testing.assert_allclose(w[name] @ w[name].T, 32 * np.eye(32), atol=1e-5)  # orthogonal, norm sqrt(32)
    recipe = {"blocks.0.attn.qkv.weight": (0, 0.02), "head.weight": (0, 0.02), "head.bias": (0, 0.02),
              "blocks.3.norm1.bias": (0, 0.02), "cls_token": (0, 0.02), "blocks.3.norm1.weight": (1, 0.1)}
    for name, (mean, std) in recipe.items():  # within 4 standard errors of the recipe's mean, 10% of its std
        assert abs(w[name].mean() - mean) < 4 * std / np.sqrt(w[name].size), name
        assert abs(w[name].std() / std - 1) < 0.1, name


def test_the_eval_input_regenerates_bit_for_bit():
    meta = fx.read_meta(REFERENCE)["input"]
    x = fx.random_input(meta["seed"], tuple(meta["shape"]))
    assert x.shape == (2, 3, 224, 224) and fx.digest({"input": x}) == meta["sha256"]


def test_each_training_batch_rebuilds_from_the_stored_pixels_as_the_official_collate_made_it():
    meta = fx.read_meta(TRAIN_REFERENCE)
    batches = fx.train_batches(TRAIN_REFERENCE)
    assert len(batches) == len(meta["batches"]) == 3
    for (images, targets), made in zip(batches, meta["batches"]):
        assert images.shape == (8, 3, 224, 224) and targets.shape == (8, 1000)
        assert fx.digest({"images": images, "targets": targets}) == made["sha256"]


def test_the_readme_is_what_make_reference_writes_for_the_recorded_versions():
    eval_meta, train_meta = fx.read_meta(REFERENCE), fx.read_meta(TRAIN_REFERENCE)
    assert eval_meta["versions"] == train_meta["versions"] and eval_meta["versions"]["timm"] == "0.3.4"
    with open(os.path.join(fx.FIXTURES, "README.md"), encoding="utf-8") as f:
        assert f.read() == make_reference.readme(eval_meta["versions"], eval_meta, train_meta)


@pytest.mark.parametrize("case", ["missing", "modified"])
def test_make_reference_refuses_other_code_than_the_official_commits_in_one_line(tmp_path, case):
    repo = tmp_path / "T2T-ViT"
    (repo / "models").mkdir(parents=True)
    if case == "modified":
        for rel in make_reference.OFFICIAL_SOURCES:
            (repo / rel).write_text("# not the official code\n")
    r = run_main("make_reference.py", "--official-repo", repo, "--out", tmp_path / "out", config=None)
    assert r.returncode == 2 and len(error_lines(r)) == 1, r.stderr
    assert "models/t2t_vit.py" in error_lines(r)[0]
    assert ("does not exist" if case == "missing" else "not that of yitu-opensource/T2T-ViT") in error_lines(r)[0]
    assert not (tmp_path / "out").exists()


def test_make_reference_without_timm_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "timm", None)  # as if not installed
    with pytest.raises(UserError, match="needs timm: pip install --no-deps timm==0.3.4"):
        make_reference.import_official(str(tmp_path))


@pytest.mark.slow
@pytest.mark.may_skip_in_ci("needs a checkout of the official T2T-ViT code and timm 0.3.4, which CI does not install")
@pytest.mark.skipif(not OFFICIAL_REPO, reason="regenerating the reference fixtures needs the official code: set "
                    "T2T_OFFICIAL_REPO=<a checkout of yitu-opensource/T2T-ViT> and T2T_REFERENCE_PYTHON=<a Python "
                    "with torch and timm 0.3.4> (tests/data/official/README.md)")
def test_make_reference_twice_writes_the_same_bytes_as_the_committed_fixtures(tmp_path):
    python = os.environ.get("T2T_REFERENCE_PYTHON", sys.executable)
    runs = []
    for name in ("first", "second"):
        r = subprocess.run([python, os.path.join(ROOT, "tools", "make_reference.py"), "--official-repo", OFFICIAL_REPO,
                            "--out", str(tmp_path / name)], capture_output=True, text=True, timeout=1200)
        assert r.returncode == 0, r.stderr[-3000:]
        runs.append(tree_bytes(tmp_path / name))
    assert runs[0] == runs[1] and len(runs[0]) == 8
    if fx.read_meta(tmp_path / "first" / "t2t_vit_7")["versions"] == fx.read_meta(REFERENCE)["versions"]:
        assert runs[0] == tree_bytes(fx.FIXTURES)  # with the recorded versions, the committed bytes
