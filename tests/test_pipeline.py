"""End to end on lit_data: train -> checkpoint -> val -> predict, several processes, and bad input."""
import glob
import os
import re
import shutil

import paddle
import pytest

from runner import ROOT, error_lines, fast_overrides, losses, run_main, run_tool
from t2tvit.checkpoint import load_file
from t2tvit.runtime import MetricsFile, read_metrics

LOG_LINE = re.compile(r"Epoch \[\d+/3\], Step \[\d+/5\], Loss: \d+\.\d{4}, acc: \d\.\d{4}, read_time: \d+\.\d{4}, "
                      r"train_time: \d+\.\d{4}, lr: \d\.\d{6}, ips: [\d.]+ images/s, eta: \d+:\d\d:\d\d")
FINAL = re.compile(r"ImageNet final val acc is:(\d\.\d{4}), top5: (\d\.\d{4}), images: (\d+)")


def odd_val_list(tmp_path, n=19):
    lines = open(os.path.join(ROOT, "lit_data", "val.txt")).read().split("\n")[:n]
    path = tmp_path / "val_odd.txt"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.mark.slow
def test_training_writes_logs_and_checkpoints(one_process_run):
    tmp, _, out = one_process_run
    steps = [line for line in out.splitlines() if "Step [" in line]
    assert len(steps) == 15 and all(LOG_LINE.search(line) for line in steps), steps[:2]
    assert sorted(losses(tmp / "log")) == [(e, s) for e in (1, 2, 3) for s in range(1, 6)]
    assert os.path.isfile(tmp / "log" / "train.log") and glob.glob(str(tmp / "log" / "vdlrecords.*"))
    names = sorted(os.path.basename(p) for p in glob.glob(str(tmp / "out" / "*")))
    assert names == ["best.pdckpt", "ckpt-e0001-s000000.pdckpt", "ckpt-e0002-s000000.pdckpt",
                     "ckpt-e0003-s000000.pdckpt", "latest.pdckpt"]
    state = load_file(str(tmp / "out" / "latest.pdckpt"))
    assert (state["epoch"], state["step"], state["arch"]) == (3, 0, "t2t_vit_7")
    assert set(state) >= {"model", "ema", "optimizer", "best", "best_which", "class_names", "config"}
    assert len(state["class_names"]) == 1000 and state["class_names"][0].startswith("tench")


@pytest.mark.slow
def test_metrics_file_holds_the_numbers_of_every_log_line(one_process_run):
    tmp, _, out = one_process_run
    records = read_metrics(tmp / "log" / MetricsFile.NAME)
    train = [r for r in records if r["kind"] == "train"]
    assert [(r["epoch"], r["step"]) for r in train] == [(e, s) for e in (1, 2, 3) for s in range(1, 6)]
    assert set(train[0]) == {"kind", "epoch", "epochs", "step", "steps", "loss", "acc", "read_time", "train_time",
                             "lr", "ips", "eta", "time", "run"}
    for r in train:  # the human line shows the same numbers, rounded
        assert (f"Epoch [{r['epoch']}/3], Step [{r['step']}/5], Loss: {r['loss']:.4f}, acc: {r['acc']:.4f}, "
                f"read_time: {r['read_time']:.4f}, train_time: {r['train_time']:.4f}, lr: {r['lr']:.6f}") in out
    val = [r for r in records if r["kind"] == "val"]
    assert [(r["epoch"], r["model"]) for r in val] == [(e, m) for e in (1, 2, 3) for m in ("model", "ema")]
    assert all(r["images"] == 20 and 0 <= r["top5"] <= 1 for r in val)


@pytest.mark.slow
def test_best_checkpoint_follows_the_ema_model_as_the_official_protocol_does(one_process_run):
    tmp, _, out = one_process_run
    records = read_metrics(tmp / "log" / MetricsFile.NAME)
    ema = [r["top1"] for r in records if r["kind"] == "val" and r["model"] == "ema"]
    assert len(ema) == 3 and len([r for r in records if r["kind"] == "val" and r["model"] == "model"]) == 3
    best = load_file(str(tmp / "out" / "best.pdckpt"))
    assert best["best"]["which"] == best["best_which"] == "ema"
    first_max = ema.index(max(ema)) + 1
    assert best["best"]["acc"] == max(ema) and best["best"]["epoch"] == first_max
    [final] = [r for r in records if r["kind"] == "best"]
    assert {k: final[k] for k in ("top1", "model", "epoch")} == {"top1": max(ema), "model": "ema", "epoch": first_max}
    assert re.search(rf"best val top1 {max(ema):.4f} \(ema, epoch {first_max}\)", out)


@pytest.mark.slow
def test_val_reproduces_best_checkpoint_accuracy(one_process_run):
    tmp = one_process_run.folder
    best = load_file(str(tmp / "out" / "best.pdckpt"))["best"]
    r = run_tool("val.py", *fast_overrides(tmp))
    assert r.returncode == 0, r.stderr
    top1, top5, n = FINAL.search(r.stdout).groups()
    assert float(top1) == pytest.approx(best["acc"], abs=1e-4) and int(n) == 20


@pytest.mark.slow
def test_val_is_exact_on_several_processes(one_process_run, tmp_path):
    tmp = one_process_run.folder
    args = fast_overrides(tmp, **{"Data.val_list": odd_val_list(tmp_path), "Data.batch_size": 3})
    one = FINAL.search(run_tool("val.py", *args).stdout).groups()
    r = run_tool("val.py", *args, nproc=2)
    two = FINAL.search(r.stdout).groups()
    assert one == two and one[2] == "19"


@pytest.mark.slow
def test_predict_prints_class_id_and_name(one_process_run):
    tmp = one_process_run.folder
    image = sorted(glob.glob(os.path.join(ROOT, "lit_data", "val", "*", "*.JPEG")))[0]
    r = run_tool("predict.py", image, "--topk", "3", *fast_overrides(tmp))
    assert r.returncode == 0, r.stderr
    class_id = int(re.search(r"class_id is: (\d+)", r.stdout).group(1))
    assert 0 <= class_id < 1000 and "class name: " in r.stdout and "top-3: " in r.stdout


@pytest.mark.slow
def test_predict_without_weights_says_how_to_get_them(tmp_path):
    image = sorted(glob.glob(os.path.join(ROOT, "lit_data", "val", "*", "*.JPEG")))[0]
    r = run_main("predict.py", image, *fast_overrides(tmp_path))
    assert r.returncode == 2 and len(error_lines(r)) == 1
    assert "scripts/train.sh" in r.stderr and "convert_weights.py" in r.stderr


@pytest.mark.slow
def test_two_process_training(two_process_run):
    assert "global batch 4 = 2 per device x 2 device(s) x 1 accumulation step(s)" in two_process_run.stdout
    assert os.path.isfile(two_process_run.folder / "out" / "best.pdckpt")


def write_list(tmp_path, lines):
    path = tmp_path / "list.txt"
    path.write_text("".join(f"{line}\n" for line in lines))
    return str(path)


def corrupt_copy(tmp_path, split):
    """A copy of lit_data whose first image of `split` is truncated garbage; returns (root, its path)."""
    root = tmp_path / "data"
    shutil.copytree(os.path.join(ROOT, "lit_data"), root)
    first = (root / f"{split}.txt").read_text().split()[0]
    (root / first).write_bytes((root / first).read_bytes()[:200] + b"\x00" * 50)
    return root, first


@pytest.mark.slow
@pytest.mark.parametrize("case", ["missing_root", "missing_list", "missing_image", "unknown_key", "bad_label",
                                  "corrupt_val_image"])
def test_bad_input_is_one_line_and_leaves_no_checkpoint(tmp_path, case):
    tool_name, extra, culprit = "train.py", {}, None
    if case == "missing_root":
        extra, culprit = {"Data.root": str(tmp_path / "no_such_dir")}, "no_such_dir"
    elif case == "missing_list":
        extra, culprit = {"Data.train_list": "no_such_list.txt"}, "no_such_list.txt"
    elif case == "missing_image":
        extra = {"Data.train_list": write_list(tmp_path, ["train/n01440764/missing.JPEG 0"])}
        culprit = "missing.JPEG"
    elif case == "bad_label":
        good = open(os.path.join(ROOT, "lit_data", "train.txt")).readline().split()[0]
        extra, culprit = {"Data.train_list": write_list(tmp_path, [f"{good} 1000"])}, "1000"
    elif case == "unknown_key":
        extra, culprit = {"Optimizer.weight_decy": 0.1}, "did you mean 'Optimizer.weight_decay'"
    else:
        root, first = corrupt_copy(tmp_path, "val")
        tool_name, extra, culprit = "val.py", {"Data.root": str(root)}, first.split("/")[-1]
        weights = tmp_path / "w.pdparams"
        from t2tvit.t2t import create_model
        paddle.save(create_model("t2t_vit_7", img_size=32).state_dict(), str(weights))
    args = fast_overrides(tmp_path, **extra)
    if tool_name == "val.py":
        args += ["--weights", str(tmp_path / "w.pdparams")]
    r = run_tool(tool_name, *args)
    assert r.returncode == 2, r.stdout[-1000:] + r.stderr[-1000:]
    errors = error_lines(r)
    assert len(errors) == 1 and "Traceback" not in r.stderr and culprit in errors[0], r.stderr[-2000:]
    assert not glob.glob(str(tmp_path / "out" / "*.pdckpt*"))


@pytest.mark.slow
def test_corrupt_training_image_is_replaced_and_counted(tmp_path):
    root, first = corrupt_copy(tmp_path, "train")
    r = run_tool("train.py", *fast_overrides(tmp_path, **{"Data.root": str(root)}))
    assert r.returncode == 0, r.stderr[-2000:]
    assert first in r.stderr
    assert len(re.findall(r"Epoch \[\d/3\]: 1 unreadable training image\(s\) replaced", r.stdout + r.stderr)) == 3


@pytest.mark.slow
def test_checkpoint_of_another_model_is_refused(one_process_run, tmp_path):
    tmp = one_process_run.folder
    r = run_tool("val.py", "--weights", str(tmp / "out" / "best.pdckpt"),
             *fast_overrides(tmp_path, **{"Global.model": "t2t_vit_10"}))
    assert r.returncode == 2 and len(error_lines(r)) == 1
    assert "best.pdckpt and the config disagree: Global.model t2t_vit_7 (the checkpoint) vs t2t_vit_10" in r.stderr
    r = run_tool("train.py", "--resume", str(tmp / "out" / "latest.pdckpt"),
             *fast_overrides(tmp_path, **{"Global.model": "t2t_vit_10"}))
    assert r.returncode == 2 and "latest.pdckpt" in error_lines(r)[0]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["fp16", "bf16"])
def test_amp_on_cpu_falls_back_to_float32_and_says_so(tmp_path, mode):
    r = run_tool("train.py", *fast_overrides(tmp_path, **{"Global.amp": mode, "Global.amp_level": "O2",
                                                     "Global.epochs": 3}))
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"Global.amp={mode} needs a GPU: Paddle's dynamic-graph AMP does nothing on cpu; training in float32" \
        in r.stdout + r.stderr


@pytest.mark.slow
def test_nonfinite_loss_stops_with_position_and_last_checkpoint(tmp_path):
    diverge = {"Optimizer.lr": 1e30, "Scheduler.warmup_lr": 1e30, "Global.save_every_steps": 1}
    r = run_tool("train.py", *fast_overrides(tmp_path, **diverge))
    assert r.returncode == 2 and len(error_lines(r)) == 1, r.stderr[-2000:]
    assert re.search(r"error: non-finite loss at epoch 1, step \d+ \(skipped so far: 0\); last good checkpoint: "
                     r"\S+latest\.pdckpt", r.stderr), r.stderr[-2000:]
    r = run_tool("train.py", *fast_overrides(tmp_path / "skip", **diverge, **{"Global.nonfinite": "skip",
                                                                         "Global.max_skips": 2}))
    assert r.returncode == 2 and "(skipped so far: 2)" in error_lines(r)[0]
    assert len(re.findall(r"step skipped \(\d/2\)", r.stdout + r.stderr)) == 2
