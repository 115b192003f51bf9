"""tools/benchmark.py runs every measurement end to end (at toy sizes: this checks plumbing, not speed)."""
import json
import os
import subprocess
import sys

from benchmarking.settings import JSON_PREFIX, MEASURES
from skip_policy import installed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARK = os.path.join(ROOT, "tools", "benchmark.py")
TINY = ("--batch", "2", "--img-size", "32", "--warmup", "0", "--repeat", "2", "--threads", "1", "--latency-runs", "3",
        "--throughput-batches", "1", "2")


def run(*args):
    return subprocess.run([sys.executable, BENCHMARK, *args], capture_output=True, text=True, cwd=ROOT)


def report_of(r):
    lines = [line for line in r.stdout.splitlines() if line.startswith(JSON_PREFIX)]
    assert len(lines) == 1
    return json.loads(lines[0][len(JSON_PREFIX):])


def test_one_run_measures_everything_side_by_side():
    calib = os.path.join(ROOT, "lit_data", "train")  # int8 calibrated on other images than the compared ones
    r = run(*TINY, "--data-images", "3", "--calib", calib)
    assert r.returncode == 0, r.stderr
    report = report_of(r)
    assert report["settings"]["calib"] == [calib]
    rows = {row["measure"]: row for row in report["results"]}
    has_torch = installed("torch")
    expected = [m for m in MEASURES if has_torch or not m.startswith("torch_")]
    assert sorted(set(rows)) == sorted(expected)
    for row in report["results"]:
        assert row["images_per_s"] > 0 and row["peak_mem_mb"] > 0 and len(row["seconds_per_item"]) == 2
    # Every model that evaluates is compared with the fp32 dynamic graph on the 20 lit_data photos.
    assert report["compared_images"] == 20 and report["compared_on"] == os.path.join("lit_data", "val")
    assert report["reference_top2_gap"]["min"] >= 0 and report["settings"]["model"] == "t2t_vit_7"
    engines = [row for row in report["results"] if row["measure"] == "engine"]
    assert engines and all(row["setting"].endswith(("fp32", "bf16", "int8", "fp16")) for row in engines)
    for row in [rows["eval_dynamic"], *engines] + ([rows["torch_eval"]] if has_torch else []):
        assert row["top1_agreement"] is not None and row["max_abs_diff"] is not None
    assert rows["eval_dynamic"]["max_abs_diff"] == 0.0
    fp32 = [row for row in engines if row["setting"].endswith("fp32")] + ([rows["torch_eval"]] if has_torch else [])
    assert all(row["max_abs_diff"] < 1e-4 and row["top1_agreement"] == 1.0 for row in fp32)
    if has_torch:
        assert rows["torch_eval"]["ratio"] == 1.0 and rows["torch_train"]["ratio"] == 1.0
        assert rows["train"]["ratio"] == round(rows["train"]["images_per_s"] / rows["torch_train"]["images_per_s"], 2)
        assert rows["eval_dynamic"]["ratio"] > 0
    # Every eval row: batch-1 latency, throughput at each batch, and its share of the compute-bound limit.
    assert report["gemm_gflops"]["fp32"] > 0 and report["model_macs"] > 0
    assert set(report["gemm_engine"]) == set(report["gemm_gflops"]) and "int8" in report["gemm_gflops"]
    for row in [rows["eval_dynamic"], *engines] + ([rows["torch_eval"]] if has_torch else []):
        lat = row["latency_ms"]
        assert 0 < lat["p50"] <= lat["p99"] and lat["runs"] == 3, row
        assert sorted(row["throughput_images_per_s"]) == ["1", "2"] and min(row["throughput_images_per_s"].values()) > 0
        rate = report["gemm_gflops"].get(row["setting"].rsplit(" ", 1)[-1], report["gemm_gflops"]["fp32"])
        assert row["compute_bound_fraction"] == round(row["images_per_s"] * 2 * report["model_macs"] / (rate * 1e9), 3)
    assert {row["setting"] for row in engines} >= {"onnxruntime int8", "openvino int8"}
    machine = report["machine"]
    assert machine["cpu_model"] and machine["usable_cores"] >= 1 and "CPU flags:" in r.stdout
    assert report["settings"]["img_size"] == 32 and report["settings"]["threads"] == 1
    assert "reference" not in report  # no figures from another machine


def test_rounds_interleave_and_pool_the_timed_runs():
    r = run(*TINY, "--rounds", "2", "--only", "eval_dynamic", "train")
    assert r.returncode == 0, r.stderr
    report = report_of(r)
    assert report["settings"]["rounds"] == 2
    assert report["settings"]["config"] == os.path.join("config", "t2t_vit_7_demo.yaml")  # no absolute path of this machine
    for row in report["results"]:
        assert len(row["rounds_images_per_s"]) == 2 and len(row["seconds_per_item"]) == 4


def test_stages_time_each_stage_in_both_frameworks():
    r = run(*TINY, "--repeat", "1", "--only", "eval_dynamic", "--stages")
    assert r.returncode == 0, r.stderr
    stages = report_of(r)["stages_seconds"]
    frameworks = ["paddle"] + (["torch"] if installed("torch") else [])
    assert sorted(stages) == frameworks
    names = list(stages["paddle"])
    assert names[1] == "T2T Performer 1" and names[-1] == "whole model" and "7 backbone blocks" in names
    for framework in frameworks:
        assert list(stages[framework]) == names
        assert all(len(v) == 2 and min(v) > 0 for v in stages[framework].values())
    assert "per stage" in r.stdout


def test_unknown_measurement_is_one_line():
    r = run("--only", "eval_dynamic", "warp_speed")
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert r.returncode != 0 and len(errors) == 1 and "warp_speed" in errors[0]


def test_bad_config_key_or_missing_validation_data_is_one_line():
    for args, message in ((["-o", "Data.rooot=x"], "did you mean 'Data.root'"),
                          (["--agree-on", "val", "--only", "eval_dynamic", "-o", "Data.root=/nonexistent"],
                           "Data.root: directory not found: /nonexistent")):
        r = run(*TINY, *args)
        errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
        assert r.returncode != 0 and len(errors) == 1 and message in errors[0], r.stderr
