"""tools/gpu_check.py, the command that accepts a GPU machine, in the mode it runs without a GPU (the same code in
float32 on the CPU at tiny sizes), so that it is known to work before the first GPU runs it."""
import json

import pytest

from runner import run_tool


@pytest.mark.slow
def test_gpu_check_accepts_this_machine_on_the_cpu_and_writes_its_json_and_table(tmp_path):
    out = tmp_path / "gpu_check.json"
    r = run_tool("gpu_check.py", "--out", out, config=None)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["verdict"] == "accepted" and all(report["row_ok"])
    assert report["environment"]["device"] == "cpu" and report["logits"]["max_abs_diff"] <= 1e-4
    fp32 = report["train"]["fp32"]
    assert fp32["run"] and fp32["losses_finite"] and fp32["residual_stream"] == "float32" and fp32["fused_adamw"]
    assert {name for name, row in report["train"].items() if not row["run"]} == {"fp16 O1", "fp16 O2", "bf16 O1"}
    assert all("needs a GPU" in report["train"][name]["why"] for name in ("fp16 O1", "fp16 O2", "bf16 O1"))
    assert report["resume"]["loss"] == report["resume"]["loss_resumed"]
    assert report["loader"]["images"] == 16 and report["loader"]["images_per_s"] > 0
    assert 0 < report["profile"]["busy_share"] <= 1
    table = r.stdout.splitlines()
    assert [line.split()[0] for line in table[-11:-2]] == ["environment", "(a)", "(b)", "(b)", "(b)", "(b)", "(c)",
                                                          "(d)", "(e)"]
    assert table[-2] == "verdict: accepted" and table[-1] == f"wrote {out}"
