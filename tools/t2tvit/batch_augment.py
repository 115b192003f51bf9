"""What becomes of a training batch between the loader and the model, in the official order.

The official main.py runs timm's prefetcher (on unless --no-prefetcher): the collate function mixes the uint8
batch (FastCollateMixup), the prefetcher then normalises it on the device and applies random erasing to each
mixed sample. So here: mixup/cutmix on uint8 pixels -> (x - 255 mean) / (255 std) in float32 -> per-sample
random erasing. Each sample's erasing draws come from its own sample seed (the one its augmentation used), so
they do not depend on the number of devices, the accumulation steps or restarts. Validation batches come as
uint8 too, normalised by the same Normalize on the device (dataset.CheckedLoader).
"""
import random

import numpy as np
import paddle

from .augment import RandomErasing
from .mixup import MixupCutmix
from .runtime import derived_seed

ERASE_STREAM = 1  # derived_seed(sample_seed, ERASE_STREAM) seeds a sample's erasing


class Normalize:
    """uint8 (or float32 pixel values) [B, 3, H, W] -> (x - 255 mean) / (255 std) in float32 on the device: timm's
    prefetcher arithmetic, and transforms.Normalize's table (which holds the same float32 results), so training
    and validation batches are normalised alike, where the model runs."""

    def __init__(self, mean, std):
        # The same float32 constants as transforms.Normalize's table (timm: [x * 255 for x in mean]).
        self.mean255 = paddle.to_tensor(np.array([m * 255 for m in mean], np.float32).reshape(1, 3, 1, 1))
        self.std255 = paddle.to_tensor(np.array([s * 255 for s in std], np.float32).reshape(1, 3, 1, 1))

    def __call__(self, pixels):
        if pixels.dtype != paddle.float32:
            pixels = pixels.astype("float32")
        return (pixels - self.mean255) / self.std255


class BatchAugment:
    def __init__(self, mixer, mean, std, random_erasing=None):
        self.mixer = mixer
        self.normalize = Normalize(mean, std)
        self.random_erasing = random_erasing

    @classmethod
    def from_config(cls, cfg):
        a = cfg.Augment
        mixer = MixupCutmix(a.mixup, a.cutmix, a.mixup_prob, a.switch_prob, a.smoothing, cfg.Global.num_classes)
        erasing = RandomErasing(a.reprob, mode="pixel", max_count=1) if a.reprob > 0 else None
        return cls(mixer, cfg.Data.mean, cfg.Data.std, erasing)

    def erase(self, x, seeds):
        """Random erasing of each sample of the normalised batch x, in place, drawn from its sample seed.

        seeds: the sample seeds on the host (a list or array; a tensor is read). Every rectangle's noise goes to
        the device in one copy for the whole batch, and is written into its rectangle from there: no copy per
        sample, and nothing read back."""
        if self.random_erasing is None:
            return x
        _, c, h, w = x.shape
        seeds = seeds.numpy() if isinstance(seeds, paddle.Tensor) else seeds
        boxes, fills = [], []
        for i, seed in enumerate(np.asarray(seeds).tolist()):
            rng = random.Random(derived_seed(seed, ERASE_STREAM))
            for top, left, ph, pw, fill in self.random_erasing.patches(c, h, w, rng):
                boxes.append((i, top, left, ph, pw))
                fills.append(np.broadcast_to(np.asarray(fill, np.float32), (c, ph, pw)).ravel())
        if not boxes:
            return x
        noise = paddle.to_tensor(np.concatenate(fills))
        start = 0
        for i, top, left, ph, pw in boxes:
            x[i, :, top:top + ph, left:left + pw] = noise[start:start + c * ph * pw].reshape([c, ph, pw])
            start += c * ph * pw
        return x

    def __call__(self, images, labels, seeds, rng):
        """uint8 images [B, 3, H, W], labels [B], sample seeds [B], mixing RandomState -> (inputs, soft targets)."""
        pixels, targets = self.mixer(images, labels, rng)
        return self.erase(self.normalize(pixels), seeds), targets
