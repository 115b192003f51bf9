"""The deployment targets of issue 32, judged on one run's rows, each beside the best this CPU could do.

The best this CPU could do is the model's matrix products alone at the GEMM rate the run measured (machine.py):
a speed no implementation of the same arithmetic passes. A target that needs more is out of reach on this CPU
whatever the export does, and the report says so instead of "not met".
"""
from .machine import compute_bound_fraction, compute_bound_limit
from .report import precision_of

SPEEDUP = {"fp32": 1.5, "bf16": 1.2, "int8": 3.0}  # ours over the direct route's best (int8: over its fp32)
LATENCY = 0.5  # our lowest batch-1 p50 over the direct route's lowest
COMPUTE_BOUND = 0.70  # our best fp32 as a fraction of the compute-bound limit


def _best(rows, measure, precision):
    found = [r for r in rows if r["measure"] == measure and "images_per_s" in r and precision_of(r) == precision]
    return max(found, key=lambda r: r["images_per_s"], default=None)


def _fastest(rows, measure):
    return min((r for r in rows if r["measure"] == measure and "latency_ms" in r),
               key=lambda r: r["latency_ms"]["p50"], default=None)


def _verdict(met, needed, limit, higher_is_better=True):
    if met:
        return "met"
    if limit is not None and (needed > limit if higher_is_better else needed < limit):
        return "beyond this CPU's limit"
    return "not met"


def _speedup(rows, macs, gemm, precision, factor):
    base_precision = "fp32" if precision == "int8" else precision
    record = {"id": precision,
              "target": f"our best {precision} >= {factor}x the direct route's best {base_precision}"}
    base, ours = _best(rows, "direct", base_precision), _best(rows, "engine", precision)
    if base is None or ours is None:
        return {**record, "verdict": f"not measured: no {'direct' if base is None else 'engine'} {precision} row "
                                     f"in this run"}
    needed = factor * base["images_per_s"]
    rate = gemm.get(precision, gemm.get("fp32"))
    limit = compute_bound_limit(macs, rate) if rate else None
    return {**record, "unit": "images/s", "needed": round(needed, 1), "got": ours["images_per_s"],
            "row": ours["setting"], "limit": None if limit is None else round(limit, 1),
            "verdict": _verdict(ours["images_per_s"] >= needed, needed, limit)}


def _latency(rows, macs, gemm):
    record = {"id": "latency", "target": f"our batch-1 p50 <= {LATENCY}x the direct route's"}
    ours, base = _fastest(rows, "engine"), _fastest(rows, "direct")
    if ours is None or base is None:
        return {**record, "verdict": "not measured: no batch-1 latency of both in this run"}
    needed = LATENCY * base["latency_ms"]["p50"]
    fastest = max(gemm.values(), default=None)  # one image's products at the fastest rate: a floor on p50
    floor = None if fastest is None else 1e3 / compute_bound_limit(macs, fastest)
    return {**record, "unit": "ms", "needed": round(needed, 2), "got": ours["latency_ms"]["p50"],
            "row": ours["setting"], "limit": None if floor is None else round(floor, 2),
            "verdict": _verdict(ours["latency_ms"]["p50"] <= needed, needed, floor, higher_is_better=False)}


def _compute_bound(rows, macs, gemm):
    record = {"id": "compute_bound", "target": f"our best fp32 >= {COMPUTE_BOUND:.0%} of the compute-bound limit"}
    ours = _best(rows, "engine", "fp32")
    if ours is None or not gemm.get("fp32"):
        return {**record, "verdict": "not measured: no engine fp32 row or no GEMM rate"}
    got = compute_bound_fraction(ours["images_per_s"], macs, gemm["fp32"])
    return {**record, "unit": "of the limit", "needed": COMPUTE_BOUND, "got": got, "row": ours["setting"],
            "limit": 1.0, "verdict": "met" if got >= COMPUTE_BOUND else "not met"}


def judge(rows, macs, gemm):
    """One record per target (`id`: fp32, bf16, int8, latency, compute_bound): what it needs, what this run got,
    the CPU's limit for it and the verdict. Ours are the engine rows (create_predictor: predict.py and the Python
    API); a target whose rows were not measured (no direct route, no bf16 on this CPU) says so."""
    return ([_speedup(rows, macs, gemm, precision, factor) for precision, factor in SPEEDUP.items()]
            + [_latency(rows, macs, gemm), _compute_bound(rows, macs, gemm)])


def print_targets(judged):
    print("against the targets (ours: the engine rows; limit: the matrix products alone at this CPU's GEMM rate, "
          "the best any export of the same arithmetic could do):")
    print(f"{'target':<58}{'needed':>18}{'got':>10}{'limit':>10}  {'row':<18}verdict")
    for t in judged:
        if "needed" not in t:
            print(f"{t['target']:<58}{'':>18}{'':>10}{'':>10}  {'':<18}{t['verdict']}")
            continue
        if t["unit"] == "of the limit":
            cells = (f">= {t['needed']:.0%} of limit", f"{t['got']:.0%}", "100%")
        else:
            sign = "<=" if t["unit"] == "ms" else ">="
            cells = (f"{sign} {t['needed']:g} {t['unit']}", f"{t['got']:g}",
                     "" if t["limit"] is None else f"{t['limit']:g}")
        print(f"{t['target']:<58}{cells[0]:>18}{cells[1]:>10}{cells[2]:>10}  {t['row']:<18}{t['verdict']}")
