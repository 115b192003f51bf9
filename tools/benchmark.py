"""Measure T2T-ViT's speed on this machine: evaluation, training step, and the data pipeline.

    python tools/benchmark.py [--model t2t_vit_7] [--batch 32] [--img-size 224] [--threads 2] [--device cpu]

Measures, each in a fresh process (so that environment settings apply and peak memory is its own):
  eval_dynamic   images/s of the dynamic-graph model under no_grad
  eval_engine    images/s of the exported model in Paddle Inference (oneDNN on CPU, TensorRT with --trt)
  train          images/s of a training step: forward, soft-target loss, backward, AdamW (drop path 0.1)
  data_train     images/s of one data worker running the full recipe's train transform (RandomResizedCrop,
                 flip, RandAugment m9, random erasing) on ImageNet-sized JPEGs (500x375, made from lit_data)
  data_val       the same for the validation transform (resize, center crop)
  gemm           fp32 GFLOP/s of a large matmul, dynamic graph (MKL) and inference engine (oneDNN): this
                 machine's peak, against which the reference's speed is scaled (`vs ref/peak`)
Each: warm-up runs, then the median of --repeat timed runs. On CPU, eval_dynamic and train also run with
MKL_DEBUG_CPU_TYPE=5 (MKL's fast path on AMD CPUs; scripts/launch.sh sets it), which must be set before
Paddle loads. Prints a table and one JSON line (prefix `BENCHMARK_JSON `).
"""
import cpu_env  # noqa: F401  (first: sets CPU threads before Paddle loads)
import argparse
import glob
import importlib.metadata
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

from errors import UserError, cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(ROOT, "config", "t2t_vit_7.yaml")
# The official PyTorch T2T-ViT-7 on a 2-core CPU machine (batch 32, 224 px, fp32, 2 threads), images/s, and
# that machine's fp32 matmul peak: 45% of it for eval (2.31 GFLOP an image), 50% for training (3x that).
REFERENCE = {"setting": dict(model="t2t_vit_7", batch=32, img_size=224, threads=2, device="cpu"),
             "eval": 35.0, "train": 13.0, "gemm_gflops": 180.0, "gflop_per_image": 2.31}
MEASURES = ("gemm", "eval_dynamic", "eval_engine", "train", "data_train", "data_val")
GEMM_SHAPE = (6304, 1024, 1024)  # T2T-ViT-7's token count at batch 32 by a wide layer
JSON_PREFIX = "BENCHMARK_JSON "


def timed(fn, warmup, repeat, sync=lambda: None):
    """Seconds of each of `repeat` calls of fn, after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return times


# ---- worker side: one measurement in this process --------------------------------------------------------

def _setup_paddle(args):
    import paddle

    if args.device == "cpu" and not args.no_malloc_tuning:
        from runtime import keep_freed_memory
        keep_freed_memory()
    paddle.set_device("gpu" if args.device == "gpu" else "cpu")
    paddle.seed(0)
    return paddle


def _sync(paddle, device):
    return paddle.device.cuda.synchronize if device == "gpu" else (lambda: None)


def _autocast(paddle, amp):
    import contextlib
    if amp == "none":
        return contextlib.nullcontext()
    return paddle.amp.auto_cast(enable=True, level="O1", dtype="float16" if amp == "fp16" else "bfloat16")


def measure_eval_dynamic(args):
    paddle = _setup_paddle(args)
    from t2t import create_model
    model = create_model(args.model, img_size=args.img_size)
    model.eval()
    x = paddle.randn([args.batch, 3, args.img_size, args.img_size])

    def run():
        with paddle.no_grad(), _autocast(paddle, args.amp):
            model(x).numpy()

    return timed(run, args.warmup, args.repeat, _sync(paddle, args.device))


def measure_eval_engine(args):
    _setup_paddle(args)
    from export_model import export
    from infer import Predictor
    from t2t import create_model
    model = create_model(args.model, img_size=args.img_size)
    model.eval()
    with tempfile.TemporaryDirectory() as tmp:
        export(model, args.img_size, tmp)
        predictor = Predictor(tmp, args.device, args.threads, args.backend, args.trt, max_batch=args.batch)
    x = np.random.RandomState(0).standard_normal((args.batch, 3, args.img_size, args.img_size)).astype("float32")
    return timed(lambda: predictor(x), args.warmup, args.repeat)


def measure_train(args):
    paddle = _setup_paddle(args)
    from config import load_config
    from mixup import soft_target_cross_entropy
    from optim import build_optimizer
    from t2t import create_model
    cfg = load_config(RECIPE)
    model = create_model(args.model, img_size=args.img_size, drop_path_rate=cfg.Model.drop_path_rate)
    model.train()
    opt = build_optimizer(model, cfg)
    x = paddle.randn([args.batch, 3, args.img_size, args.img_size])
    targets = paddle.nn.functional.one_hot(paddle.randint(0, 1000, [args.batch]), 1000) * 0.9 + 0.1 / 1000

    def step():
        with _autocast(paddle, args.amp):
            logits = model(x)
        loss = soft_target_cross_entropy(logits.astype("float32"), targets)
        loss.backward()
        opt.step()
        opt.clear_grad()
        float(loss)

    return timed(step, args.warmup, args.repeat, _sync(paddle, args.device))


def measure_data(args, split):
    from config import load_config
    from dataset import build_transform
    cfg = load_config(RECIPE, [f"Global.img_size={args.img_size}"])
    transform = build_transform(cfg, split)
    paths = sorted(glob.glob(os.path.join(args.jpeg_dir, "*.JPEG")))
    random.seed(0)
    np.random.seed(0)

    def run():
        for path in paths:
            transform(path)

    # Time per image, so that images/s = 1 / median.
    return [t / len(paths) for t in timed(run, args.warmup, args.repeat)]


def measure_gemm(args):
    """Seconds per GFLOP of a fp32 matmul: [dynamic graph, inference engine]."""
    paddle = _setup_paddle(args)
    import paddle.inference as pi
    from infer import cpu_config
    n, k, m = GEMM_SHAPE
    a = paddle.randn([n, k])
    b = paddle.randn([k, m])
    warmup = max(args.warmup, 2)  # oneDNN builds its kernels in the first runs
    dynamic = min(timed(lambda: paddle.matmul(a, b), warmup, args.repeat, _sync(paddle, args.device)))
    layer = paddle.nn.Linear(k, m, bias_attr=False)
    spec = [paddle.static.InputSpec([n, k], "float32", "x")]
    with tempfile.TemporaryDirectory() as tmp:
        paddle.jit.save(paddle.jit.to_static(layer, input_spec=spec, full_graph=True), os.path.join(tmp, "fc"))
        model_file = next(os.path.join(tmp, f) for f in os.listdir(tmp) if f.endswith((".json", ".pdmodel")))
        predictor = pi.create_predictor(cpu_config(model_file, os.path.join(tmp, "fc.pdiparams"), args.threads,
                                                   args.backend))
    x = predictor.get_input_handle(predictor.get_input_names()[0])
    x.reshape([n, k])
    x.copy_from_cpu(a.numpy())
    engine = min(timed(predictor.run, warmup, args.repeat))
    flop = 2e-9 * n * k * m
    return [dynamic / flop, engine / flop]


def worker(args):
    """Run one measurement; print the seconds per image (per GFLOP for gemm) of each timed run, and the peak
    memory."""
    if args.worker == "gemm":
        per_image = measure_gemm(args)
    elif args.worker in ("data_train", "data_val"):
        per_image = measure_data(args, args.worker[len("data_"):])
    else:
        times = {"eval_dynamic": measure_eval_dynamic, "eval_engine": measure_eval_engine,
                 "train": measure_train}[args.worker](args)
        per_image = [t / args.batch for t in times]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
    if args.device == "gpu" and args.worker != "eval_engine":
        import paddle
        peak = paddle.device.cuda.max_memory_allocated() / 2 ** 20
    print(JSON_PREFIX + json.dumps({"seconds_per_item": per_image, "peak_mem_mb": round(peak)}))


# ---- driver side ---------------------------------------------------------------------------------------

def make_jpegs(out_dir, count):
    """ImageNet-sized JPEGs (long side 500, short 375, quality 90) made from the photos in lit_data."""
    from PIL import Image
    sources = sorted(glob.glob(os.path.join(ROOT, "lit_data", "**", "*.JPEG"), recursive=True))
    if not sources:
        raise UserError(f"no JPEGs under {os.path.join(ROOT, 'lit_data')} to make benchmark images from")
    for i in range(count):
        with Image.open(sources[i % len(sources)]) as img:
            img = img.convert("RGB")
            size = (500, 375) if img.width >= img.height else (375, 500)
            img.resize(size, Image.Resampling.BICUBIC).save(os.path.join(out_dir, f"img_{i:04d}.JPEG"), quality=90)


def machine_info():
    info = {"cpu": platform.processor() or platform.machine(), "logical_cpus_usable": None,
            "python": platform.python_version()}
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
        for key in ("model name", "vendor_id"):
            line = next((l for l in text.splitlines() if l.startswith(key)), None)
            if line:
                info[key.replace(" ", "_")] = line.split(":", 1)[1].strip()
        flags = next((l for l in text.splitlines() if l.startswith("flags")), "")
        info["simd"] = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f" {f}" in flags]
    except OSError:
        pass
    if hasattr(os, "sched_getaffinity"):
        info["logical_cpus_usable"] = len(os.sched_getaffinity(0))
    for dist in ("paddlepaddle", "paddlepaddle-gpu"):
        try:
            info["paddle"] = importlib.metadata.version(dist)
            break
        except importlib.metadata.PackageNotFoundError:
            pass
    return info


def load_average():
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None


def run_worker(args, name, mkl_debug, jpeg_dir):
    env = dict(os.environ)
    threads = 1 if name.startswith("data_") else args.threads
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore",
               GLOG_minloglevel="2")
    env.pop("MKL_DEBUG_CPU_TYPE", None)
    if mkl_debug:
        env["MKL_DEBUG_CPU_TYPE"] = "5"
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", name, "--model", args.model,
           "--batch", str(args.batch), "--img-size", str(args.img_size), "--threads", str(threads),
           "--device", args.device, "--warmup", str(args.warmup), "--repeat", str(args.repeat),
           "--amp", args.amp, "--backend", args.backend, "--jpeg-dir", jpeg_dir]
    cmd += ["--trt", args.trt] if args.trt else []
    cmd += ["--no-malloc-tuning"] if args.no_malloc_tuning else []
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    lines = [l for l in proc.stdout.splitlines() if l.startswith(JSON_PREFIX)]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"error": f"exit {proc.returncode}: {tail}"}
    return json.loads(lines[-1][len(JSON_PREFIX):])


def reference_ratios(args, name, ips, peak):
    """(images/s over the reference's, the same with both scaled by their machine's fp32 matmul peak)."""
    setting = dict(model=args.model, batch=args.batch, img_size=args.img_size, threads=args.threads,
                   device=args.device)
    key = {"eval_dynamic": "eval", "eval_engine": "eval", "train": "train"}.get(name)
    if key is None or setting != REFERENCE["setting"] or args.amp != "none":
        return None, None
    ratio = ips / REFERENCE[key]
    at_peak = ratio * REFERENCE["gemm_gflops"] / peak if peak else None
    return round(ratio, 2), at_peak and round(at_peak, 2)


def finish_row(args, row, peak):
    """Add images/s (or GFLOP/s for gemm) and the reference ratios to a worker's result."""
    if "error" in row:
        return row
    times = row["seconds_per_item"]
    if row["measure"] == "gemm":
        row.update(gflops_dynamic=round(1.0 / times[0], 1), gflops_engine=round(1.0 / times[1], 1))
        return row
    ips = 1.0 / float(np.median(times))
    ratio, at_peak = reference_ratios(args, row["measure"], ips, peak)
    row.update(images_per_s=round(ips, 2), vs_reference=ratio, vs_reference_at_peak=at_peak)
    return row


def summary(row):
    if "error" in row:
        return f"failed: {row['error']}"
    if row["measure"] == "gemm":
        return f"{row['gflops_dynamic']:.0f} GFLOP/s dynamic graph, {row['gflops_engine']:.0f} GFLOP/s engine"
    return f"{row['images_per_s']:.1f} images/s"


def print_table(rows):
    print(f"{'measure':<14}{'setting':<22}{'images/s':>10}{'fastest':>10}{'peak MB':>9}{'vs ref':>8}"
          f"{'vs ref/peak':>13}")
    for r in rows:
        if "error" in r or r["measure"] == "gemm":
            print(f"{r['measure']:<14}{r['setting']:<22}{summary(r)}")
            continue
        ratios = ["" if v is None else f"{v:.2f}x" for v in (r["vs_reference"], r["vs_reference_at_peak"])]
        print(f"{r['measure']:<14}{r['setting']:<22}{r['images_per_s']:>10.1f}{1.0 / min(r['seconds_per_item']):>10.1f}"
              f"{r['peak_mem_mb']:>9}{ratios[0]:>8}{ratios[1]:>13}")


def drive(args):
    measures = args.only or [m for m in MEASURES if not (m == "gemm" and args.device == "gpu")]
    unknown = sorted(set(measures) - set(MEASURES))
    if unknown:
        raise UserError(f"--only: unknown measurement(s) {', '.join(unknown)}; choose from {', '.join(MEASURES)}")
    if args.device == "gpu" and "gemm" in measures:
        raise UserError("--only gemm measures the CPU's matmul peak; it has no GPU version")
    mkl_bound = ("gemm", "eval_dynamic", "train")
    both = args.device == "cpu" and args.mkl_debug == "both"
    rows, peak = [], None
    load_before = load_average()
    with tempfile.TemporaryDirectory() as jpeg_dir:
        if any(m.startswith("data_") for m in measures):
            make_jpegs(jpeg_dir, args.data_images)
        for name in sorted(measures, key=MEASURES.index):  # gemm first: the others are scaled by it
            for mkl in (False, True) if both and name in mkl_bound else (args.mkl_debug == "on",):
                setting = ("1 thread" if name.startswith("data_") else f"{args.threads} threads") + \
                          (" MKL_DEBUG=5" if mkl else "") + (f" {args.amp}" if args.amp != "none" else "")
                row = finish_row(args, {"measure": name, "setting": setting, "mkl_debug_cpu_type_5": mkl,
                                        **run_worker(args, name, mkl, jpeg_dir)}, peak)
                if name == "gemm" and "error" not in row:
                    peak = max(peak or 0, row["gflops_dynamic"], row["gflops_engine"])
                rows.append(row)
                print(f"  {name} ({setting}): {summary(row)}", file=sys.stderr, flush=True)
    settings = {k: getattr(args, k) for k in ("model", "batch", "img_size", "threads", "device", "amp", "backend",
                                              "trt", "warmup", "repeat")}
    settings["malloc_tuning"] = not args.no_malloc_tuning
    report = {"machine": machine_info(), "load_average_before": load_before, "load_average_after": load_average(),
              "settings": settings, "gemm_peak_gflops": peak, "reference": REFERENCE, "results": rows}
    print_table(rows)
    print(JSON_PREFIX + json.dumps(report))
    return 1 if any("error" in r for r in rows) else 0


@cli
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="t2t_vit_7")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=2, help="math threads (data workers always use 1)")
    ap.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    ap.add_argument("--amp", choices=("none", "fp16", "bf16"), default="none",
                    help="autocast for eval_dynamic and train (fp16 needs a GPU)")
    ap.add_argument("--backend", choices=("onednn", "paddle"), default="onednn", help="eval_engine CPU kernels")
    ap.add_argument("--trt", choices=("fp32", "fp16"), default=None, help="eval_engine on GPU through TensorRT")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--only", nargs="+", metavar="MEASURE", help=f"a subset of {' '.join(MEASURES)}")
    ap.add_argument("--mkl-debug", choices=("both", "on", "off"), default="both",
                    help="MKL_DEBUG_CPU_TYPE=5 for the MKL-bound CPU measurements: both, on or off")
    ap.add_argument("--no-malloc-tuning", action="store_true",
                    help="leave glibc's malloc as is (the tools keep freed memory by default; see infer.py)")
    ap.add_argument("--data-images", type=int, default=40, help="JPEGs per data-pipeline run")
    ap.add_argument("--worker", choices=MEASURES, help=argparse.SUPPRESS)
    ap.add_argument("--jpeg-dir", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    for key in ("batch", "threads", "repeat", "data_images"):
        if getattr(args, key) < 1:
            raise UserError(f"--{key.replace('_', '-')} must be at least 1")
    if args.img_size % 16:
        raise UserError(f"--img-size {args.img_size} is not a multiple of 16")
    from t2t import VARIANTS
    if args.model not in VARIANTS:
        raise UserError(f"unknown model {args.model!r}; known models: {', '.join(VARIANTS)}")
    if args.worker:
        return worker(args)
    return drive(args)


if __name__ == "__main__":
    sys.exit(main())
