"""The machine (CPU model, flags, cores, versions, load), its GEMM rate, and the model's compute-bound limit."""
import importlib.metadata
import importlib.util
import os
import platform

import numpy as np

from t2tvit.cpu_env import usable_cores

from .settings import timed

GEMM_SIZE = 1024  # square matrices: large enough to reach the library's peak on a few cores, timed in ~10 ms


def _torch_gemms(n, threads, precisions):
    """{precision: callable running one n x n x n product in PyTorch (MKL / oneDNN, as its eval uses)}."""
    import torch
    torch.set_num_threads(threads)
    rng = np.random.RandomState(0)
    a, b = (torch.from_numpy(rng.standard_normal((n, n)).astype("float32")) for _ in range(2))
    runs = {"fp32": lambda: a @ b}
    if "bf16" in precisions:
        ha, hb = a.bfloat16(), b.bfloat16()
        runs["bf16"] = lambda: ha @ hb
    return runs


def _openvino_gemm(n, threads, precision):
    """A callable running one n x n x n product in OpenVINO's CPU plugin (the oneDNN FullyConnected kernels its
    models run on): fp32, bf16 (by the inference precision hint), or int8 (u8 activations from a FakeQuantize
    times s8 weights, which its low-precision transformations run as an integer GEMM); None when the compiled
    layer does not run in the precision asked for."""
    import openvino as ov
    import openvino.opset13 as ops

    from t2tvit.backends import openvino_core  # here, not at the top: backends loads Paddle, which the driver needs not

    rng = np.random.RandomState(0)
    x = ops.parameter([n, n], ov.Type.f32)
    w = rng.standard_normal((n, n)).astype("float32")
    if precision == "int8":
        lo, hi = ops.constant(np.float32(-4.0)), ops.constant(np.float32(4.0))
        weight = ops.multiply(ops.convert(ops.constant(np.clip(np.round(w * 32), -127, 127).astype(np.int8)),
                                          ov.Type.f32), ops.constant(np.float32(1 / 32)))
        y = ops.matmul(ops.fake_quantize(x, lo, hi, lo, hi, 256), weight, False, True)
    else:
        y = ops.matmul(x, ops.constant(w), False, True)
    compiled = openvino_core().compile_model(ov.Model([y], [x]), "CPU", {
        "INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32"})
    ran = {op.get_rt_info()["runtimePrecision"].astype(str) for op in compiled.get_runtime_model().get_ops()
           if op.get_rt_info()["layerType"].astype(str) == "FullyConnected"}
    if ran != {{"fp32": "f32", "bf16": "bf16", "int8": "u8"}[precision]}:
        return None
    request, a = compiled.create_infer_request(), rng.standard_normal((n, n)).astype("float32")
    return lambda: request.infer([a])


def gemm_rates(args):
    """{"rates": {precision: GFLOP/s}, "by": {precision: engine}}: the machine's GEMM rate, the faster of PyTorch
    and OpenVINO on one square product (2 n^3 operations) with --threads threads: fp32 always; bf16 where the
    CPU has AVX512_BF16 or AMX; int8 (OpenVINO only: torch's CPU int8 matmul is a reference kernel, 0.3 GFLOP/s
    on a Zen 3 core) where it has AVX2. Both engines count: on AMD CPUs PyTorch's fp32 matmul (MKL) was 185.6
    GFLOP/s where OpenVINO ran the whole model at 268 GFLOP/s (Zen 5), so one engine alone is no limit."""
    from t2tvit.cpu_env import cpu_has_bf16, cpu_flags
    n, repeat = GEMM_SIZE, max(args.repeat, 5)
    precisions = ["fp32"] + (["bf16"] if cpu_has_bf16() else []) + (["int8"] if "avx2" in cpu_flags() else [])
    engines = {}
    if importlib.util.find_spec("torch") is not None:
        engines["torch"] = _torch_gemms(n, args.threads, precisions)
    else:
        a = np.random.RandomState(0).standard_normal((n, n)).astype("float32")
        engines["numpy"] = {"fp32": lambda: a @ a}
    if importlib.util.find_spec("openvino") is not None:
        engines["openvino"] = {p: fn for p in precisions if (fn := _openvino_gemm(n, args.threads, p))}
    rates, by = {}, {}
    for engine, runs in engines.items():
        for precision, fn in runs.items():
            rate = round(2 * n ** 3 / float(np.median(timed(fn, 2, repeat))) / 1e9, 1)
            if rate > rates.get(precision, 0):
                rates[precision], by[precision] = rate, engine
    return {"rates": rates, "by": by}


def model_macs(model, img_size):
    """Multiply-accumulates of one image through `model`, every kind counted as fvcore counts the official model
    (t2tvit/macs.py: Linear layers, attention matmuls, Performer einsums, LayerNorm): 1.156 G for T2T-ViT-7 at
    224 px."""
    from t2tvit.macs import count_macs  # here, not at the top: the torch workers never load Paddle
    return sum(count_macs(model, img_size).values())


def compute_bound_limit(macs, rate_gflops):
    """images/s of the model's matrix products alone at rate_gflops (GFLOP/s, or GOP/s): rate / (2 x MACs)."""
    return rate_gflops * 1e9 / (2 * macs)


def compute_bound_fraction(images_per_s, macs, rate_gflops):
    """images/s as a fraction of the compute-bound limit rate / (2 x MACs)."""
    return round(images_per_s * 2 * macs / (rate_gflops * 1e9), 3)


def machine_info():
    """CPU model, vendor and flags (as /proc/cpuinfo and lscpu give them), usable cores, versions."""
    info = {"cpu_model": platform.processor() or platform.machine(), "cpu_flags": "",
            "usable_cores": usable_cores(), "python": platform.python_version()}
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.read().splitlines()
        fields = {}
        for line in lines:
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
        info.update(cpu_model=fields.get("model name", info["cpu_model"]), vendor=fields.get("vendor_id"),
                    cpu_family=fields.get("cpu family"), cpu_model_number=fields.get("model"),
                    cpu_flags=fields.get("flags", ""))
    except OSError:
        pass
    for dist in ("paddlepaddle", "paddlepaddle-gpu", "torch", "onnxruntime", "openvino"):
        try:
            info[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return info


def load_average():
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None
