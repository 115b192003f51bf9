"""The driver: prepare, then every measure in a fresh worker process (rounds interleaved), then the report."""
import importlib.util
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

from t2tvit.errors import UserError

from .data_measures import make_jpegs
from .machine import load_average, machine_info
from .direct_route import ROUTES
from .report import (add_compute_bound, add_direct_ratios, add_path_ratios, add_spread, agreement, finish,
                     print_latency, print_paths, print_stages, print_table, spread_warnings)
from .sessions import PLAIN_BACKENDS
from .settings import BENCHMARK, JSON_PREFIX, MEASURES, TORCH_MEASURES, YARDSTICK, repo_relative
from .targets import judge, print_targets
from .workdir import profile_path, session_path


def run_worker(args, name, work_dir, tag=None, extra=()):
    """Run one worker process; its JSON result, or {'error': ...}."""
    env = dict(os.environ, PYTHONWARNINGS="ignore", GLOG_minloglevel="2")
    threads = 1 if name.startswith("data_") else args.threads
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, BENCHMARK, "--worker", name, "--model", args.model,
           "--batch", str(args.batch), "--img-size", str(args.img_size), "--threads", str(threads),
           "--device", args.device, "--warmup", str(args.warmup), "--repeat", str(args.repeat),
           "--work-dir", work_dir, "--tag", tag or name, "--config", args.config, "--agree-on", args.agree_on,
           "--agree-limit", str(args.agree_limit), "--latency-runs", str(args.latency_runs),
           "--throughput-batches", *map(str, args.throughput_batches), "--only", *args.only, *extra]
    cmd += ["-o", *args.override] if args.override else []
    cmd += ["--weights", args.weights] if args.weights else []
    cmd += ["--calib", *args.calib] if args.calib else []
    cmd += ["--official-repo", args.official_repo] if args.official_repo else []
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(JSON_PREFIX)]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"error": f"exit {proc.returncode}: {tail}"}
    return json.loads(lines[-1][len(JSON_PREFIX):])


def plan(args, prepared, direct):
    """(measure, tag, setting, extra worker arguments) of every worker to run, in table order; `direct`: what
    direct_export made."""
    runs = []
    for name in MEASURES:
        if name not in args.only:
            continue
        if name in ("engine", "plain"):
            for backend, precisions in prepared["backends"].items():
                for precision in precisions if name == "engine" or backend in PLAIN_BACKENDS else ():
                    runs.append((name, f"{name}_{backend}_{precision}", f"{backend} {precision}",
                                 ["--engine-backend", backend, "--precision", precision]))
        elif name == "direct":
            for route, precisions in direct["routes"].items():
                for precision in precisions:
                    runs.append((name, f"direct_{route}_{precision}", f"{ROUTES[route][0]} {precision}",
                                 ["--direct-route", route, "--precision", precision]))
        elif name.startswith("data_"):
            runs.append((name, name, "1 thread", []))
        else:
            runs.append((name, name, "PyTorch" if name in TORCH_MEASURES else "Paddle dynamic graph", []))
    return runs


def direct_problem(args):
    """Why the direct route cannot be measured in this run, or None: it needs torch to export the official model
    and runs on the CPU."""
    if importlib.util.find_spec("torch") is None:
        return "torch is not installed: the official model cannot be exported (pip install -r requirements-test.txt)"
    if args.device != "cpu":
        return "the direct route runs on CPU only"
    return None


def drive(args):
    report_notes = []
    if importlib.util.find_spec("torch") is None:
        skipped = [m for m in TORCH_MEASURES if m in args.only]
        args.only = [m for m in args.only if m not in TORCH_MEASURES]
        if skipped:
            report_notes.append("torch is not installed: no PyTorch measures, so no ratios")
    if args.device != "cpu" and any(m in args.only for m in TORCH_MEASURES):
        args.only = [m for m in args.only if m not in TORCH_MEASURES]
        report_notes.append("PyTorch measures run on CPU only")
    unavailable = []  # rows that say why they were not measured
    direct_missing = direct_problem(args)
    if direct_missing and "direct" in args.only:
        args.only.remove("direct")
        unavailable.append({"measure": "direct", "setting": "the official model exported", "unavailable":
                            direct_missing})
    if args.official_repo and "direct" in args.only:
        from make_reference import check_sources
        check_sources(args.official_repo)
        if importlib.util.find_spec("timm") is None:
            raise UserError("--official-repo: the official code needs timm 0.3.4 (pip install --no-deps timm==0.3.4)")
    if any(m in TORCH_MEASURES or (m == "direct" and not args.official_repo) for m in args.only):
        from torch_reference import PERFORMER_VARIANTS
        if args.model not in PERFORMER_VARIANTS:
            raise UserError(f"the PyTorch reference has the Performer variants only "
                            f"({', '.join(PERFORMER_VARIANTS)}); for {args.model} use --only without "
                            f"{' '.join(TORCH_MEASURES)} direct (or --official-repo for the direct route)")
    if not args.only:
        raise UserError("nothing left to measure")
    for note in report_notes:
        print(f"note: {note}", file=sys.stderr)
    load_before = load_average()
    with tempfile.TemporaryDirectory() as work_dir:
        if any(m.startswith("data_") for m in args.only):
            make_jpegs(os.path.join(work_dir, "jpeg"), args.data_images)
        prepared = run_worker(args, "prepare", work_dir)
        if "error" in prepared:
            raise UserError(f"benchmark preparation failed: {prepared['error']}")
        direct = {"routes": {}, "unavailable": {}, "source": None}
        if "direct" in args.only:
            direct = run_worker(args, "direct_export", work_dir)
            if "error" in direct:
                raise UserError(f"exporting the official model (the direct route) failed: {direct['error']}")
            unavailable += [{"measure": "direct", "setting": ROUTES[route][0], "unavailable": why}
                            for route, why in direct["unavailable"].items()]
        runs = plan(args, prepared, direct)
        rows = [{"measure": name, "setting": setting, "seconds_per_item": [], "rounds_images_per_s": []}
                for name, _, setting, _ in runs]
        # Rounds interleave the measures, so that a passing load on a shared machine hits them alike.
        gemm, gemm_by, gemm_rounds = {}, {}, []
        measure_gemm = any(m in args.only for m in YARDSTICK if YARDSTICK[m] == "torch_eval")
        for _ in range(args.rounds):
            for row, (name, tag, setting, extra) in zip(rows, runs):
                if "error" in row:
                    continue
                result = run_worker(args, name, work_dir, tag, extra)
                if "error" in result:
                    row["error"] = result["error"]
                    print(f"  {name} ({setting}): failed: {result['error']}", file=sys.stderr, flush=True)
                    continue
                row["seconds_per_item"] += result["seconds_per_item"]
                row["peak_mem_mb"] = max(row.get("peak_mem_mb", 0), result["peak_mem_mb"])
                row["rounds_images_per_s"].append(round(1.0 / float(np.median(result["seconds_per_item"])), 2))
                row["max_abs_diff"], row["top1_agreement"], row["top1_vs_labels"] = agreement(work_dir, tag)
                if os.path.exists(profile_path(work_dir, tag)):
                    with open(profile_path(work_dir, tag)) as f:
                        row.update(json.load(f))
                if os.path.exists(session_path(work_dir, tag)):
                    with open(session_path(work_dir, tag)) as f:
                        row["session"] = json.load(f)
                print(f"  {name} ({setting}): {row['rounds_images_per_s'][-1]:.1f} images/s", file=sys.stderr,
                      flush=True)
            # The GEMM rate in every round too, and the highest kept: the compute-bound limit is the best this CPU
            # did in the run (one measurement in a slow moment made a low limit, which flattered every row).
            if measure_gemm:
                result = run_worker(args, "gemm", work_dir)
                if "error" in result:
                    report_notes.append(f"GEMM rate not measured: {result['error']}")
                    measure_gemm = False  # once: what failed in one round fails in the next
                    continue
                gemm_rounds.append(result["rates"])
                for precision, rate in result["rates"].items():
                    if rate > gemm.get(precision, 0):
                        gemm[precision], gemm_by[precision] = rate, result["by"][precision]
        stages = {}
        if args.stages:
            for framework in ("paddle", "torch"):
                if framework == "torch" and importlib.util.find_spec("torch") is None:
                    continue
                result = run_worker(args, f"stages_{framework}", work_dir)
                if "error" in result:
                    raise UserError(f"--stages ({framework}) failed: {result['error']}")
                stages[framework] = result
    finish(rows)
    add_compute_bound(rows, prepared["model_macs"], gemm)
    add_spread(rows)
    add_direct_ratios(rows)
    add_path_ratios(rows)
    judged = judge(rows, prepared["model_macs"], gemm) if any(r["measure"] == "direct" for r in rows) else []
    rows += unavailable
    warnings = spread_warnings(rows)
    machine = machine_info()
    settings = {k: getattr(args, k) for k in ("config", "override", "model", "batch", "img_size", "threads",
                                              "device", "warmup", "repeat", "rounds", "calib")}
    settings["config"], settings["weights"] = repo_relative(args.config), prepared["weights"]
    settings["official_model"] = direct["source"]
    report = {"machine": machine, "load_average_before": load_before, "load_average_after": load_average(),
              "settings": settings, "notes": report_notes, "warnings": warnings, "results": rows,
              "stages_seconds": stages, "targets": judged,
              "gemm_gflops": gemm, "gemm_engine": gemm_by, "gemm_rounds": gemm_rounds,
              "model_macs": prepared["model_macs"],
              **{k: prepared[k] for k in ("compared_on", "compared_images", "reference_top2_gap")}}
    print_table(rows, machine, args, prepared)
    for line in warnings:
        print(line)
    print_latency(rows, prepared["model_macs"], gemm, gemm_by)
    print_paths(rows)
    if judged:
        print_targets(judged)
    if stages:
        print_stages(stages)
    print(JSON_PREFIX + json.dumps(report))
    return 1 if any("error" in r for r in rows) else 0
