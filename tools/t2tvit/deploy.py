"""Deployment: export a T2T-ViT (Paddle Inference program, model.onnx) and run it on a backend.

    predictor = create_predictor(DIR, backend="auto", precision="fp32", threads=None, device="cpu")
    logits = predictor(images)          # [N, 3, S, S] float32, normalised -> [N, num_classes]
    available_backends()                # installed of: paddle, onnxruntime, openvino
    supported_precisions(backend)       # fp32, bf16 where the backend and this CPU have it, int8 (AVX2)

Backends: `paddle` (Paddle Inference on DIR/inference.json or .pdmodel: oneDNN on CPU; CUDA, or TensorRT with
trt=, on GPU), `onnxruntime` and `openvino` (both on DIR/model.onnx). "auto" on CPU is the fastest here of
the installed backends that run the precision and whose model file DIR holds, by a batch-1 timing at first use
cached per CPU (model name and flags), model (file digest), precision and threads in ~/.cache/t2tvit/
auto_backend.json (measured_auto_backend); the documented order AUTO_ORDER where only one candidate remains. bf16 needs a CPU with AVX512_BF16 or AMX (read from
/proc/cpuinfo, never assumed) and runs on paddle (oneDNN) and openvino; ONNX Runtime computes in fp32 on x86.
int8 runs the post-training quantised models of t2tvit/quantize.py (export_model.py --int8) on onnxruntime and
openvino, on CPUs with at least AVX2 (VNNI makes it faster; without it the int8 kernels use AVX2's u8 x s8
multiply-add).

export() writes those files from a dynamic model; tools/export_model.py checks each against the dynamic
model (check_export) before it keeps any.
"""
import hashlib
import importlib.util
import inspect
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import yaml

from .cpu_env import usable_cores
from .atomic import TEMP_MARK
from .errors import StorageError, UserError
from .quantize import INT8_FILES, INT8_MODEL
from .runtime import keep_freed_memory
from .sizes import image_hw

PREFIX = "inference"
MODEL_FILES = (PREFIX + ".json", PREFIX + ".pdmodel")  # Paddle 3.x (PIR) writes .json, 2.6 .pdmodel
PARAMS_FILE = PREFIX + ".pdiparams"
META_FILE = PREFIX + ".yml"  # what the graph takes: model name, input name, img_size, num_classes
ONNX_FILE = "model.onnx"
# Export formats and the files each one writes (with META_FILE, which every format needs).
FORMATS = {"paddle": MODEL_FILES + (PARAMS_FILE,), "onnx": (ONNX_FILE,), "int8": INT8_FILES}
BACKENDS = ("paddle", "onnxruntime", "openvino")  # also the names of their Python packages
BACKEND_FORMAT = {"paddle": "paddle", "onnxruntime": "onnx", "openvino": "onnx"}
# backend="auto" without a timing (on GPU, or one candidate): the first of these that is installed and whose
# model file is there; ties of the timing are broken in this order too. Measured on a 2-core
# AMD EPYC (cpu family 26: Zen 5), T2T-ViT-7, 224 px, 2 threads, fp32, images/s in two interleaved rounds:
# batch 32: openvino 99-109, paddle 99-104, onnxruntime 81-84; batch 1: openvino 92-96, onnxruntime 74-75,
# paddle 54. OpenVINO is the fastest at both; Paddle Inference is next at batch 32 and needs no model.onnx.
AUTO_ORDER = ("openvino", "paddle", "onnxruntime")
PRECISIONS = ("fp32", "bf16", "int8")
INT8_BACKENDS = tuple(INT8_MODEL)
# Paddle's own int8 needs paddleslim's post-training quantisation, whose latest release (2.6.0, January 2024)
# predates Paddle 3 and its PIR programs; it is not pinned for Paddle 2.6 alone: int8 is quantised once, from
# model.onnx, for both Paddle versions.
PADDLE_INT8_MISSING = "Paddle Inference has no int8 path here (paddleslim 2.6.0 predates Paddle 3)"
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo names of AVX512_BF16 and AMX-BF16
BF16_BACKENDS = ("paddle", "openvino")
# Fuses attention into one oneDNN kernel compiled for AVX-512; on AVX2-only CPUs it dies with SIGILL.
AVX512_ONLY_PASSES = ("self_attention_fuse_pass",)


def cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_has_bf16():
    return any(flag in cpu_flags() for flag in BF16_CPU_FLAGS)


def _check_backend(backend):
    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}; use one of auto, {', '.join(BACKENDS)}")


def available_backends():
    """The deployment backends installed here, in BACKENDS order."""
    return [b for b in BACKENDS if importlib.util.find_spec(b) is not None]


def supported_precisions(backend):
    """Precisions `backend` runs at on this CPU: fp32, plus bf16 where both the backend and the CPU have it."""
    _check_backend(backend)
    return [p for p in PRECISIONS if precision_problem(backend, p) is None]


def precision_problem(backend, precision, device="cpu"):
    """Why `backend` cannot run at `precision` here, or None if it can."""
    if precision not in PRECISIONS:
        return f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}"
    if precision == "fp32":
        return None
    if device != "cpu":
        return f"{precision} is a CPU path here; on GPU use the paddle backend with trt='fp16' (--trt fp16)"
    if precision == "int8":
        return int8_problem(backend)
    if backend not in BF16_BACKENDS:
        return (f"{backend} has no {precision} on x86 CPUs (its CPU kernels compute in fp32); "
                f"use --backend {' or '.join(BF16_BACKENDS)} for {precision}")
    if not cpu_has_bf16():
        return "bf16 needs a CPU with AVX512_BF16 or AMX; this CPU has neither"
    if backend == "paddle" and paddle_major() == 2:
        return ("Paddle Inference 2.6's bf16 passes break this model (elementwise_mul fails at run time); "
                "use Paddle 3.x, or --backend openvino for bf16")
    return None


def int8_problem(backend):
    """Why `backend` cannot run int8 on this CPU, or None."""
    if backend not in INT8_BACKENDS:
        why = PADDLE_INT8_MISSING if backend == "paddle" else f"{backend} has no int8 model"
        return f"{why}; use --backend {' or '.join(INT8_BACKENDS)} for int8"
    if "avx2" not in cpu_flags():
        return "int8 needs a CPU with AVX2 (its u8 x s8 kernels); this CPU has none"
    return None


def int8_file(model_dir, backend):
    """Path of `backend`'s int8 model in model_dir (written by tools/export_model.py --int8)."""
    read_meta(model_dir)
    path = os.path.join(model_dir, INT8_MODEL[backend])
    if not os.path.isfile(path):
        raise UserError(f"{model_dir} holds no int8 model for {backend} ({INT8_MODEL[backend]}); write it with "
                        f"tools/export_model.py --int8 --calib IMAGES")
    return path


def paddle_major():
    import paddle

    return int(paddle.__version__.split(".")[0])


def read_meta(model_dir):
    """The exported model's META_FILE: {model, input, img_size, num_classes}."""
    if not os.path.isdir(model_dir):
        raise UserError(f"inference model directory not found: {model_dir}")
    meta = os.path.join(model_dir, META_FILE)
    if not os.path.isfile(meta):
        raise UserError(f"{model_dir} holds no exported model ({META_FILE} is missing); write one with "
                        f"tools/export_model.py")
    with open(meta) as f:
        return yaml.safe_load(f)


def model_files(model_dir):
    """(model file, params file, meta dict) of the Paddle Inference model in model_dir."""
    meta = read_meta(model_dir)
    params = os.path.join(model_dir, PARAMS_FILE)
    for name in MODEL_FILES:
        path = os.path.join(model_dir, name)
        if os.path.isfile(path) and os.path.isfile(params):
            return path, params, meta
    raise UserError(f"{model_dir} holds no Paddle Inference model ({' or '.join(MODEL_FILES)} with "
                    f"{PARAMS_FILE}); export one with tools/export_model.py --format paddle (or all)")


def onnx_file(model_dir):
    """(path of model.onnx, meta dict) of the ONNX model in model_dir."""
    meta = read_meta(model_dir)
    path = os.path.join(model_dir, ONNX_FILE)
    if not os.path.isfile(path):
        raise UserError(f"{model_dir} holds no {ONNX_FILE}; export one with tools/export_model.py --format onnx "
                        f"(or all)")
    return path, meta


def has_format(model_dir, fmt):
    return any(os.path.isfile(os.path.join(model_dir, name)) for name in FORMATS[fmt])


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


def export_digest(model_dir):
    """A hash of the exported model files in model_dir (a new export is a new model to time)."""
    digest = hashlib.sha256()
    for name in sorted(sum(FORMATS.values(), (META_FILE,))):
        path = os.path.join(model_dir, name)
        if os.path.isfile(path):
            digest.update(name.encode())
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()[:16]


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
    engine = create_predictor(model_dir, backend, precision, threads)
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


def create_predictor(model_dir, backend="auto", precision="fp32", threads=None, device="cpu"):
    """A callable mapping [N, 3, S, S] float32 images to [N, num_classes] logits with the exported model in
    model_dir, on `backend` (auto: fastest fp32 one installed) at `precision` with `threads` CPU threads
    (default: every core this process may use)."""
    why = None
    if backend == "auto" and device == "cpu":
        backend, why = measured_auto_backend(model_dir, precision, threads)
    elif backend == "auto":
        backend, why = auto_backend(model_dir, device, precision), "the GPU backend"
    _check_backend(backend)
    if backend not in available_backends():
        raise UserError(f"backend {backend} is not installed: pip install -r requirements-deploy.txt")
    problem = precision_problem(backend, precision, device)
    if problem:
        raise UserError(problem)
    if backend == "paddle":
        engine = Predictor(model_dir, device, threads, precision=precision)
    elif backend == "onnxruntime":
        engine = OnnxRuntimePredictor(model_dir, threads, device, precision)
    elif device != "cpu":
        raise UserError("the openvino backend runs on CPU here; use --backend paddle or onnxruntime on GPU")
    else:
        engine = OpenVinoPredictor(model_dir, threads, precision)
    engine.auto_reason = why
    return engine


class Engine:
    """What every backend shares: the exported input size, and `engine(images) -> logits`."""

    backend = precision = None
    auto_reason = None  # with backend="auto": why this backend was picked

    def __init__(self, meta):
        self.img_size = image_hw(meta["img_size"])  # (H, W); older exports wrote one integer
        self.num_classes = int(meta["num_classes"])

    def check_img_size(self, img_size):
        if self.img_size != image_hw(img_size):
            h, w = self.img_size
            size = h if h == w else f"{h}x{w}"
            raise UserError(f"the exported model takes {size} px images but the config says "
                            f"Global.img_size={img_size}: pass the config it was exported with")

    def __call__(self, images):
        images = np.ascontiguousarray(images, dtype=np.float32)
        if images.ndim != 4 or images.shape[1:] != (3, *self.img_size):
            raise UserError(f"the exported model takes [N, 3, {', '.join(map(str, self.img_size))}] images, "
                            f"got {list(images.shape)}")
        return self.run(images)

    def run(self, images):
        raise NotImplementedError


def reuse_memory(config, model_file):
    """Let intermediate tensors share memory (a third of the peak on CPU); the pass exists for Paddle 2.6's
    program format only: Paddle 3.3 fails to create the predictor with it on a PIR (.json) model."""
    if model_file.endswith(".pdmodel"):
        config.enable_memory_optim()


def cpu_config(model_file, params_file, threads=None, kernels="onednn", precision="fp32"):
    """A paddle.inference.Config running on CPU with oneDNN ('onednn', fp32 or bf16) or Paddle's own kernels
    ('paddle', fp32)."""
    import paddle.inference as pi

    keep_freed_memory()
    # Config(model_file, params_file): Paddle 2.6 misreads a single path prefix.
    config = pi.Config(model_file, params_file)
    config.disable_gpu()
    config.set_cpu_math_library_num_threads(threads or usable_cores())
    if kernels == "onednn":
        config.enable_mkldnn()
        config.set_mkldnn_cache_capacity(16)  # oneDNN caches kernels per input shape
        if "avx512f" not in cpu_flags():
            for name in AVX512_ONLY_PASSES:
                config.delete_pass(name)
        if precision == "bf16":
            config.enable_mkldnn_bfloat16()
    elif kernels == "paddle" and precision == "fp32":
        config.disable_mkldnn()
    else:
        raise UserError(f"Paddle Inference CPU kernels {kernels!r} at {precision}: use onednn (fp32 or bf16) "
                        f"or paddle (fp32)")
    reuse_memory(config, model_file)
    config.disable_glog_info()
    return config


def gpu_config(model_file, params_file, trt=None, trt_input=None, max_batch=64, gpu_id=0):
    """A paddle.inference.Config on GPU `gpu_id`; trt 'fp32' or 'fp16' runs it through TensorRT, for inputs
    trt_input = (name, shape without the batch) and batches up to max_batch."""
    import paddle.inference as pi

    config = pi.Config(model_file, params_file)
    config.enable_use_gpu(256, gpu_id)
    reuse_memory(config, model_file)
    if trt:
        if trt not in ("fp32", "fp16"):
            raise UserError(f"--trt {trt!r}: use fp32 or fp16")
        mode = pi.PrecisionType.Half if trt == "fp16" else pi.PrecisionType.Float32
        config.enable_tensorrt_engine(workspace_size=1 << 30, max_batch_size=max_batch, min_subgraph_size=3,
                                      precision_mode=mode, use_static=False, use_calib_mode=False)
        name, shape = trt_input
        config.set_trt_dynamic_shape_info({name: [1] + shape}, {name: [max_batch] + shape},
                                          {name: [max_batch] + shape})
    config.disable_glog_info()
    return config


class Predictor(Engine):
    """The `paddle` backend: Paddle Inference on the exported Paddle program.

    device: 'cpu' or 'gpu'. CPU: oneDNN kernels ('paddle' for Paddle's own, fp32 only) at `precision`
    (fp32 or bf16), `threads` math threads. GPU: trt None, 'fp32' or 'fp16' (TensorRT, engines built for
    batches up to max_batch).
    """

    backend = "paddle"

    def __init__(self, model_dir, device="cpu", threads=None, kernels="onednn", trt=None, max_batch=64,
                 gpu_id=0, precision="fp32"):
        import paddle.inference as pi

        model_file, params_file, meta = model_files(model_dir)
        super().__init__(meta)
        self.precision = precision
        if device == "gpu":
            trt_input = (meta["input"], [3, *self.img_size])
            config = gpu_config(model_file, params_file, trt, trt_input, max_batch, gpu_id)
        else:
            config = cpu_config(model_file, params_file, threads, kernels, precision)
        self.predictor = pi.create_predictor(config)
        self.input = self.predictor.get_input_handle(self.predictor.get_input_names()[0])
        self.output = self.predictor.get_output_handle(self.predictor.get_output_names()[0])

    def run(self, images):
        self.input.reshape(list(images.shape))
        self.input.copy_from_cpu(images)
        self.predictor.run()
        return self.output.copy_to_cpu()


class OnnxRuntimePredictor(Engine):
    """The `onnxruntime` backend: ONNX Runtime on model.onnx, fp32 (CPU, or CUDA where this build has it), or
    on model_int8.onnx at int8."""

    backend = "onnxruntime"

    def __init__(self, model_dir, threads=None, device="cpu", precision="fp32"):
        import onnxruntime as ort

        path, meta = onnx_file(model_dir)
        super().__init__(meta)
        self.precision = precision
        if precision == "int8":
            path = int8_file(model_dir, self.backend)
        providers = ["CPUExecutionProvider"]
        if device != "cpu":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise UserError("this onnxruntime has no CUDA; install onnxruntime-gpu or use --backend paddle")
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or usable_cores()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only
        self.session = ort.InferenceSession(path, options, providers=providers)
        self.input_name = self.session.get_inputs()[0].name

    def run(self, images):
        return self.session.run(None, {self.input_name: images})[0]


class OpenVinoPredictor(Engine):
    """The `openvino` backend: OpenVINO on model.onnx, on CPU, fp32 or bf16; int8 on NNCF's model_int8.xml.

    OpenVINO runs bf16 by default on CPUs that have it; fp32 is asked for explicitly (also at int8: the
    layers left in float then compute in fp32)."""

    backend = "openvino"

    def __init__(self, model_dir, threads=None, precision="fp32", profile=False):
        import openvino as ov

        path, meta = onnx_file(model_dir)
        super().__init__(meta)
        self.precision = precision
        if precision == "int8":
            path = int8_file(model_dir, self.backend)
        core = ov.Core()
        config = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
                  "INFERENCE_NUM_THREADS": threads or usable_cores(),
                  "PERFORMANCE_HINT": "LATENCY",  # one stream: every thread on the one request
                  "PERF_COUNT": profile}
        self.compiled = core.compile_model(core.read_model(path), "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.output = self.compiled.output(0)

    def run(self, images):
        return self.request.infer({0: images})[self.output].copy()

    def time_by_layer_type(self):
        """{(OpenVINO layer type, kernel): ms} of the last run (PERF_COUNT on): the plugin's per-node counters,
        summed by the type of the node it executed (FullyConnected = the Linear GEMMs, MatMul = the
        activation x activation products, Subgraph = fused element-wise chains, MVN = LayerNorm, ...)."""
        times = {}
        for node in self.request.get_profiling_info():
            if node.status.name == "EXECUTED":
                key = (node.node_type, node.exec_type)
                times[key] = times.get(key, 0.0) + node.real_time.total_seconds() * 1e3
        return times


def openvino_profile(model_dir, images, precision="fp32", threads=None, runs=10):
    """[(layer type, kernel, ms per run, share)] of OpenVINO running `images` (one batch) through the export,
    the median over `runs` runs after one warm-up, largest first."""
    predictor = OpenVinoPredictor(model_dir, threads, precision, profile=True)
    predictor(images)
    samples = []
    for _ in range(runs):
        predictor(images)
        samples.append(predictor.time_by_layer_type())
    median = {k: float(np.median([s.get(k, 0.0) for s in samples])) for k in samples[0]}
    total = sum(median.values())
    return sorted(((kind, kernel, ms, ms / total) for (kind, kernel), ms in median.items()), key=lambda r: -r[2])


# ---------------------------------------------------------------------------------------------- export

INPUT_NAME = "x"
CHECK_TOL = 1e-4
ONNX_OPSET = 17  # LayerNormalization is one op from opset 17 on
FORMAT_CHOICES = ("paddle", "onnx", "all")


def onnx_export_installed():
    return all(importlib.util.find_spec(m) is not None for m in ("paddle2onnx", "onnxruntime"))


def parse_formats(choice=None):
    """--format paddle | onnx | all -> the formats to write; None: all if ONNX export is installed."""
    if choice is None:
        return ("paddle", "onnx") if onnx_export_installed() else ("paddle",)
    if choice not in FORMAT_CHOICES:
        raise UserError(f"unknown export format {choice!r}; use one of {', '.join(FORMAT_CHOICES)}")
    if choice != "paddle" and not onnx_export_installed():
        raise UserError(f"--format {choice} needs paddle2onnx and onnxruntime (to convert and to check the "
                        f"result): pip install -r requirements-deploy.txt")
    return ("paddle", "onnx") if choice == "all" else (choice,)


def export(model, img_size, out_dir, formats=None):
    """Trace `model` (in eval mode) for [N, 3, H, W] inputs (img_size S or (H, W)) and save it under out_dir: the
    Paddle program always (it is also what model.onnx is converted from), model.onnx if "onnx" is in
    `formats` (default: parse_formats())."""
    import paddle

    h, w = image_hw(img_size)
    spec = [paddle.static.InputSpec([None, 3, h, w], "float32", INPUT_NAME)]
    # full_graph: one whole static program (Paddle 3.x would otherwise trace through SOT with fallbacks).
    static = paddle.jit.to_static(model, input_spec=spec, full_graph=True)
    paddle.jit.save(static, os.path.join(out_dir, PREFIX))
    meta = {"model": model.arch_name, "input": INPUT_NAME, "img_size": h if h == w else [h, w],
            "num_classes": model.num_classes}
    with open(os.path.join(out_dir, META_FILE), "w") as f:
        yaml.safe_dump(meta, f, sort_keys=False)
    if "onnx" in (formats or parse_formats()):
        to_onnx(out_dir)


def to_onnx(model_dir):
    """Convert the Paddle program in model_dir to model_dir/model.onnx (paddle2onnx, dynamic batch axis)."""
    import paddle2onnx

    model_file, params_file, _ = model_files(model_dir)
    out = os.path.join(model_dir, ONNX_FILE)
    options = {"save_file": out, "opset_version": ONNX_OPSET, "enable_onnx_checker": True, "verbose": False}
    # paddle2onnx 2.x (Paddle 3) folds constants with Polygraphy by default, which pip-installs missing modules
    # at run time: "none" turns it off (ONNX Runtime and OpenVINO fold constants when they load the model).
    # paddle2onnx 1.x (Paddle 2.6) has no such step and no such option.
    if "optimize_tool" in inspect.signature(paddle2onnx.export).parameters:
        options["optimize_tool"] = "none"
    try:
        paddle2onnx.export(model_file, params_file, **options)
    except Exception as e:  # it logs the cause and then fails on its own unset result
        raise UserError(f"paddle2onnx could not convert the exported program (its log above says why): {e}")
    if not os.path.isfile(out):
        raise UserError("paddle2onnx wrote no ONNX model (its log above says why)")


# The runtime that checks each format: Paddle Inference for the Paddle program, ONNX Runtime for model.onnx.
CHECKERS = {"paddle": Predictor, "onnx": OnnxRuntimePredictor}
RUNTIME_NAMES = {"paddle": "Paddle Inference", "onnx": "ONNX Runtime on model.onnx"}


def check_export(model, model_dir, img_size, formats, batch=2):
    """{format: max |logits difference| between its runtime and `model`} on a random batch."""
    import paddle

    x = np.random.RandomState(0).standard_normal((batch, 3, *image_hw(img_size))).astype("float32")
    with paddle.no_grad():
        expected = model(paddle.to_tensor(x)).numpy()
    return {fmt: float(np.abs(CHECKERS[fmt](model_dir, threads=1)(x) - expected).max()) for fmt in formats}


def replace_files(src_dir, dst_dir, formats):
    """Move META_FILE and the files of `formats` from src_dir into dst_dir, first removing every model file
    of a previous export from dst_dir (so no file there can belong to other weights).

    META_FILE is the export's commit record: removed first and moved in last, so that at every moment (a crash
    included) dst_dir holds a whole export, the previous or the new one, or none that any reader accepts."""
    os.makedirs(dst_dir, exist_ok=True)
    for name in (META_FILE,) + sum(FORMATS.values(), ()):
        if os.path.lexists(os.path.join(dst_dir, name)):
            os.remove(os.path.join(dst_dir, name))
    for name in sum((FORMATS[fmt] for fmt in formats), ()) + (META_FILE,):
        if os.path.exists(os.path.join(src_dir, name)):
            os.replace(os.path.join(src_dir, name), os.path.join(dst_dir, name))


def export_checked(model, img_size, out_dir, formats, calib=None):
    """export() into a fresh temporary folder beside out_dir (mkdtemp: private, unpredictable), check every
    format against `model`, quantise int8 models calibrated on the images `calib` (if given; t2tvit/quantize.py),
    and only then replace out_dir's model files. Returns {format: max |logits difference|}; raises UserError,
    writing nothing, when a format differs by more than CHECK_TOL, and StorageError (nothing partial left)
    when a write fails."""
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UserError(f"--out {out_dir} exists and is not a directory")
    tmp = None
    try:
        os.makedirs(os.path.dirname(out_dir), exist_ok=True)
        tmp = tempfile.mkdtemp(dir=os.path.dirname(out_dir), prefix=os.path.basename(out_dir) + TEMP_MARK)
        export(model, img_size, tmp, formats)
        diffs = check_export(model, tmp, img_size, formats)
        bad = {fmt: d for fmt, d in diffs.items() if not d <= CHECK_TOL}
        if bad:
            raise UserError("nothing written: the exported model's logits differ from the dynamic model's by "
                            + ", ".join(f"{d:.3g} ({RUNTIME_NAMES[fmt]})" for fmt, d in bad.items())
                            + f" > {CHECK_TOL}: a converter or runtime fault on this version and CPU")
        if calib is not None:
            from .quantize import quantize_export
            quantize_export(tmp, calib)
            formats = (*formats, "int8")
        replace_files(tmp, out_dir, formats)
    except OSError as e:
        raise StorageError(e.filename or out_dir, e) from None
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    return diffs
