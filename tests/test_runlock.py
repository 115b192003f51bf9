"""One run per output folder (train.lock), temporaries nobody can hijack, and exports that fail whole."""
import json
import os
import socket
import subprocess

import paddle
import pytest

from runner import error_lines, fast_overrides, processes_mentioning, run_tool
from t2tvit import atomic
from t2tvit.checkpoint import CheckpointDir, atomic_link, atomic_save, load_file
from t2tvit.errors import UserError
from t2tvit.runlock import LOCK_NAME, RunLock
from t2tvit.t2t import create_model


def snapshot(*folders):
    return {str(p): p.read_bytes() for folder in folders for p in sorted(folder.rglob("*")) if p.is_file()}


def dead_pid():
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.mark.slow
def test_a_second_run_into_a_locked_folder_is_refused_naming_the_holder_and_touches_nothing(tmp_path):
    out, log = tmp_path / "out", tmp_path / "log"
    out.mkdir(), log.mkdir()
    (log / "train.log").write_text("2026-01-01 00:00:00 [first] Epoch [1/3], Step [1/5], Loss: 6.9\n")
    live_temp = out / "ckpt-e0001-s000003.pdckpt.tmpk2j4x9"  # the first run is writing this checkpoint
    live_temp.write_bytes(b"half a checkpoint")
    first = RunLock(str(out), "first-run", "python tools/train.py -c first.yaml").acquire()
    try:
        before = snapshot(out, log)
        r = run_tool("train.py", *fast_overrides(tmp_path))
        assert r.returncode == 2 and len(error_lines(r)) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
        assert error_lines(r)[0] == (
            f"error: Global.output_dir {out} is in use by another training run (host {socket.gethostname()}, "
            f"pid {os.getpid()}, started {first.holder['started']}, run first-run: python tools/train.py -c "
            f"first.yaml); wait for it to end or use another Global.output_dir (if that run is gone, remove "
            f"{out / LOCK_NAME})")
        assert snapshot(out, log) == before and r.stdout.count("Epoch [") == 0
    finally:
        first.release()
    assert not (out / LOCK_NAME).exists()


@pytest.mark.slow
def test_under_the_launcher_a_refused_rank_0_ends_every_rank_with_exit_2(tmp_path):
    (tmp_path / "out").mkdir()
    first = RunLock(str(tmp_path / "out"), "first-run", "python tools/train.py").acquire()
    try:
        r = run_tool("train.py", *fast_overrides(tmp_path), nproc=2, launch_log_dir=tmp_path / "launch", timeout=200)
        assert r.returncode == 2, r.stdout[-3000:]
        assert f"error: Global.output_dir {tmp_path / 'out'} is in use by another training run" in r.stdout
        assert not processes_mentioning(str(tmp_path / "out")), "a rank outlived the refused run"
        assert not (tmp_path / "log").exists() and os.listdir(tmp_path / "out") == [LOCK_NAME]
    finally:
        first.release()


def test_a_dead_runs_lock_is_taken_over_with_a_warning(tmp_path):
    stale = {"host": socket.gethostname(), "pid": dead_pid(), "started": "2026-01-01 00:00:00 +0000",
             "run": "gone", "command": "python tools/train.py"}
    (tmp_path / LOCK_NAME).write_text(json.dumps(stale))
    warnings = []
    lock = RunLock(str(tmp_path), "new", "python tools/train.py").acquire(warn=warnings.append)
    try:
        assert len(warnings) == 1 and "left by a run that is gone" in warnings[0] and "run gone" in warnings[0]
        assert json.loads((tmp_path / LOCK_NAME).read_text())["run"] == "new"
        with pytest.raises(UserError, match=r"in use by another training run \(.*run new"):
            RunLock(str(tmp_path), "third", "x").acquire()  # a live holder (this process, its flock held)
    finally:
        lock.release()
    assert os.listdir(tmp_path) == []


def test_another_hosts_lock_is_refused_naming_it(tmp_path):
    other = {"host": "node-b", "pid": dead_pid(), "started": "2026-01-01 00:00:00 +0000", "run": "b",
             "command": "python tools/train.py"}
    (tmp_path / LOCK_NAME).write_text(json.dumps(other))
    with pytest.raises(UserError, match=r"in use by another training run \(host node-b, pid \d+"):
        RunLock(str(tmp_path), "a", "x").acquire()
    assert json.loads((tmp_path / LOCK_NAME).read_text()) == other and os.listdir(tmp_path) == [LOCK_NAME]


def test_a_planted_symlink_is_never_followed(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    path = out / "ckpt-e0001-s000001.pdckpt"
    os.symlink(victim, f"{path}.tmp{os.getpid()}")  # the old, predictable temporary name
    os.symlink(victim, out / "latest.pdckpt")
    atomic_save({"epoch": 1}, str(path))
    atomic_link(str(path), str(out / "latest.pdckpt"))
    assert victim.read_text() == "precious"
    assert load_file(str(out / "latest.pdckpt"))["epoch"] == 1 and not (out / "latest.pdckpt").is_symlink()
    CheckpointDir(str(out)).remove_stale_temporaries()  # removes the planted link, not what it points at
    assert sorted(os.listdir(out)) == ["ckpt-e0001-s000001.pdckpt", "latest.pdckpt"]
    os.symlink(victim, out / LOCK_NAME)
    with pytest.raises(UserError, match=f"{out / LOCK_NAME} is not a lock file of this repo"):
        RunLock(str(out), "r", "x").acquire()
    assert victim.read_text() == "precious"


def test_a_failed_atomic_write_leaves_the_old_file_and_no_temporary(tmp_path):
    dest = tmp_path / "meta.json"
    dest.write_text("old")

    class Unsavable:
        def __reduce__(self):
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        atomic_save({"x": Unsavable()}, str(dest))
    assert dest.read_text() == "old" and os.listdir(tmp_path) == ["meta.json"]
    atomic.write_bytes(str(dest), b"new")
    assert dest.read_text() == "new" and oct(dest.stat().st_mode & 0o777) == oct(atomic.FILE_MODE)


@pytest.fixture
def full_disk(tmp_path):
    """A 1 MiB tmpfs (needs root; CI runs as root)."""
    mount = tmp_path / "full"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (not root)")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


@pytest.mark.slow
def test_export_on_a_full_disk_is_one_error_line_and_leaves_nothing(tmp_path, full_disk):
    weights = tmp_path / "w.pdparams"
    paddle.save(create_model("t2t_vit_7", img_size=32, num_classes=20).state_dict(), str(weights))
    r = run_tool("export_model.py", "--weights", weights, "--out", full_disk / "inference", "-o", "Global.img_size=32",
                 "-o", "Global.num_classes=20")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert error_lines(r) == [f"error: cannot write {full_disk / 'inference'}: No space left on device"]
    assert os.listdir(full_disk) == []


@pytest.mark.parametrize("content", [b"", b"\x00\xff garbage", b"[1, 2]", b'{"run": "x"}'])
def test_a_garbage_lock_is_reported_as_garbage_not_as_a_holder(tmp_path, content):
    (tmp_path / LOCK_NAME).write_bytes(content)
    with pytest.raises(UserError) as e:
        RunLock(str(tmp_path), "r", "cmd").acquire()
    assert str(e.value) == (f"{tmp_path / LOCK_NAME} is not a lock of this repo, or is damaged: it names no holder "
                            "(host and pid); remove it if no run uses this folder")
    assert (tmp_path / LOCK_NAME).read_bytes() == content and os.listdir(tmp_path) == [LOCK_NAME]


def test_an_output_dir_that_is_a_file_or_under_one_is_one_line(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match=f"^Global.output_dir {tmp_path / 'f'} is a file, not a folder: "):
        RunLock(str(tmp_path / "f"), "r", "cmd").acquire()
    with pytest.raises(UserError, match=f"^Global.output_dir {tmp_path / 'f' / 'out'} cannot be made \\(Not a "
                                        "directory\\)"):
        RunLock(str(tmp_path / "f" / "out"), "r", "cmd").acquire()


def test_an_output_dir_where_no_lock_can_be_made_is_one_line(tmp_path, monkeypatch):
    import errno
    import tempfile

    def refused(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(tempfile, "mkstemp", refused)  # a read-only folder, as a user other than root sees it
    with pytest.raises(UserError, match=f"^Global.output_dir {tmp_path}: cannot create its lock there: "
                                        "Permission denied$"):
        RunLock(str(tmp_path), "r", "cmd").acquire()
