"""Accept a GPU machine for training T2T-ViT: run this first on any new cluster (a few minutes on one GPU).

    python tools/gpu_check.py [--out gpu_check.json] [--steps 30] [--batch 64] [--workers 4] [--model t2t_vit_7]

On the first GPU Paddle sees, with the repo's own training step (Trainer, AmpPlan, loss scale, fused AdamW, EMA):
  environment  the GPUs, compute capability, driver, CUDA, cuDNN, Paddle
  (a) logits   float32 logits on the GPU against the CPU's, on the committed lit_data photos (<= 1e-4)
  (b) train    --steps training steps each in fp32, fp16 O1, fp16 O2 and bf16 O1 (where the GPU has it) on
               generated data: finite losses, the residual stream's dtype, images/s, peak memory
  (c) resume   a checkpoint saved mid-run and loaded into a fresh model gives the same next loss, bit for bit
  (d) loader   the data loader's images/s with --workers workers on generated JPEGs, against (b)'s step rate
  (e) profile  10 steps: the share of their time the device spends in kernels
Writes one JSON (--out) and prints a table; exits 1 if a check fails. Without a GPU it runs the same code in
float32 on the CPU at tiny sizes (32 px, batch 4, 3 steps), which the tests run, so that it cannot rot.
"""
import t2tvit.cpu_env  # noqa: F401  (first: sets CPU threads before Paddle loads)
import argparse
import glob
import json
import logging
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import paddle
from PIL import Image

from t2tvit import atomic
from t2tvit.amp import AmpPlan
from t2tvit.checkpoint import CheckpointDir, load_file
from t2tvit.config import SCHEMA_PATH, load_config
from t2tvit.dataset import build_loader
from t2tvit.ema import ModelEMA
from t2tvit.engine import Trainer
from t2tvit.errors import UserError, cli
from t2tvit.optim import build_optimizer
from t2tvit.quiet import add_verbose_flag
from t2tvit.runtime import MetricsFile, Runtime, Scalars, select_device
from t2tvit.t2t import create_model
from t2tvit.transforms import EvalTransform

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHOTOS = os.path.join(ROOT, "lit_data", "val")
PRECISIONS = (("fp32", "none", "O1"), ("fp16 O1", "fp16", "O1"), ("fp16 O2", "fp16", "O2"), ("bf16 O1", "bf16", "O1"))
LOGITS_TOL = 1e-4


def synchronize(device):
    if device == "gpu":
        paddle.device.cuda.synchronize()


def environment(device):
    env = {"device": device, "paddle": paddle.__version__, "cuda": paddle.version.cuda(),
           "cudnn": str(paddle.version.cudnn()), "gpus": []}
    if device == "gpu":
        for i in range(paddle.device.cuda.device_count()):
            p = paddle.device.cuda.get_device_properties(i)
            env["gpus"].append({"name": p.name, "capability": f"{p.major}.{p.minor}",
                                "memory_gib": round(p.total_memory / 2 ** 30, 1)})
        try:
            env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, timeout=30).stdout.split("\n")[0].strip()
        except (OSError, subprocess.SubprocessError):
            env["driver"] = "unknown (no nvidia-smi)"
    return env


def check_logits(args, device):
    """(a) The same float32 model's logits on the device and on the CPU, on the committed photos."""
    paddle.seed(0)
    model = create_model(args.model, img_size=args.img_size, num_classes=1000)
    model.eval()
    t = EvalTransform(args.img_size)
    photos = sorted(glob.glob(os.path.join(PHOTOS, "*", "*")))[:8]
    images = np.stack([t(p) for p in photos])
    with paddle.no_grad():
        here = model(paddle.to_tensor(images)).numpy()
        paddle.set_device("cpu")
        cpu = create_model(args.model, img_size=args.img_size, num_classes=1000)
        cpu.set_state_dict({k: paddle.to_tensor(v.numpy()) for k, v in model.state_dict().items()})
        cpu.eval()
        reference = cpu(paddle.to_tensor(images)).numpy()
        select_device(device)
    diff = float(np.abs(here - reference).max())
    return {"images": len(photos), "max_abs_diff": diff, "ok": diff <= LOGITS_TOL}


def make_trainer(args, device, mode, level, out_dir):
    """The repo's Trainer on the model, with the plan of Global.amp=mode at `level`; its data comes from run()."""
    cfg = load_config(SCHEMA_PATH, [f"Global.model={args.model}", f"Global.img_size={args.img_size}",
                                    f"Global.device={device}", f"Global.amp={mode}", f"Global.amp_level={level}",
                                    f"Global.output_dir={out_dir}", "Global.max_skips=1000", "EMA.decay=0.999",
                                    "Data.global_batch_size=512"])
    plan = AmpPlan.resolve(mode, level, device)
    if not plan.enabled and mode != "none":
        return None, "; ".join(plan.notes)
    paddle.seed(0)
    model = create_model(args.model, img_size=args.img_size, num_classes=1000)
    model, opt = plan.decorate(model, build_optimizer(model, cfg))
    opt.set_lr(1e-4)
    log = logging.getLogger("gpu_check")
    log.setLevel(logging.WARNING)  # the trainer's saves and loads; its loss-scale lines stay
    trainer = Trainer(cfg, Runtime(cfg), model, opt, None, None, None, None, 1, None, CheckpointDir(out_dir), log,
                      Scalars(out_dir, False, log), MetricsFile(out_dir, False), ema=ModelEMA(model, 0.999),
                      scaler=plan.loss_scale(), autocast=plan.autocast)
    return trainer, None


def batch(args, i):
    rng = np.random.RandomState(i)
    images = rng.standard_normal((args.batch, 3, args.img_size, args.img_size)).astype(np.float32)
    targets = np.full((args.batch, 1000), 0.1 / 1000, np.float32)
    targets[np.arange(args.batch), rng.randint(0, 1000, args.batch)] += 0.9
    return paddle.to_tensor(images), paddle.to_tensor(targets)


def step(trainer, args, i):
    paddle.seed(1000 + i)
    images, targets = batch(args, i)
    loss, _ = trainer.learn(images, targets, last=True)
    trainer.optimizer_step()
    return loss


def train(args, device, mode, level, out_dir):
    """(b) --steps steps: losses, the dtype of the residual stream entering the first block, images/s, memory."""
    trainer, why = make_trainer(args, device, mode, level, out_dir)
    if trainer is None:
        return {"run": False, "why": why}
    stream = []
    hook = trainer.model.blocks[0].register_forward_pre_hook(lambda layer, inputs: stream.append(str(inputs[0].dtype)))
    if device == "gpu" and hasattr(paddle.device.cuda, "reset_max_memory_allocated"):
        paddle.device.cuda.reset_max_memory_allocated()
    losses = [step(trainer, args, 0)]  # not timed: first-step kernels and the optimizer's state
    synchronize(device)
    start = time.perf_counter()
    losses += [step(trainer, args, i) for i in range(1, args.steps)]
    losses = paddle.stack(losses).numpy().tolist()
    seconds = time.perf_counter() - start
    hook.remove()
    out = {"run": True, "losses_finite": bool(np.isfinite(losses).all()), "first_loss": losses[0],
           "last_loss": losses[-1], "residual_stream": stream[0].split(".")[-1],
           "images_per_s": round(args.batch * (args.steps - 1) / seconds, 1),
           "fused_adamw": any(trainer.stepper.call.values()) and bool(trainer.stepper.groups)}
    if device == "gpu":
        out["peak_memory_gib"] = round(paddle.device.cuda.max_memory_allocated() / 2 ** 30, 2)
    if trainer.scaler:
        out["loss_scale"] = trainer.scaler.value.item()
    out["ok"] = out["losses_finite"] and out["residual_stream"] == "float32"
    return out


def resume(args, device, out_dir):
    """(c) Save after k steps; step k + 1's loss in the run and in a fresh model loaded from the checkpoint."""
    k = max(2, args.steps // 3)
    # Each run in a fresh name scope, as in a new process: optimizer states are keyed by parameter names.
    with paddle.utils.unique_name.guard():
        trainer, _ = make_trainer(args, device, "none", "O1", out_dir)
        for i in range(k):
            step(trainer, args, i)
        trainer.save()
        went_on = step(trainer, args, k).item()
    path = trainer.ckpts.path(0, 0)
    with paddle.utils.unique_name.guard():
        fresh, _ = make_trainer(args, device, "none", "O1", out_dir)
        fresh.restore(path, load_file(path))
        again = step(fresh, args, k).item()
    return {"after_steps": k, "loss": went_on, "loss_resumed": again, "ok": went_on == again}


def loader_rate(args, device, out_dir, train_rate):
    """(d) images/s of the training loader (decode, crop, RandAugment) with --workers workers on generated JPEGs."""
    rng = np.random.RandomState(0)
    count = args.batch * 4
    for i in range(count):
        folder = os.path.join(out_dir, "jpegs", "train", f"class{i % 4}")
        os.makedirs(folder, exist_ok=True)
        pixels = rng.randint(0, 256, (375, 500, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(os.path.join(folder, f"{i}.jpg"), quality=90)
    cfg = load_config(SCHEMA_PATH, [f"Data.root={os.path.join(out_dir, 'jpegs')}", "Data.train_list=",
                                    "Data.classes=folders", "Global.num_classes=4", f"Global.img_size={args.img_size}",
                                    f"Data.num_workers={args.workers}", f"Data.global_batch_size={args.batch}"])
    loader, _ = build_loader(cfg, "train", args.batch)
    start = time.perf_counter()
    seen = sum(b["image"].shape[0] for b in loader)
    synchronize(device)
    rate = seen / (time.perf_counter() - start)
    return {"workers": args.workers, "images": seen, "images_per_s": round(rate, 1),
            "training_images_per_s": train_rate, "loader_is_the_bottleneck": bool(train_rate and rate < train_rate),
            "ok": True}


def profile(args, device, out_dir):
    """(e) The share of 10 steps' wall time the device spends in kernels (GPU) or operators (CPU)."""
    import paddle.profiler as profiler
    trainer, _ = make_trainer(args, device, "none", "O1", out_dir)
    step(trainer, args, 0)
    targets = [profiler.ProfilerTarget.CPU] + ([profiler.ProfilerTarget.GPU] if device == "gpu" else [])
    prof = profiler.Profiler(targets=targets, on_trace_ready=lambda p: None)
    synchronize(device)
    prof.start()
    start = time.perf_counter_ns()
    for i in range(1, 11):
        step(trainer, args, i)
    synchronize(device)
    wall = time.perf_counter_ns() - start
    prof.stop()
    kind = "Kernel" if device == "gpu" else "Operator"
    spans = []

    def walk(node):
        if str(node.type).split(".")[-1] == kind:
            spans.append((node.start_ns, node.end_ns))
        for child in [*getattr(node, "children_node", []), *getattr(node, "runtime_node", []),
                      *getattr(node, "device_node", [])]:
            walk(child)
    for root in prof.profiler_result.get_data().values():
        walk(root)
    busy, end = 0, 0
    for a, b in sorted(spans):  # the union of the spans (operators nest)
        a = max(a, end)
        if b > a:
            busy, end = busy + b - a, b
    return {"steps": 10, "wall_ms": round(wall / 1e6, 1), "busy_ms": round(busy / 1e6, 1),
            "busy_share": round(busy / wall, 3) if wall else None, "ok": True}


def table(report):
    env = report["environment"]
    gpus = [f"{g['name']} (compute capability {g['capability']}, {g['memory_gib']} GiB)" for g in env["gpus"]]
    rows = [("environment", ", ".join([f"{env['device']}: Paddle {env['paddle']}", f"CUDA {env['cuda']}",
                                       f"cuDNN {env['cudnn']}"] + ([f"driver {env['driver']}"] if gpus else [])
                                      + gpus)),
            ("(a) logits", f"max |{report['environment']['device']} - cpu| {report['logits']['max_abs_diff']:.2e} "
                           f"(<= {LOGITS_TOL:g})")]
    for name, r in report["train"].items():
        rows.append((f"(b) {name}", "not run: " + r["why"] if not r["run"] else
                     f"losses {'finite' if r['losses_finite'] else 'NOT FINITE'} ({r['first_loss']:.4f} -> "
                     f"{r['last_loss']:.4f}), residual stream {r['residual_stream']}, {r['images_per_s']} images/s"
                     + (f", peak {r['peak_memory_gib']} GiB" if "peak_memory_gib" in r else "")
                     + (f", loss scale {r['loss_scale']:g}" if "loss_scale" in r else "")
                     + (", fused AdamW" if r["fused_adamw"] else ", per-tensor AdamW")))
    r = report["resume"]
    rows.append(("(c) resume", f"next loss {r['loss']!r} in the run, {r['loss_resumed']!r} resumed"))
    r = report["loader"]
    rows.append(("(d) loader", f"{r['images_per_s']} images/s with {r['workers']} worker(s) against "
                               f"{r['training_images_per_s']} training"
                               + (": the loader is the bottleneck" if r["loader_is_the_bottleneck"] else "")))
    r = report["profile"]
    rows.append(("(e) profile", f"{r['busy_share']:.0%} of {r['wall_ms']} ms busy in "
                                f"{'kernels' if report['environment']['device'] == 'gpu' else 'operators'}"))
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {'ok ' if ok else 'BAD'}  {v}" for (k, v), ok in zip(rows, report["row_ok"])]
    return "\n".join(lines + [f"verdict: {report['verdict']}"])


@cli
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="gpu_check.json", help="the JSON report")
    ap.add_argument("--model", default="t2t_vit_7")
    ap.add_argument("--steps", type=int, default=None, help="training steps per precision (GPU 30, CPU 3)")
    ap.add_argument("--batch", type=int, default=None, help="images per step (GPU 64, CPU 4)")
    ap.add_argument("--workers", type=int, default=4, help="data loader workers for (d)")
    add_verbose_flag(ap)
    args = ap.parse_args(argv)
    device = select_device("auto")
    tiny = device != "gpu"
    args.img_size = 32 if tiny else 224
    args.steps = args.steps or (3 if tiny else 30)
    args.batch = args.batch or (4 if tiny else 64)
    if tiny:
        args.workers = min(args.workers, 1)
    if args.steps < 3 or args.batch < 1:
        raise UserError("--steps must be at least 3 and --batch at least 1")
    report = {"environment": environment(device), "logits": check_logits(args, device), "train": {}}
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        for name, mode, level in PRECISIONS:
            report["train"][name] = train(args, device, mode, level, os.path.join(tmp, name.replace(" ", "_")))
        rates = [r["images_per_s"] for r in report["train"].values() if r["run"]]
        report["resume"] = resume(args, device, os.path.join(tmp, "resume"))
        report["loader"] = loader_rate(args, device, tmp, max(rates) if rates else None)
        report["profile"] = profile(args, device, os.path.join(tmp, "profile"))
    report["row_ok"] = [True, report["logits"]["ok"]] + [r["ok"] if r["run"] else True for r in
                                                         report["train"].values()] + \
                       [report[k]["ok"] for k in ("resume", "loader", "profile")]
    report["verdict"] = "accepted" if all(report["row_ok"]) else "NOT accepted: see the rows marked BAD"
    atomic.write_bytes(args.out, (json.dumps(report, indent=1) + "\n").encode())
    print(table(report))
    print(f"wrote {args.out}")
    return 0 if all(report["row_ok"]) else 1


if __name__ == "__main__":
    sys.exit(main())
