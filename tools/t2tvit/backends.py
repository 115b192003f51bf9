"""The deployment backends: an exported model (export_files.py) run by Paddle Inference, ONNX Runtime or
OpenVINO, each a callable `engine(images) -> logits`.

    engine = open_backend(DIR, "openvino", precision="fp32", threads=None, device="cpu")
    available_backends()                # installed of: paddle, onnxruntime, openvino
    supported_precisions(backend)       # fp32, bf16 where the backend and this CPU have it, int8 (AVX2)

`paddle` runs DIR/inference.json or .pdmodel (oneDNN on CPU; CUDA, or TensorRT with trt=, on GPU),
`onnxruntime` and `openvino` run DIR/model.onnx. bf16 needs a CPU with AVX512_BF16 or AMX (read from
/proc/cpuinfo, never assumed) and runs on paddle (oneDNN) and openvino; ONNX Runtime computes in fp32 on x86.
int8 runs the post-training quantised models of t2tvit/quantize.py (export_model.py --int8) on onnxruntime and
openvino, on CPUs with at least AVX2 (VNNI makes it faster; without it the int8 kernels use AVX2's u8 x s8
multiply-add). Choosing a backend (backend="auto") is t2tvit/deploy.py's job.
"""
import importlib.util

import numpy as np

from . import cpu_env  # its cpu_flags() is read through the module, so a test can stand in another CPU
from .cpu_env import usable_cores
from .errors import UserError
from .export_files import INT8_MODEL, META_FILE, int8_file, model_files, onnx_file, paddle_major
from .runtime import keep_freed_memory
from .sizes import image_hw

BACKENDS = ("paddle", "onnxruntime", "openvino")  # also the names of their Python packages
BACKEND_FORMAT = {"paddle": "paddle", "onnxruntime": "onnx", "openvino": "onnx"}
PRECISIONS = ("fp32", "bf16", "int8")
INT8_BACKENDS = tuple(INT8_MODEL)
# Paddle's own int8 needs paddleslim's post-training quantisation, whose latest release (2.6.0, January 2024)
# predates Paddle 3 and its PIR programs; it is not pinned for Paddle 2.6 alone: int8 is quantised once, from
# model.onnx, for both Paddle versions.
PADDLE_INT8_MISSING = "Paddle Inference has no int8 path here (paddleslim 2.6.0 predates Paddle 3)"
BF16_BACKENDS = ("paddle", "openvino")
# Fuses attention into one oneDNN kernel compiled for AVX-512; on AVX2-only CPUs it dies with SIGILL.
AVX512_ONLY_PASSES = ("self_attention_fuse_pass",)


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
    if not cpu_env.cpu_has_bf16():
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
    if "avx2" not in cpu_env.cpu_flags():
        return "int8 needs a CPU with AVX2 (its u8 x s8 kernels); this CPU has none"
    return None


def open_backend(model_dir, backend, precision="fp32", threads=None, device="cpu", gpu_id=0):
    """The engine of `backend` (a name, not "auto") on the export in model_dir, at `precision` with `threads`
    CPU threads (default: every core this process may use), or on GPU `gpu_id`."""
    _check_backend(backend)
    if backend not in available_backends():
        raise UserError(f"backend {backend} is not installed: pip install -r requirements-deploy.txt")
    problem = precision_problem(backend, precision, device)
    if problem:
        raise UserError(problem)
    if backend == "paddle":
        return Predictor(model_dir, device, threads, precision=precision, gpu_id=gpu_id)
    if backend == "onnxruntime":
        return OnnxRuntimePredictor(model_dir, threads, device, precision, gpu_id)
    if device != "cpu":
        raise UserError("the openvino backend runs on CPU here; use --backend paddle or onnxruntime on GPU")
    return OpenVinoPredictor(model_dir, threads, precision)


# The runtime settings of every path that runs an export (predict.py, t2tvit.deploy.create_predictor, the
# benchmark's engine rows, its plain sessions and its direct route), decided here once: a speed measured on
# one path is the speed of the others.
def openvino_properties(precision="fp32", threads=None, profile=False):
    """OpenVINO's CPU properties at `precision` with `threads` threads (default: every core this process may use).

    OpenVINO computes in bf16 by default on CPUs that have it: the precision is asked for explicitly, f32 also
    at int8 (the layers left in float then compute in fp32). LATENCY makes one stream with every thread on it,
    what one synchronous request at any batch size can use (THROUGHPUT splits the threads over streams, each
    request running on one)."""
    return {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
            "INFERENCE_NUM_THREADS": threads or usable_cores(), "PERFORMANCE_HINT": "LATENCY", "PERF_COUNT": profile}


_OPENVINO = {}


def openvino_core():
    """The process's one OpenVINO Core, made on first use and never released.

    Each Core loads a CPU plugin of its own, which gives the calling thread a signal stack of its own and, when
    unloaded, puts back the one it found. Two Cores released in the order they were made leave the thread on the
    first plugin's freed stack: the next Python signal handler (a Ctrl-C, a SIGTERM, the SIGCHLD of a finished
    subprocess once Paddle's DataLoader has set its handler) then kills the process with SIGSEGV. One Core that
    lives as long as the process keeps the order (OpenVINO's documentation also asks for one Core per
    application)."""
    if "core" not in _OPENVINO:
        import openvino as ov

        _OPENVINO["core"] = ov.Core()
    return _OPENVINO["core"]


def compile_openvino(model, precision="fp32", threads=None, profile=False):
    """`model` (a file OpenVINO reads, or an openvino.Model) compiled for the CPU with openvino_properties()."""
    return openvino_core().compile_model(model, "CPU", openvino_properties(precision, threads, profile))


def onnxruntime_session(path, threads=None, providers=("CPUExecutionProvider",)):
    """An ONNX Runtime session on `path`: `threads` intra-op threads (default: every core this process may use),
    one inter-op thread, every graph optimisation, errors only in its log."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or usable_cores()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only
    return ort.InferenceSession(path, options, providers=list(providers))


class Engine:
    """What every backend shares: the exported input size, and `engine(images) -> logits`."""

    backend = precision = None
    auto_reason = None  # with backend="auto": why this backend was picked

    def __init__(self, meta, model_dir):
        self.img_size = image_hw(meta["img_size"])  # (H, W); older exports wrote one integer
        self.num_classes = int(meta["num_classes"])
        self.model_dir = model_dir
        self.ran = False

    def __call__(self, images):
        images = np.ascontiguousarray(images, dtype=np.float32)
        if images.ndim != 4 or images.shape[1:] != (3, *self.img_size):
            raise UserError(f"the exported model takes [N, 3, {', '.join(map(str, self.img_size))}] images, "
                            f"got {list(images.shape)}")
        try:
            logits = self.run(images)
        except Exception as e:
            if self.ran:
                raise
            # The size and class count come from META_FILE, which a stranger's folder may pair with another
            # model file: the first batch shows whether they fit (each backend fails in its own way).
            said = " ".join(str(e).split())
            raise UserError(f"{self.model_dir}: its model file does not run on {self.size_text} images, the size "
                            f"its {META_FILE} gives ({self.backend}: {type(e).__name__}: {said[:200]}); "
                            f"{self.not_own}") from None
        self.ran = True
        if logits.shape != (len(images), self.num_classes):  # Paddle Inference may return [0, C] for another size
            raise UserError(f"{self.model_dir}: its model file gives {list(logits.shape)} logits for {len(images)} "
                            f"image(s) of {self.size_text}, not the [{len(images)}, {self.num_classes}] that its "
                            f"{META_FILE} says ({self.size_text} images, {self.num_classes} classes); "
                            f"{self.not_own}")
        return logits

    not_own = f"is {META_FILE} this model's own? Export it again"

    @property
    def size_text(self):
        return f"{self.img_size[0]} x {self.img_size[1]}"

    def check_input(self, shape):
        """UserError unless `shape`, the model file's own input shape (None or a name where dynamic), takes the
        images META_FILE describes: OpenVINO fed another size may return garbage and corrupt its memory (a
        segfault at a later call), so it is never asked."""
        dims = [d if isinstance(d, int) and d > 0 else None for d in shape]
        if len(dims) != 4 or any(d not in (None, want) for d, want in zip(dims[1:], (3, *self.img_size))):
            shown = ", ".join("N" if d is None else str(d) for d in dims)
            raise UserError(f"{self.model_dir}: its model file takes [{shown}] inputs, not the {self.size_text} "
                            f"images that its {META_FILE} gives; {self.not_own}")

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
        if "avx512f" not in cpu_env.cpu_flags():
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


def trt_problem(trt, arch):
    """Why TensorRT cannot run the exported model `arch` (meta["model"]) at `trt`, or None.

    TensorRT's fp16 mode would run the Performer's attention (its exp and the division by its normaliser) in
    float16, where the official `+ 1e-8` is 0 and a flat image gives 0 / 0 (the official repo's NaN issues #65
    and #69); the training and export keep it in float32, and Paddle Inference cannot be told to, reliably, for
    those ops only. So fp16 TensorRT is for the transformer T2T layers (t2t_vit_t_*) only."""
    if trt not in ("fp32", "fp16"):
        return f"--trt {trt!r}: use fp32 or fp16"
    from .t2t import VARIANTS
    if trt == "fp16" and VARIANTS.get(arch, ("performer",))[0] == "performer":
        return (f"--trt fp16 would run {arch}'s Performer (its exp and normaliser) in float16, where its `+ 1e-8` "
                "is 0 and flat images give NaN (the official repo's issues #65, #69); use --trt fp32, or fp16 with "
                "a t2t_vit_t_* model")
    return None


def gpu_config(model_file, params_file, trt=None, trt_input=None, max_batch=64, gpu_id=0, arch=None):
    """A paddle.inference.Config on GPU `gpu_id`; trt 'fp32' or 'fp16' runs it through TensorRT, for inputs
    trt_input = (name, shape without the batch) and batches up to max_batch (arch: the exported model's name)."""
    import paddle.inference as pi

    problem = trt_problem(trt, arch) if trt else None
    if problem:
        raise UserError(problem)
    config = pi.Config(model_file, params_file)
    config.enable_use_gpu(256, gpu_id)
    reuse_memory(config, model_file)
    if trt:
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
        super().__init__(meta, model_dir)
        self.precision = precision
        if device == "gpu":
            trt_input = (meta["input"], [3, *self.img_size])
            config = gpu_config(model_file, params_file, trt, trt_input, max_batch, gpu_id, meta.get("model"))
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

    def __init__(self, model_dir, threads=None, device="cpu", precision="fp32", gpu_id=0):
        import onnxruntime as ort

        path, meta = onnx_file(model_dir)
        super().__init__(meta, model_dir)
        self.precision = precision
        if precision == "int8":
            path = int8_file(model_dir, self.backend)
        providers = ["CPUExecutionProvider"]
        if device != "cpu":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise UserError("this onnxruntime has no CUDA; install onnxruntime-gpu or use --backend paddle")
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": gpu_id}))
        self.session = onnxruntime_session(path, threads, providers)
        self.input_name = self.session.get_inputs()[0].name
        self.check_input(self.session.get_inputs()[0].shape)

    def run(self, images):
        return self.session.run(None, {self.input_name: images})[0]


class OpenVinoPredictor(Engine):
    """The `openvino` backend: OpenVINO on model.onnx, on CPU, fp32 or bf16; int8 on NNCF's model_int8.xml,
    compiled with openvino_properties()."""

    backend = "openvino"

    def __init__(self, model_dir, threads=None, precision="fp32", profile=False):
        path, meta = onnx_file(model_dir)
        super().__init__(meta, model_dir)
        self.precision = precision
        if precision == "int8":
            path = int8_file(model_dir, self.backend)
        self.compiled = compile_openvino(path, precision, threads, profile)
        self.request = self.compiled.create_infer_request()
        self.output = self.compiled.output(0)
        self.check_input([d.get_length() if d.is_static else None
                          for d in self.compiled.input(0).get_partial_shape()])

    def run(self, images):
        # The batch is copied into the request (19 MB at batch 32 of 224 px, against ~650 ms of inference), so
        # that the request keeps no tensor over the caller's array after the call (with share_inputs it does).
        # The logits are the caller's own copy.
        return self.request.infer({0: images})[self.output]

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
