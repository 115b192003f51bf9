"""Mixup / CutMix over a batch with label smoothing folded into the soft targets, as timm's FastCollateMixup
in 'batch' mode (the official T2T-ViT recipe with its default prefetcher), and the soft-target cross entropy
that trains on them.

The official mixup works on uint8 pixels: the blend is computed in float32 and rounded to the nearest
integer (halves to even, np.rint) before normalisation; cutmix pastes pixels. So MixupCutmix takes the
loader's uint8 batch and returns float32 pixel values (integers 0..255), to be normalised afterwards.
Every random draw comes from the numpy RandomState passed in, which the trainer derives from
(seed, epoch, step, micro-batch): a resumed run mixes exactly as an uninterrupted one.
"""
import numpy as np
import paddle
import paddle.nn.functional as F
from paddle import _C_ops


def smooth_one_hot(labels, num_classes, smoothing):
    """[B] int64 -> [B, num_classes] float32: 1 - smoothing + smoothing / n on the label, smoothing / n elsewhere."""
    off = smoothing / num_classes
    return F.one_hot(labels.astype("int64").reshape([-1]), num_classes) * (1.0 - smoothing) + off


def cutmix_box(height, width, lam, rng):
    """(top, bottom, left, right) of a box of about (1 - lam) of the image, random centre, clipped at the
    borders: timm's rand_bbox, whose box spans centre -/+ half the cut size (one pixel less than the cut
    size when it is odd)."""
    cut = np.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * cut), int(width * cut)
    cy, cx = rng.randint(0, height), rng.randint(0, width)
    top, bottom = np.clip(cy - cut_h // 2, 0, height), np.clip(cy + cut_h // 2, 0, height)
    left, right = np.clip(cx - cut_w // 2, 0, width), np.clip(cx + cut_w // 2, 0, width)
    return int(top), int(bottom), int(left), int(right)


def round_half_even(x):
    """np.rint for non-negative float32 tensors (paddle.round rounds halves away from zero)."""
    low = paddle.floor(x)
    frac = x - low  # exact for |x| < 2**23
    odd = paddle.remainder(low, paddle.full_like(low, 2.0)) == 1.0
    up = (frac > 0.5).logical_or((frac == 0.5).logical_and(odd))
    return low + up.astype(x.dtype)


class MixupCutmix:
    """Mixes a whole batch with its reverse (one lam and one mode per batch) and returns soft targets."""

    def __init__(self, mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5, smoothing=0.1,
                 num_classes=1000):
        self.mixup_alpha, self.cutmix_alpha = mixup_alpha, cutmix_alpha
        self.prob, self.switch_prob = prob, switch_prob
        self.smoothing, self.num_classes = smoothing, num_classes

    def sample(self, rng):
        """(lam, use_cutmix) for one batch; lam = 1.0 means the batch is left as it is."""
        if (self.mixup_alpha > 0 or self.cutmix_alpha > 0) and rng.rand() < self.prob:
            if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
                use_cutmix = bool(rng.rand() < self.switch_prob)
            else:
                use_cutmix = self.cutmix_alpha > 0
            alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
            return float(rng.beta(alpha, alpha)), use_cutmix
        return 1.0, False

    def __call__(self, images, labels, rng):
        """images [B, C, H, W] uint8, labels [B] int64 -> (mixed pixels float32 in [0, 255], soft targets)."""
        lam, use_cutmix = self.sample(rng)
        pixels = images.astype("float32")
        if use_cutmix:
            h, w = images.shape[-2:]
            top, bottom, left, right = cutmix_box(h, w, lam, rng)
            # The clipped box may be smaller than asked: the targets follow the pixels actually pasted.
            lam = 1.0 - (bottom - top) * (right - left) / (h * w)
        if lam < 1.0:
            flipped = pixels.flip([0])
            if use_cutmix:
                pixels[:, :, top:bottom, left:right] = flipped[:, :, top:bottom, left:right]
            else:
                pixels = round_half_even(pixels * lam + flipped * (1.0 - lam))
        targets = smooth_one_hot(labels, self.num_classes, self.smoothing)
        if lam < 1.0:
            targets = targets * lam + targets.flip([0]) * (1.0 - lam)
        return pixels, targets


def soft_target_cross_entropy(logits, targets):
    """Mean over the batch of sum_k -targets[k] * log_softmax(logits)[k] (timm's SoftTargetCrossEntropy).

    Paddle's fused soft-label kernel, not the formula spelled out: its backward (softmax - targets, for targets
    that sum to 1 as every smoothed, mixed target does) is within 8e-8 relative of float64, where autograd
    through (-t * log_softmax).sum() is off by 7e-7 on both Paddles (tests/test_mixup.py)."""
    # reduction="none" and then Paddle's own mean (what "mean" does without ignored labels): Paddle 2.6's "mean"
    # first reads on the host whether any label is ignore_index, which would make every step wait for the GPU.
    loss = _C_ops.mean_all(F.cross_entropy(logits, targets, soft_label=True, reduction="none"))
    # The fused CPU kernel returns a finite loss for NaN logits at 1000 classes; 0 * sum(logits) carries any
    # NaN / inf into the loss (so the Trainer skips or stops) and adds an exact 0 to every gradient.
    return loss + 0.0 * logits.sum()
