"""Timing an eval measure: images/s on the random batch, then its logits on the compared images and its latency."""
import json
import os

import numpy as np

from .settings import random_batch, timed
from .workdir import image_batches, logits_path, profile_path


def time_eval(args, to_input, predict):
    """Time predict (input -> numpy logits) on the random batch; save its logits on the compared images and
    its latency profile (in the first round only: they are the same in every round)."""
    x = to_input(random_batch(args))
    times = timed(lambda: predict(x), args.warmup, args.repeat)
    path = logits_path(args.work_dir, args.tag)
    if not os.path.exists(path):
        np.save(path, np.concatenate([predict(to_input(b)) for b in image_batches(args)]).astype("float32"))
        if args.latency_runs:
            with open(profile_path(args.work_dir, args.tag), "w") as f:
                json.dump(latency_profile(args, to_input, predict), f)
    return times


def latency_profile(args, to_input, predict):
    """Batch-1 latency (p50 / p99 ms of --latency-runs runs after --warmup) and images/s at each of
    --throughput-batches (median of --repeat runs), on random images."""
    rng = np.random.RandomState(0)

    def batch_of(n):
        return to_input(rng.standard_normal((n, 3, args.img_size, args.img_size)).astype("float32"))

    one = batch_of(1)
    latency = np.asarray(timed(lambda: predict(one), args.warmup, args.latency_runs)) * 1e3
    throughput = {}
    for n in args.throughput_batches:
        x = batch_of(n)
        throughput[str(n)] = round(n / float(np.median(timed(lambda: predict(x), args.warmup, args.repeat))), 2)
    return {"latency_ms": {"p50": round(float(np.percentile(latency, 50)), 3),
                           "p99": round(float(np.percentile(latency, 99)), 3), "runs": len(latency)},
            "throughput_images_per_s": throughput}


def time_model_eval(args, model, no_grad, to_input):
    """time_eval of a framework's model (Paddle's or PyTorch's) called under its no_grad on its tensors."""
    def predict(x):
        with no_grad():
            return model(x).numpy()

    return time_eval(args, to_input, predict)
