"""Run an exported T2T-ViT on the best backend here: create_predictor(DIR, backend="auto").

    predictor = create_predictor(DIR, backend="auto", precision="fp32", threads=None, device="cpu")
    logits = predictor(images)          # [N, 3, S, S] float32, normalised -> [N, num_classes]

"auto" on CPU is the fastest here of the installed backends (t2tvit/backends.py) that run the precision and
whose model file DIR holds, by a batch-1 timing at first use cached per CPU (model name and flags), model (file
digest), precision and threads in ~/.cache/t2tvit/auto_backend.json (measured_auto_backend); the documented
order AUTO_ORDER where only one candidate remains, and on GPU.
"""
import hashlib
import json
import os
import sys
import tempfile
import time

import numpy as np

from .backends import BACKEND_FORMAT, available_backends, open_backend, precision_problem
from .cpu_env import cpu_flags, usable_cores
from .errors import UserError
from .export_files import INT8_MODEL, export_digest, has_format, read_meta

# backend="auto" without a timing (on GPU, or one candidate): the first of these that is installed and whose
# model file is there; ties of the timing are broken in this order too. Measured on a 2-core
# AMD EPYC (cpu family 26: Zen 5), T2T-ViT-7, 224 px, 2 threads, fp32, images/s in two interleaved rounds:
# batch 32: openvino 99-109, paddle 99-104, onnxruntime 81-84; batch 1: openvino 92-96, onnxruntime 74-75,
# paddle 54. OpenVINO is the fastest at both; Paddle Inference is next at batch 32 and needs no model.onnx.
AUTO_ORDER = ("openvino", "paddle", "onnxruntime")


def runnable(model_dir, backend, precision):
    """Whether model_dir holds `backend`'s model file at `precision` (int8: its quantised model)."""
    if precision == "int8":
        return backend in INT8_MODEL and os.path.isfile(os.path.join(model_dir, INT8_MODEL[backend]))
    return has_format(model_dir, BACKEND_FORMAT[backend])


def auto_backend(model_dir, device="cpu", precision="fp32"):
    """The fastest backend (AUTO_ORDER) that is installed, runs `precision` here and whose model file
    model_dir holds."""
    installed = available_backends()
    order = ("paddle",) if device != "cpu" else AUTO_ORDER
    for backend in order:
        if (backend in installed and precision_problem(backend, precision, device) is None
                and runnable(model_dir, backend, precision)):
            return backend
    read_meta(model_dir)  # say what is missing in the directory itself, if anything
    raise UserError(f"no installed backend ({', '.join(installed) or 'none'}) can run the model in {model_dir} "
                    f"on {device} at {precision}: install one (pip install -r requirements-deploy.txt) or export "
                    f"its format" + (" (--int8 --calib IMAGES)" if precision == "int8" else ""))


# backend="auto" on CPU: a short timing of every candidate (batch 1, after warm-up) at first use, cached per
# machine (CPU model and flags), model (digest of its files), precision and threads in AUTO_CACHE.
AUTO_CACHE = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "t2tvit",
                          "auto_backend.json")
AUTO_WARMUP, AUTO_RUNS = 2, 5


def machine_key():
    """A short hash of this CPU's model name and flags: a cached timing holds on this kind of CPU only."""
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    return hashlib.sha256(f"{model}|{' '.join(sorted(cpu_flags()))}".encode()).hexdigest()[:16]


def read_auto_cache(path):
    """The cached timings ({key: {backend: seconds}}); an unreadable or corrupt file is ignored, with a
    warning."""
    if not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            cache = json.load(f)
        if not isinstance(cache, dict) or not all(isinstance(v, dict) for v in cache.values()):
            raise ValueError("not a mapping of timings")
        return cache
    except (OSError, ValueError) as e:
        print(f"warning: ignoring the corrupt backend timing cache {path} ({e}); timing again",
              file=sys.stderr)
        return {}


def write_auto_cache(path, cache):
    """Write the cache atomically: a temporary file in the same folder, then os.replace."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".auto_backend.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(cache, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def time_backend(model_dir, backend, precision, threads):
    """Median seconds of a batch-1 run of `backend` on model_dir (after AUTO_WARMUP untimed runs)."""
    engine = open_backend(model_dir, backend, precision, threads)
    x = np.random.RandomState(0).standard_normal((1, 3, *engine.img_size)).astype("float32")
    for _ in range(AUTO_WARMUP):
        engine(x)
    times = []
    for _ in range(AUTO_RUNS):
        start = time.perf_counter()
        engine(x)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def measured_auto_backend(model_dir, precision="fp32", threads=None, cache_path=None, timer=time_backend):
    """(backend, why): the fastest candidate on this machine by a batch-1 timing (cached in cache_path,
    default AUTO_CACHE), among the installed backends that run `precision` and whose model file model_dir
    holds; AUTO_ORDER when there is one candidate or the timing cannot be kept."""
    cache_path = cache_path or AUTO_CACHE
    installed = available_backends()
    candidates = [b for b in AUTO_ORDER if b in installed and precision_problem(b, precision) is None
                  and runnable(model_dir, b, precision)]
    if len(candidates) < 2:
        return auto_backend(model_dir, "cpu", precision), "the only installed backend that can run this model"
    key = f"{machine_key()}/{export_digest(model_dir)}/{precision}/{threads or usable_cores()} threads"
    cache = read_auto_cache(cache_path)
    timings = cache.get(key)
    source = f"cached in {cache_path}"
    if not timings or set(timings) != set(candidates):
        timings = {b: timer(model_dir, b, precision, threads) for b in candidates}
        cache[key] = timings
        source = f"timed now, cached in {cache_path}"
        try:
            write_auto_cache(cache_path, cache)
        except OSError as e:
            source = f"timed now, not cached ({e})"
    best = min(candidates, key=lambda b: (timings[b], AUTO_ORDER.index(b)))
    measured = ", ".join(f"{b} {1000 * timings[b]:.2f} ms" for b in sorted(candidates, key=timings.get))
    return best, f"fastest at batch 1 on this CPU ({measured}; {source})"


def create_predictor(model_dir, backend="auto", precision="fp32", threads=None, device="cpu", gpu_id=0):
    """A callable mapping [N, 3, S, S] float32 images to [N, num_classes] logits with the exported model in
    model_dir, on `backend` (auto: fastest fp32 one installed) at `precision` with `threads` CPU threads
    (default: every core this process may use), or on GPU `gpu_id`."""
    why = None
    if backend == "auto" and device == "cpu":
        backend, why = measured_auto_backend(model_dir, precision, threads)
    elif backend == "auto":
        backend, why = auto_backend(model_dir, device, precision), "the GPU backend"
    engine = open_backend(model_dir, backend, precision, threads, device, gpu_id)
    engine.auto_reason = why
    return engine
