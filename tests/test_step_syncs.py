"""A training step the GPU never waits for, proved on CPU by counting: every way a tensor reaches the host (numpy,
item, float, int, bool, tolist, np.asarray) is wrapped, and the real T2T-ViT-7 recipe (mixup, cutmix, random
erasing, accumulation, EMA) runs an epoch. Steps between print steps must read nothing; the reads of a print step
all happen in Trainer.check(). Also counted: uploads (paddle.to_tensor) per micro-step, and the kernels a step
launches (Paddle's profiler), which the fused AdamW and the EMA views bring down.
"""
import collections
import contextlib
import os
import threading

import numpy as np
import paddle
import pytest

from runner import ROOT
from t2tvit.amp import LossScale
from t2tvit.batch_augment import BatchAugment
from t2tvit.checkpoint import CheckpointDir
from t2tvit.config import load_config
from t2tvit.dataset import build_loader
from t2tvit.ema import ModelEMA
from t2tvit.engine import Trainer, batch_plan
from t2tvit.optim import FusedAdamW, build_optimizer
from t2tvit.runtime import MetricsFile, Runtime, Scalars
from t2tvit.scheduler import WarmupCosineLR
from t2tvit.t2t import create_model

READS = ("numpy", "item", "__float__", "__int__", "__bool__", "tolist", "__array__", "__index__")
PRINT_EVERY = 3


def make_trainer(tmp_path, *overrides):
    """T2T-ViT-7 at 32 px on lit_data with the recipe's augmentation and EMA: 5 steps of 2 x 2 images."""
    cfg = load_config(os.path.join(ROOT, "config", "t2t_vit_7_demo.yaml"), [
        f"Data.root={os.path.join(ROOT, 'lit_data')}", "Global.img_size=32", "Global.device=cpu", "Global.epochs=3",
        "Data.global_batch_size=4", "Data.num_workers=0", f"Global.print_every={PRINT_EVERY}", "Augment.reprob=1.0",
        f"Global.output_dir={tmp_path / 'out'}", f"Global.log_dir={tmp_path / 'log'}", *overrides])
    rt = Runtime(cfg)
    batch, accum = batch_plan(cfg.Data.global_batch_size, 2, rt.world)
    train_loader, sampler = build_loader(cfg, "train", batch, accum_steps=accum)
    val_loader, _ = build_loader(cfg, "val", batch)
    paddle.seed(0)
    g = cfg.Global
    model = create_model(g.model, img_size=g.img_size, num_classes=g.num_classes)
    log = __import__("logging").getLogger("test_step_syncs")
    return Trainer(cfg, rt, model, build_optimizer(model, cfg), WarmupCosineLR.from_config(cfg, sampler.steps_per_epoch),
                   train_loader, sampler, val_loader, accum, BatchAugment.from_config(cfg),
                   CheckpointDir(cfg.Global.output_dir), log, Scalars(cfg.Global.log_dir, False, log),
                   MetricsFile(cfg.Global.log_dir, False), ema=ModelEMA(model, cfg.EMA.decay))


@contextlib.contextmanager
def counting(trainer):
    """Count, per optimizer step, the main thread's reads of tensors outside check() and inside it, and uploads."""
    counts = collections.defaultdict(collections.Counter)
    state = {"depth": 0, "in_check": False}
    main = threading.main_thread()
    originals = {name: getattr(paddle.Tensor, name) for name in READS}
    to_tensor = paddle.to_tensor

    def wrap(name, method):
        def counted(self, *args, **kwargs):
            if threading.current_thread() is main and state["depth"] == 0:
                counts[trainer.step]["check" if state["in_check"] else "read"] += 1
            state["depth"] += 1
            try:
                return method(self, *args, **kwargs)
            finally:
                state["depth"] -= 1
        return counted

    def upload(*args, **kwargs):
        if threading.current_thread() is main and state["depth"] == 0:
            counts[trainer.step]["upload"] += 1
        return to_tensor(*args, **kwargs)

    check = trainer.check

    def checked():
        state["in_check"] = True
        try:
            return check()
        finally:
            state["in_check"] = False

    for name, method in originals.items():
        setattr(paddle.Tensor, name, wrap(name, method))
    paddle.to_tensor, trainer.check = upload, checked
    try:
        yield counts
    finally:
        for name, method in originals.items():
            setattr(paddle.Tensor, name, method)
        paddle.to_tensor = to_tensor


@pytest.mark.parametrize("loss_scale", [False, True])
def test_steps_between_print_steps_read_nothing_back_from_the_device(tmp_path, loss_scale):
    trainer = make_trainer(tmp_path)
    if loss_scale:  # fp16's, which runs on a CPU too: an overflow is decided on the device
        trainer.scaler, trainer.loss_scale = LossScale(), LossScale.INIT
    N = trainer.sampler.steps_per_epoch
    with counting(trainer) as counts:
        trainer.train_epoch()
    print({step: dict(c) for step, c in sorted(counts.items())})
    # Tagged with trainer.step when they happen: the micro-steps of step s (0-based) count under s, the check of
    # a print step after the step counter moved on, under the number it prints.
    assert all(counts[s]["read"] == 0 for s in range(N + 1)), dict(counts)
    printed = [s for s in range(1, N + 1) if s % PRINT_EVERY == 0 or s == N]
    assert [s for s in range(N + 1) if counts[s]["check"]] == printed
    assert all(counts[s]["check"] <= 3 for s in printed)  # the loader's flag, the numbers, the loss scale
    # Random erasing (every sample erased here) sends its noise in one upload per micro-batch, not one per sample.
    assert all(counts[s]["upload"] <= trainer.accum for s in range(N)) and counts[0]["upload"] == trainer.accum


def _kernels_of_one_step(trainer):
    """Kernel launches (Paddle 3) or operators (Paddle 2.6, which does not record launches) of one step."""
    import paddle.profiler as profiler
    batches = iter(zip(trainer.train_loader, trainer.sampler))
    trainer.sampler.set_epoch(0)

    def step():
        for j in range(trainer.accum):
            batch, samples = next(batches)
            trainer.micro_step(batch["image"], batch["label"], [s for _, s in samples], j)
        trainer.optimizer_step()

    step()  # Paddle's own first AdamW step (it makes the optimizer's state), the EMA's views
    counted = collections.Counter()
    prof = profiler.Profiler(targets=[profiler.ProfilerTarget.CPU], on_trace_ready=lambda p: None)
    prof.start()
    step()
    prof.stop()

    def walk(node):
        counted[str(node.type).split(".")[-1]] += 1
        for child in node.children_node:
            walk(child)
    for root in prof.profiler_result.get_data().values():
        walk(root)
    return counted["DygraphKernelLaunch"] or counted["Operator"]


def test_a_step_launches_the_optimizer_and_the_ema_as_a_few_kernels(tmp_path):
    fused = make_trainer(tmp_path / "fused")
    plain = make_trainer(tmp_path / "plain")
    plain.stepper.groups = []  # Paddle's per-parameter AdamW
    plain.ema._views_hold = lambda: True

    def per_tensor_groups(model, ema=plain.ema):  # what update() does where Paddle cannot make the views
        ModelEMA._group(ema, model)
        ema._groups = [(averaged, names, tensors, None) for averaged, names, tensors, _ in ema._groups]
    plain.ema._group = per_tensor_groups
    n_fused, n_plain = _kernels_of_one_step(fused), _kernels_of_one_step(plain)
    print(f"kernels (or operators on Paddle 2.6) per step: {n_plain} per tensor, {n_fused} fused")
    # 108 adamw kernels become 2 fused ones and 108 lerps one (plus a concat); the rest of the step is the same.
    assert n_plain - n_fused >= 200
    a, b = (dict(t.model.named_parameters()) for t in (fused, plain))
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)  # and the same numbers
    ea, eb = fused.ema.state_dict(), plain.ema.state_dict()
    assert all(np.array_equal(ea[k].numpy(), eb[k].numpy()) for k in ea)


def test_the_fused_adamw_is_used_only_where_it_reproduces_paddles_step():
    model = create_model("t2t_vit_7", img_size=32, num_classes=10)
    opt = paddle.optimizer.AdamW(1e-3, parameters=model.parameters(), lazy_mode=True)
    stepper = FusedAdamW(opt)
    stepper.groups = None
    (model(paddle.rand([2, 3, 32, 32])).sum()).backward()
    stepper.step()
    assert stepper.groups == []  # lazy mode: not what the fused kernel computes, so Paddle's own step, always
    opt = build_optimizer(model, load_config(os.path.join(ROOT, "config", "t2t_vit_7.yaml")))
    stepper = FusedAdamW(opt)
    (model(paddle.rand([2, 3, 32, 32])).sum()).backward()
    stepper.step()
    assert sorted(len(group["params"]) for _, group in stepper.groups) == [38, 70]  # decayed, not
    assert stepper.call[paddle.float32] == ("3.x" if paddle.__version__.startswith("3") else "2.6")


@pytest.mark.parametrize("reprob", [0.0, 1.0])
def test_the_ema_views_hold_across_a_load_and_update_like_per_tensor_lerps(tmp_path, reprob):
    paddle.seed(1)
    model = create_model("t2t_vit_7", img_size=32, num_classes=10)
    ema = ModelEMA(model, 0.9)
    ema.update(model)
    assert ema._groups[0][3] is not None and ema._views_hold()
    # A load writes into the views (set_state_dict keeps the tensors' memory): the vector sees it.
    shifted = {k: v + 1.0 for k, v in ema.state_dict().items()}
    ema.set_state_dict(shifted)
    assert ema._views_hold()
    reference = {k: v.numpy().copy() for k, v in ema.state_dict().items()}
    with paddle.no_grad():
        for p in model.parameters():
            p.set_value(p + reprob)
    ema.update(model)
    named = dict(model.named_parameters())
    for k, v in ema.state_dict().items():
        w = named[k].numpy()
        want = w if named[k].stop_gradient else reference[k] + np.float32(0.1) * (w - reference[k])
        np.testing.assert_allclose(v.numpy(), want, rtol=1e-6, atol=1e-6)
