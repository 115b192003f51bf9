"""The learning rate of the official T2T-ViT recipe, as a pure function of (epoch, step).

It reproduces timm's CosineLRScheduler as the official training script drives it (timm 0.3/0.4, no
warmup_prefix, one cycle): t_initial = epochs - cooldown_epochs, a linear warmup over t < warmup_epochs that
counts toward the cosine's t (the cosine does not restart after warmup), then min_lr for the cooldown epochs.
Being stateless, it gives the same value after any resume and cannot be knocked off course by restart state.
"""
import math


class WarmupCosineLR:
    """lr_at(epoch, step): the rate for optimizer step `step` (0-based, within the epoch) of `epoch` (0-based).

    by='epoch' holds the rate for a whole epoch, changing at epoch boundaries as the official script does;
    by='step' evaluates the same curve at the fractional epoch epoch + step / steps_per_epoch.
    """

    def __init__(self, base_lr, epochs, warmup_epochs, warmup_lr, min_lr, cooldown_epochs, steps_per_epoch,
                 by="epoch"):
        if by not in ("epoch", "step"):
            raise ValueError(f"by must be 'epoch' or 'step', got {by!r}")
        if steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
        self.base_lr, self.warmup_lr, self.min_lr = float(base_lr), float(warmup_lr), float(min_lr)
        self.warmup_epochs = warmup_epochs
        self.t_initial = epochs - cooldown_epochs
        if self.t_initial <= 0:
            raise ValueError(f"epochs ({epochs}) must exceed cooldown_epochs ({cooldown_epochs})")
        self.steps_per_epoch, self.by = steps_per_epoch, by

    @classmethod
    def from_config(cls, cfg, steps_per_epoch):
        s = cfg.Scheduler
        return cls(cfg.Optimizer.lr, cfg.Global.epochs, s.warmup_epochs, s.warmup_lr, s.min_lr, s.cooldown_epochs,
                   steps_per_epoch, s.by)

    def lr_at(self, epoch, step=0):
        t = epoch + step / self.steps_per_epoch if self.by == "step" else epoch
        if t < self.warmup_epochs:
            return self.warmup_lr + t * (self.base_lr - self.warmup_lr) / self.warmup_epochs
        if t >= self.t_initial:
            return self.min_lr
        return self.min_lr + 0.5 * (self.base_lr - self.min_lr) * (1 + math.cos(math.pi * t / self.t_initial))
