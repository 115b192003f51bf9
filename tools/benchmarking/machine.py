"""The machine (CPU model, flags, cores, versions, load), its GEMM rate, and the model's compute-bound limit."""
import importlib.metadata
import importlib.util
import os
import platform

import numpy as np

from t2tvit.cpu_env import usable_cores

from .settings import timed

GEMM_SIZE = 1024  # square matrices: large enough to reach the library's peak on a few cores, timed in ~10 ms


def gemm_rates(args):
    """{precision: GFLOP/s} of one square matmul (2 n^3 FLOPs) in PyTorch (oneDNN/MKL, as its eval uses) with
    --threads threads, or numpy's BLAS without torch: fp32 always; bf16 where the CPU has AVX512_BF16 or AMX.
    No int8 rate: torch's CPU int8 matmul (torch._int_mm) is a reference kernel (0.3 GFLOP/s on a Zen 3 core,
    40x below its fp32), no measure of the hardware; int8 rows are held to the fp32 limit."""
    from t2tvit.deploy import cpu_has_bf16
    n = GEMM_SIZE
    rng = np.random.RandomState(0)
    a, b = (rng.standard_normal((n, n)).astype("float32") for _ in range(2))
    if importlib.util.find_spec("torch") is None:
        runs = {"fp32 (numpy)": lambda: a @ b}
    else:
        import torch
        torch.set_num_threads(args.threads)
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        runs = {"fp32": lambda: ta @ tb}
        if cpu_has_bf16():
            ha, hb = ta.bfloat16(), tb.bfloat16()
            runs["bf16"] = lambda: ha @ hb
    repeat = max(args.repeat, 5)
    return {k: round(2 * n ** 3 / float(np.median(timed(fn, 2, repeat))) / 1e9, 1) for k, fn in runs.items()}


def model_macs(model, img_size):
    """Multiply-accumulates of one image through `model`, every kind counted as fvcore counts the official model
    (t2tvit/macs.py: Linear layers, attention matmuls, Performer einsums, LayerNorm): 1.156 G for T2T-ViT-7 at
    224 px."""
    from t2tvit.macs import count_macs  # here, not at the top: the torch workers never load Paddle
    return sum(count_macs(model, img_size).values())


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
