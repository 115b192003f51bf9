"""Storage faults while training: one error line naming the file, why, and the newest complete checkpoint.

The faults are injected (tests/faults.py makes Python's open() fail for some files), so this runs anywhere,
without root or a small file system to fill.
"""
import re

import pytest

from runner import error_lines, fast_overrides, tool_with_fault
from t2tvit.checkpoint import CheckpointDir, load_file
from t2tvit.errors import UserError


@pytest.mark.slow
@pytest.mark.parametrize("pattern, errno_name, after_bytes, culprit, newest", [
    ("ckpt-e0002-*.tmp*", "ENOSPC", 1 << 20, "out/ckpt-e0002-s000000.pdckpt: No space left on device",
     "out/latest.pdckpt (= ckpt-e0001-s000000.pdckpt)"),
    ("train.log", "ENOSPC", 3000, "log/train.log: No space left on device", None),
    ("vdlrecords*", "EROFS", None, "log/vdlrecords.", None),
], ids=["checkpoint on a full disk", "log on a full disk", "metrics on a read-only file system"])
def test_a_failed_write_stops_with_one_error_line_and_keeps_the_checkpoints(tmp_path, pattern, errno_name,
                                                                            after_bytes, culprit, newest):
    fault = [pattern, errno_name] + ([after_bytes] if after_bytes is not None else [])
    r = tool_with_fault(fault, "train.py", *fast_overrides(tmp_path, **{"Data.num_workers": 1}))
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    errors = error_lines(r)
    assert len(errors) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert errors[0].startswith(f"error: cannot write {tmp_path}/{culprit}"), errors[0]
    out = tmp_path / "out"
    if newest:
        assert errors[0].endswith(f"newest complete checkpoint: {tmp_path}/{newest}")
        assert load_file(str(out / "latest.pdckpt"))["epoch"] == 1  # the previous checkpoint is intact
    else:
        assert re.search(r"newest complete checkpoint: (none yet|\S+latest\.pdckpt)", errors[0]), errors[0]
    assert not list(out.glob("*.tmp*"))


def test_resume_auto_without_any_readable_checkpoint_is_an_error(tmp_path):
    for name in ("latest.pdckpt", "ckpt-e0001-s000000.pdckpt", "best.pdckpt"):
        (tmp_path / name).write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match=r"no readable checkpoint in .*latest\.pdckpt.*ckpt-e0001.*best\.pdckpt"):
        CheckpointDir(str(tmp_path)).resume_from("auto", warn=print)
