"""Hostile or unlucky inputs to predict and the loaders: planted symlinks, a second writer, NaN outputs, a full
disk, file names that could forge or crash the output, FIFOs, symlink loops, YAML bombs, list-file escapes."""
import ast
import builtins
import errno
import glob
import io
import json
import os
import socket
import sys
import time

import numpy as np
import pytest
from PIL import Image

import faults
from runner import DEMO
from t2tvit import classify
from t2tvit.config import YAML_MAX_NODES, YAML_MAX_BYTES, load_config
from t2tvit.dataset import ImageDataset
from t2tvit.decode import BadImage, read_image
from t2tvit.errors import StorageError, UserError, shown
from t2tvit.transforms import EvalTransform

NAMES = list("abcde")


def logits_of(value):
    """A forward function whose every image gets logits [value, 0, 1, 2, 3]."""
    return lambda images: np.tile(np.array([value, 0, 1, 2, 3], "float32"), (len(images), 1))


def run_classify(paths, out=None, value=5.0):
    return classify.classify(paths, lambda p: np.zeros(3, "float32"), logits_of(value), NAMES, topk=2,
                             batch_size=2, out=out)


def test_a_planted_partial_symlink_is_never_followed(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    os.symlink(victim, tmp_path / "p.jsonl.partial")
    with classify.JsonLines(str(tmp_path / "p.jsonl")) as out:
        run_classify(["x.png", "y.png", "z.png"], out)
        out.finish()
    assert victim.read_text() == "precious"
    assert [json.loads(line)["path"] for line in (tmp_path / "p.jsonl").read_text().splitlines()] == \
        ["x.png", "y.png", "z.png"]
    assert sorted(os.listdir(tmp_path)) == ["p.jsonl", "p.jsonl.partial", "victim.txt"]


def test_a_second_writer_of_the_same_output_is_refused_naming_the_holder(tmp_path):
    path = str(tmp_path / "p.jsonl")
    with classify.JsonLines(path) as first:
        with pytest.raises(UserError) as e:
            classify.JsonLines(path)
        message = str(e.value)
        assert f"pid {os.getpid()} on host {socket.gethostname()}" in message and "\n" not in message
        assert len(glob.glob(path + ".*.partial")) == 1  # the refused one created nothing
        run_classify(["first.png"], first)
        first.finish()
    with classify.JsonLines(path) as out:  # released: the next run may write it
        run_classify(["second.png"], out)
        out.finish()
    assert os.listdir(tmp_path) == ["p.jsonl"] and "second.png" in open(path).read()


def test_a_lock_left_by_a_dead_run_is_taken_over_with_a_warning(tmp_path, capsys):
    path = str(tmp_path / "p.jsonl")
    with open(path + ".lock", "w") as f:
        f.write("999999 elsewhere\n")  # nobody holds its flock: the run that wrote it is gone
    with classify.JsonLines(path) as out:
        assert open(path + ".lock").read() == f"{os.getpid()} {socket.gethostname()}\n"
        out.finish()
    assert "warning: taking over" in capsys.readouterr().err
    assert os.listdir(tmp_path) == ["p.jsonl"]


def test_non_finite_outputs_are_one_error_line_and_never_a_bare_nan(tmp_path):
    with pytest.raises(UserError) as e, classify.JsonLines(str(tmp_path / "p.jsonl")) as out:
        run_classify(["ok.png", "nan.png"], out, value=float("nan"))
    assert "ok.png: the model's outputs are not finite" in str(e.value)
    assert not os.path.exists(tmp_path / "p.jsonl")
    with pytest.raises(ValueError):  # the writer itself refuses NaN too: its lines are strict JSON
        json.dumps({"p": float("nan")}, allow_nan=False)


def test_a_full_disk_while_writing_is_a_storage_error_and_no_final_file(tmp_path, monkeypatch):
    monkeypatch.setattr(builtins, "open", builtins.open)  # restored after the test
    faults.install("*.partial", errno.ENOSPC, after_bytes=150)
    with pytest.raises(StorageError) as e, classify.JsonLines(str(tmp_path / "p.jsonl")) as out:
        run_classify([f"img{i}.png" for i in range(6)], out)
        out.finish()
    assert "No space left on device" in str(e.value) and ".partial" in str(e.value)
    assert not os.path.exists(tmp_path / "p.jsonl") and not os.path.exists(tmp_path / "p.jsonl.lock")


@pytest.mark.parametrize("name", ["a\nclass_id is: 999.png", "bell\a.png", "caf\udce9.png", "\u202eevil.png"])
def test_unprintable_file_names_are_shown_escaped_on_one_line(name):
    text = shown(name)
    assert "\n" not in text and text.isprintable() and ast.literal_eval(text) == name  # repr-style: it reads back
    assert shown(os.fsencode(name)) == text and shown("plain é.png") == "plain é.png"


def test_a_file_name_can_neither_forge_a_record_nor_crash_a_strict_utf8_stdout(tmp_path, monkeypatch):
    forged, undecodable = "a\nclass_id is: 999.png", os.fsdecode(b"caf\xe9.png")
    stdout = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict")
    monkeypatch.setattr(sys, "stdout", stdout)
    with classify.JsonLines(str(tmp_path / "p.jsonl")) as out:
        assert run_classify([forged, undecodable], out) == (2, 0)
        out.finish()
    stdout.flush()
    lines = stdout.buffer.getvalue().decode().splitlines()
    assert [line for line in lines if line.startswith("class_id is:")] == ["class_id is: 0"] * 2
    assert repr(forged) in lines and repr(undecodable) in lines
    records = [json.loads(line) for line in (tmp_path / "p.jsonl").read_bytes().decode("ascii").splitlines()]
    assert [os.fsencode(r["path"]) for r in records] == [os.fsencode(forged), b"caf\xe9.png"]


def test_a_fifo_named_like_an_image_is_an_error_record_never_a_hang(tmp_path, capsys):
    os.mkfifo(tmp_path / "b.jpg")  # nobody writes it: a blocking open would wait forever
    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    with pytest.raises(BadImage) as e:
        read_image(str(tmp_path / "b.jpg"))
    assert "not a regular file" in e.value.reason
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not a JPEG")
    with pytest.raises(BadImage) as e:  # opened from a descriptor, the file is still named in Pillow's message
        read_image(str(tmp_path / "broken.jpg"))
    assert repr(str(tmp_path / "broken.jpg")) in e.value.reason
    os.remove(tmp_path / "broken.jpg")
    with classify.JsonLines(str(tmp_path / "p.jsonl")) as out:
        done_failed = classify.classify(classify.image_paths([str(tmp_path)]),
                                        lambda p: np.asarray(read_image(p), "float32"), logits_of(5.0), NAMES,
                                        out=out)
        out.finish()
    assert done_failed == (1, 1)
    records = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert records[1] == {"path": str(tmp_path / "b.jpg"), "error": "not a regular file: a FIFO (named pipe)"}
    assert f"cannot read image {tmp_path / 'b.jpg'}: not a regular file" in capsys.readouterr().err


def test_a_fifo_in_a_validation_list_is_a_clear_loader_error(tmp_path):
    os.mkfifo(tmp_path / "v.jpg")
    dataset = ImageDataset(str(tmp_path), ["v.jpg"], [0], EvalTransform(32), train=False)
    with pytest.raises(UserError, match=r"cannot read validation image .*v\.jpg \(not a regular file"):
        dataset.load(0)


def test_symlinked_sub_folders_are_walked_once_and_a_link_loop_ends(tmp_path):
    for rel in ("real/x.png", "other/y.png"):
        os.makedirs(tmp_path / os.path.dirname(rel), exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    os.symlink(tmp_path / "other", tmp_path / "real" / "linked")  # a symlinked sub-folder: followed
    os.symlink(tmp_path / "real", tmp_path / "real" / "loop")  # back to its parent: visited once
    found = list(classify.image_paths([str(tmp_path / "real")]))
    assert found == [str(tmp_path / "real" / "x.png"), str(tmp_path / "real" / "linked" / "y.png")]


def alias_bomb(levels=9, width=9):
    """A flow-style YAML list of `levels` anchors, each `width` aliases of the one before: width**levels nodes."""
    parts = ["&l0 [" + ",".join(["x"] * width) + "]"]
    parts += [f"&l{i} [" + ",".join([f"*l{i - 1}"] * width) + "]" for i in range(1, levels)]
    return "[" + ", ".join(parts) + "]"


def test_a_nested_alias_bomb_config_is_refused_fast_naming_the_file(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(f"Global:\n  model: {alias_bomb()}\n")
    assert path.stat().st_size < 600  # a few hundred bytes that expand to 9**9 nodes
    start = time.perf_counter()
    with pytest.raises(UserError) as e:
        load_config(str(path))
    assert time.perf_counter() - start < 1.0
    assert str(e.value) == f"{path}: refused YAML: over {YAML_MAX_NODES} nodes once its aliases are expanded"


def test_a_nested_alias_bomb_override_is_refused_naming_the_key():
    with pytest.raises(UserError) as e:
        load_config(DEMO, [f"Global.model={alias_bomb()}"])
    assert str(e.value).startswith("override -o Global.model=...: refused YAML value: over ")


@pytest.mark.parametrize("text, reason", [("a: &a [*a]\n", "a recursive alias"),
                                          ("a: " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply")])
def test_recursive_or_deeply_nested_yaml_is_one_line(tmp_path, text, reason):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=f"c.yaml: refused YAML: {reason}$"):
        load_config(str(path))


def test_a_huge_config_file_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "huge.yaml"
    with open(path, "wb") as f:
        f.truncate(YAML_MAX_BYTES + 1)
    with pytest.raises(UserError, match="huge.yaml: too large for a config file"):
        load_config(str(path))


def test_python_tags_stay_refused_under_the_budget_loader(tmp_path):
    path = tmp_path / "tag.yaml"
    path.write_text("Global:\n  model: !!python/object/apply:os.system [echo owned]\n")
    with pytest.raises(UserError, match="tag.yaml"):
        load_config(str(path))


@pytest.mark.parametrize("shape", [(20000, 1), (1, 20000)], ids=["1 x 20000", "20000 x 1"])
def test_a_tiny_png_of_a_long_thin_image_is_evaluated_in_bounded_memory(tmp_path, shape):
    """A 140-byte PNG whose whole resize would be 4,960,000 x 248 pixels (5 GB): evaluated within 1 GB of address
    space (the old transform dies of MemoryError there), at a peak RSS of a few tens of MB above the interpreter's."""
    import resource
    import subprocess
    path = tmp_path / "strip.png"
    Image.new("RGB", shape, (200, 30, 90)).save(path)
    assert path.stat().st_size < 200
    code = ("import resource, sys; from t2tvit.transforms import EvalTransform; "
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; "
            "x = EvalTransform(224)(sys.argv[1]); "
            "print(x.shape, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)")

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    r = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120,
                       preexec_fn=limit, env=dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
                                                  PYTHONPATH=os.path.join(os.path.dirname(DEMO), "..", "tools")))
    assert r.returncode == 0, r.stderr[-2000:]
    shape_text, grown_kb = r.stdout.rsplit(" ", 1)
    assert shape_text == "(3, 224, 224)" and int(grown_kb) < 64 * 1024, r.stdout  # KiB of peak RSS added


def sixteen_bit_picture():
    """A 64 x 48 picture with 16-bit gray levels over the whole range (a gradient, edges and noise)."""
    rng = np.random.RandomState(0)
    yy, xx = np.mgrid[0:48, 0:64]
    levels = xx * 1000.0 + yy * 50 + rng.randint(0, 300, (48, 64))
    levels[(xx // 9 + yy // 7) % 2 == 0] *= 0.5
    return np.clip(levels, 0, 65535).astype(np.uint16)


def test_high_bit_depth_images_read_as_the_same_picture_as_a_16_bit_png(tmp_path):
    levels = sixteen_bit_picture()
    Image.fromarray(levels).save(tmp_path / "p16.png")  # mode I;16: what the other files must give
    (tmp_path / "p16.pgm").write_bytes(b"P5 64 48 65535\n" + levels.astype(">u2").tobytes())  # opens as mode I
    Image.fromarray((levels / 65535.0).astype(np.float32)).save(tmp_path / "f32.tiff")  # mode F, in [0, 1]
    Image.fromarray(levels).save(tmp_path / "p16.tiff")
    expected = np.asarray(read_image(str(tmp_path / "p16.png")))
    assert np.array_equal(expected[..., 0], levels >> 8) and expected.std() > 30  # scaled, not clipped to white
    for name, mode in (("p16.pgm", "I"), ("f32.tiff", "F"), ("p16.tiff", "I;16")):
        assert Image.open(tmp_path / name).mode == mode
        np.testing.assert_array_equal(np.asarray(read_image(str(tmp_path / name))), expected, err_msg=name)


@pytest.mark.parametrize("make, reason", [
    (lambda p: Image.fromarray(sixteen_bit_picture().astype(np.int32) * 1000).save(p / "i32.tiff"),
     "a TIFF image of 32-bit integers (mode I), whose range is not known; convert it to 8 or 16 bits"),
    (lambda p: Image.fromarray(sixteen_bit_picture().astype(np.float32) / 256).save(p / "f255.tiff"),
     "a floating-point image with values from 0.261719 to 255.914: only [0, 1] has a known meaning"),
    (lambda p: Image.fromarray(np.full((8, 8), np.nan, np.float32)).save(p / "nan.tiff"),
     "a floating-point image holding NaN or inf"),
])
def test_an_image_whose_range_is_unknown_is_an_error_record(tmp_path, make, reason, capsys):
    make(tmp_path)
    Image.new("RGB", (4, 4)).save(tmp_path / "fine.png")
    with classify.JsonLines(str(tmp_path / "p.jsonl")) as out:
        assert classify.classify(classify.image_paths([str(tmp_path)]), lambda p: np.asarray(read_image(p), "float32"),
                                 logits_of(5.0), NAMES, out=out) == (1, 1)
        out.finish()
    errors = [r["error"] for r in map(json.loads, (tmp_path / "p.jsonl").read_text().splitlines()) if "error" in r]
    assert len(errors) == 1 and errors[0].startswith(reason), errors
    assert "Traceback" not in capsys.readouterr().err


# ------------------------------------------------------------------------------- outputs, locks and signals

PHOTO = os.path.join(os.path.dirname(DEMO), "..", "lit_data", "val", "n01614925", "imagenet_17.JPEG")
AT_32 = ["-o", "Global.img_size=32", "Global.device=cpu"]


def test_predict_output_follows_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        with classify.JsonLines(str(tmp_path / "p.jsonl")) as out:
            run_classify(["x.png"], out)
            out.finish()
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "p.jsonl").st_mode & 0o777 == 0o644  # mkstemp's 0600 before


@pytest.mark.parametrize("case", ["missing", "undecodable"])
def test_visualize_with_an_unreadable_image_is_one_line(tmp_path, case):
    from runner import error_lines, run_main
    image = tmp_path / "x.jpg"
    if case == "undecodable":
        image.write_bytes(b"\xff\xd8 not a JPEG")
    r = run_main("visualize.py", image, "--out", tmp_path / "v.png", *AT_32)
    assert r.returncode == 2 and len(error_lines(r)) == 1, r.stderr
    assert error_lines(r)[0].startswith(f"error: cannot read image {image}: ")
    assert not list(tmp_path.glob("v*"))


def test_visualize_writes_into_a_new_folder_atomically(tmp_path):
    from runner import run_main
    out = tmp_path / "new" / "v.png"
    r = run_main("visualize.py", PHOTO, "--out", out, *AT_32)
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(out.parent)) == ["v.heads.png", "v.png", "v.t2t.png"]  # no temporary left
    assert Image.open(out).size == (32, 32)


def test_a_second_export_into_one_folder_is_refused_and_a_killed_ones_temporaries_are_removed(tmp_path):
    from t2tvit.export import export_checked
    from t2tvit.lockfile import OutputLock
    from t2tvit.t2t import create_model
    model = create_model("t2t_vit_7", img_size=32, num_classes=5)
    model.eval()
    out = tmp_path / "exported"
    killed = [tmp_path / "exported.tmpk2j4x9ab", tmp_path / "exported.tmp_0z9y8x7"]
    killed[0].mkdir()
    (killed[0] / "inference.pdiparams").write_bytes(b"17 MB of an export that was killed")
    killed[1].write_bytes(b"a stray file of the same kind")
    keep = [tmp_path / "exported.tmp-notes", tmp_path / "exported.tmp12345678x"]  # not tempfile's names
    for path in keep:
        path.write_text("mine")
    holder = OutputLock(str(out), "another export")
    try:
        with pytest.raises(UserError, match=f"--out {out} is being written by another run \\(pid {os.getpid()}"):
            export_checked(model, 32, str(out), ("paddle",))
        assert all(path.exists() for path in killed)  # a live holder may own them
    finally:
        holder.release()
    export_checked(model, 32, str(out), ("paddle",))
    assert not any(path.exists() for path in killed) and all(path.exists() for path in keep)
    assert sorted(os.listdir(tmp_path)) == sorted(["exported", *(p.name for p in keep)])  # no lock, no temporary


@pytest.mark.slow
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_signal_during_export_removes_its_temporary_in_one_line_without_paddles_dump(tmp_path, sig):
    import signal
    import subprocess
    from runner import ROOT, command
    import paddle
    from t2tvit.t2t import create_model
    weights = tmp_path / "w.pdparams"
    paddle.save(create_model("t2t_vit_7", img_size=32).state_dict(), str(weights))
    out = tmp_path / "exported"
    cmd, env = command("export_model.py", "--weights", weights, "--out", out, *AT_32)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list(tmp_path.glob("exported.tmp*")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)  # until the export is writing its temporary folder
    time.sleep(0.5)
    proc.send_signal(getattr(signal, sig))
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + getattr(signal, sig), stderr[-3000:]
    assert f"stopped by {sig}" in stderr.splitlines()
    assert "Traceback" not in stderr and "FatalError" not in stderr, stderr[-3000:]
    assert os.listdir(tmp_path) == ["w.pdparams"]  # no temporary, no lock, no half export


@pytest.mark.slow
def test_a_signal_while_training_starts_ends_it_at_once_in_one_line(tmp_path):
    from runner import error_lines, fast_overrides, tool_with_fault
    r = tool_with_fault(["--signal", "SIGTERM", "t2tvit.dataset.build_loader", 1], "train.py", *fast_overrides(tmp_path))
    assert r.returncode == 143, r.stdout[-2000:] + r.stderr[-2000:]
    text = r.stdout + r.stderr
    assert "SIGTERM received while starting: stopped, nothing was trained" in text
    assert "Traceback" not in text and "FatalError" not in text and not error_lines(r)
    assert os.listdir(tmp_path / "out") == []  # its lock released, nothing written


def holding_signals(tool, marker):
    """Whether a process running tools/TOOL with `marker` in its command line blocks SIGINT and SIGTERM in its main
    thread (preempt.hold_signals), from /proc. Not train.sh's supervisor (scripts/paddle_launch.py), nor the shell
    scripts that exec it, which block signals now and then too."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            if len(argv) < 2 or not argv[1].endswith(f"tools/{tool}".encode()) or marker.encode() not in b" ".join(argv):
                continue
            with open(f"/proc/{pid}/status") as f:
                mask = int(next(line for line in f if line.startswith("SigBlk:")).split()[1], 16)
        except (OSError, StopIteration):
            continue
        if mask & (1 << 1) and mask & (1 << 14):
            return True
    return False


@pytest.mark.slow
@pytest.mark.parametrize("tool, sig", [("train.py", "SIGTERM"), ("train.py", "SIGINT"), ("predict.py", "SIGINT"),
                                       ("predict.py", "SIGTERM")])
def test_a_signal_while_paddle_loads_is_one_line_and_its_exit_status(tmp_path, tool, sig):
    """The first second or so of every command: Python's SIGINT would be a KeyboardInterrupt traceback there, and
    Paddle's import puts in a C++ SIGTERM handler that prints a FatalError dump."""
    import signal
    import subprocess
    from runner import ROOT, command, fast_overrides
    args = fast_overrides(tmp_path) if tool == "train.py" else [PHOTO, "--weights", tmp_path / "none.pdparams"]
    cmd, env = command(tool, *args)
    if tool == "train.py":  # as users start it
        cmd, env = ["bash", os.path.join(ROOT, "scripts", "train.sh"), *map(str, args)], dict(env, PYTHON=sys.executable)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not holding_signals(tool, str(tmp_path)) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)  # until the tool holds them: past the interpreter's own start, while Paddle loads
    proc.send_signal(getattr(signal, sig))  # to the command started: train.sh's supervisor passes it on
    stdout, stderr = proc.communicate(timeout=120)
    text = stdout + stderr
    assert proc.returncode == 128 + getattr(signal, sig), text[-3000:]
    assert "Traceback" not in text and "FatalError" not in text and "KeyboardInterrupt" not in text, text[-3000:]
    said = [line for line in text.splitlines() if sig in line]
    assert len(said) == 1 and ("stopped" in said[0]), text[-3000:]


def test_the_converter_locks_its_destination_and_removes_a_killed_conversions_temporary(tmp_path, capsys):
    import convert_weights
    from t2tvit.lockfile import OutputLock
    dst = tmp_path / "w.pdparams"
    stale = tmp_path / "w.pdparams.tmpa1b2c3d4"  # what atomic.write_bytes leaves when the process is killed
    stale.write_bytes(b"x" * 1000)
    holder = OutputLock(str(dst), "another conversion")
    try:
        with pytest.raises(UserError, match="--dst .*w.pdparams is being written by another run"):
            convert_weights.write_file(b"weights", str(dst))
        assert stale.exists() and not dst.exists()
    finally:
        holder.release()
    convert_weights.write_file(b"weights", str(dst))
    assert os.listdir(tmp_path) == ["w.pdparams"] and dst.read_bytes() == b"weights"
    assert f"note: removed {stale}, left by a conversion that was killed" in capsys.readouterr().err


@pytest.mark.slow
def test_resuming_mid_epoch_after_the_training_list_shrank_is_one_line(tmp_path, one_process_run):
    import paddle
    from runner import LIT_DATA, ONE, error_lines, fast_overrides, run_tool
    from t2tvit.checkpoint import load_file
    short = tmp_path / "short.txt"
    state = load_file(str(one_process_run.folder / "out" / "latest.pdckpt"))
    state["epoch"], state["step"] = 1, 4  # saved at step 4 of epoch 2, with 5 steps of 4 images per epoch
    state["config"]["Data"]["train_list"] = str(short)  # by a run of this list, which has shrunk since
    checkpoint = tmp_path / "mid.pdckpt"
    paddle.save(state, str(checkpoint))
    short.write_text("".join(open(os.path.join(LIT_DATA, "train.txt")).readlines()[:8]))  # now 2 steps per epoch
    r = run_tool("train.py", *fast_overrides(tmp_path, **ONE, **{"Data.train_list": short}), "--resume", checkpoint)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert error_lines(r) == ["error: cannot continue epoch 2 after optimizer step 4: the training set has 8 images, 2 "
                              "steps of 4 per epoch (did the training list change since the checkpoint was saved? "
                              "resume with the same data, or start afresh in another Global.output_dir)"]


def catching_sigterm(pid, program):
    """Whether process pid runs `program` and has a handler for SIGTERM (/proc/PID/status SigCgt; Python itself
    catches SIGINT only). paddle_launch.py installs its SIGINT handler first, so this says both are in place: sent
    SIGINT between the two, it raised KeyboardInterrupt once in CI."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if program not in f.read():
                return False
        with open(f"/proc/{pid}/status") as f:
            return bool(int(next(line for line in f if line.startswith("SigCgt:")).split()[1], 16) & (1 << 14))
    except (OSError, StopIteration):
        return False


@pytest.mark.slow
@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_signal_while_train_sh_s_supervisor_starts_is_one_line(tmp_path, sig):
    """train.sh runs train.py under scripts/paddle_launch.py, whose own start (its imports) comes first."""
    import signal
    import subprocess
    from runner import ROOT, fast_overrides
    cmd = ["bash", os.path.join(ROOT, "scripts", "train.sh"), *fast_overrides(tmp_path)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, PYTHON=sys.executable), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None and not catching_sigterm(proc.pid, b"paddle_launch.py"):
        time.sleep(0.002)  # until the supervisor's first lines have run: it is importing the rest
    proc.send_signal(getattr(signal, sig))
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + getattr(signal, sig), stdout[-2000:] + stderr[-2000:]
    assert "Traceback" not in stderr and "FatalError" not in stderr, stderr[-2000:]
    said = [line for line in (stdout + stderr).splitlines() if sig in line]
    assert said == [f"stopped by {sig} while starting: nothing was run"], stdout[-2000:] + stderr[-2000:]
    assert not (tmp_path / "out").exists()
