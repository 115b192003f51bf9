"""Image files -> RGB PIL images, as the official loader reads them (Image.open().convert('RGB')).

read_image decodes the whole image, which is what evaluation and, by default, training use; read_reduced is
the opt-in fast decode of Data.reduced_decode. Both raise BadImage, with the path, for what Pillow cannot read.
"""
import math
import warnings

import numpy as np
from PIL import Image

from .inputs import NotRegular, open_regular

# What Pillow raises for unreadable, truncated or malformed image files.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


class BadImage(Exception):
    def __init__(self, path, reason):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def _to_rgb(img):
    """convert('RGB'), as the official loader does; 16-bit images are scaled to 8 bits first.

    Pillow's RGB conversion clips 16-bit values at 255 instead of scaling them (a 16-bit PNG would turn
    almost white); this is the one place where our pixels deliberately differ from the official path.
    """
    if img.mode.startswith("I;16"):
        img = Image.fromarray((np.asarray(img) >> 8).astype(np.uint8))
    if img.mode == "RGB":
        return img
    with warnings.catch_warnings():  # "Palette images with Transparency expressed in bytes ..."
        warnings.simplefilter("ignore", UserWarning)
        return img.convert("RGB")


def _open(path):
    """`path` opened for reading if it is a regular file; a FIFO, device, socket or folder named like an image is a
    BadImage saying what it is, never a hang (inputs.open_regular)."""
    try:
        return open_regular(path)
    except NotRegular as e:
        raise BadImage(path, f"not a regular file: {e.kind}") from None
    except OSError as e:
        raise BadImage(path, f"{type(e).__name__}: {e}") from None


def read_image(path):
    """The whole image at full resolution as RGB: what the official loader's Image.open().convert('RGB') gives.

    Raises BadImage for files Pillow cannot read.
    """
    with _open(path) as f:
        try:
            img = Image.open(f)
            img.load()
        except DECODE_ERRORS as e:
            raise BadImage(path, f"{type(e).__name__}: {e}") from None
    return _to_rgb(img)


def read_reduced(path, region, out_size):
    """Opt-in fast decode (Data.reduced_decode): decode `path` for resampling the box `region(w, h)` to out_size.

    Returns (image, box) with the box in the decoded image's pixel coordinates. JPEGs are decoded at the
    smallest DCT scale (1/2, 1/4, 1/8) at which the box still has at least out_size pixels. This is cheaper
    for large photos but not the official pixels: the DCT-scaled decode differs from a full decode plus
    resize, and resampling the box from the whole image lets pixels just outside the box contribute.
    """
    with _open(path) as f:
        try:
            img = Image.open(f)
            width, height = img.size
            box = region(width, height)
            if img.format == "JPEG":
                need = (math.ceil(width * out_size[0] / (box[2] - box[0])),
                        math.ceil(height * out_size[1] / (box[3] - box[1])))
                drafted = img.draft("RGB", need)
                if drafted is not None:
                    s = drafted[1][2] / width
                    box = tuple(v * s for v in box)
            img.load()
        except DECODE_ERRORS as e:
            raise BadImage(path, f"{type(e).__name__}: {e}") from None
    return _to_rgb(img), box
