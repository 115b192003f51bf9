"""Run an exported T2T-ViT (tools/export_model.py) on a deployment backend; the API the other tools use.

    predictor = create_predictor(DIR, backend="auto", precision="fp32", threads=None, device="cpu")
    logits = predictor(images)          # [N, 3, S, S] float32, normalised -> [N, num_classes]
    available_backends()                # installed of: paddle, onnxruntime, openvino
    supported_precisions(backend)       # fp32, and bf16 where the backend and this CPU have it

Backends: `paddle` (Paddle Inference on DIR/inference.json or .pdmodel: oneDNN on CPU; CUDA, or TensorRT with
trt=, on GPU), `onnxruntime` and `openvino` (both on DIR/model.onnx). "auto" is the fastest fp32 backend
installed whose model file DIR holds (AUTO_ORDER). bf16 needs a CPU with AVX512_BF16 or AMX (read from
/proc/cpuinfo, never assumed) and runs on paddle (oneDNN) and openvino; ONNX Runtime computes in fp32 on x86.

`python tools/infer.py IMAGE ... --inference-dir DIR` is an alias of `tools/predict.py` with an exported model
(kept until the commands are folded together); both take the same flags.
"""
import cpu_env  # noqa: F401  (first: sets CPU threads before Paddle loads)
import importlib.util
import os
import sys

import numpy as np
import yaml

from errors import UserError
from runtime import keep_freed_memory

PREFIX = "inference"
MODEL_FILES = (PREFIX + ".json", PREFIX + ".pdmodel")  # Paddle 3.x (PIR) writes .json, 2.6 .pdmodel
PARAMS_FILE = PREFIX + ".pdiparams"
META_FILE = PREFIX + ".yml"  # what the graph takes: model name, input name, img_size, num_classes
ONNX_FILE = "model.onnx"
# Export formats and the files each one writes (with META_FILE, which every format needs).
FORMATS = {"paddle": MODEL_FILES + (PARAMS_FILE,), "onnx": (ONNX_FILE,)}
BACKENDS = ("paddle", "onnxruntime", "openvino")  # also the names of their Python packages
BACKEND_FORMAT = {"paddle": "paddle", "onnxruntime": "onnx", "openvino": "onnx"}
# backend="auto": the first of these that is installed and whose model file is there. Measured on a 2-core
# AMD EPYC (cpu family 26: Zen 5), T2T-ViT-7, 224 px, 2 threads, fp32, images/s in two interleaved rounds:
# batch 32: openvino 99-109, paddle 99-104, onnxruntime 81-84; batch 1: openvino 92-96, onnxruntime 74-75,
# paddle 54. OpenVINO is the fastest at both; Paddle Inference is next at batch 32 and needs no model.onnx.
AUTO_ORDER = ("openvino", "paddle", "onnxruntime")
PRECISIONS = ("fp32", "bf16")
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


def default_threads():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


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
    if backend not in BF16_BACKENDS:
        return (f"{backend} has no {precision} on x86 CPUs (its CPU kernels compute in fp32); "
                f"use --backend {' or '.join(BF16_BACKENDS)} for {precision}")
    if not cpu_has_bf16():
        return "bf16 needs a CPU with AVX512_BF16 or AMX; this CPU has neither"
    if backend == "paddle" and paddle_major() == 2:
        return ("Paddle Inference 2.6's bf16 passes break this model (elementwise_mul fails at run time); "
                "use Paddle 3.x, or --backend openvino for bf16")
    return None


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


def auto_backend(model_dir, device="cpu"):
    """The fastest fp32 backend (AUTO_ORDER) that is installed and whose model file model_dir holds."""
    installed = available_backends()
    order = ("paddle",) if device != "cpu" else AUTO_ORDER
    for backend in order:
        if backend in installed and has_format(model_dir, BACKEND_FORMAT[backend]):
            return backend
    read_meta(model_dir)  # say what is missing in the directory itself, if anything
    raise UserError(f"no installed backend ({', '.join(installed) or 'none'}) can run the model in {model_dir} "
                    f"on {device}: install one (pip install -r requirements-deploy.txt) or export its format")


def create_predictor(model_dir, backend="auto", precision="fp32", threads=None, device="cpu"):
    """A callable mapping [N, 3, S, S] float32 images to [N, num_classes] logits with the exported model in
    model_dir, on `backend` (auto: fastest fp32 one installed) at `precision` with `threads` CPU threads
    (default: every core this process may use)."""
    if backend == "auto":
        backend = auto_backend(model_dir, device)
    _check_backend(backend)
    if backend not in available_backends():
        raise UserError(f"backend {backend} is not installed: pip install -r requirements-deploy.txt")
    problem = precision_problem(backend, precision, device)
    if problem:
        raise UserError(problem)
    if backend == "paddle":
        return Predictor(model_dir, device, threads, precision=precision)
    if backend == "onnxruntime":
        return OnnxRuntimePredictor(model_dir, threads, device)
    if device != "cpu":
        raise UserError("the openvino backend runs on CPU here; use --backend paddle or onnxruntime on GPU")
    return OpenVinoPredictor(model_dir, threads, precision)


class Engine:
    """What every backend shares: the exported input size, and `engine(images) -> logits`."""

    backend = precision = None

    def __init__(self, meta):
        self.img_size = int(meta["img_size"])
        self.num_classes = int(meta["num_classes"])

    def check_img_size(self, img_size):
        if self.img_size != img_size:
            raise UserError(f"the exported model takes {self.img_size} px images but the config says "
                            f"Global.img_size={img_size}: pass the config it was exported with")

    def __call__(self, images):
        images = np.ascontiguousarray(images, dtype=np.float32)
        if images.ndim != 4 or images.shape[1:] != (3, self.img_size, self.img_size):
            raise UserError(f"the exported model takes [N, 3, {self.img_size}, {self.img_size}] images, "
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
    config.set_cpu_math_library_num_threads(threads or default_threads())
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
            trt_input = (meta["input"], [3, self.img_size, self.img_size])
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
    """The `onnxruntime` backend: ONNX Runtime on model.onnx, fp32 (CPU, or CUDA where this build has it)."""

    backend, precision = "onnxruntime", "fp32"

    def __init__(self, model_dir, threads=None, device="cpu"):
        import onnxruntime as ort

        path, meta = onnx_file(model_dir)
        super().__init__(meta)
        providers = ["CPUExecutionProvider"]
        if device != "cpu":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise UserError("this onnxruntime has no CUDA; install onnxruntime-gpu or use --backend paddle")
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or default_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only
        self.session = ort.InferenceSession(path, options, providers=providers)
        self.input_name = self.session.get_inputs()[0].name

    def run(self, images):
        return self.session.run(None, {self.input_name: images})[0]


class OpenVinoPredictor(Engine):
    """The `openvino` backend: OpenVINO on model.onnx, on CPU, fp32 or bf16.

    OpenVINO runs bf16 by default on CPUs that have it; fp32 is asked for explicitly."""

    backend = "openvino"

    def __init__(self, model_dir, threads=None, precision="fp32"):
        import openvino as ov

        path, meta = onnx_file(model_dir)
        super().__init__(meta)
        self.precision = precision
        core = ov.Core()
        config = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
                  "INFERENCE_NUM_THREADS": threads or default_threads(),
                  "PERFORMANCE_HINT": "LATENCY"}  # one stream: every thread on the one request
        self.compiled = core.compile_model(core.read_model(path), "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.output = self.compiled.output(0)

    def run(self, images):
        return self.request.infer({0: images})[self.output].copy()


def main(argv=None):
    import predict

    return predict.main(argv, inference_only=True)


if __name__ == "__main__":
    sys.exit(main())
