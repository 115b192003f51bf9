"""Measure T2T-ViT's speed on this machine, side by side with PyTorch running the official model.

    python tools/benchmark.py [-c CONFIG] [-o Section.key=value ...] [--model NAME] [--batch 32]
                              [--img-size S] [--threads N] [--rounds R] [--weights FILE]
                              [--agree-on photos|val] [--only MEASURE ...]

In one run, each measure in a fresh process (so that its environment applies and its peak memory is its own):
  torch_eval     PyTorch (if installed) running the official T2T-ViT (tools/torch_reference.py, proven
                 against the official code by the tests) under no_grad: the yardstick of every eval ratio
  torch_train    its training step: forward, soft-target loss, backward, AdamW (drop path 0.1)
  eval_dynamic   Paddle's dynamic-graph model under no_grad
  train          Paddle's training step, as torch_train (the yardstick of its ratio)
  engine         the exported model in every installed deployment backend x precision (t2tvit/deploy.py)
  data_train     one data worker running the full recipe's train transform, the official pixels (full decode,
                 RandomResizedCrop, flip, RandAugment m9; uint8 out: normalisation, mixup and erasing happen
                 on the batch) on ImageNet-sized JPEGs (500x375, made from lit_data)
  data_train_reduced  the same with Data.reduced_decode (JPEGs decoded at 1/2-1/8 scale where the crop allows)
  data_val       the same for the validation transform (full decode, resize, center crop, normalisation)
The model, image size, classes and transforms come from the config (default config/t2t_vit_7.yaml; --model
and --img-size override it). Each model measure is timed on a random batch (warm-up runs, then --repeat timed
runs; with --rounds R every measure runs R times, interleaved, and images/s is the median of all its timed
runs) and also run once on real images through the val transform: the 20 photos of lit_data/val, or with
--agree-on val the config's validation split (at most --agree-limit images, evenly spaced). Its max |logit
difference| and top-1 agreement are against Paddle's float32 dynamic-graph model with the same weights
(--weights, else random init, seed 0; random-init logits have tiny top-2 gaps, so top-1 agreement means more
with trained weights: the report gives the reference's top-2 gaps). Threads default to the cores of this
process, as every tool sets them (tools/t2tvit/cpu_env.py). Records the CPU model and flags; prints a table and
one JSON line (prefix `BENCHMARK_JSON `).

Every eval measure (PyTorch, Paddle dynamic, each backend x precision, int8 included) also gets its batch-1
latency (p50 / p99 over --latency-runs runs after the warm-up; default 200) and its throughput at each of
--throughput-batches (default 1 8 32). The run measures the machine's GEMM rate (gemm_rates: a 1024^2
matmul, the faster of PyTorch and OpenVINO, in fp32, and in bf16 and int8 where the CPU has them) and reports
each eval row as a fraction of the model's compute-bound limit, GEMM rate / (2 x MACs per image) (model_macs:
every matrix product and LayerNorm, as tools/count_macs.py counts them). With --agree-on val each row's top-1
against the split's labels is reported too. int8 models are calibrated on --calib DIR_OR_LIST (e.g. training
images: up to 300, evenly spaced, through the val transform), else on up to 300 of the compared images.
"""
import t2tvit.cpu_env  # noqa: F401  (first: sets CPU threads before Paddle loads)
import argparse
import functools
import glob
import importlib.metadata
import importlib.util
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

from t2tvit.errors import UserError, cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(ROOT, "config", "t2t_vit_7.yaml")
PHOTOS = os.path.join(ROOT, "lit_data", "val")
MEASURES = ("torch_eval", "torch_train", "eval_dynamic", "train", "engine", "data_train", "data_train_reduced",
            "data_val")
DATA_SETTINGS = {"data_train": ("train", []), "data_train_reduced": ("train", ["Data.reduced_decode=true"]),
                 "data_val": ("val", [])}
TORCH_MEASURES = ("torch_eval", "torch_train")
YARDSTICK = {"eval_dynamic": "torch_eval", "engine": "torch_eval", "torch_eval": "torch_eval",
             "train": "torch_train", "torch_train": "torch_train"}
JSON_PREFIX = "BENCHMARK_JSON "


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


# ---- worker side: one measurement in this process --------------------------------------------------------

def _paddle(args):
    import paddle

    from t2tvit.runtime import select_device
    select_device(args.device)
    paddle.seed(0)
    return paddle


def _new_paddle_model(args, paddle, **kwargs):
    from t2tvit.t2t import create_model
    return create_model(args.model, img_size=args.img_size, num_classes=config_of(args).Global.num_classes,
                        **kwargs)


def _paddle_model(args, paddle, **kwargs):
    """The model with the weights every measure shares (written by prepare)."""
    model = _new_paddle_model(args, paddle, **kwargs)
    from t2tvit.checkpoint import load_file
    model.set_state_dict(load_file(os.path.join(args.work_dir, "weights.pdparams")))
    return model


def agreement_paths(args, cfg):
    """(where, image paths, their labels or None) the logits are compared on: lit_data's photos, or the
    config's val split (whose labels give each measure's top-1 accuracy too)."""
    if args.agree_on == "photos":
        paths = sorted(glob.glob(os.path.join(PHOTOS, "*", "*.JPEG")))
        if not paths:
            raise UserError(f"no photos under {PHOTOS} to compare logits on")
        return os.path.relpath(PHOTOS, ROOT), paths, None
    from t2tvit.dataset import build_dataset
    dataset = build_dataset(cfg, "val")
    picked = np.unique(np.linspace(0, len(dataset) - 1, min(len(dataset), args.agree_limit)).round().astype(int))
    return (f"{cfg.Data.root} (val split, {len(picked)} of {len(dataset)} images)", [dataset.path(i) for i in picked],
            dataset.labels[picked])


def prepare(args):
    """Fix the weights, the images compared on (uint8 crops of the val transform), the reference logits (fp32
    dynamic graph) and the exported model that every other worker uses; report the deployment backends and
    precisions installed."""
    paddle = _paddle(args)
    from t2tvit.checkpoint import load_weights
    from t2tvit.deploy import export
    from t2tvit.t2t import linear_weight_names
    from t2tvit.transforms import build_transform
    cfg = config_of(args)
    model = _new_paddle_model(args, paddle)
    weights = "random init (seed 0)"
    if args.weights:
        load_weights(model, args.weights)
        weights = args.weights
    model.eval()
    macs = model_macs(model, args.img_size)  # before export: to_static turns the model's forward static
    paddle.save(model.state_dict(), os.path.join(args.work_dir, "weights.pdparams"))
    linear = set(linear_weight_names(model))
    np.savez(os.path.join(args.work_dir, "weights_torch_layout.npz"),
             **{k: (v.numpy().T if k in linear else v.numpy()) for k, v in model.state_dict().items()})
    where, paths, labels = agreement_paths(args, cfg)
    if labels is not None:
        np.save(os.path.join(args.work_dir, "labels.npy"), labels)
    transform = build_transform(cfg, "val")
    # uint8 on disk, normalised a batch at a time by each worker: 10,000 crops of 224 px are 1.5 GB, not 6.
    crops = np.lib.format.open_memmap(os.path.join(args.work_dir, "crops.npy"), mode="w+", dtype=np.uint8,
                                      shape=(len(paths), 3, args.img_size, args.img_size))
    for i, path in enumerate(paths):
        crops[i] = transform.pixels(path)
    crops.flush()
    del crops

    def predict(x):
        with paddle.no_grad():
            return model(paddle.to_tensor(x)).numpy()

    reference = np.concatenate([predict(x) for x in image_batches(args)])
    np.save(logits_path(args.work_dir, "reference"), reference)
    from t2tvit.deploy import available_backends, supported_precisions
    backends = {b: supported_precisions(b) for b in available_backends()} if "engine" in args.only else {}
    if "engine" in args.only:
        export(model, args.img_size, os.path.join(args.work_dir, "inference"))
        if any("int8" in p for p in backends.values()):
            quantize_for_benchmark(args, cfg, backends)
    top2 = np.sort(reference, axis=-1)[:, -2:]
    gap = top2[:, 1] - top2[:, 0] if reference.shape[-1] > 1 else np.zeros(len(reference))
    return {"weights": weights, "compared_on": where, "compared_images": len(paths), "backends": backends,
            "model_macs": macs,
            "reference_top2_gap": {"min": float(gap.min()), "median": float(np.median(gap)),
                                   "logit_std": float(reference.std())}}


def quantize_for_benchmark(args, cfg, backends):
    """The int8 models of the export, calibrated on --calib (at most DEFAULT_CALIB_SIZE images, evenly spaced,
    through the val transform), else on as many of the compared images: with --agree-on val a calibration set
    of the same distribution as, but not disjoint from, the images measured."""
    from t2tvit.quantize import DEFAULT_CALIB_SIZE, calibration_images, quantize_export
    if args.calib:
        images = calibration_images(cfg, args.calib, DEFAULT_CALIB_SIZE)
    else:
        crops, normalize = _crops(args)
        picked = np.unique(np.linspace(0, len(crops) - 1, min(len(crops), DEFAULT_CALIB_SIZE)).round().astype(int))
        images = np.stack([normalize(crops[i]) for i in picked])
    quantize_export(os.path.join(args.work_dir, "inference"), images, tuple(b for b, p in backends.items() if "int8" in p))


def _crops(args):
    """(the compared images' uint8 crops, memory-mapped; the val transform's normalisation)."""
    from t2tvit.transforms import Normalize
    data = config_of(args).Data
    return np.load(os.path.join(args.work_dir, "crops.npy"), mmap_mode="r"), Normalize(data.mean, data.std)


def image_batches(args):
    """The compared images, normalised as the val transform does, in batches of --batch."""
    crops, normalize = _crops(args)
    for start in range(0, len(crops), args.batch):
        yield np.stack([normalize(c) for c in crops[start:start + args.batch]])


def logits_path(work_dir, tag):
    """Where a measure's logits on the compared images are kept (tag 'reference': the fp32 dynamic graph's)."""
    return os.path.join(work_dir, f"logits_{tag}.npy")


def _time_eval(args, to_input, predict):
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


def profile_path(work_dir, tag):
    return os.path.join(work_dir, f"profile_{tag}.json")


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


# ---- the machine's GEMM rate and the model's compute-bound limit ------------------------------------------

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
    compiled = ov.Core().compile_model(ov.Model([y], [x]), "CPU", {
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
    from t2tvit.deploy import cpu_has_bf16, cpu_flags
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


def compute_bound_fraction(images_per_s, macs, rate_gflops):
    """images/s as a fraction of the compute-bound limit rate / (2 x MACs)."""
    return round(images_per_s * 2 * macs / (rate_gflops * 1e9), 3)


def measure_eval_dynamic(args):
    paddle = _paddle(args)
    model = _paddle_model(args, paddle)
    model.eval()

    def predict(x):
        with paddle.no_grad():
            return model(x).numpy()

    return _time_eval(args, paddle.to_tensor, predict)


def measure_engine(args):
    from t2tvit.deploy import create_predictor
    predictor = create_predictor(os.path.join(args.work_dir, "inference"), backend=args.engine_backend,
                                 precision=args.precision, threads=args.threads, device=args.device)
    return _time_eval(args, lambda images: images, predictor)


def _soft_targets(rng, batch, classes, smoothing=0.1):
    targets = np.full((batch, classes), smoothing / classes, dtype="float32")
    targets[np.arange(batch), rng.randint(0, classes, batch)] += 1.0 - smoothing
    return targets


def measure_train(args):
    paddle = _paddle(args)
    from t2tvit.mixup import soft_target_cross_entropy
    from t2tvit.optim import build_optimizer
    cfg = config_of(args)
    model = _paddle_model(args, paddle, drop_path_rate=cfg.Model.drop_path_rate)
    model.train()
    opt = build_optimizer(model, cfg)
    x = paddle.to_tensor(random_batch(args))
    targets = paddle.to_tensor(_soft_targets(np.random.RandomState(1), args.batch, cfg.Global.num_classes))

    def step():
        loss = soft_target_cross_entropy(model(x), targets)
        loss.backward()
        opt.step()
        opt.clear_grad()
        float(loss)

    return timed(step, args.warmup, args.repeat)


def _torch_model(args, **kwargs):
    import torch

    from torch_reference import create_reference, load_torch_layout
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create_reference(args.model, img_size=args.img_size, num_classes=config_of(args).Global.num_classes,
                             **kwargs)
    return torch, load_torch_layout(model, np.load(os.path.join(args.work_dir, "weights_torch_layout.npz")))


def measure_torch_eval(args):
    torch, model = _torch_model(args)
    model.eval()

    def predict(x):
        with torch.no_grad():
            return model(x).numpy()

    return _time_eval(args, torch.from_numpy, predict)


def measure_torch_train(args):
    cfg = config_of(args)
    torch, model = _torch_model(args, drop_path_rate=cfg.Model.drop_path_rate)
    model.train()
    # The recipe's AdamW: no weight decay on 1-D parameters, cls_token and pos_embed (frozen tensors excluded).
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or name in ("cls_token", "pos_embed") else decay).append(p)
    o = cfg.Optimizer
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay,
                             "weight_decay": 0.0}], lr=o.lr, betas=tuple(o.betas), eps=o.eps)
    x = torch.from_numpy(random_batch(args))
    targets = torch.from_numpy(_soft_targets(np.random.RandomState(1), args.batch, cfg.Global.num_classes))

    def step():
        loss = torch.sum(-targets * torch.log_softmax(model(x), dim=-1), dim=-1).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        float(loss)

    return timed(step, args.warmup, args.repeat)


def measure_data(args, name):
    from t2tvit.transforms import build_transform
    split, overrides = DATA_SETTINGS[name]
    cfg = config_of(args, overrides)
    transform = build_transform(cfg, split)
    paths = sorted(glob.glob(os.path.join(args.work_dir, "jpeg", "*.JPEG")))
    random.seed(0)
    np.random.seed(0)

    def run():
        for path in paths:
            transform(path)

    # Time per image, so that images/s = 1 / median.
    return [t / len(paths) for t in timed(run, args.warmup, args.repeat)]


# ---- per-stage profile (--stages): where the time goes, Paddle and PyTorch side by side --------------------

def stage_inputs(args):
    """(stage name, input shape, whether the real model needs the input's gradient) in forward order."""
    from t2tvit.t2t import VARIANTS
    _, dim, depth, _, _ = VARIANTS[args.model]
    b, s = args.batch, args.img_size
    return [("soft split 1 (unfold 7x7 /4)", [b, 3, s, s], False),
            ("T2T Performer 1", [b, (s // 4) ** 2, 3 * 49], False),
            ("soft split 2 (unfold 3x3 /2)", [b, (s // 4) ** 2, 64], True),
            ("T2T Performer 2", [b, (s // 8) ** 2, 64 * 9], True),
            ("soft split 3 + project", [b, (s // 8) ** 2, 64], True),
            (f"{depth} backbone blocks", [b, (s // 16) ** 2 + 1, dim], True),
            ("norm + head", [b, (s // 16) ** 2 + 1, dim], True),
            ("whole model", [b, 3, s, s], False)]


def time_stages(args, stages, to_input, run_eval, run_train, set_mode):
    """{stage: [seconds of the eval forward, seconds of forward + backward in training mode]}."""
    rng = np.random.RandomState(0)
    result = {}
    for (name, shape, needs_grad), fn in zip(stage_inputs(args), stages):
        x = to_input(rng.standard_normal(shape).astype("float32"), needs_grad)
        set_mode(False)
        forward = float(np.median(timed(lambda: run_eval(fn, x), args.warmup, args.repeat)))
        set_mode(True)
        both = float(np.median(timed(lambda: run_train(fn, x), args.warmup, args.repeat)))
        result[name] = [forward, both]
    return result


def measure_stages_paddle(args):
    paddle = _paddle(args)
    import paddle.nn.functional as F
    model = _paddle_model(args, paddle, drop_path_rate=0.1)
    t2t = model.tokens_to_token
    grids = t2t.grids  # the token grids after the first and the second soft split

    def blocks(x):
        for blk in model.blocks:
            x = blk(x)
        return x

    stages = [lambda x: F.unfold(x, [7, 7], strides=4, paddings=2).transpose([0, 2, 1]), t2t.attention1,
              lambda x: F.unfold(t2t._reshape_to_image(x, grids[0]), [3, 3], strides=2, paddings=1).transpose([0, 2, 1]),
              t2t.attention2,
              lambda x: t2t.project(F.unfold(t2t._reshape_to_image(x, grids[1]), [3, 3], strides=2,
                                             paddings=1).transpose([0, 2, 1])),
              blocks, lambda x: model.head(model.norm(x)[:, 0]), model]

    def run_eval(fn, x):
        with paddle.no_grad():
            fn(x).numpy()

    def run_train(fn, x):
        y = fn(x)
        if not y.stop_gradient:  # the first soft split has nothing to differentiate
            y.sum().backward()

    # Paddle 2.6's Layer.train() takes no argument: train() / eval().
    return time_stages(args, stages, lambda a, g: paddle.to_tensor(a, stop_gradient=not g), run_eval, run_train,
                       lambda training: model.train() if training else model.eval())


def measure_stages_torch(args):
    torch, model = _torch_model(args, drop_path_rate=0.1)
    t2t = model.tokens_to_token

    def blocks(x):
        for blk in model.blocks:
            x = blk(x)
        return x

    stages = [lambda x: t2t.soft_split0(x).transpose(1, 2), t2t.attention1,
              lambda x: t2t.soft_split1(t2t.to_image(x, t2t.grids[0])).transpose(1, 2), t2t.attention2,
              lambda x: t2t.project(t2t.soft_split2(t2t.to_image(x, t2t.grids[1])).transpose(1, 2)),
              blocks, lambda x: model.head(model.norm(x)[:, 0]), model]

    def run_eval(fn, x):
        with torch.no_grad():
            fn(x).numpy()

    def run_train(fn, x):
        y = fn(x)
        if y.requires_grad:
            y.sum().backward()

    return time_stages(args, stages, lambda a, g: torch.from_numpy(a).requires_grad_(g), run_eval, run_train,
                       model.train)


def print_stages(stages):
    frameworks = [f for f in ("paddle", "torch") if f in stages]
    print("per stage, ms per batch: eval forward | training forward + backward")
    print(f"{'stage':<30}" + "".join(f"{f + ' eval':>13}" for f in frameworks) +
          "".join(f"{f + ' train':>13}" for f in frameworks))
    for name in stages[frameworks[0]]:
        cells = [stages[f][name][i] * 1e3 for i in (0, 1) for f in frameworks]
        print(f"{name:<30}" + "".join(f"{c:>13.1f}" for c in cells))


def worker(args):
    """Run one measurement; print the seconds per image of each timed run and the peak memory (or, for
    `prepare`, what it prepared)."""
    if args.worker in ("prepare", "stages_paddle", "stages_torch", "gemm"):
        print(JSON_PREFIX + json.dumps({"prepare": prepare, "stages_paddle": measure_stages_paddle,
                                        "stages_torch": measure_stages_torch, "gemm": gemm_rates}[args.worker](args)))
        return 0
    if args.worker in DATA_SETTINGS:
        per_image = measure_data(args, args.worker)
    else:
        times = {"eval_dynamic": measure_eval_dynamic, "engine": measure_engine, "train": measure_train,
                 "torch_eval": measure_torch_eval, "torch_train": measure_torch_train}[args.worker](args)
        per_image = [t / args.batch for t in times]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
    print(JSON_PREFIX + json.dumps({"seconds_per_item": per_image, "peak_mem_mb": round(peak)}))
    return 0


# ---- driver side ---------------------------------------------------------------------------------------

def make_jpegs(out_dir, count):
    """ImageNet-sized JPEGs (long side 500, short 375, quality 90) made from the photos in lit_data."""
    from PIL import Image
    sources = sorted(glob.glob(os.path.join(ROOT, "lit_data", "**", "*.JPEG"), recursive=True))
    if not sources:
        raise UserError(f"no JPEGs under {os.path.join(ROOT, 'lit_data')} to make benchmark images from")
    os.makedirs(out_dir, exist_ok=True)
    for i in range(count):
        with Image.open(sources[i % len(sources)]) as img:
            img = img.convert("RGB")
            size = (500, 375) if img.width >= img.height else (375, 500)
            img.resize(size, Image.Resampling.BICUBIC).save(os.path.join(out_dir, f"img_{i:04d}.JPEG"), quality=90)


def machine_info():
    """CPU model, vendor and flags (as /proc/cpuinfo and lscpu give them), usable cores, versions."""
    info = {"cpu_model": platform.processor() or platform.machine(), "cpu_flags": "",
            "usable_cores": t2tvit.cpu_env.usable_cores(), "python": platform.python_version()}
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


def run_worker(args, name, work_dir, tag=None, extra=()):
    """Run one worker process; its JSON result, or {'error': ...}."""
    env = dict(os.environ, PYTHONWARNINGS="ignore", GLOG_minloglevel="2")
    threads = 1 if name.startswith("data_") else args.threads
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", name, "--model", args.model,
           "--batch", str(args.batch), "--img-size", str(args.img_size), "--threads", str(threads),
           "--device", args.device, "--warmup", str(args.warmup), "--repeat", str(args.repeat),
           "--work-dir", work_dir, "--tag", tag or name, "--config", args.config, "--agree-on", args.agree_on,
           "--agree-limit", str(args.agree_limit), "--latency-runs", str(args.latency_runs),
           "--throughput-batches", *map(str, args.throughput_batches), "--only", *args.only, *extra]
    cmd += ["-o", *args.override] if args.override else []
    cmd += ["--weights", args.weights] if args.weights else []
    cmd += ["--calib", *args.calib] if args.calib else []
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(JSON_PREFIX)]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"error": f"exit {proc.returncode}: {tail}"}
    return json.loads(lines[-1][len(JSON_PREFIX):])


def agreement(work_dir, tag):
    """(max |logit difference|, top-1 agreement) of a measure's logits on the compared images vs the fp32
    dynamic model's, and its top-1 accuracy against the labels (None on the unlabelled photos)."""
    path = logits_path(work_dir, tag)
    if not os.path.exists(path):
        return None, None, None
    ref, got = np.load(logits_path(work_dir, "reference")), np.load(path)
    labels = os.path.join(work_dir, "labels.npy")
    top1 = float(np.mean(got.argmax(-1) == np.load(labels))) if os.path.exists(labels) else None
    return float(np.abs(got - ref).max()), float(np.mean(got.argmax(-1) == ref.argmax(-1))), top1


def finish(rows):
    """images/s of each row, and its ratio to the PyTorch measure it is compared with."""
    for r in rows:
        if "error" not in r:
            r["images_per_s"] = round(1.0 / float(np.median(r["seconds_per_item"])), 2)  # over all rounds
    ips = {r["measure"]: r.get("images_per_s") for r in rows}
    for r in rows:
        base = ips.get(YARDSTICK.get(r["measure"]))
        r["ratio"] = round(r["images_per_s"] / base, 2) if base and r.get("images_per_s") else None
    return rows


def add_compute_bound(rows, macs, gemm):
    """Each eval row's images/s (at --batch) as a fraction of the compute-bound limit at the GEMM rate of its
    precision (where that precision's rate was not measured: the fp32 rate)."""
    fp32 = gemm.get("fp32")
    for r in rows:
        if "images_per_s" in r and YARDSTICK.get(r["measure"]) == "torch_eval" and fp32:
            precision = r["setting"].rsplit(" ", 1)[-1]
            rate = gemm.get(precision, fp32)
            r["compute_bound_fraction"] = compute_bound_fraction(r["images_per_s"], macs, rate)


def print_latency(rows, macs, gemm, gemm_by):
    print(f"batch-1 latency and throughput; model {macs / 1e9:.3f} GMACs per image (every matrix product); GEMM "
          f"GFLOP/s (int8: GOP/s), the faster of PyTorch and OpenVINO: "
          f"{', '.join(f'{k} {v} ({gemm_by[k]})' for k, v in gemm.items()) or 'not measured'}")
    print(f"{'measure':<20}{'setting':<26}{'p50 ms':>9}{'p99 ms':>9}" + "".join(
        f"{'b' + b + ' img/s':>12}" for b in next((r["throughput_images_per_s"] for r in rows
                                                    if "throughput_images_per_s" in r), {})) + f"{'of limit':>10}")
    for r in rows:
        if "latency_ms" in r:
            frac = r.get("compute_bound_fraction")
            print(f"{r['measure']:<20}{r['setting']:<26}{r['latency_ms']['p50']:>9.2f}{r['latency_ms']['p99']:>9.2f}"
                  + "".join(f"{v:>12.1f}" for v in r["throughput_images_per_s"].values())
                  + (f"{100 * frac:>9.1f}%" if frac is not None else ""))


def print_table(rows, machine, args, prepared):
    gap = prepared["reference_top2_gap"]
    print(f"T2T-ViT benchmark: {args.model}, batch {args.batch}, {args.img_size} px, {args.threads} threads, "
          f"{args.device}; CPU: {machine['cpu_model']} (family {machine.get('cpu_family')}, model "
          f"{machine.get('cpu_model_number')}), {machine['usable_cores']} usable cores")
    print(f"CPU flags: {machine['cpu_flags']}")
    print(f"{'measure':<20}{'setting':<26}{'images/s':>10}{'ratio':>8}{'max|dlogit|':>13}{'top-1 agree':>13}"
          f"{'top-1':>8}{'peak MB':>9}")
    for r in rows:
        if "error" in r:
            print(f"{r['measure']:<20}{r['setting']:<26}failed: {r['error']}")
            continue
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        diff = "" if r["max_abs_diff"] is None else f"{r['max_abs_diff']:.1e}"
        agree = "" if r["top1_agreement"] is None else f"{100 * r['top1_agreement']:.1f}%"
        top1 = "" if r.get("top1_vs_labels") is None else f"{100 * r['top1_vs_labels']:.2f}"
        print(f"{r['measure']:<20}{r['setting']:<26}{r['images_per_s']:>10.1f}{ratio:>8}{diff:>13}{agree:>13}"
              f"{top1:>8}{r['peak_mem_mb']:>9}")
    print("ratio: eval rows to torch_eval, train to torch_train (PyTorch running the official model, this run); "
          f"logits vs Paddle's fp32 dynamic graph on {prepared['compared_images']} images of "
          f"{prepared['compared_on']}, weights: {prepared['weights']}; its top-2 logit gap: min "
          f"{gap['min']:.2g}, median {gap['median']:.2g} (logit std {gap['logit_std']:.2g})")


def plan(args, prepared):
    """(measure, tag, setting, extra worker arguments) of every worker to run, in table order."""
    runs = []
    for name in MEASURES:
        if name not in args.only:
            continue
        if name == "engine":
            for backend, precisions in prepared["backends"].items():
                for precision in precisions:
                    runs.append((name, f"engine_{backend}_{precision}", f"{backend} {precision}",
                                 ["--engine-backend", backend, "--precision", precision]))
        elif name.startswith("data_"):
            runs.append((name, name, "1 thread", []))
        else:
            runs.append((name, name, "PyTorch" if name in TORCH_MEASURES else "Paddle dynamic graph", []))
    return runs


def drive(args):
    report_notes = []
    if importlib.util.find_spec("torch") is None:
        skipped = [m for m in TORCH_MEASURES if m in args.only]
        args.only = [m for m in args.only if m not in TORCH_MEASURES]
        if skipped:
            report_notes.append("torch is not installed: no PyTorch measures, so no ratios")
    if args.device != "cpu" and any(m in args.only for m in TORCH_MEASURES):
        args.only = [m for m in args.only if m not in TORCH_MEASURES]
        report_notes.append("PyTorch measures run on CPU only")
    if any(m in args.only for m in TORCH_MEASURES):
        from torch_reference import PERFORMER_VARIANTS
        if args.model not in PERFORMER_VARIANTS:
            raise UserError(f"the PyTorch reference has the Performer variants only "
                            f"({', '.join(PERFORMER_VARIANTS)}); for {args.model} use --only without "
                            f"{' '.join(TORCH_MEASURES)}")
    if not args.only:
        raise UserError("nothing left to measure")
    for note in report_notes:
        print(f"note: {note}", file=sys.stderr)
    load_before = load_average()
    with tempfile.TemporaryDirectory() as work_dir:
        if any(m.startswith("data_") for m in args.only):
            make_jpegs(os.path.join(work_dir, "jpeg"), args.data_images)
        prepared = run_worker(args, "prepare", work_dir)
        if "error" in prepared:
            raise UserError(f"benchmark preparation failed: {prepared['error']}")
        runs = plan(args, prepared)
        rows = [{"measure": name, "setting": setting, "seconds_per_item": [], "rounds_images_per_s": []}
                for name, _, setting, _ in runs]
        # Rounds interleave the measures, so that a passing load on a shared machine hits them alike.
        for _ in range(args.rounds):
            for row, (name, tag, setting, extra) in zip(rows, runs):
                if "error" in row:
                    continue
                result = run_worker(args, name, work_dir, tag, extra)
                if "error" in result:
                    row["error"] = result["error"]
                    print(f"  {name} ({setting}): failed: {result['error']}", file=sys.stderr, flush=True)
                    continue
                row["seconds_per_item"] += result["seconds_per_item"]
                row["peak_mem_mb"] = max(row.get("peak_mem_mb", 0), result["peak_mem_mb"])
                row["rounds_images_per_s"].append(round(1.0 / float(np.median(result["seconds_per_item"])), 2))
                row["max_abs_diff"], row["top1_agreement"], row["top1_vs_labels"] = agreement(work_dir, tag)
                if os.path.exists(profile_path(work_dir, tag)):
                    with open(profile_path(work_dir, tag)) as f:
                        row.update(json.load(f))
                print(f"  {name} ({setting}): {row['rounds_images_per_s'][-1]:.1f} images/s", file=sys.stderr,
                      flush=True)
        gemm, gemm_by = {}, {}
        if any(m in args.only for m in YARDSTICK if YARDSTICK[m] == "torch_eval"):
            result = run_worker(args, "gemm", work_dir)
            if "error" in result:
                report_notes.append(f"GEMM rate not measured: {result['error']}")
            else:
                gemm, gemm_by = result["rates"], result["by"]
        stages = {}
        if args.stages:
            for framework in ("paddle", "torch"):
                if framework == "torch" and importlib.util.find_spec("torch") is None:
                    continue
                result = run_worker(args, f"stages_{framework}", work_dir)
                if "error" in result:
                    raise UserError(f"--stages ({framework}) failed: {result['error']}")
                stages[framework] = result
    finish(rows)
    add_compute_bound(rows, prepared["model_macs"], gemm)
    machine = machine_info()
    settings = {k: getattr(args, k) for k in ("config", "override", "model", "batch", "img_size", "threads",
                                              "device", "warmup", "repeat", "rounds", "calib")}
    settings["weights"] = prepared["weights"]
    report = {"machine": machine, "load_average_before": load_before, "load_average_after": load_average(),
              "settings": settings, "notes": report_notes, "results": rows, "stages_seconds": stages,
              "gemm_gflops": gemm, "gemm_engine": gemm_by, "model_macs": prepared["model_macs"],
              **{k: prepared[k] for k in ("compared_on", "compared_images", "reference_top2_gap")}}
    print_table(rows, machine, args, prepared)
    print_latency(rows, prepared["model_macs"], gemm, gemm_by)
    if stages:
        print_stages(stages)
    print(JSON_PREFIX + json.dumps(report))
    return 1 if any("error" in r for r in rows) else 0


@cli
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-c", "--config", default=RECIPE,
                    help="config giving the model, image size, classes and transforms (default: %(default)s)")
    ap.add_argument("-o", "--override", nargs="+", default=[], metavar="Section.key=value",
                    help="override config keys, e.g. -o Data.root=data/fashion_mnist")
    ap.add_argument("--model", help="model variant (default: the config's Global.model)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--img-size", type=int, help="image size (default: the config's Global.img_size)")
    ap.add_argument("--threads", type=int, default=t2tvit.cpu_env.usable_cores(),
                    help="math threads (default: the cores of this process; data workers always use 1)")
    ap.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    ap.add_argument("--weights", help="weights or checkpoint to load (default: random init, seed 0)")
    ap.add_argument("--agree-on", choices=("photos", "val"), default="photos",
                    help="images the logits are compared on: the 20 lit_data/val photos, or the config's "
                         "validation split (e.g. the Fashion-MNIST test set)")
    ap.add_argument("--calib", nargs="+", metavar="DIR_OR_LIST",
                    help="int8 calibration images (default: up to 300 of the compared images)")
    ap.add_argument("--agree-limit", type=int, default=10000,
                    help="with --agree-on val: at most this many images, evenly spaced over the split")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=1,
                    help="run every measure this many times, interleaved; images/s is the median of all runs")
    ap.add_argument("--only", nargs="+", metavar="MEASURE", default=list(MEASURES),
                    help=f"a subset of {' '.join(MEASURES)}")
    ap.add_argument("--data-images", type=int, default=40, help="JPEGs per data-pipeline run")
    ap.add_argument("--stages", action="store_true",
                    help="also time each stage of the model (eval forward; training forward + backward), in "
                         "Paddle and PyTorch")
    ap.add_argument("--latency-runs", type=int, default=200,
                    help="batch-1 runs timed for the latency p50 / p99 of each eval measure (0: none)")
    ap.add_argument("--throughput-batches", type=int, nargs="+", default=[1, 8, 32], metavar="N",
                    help="batch sizes of each eval measure's throughput (images/s)")
    ap.add_argument("--worker", choices=("prepare", "stages_paddle", "stages_torch", "gemm") + MEASURES,
                    help=argparse.SUPPRESS)
    ap.add_argument("--work-dir", help=argparse.SUPPRESS)
    ap.add_argument("--tag", help=argparse.SUPPRESS)
    ap.add_argument("--engine-backend", help=argparse.SUPPRESS)
    ap.add_argument("--precision", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if not args.worker:
        from t2tvit.config import load_config
        cfg = load_config(args.config, args.override)  # a bad file or key: one line, before any worker runs
        args.model = args.model or cfg.Global.model
        args.img_size = args.img_size or cfg.Global.img_size
    for key in ("batch", "threads", "repeat", "rounds", "data_images", "agree_limit"):
        if getattr(args, key) < 1:
            raise UserError(f"--{key.replace('_', '-')} must be at least 1")
    if args.latency_runs < 0 or min(args.throughput_batches) < 1:
        raise UserError("--latency-runs must be at least 0 and --throughput-batches at least 1")
    if args.img_size % 16:
        raise UserError(f"--img-size {args.img_size} is not a multiple of 16")
    unknown = sorted(set(args.only) - set(MEASURES))
    if unknown:
        raise UserError(f"--only: unknown measurement(s) {', '.join(unknown)}; choose from {', '.join(MEASURES)}")
    if args.worker:
        return worker(args)  # PyTorch's workers never load Paddle: two OpenMP runtimes in one process slow both
    from t2tvit.t2t import VARIANTS
    if args.model not in VARIANTS:
        raise UserError(f"unknown model {args.model!r}; known models: {', '.join(VARIANTS)}")
    return drive(args)


if __name__ == "__main__":
    sys.exit(main())
