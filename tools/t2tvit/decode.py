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


class UnknownRange(ValueError):
    """An image whose sample values have no known range (32-bit integers, floats outside [0, 1])."""


def _sixteen_bit(img):
    """Whether a mode-I image holds 16-bit samples: Pillow decodes a 16-bit PGM/PPM (any maxval over 255, rescaled
    to 65535) and, before Pillow 10, a 16-bit grayscale PNG as I; a TIFF says its sample size and kind."""
    if img.format in ("PNG", "PPM"):
        return True
    tags = getattr(img, "tag_v2", {})
    return img.format == "TIFF" and tags.get(258) in (16, (16,)) and tags.get(339, 1) in (1, (1,))


def _gray16(img):
    """The 16-bit gray levels of a high-bit-depth image (I;16*, I, F), each read by its real range; UnknownRange,
    saying why, for one whose range is not known."""
    values = np.asarray(img)
    if img.mode.startswith("I;16"):
        return values
    if img.mode == "I":
        if not _sixteen_bit(img):
            raise UnknownRange(f"a {img.format} image of 32-bit integers (mode I), whose range is not known; convert "
                             "it to 8 or 16 bits")
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise UnknownRange(f"a 16-bit {img.format} image with values outside [0, 65535]")
        return values
    if not np.isfinite(values).all():
        raise UnknownRange("a floating-point image holding NaN or inf")
    if values.size and (values.min() < 0 or values.max() > 1):
        raise UnknownRange(f"a floating-point image with values from {values.min():g} to {values.max():g}: only "
                         "[0, 1] has a known meaning; convert it to 8 or 16 bits")
    return np.rint(values.astype(np.float64) * 65535)  # [0, 1] at 16-bit precision, then like any 16-bit image


def _to_rgb(img):
    """convert('RGB'), as the official loader does; images of more than 8 bits are scaled to 8 bits first.

    Pillow's RGB conversion clips 16-bit and 32-bit values at 255 instead of scaling them (a 16-bit PNG or PGM
    would turn almost white, a float TIFF in [0, 1] black); this is the one place where our pixels deliberately
    differ from the official path. 16-bit levels keep their top 8 bits; a float image is taken in [0, 1] at 16-bit
    precision, so the same picture as 16-bit PNG, 16-bit or 12-bit PGM and float TIFF gives the same pixels.
    UnknownRange for an image whose range is not known (mode I of 32 bits, floats outside [0, 1]).
    """
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        img = Image.fromarray((_gray16(img).astype(np.uint32) >> 8).astype(np.uint8))
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
            return _to_rgb(img)
        except UnknownRange as e:
            raise BadImage(path, str(e)) from None
        except DECODE_ERRORS as e:
            raise BadImage(path, f"{type(e).__name__}: {e}") from None


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
            return _to_rgb(img), box
        except UnknownRange as e:
            raise BadImage(path, str(e)) from None
        except DECODE_ERRORS as e:
            raise BadImage(path, f"{type(e).__name__}: {e}") from None
