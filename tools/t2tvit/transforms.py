"""Decoded images -> the official pixels: RandomResizedCrop + flip + RandAugment (train, uint8 out) and
Resize + CenterCrop + normalisation (val, float32 out).

The pixels are those of the official T2T-ViT pipeline (timm 0.3.4 on torchvision, with timm's prefetcher,
on by default in the official main.py): for validation Resize(short side floor(img_size / crop_pct),
bicubic) + CenterCrop, for training the crop box cut out and then resized, flip and RandAugment. Training
images stay uint8, because the official mixup/cutmix works on uint8 batches; batch_augment.py then
normalises them and applies random erasing, in the prefetcher's order. Validation images are normalised
here with a per-channel lookup table holding the prefetcher's float32 arithmetic, (v - 255 mean) /
(255 std), so both paths give the same floats. Every random draw comes from the `rng` passed in.
"""
import math
import random

import numpy as np
from PIL import Image

from .augment import RANDOM_INTERPOLATION, RandAugment
from .decode import read_image, read_reduced
from .resample import resized_window

# The interpolations a config can name (config.CHOICES lists the same two).
INTERPOLATIONS = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}
def to_chw(img):
    """PIL RGB image -> uint8 CHW array (timm's ToNumpy)."""
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))


class Normalize:
    """uint8 CHW -> float32 (v - 255 mean) / (255 std): timm's prefetcher arithmetic, through a lookup table.

    The table holds the float32 result for each of the 256 values of each channel, so looking it up gives
    exactly what the prefetcher's float32 subtract and divide give (batch_augment.normalize computes the
    same on the device), and within 1e-6 of torchvision's ToTensor + Normalize ((v / 255 - mean) / std).
    """

    def __init__(self, mean, std):
        # timm builds these as torch float32 tensors from [x * 255 for x in mean] (Python floats).
        self.mean255 = np.array([m * 255 for m in mean], np.float32)
        self.std255 = np.array([s * 255 for s in std], np.float32)
        values = np.arange(256, dtype=np.float32)
        self.table = (values[None, :] - self.mean255[:, None]) / self.std255[:, None]

    def __call__(self, chw):
        out = np.empty(chw.shape, np.float32)
        for c in range(3):
            np.take(self.table[c], chw[c], out=out[c])
        return out


class TrainTransform:
    """Image path -> RandomResizedCrop, horizontal flip, RandAugment -> uint8 CHW.

    RandomResizedCrop samples the box as torchvision/timm do (area fraction in `scale`, log-uniform aspect
    ratio, 10 tries, then a center-crop fallback), cuts it out and resizes only what is inside it.
    interpolation None picks bilinear or bicubic per sample, after the box (timm's order of draws).
    reduced_decode: decode large JPEGs at reduced scale (opt-in speed-up; see read_reduced).
    Normalisation and random erasing come later, on the batch (batch_augment.py).
    """

    def __init__(self, img_size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), interpolation=None, hflip=0.5,
                 rand_augment=None, reduced_decode=False):
        self.size = _hw(img_size)
        self.scale = scale
        self.ratio = ratio
        self.interpolation = interpolation
        self.hflip = hflip
        self.rand_augment = rand_augment
        self.reduced_decode = reduced_decode

    def crop_box(self, width, height, rng=random):
        """A random (left, top, right, bottom) box: area fraction in `scale`, log-uniform aspect ratio."""
        area = width * height
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = rng.uniform(*self.scale) * area
            aspect = math.exp(rng.uniform(*log_ratio))
            w = int(round(math.sqrt(target * aspect)))
            h = int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = rng.randint(0, height - h)
                left = rng.randint(0, width - w)
                return left, top, left + w, top + h
        # Fallback: the whole image, center-cropped to the nearest allowed aspect ratio.
        aspect = width / height
        if aspect < min(self.ratio):
            w, h = width, int(round(width / min(self.ratio)))
        elif aspect > max(self.ratio):
            w, h = int(round(height * max(self.ratio))), height
        else:
            w, h = width, height
        left, top = (width - w) // 2, (height - h) // 2
        return left, top, left + w, top + h

    def __call__(self, path, rng=random):
        size = self.size[::-1]  # Pillow's (width, height)
        if self.reduced_decode:
            img, box = read_reduced(path, lambda w, h: self.crop_box(w, h, rng), size)
        else:
            img = read_image(path)
            box = self.crop_box(*img.size, rng)
        resample = self.interpolation
        if resample is None:
            resample = rng.choice(RANDOM_INTERPOLATION)
        if self.reduced_decode:
            img = img.resize(size, resample, box=box)
        else:
            img = img.crop(box).resize(size, resample)
        if rng.random() < self.hflip:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if self.rand_augment is not None:
            img = self.rand_augment(img, rng)
        return to_chw(img)


# The center crop's offset from the spare pixels of one side. torchvision 0.8.0-0.8.2 (the official numbers' era:
# T2T-ViT-7's row was published two days before 0.9.0) compute int((spare + 1) * 0.5), halves up; 0.7, >= 0.9
# and today's timm use round(spare / 2), halves to even. They differ where spare is 1 mod 4: e.g. 500x332 at
# 224 px (resized to 373x248), 666x496 (333x248), 401x320 at 288 px: the crop moves by one pixel.
CROP_OFFSET = {"half_up": lambda spare: int((spare + 1) * 0.5), "half_even": lambda spare: int(round(spare / 2.0))}


# The whole image is resized (as torchvision does) when the result is at most this many crops, or no larger than
# the image itself: every photo up to about 3:1. A longer, thinner one that the resize enlarges (a 1 x 20000 PNG
# would become 4,960,000 x 248 pixels, 5 GB) is resized only where the crop is, to the same pixels (resample.py).
WHOLE_RESIZE_CROPS = 4


class EvalTransform:
    """Image path -> Resize(short side floor(img_size / crop_pct)) + CenterCrop(img_size) -> normalised CHW.

    torchvision's arithmetic: the long side becomes int(size * long / short), an image whose short side
    already has the size is not resized, and the crop's offset rounds half the spare pixels as `crop_rounding`
    says (CROP_OFFSET). The whole image is resized, then cropped, except where that would be out of proportion
    to the crop and the image (WHOLE_RESIZE_CROPS): then the crop's window of the resize is computed alone, by
    Pillow's arithmetic (resample.py; resizing the crop's source box with Pillow instead would move its filter
    centres, whose box corners are float32).
    """

    def __init__(self, img_size, crop_pct=0.9, interpolation=Image.Resampling.BICUBIC,
                 mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), crop_rounding="half_up"):
        self.size = _hw(img_size)
        self.offset = CROP_OFFSET[crop_rounding]
        h, w = self.size
        # timm's eval transform for a tuple size: a square resizes the short side to floor(S / crop_pct) (as for
        # one integer); H x W resizes the whole image to int(H / crop_pct) x int(W / crop_pct), then crops.
        self.resize_to = int(math.floor(h / crop_pct)) if h == w else (int(h / crop_pct), int(w / crop_pct))
        self.interpolation = interpolation
        self.normalize = Normalize(mean, std)

    def resized_size(self, width, height):
        """(width, height) after the short-side resize."""
        r = self.resize_to
        if isinstance(r, tuple):
            return r[1], r[0]
        if width <= height:
            return r, int(r * height / width)
        return int(r * width / height), r

    def pixels(self, path):
        """The uint8 CHW crop that the model sees, before normalisation."""
        img = read_image(path)
        size = self.resized_size(*img.size)
        h, w = self.size
        left, top = self.offset(size[0] - w), self.offset(size[1] - h)
        box = (left, top, left + w, top + h)
        if size == img.size:
            return to_chw(img.crop(box))
        if size[0] * size[1] <= max(WHOLE_RESIZE_CROPS * h * w, img.size[0] * img.size[1]):
            return to_chw(img.resize(size, self.interpolation).crop(box))
        return np.ascontiguousarray(resized_window(img, size, box, self.interpolation).transpose(2, 0, 1))

    def __call__(self, path):
        return self.normalize(self.pixels(path))


def _hw(size):
    """(height, width) of an img_size: S or [H, W] (checked by config.py)."""
    return (size, size) if isinstance(size, int) else tuple(size)


def _interpolation(name, allow_random=False):
    """The Pillow filter for a config's interpolation name (checked by config.py); None for 'random'."""
    return None if allow_random and name == "random" else INTERPOLATIONS[name]


def build_transform(cfg, split):
    """The transform of 'train' (uint8 out) or 'val' (normalised float32 out); values checked by config.py."""
    d, a, size = cfg.Data, cfg.Augment, cfg.Global.img_size
    if split != "train":
        return EvalTransform(size, d.crop_pct, _interpolation(d.interpolation), d.mean, d.std, d.crop_rounding)
    interpolation = _interpolation(a.train_interpolation, allow_random=True)
    rand_augment = None
    if a.rand_augment:
        fill = tuple(min(255, round(255 * m)) for m in d.mean)
        rand_augment = RandAugment.from_spec(a.rand_augment, fill=fill, interpolation=interpolation)
    return TrainTransform(size, tuple(a.scale), tuple(a.ratio), interpolation, a.hflip, rand_augment,
                          d.reduced_decode)
