"""The report: each row's images/s, ratios (to PyTorch, to the direct route, predictor to plain session), spread
over the rounds, agreement and compute-bound share, and the tables printed."""
import os

import numpy as np

from .machine import compute_bound_fraction
from .settings import PRECISION_IN_SETTING, YARDSTICK
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


SPREAD_WARNING = 0.15  # per-round images/s max / min - 1 above this: the rounds disagree (a busy machine?)


def precision_of(row):
    """The precision a row computes in: the last word of an engine, plain or direct row's setting; fp32 else."""
    return row["setting"].rsplit(" ", 1)[-1] if row["measure"] in PRECISION_IN_SETTING else "fp32"


def is_eval(row):
    return "images_per_s" in row and YARDSTICK.get(row["measure"]) == "torch_eval"


def add_spread(rows):
    """Each measured row's per-round images/s as min / median / max, and max / min - 1 in percent."""
    for r in rows:
        rounds = r.get("rounds_images_per_s")
        if rounds:
            r["spread"] = {"min": min(rounds), "median": round(float(np.median(rounds)), 2), "max": max(rounds),
                           "percent": round(100 * (max(rounds) / min(rounds) - 1), 1)}
    return rows


def spread_warnings(rows):
    """A line for each row whose rounds are more than SPREAD_WARNING apart."""
    return [f"warning: {r['measure']} ({r['setting']}): per-round images/s {r['spread']['min']:.1f} / "
            f"{r['spread']['median']:.1f} / {r['spread']['max']:.1f} (min / median / max) are "
            f"{r['spread']['percent']:.0f}% apart, over {100 * SPREAD_WARNING:.0f}%: a busy machine? Its figures "
            f"are not to be compared" for r in rows if "spread" in r and r["spread"]["percent"] > 100 * SPREAD_WARNING]


def add_direct_ratios(rows):
    """Each eval row's images/s (vs_direct) and batch-1 p50 latency (latency_vs_direct) against the direct
    route's best of the same precision in this run; int8 against the direct route's best fp32 (it has no int8).
    None where the direct route was not measured in that precision."""
    best, fastest = {}, {}
    for r in rows:
        if r["measure"] == "direct" and "images_per_s" in r:
            p = precision_of(r)
            best[p] = max(best.get(p, 0), r["images_per_s"])
            if "latency_ms" in r:
                fastest[p] = min(fastest.get(p, float("inf")), r["latency_ms"]["p50"])
    for r in rows:
        if is_eval(r):
            base = "fp32" if precision_of(r) == "int8" else precision_of(r)
            r["vs_direct"] = round(r["images_per_s"] / best[base], 2) if base in best else None
            r["latency_vs_direct"] = (round(r["latency_ms"]["p50"] / fastest[base], 2)
                                      if base in fastest and "latency_ms" in r else None)
    return rows


def add_path_ratios(rows):
    """Each engine row (t2tvit.deploy.create_predictor, predict.py's path) against the plain session of the same
    runtime, file and settings: images/s (vs_plain) and batch-1 p50 latency (latency_vs_plain)."""
    plain = {r["setting"]: r for r in rows if r["measure"] == "plain" and "images_per_s" in r}
    for r in rows:
        other = plain.get(r["setting"]) if r["measure"] == "engine" and "images_per_s" in r else None
        if other:
            r["vs_plain"] = round(r["images_per_s"] / other["images_per_s"], 2)
            r["latency_vs_plain"] = (round(r["latency_ms"]["p50"] / other["latency_ms"]["p50"], 2)
                                     if "latency_ms" in r and "latency_ms" in other else None)
    return rows


def print_paths(rows):
    engines = [r for r in rows if "vs_plain" in r]
    if not engines:
        return
    plain = {r["setting"]: r for r in rows if r["measure"] == "plain" and "images_per_s" in r}
    print("the predictor path (t2tvit.deploy.create_predictor: predict.py, the Python API, the engine rows) against "
          "a plain session of its runtime, same file and settings:")
    print(f"{'setting':<32}{'predictor img/s':>16}{'plain img/s':>12}{'ratio':>7}{'predictor p50':>15}"
          f"{'plain p50':>11}{'ratio':>7}")
    for r in engines:
        other = plain[r["setting"]]
        lat = ("", "", "") if r["latency_vs_plain"] is None else (
            f"{r['latency_ms']['p50']:.2f}", f"{other['latency_ms']['p50']:.2f}", f"{r['latency_vs_plain']:.2f}")
        print(f"{r['setting']:<32}{r['images_per_s']:>16.1f}{other['images_per_s']:>12.1f}{r['vs_plain']:>7.2f}"
              f"{lat[0]:>15}{lat[1]:>11}{lat[2]:>7}")


def add_compute_bound(rows, macs, gemm):
    """Each eval row's images/s (at --batch) as a fraction of the compute-bound limit at the GEMM rate of its
    precision (where that precision's rate was not measured: the fp32 rate)."""
    fp32 = gemm.get("fp32")
    for r in rows:
        if is_eval(r) and fp32:
            rate = gemm.get(precision_of(r), fp32)
            r["compute_bound_fraction"] = compute_bound_fraction(r["images_per_s"], macs, rate)


def print_latency(rows, macs, gemm, gemm_by):
    print(f"batch-1 latency and throughput; model {macs / 1e9:.3f} GMACs per image (every matrix product); GEMM "
          f"GFLOP/s (int8: GOP/s), the faster of PyTorch and OpenVINO: "
          f"{', '.join(f'{k} {v} ({gemm_by[k]})' for k, v in gemm.items()) or 'not measured'}")
    print(f"{'measure':<20}{'setting':<32}{'p50 ms':>9}{'p99 ms':>9}{'p50/direct':>12}" + "".join(
        f"{'b' + b + ' img/s':>12}" for b in next((r["throughput_images_per_s"] for r in rows
                                                    if "throughput_images_per_s" in r), {})) + f"{'of limit':>10}")
    for r in rows:
        if "latency_ms" in r:
            frac, vs = r.get("compute_bound_fraction"), r.get("latency_vs_direct")
            print(f"{r['measure']:<20}{r['setting']:<32}{r['latency_ms']['p50']:>9.2f}{r['latency_ms']['p99']:>9.2f}"
                  + f"{'' if vs is None else f'{vs:.2f}x':>12}"
                  + "".join(f"{v:>12.1f}" for v in r["throughput_images_per_s"].values())
                  + (f"{100 * frac:>9.1f}%" if frac is not None else ""))


def print_table(rows, machine, args, prepared):
    gap = prepared["reference_top2_gap"]
    print(f"T2T-ViT benchmark: {args.model}, batch {args.batch}, {args.img_size} px, {args.threads} threads, "
          f"{args.device}; CPU: {machine['cpu_model']} (family {machine.get('cpu_family')}, model "
          f"{machine.get('cpu_model_number')}), {machine['usable_cores']} usable cores")
    print(f"CPU flags: {machine['cpu_flags']}")
    print(f"{'measure':<20}{'setting':<32}{'images/s':>10}{'ratio':>8}{'vs direct':>10}{'spread':>8}"
          f"{'max|dlogit|':>13}{'top-1 agree':>13}{'top-1':>8}{'peak MB':>9}")
    for r in rows:
        if "error" in r or "unavailable" in r:
            print(f"{r['measure']:<20}{r['setting']:<32}" + (f"failed: {r['error']}" if "error" in r else
                                                            f"not measured: {r['unavailable']}"))
            continue
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        direct = "" if r.get("vs_direct") is None else f"{r['vs_direct']:.2f}x"
        spread = f"{r['spread']['percent']:.0f}%" if len(r["rounds_images_per_s"]) > 1 else ""
        diff = "" if r["max_abs_diff"] is None else f"{r['max_abs_diff']:.1e}"
        agree = "" if r["top1_agreement"] is None else f"{100 * r['top1_agreement']:.1f}%"
        top1 = "" if r.get("top1_vs_labels") is None else f"{100 * r['top1_vs_labels']:.2f}"
        print(f"{r['measure']:<20}{r['setting']:<32}{r['images_per_s']:>10.1f}{ratio:>8}{direct:>10}{spread:>8}"
              f"{diff:>13}{agree:>13}{top1:>8}{r['peak_mem_mb']:>9}")
    print("ratio: eval rows to torch_eval, train to torch_train (PyTorch running the official model, this run); "
          "vs direct: to the direct route's best of the same precision in this run (the official model exported "
          "by torch.onnx.export or ov.convert_model; int8 to its best fp32); spread: per-round images/s, max / min "
          "- 1; "
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
