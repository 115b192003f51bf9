"""The evaluation crop of an image too long and thin to resize whole (t2tvit/resample.py) is the same bytes as the
crop of the whole resize: Pillow's own arithmetic, checked against Pillow on many sizes, shapes and both filters."""
import glob
import os

import numpy as np
import pytest
from PIL import Image

from runner import LIT_DATA
from t2tvit import transforms
from t2tvit.resample import resized_window

FILTERS = [Image.Resampling.BICUBIC, Image.Resampling.BILINEAR]


def whole_then_crop(img, size, box, resample):
    """What the evaluation transform did before resample.py, for every image: resize all of it, then crop."""
    return np.asarray(img.resize(size, resample).crop(box))


def noise(w, h, seed):
    """Random pixels: the worst case for resampling (every weight shows in the result)."""
    return Image.fromarray(np.random.RandomState(seed).randint(0, 256, (h, w, 3)).astype(np.uint8))


@pytest.mark.parametrize("resample", FILTERS, ids=["bicubic", "bilinear"])
def test_the_window_is_the_crop_of_the_whole_resize_on_random_sizes_and_windows(resample):
    rng = np.random.RandomState(int(resample))
    checked = 0
    while checked < 300:
        w, h = rng.randint(1, 700, size=2)
        if checked % 3 == 0:  # long and thin, either way round
            w, h = (rng.randint(1, 40), rng.randint(100, 900))[::1 if checked % 2 else -1]
        out_w, out_h = rng.randint(1, 800, size=2)
        if out_h < h and h > 100 * w:  # Pillow >= 12.2 does its vertical pass first there (resized_window refuses)
            continue
        win_w, win_h = rng.randint(1, out_w + 1), rng.randint(1, out_h + 1)
        left, top = rng.randint(0, out_w - win_w + 1), rng.randint(0, out_h - win_h + 1)
        box = (left, top, left + win_w, top + win_h)
        img = noise(w, h, checked)
        np.testing.assert_array_equal(resized_window(img, (out_w, out_h), box, resample),
                                      whole_then_crop(img, (out_w, out_h), box, resample),
                                      err_msg=f"{w}x{h} -> {out_w}x{out_h}, window {box}")
        checked += 1


@pytest.mark.parametrize("img_size", [224, 32, (224, 160), (48, 96)])
@pytest.mark.parametrize("rounding", ["half_up", "half_even"])
def test_the_window_gives_the_evaluation_crop_of_real_photos_and_every_aspect_ratio(img_size, rounding):
    photos = [Image.open(p).convert("RGB") for p in sorted(glob.glob(os.path.join(LIT_DATA, "val", "*", "*")))[:6]]
    shapes = [photo.crop((0, 0, photo.width, max(1, photo.width // ratio))) for photo in photos[:2]
              for ratio in (1, 2, 3, 5, 9)]  # from square to 9:1 panoramas, and their upright twins
    shapes += [s.transpose(Image.Transpose.ROTATE_90) for s in shapes]
    for resample in FILTERS:
        t = transforms.EvalTransform(img_size, 0.9, interpolation=resample, crop_rounding=rounding)
        h, w = t.size
        for img in photos + shapes:
            size = t.resized_size(*img.size)
            if size == img.size:
                continue
            left, top = t.offset(size[0] - w), t.offset(size[1] - h)
            box = (left, top, left + w, top + h)
            np.testing.assert_array_equal(resized_window(img, size, box, resample),
                                          whole_then_crop(img, size, box, resample), err_msg=f"{img.size} -> {size}")


def test_the_transform_resizes_only_the_window_of_a_long_thin_image_and_gets_the_same_pixels(tmp_path, monkeypatch):
    path = str(tmp_path / "strip.png")
    noise(3, 400, 0).save(path)  # 3 x 400 resizes to 248 x 33,066: 33 crops' worth, over the budget of 4
    for resample in FILTERS:
        t = transforms.EvalTransform(224, 0.9, interpolation=resample)
        size = t.resized_size(3, 400)
        assert size == (248, 33066) and size[0] * size[1] > transforms.WHOLE_RESIZE_CROPS * 224 * 224
        calls = []
        monkeypatch.setattr(transforms, "resized_window", lambda *a: calls.append(a) or resized_window(*a))
        pixels = t.pixels(path)
        top = t.offset(size[1] - 224)
        expected = whole_then_crop(Image.open(path).convert("RGB"), size, (12, top, 236, top + 224), resample)
        assert len(calls) == 1 and calls[0][2] == (12, top, 236, top + 224)
        np.testing.assert_array_equal(pixels, expected.transpose(2, 0, 1))


def test_pillows_vertical_first_shape_is_refused_by_the_window():
    with pytest.raises(ValueError, match="horizontal-first order"):
        resized_window(noise(2, 500, 0), (2, 300), (0, 0, 2, 300), Image.Resampling.BICUBIC)
