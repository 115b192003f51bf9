"""The loops of training and evaluation, written over parts handed to them (model, loaders, runtime, ...).

Like DeiT's engine.py: tools/train.py builds the parts from the config and hands them to Trainer, so the
loop can be tested in-process with a tiny model; tools/val.py calls evaluate().
"""
import contextlib
import math
import os

import numpy as np
import paddle

from . import watchdog
from .amp import MasterWeights, load_into
from .checkpoint import restore_training, training_state
from .ema import best_source
from .errors import UserError
from .mixup import soft_target_cross_entropy
from .optim import FusedAdamW
from .preempt import GracefulStop, Interruptible, Stopped, resume_command, signal_name
from .run_identity import differences, shown
from .runtime import Timer, derived_seed, format_eta


@paddle.no_grad()
def evaluate(model, loader, runtime, log=None, print_every=0, observe=None, autocast=contextlib.nullcontext):
    """Returns (top1, top5, images) over every rank's share of the set; observe(logits, batch), if given, sees
    each batch (eval_sets.py scores the ReaL labels so). The hit counts stay on the device until the end (or a
    print step); autocast: the training run's, as the official validate() runs under its amp."""
    was_training = model.training
    model.eval()
    correct = None  # device: [top-1 hits, top-5 hits]
    seen = 0
    timer = Timer()
    read_time = 0.0
    for i, batch in enumerate(loader):
        images, labels = batch["image"], batch["label"]
        read_time += timer.lap()
        with autocast():
            logits = model(images)
        top5 = paddle.topk(logits.astype("float32"), k=min(5, logits.shape[-1]), axis=-1)[1]
        hits = (top5 == labels.reshape([-1, 1]).astype(top5.dtype)).astype("int64")
        hits = paddle.stack([hits[:, 0].sum(), hits.sum()])
        correct = hits if correct is None else correct + hits
        seen += labels.shape[0]
        if observe:
            observe(logits, batch)
        timer.lap()
        if log and print_every and (i + 1) % print_every == 0:
            log.info(f"Step [{i + 1}/{len(loader)}], acc: {int(correct[0]) / seen:.4f}, "
                     f"read_time: {read_time / (i + 1):.4f}")
    correct1, correct5 = correct.numpy().tolist() if correct is not None else (0, 0)
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

    The device is never waited for inside a step: losses, accuracies, the loss scale and the loaders' failure
    flags stay where they are computed and check() reads them all at once, at print steps (and before a save or
    a validation), where the run stops on a non-finite loss or a loss scale that keeps overflowing. Only
    Global.nonfinite=skip reads each step's loss, and fp16 each step's overflow flag, to skip exactly that step.
    """

    def __init__(self, cfg, runtime, model, optimizer, schedule, train_loader, sampler, val_loader, accum,
                 augment, checkpoints, log, scalars, metrics, class_names=(), ema=None, scaler=None,
                 autocast=contextlib.nullcontext, stop=None, run_id=None):
        self.cfg, self.rt = cfg, runtime
        self.model, self.opt, self.sched, self.ema, self.scaler, self.autocast = (model, optimizer, schedule, ema,
                                                                                  scaler, autocast)
        self.stepper = FusedAdamW(optimizer)
        self.net = paddle.DataParallel(model) if runtime.world > 1 else model
        self.train_loader, self.sampler, self.val_loader, self.accum = train_loader, sampler, val_loader, accum
        self.augment, self.ckpts, self.classes = augment, checkpoints, list(class_names)
        self.log, self.scalars, self.metrics = log, scalars, metrics
        self.stop = stop or GracefulStop()
        self.stopping = False  # set when every rank has agreed to stop after this step
        self.epoch, self.step, self.skips = 0, 0, 0
        self.best = {"acc": -1.0, "which": "model", "epoch": -1}
        self.saved_at = None
        self.run_id = run_id  # recorded in each checkpoint: which run wrote it
        # Optimizer steps taken since the last check(), as (step, [loss, ...], [acc, ...], images replaced) of
        # device scalars, and the numbers read since the last log line.
        self.unread, self.losses, self.accs, self.replaced = [], [], [], 0
        self.loss_scale = scaler.value.item() if scaler else None  # as last logged

    def restore(self, path, state):
        """Continue the run saved in `state` (loaded from `path`): weights, optimizer, EMA, scaler, progress."""
        weights = state["model"]
        halves = {k: p.dtype for k, p in self.model.named_parameters() if p.dtype in (paddle.float16, paddle.bfloat16)}
        if halves:  # AMP O2: the file's float32 weights load as the model's half-precision ones, then as masters
            # (a loaded file holds numpy arrays or Tensors: to_tensor of a Tensor warns, so only arrays go through it)
            state = dict(state, model={k: (v if isinstance(v, paddle.Tensor) else paddle.to_tensor(v)).astype(halves[k])
                                       if k in halves else v for k, v in weights.items()})
        progress = restore_training(state, path, self.model, self.opt, self.ema, self.scaler,
                                    config=self.cfg.to_dict())
        load_into(self.model, self.opt, weights)
        self.stepper.reset()
        if self.scaler:
            self.loss_scale = self.scaler.value.item()
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
        """Checkpoint this step (rank 0); every rank calls check() first, so nothing non-finite is saved."""
        if not self.rt.is_main:
            return
        g = self.cfg.Global
        weights = MasterWeights(self.model, self.opt)
        state = training_state(weights, self.opt, self.ema, self.scaler,
                               progress={"epoch": self.epoch, "step": self.step, "best": self.best, "skips": self.skips},
                               arch=g.model, global_batch=self.cfg.Data.global_batch_size, img_size=g.img_size,
                               class_names=self.classes, config=self.cfg.to_dict(), run_id=self.run_id)
        path = self.ckpts.save(state, self.epoch, self.step, is_best)
        self.saved_at = (self.epoch, self.step)
        self.log.info(f"saved {path}{' (best)' if is_best else ''}")
        return path

    def micro_step(self, images, labels, seeds, j):
        """Forward and backward of one micro-batch; returns (loss, acc) as device scalars."""
        g = j * self.rt.world + self.rt.rank  # position in the global batch, not the device's id
        seed = self.cfg.Global.seed
        paddle.seed(derived_seed(seed, self.epoch, self.step, g))
        images, targets = self.augment(images, labels, seeds,
                                       np.random.RandomState(derived_seed(seed, self.epoch, self.step, g, 1)))
        loss, logits = self.learn(images, targets, last=j == self.accum - 1)
        return loss.detach(), (logits.argmax(axis=-1) == labels).astype("float32").mean()

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

    def optimizer_step(self, loss_is_finite=True):
        """Apply the accumulated gradients. loss_is_finite is this rank's verdict on the step's losses, which only
        Global.nonfinite=skip reads on the host (to skip exactly that step, agreed by every rank); otherwise a
        non-finite loss is found by check(). With fp16's loss scale, a step whose gradients overflowed is not
        taken: weights, AdamW's moments and its step count stay as they are, as under the official run's
        GradScaler."""
        if self.skip_each_step:
            # One all-reduce per step: do all ranks have a finite loss, and has any been asked to stop?
            finite, stops = self.rt.all_sum([float(loss_is_finite), float(self.stop.requested)])
            self.stopping = stops > 0  # the same answer on every rank, so all stop after this very step
            if finite < self.rt.world:  # every rank must agree to skip
                self.skips += 1
                where = f"non-finite loss at epoch {self.epoch + 1}, step {self.step}"
                if self.skips > self.cfg.Global.max_skips:
                    self.refuse(f"{where} (skipped so far: {self.skips - 1})",
                                "Lower Optimizer.lr, or set Global.nonfinite=skip")
                self.log.warning(f"{where}: step skipped ({self.skips}/{self.cfg.Global.max_skips})")
                self.opt.clear_grad()
                if self.ema:
                    self.ema.update(self.model)
                return
        # The one read of an fp16 step, as torch's GradScaler (the official run's) and Paddle's make: skipping the
        # optimizer call exactly needs the overflow flag on the host. A step taken with a zero learning rate
        # instead would keep the weights but decay the moments and advance the bias correction.
        if not (self.scaler and bool(self.scaler.unscale(self.model.parameters()))):
            self.stepper.step()
        self.opt.clear_grad()
        if self.ema:
            self.ema.update(self.model)

    @property
    def skip_each_step(self):
        return self.cfg.Global.nonfinite == "skip" and self.scaler is None

    def refuse(self, what, advice):
        """End the run with one line: what happened, the newest complete checkpoint, what to do."""
        last = self.ckpts.latest if os.path.isfile(self.ckpts.latest) else "none yet"
        raise UserError(f"{what}; last good checkpoint: {last}. {advice}")

    def check(self):
        """Read what the steps since the last check left on the device, in one copy, and act on it: a loader's
        failed sample, a non-finite loss (Global.nonfinite=stop), the fp16 loss scale; on several processes, agree
        on a stop request. The one place the training loop waits for the device."""
        if self.train_loader is not None and hasattr(self.train_loader, "check"):
            self.train_loader.check()
        if not self.unread:
            return
        steps = [step for step, _, _, _ in self.unread]
        values = paddle.stack([v for _, losses, accs, replaced in self.unread
                               for v in losses + accs + [replaced.astype("float32")]]).numpy()
        values = values.astype(np.float64).reshape([len(steps), 2 * self.accum + 1])
        self.unread = []
        losses, accs = values[:, :self.accum], values[:, self.accum:-1]
        self.losses += losses.ravel().tolist()
        self.accs += accs.ravel().tolist()
        self.replaced += int(values[:, -1].sum())
        bad = [float(not np.isfinite(step_losses).all()) for step_losses in losses]
        if self.rt.world > 1 and not self.skip_each_step:
            *bad, stops = self.rt.all_sum(bad + [float(self.stop.requested)])
            self.stopping = stops > 0
        if self.scaler:
            self.check_loss_scale(steps[-1])
        elif not self.skip_each_step and any(bad):
            step = steps[next(i for i, b in enumerate(bad) if b)]
            self.refuse(f"non-finite loss at epoch {self.epoch + 1}, step {step} (skipped so far: {self.skips})",
                        "Lower Optimizer.lr, or set Global.nonfinite=skip")

    def check_loss_scale(self, step):
        """Log a drop of the fp16 loss scale; end the run when it keeps overflowing."""
        scale, longest, skipped, floored = self.scaler.read()
        self.skips += skipped
        where = f"epoch {self.epoch + 1}, step {step}"
        if scale < self.loss_scale:
            self.log.warning(f"fp16 loss scale {self.loss_scale:g} -> {scale:g} by {where}: {skipped} overflowing "
                             f"step(s) skipped since the last line ({self.skips} in all)")
        self.loss_scale = scale
        advice = "Lower Optimizer.lr, or train with Global.amp=bf16 (compute capability 8.0) or none"
        if longest > self.cfg.Global.max_skips:
            self.refuse(f"{longest} fp16 steps in a row overflowed by {where} (Global.max_skips "
                        f"{self.cfg.Global.max_skips}), loss scale {scale:g}", advice)
        if floored:
            self.refuse(f"the fp16 loss scale is at its floor (1) and {floored} more step(s) overflowed by {where}",
                        advice)

    def train_epoch(self):
        cfg, E, N = self.cfg, self.cfg.Global.epochs, self.sampler.steps_per_epoch
        self.sampler.set_epoch(self.epoch, self.step)
        timer, read_t, train_t, k = Timer(), 0.0, 0.0, 0
        self.replaced = 0  # unreadable training images replaced this epoch (read at check())
        # The sampler again, beside the loader's own pass over it: the host's copy of each batch's sample seeds.
        for i, (batch, samples) in enumerate(zip(self.train_loader, self.sampler)):
            read_t += timer.lap()
            j = i % self.accum
            if j == 0:
                lr = self.sched.lr_at(self.epoch, self.step)
                self.opt.set_lr(lr)
                losses, accs, replaced = [], [], 0
            loss, acc = self.micro_step(batch["image"], batch["label"], [seed for _, seed in samples], j)
            losses.append(loss), accs.append(acc)
            replaced = batch["n_bad"].sum() + replaced
            if j == self.accum - 1:
                finite = bool(paddle.isfinite(paddle.stack(losses)).all()) if self.skip_each_step else True
                self.optimizer_step(finite)
                self.unread.append((self.step, losses, accs, replaced))
                self.step, k = self.step + 1, k + 1
                watchdog.progress()  # the host's own beat: a step no longer ends with a collective (check())
                if self.step % cfg.Global.print_every == 0 or self.step == N:
                    self.check()
                    train_t += timer.lap()
                    self.log_train(lr, read_t / k, train_t / k, N)
                    read_t, train_t, k = 0.0, 0.0, 0
                if cfg.Global.save_every_steps and self.step % cfg.Global.save_every_steps == 0 and self.step < N:
                    self.check()
                    self.save()
                if self.stopping or (self.rt.world == 1 and self.stop.requested):  # one process: no need to agree
                    raise Stopped(self.stop.signum)
            train_t += timer.lap()
        bad = int(self.rt.all_sum([self.replaced])[0]) if self.rt.world > 1 else self.replaced
        if bad:
            self.log.warning(f"Epoch [{self.epoch + 1}/{E}]: {bad} unreadable training image(s) replaced")

    def log_train(self, lr, read_time, train_time, N):
        """The print step's line, scalars and metrics record, over the steps since the last one."""
        cfg, E = self.cfg, self.cfg.Global.epochs
        loss, acc = np.mean(self.losses), np.mean(self.accs)
        step_t = read_time + train_time
        left = (N - self.step) + (E - self.epoch - 1) * N
        self.log.info(f"Epoch [{self.epoch + 1}/{E}], Step [{self.step}/{N}], Loss: {loss:.4f}, acc: {acc:.4f}, "
                      f"read_time: {read_time:.4f}, train_time: {train_time:.4f}, lr: {lr:.6f}, "
                      f"ips: {cfg.Data.global_batch_size / step_t:.1f} images/s, eta: {format_eta(left * step_t)}")
        gstep = self.epoch * N + self.step
        for tag, v in (("train/loss", loss), ("train/acc", acc), ("train/lr", lr)):
            self.scalars.add(tag, v, gstep)
        self.metrics.write(kind="train", epoch=self.epoch + 1, epochs=E, step=self.step, steps=N, loss=loss, acc=acc,
                           read_time=read_time, train_time=train_time, lr=lr,
                           ips=cfg.Data.global_batch_size / step_t, eta=left * step_t)
        self.losses, self.accs = [], []

    def validate(self):
        self.check()
        top1, top5, n = evaluate(self.model, self.val_loader, self.rt, autocast=self.autocast)
        results = {"model": (top1, top5)}
        if self.ema:
            results["ema"] = evaluate(self.ema.module, self.val_loader, self.rt, autocast=self.autocast)[:2]
        which = best_source(results, self.cfg.EMA.best)
        k = min(5, self.cfg.Global.num_classes)  # evaluate()'s top-k: of 3 classes, "top5" would be top-3
        for name, (t1, t5) in results.items():
            self.log.info(f"Epoch [{self.epoch + 1}/{self.cfg.Global.epochs}] val ({name}): top1 {t1:.4f}, "
                          f"top{k} {t5:.4f} on {n} images")
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
            self.check()
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
            self.check()
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
