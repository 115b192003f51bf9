"""Training augmentations that paddle.vision lacks: timm-style RandAugment and RandomErasing.

Every random draw comes from the `rng` argument (a random.Random; the `random` module by default). The
dataset passes random.Random(sample_seed), which makes an augmented sample a pure function of its seed
even where samples are made in a thread beside the training loop (paddle's DataLoader with num_workers
0), where seeding the shared global generators would race.

The op definitions, level -> argument mappings and spec strings follow timm (timm/data/auto_augment.py,
timm/data/random_erasing.py), so that hyper-parameters from timm-trained papers such as T2T-ViT mean
the same here.
"""
import math
import random
import re
from functools import partial

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from . import errors

# Magnitudes are on a 0..10 scale; an op's argument is its maximum times magnitude / LEVEL_DENOM.
LEVEL_DENOM = 10.0
# ImageNet mean as 0..255 ints, as timm derives it from the normalisation mean.
IMAGENET_FILL = (124, 116, 104)
RANDOM_INTERPOLATION = (Image.Resampling.BILINEAR, Image.Resampling.BICUBIC)


def _random_sign(v, rng):
    return -v if rng.random() > 0.5 else v


# Level -> argument tuples. Each takes a magnitude in [0, LEVEL_DENOM] and the generator.
def _no_args(_m, _rng):
    return ()


def _rotate_args(m, rng):
    return (_random_sign(m / LEVEL_DENOM * 30.0, rng),)


def _shear_args(m, rng):
    return (_random_sign(m / LEVEL_DENOM * 0.3, rng),)


def _translate_rel_args(m, rng):
    return (_random_sign(m / LEVEL_DENOM * 0.45, rng),)


def _enhance_args(m, _rng):
    return (m / LEVEL_DENOM * 1.8 + 0.1,)


def _enhance_increasing_args(m, rng):
    # 1.0 leaves the image unchanged; stronger magnitudes move away from it in either direction.
    return (max(0.1, 1.0 + _random_sign(m / LEVEL_DENOM * 0.9, rng)),)


def _posterize_args(m, _rng):
    return (int(m / LEVEL_DENOM * 4),)


def _posterize_increasing_args(m, _rng):
    return (4 - int(m / LEVEL_DENOM * 4),)


def _solarize_args(m, _rng):
    return (min(256, int(m / LEVEL_DENOM * 256)),)


def _solarize_increasing_args(m, _rng):
    return (256 - min(256, int(m / LEVEL_DENOM * 256)),)


def _solarize_add_args(m, _rng):
    return (min(128, int(m / LEVEL_DENOM * 110)),)


# Image ops. Geometric ops take the fill colour and resampling filter; the others ignore them.
def _affine(img, matrix, fill, resample):
    return img.transform(img.size, Image.Transform.AFFINE, matrix, resample=resample, fillcolor=fill)


def _rotate(img, degrees, fill, resample):
    return img.rotate(degrees, resample=resample, fillcolor=fill)


def _shear_x(img, f, fill, resample):
    return _affine(img, (1, f, 0, 0, 1, 0), fill, resample)


def _shear_y(img, f, fill, resample):
    return _affine(img, (1, 0, 0, f, 1, 0), fill, resample)


def _translate_x_rel(img, pct, fill, resample):
    return _affine(img, (1, 0, pct * img.size[0], 0, 1, 0), fill, resample)


def _translate_y_rel(img, pct, fill, resample):
    return _affine(img, (1, 0, 0, 0, 1, pct * img.size[1]), fill, resample)


def _auto_contrast(img, *_):
    return ImageOps.autocontrast(img)


def _equalize(img, *_):
    return ImageOps.equalize(img)


def _invert(img, *_):
    return ImageOps.invert(img)


def _posterize(img, bits, *_):
    if bits >= 8:
        return img
    if bits <= 0:
        # Keeping 0 bits blacks the image out; Pillow >= 11 refuses bits=0 instead of doing it.
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, bits)


def _solarize(img, thresh, *_):
    return ImageOps.solarize(img, thresh)


def _solarize_add(img, add, *_):
    # Brightens pixels below 128 by `add`, leaving the bright ones alone.
    lut = [min(255, i + add) if i < 128 else i for i in range(256)]
    return img.point(lut * len(img.getbands()))


def _enhance(enhancer, img, factor, *_):
    return enhancer(img).enhance(factor)


# name -> (image op, level -> args, geometric)
OPS = {
    "AutoContrast": (_auto_contrast, _no_args, False),
    "Equalize": (_equalize, _no_args, False),
    "Invert": (_invert, _no_args, False),
    "Rotate": (_rotate, _rotate_args, True),
    "Posterize": (_posterize, _posterize_args, False),
    "PosterizeIncreasing": (_posterize, _posterize_increasing_args, False),
    "Solarize": (_solarize, _solarize_args, False),
    "SolarizeIncreasing": (_solarize, _solarize_increasing_args, False),
    "SolarizeAdd": (_solarize_add, _solarize_add_args, False),
    "Color": (partial(_enhance, ImageEnhance.Color), _enhance_args, False),
    "ColorIncreasing": (partial(_enhance, ImageEnhance.Color), _enhance_increasing_args, False),
    "Contrast": (partial(_enhance, ImageEnhance.Contrast), _enhance_args, False),
    "ContrastIncreasing": (partial(_enhance, ImageEnhance.Contrast), _enhance_increasing_args, False),
    "Brightness": (partial(_enhance, ImageEnhance.Brightness), _enhance_args, False),
    "BrightnessIncreasing": (partial(_enhance, ImageEnhance.Brightness), _enhance_increasing_args, False),
    "Sharpness": (partial(_enhance, ImageEnhance.Sharpness), _enhance_args, False),
    "SharpnessIncreasing": (partial(_enhance, ImageEnhance.Sharpness), _enhance_increasing_args, False),
    "ShearX": (_shear_x, _shear_args, True),
    "ShearY": (_shear_y, _shear_args, True),
    "TranslateXRel": (_translate_x_rel, _translate_rel_args, True),
    "TranslateYRel": (_translate_y_rel, _translate_rel_args, True),
}

# timm's _RAND_TRANSFORMS and _RAND_INCREASING_TRANSFORMS (spec part inc0 / inc1).
RAND_OPS = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd",
    "Color", "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel",
)
RAND_INCREASING_OPS = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing",
    "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing",
    "ShearX", "ShearY", "TranslateXRel", "TranslateYRel",
)
# timm's _RAND_CHOICE_WEIGHTS_0 (spec part w0): how often each op is picked, by name in RAND_OPS; timm 0.3.4
# reads them in RAND_OPS order whatever the op set, so an inc op takes the weight of the op at its position.
RAND_CHOICE_WEIGHTS_0 = {
    "Rotate": 0.3, "ShearX": 0.2, "ShearY": 0.2, "TranslateXRel": 0.1, "TranslateYRel": 0.1, "Color": 0.025,
    "Sharpness": 0.025, "AutoContrast": 0.025, "Solarize": 0.005, "SolarizeAdd": 0.005, "Contrast": 0.005,
    "Brightness": 0.005, "Equalize": 0.005, "Posterize": 0.0, "Invert": 0.0,
}


class AugmentOp:
    """One RandAugment op: applied with probability `prob` at a per-call noisy magnitude.

    magnitude_std > 0 adds N(0, magnitude_std) noise to the magnitude at each call; `inf` samples it
    uniformly from [0, magnitude] instead. The result is clipped to [0, magnitude_max].
    `interpolation` None picks bilinear or bicubic at random per call (geometric ops only).
    """

    def __init__(self, name, prob=0.5, magnitude=10.0, magnitude_std=0.0, magnitude_max=LEVEL_DENOM,
                 fill=IMAGENET_FILL, interpolation=None):
        if name not in OPS:
            raise errors.UserError(f"unknown RandAugment op {name!r}")
        self.name = name
        self.fn, self.level_fn, self.geometric = OPS[name]
        self.prob = prob
        self.magnitude = magnitude
        self.magnitude_std = magnitude_std
        self.magnitude_max = magnitude_max
        self.fill = tuple(fill)
        self.interpolation = interpolation

    def sample_magnitude(self, rng=random):
        m = self.magnitude
        if self.magnitude_std == float("inf"):
            m = rng.uniform(0.0, m)
        elif self.magnitude_std > 0:
            m = rng.gauss(m, self.magnitude_std)
        return max(0.0, min(m, self.magnitude_max))

    def level_args(self, magnitude, rng=random):
        """The op's arguments at `magnitude`, random sign included where the op has one."""
        return self.level_fn(magnitude, rng)

    def __call__(self, img, rng=random):
        if self.prob < 1.0 and rng.random() > self.prob:
            return img
        args = self.level_args(self.sample_magnitude(rng), rng)
        resample = self.interpolation
        if self.geometric and resample is None:
            resample = rng.choice(RANDOM_INTERPOLATION)
        return self.fn(img, *args, self.fill, resample)

    def __repr__(self):
        return f"AugmentOp({self.name}, p={self.prob}, m={self.magnitude}, mstd={self.magnitude_std})"


class RandAugment:
    """Apply `num_layers` ops to a PIL image, in order: drawn uniformly with replacement from `ops`, or, with
    `choice_weights` (one per op), drawn by those weights without replacement (timm's np.random.choice with
    p=weights, replace=False)."""

    def __init__(self, ops, num_layers=2, choice_weights=None):
        self.ops = list(ops)
        self.num_layers = num_layers
        self.choice_weights = None if choice_weights is None else [float(w) for w in choice_weights]

    @classmethod
    def from_spec(cls, spec, fill=IMAGENET_FILL, interpolation=None):
        """Build from a timm spec such as `rand-m9-mstd0.5-inc1`.

        Parts after `rand`, read as timm 0.3.4 (the official recipe's) reads them: m<int> magnitude (default
        10), n<int> ops per image (2), mstd<float> std of Gaussian magnitude noise at any size (0: none; the
        `> 100 means uniform` rule came after 0.3.4), inc<digits> the ops whose severity increases with
        magnitude, chosen by the part's presence: 0.3.4 tests bool('0'), so `inc0` selects them too. Beyond
        0.3.4 (which rejects them): p<float> probability of each op (0.5), mmax<number> magnitude clip (10).
        """
        parts = spec.split("-")
        if parts[0] != "rand":
            raise errors.UserError(f"RandAugment spec {spec!r} must start with 'rand'")
        magnitude, num_layers, prob, mstd, mmax, increasing = 10.0, 2, 0.5, 0.0, LEVEL_DENOM, False
        weights = None
        for part in parts[1:]:
            m = re.fullmatch(r"(mstd|mmax|inc|m|n|p|w)(\d+(?:\.\d*)?)", part)
            if not m:
                raise errors.UserError(f"unknown part {part!r} in RandAugment spec {spec!r}")
            key, val = m.group(1), float(m.group(2))
            if key == "m":
                if val != int(val):
                    raise errors.UserError(f"RandAugment spec {spec!r}: the magnitude m must be an integer")
                magnitude = int(val)
            elif key == "n":
                num_layers = int(val)
            elif key == "p":
                prob = val
            elif key == "mstd":
                mstd = val
            elif key == "mmax":
                mmax = val
            elif key == "w":
                if val != 0:
                    raise errors.UserError(f"RandAugment spec {spec!r}: only the weights w0 exist (timm 0.3.4)")
                total = sum(RAND_CHOICE_WEIGHTS_0.values())
                weights = [RAND_CHOICE_WEIGHTS_0[n] / total for n in RAND_OPS]
            else:
                increasing = True  # timm 0.3.4: `if bool(val)` on the digits' string, true for '0' too
        names = RAND_INCREASING_OPS if increasing else RAND_OPS
        ops = [AugmentOp(n, prob, magnitude, mstd, mmax, fill, interpolation) for n in names]
        if weights is not None and num_layers > sum(w > 0 for w in weights):
            raise errors.UserError(f"RandAugment spec {spec!r}: w0 draws n distinct ops, and only "
                                   f"{sum(w > 0 for w in weights)} have a weight")
        return cls(ops, num_layers, weights)

    def picked(self, rng=random):
        """The ops one call applies, in order."""
        if self.choice_weights is None:
            return rng.choices(self.ops, k=self.num_layers)
        left, weights, out = list(self.ops), list(self.choice_weights), []
        for _ in range(self.num_layers):
            i = rng.choices(range(len(left)), weights=weights)[0]
            out.append(left.pop(i))
            weights.pop(i)
        return out

    def __call__(self, img, rng=random):
        for op in self.picked(rng):
            img = op(img, rng)
        return img

    def __repr__(self):
        return f"RandAugment(n={self.num_layers}, ops={self.ops})"


class RandomErasing:
    """With probability `prob`, erase 1..max_count rectangles of a normalised CHW float32 image.

    Each rectangle covers a uniform [min_area, max_area] fraction of the image (divided by the count)
    with log-uniform aspect ratio in [min_aspect, max_aspect (default 1/min_aspect)]; up to 10 tries
    per rectangle to fit it. Fill: 'pixel' per-pixel N(0, 1) noise, 'rand' one N(0, 1) value per
    channel, 'const' zeros (the dataset mean after normalisation).
    """

    MODES = ("pixel", "rand", "const")

    def __init__(self, prob=0.25, mode="pixel", min_area=0.02, max_area=1 / 3, min_aspect=0.3,
                 max_aspect=None, min_count=1, max_count=1):
        if mode not in self.MODES:
            raise errors.UserError(
                f"unknown random erasing mode {mode!r} (use one of {', '.join(self.MODES)})")
        if not 0.0 <= prob <= 1.0:
            raise errors.UserError(f"random erasing probability {prob} is outside [0, 1]")
        self.prob = prob
        self.mode = mode
        self.min_area = min_area
        self.max_area = max_area
        self.log_aspect = (math.log(min_aspect), math.log(max_aspect or 1 / min_aspect))
        self.min_count = min_count
        self.max_count = max(max_count, min_count)

    def _fill(self, c, h, w, rng):
        if self.mode == "const":
            return np.float32(0.0)
        # Normal noise from a NumPy generator seeded by `rng`, so `rng` alone decides the result.
        noise = np.random.RandomState(rng.getrandbits(32))
        shape = (c, h, w) if self.mode == "pixel" else (c, 1, 1)
        return noise.standard_normal(shape).astype(np.float32)

    def patches(self, c, img_h, img_w, rng=random):
        """The rectangles to erase in a c x img_h x img_w image: a list of (top, left, h, w, fill), where
        fill is a float32 array (or scalar) that broadcasts to (c, h, w). Empty with probability 1 - prob."""
        if rng.random() > self.prob:
            return []
        area = img_h * img_w
        count = self.min_count
        if self.max_count > self.min_count:
            count = rng.randint(self.min_count, self.max_count)
        out = []
        for _ in range(count):
            for _attempt in range(10):
                target = rng.uniform(self.min_area, self.max_area) * area / count
                aspect = math.exp(rng.uniform(*self.log_aspect))
                h = int(round(math.sqrt(target * aspect)))
                w = int(round(math.sqrt(target / aspect)))
                if w < img_w and h < img_h:
                    top = rng.randint(0, img_h - h)
                    left = rng.randint(0, img_w - w)
                    out.append((top, left, h, w, self._fill(c, h, w, rng)))
                    break
        return out

    def __call__(self, img, rng=random):
        """Erase a CHW float32 numpy array in place (and return it)."""
        for top, left, h, w, fill in self.patches(*img.shape, rng):
            img[:, top:top + h, left:left + w] = fill
        return img

    def __repr__(self):
        return f"RandomErasing(p={self.prob}, mode={self.mode}, count=({self.min_count}, {self.max_count}))"
