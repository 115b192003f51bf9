"""The official evaluation pipeline written out from torchvision's and timm's documented arithmetic (timm 0.3.4's
transforms_imagenet_eval over torchvision), independently of tools/t2tvit: the tests' reference for pixels and logits.
"""
import math

import numpy as np
from PIL import Image

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def center_offset(spare, crop_rounding="half_up"):
    """torchvision's CenterCrop offset: 0.8.x int((spare + 1) * 0.5); 0.7 and >= 0.9 int(round(spare / 2.0))."""
    return int((spare + 1) * 0.5) if crop_rounding == "half_up" else int(round(spare / 2.0))


def reference_eval(path, img_size, crop_pct=0.9, crop_rounding="half_up"):
    """timm transforms_imagenet_eval + ToNumpy: uint8 CHW; torchvision 0.8's crop (half_up) or later ones'."""
    img = Image.open(path).convert("RGB")
    size = int(math.floor(img_size / crop_pct))
    w, h = img.size
    if not ((w <= h and w == size) or (h <= w and h == size)):
        if w < h:
            img = img.resize((size, int(size * h / w)), Image.BICUBIC)
        else:
            img = img.resize((int(size * w / h), size), Image.BICUBIC)
    w, h = img.size
    top, left = center_offset(h - img_size, crop_rounding), center_offset(w - img_size, crop_rounding)
    img = img.crop((left, top, left + img_size, top + img_size))
    return np.array(img, np.uint8).transpose(2, 0, 1)


def reference_normalize(chw):
    """ToTensor + Normalize in float32: (x / 255 - mean) / std."""
    f = np.float32
    return (chw.astype(f) / f(255) - np.array(MEAN, f).reshape(3, 1, 1)) / np.array(STD, f).reshape(3, 1, 1)
