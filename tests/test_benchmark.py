"""tools/benchmark.py runs every measurement end to end (at toy sizes: this checks plumbing, not speed)."""
import json
import os
import subprocess
import sys

from benchmark import JSON_PREFIX, MEASURES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARK = os.path.join(ROOT, "tools", "benchmark.py")


def run(*args):
    return subprocess.run([sys.executable, BENCHMARK, *args], capture_output=True, text=True, cwd=ROOT)


def test_every_measurement_reports_images_per_second_and_memory():
    r = run("--batch", "2", "--img-size", "32", "--warmup", "0", "--repeat", "2", "--data-images", "3",
            "--mkl-debug", "off")
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stdout.splitlines() if line.startswith(JSON_PREFIX)]
    assert len(lines) == 1
    report = json.loads(lines[0][len(JSON_PREFIX):])
    assert [row["measure"] for row in report["results"]] == list(MEASURES)
    gemm, *models = report["results"]
    assert gemm["gflops_dynamic"] > 0 and gemm["gflops_engine"] > 0
    assert report["gemm_peak_gflops"] == max(gemm["gflops_dynamic"], gemm["gflops_engine"])
    for row in models:
        assert row["images_per_s"] > 0 and row["peak_mem_mb"] > 0 and len(row["seconds_per_item"]) == 2
        assert row["vs_reference"] is None  # not the reference's setting
    assert report["settings"]["img_size"] == 32 and report["machine"]["logical_cpus_usable"] >= 1
    assert "images/s" in r.stdout.splitlines()[0]


def test_both_mkl_settings_for_the_mkl_bound_measurements():
    r = run("--batch", "1", "--img-size", "32", "--warmup", "0", "--repeat", "1", "--only", "eval_dynamic")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout.splitlines()[-1][len(JSON_PREFIX):])
    assert [row["mkl_debug_cpu_type_5"] for row in report["results"]] == [False, True]


def test_unknown_measurement_is_one_line():
    r = run("--only", "eval_dynamic", "warp_speed")
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert r.returncode != 0 and len(errors) == 1 and "warp_speed" in errors[0]
