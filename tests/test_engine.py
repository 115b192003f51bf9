"""The training loop as parts, in-process with a tiny model: accumulation, the non-finite skip, and restore."""
import logging
import os

import numpy as np
import paddle
import pytest

from runner import ROOT
from t2tvit.batch_augment import BatchAugment
from t2tvit.checkpoint import CheckpointDir, load_file
from t2tvit.config import SCHEMA_PATH, load_config
from t2tvit.dataset import build_loader
from t2tvit.engine import Trainer, batch_plan
from t2tvit.errors import UserError
from t2tvit.optim import build_optimizer
from t2tvit.runtime import MetricsFile, Runtime, Scalars, read_metrics
from t2tvit.scheduler import WarmupCosineLR

SIZE = 16
# lit_data at 16 px, 5 optimizer steps of 4 images an epoch; no mixup, cutmix or erasing, so that one
# micro-batch of 4 and two of 2 compute the same update.
OVERRIDES = [f"Data.root={os.path.join(ROOT, 'lit_data')}", f"Global.img_size={SIZE}", "Global.num_classes=1000",
             "Global.epochs=3", "Data.global_batch_size=4", "Data.num_workers=0", "Augment.mixup=0",
             "Augment.cutmix=0", "Augment.reprob=0", "Scheduler.warmup_epochs=1", "Scheduler.cooldown_epochs=0",
             "Global.device=cpu", "EMA.enable=false", "Global.print_every=1"]


class Tiny(paddle.nn.Layer):
    """A linear classifier over the pixels; poison_calls: forward calls (0-based) whose logits are NaN."""

    def __init__(self, poison_calls=()):
        super().__init__()
        self.fc = paddle.nn.Linear(3 * SIZE * SIZE, 1000)
        self.poison_calls, self.calls = set(poison_calls), 0

    def forward(self, x):
        logits = self.fc(x.flatten(1))
        self.calls += 1
        return logits * float("nan") if self.calls - 1 in self.poison_calls else logits


def make_trainer(tmp_path, *overrides, batch=4, model=None):
    """A Trainer over Tiny, wired as tools/train.py wires the real one."""
    cfg = load_config(SCHEMA_PATH, OVERRIDES + [f"Global.output_dir={tmp_path / 'out'}",
                                                f"Global.log_dir={tmp_path / 'log'}", *overrides])
    rt = Runtime(cfg)
    per_device, accum = batch_plan(cfg.Data.global_batch_size, batch, rt.world)
    train_loader, sampler = build_loader(cfg, "train", per_device, accum_steps=accum)
    val_loader, _ = build_loader(cfg, "val", per_device)
    paddle.seed(0)
    model = model or Tiny()
    opt = build_optimizer(model, cfg)
    log = logging.getLogger("test_engine")
    return Trainer(cfg, rt, model, opt, WarmupCosineLR.from_config(cfg, sampler.steps_per_epoch), train_loader,
                   sampler, val_loader, accum, BatchAugment.from_config(cfg), CheckpointDir(cfg.Global.output_dir),
                   log, Scalars(cfg.Global.log_dir, False, log), MetricsFile(cfg.Global.log_dir, True))


def weights(trainer):
    return {k: v.numpy().copy() for k, v in trainer.model.state_dict().items()}


def test_batch_plan_takes_the_fewest_accumulation_steps_that_fit():
    assert batch_plan(512, 64, 8) == (64, 1)
    assert batch_plan(512, 128, 1) == (128, 4)
    assert batch_plan(4, 2, 1) == (2, 2)
    with pytest.raises(UserError, match="not divisible by the 3 devices"):
        batch_plan(512, 64, 3)


def test_two_accumulated_micro_batches_make_the_update_of_one_whole_batch(tmp_path):
    whole, split = make_trainer(tmp_path / "a"), make_trainer(tmp_path / "b", batch=2)
    assert (whole.accum, split.accum) == (1, 2)
    for t in (whole, split):
        t.train_epoch()
    a, b = weights(whole), weights(split)
    assert max(float(np.abs(a[k] - b[k]).max()) for k in a) < 1e-6
    assert split.model.calls == 2 * whole.model.calls == 10


def test_a_non_finite_loss_skips_the_optimizer_step_within_the_limit(tmp_path):
    t = make_trainer(tmp_path, "Global.nonfinite=skip", "Global.max_skips=1", model=Tiny(poison_calls={2}))
    t.train_epoch()
    assert t.skips == 1
    # AdamW counts its steps in its beta1 ** steps accumulators: one step fewer than a run without the NaN.
    clean = make_trainer(tmp_path / "clean")
    clean.train_epoch()
    skipped, taken = (sorted(float(np.asarray(v).reshape(-1)[0]) for k, v in x.opt.state_dict().items()
                             if "beta1_pow" in k) for x in (t, clean))
    assert skipped and skipped == pytest.approx([v / 0.9 for v in taken])
    assert all(np.isfinite(w).all() for w in weights(t).values())

    t = make_trainer(tmp_path / "over", "Global.nonfinite=skip", "Global.max_skips=1", model=Tiny(poison_calls={1, 3}))
    with pytest.raises(UserError, match=r"non-finite loss at epoch 1, step 3 \(skipped so far: 1\)"):
        t.train_epoch()
    t = make_trainer(tmp_path / "stop", model=Tiny(poison_calls={0}))  # Global.nonfinite: stop
    with pytest.raises(UserError, match=r"non-finite loss at epoch 1, step 0 \(skipped so far: 0\); last good "
                                        r"checkpoint: none yet"):
        t.train_epoch()


def test_restore_continues_a_run_exactly_from_a_mid_epoch_checkpoint(tmp_path):
    # Each run in a fresh name scope, as in a new process: optimizer states are keyed by parameter names.
    with paddle.utils.unique_name.guard():
        full = make_trainer(tmp_path / "full")
        for epoch in range(2):
            full.epoch, full.step = epoch, 0
            full.train_epoch()
    with paddle.utils.unique_name.guard():
        first = make_trainer(tmp_path / "cut", "Global.save_every_steps=2")
        first.train_epoch()  # saves (0, 2) and (0, 4) on the way
    path = first.ckpts.path(0, 2)
    with paddle.utils.unique_name.guard():
        again = make_trainer(tmp_path / "cut")
        again.restore(path, load_file(path))
        assert (again.epoch, again.step, again.skips) == (0, 2, 0)
        again.train_epoch()
        again.epoch, again.step = 1, 0
        again.train_epoch()
    a, b = weights(full), weights(again)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    # The cut run's metrics: epoch 1, then its steps 3-5 again from the checkpoint, then epoch 2.
    steps = [(r["epoch"], r["step"]) for r in read_metrics(str(tmp_path / "cut" / "log" / MetricsFile.NAME), "train")]
    assert steps == [(1, s) for s in range(1, 6)] + [(1, s) for s in range(3, 6)] + [(2, s) for s in range(1, 6)]


def test_restore_refuses_a_checkpoint_of_another_global_batch(tmp_path):
    t = make_trainer(tmp_path)
    t.save()
    other = make_trainer(tmp_path, "Data.global_batch_size=2")
    with pytest.raises(UserError, match=r"differs in Data.global_batch_size \(checkpoint 4, config 2\);"):
        other.restore(t.ckpts.latest, load_file(t.ckpts.latest))


@pytest.mark.parametrize("overrides,differ", [
    (["Global.img_size=32"], "Global.img_size (checkpoint 16, config 32)"),
    (["Global.num_classes=2000"], "Global.num_classes (checkpoint 1000, config 2000)"),
    (["Global.img_size=32", "Global.num_classes=2000"],
     "Global.img_size (checkpoint 16, config 32), Global.num_classes (checkpoint 1000, config 2000)"),
])
def test_restore_refuses_a_checkpoint_of_other_shapes_listing_every_differing_key(tmp_path, overrides, differ):
    t = make_trainer(tmp_path)
    t.save()
    other = make_trainer(tmp_path, *overrides)
    before = {k: v.numpy().copy() for k, v in other.model.state_dict().items()}
    with pytest.raises(UserError) as e:
        other.restore(t.ckpts.latest, load_file(t.ckpts.latest))
    assert f"differs in {differ}; " in str(e.value) and "\n" not in str(e.value)
    assert all(np.array_equal(v, other.model.state_dict()[k].numpy()) for k, v in before.items())  # untouched


def test_restore_loads_strictly_and_refuses_non_finite_weights(tmp_path):
    t = make_trainer(tmp_path)
    t.save()
    state = load_file(t.ckpts.latest)
    del state["model"]["fc.bias"]
    with pytest.raises(UserError, match=r"latest.pdckpt \(model\) does not fit model Tiny\(\): missing: fc.bias"):
        make_trainer(tmp_path).restore(t.ckpts.latest, state)
    state = load_file(t.ckpts.latest)
    state["model"]["fc.bias"] = state["model"]["fc.bias"] * float("nan")
    with pytest.raises(UserError, match=r"\(model\) holds non-finite \(NaN/inf\) weights in 1 tensor\(s\): "
                                        r"fc.bias \(1000 of 1000\)"):
        make_trainer(tmp_path).restore(t.ckpts.latest, state)


class FewClasses(Tiny):
    """Tiny with a 3-class head."""

    def __init__(self):
        super().__init__()
        self.fc = paddle.nn.Linear(3 * SIZE * SIZE, 3)


def test_the_validation_line_of_a_three_class_run_names_its_top_3(tmp_path, caplog):
    t = make_trainer(tmp_path, model=FewClasses())
    t.cfg = load_config(SCHEMA_PATH, OVERRIDES + ["Global.num_classes=3"])  # lit_data's lists hold ImageNet labels
    t.val_loader = [{"image": paddle.zeros([2, 3, SIZE, SIZE]), "label": paddle.to_tensor([0, 2])}]
    with caplog.at_level("INFO", logger="test_engine"):
        t.validate()
    assert [r.message for r in caplog.records if " val (" in r.message] == [
        "Epoch [1/3] val (model): top1 0.5000, top3 1.0000 on 2 images"]
