"""A worker process: one measure (or prepare, the GEMM rate, a stage profile), its result as one JSON line."""
import json
import resource

from .data_measures import measure_data
from .direct_route import export_direct, measure_direct
from .machine import gemm_rates
from .paddle_measures import measure_engine, measure_eval_dynamic, measure_train
from .prepare import prepare
from .sessions import measure_plain
from .settings import DATA_SETTINGS, JSON_PREFIX, MEASURES
from .stages import measure_stages_paddle, measure_stages_torch
from .torch_measures import measure_torch_eval, measure_torch_train

# Workers that print what they return, not timings.
REPORTING = {"prepare": prepare, "stages_paddle": measure_stages_paddle, "stages_torch": measure_stages_torch,
             "gemm": gemm_rates, "direct_export": export_direct}
TIMED_MODEL = {"eval_dynamic": measure_eval_dynamic, "engine": measure_engine, "plain": measure_plain,
               "direct": measure_direct, "train": measure_train, "torch_eval": measure_torch_eval,
               "torch_train": measure_torch_train}
WORKERS = tuple(REPORTING) + MEASURES  # the names `--worker` takes


def worker(args):
    """Run one measurement; print the seconds per image of each timed run and the peak memory (or, for
    `prepare`, what it prepared)."""
    if args.worker in REPORTING:
        print(JSON_PREFIX + json.dumps(REPORTING[args.worker](args)))
        return 0
    if args.worker in DATA_SETTINGS:
        per_image = measure_data(args, args.worker)
    else:
        times = TIMED_MODEL[args.worker](args)
        per_image = [t / args.batch for t in times]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
    print(JSON_PREFIX + json.dumps({"seconds_per_item": per_image, "peak_mem_mb": round(peak)}))
    return 0
