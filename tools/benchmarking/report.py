"""The report: each row's images/s, ratio, agreement and compute-bound share, and the tables printed."""
import os

import numpy as np

from .machine import compute_bound_fraction
from .settings import YARDSTICK
from .workdir import logits_path


def agreement(work_dir, tag):
    """(max |logit difference|, top-1 agreement) of a measure's logits on the compared images vs the fp32
    dynamic model's, and its top-1 accuracy against the labels (None on the unlabelled photos)."""
    path = logits_path(work_dir, tag)
    if not os.path.exists(path):
        return None, None, None
    ref, got = np.load(logits_path(work_dir, "reference")), np.load(path)
    labels = os.path.join(work_dir, "labels.npy")
    top1 = float(np.mean(got.argmax(-1) == np.load(labels))) if os.path.exists(labels) else None
    return float(np.abs(got - ref).max()), float(np.mean(got.argmax(-1) == ref.argmax(-1))), top1


def finish(rows):
    """images/s of each row, and its ratio to the PyTorch measure it is compared with."""
    for r in rows:
        if "error" not in r:
            r["images_per_s"] = round(1.0 / float(np.median(r["seconds_per_item"])), 2)  # over all rounds
    ips = {r["measure"]: r.get("images_per_s") for r in rows}
    for r in rows:
        base = ips.get(YARDSTICK.get(r["measure"]))
        r["ratio"] = round(r["images_per_s"] / base, 2) if base and r.get("images_per_s") else None
    return rows


def add_compute_bound(rows, macs, gemm):
    """Each eval row's images/s (at --batch) as a fraction of the compute-bound limit at the GEMM rate of its
    precision (where that precision's rate was not measured: the fp32 rate)."""
    fp32 = gemm.get("fp32")
    for r in rows:
        if "images_per_s" in r and YARDSTICK.get(r["measure"]) == "torch_eval" and fp32:
            precision = r["setting"].rsplit(" ", 1)[-1]
            rate = gemm.get(precision, fp32)
            r["compute_bound_fraction"] = compute_bound_fraction(r["images_per_s"], macs, rate)


def print_latency(rows, macs, gemm, gemm_by):
    print(f"batch-1 latency and throughput; model {macs / 1e9:.3f} GMACs per image (every matrix product); GEMM "
          f"GFLOP/s (int8: GOP/s), the faster of PyTorch and OpenVINO: "
          f"{', '.join(f'{k} {v} ({gemm_by[k]})' for k, v in gemm.items()) or 'not measured'}")
    print(f"{'measure':<20}{'setting':<26}{'p50 ms':>9}{'p99 ms':>9}" + "".join(
        f"{'b' + b + ' img/s':>12}" for b in next((r["throughput_images_per_s"] for r in rows
                                                    if "throughput_images_per_s" in r), {})) + f"{'of limit':>10}")
    for r in rows:
        if "latency_ms" in r:
            frac = r.get("compute_bound_fraction")
            print(f"{r['measure']:<20}{r['setting']:<26}{r['latency_ms']['p50']:>9.2f}{r['latency_ms']['p99']:>9.2f}"
                  + "".join(f"{v:>12.1f}" for v in r["throughput_images_per_s"].values())
                  + (f"{100 * frac:>9.1f}%" if frac is not None else ""))


def print_table(rows, machine, args, prepared):
    gap = prepared["reference_top2_gap"]
    print(f"T2T-ViT benchmark: {args.model}, batch {args.batch}, {args.img_size} px, {args.threads} threads, "
          f"{args.device}; CPU: {machine['cpu_model']} (family {machine.get('cpu_family')}, model "
          f"{machine.get('cpu_model_number')}), {machine['usable_cores']} usable cores")
    print(f"CPU flags: {machine['cpu_flags']}")
    print(f"{'measure':<20}{'setting':<26}{'images/s':>10}{'ratio':>8}{'max|dlogit|':>13}{'top-1 agree':>13}"
          f"{'top-1':>8}{'peak MB':>9}")
    for r in rows:
        if "error" in r:
            print(f"{r['measure']:<20}{r['setting']:<26}failed: {r['error']}")
            continue
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        diff = "" if r["max_abs_diff"] is None else f"{r['max_abs_diff']:.1e}"
        agree = "" if r["top1_agreement"] is None else f"{100 * r['top1_agreement']:.1f}%"
        top1 = "" if r.get("top1_vs_labels") is None else f"{100 * r['top1_vs_labels']:.2f}"
        print(f"{r['measure']:<20}{r['setting']:<26}{r['images_per_s']:>10.1f}{ratio:>8}{diff:>13}{agree:>13}"
              f"{top1:>8}{r['peak_mem_mb']:>9}")
    print("ratio: eval rows to torch_eval, train to torch_train (PyTorch running the official model, this run); "
          f"logits vs Paddle's fp32 dynamic graph on {prepared['compared_images']} images of "
          f"{prepared['compared_on']}, weights: {prepared['weights']}; its top-2 logit gap: min "
          f"{gap['min']:.2g}, median {gap['median']:.2g} (logit std {gap['logit_std']:.2g})")


def print_stages(stages):
    frameworks = [f for f in ("paddle", "torch") if f in stages]
    print("per stage, ms per batch: eval forward | training forward + backward")
    print(f"{'stage':<30}" + "".join(f"{f + ' eval':>13}" for f in frameworks) +
          "".join(f"{f + ' train':>13}" for f in frameworks))
    for name in stages[frameworks[0]]:
        cells = [stages[f][name][i] * 1e3 for i in (0, 1) for f in frameworks]
        print(f"{name:<30}" + "".join(f"{c:>13.1f}" for c in cells))
