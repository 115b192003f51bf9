"""The README and docs/ stay true: every config key documented, the files they name exist, the test command is the
one CI runs, the recorded figures match the committed logs. (tests/test_docs.py checks the commands they show.)"""
import os
import re
import shlex
import subprocess
import zipfile

import pytest
import yaml

from runner import LIT_DATA, ROOT, run_main
from t2tvit.config import load_config
from t2tvit.runtime import read_metrics

README = open(os.path.join(ROOT, "README.md")).read()
DOCS = {name: open(os.path.join(ROOT, "docs", name)).read() for name in sorted(os.listdir(os.path.join(ROOT, "docs")))
        if name.endswith(".md")}
TRAINING = DOCS["training.md"]  # where the Fashion-MNIST run is reported
DEFAULTS = yaml.safe_load(open(os.path.join(ROOT, "config", "default.yaml")))


def test_every_config_key_is_documented():
    keys = [f"{section}.{key}" for section, values in DEFAULTS.items() for key in values]
    assert len(keys) > 40
    assert [k for k in keys if f"`{k}`" not in DOCS["configuration.md"]] == []


def test_ci_runs_the_readme_test_command():
    marker = README.index("<!-- test command -->")
    command = README[marker:].split("\n")[2]
    assert "pip install -r requirements-test.txt" in command and "pytest" in command
    assert "<!-- test command -->" in open(os.path.join(ROOT, ".ci", "run")).read()


def test_referenced_repo_files_exist():
    for text in [README, *DOCS.values()]:
        paths = set(re.findall(r"((?:tools|config|scripts|tests|lit_data|docs)/[\w./-]+\.(?:py|yaml|sh|JPEG|md))", text))
        assert paths and [p for p in paths if not os.path.isfile(os.path.join(ROOT, p))] == []


def test_committed_logs_docs_and_data_hold_no_absolute_path_of_this_machine():
    # committed files only (git ls-files): a user's own runs write absolute paths into log/ and output/, untracked
    folders = ("log", "docs", "config", "lit_data", os.path.join("tests", "data"))
    tracked = subprocess.run(["git", "-C", ROOT, "ls-files", "-z", *folders], capture_output=True, text=True,
                             check=True).stdout.split("\0")
    checked = 0
    for rel in tracked:
        if rel.endswith((".log", ".jsonl", ".json", ".md", ".yaml", ".txt")):
            text = open(os.path.join(ROOT, rel), encoding="utf-8").read()
            checked += 1
            assert "/work/" not in text and not re.search(r'": "/', text), rel
    assert checked > 30


def test_what_an_editable_install_leaves_in_the_checkout_is_ignored_by_git():
    left = ["build/lib/t2tvit/t2t.py", "tools/t2tvit.egg-info/PKG-INFO"]  # pip install -e . (setuptools)
    ignored = subprocess.run(["git", "-C", ROOT, "check-ignore", *left], capture_output=True, text=True).stdout
    assert ignored.split() == left


def test_lit_data_is_what_make_lit_data_makes_of_the_foolbox_photos(tmp_path):
    # the wheel's names, imagenet_<k>_<class id>.jpg, for the committed photos: the tool rewrites the same lists
    # and README (the photos themselves it re-encodes)
    wheel = tmp_path / "foolbox-3.3.4-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z, open(os.path.join(LIT_DATA, "val.txt")) as f:
        for rel, cls in (line.split() for line in f if line.strip()):
            k = re.search(r"imagenet_(\d+)\.JPEG$", rel).group(1)
            z.write(os.path.join(LIT_DATA, rel), f"foolbox/data/imagenet_{k}_{cls}.jpg")
    r = run_main("make_lit_data.py", wheel, "--out", tmp_path / "lit_data", config=None)
    assert r.returncode == 0, r.stderr
    for name in ("README.md", "train.txt", "val.txt"):
        with open(os.path.join(LIT_DATA, name)) as committed:
            assert (tmp_path / "lit_data" / name).read_text() == committed.read(), name
    assert "`tools/t2tvit/data/imagenet_synsets.txt`" in (tmp_path / "lit_data" / "README.md").read_text()


def test_fashion_mnist_figures_are_those_of_the_committed_run():
    log = os.path.join(ROOT, "log", "fashion_mnist")
    text = open(f"{log}/val.log").read()
    [val] = re.findall(r"ImageNet final val acc is:([\d.]+), top5: ([\d.]+), images: 10000", text)
    records = read_metrics(f"{log}/metrics.jsonl")
    [best] = read_metrics(f"{log}/metrics.jsonl", "best")[-1:]  # val.py evaluates the weights the run kept as best
    recipe = load_config(os.path.join(ROOT, "config", "fashion_mnist.yaml")).Global
    row = re.search(rf"\| T2T-ViT-7, from scratch \| {recipe.img_size} \| {recipe.epochs} \| \*\*([\d.]+)%\*\* "
                    r"\((model|EMA) weights of epoch (\d+)\) \| ([\d.]+)% \|", TRAINING)
    assert row and float(row.group(1)) == round(100 * float(val[0]), 2) == round(100 * best["top1"], 2)
    assert (row.group(2).lower(), int(row.group(3))) == (best["model"], best["epoch"])
    assert {r["epochs"] for r in records if "epochs" in r} == {recipe.epochs}
    assert float(row.group(4)) == round(100 * float(val[1]), 2)
    assert f"ImageNet final val acc is:{val[0]}" in TRAINING


def logged_config(log_dir):
    """The config a run printed at its start (train.log's `config:` line and the YAML under it)."""
    lines = open(os.path.join(log_dir, "train.log")).read().split("\n")
    start = next(i for i, line in enumerate(lines) if line.endswith(" config:")) + 1
    end = next(i for i in range(start, len(lines)) if re.match(r"\d{4}-\d\d-\d\d ", lines[i]))
    return yaml.safe_load("\n".join(lines[start:end]))


def test_each_committed_fashion_mnist_run_is_what_its_documented_command_gives_today():
    # A base config edited after a run (fashion_mnist.yaml turning RandAugment off) must not silently change what
    # the documented commands of the runs built on it would do.
    commands = re.findall(r"^python tools/train\.py (-c config/(?:fashion_mnist|fmnist_\w+)\.yaml.*)$",
                          "\n".join(DOCS.values()), re.M)
    checked = 0
    for command in sorted(set(commands)):
        args = shlex.split(command)
        overrides = args[args.index("-o") + 1:] if "-o" in args else []
        cfg = load_config(os.path.join(ROOT, args[1]), overrides)
        if not os.path.isfile(os.path.join(ROOT, cfg.Global.log_dir, "train.log")):
            continue  # a command for the user's own run, not one committed here
        logged, today = logged_config(os.path.join(ROOT, cfg.Global.log_dir)), cfg.to_dict()
        for section, keys in DEFAULTS.items():  # a key added since the run must be at its default there
            for key in set(keys) - set(logged[section]):
                assert today[section].pop(key) == keys[key], (command, f"{section}.{key}")
        assert logged == today, command
        checked += 1
    assert checked == 6  # the committed Fashion-MNIST run and the five of the transfer experiment


def test_each_fashion_mnist_ablation_row_is_its_committed_run():
    rows = re.findall(r"^\| `(log/[\w/]+)/` \| (\d+) \([^|]*\) \| (\d+) \| `([^`]+)` \| ([\d.]+)% / ([\d.]+)% \|",
                      TRAINING, re.M)
    assert len(rows) == 5
    for folder, img_size, epochs, rand_augment, model, ema in rows:
        records = read_metrics(os.path.join(ROOT, folder, "metrics.jsonl"))
        last = {r["model"]: r["top1"] for r in records if r["kind"] == "val" and r["epoch"] == int(epochs)}
        assert {r["epochs"] for r in records if "epochs" in r} == {int(epochs)}
        assert (round(100 * last["model"], 2), round(100 * last["ema"], 2)) == (float(model), float(ema)), folder
        logged = logged_config(os.path.join(ROOT, folder))  # the run's own config
        assert logged["Global"]["img_size"] == int(img_size), folder
        assert (logged["Augment"]["rand_augment"] or "off") == rand_augment, folder


def test_deployment_precision_table_is_the_committed_measurement():
    # docs/deployment.md's int8/bf16 accuracy on the 10,000 Fashion-MNIST test images, against the benchmark's
    # own output for the committed run's weights.
    log = open(os.path.join(ROOT, "log", "fashion_mnist", "precision.log")).read()
    measured = {setting.strip(): (float(diff), float(agree), float(top1)) for setting, diff, agree, top1 in
                re.findall(r"^(?:torch_eval|eval_dynamic|engine) +(.+?) +[\d.]+ +[\d.]+x +([\d.e+-]+) +([\d.]+)% +([\d.]+) ",
                           log, re.M)}
    assert len(measured) == 9
    fp32_top1 = 100 * read_metrics(os.path.join(ROOT, "log", "fashion_mnist", "metrics.jsonl"), "best")[-1]["top1"]
    doc = DOCS["deployment.md"]
    [(top1, bound)] = re.findall(r"^\| Paddle dynamic graph, fp32 \(and every fp32 backend, PyTorch too\) \| ([\d.]+)% \| "
                                 r"100% \| <= ([\d.e-]+) \|$", doc, re.M)
    fp32 = [v for s, v in measured.items() if "bf16" not in s and "int8" not in s]
    assert len(fp32) == 5 and float(top1) == round(fp32_top1, 2)
    assert all(diff <= float(bound) and agree == 100.0 and t1 == float(top1) for diff, agree, t1 in fp32)
    names = {"OpenVINO int8": "openvino int8", "ONNX Runtime int8": "onnxruntime int8",
             "OpenVINO bf16": "openvino bf16", "Paddle Inference bf16": "paddle bf16"}
    rows = re.findall(r"^\| ([\w ]+ (?:int8|bf16)) \| \**([\d.]+)%\** \| \**([\d.]+)%\** \| ([\d.]+) \|$", doc, re.M)
    assert sorted(name for name, *_ in rows) == sorted(names)
    for name, t1, agree, diff in rows:
        m_diff, m_agree, m_top1 = measured[names[name]]
        assert (float(t1), float(agree), float(diff)) == (m_top1, m_agree, round(m_diff, 2)), name


def test_the_readme_example_classifies_a_photo_with_a_checkpoint_of_the_user_s_own_run(tmp_path, monkeypatch,
                                                                                        capsys):
    from test_artifacts import checkpoint_of, make_class_folders

    code = README.split("<!-- classify-example -->\n```python\n", 1)[1].split("```", 1)[0]
    assert len(code.strip().splitlines()) <= 10
    data = make_class_folders(tmp_path / "data")
    os.makedirs(tmp_path / "output" / "finetune")
    os.replace(checkpoint_of(tmp_path, data), tmp_path / "output" / "finetune" / "best.pdckpt")
    os.replace(data / "val" / "green" / "2.png", tmp_path / "photo.jpg")  # a PNG named .jpg: read by content
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines][0] == "green" and len(lines) == 3
    probs = [float(line.split(": ")[1]) for line in lines]
    assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1.0, abs=2e-3)
