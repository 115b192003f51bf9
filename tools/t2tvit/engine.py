"""The loops of training and evaluation, written over parts handed to them (model, loaders, runtime, ...).

Like DeiT's engine.py: tools/train.py builds the parts from the config and hands them to Trainer, so the
loop can be tested in-process with a tiny model; tools/val.py calls evaluate().
"""
import contextlib
import math
import os

import numpy as np
import paddle

from .checkpoint import restore_training, training_state
from .ema import best_source
from .errors import UserError
from .mixup import soft_target_cross_entropy
from .preempt import GracefulStop, Interruptible, Stopped, resume_command, signal_name
from .run_identity import differences, shown
from .runtime import Timer, derived_seed, format_eta


@paddle.no_grad()
def evaluate(model, loader, runtime, log=None, print_every=0, observe=None):
    """Returns (top1, top5, images) over every rank's share of the set; observe(logits, batch), if given, sees
    each batch (eval_sets.py scores the ReaL labels so)."""
    was_training = model.training
    model.eval()
    correct1 = correct5 = seen = 0
    timer = Timer()
    read_time = 0.0
    for i, batch in enumerate(loader):
        images, labels = batch["image"], batch["label"]
        read_time += timer.lap()
        logits = model(images)
        top5 = paddle.topk(logits.astype("float32"), k=min(5, logits.shape[-1]), axis=-1)[1]
        hits = (top5 == labels.reshape([-1, 1]).astype(top5.dtype)).astype("int64")
        correct1 += int(hits[:, 0].sum())
        correct5 += int(hits.sum())
        seen += labels.shape[0]
        if observe:
            observe(logits, batch)
        timer.lap()
        if log and print_every and (i + 1) % print_every == 0:
            log.info(f"Step [{i + 1}/{len(loader)}], acc: {correct1 / seen:.4f}, read_time: {read_time / (i + 1):.4f}")
    correct1, correct5, seen = runtime.all_sum([correct1, correct5, seen])
    if was_training:  # Paddle 2.6's Layer.train() takes no argument
        model.train()
    return correct1 / max(seen, 1), correct5 / max(seen, 1), int(seen)


def batch_plan(global_batch, max_batch, world):
    """(per-device batch, accumulation steps): the fewest accumulation steps whose batch fits max_batch.

    The per-device batch is the largest divisor of global_batch / world that fits: found among the divisors,
    by trial division up to the square root (config.py bounds the global batch), not by trying every count.
    """
    if global_batch % world:
        raise UserError(f"Data.global_batch_size {global_batch} is not divisible by the {world} devices")
    share = global_batch // world
    small = [d for d in range(1, math.isqrt(share) + 1) if share % d == 0]
    fitting = [d for d in small + [share // d for d in small] if d <= max_batch]
    if not fitting:  # only when max_batch < 1
        raise UserError(f"no per-device batch <= Data.batch_size {max_batch} divides Data.global_batch_size "
                        f"{global_batch} over {world} devices")
    per_device = max(fitting)
    return per_device, share // per_device


class Trainer:
    """The recipe's epochs over the parts it is handed (train.py wires them from the config).

    It keeps the run's progress (epoch, step, best, skips), validates, checkpoints and stops at a step boundary
    when asked (preempt.py); every random draw is a function of (Global.seed, epoch, step, position in the
    global batch). cfg is read, never written.
    """

    def __init__(self, cfg, runtime, model, optimizer, schedule, train_loader, sampler, val_loader, accum,
                 augment, checkpoints, log, scalars, metrics, class_names=(), ema=None, scaler=None,
                 autocast=contextlib.nullcontext, stop=None, run_id=None):
        self.cfg, self.rt = cfg, runtime
        self.model, self.opt, self.sched, self.ema, self.scaler, self.autocast = (model, optimizer, schedule, ema,
                                                                                  scaler, autocast)
        self.net = paddle.DataParallel(model) if runtime.world > 1 else model
        self.train_loader, self.sampler, self.val_loader, self.accum = train_loader, sampler, val_loader, accum
        self.augment, self.ckpts, self.classes = augment, checkpoints, list(class_names)
        self.log, self.scalars, self.metrics = log, scalars, metrics
        self.stop = stop or GracefulStop()
        self.stopping = False  # set by optimizer_step when a stop was requested on any rank
        self.epoch, self.step, self.skips = 0, 0, 0
        self.best = {"acc": -1.0, "which": "model", "epoch": -1}
        self.saved_at = None
        self.run_id = run_id  # recorded in each checkpoint: which run wrote it

    def restore(self, path, state):
        """Continue the run saved in `state` (loaded from `path`): weights, optimizer, EMA, scaler, progress."""
        progress = restore_training(state, path, self.model, self.opt, self.ema, self.scaler,
                                    config=self.cfg.to_dict())
        self.epoch, self.step, self.best, self.skips = (progress[k] for k in ("epoch", "step", "best", "skips"))
        self.log.info(f"resumed from {path}: epoch {self.epoch + 1}, step {self.step}, best {self.best}"
                      + (f" (saved by run {state['run']})" if state.get("run") else ""))
        # Only --accept-changes lets a checkpoint of another config this far (CheckpointDir.resume_from).
        recorded = state.get("config")
        for key, old, new in differences(recorded, self.cfg.to_dict()) if isinstance(recorded, dict) else ():
            self.log.warning(f"config change accepted (--accept-changes) at epoch {self.epoch + 1}, step "
                             f"{self.step}: {key} {shown(old)} -> {shown(new)}")
            self.metrics.write(kind="config_change", epoch=self.epoch + 1, step=self.step, key=key, checkpoint=old,
                               config=new)

    def save(self, is_best=False):
        if not self.rt.is_main:
            return
        g = self.cfg.Global
        state = training_state(self.model, self.opt, self.ema, self.scaler,
                               progress={"epoch": self.epoch, "step": self.step, "best": self.best, "skips": self.skips},
                               arch=g.model, global_batch=self.cfg.Data.global_batch_size, img_size=g.img_size,
                               class_names=self.classes, config=self.cfg.to_dict(), run_id=self.run_id)
        path = self.ckpts.save(state, self.epoch, self.step, is_best)
        self.saved_at = (self.epoch, self.step)
        self.log.info(f"saved {path}{' (best)' if is_best else ''}")
        return path

    def micro_step(self, images, labels, seeds, j):
        """Forward and backward of one micro-batch; returns (loss, acc) as floats."""
        g = j * self.rt.world + self.rt.rank  # position in the global batch, not the device's id
        seed = self.cfg.Global.seed
        paddle.seed(derived_seed(seed, self.epoch, self.step, g))
        images, targets = self.augment(images, labels, seeds,
                                       np.random.RandomState(derived_seed(seed, self.epoch, self.step, g, 1)))
        loss, logits = self.learn(images, targets, last=j == self.accum - 1)
        acc = float((logits.argmax(axis=-1) == labels).astype("float32").mean())
        return float(loss), acc

    def learn(self, images, targets, last):
        """Loss and backward of one augmented micro-batch, its gradient scaled by 1 / accum and accumulated;
        returns (loss, logits). Apart from micro_step, the training-step parity test calls it with the official
        code's batches (tests/test_official_train_step.py)."""
        # Paddle's recompute (grad checkpointing) runs a backward inside the backward, which DataParallel's reducer
        # cannot follow: its gradients are then averaged over the devices here, as the reducer averages them.
        by_hand = self.rt.world > 1 and self.model.grad_checkpointing
        sync = contextlib.nullcontext() if (last and not by_hand) or self.rt.world == 1 else self.net.no_sync()
        with sync:
            with self.autocast():
                logits = self.net(images)
            loss = soft_target_cross_entropy(logits.astype("float32"), targets)
            scaled = loss / self.accum
            (self.scaler.scale(scaled) if self.scaler else scaled).backward()
        if last and by_hand:
            from paddle.distributed.fleet.utils.hybrid_parallel_util import fused_allreduce_gradients
            fused_allreduce_gradients(list(self.model.parameters()), None)
        return loss, logits

    def optimizer_step(self, loss_is_finite):
        # One all-reduce per step: do all ranks have a finite loss, and has any been asked to stop?
        finite, stops = self.rt.all_sum([float(loss_is_finite), float(self.stop.requested)])
        self.stopping = stops > 0  # the same answer on every rank, so all stop after this very step
        if self.scaler:  # the loss scaler skips steps with inf/nan gradients by itself
            self.scaler.step(self.opt)
            self.scaler.update()
        elif finite < self.rt.world:  # every rank must agree to skip
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
        for i, batch in enumerate(self.train_loader):
            read_t += timer.lap()
            j = i % self.accum
            if j == 0:
                lr = self.sched.lr_at(self.epoch, self.step)
                self.opt.set_lr(lr)
            loss, acc = self.micro_step(batch["image"], batch["label"], batch["seed"], j)
            losses.append(loss), accs.append(acc)
            bad += int(batch["n_bad"].sum())
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
                    self.metrics.write(kind="train", epoch=self.epoch + 1, epochs=E, step=self.step, steps=N,
                                       loss=np.mean(losses), acc=np.mean(accs), read_time=read_t / k,
                                       train_time=train_t / k, lr=lr, ips=cfg.Data.global_batch_size / step_t,
                                       eta=left * step_t)
                    read_t, train_t, losses, accs = 0.0, 0.0, [], []
                if cfg.Global.save_every_steps and self.step % cfg.Global.save_every_steps == 0 and self.step < N:
                    self.save()
                if self.stopping or (self.rt.world == 1 and self.stop.requested):  # one process: no need to agree
                    raise Stopped(self.stop.signum)
            train_t += timer.lap()
        bad = int(self.rt.all_sum([bad])[0])
        if bad:
            self.log.warning(f"Epoch [{self.epoch + 1}/{E}]: {bad} unreadable training image(s) replaced")

    def validate(self):
        top1, top5, n = evaluate(self.model, self.val_loader, self.rt)
        results = {"model": (top1, top5)}
        if self.ema:
            results["ema"] = evaluate(self.ema.module, self.val_loader, self.rt)[:2]
        which = best_source(results, self.cfg.EMA.best)
        for name, (t1, t5) in results.items():
            self.log.info(f"Epoch [{self.epoch + 1}/{self.cfg.Global.epochs}] val ({name}): top1 {t1:.4f}, "
                          f"top5 {t5:.4f} on {n} images")
            prefix = "val" if name == "model" else "val_ema"
            self.scalars.add(f"{prefix}/top1", t1, self.epoch + 1)
            self.scalars.add(f"{prefix}/top5", t5, self.epoch + 1)
            self.metrics.write(kind="val", epoch=self.epoch + 1, epochs=self.cfg.Global.epochs, model=name, top1=t1,
                               top5=t5, images=n)
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
        self.metrics.write(kind="best", top1=self.best["acc"], model=self.best["which"], epoch=self.best["epoch"])
        self.scalars.close()
        self.metrics.close()

    def run(self):
        """fit(), stopping at a step boundary every rank agrees on when a signal asks (preempt.py)."""
        for loader in (self.train_loader, self.val_loader):
            self.stop.adopt_workers(loader)
        self.val_loader = Interruptible(self.val_loader, self.stop, self.rt)
        try:
            self.fit()
        except Stopped as stop:
            try:
                self.stop_here(stop)
            except Stopped as again:  # a second signal while saving: the checkpoint of this step is dropped
                self.stop_here(again)
                raise again from None
            raise

    def stop_here(self, stop):
        """Checkpoint the step boundary every rank agreed on (unless saved already) and say how to resume.

        A stop during validation saves (epoch, steps_per_epoch): the resumed run validates that epoch again.
        """
        where = f"epoch {self.epoch + 1}/{self.cfg.Global.epochs}, step {self.step}/{self.sampler.steps_per_epoch}"
        if stop.at_once:
            path = self.ckpts.latest if os.path.isfile(self.ckpts.latest) else None
            what = (f"stopped at once by a second {signal_name(stop.signum)} at {where} (work since the newest "
                    f"checkpoint is lost): newest complete checkpoint {path or 'none yet'}")
        else:
            if self.saved_at != (self.epoch, self.step):
                self.save()
            path = self.ckpts.path(self.epoch, self.step)
            self.rt.all_sum([0.0])  # no rank exits (which makes the launcher end the others) before the save
            what = f"stopped by {signal_name(self.stop.signum)} at {where}, checkpoint {path}"
        self.stop.exiting()
        stop.logged = True
        if self.rt.is_main:
            self.log.warning(f"{what}; resume with: {resume_command(path)}" if path else
                             f"{what}; no checkpoint yet: start again with the same command")
