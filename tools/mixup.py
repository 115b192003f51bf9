"""Mixup / CutMix over a batch with label smoothing folded into the soft targets, as timm's Mixup in
'batch' mode (the official T2T-ViT recipe), and the soft-target cross entropy that trains on them.

Every random draw comes from the numpy RandomState passed in, which the trainer derives from
(seed, epoch, step, micro-batch): a resumed run mixes exactly as an uninterrupted one.
"""
import numpy as np
import paddle.nn.functional as F


def smooth_one_hot(labels, num_classes, smoothing):
    """[B] int64 -> [B, num_classes] float32: 1 - smoothing + smoothing / n on the label, smoothing / n elsewhere."""
    off = smoothing / num_classes
    return F.one_hot(labels.astype("int64").reshape([-1]), num_classes) * (1.0 - smoothing) + off


def cutmix_box(height, width, lam, rng):
    """(top, bottom, left, right) of a box of about (1 - lam) of the image, random centre, clipped at the borders."""
    cut = np.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * cut), int(width * cut)
    cy, cx = rng.randint(0, height), rng.randint(0, width)
    top, left = np.clip(cy - cut_h // 2, 0, height), np.clip(cx - cut_w // 2, 0, width)
    bottom, right = np.clip(cy - cut_h // 2 + cut_h, 0, height), np.clip(cx - cut_w // 2 + cut_w, 0, width)
    return int(top), int(bottom), int(left), int(right)


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
        """images [B, C, H, W], labels [B] int64 -> (mixed images, soft targets [B, num_classes] float32)."""
        lam, use_cutmix = self.sample(rng)
        if lam < 1.0:
            flipped = images.flip([0])
            if use_cutmix:
                h, w = images.shape[-2:]
                top, bottom, left, right = cutmix_box(h, w, lam, rng)
                images = images.clone()
                images[:, :, top:bottom, left:right] = flipped[:, :, top:bottom, left:right]
                # The clipped box may be smaller than asked: the targets follow the pixels actually pasted.
                lam = 1.0 - (bottom - top) * (right - left) / (h * w)
            else:
                images = images * lam + flipped * (1.0 - lam)
        targets = smooth_one_hot(labels, self.num_classes, self.smoothing)
        if lam < 1.0:
            targets = targets * lam + targets.flip([0]) * (1.0 - lam)
        return images, targets


def soft_target_cross_entropy(logits, targets):
    """Mean over the batch of sum_k -targets[k] * log_softmax(logits)[k]."""
    return (-targets * F.log_softmax(logits, axis=-1)).sum(axis=-1).mean()
