"""What the driver and every worker share: the measures, the config they read, the random inputs, the timer."""
import functools
import os
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCHMARK = os.path.join(ROOT, "tools", "benchmark.py")  # the command; its --worker runs one measure
PHOTOS = os.path.join(ROOT, "lit_data", "val")
MEASURES = ("torch_eval", "torch_train", "direct", "eval_dynamic", "train", "engine", "plain", "data_train",
            "data_train_reduced", "data_val")
DATA_SETTINGS = {"data_train": ("train", []), "data_train_reduced": ("train", ["Data.reduced_decode=true"]),
                 "data_val": ("val", [])}
TORCH_MEASURES = ("torch_eval", "torch_train")
YARDSTICK = {"eval_dynamic": "torch_eval", "engine": "torch_eval", "torch_eval": "torch_eval",
             "direct": "torch_eval", "plain": "torch_eval", "train": "torch_train", "torch_train": "torch_train"}
PRECISION_IN_SETTING = ("direct", "engine", "plain")  # measures whose setting ends with its precision; others fp32
JSON_PREFIX = "BENCHMARK_JSON "


def repo_relative(path):
    """path relative to the repo when it lies inside it, else as given: a report shows no machine's absolute paths."""
    full = os.path.abspath(path)
    return os.path.relpath(full, ROOT) if full.startswith(ROOT + os.sep) else path


def timed(fn, warmup, repeat):
    """Seconds of each of `repeat` calls of fn, after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def config_of(args, extra=()):
    """The config the measures share: --config with its overrides, --model and --img-size applied (read once
    per process; the measures only read it)."""
    return _load_config(args.config, (*args.override, f"Global.model={args.model}",
                                      f"Global.img_size={args.img_size}", *extra))


@functools.lru_cache(maxsize=None)
def _load_config(path, overrides):
    from t2tvit.config import load_config
    return load_config(path, list(overrides))


def random_batch(args):
    return np.random.RandomState(0).standard_normal((args.batch, 3, args.img_size, args.img_size)).astype("float32")


def soft_targets(rng, batch, classes, smoothing=0.1):
    targets = np.full((batch, classes), smoothing / classes, dtype="float32")
    targets[np.arange(batch), rng.randint(0, classes, batch)] += 1.0 - smoothing
    return targets
