"""Pillow's Image.resize, computed for one window of its output only: the evaluation crop of an image so long and
thin that resizing all of it would take gigabytes (a 1 x 20000 PNG resizes to 4,960,000 x 248 pixels).

It repeats Pillow's arithmetic (libImaging/Resample.c, unchanged since Pillow 4): per output pixel, the filter's
weights in double precision, centred at (i + 0.5) * in / out, summed in order and normalised, then rounded to
22-bit fixed point; a horizontal pass over the input rows the window needs, rounded to 8 bits, then a vertical
pass. Each output pixel depends only on its own row's and column's weights, so the window is the same bytes as
the crop of the whole resize (tests/test_eval_window.py compares them on many sizes, both filters), where
Pillow's C code is compiled without fused multiply-add (x86-64); elsewhere a weight may differ in its last bit.
Resizing a source `box` with Pillow itself would not do: the box's float32 corners move every filter centre.
"""
import math

import numpy as np
from PIL import Image

PRECISION_BITS = 32 - 8 - 2  # Pillow's: two bits of headroom for the filters' negative lobes


def _bilinear(x):
    x = np.abs(x)
    return np.where(x < 1.0, 1.0 - x, 0.0)


def _bicubic(x):
    # Resample.c's bicubic_filter with a = -0.5, in its order of operations: (a + 2.0) and (a + 3.0) fold to 1.5
    # and 2.5 exactly at compile time.
    x = np.abs(x)
    near = (1.5 * x - 2.5) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * -0.5
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


FILTERS = {Image.Resampling.BILINEAR: (_bilinear, 1.0), Image.Resampling.BICUBIC: (_bicubic, 2.0)}


def axis_weights(in_size, out_size, first, count, resample):
    """(first input pixel, end of the input pixels used, fixed-point weights [count, taps]) of outputs first ..
    first + count - 1 when Pillow resizes an axis of in_size pixels to out_size (precompute_coeffs and
    normalize_coeffs_8bpc, for the whole image as box)."""
    filter_fn, filter_support = FILTERS[resample]
    scale = in_size / out_size  # correctly rounded, as C's (double)in / out of two exact integers
    filterscale = max(scale, 1.0)
    support = filter_support * filterscale
    taps = int(math.ceil(support)) * 2 + 1
    center = (np.arange(first, first + count, dtype=np.float64) + 0.5) * scale
    low = np.maximum(np.trunc(center - support + 0.5), 0).astype(np.int64)
    high = np.minimum(np.trunc(center + support + 0.5), in_size).astype(np.int64)
    index = low[:, None] + np.arange(taps)[None, :]
    weights = filter_fn((index - center[:, None] + 0.5) * (1.0 / filterscale))
    weights[index >= high[:, None]] = 0.0
    total = np.cumsum(weights, axis=1)[:, -1:]  # in order, like the C loop (zeros past the end change nothing)
    weights = np.where(total != 0.0, weights / np.where(total != 0.0, total, 1.0), weights)
    scaled = weights * float(1 << PRECISION_BITS)
    fixed = np.trunc(np.where(weights < 0, -0.5 + scaled, 0.5 + scaled)).astype(np.int64)
    return low, high, fixed


def _pass(src, low, fixed, axis):
    """One of Pillow's 8-bit passes along `axis` (0: rows, 1: columns) of uint8 HWC `src`, whose first pixel on that
    axis is input pixel low.min(); rounded and clipped to uint8 as Pillow stores it between its passes."""
    limit = src.shape[axis] - 1
    acc = np.int64(1 << (PRECISION_BITS - 1))
    for t in range(fixed.shape[1]):
        index = np.minimum(low - low.min() + t, limit)  # past `high` the weight is 0: any pixel will do
        weight = fixed[:, t][:, None, None] if axis == 0 else fixed[:, t][None, :, None]
        acc = acc + np.take(src, index, axis=axis).astype(np.int64) * weight
    return np.clip(acc >> PRECISION_BITS, 0, 255).astype(np.uint8)


def resized_window(img, size, box, resample):
    """uint8 HWC array of img.resize(size, resample).crop(box), computed for box only; img: an RGB PIL image, box:
    (left, top, right, bottom) in the resized image. Memory: the input rows the window needs (its share of the
    input), never the whole output.

    Pillow does its horizontal pass first, as here, except where it shrinks an image over 100 times taller than wide
    vertically (12.2 on, in Python; 13 in C, for more shapes): that case is refused, and never asked for (the
    evaluation transform uses this for enlargements only)."""
    (width, height), (out_w, out_h) = img.size, size
    if out_h < height and height > 100 * width:
        raise ValueError(f"resized_window repeats Pillow's horizontal-first order, not its order for shrinking a "
                         f"{width} x {height} image to height {out_h}")
    left, top, right, bottom = box
    # Pillow skips the pass of an axis that keeps its size; its horizontal pass comes first.
    rows = axis_weights(height, out_h, top, bottom - top, resample) if out_h != height else None
    first, last = (int(rows[0].min()), int(rows[1].max())) if rows else (top, bottom)
    src = np.asarray(img.crop((0, first, width, last)))
    if out_w != width:
        low, high, fixed = axis_weights(width, out_w, left, right - left, resample)
        src = _pass(src[:, low.min():high.max()], low, fixed, axis=1)
    else:
        src = src[:, left:right]
    if rows:
        src = _pass(src, rows[0], rows[2], axis=0)
    return np.ascontiguousarray(src)
