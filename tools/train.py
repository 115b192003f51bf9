"""Train T2T-ViT from a YAML config, on one device or many.

    python tools/train.py -c config/t2t_vit_7.yaml [-o Section.key=value ...]
    python -m paddle.distributed.launch --devices 0,1,2,3 tools/train.py -c config/t2t_vit_7.yaml

The config states the global batch; per-device batch x devices x accumulation steps always equals it, and
every random draw (data order, augmentation, mixup, drop path) is a function of (seed, epoch, step, and the
position of the micro-batch in the global batch). So 1, 4 or 8 devices follow the same recipe, and a run
resumed from any checkpoint continues exactly as if it had never stopped.
"""
import cpu_env  # noqa: F401  (first: sets CPU threads before Paddle loads)
import argparse
import contextlib
import math
import os
import sys

import numpy as np
import paddle

from checkpoint import CheckpointDir, load_file, load_weights
from config import add_config_args, config_from_args
from dataset import build_loader, class_names
from ema import ModelEMA
from errors import UserError, cli
from mixup import MixupCutmix, soft_target_cross_entropy
from optim import build_optimizer
from runtime import Runtime, Scalars, Timer, amp_context, derived_seed, format_eta, make_logger
from scheduler import WarmupCosineLR
from t2t import create_model
from val import evaluate


def batch_plan(global_batch, max_batch, world):
    """(per-device batch, accumulation steps): the fewest accumulation steps whose batch fits max_batch."""
    if global_batch % world:
        raise UserError(f"Data.global_batch_size {global_batch} is not divisible by the {world} devices")
    for accum in range(1, global_batch // world + 1):
        per_device, rest = divmod(global_batch, world * accum)
        if rest == 0 and per_device <= max_batch:
            return per_device, accum
    raise UserError(f"no per-device batch <= Data.batch_size {max_batch} divides Data.global_batch_size "
                    f"{global_batch} over {world} devices")


class Trainer:
    def __init__(self, cfg):
        g = cfg.Global
        self.cfg, self.rt = cfg, Runtime(cfg)
        self.log = make_logger("train", os.path.join(g.log_dir, "train.log"), self.rt.is_main)
        self.scalars = Scalars(g.log_dir, self.rt.is_main, self.log)
        batch, self.accum = batch_plan(cfg.Data.global_batch_size, cfg.Data.batch_size, self.rt.world)
        cfg.Data.batch_size = batch
        self.log.info(f"config:\n{cfg.dump()}")
        self.log.info(f"global batch {cfg.Data.global_batch_size} = {batch} per device x {self.rt.world} "
                      f"device(s) x {self.accum} accumulation step(s), on {self.rt.device}")
        self.train_loader, self.sampler = build_loader(cfg, "train", self.rt.world, self.rt.rank, self.accum)
        self.val_loader, _ = build_loader(cfg, "val", self.rt.world, self.rt.rank)
        self.classes = class_names(cfg)
        paddle.seed(g.seed)
        self.model = create_model(g.model, img_size=g.img_size, num_classes=g.num_classes,
                                  drop_rate=cfg.Model.drop_rate, attn_drop_rate=cfg.Model.attn_drop_rate,
                                  drop_path_rate=cfg.Model.drop_path_rate)
        self.opt = build_optimizer(self.model, cfg)
        self.autocast, note = amp_context(g.amp, g.amp_level, self.rt.device)
        amp_on = note is None and g.amp != "none"
        if note:
            self.log.warning(note)
        self.scaler = paddle.amp.GradScaler() if amp_on and g.amp == "fp16" else None
        if amp_on and g.amp_level == "O2":
            self.model, self.opt = paddle.amp.decorate(self.model, self.opt, level="O2",
                                                       dtype="float16" if g.amp == "fp16" else "bfloat16")
        self.ema = ModelEMA(self.model, cfg.EMA.decay) if cfg.EMA.enable else None
        self.net = paddle.DataParallel(self.model) if self.rt.world > 1 else self.model
        self.sched = WarmupCosineLR.from_config(cfg, self.sampler.steps_per_epoch)
        a = cfg.Augment
        self.mixer = MixupCutmix(a.mixup, a.cutmix, a.mixup_prob, a.switch_prob, a.smoothing, g.num_classes)
        self.ckpts = CheckpointDir(g.output_dir, g.keep_last)
        if self.rt.is_main:
            self.ckpts.remove_stale_temporaries()
        self.epoch, self.step, self.skips = 0, 0, 0
        self.best = {"acc": -1.0, "which": "model", "epoch": -1}
        self._restore()

    def _restore(self):
        path = self.ckpts.resume_path(self.cfg.Global.resume)
        if path is None:
            if self.cfg.Global.pretrained:
                which, notes = load_weights(self.model, self.cfg.Global.pretrained, drop_head=True)
                self.log.info(f"fine-tuning from {self.cfg.Global.pretrained} ({which}); " + "; ".join(notes))
                if self.ema:
                    self.ema.set_state_dict(self.model.state_dict())
            return
        state = load_file(path)
        if state.get("global_batch") != self.cfg.Data.global_batch_size or state.get("arch") != self.cfg.Global.model:
            raise UserError(f"{path} is a {state.get('arch')} run with global batch {state.get('global_batch')}; "
                            f"this config trains {self.cfg.Global.model} with {self.cfg.Data.global_batch_size}")
        self.model.set_state_dict(state["model"])
        self.opt.set_state_dict(state["optimizer"])
        if self.ema and state.get("ema"):
            self.ema.set_state_dict(state["ema"])
        if self.scaler and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step, self.best, self.skips = state["epoch"], state["step"], state["best"], state["skips"]
        self.log.info(f"resumed from {path}: epoch {self.epoch + 1}, step {self.step}, best {self.best}")

    def save(self, is_best=False):
        if not self.rt.is_main:
            return
        state = {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                 "ema": self.ema.state_dict() if self.ema else {}, "scaler": self.scaler.state_dict() if self.scaler else {},
                 "epoch": self.epoch, "step": self.step, "best": self.best, "best_which": self.best["which"],
                 "skips": self.skips, "arch": self.cfg.Global.model, "global_batch": self.cfg.Data.global_batch_size,
                 "img_size": self.cfg.Global.img_size, "class_names": self.classes, "config": self.cfg.to_dict()}
        path = self.ckpts.save(state, self.epoch, self.step, is_best)
        self.log.info(f"saved {path}{' (best)' if is_best else ''}")

    def micro_step(self, images, labels, j):
        """Forward and backward of one micro-batch; returns (loss, acc) as floats."""
        g = j * self.rt.world + self.rt.rank  # position in the global batch, not the device's id
        seed = self.cfg.Global.seed
        paddle.seed(derived_seed(seed, self.epoch, self.step, g))
        images, targets = self.mixer(images, labels, np.random.RandomState(derived_seed(seed, self.epoch, self.step, g, 1)))
        last = j == self.accum - 1
        sync = contextlib.nullcontext() if last or self.rt.world == 1 else self.net.no_sync()
        with sync:
            with self.autocast():
                logits = self.net(images)
            loss = soft_target_cross_entropy(logits.astype("float32"), targets)
            scaled = loss / self.accum
            (self.scaler.scale(scaled) if self.scaler else scaled).backward()
        acc = float((logits.argmax(axis=-1) == labels).astype("float32").mean())
        return float(loss), acc

    def optimizer_step(self, loss_is_finite):
        if self.scaler:  # the loss scaler skips steps with inf/nan gradients by itself
            self.scaler.step(self.opt)
            self.scaler.update()
        elif self.rt.all_sum([float(loss_is_finite)])[0] < self.rt.world:  # every rank must agree to skip
            self.skips += 1
            where = f"non-finite loss at epoch {self.epoch + 1}, step {self.step}"
            if self.cfg.Global.nonfinite == "stop" or self.skips > self.cfg.Global.max_skips:
                last = self.ckpts.latest if os.path.isfile(self.ckpts.latest) else "none yet"
                raise UserError(f"{where} (skipped so far: {self.skips - 1}); last good checkpoint: {last}. "
                                "Lower Optimizer.lr, or set Global.nonfinite=skip")
            self.log.warning(f"{where}: step skipped ({self.skips}/{self.cfg.Global.max_skips})")
        else:
            self.opt.step()
        self.opt.clear_grad()
        if self.ema:
            self.ema.update(self.model)

    def train_epoch(self):
        cfg, E, N = self.cfg, self.cfg.Global.epochs, self.sampler.steps_per_epoch
        self.sampler.set_epoch(self.epoch, self.step)
        timer, read_t, train_t, losses, accs, bad = Timer(), 0.0, 0.0, [], [], 0
        for i, (images, labels, n_bad) in enumerate(self.train_loader):
            read_t += timer.lap()
            j = i % self.accum
            if j == 0:
                lr = self.sched.lr_at(self.epoch, self.step)
                self.opt.set_lr(lr)
            loss, acc = self.micro_step(images, labels, j)
            losses.append(loss), accs.append(acc)
            bad += int(n_bad.sum())
            if j == self.accum - 1:
                self.optimizer_step(all(math.isfinite(x) for x in losses[-self.accum:]))
                self.step += 1
                if self.step % cfg.Global.print_every == 0 or self.step == N:
                    train_t += timer.lap()
                    k = len(losses) // self.accum
                    step_t = (read_t + train_t) / k
                    left = (N - self.step) + (E - self.epoch - 1) * N
                    self.log.info(f"Epoch [{self.epoch + 1}/{E}], Step [{self.step}/{N}], Loss: {np.mean(losses):.4f}, "
                                  f"acc: {np.mean(accs):.4f}, read_time: {read_t / k:.4f}, train_time: {train_t / k:.4f}, "
                                  f"lr: {lr:.6f}, ips: {cfg.Data.global_batch_size / step_t:.1f} images/s, "
                                  f"eta: {format_eta(left * step_t)}")
                    gstep = self.epoch * N + self.step
                    for tag, v in (("train/loss", np.mean(losses)), ("train/acc", np.mean(accs)), ("train/lr", lr)):
                        self.scalars.add(tag, v, gstep)
                    read_t, train_t, losses, accs = 0.0, 0.0, [], []
                if cfg.Global.save_every_steps and self.step % cfg.Global.save_every_steps == 0 and self.step < N:
                    self.save()
            train_t += timer.lap()
        bad = int(self.rt.all_sum([bad])[0])
        if bad:
            self.log.warning(f"Epoch [{self.epoch + 1}/{E}]: {bad} unreadable training image(s) replaced")

    def validate(self):
        top1, top5, n = evaluate(self.model, self.val_loader, self.rt)
        results = {"model": (top1, top5)}
        if self.ema:
            results["ema"] = evaluate(self.ema.module, self.val_loader, self.rt)[:2]
        which = max(results, key=lambda k: results[k][0])
        for name, (t1, t5) in results.items():
            self.log.info(f"Epoch [{self.epoch + 1}/{self.cfg.Global.epochs}] val ({name}): top1 {t1:.4f}, "
                          f"top5 {t5:.4f} on {n} images")
            prefix = "val" if name == "model" else "val_ema"
            self.scalars.add(f"{prefix}/top1", t1, self.epoch + 1)
            self.scalars.add(f"{prefix}/top5", t5, self.epoch + 1)
        is_best = results[which][0] > self.best["acc"]
        if is_best:
            self.best = {"acc": results[which][0], "which": which, "epoch": self.epoch + 1}
        return is_best

    def fit(self):
        E = self.cfg.Global.epochs
        while self.epoch < E:
            self.train_epoch()
            last = self.epoch == E - 1
            is_best = self.validate() if last or (self.epoch + 1) % self.cfg.Global.eval_every == 0 else False
            self.epoch, self.step = self.epoch + 1, 0
            self.save(is_best)
        self.log.info(f"best val top1 {self.best['acc']:.4f} ({self.best['which']}, epoch {self.best['epoch']}); "
                      f"checkpoints in {self.cfg.Global.output_dir}")
        self.scalars.close()


@cli
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_config_args(ap)
    ap.add_argument("--resume", default=None, help="checkpoint to resume from (overrides Global.resume)")
    args = ap.parse_args(argv)
    cfg = config_from_args(args)
    if args.resume is not None:
        cfg.Global.resume = args.resume
    Trainer(cfg).fit()


if __name__ == "__main__":
    sys.exit(main())
