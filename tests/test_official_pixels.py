"""The pixels that reach the model are those of the official pipeline (timm 0.3.4 over torchvision, prefetcher on).

The reference here is written from torchvision's and timm's documented arithmetic, independently of
tools/t2tvit/dataset.py: Image.open().convert('RGB'); eval: Resize(int) keeps the aspect ratio with the long side
int(size * long / short) and leaves an image whose short side already has the size alone, CenterCrop starts at
int(round((h - crop) / 2)); train: RandomResizedCrop crops the sampled box, then resizes the crop.
"""
import glob
import math
import os
import random

import numpy as np
import paddle
import pytest
from PIL import Image

from reference_pipeline import MEAN, STD, reference_eval, reference_normalize
from runner import LIT_DATA, ROOT
from t2tvit import dataset, transforms
from t2tvit.augment import RandomErasing
from t2tvit.batch_augment import ERASE_STREAM, BatchAugment
from t2tvit.config import SCHEMA_PATH, load_config
from t2tvit.errors import UserError
from t2tvit.mixup import MixupCutmix
from t2tvit.runtime import derived_seed



def photo_like(size, seed=0):
    """A w x h RGB array with edges, gradients and noise, so resampling differences would show."""
    w, h = size
    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255.0 / w, yy * 255.0 / h, 127 + 120 * np.sin(xx / 7.0) * np.cos(yy / 5.0)], -1)
    base[(xx // 37 + yy // 23) % 2 == 0] *= 0.4  # hard edges
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


def make_image(tmp_path, name, size=(500, 375), mode="RGB", fmt="JPEG"):
    img = Image.fromarray(photo_like(size))
    if mode == "P+transparency":
        img = img.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
        img.info["transparency"] = 3
        path = tmp_path / f"{name}.png"
        img.save(path, "PNG", transparency=3)
        return str(path)
    if mode == "P":
        img = img.convert("P", palette=Image.Palette.ADAPTIVE, colors=200)
    elif mode != "RGB":
        img = img.convert(mode)
    path = tmp_path / f"{name}.{'jpg' if fmt == 'JPEG' else fmt.lower()}"
    img.save(path, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return str(path)


def reference_train(path, img_size, rng, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """timm RandomResizedCropAndInterpolation('random') + RandomHorizontalFlip, drawing from `rng`."""
    img = Image.open(path).convert("RGB")
    width, height = img.size
    area = width * height
    for _ in range(10):
        target_area = rng.uniform(*scale) * area
        log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if w <= width and h <= height:
            i = rng.randint(0, height - h)
            j = rng.randint(0, width - w)
            break
    else:
        in_ratio = width / height
        if in_ratio < min(ratio):
            w, h = width, int(round(width / min(ratio)))
        elif in_ratio > max(ratio):
            h, w = height, int(round(height * max(ratio)))
        else:
            w, h = width, height
        i, j = (height - h) // 2, (width - w) // 2
    interpolation = rng.choice([Image.BILINEAR, Image.BICUBIC])
    img = img.crop((j, i, j + w, i + h)).resize((img_size, img_size), interpolation)
    if rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    return np.array(img, np.uint8).transpose(2, 0, 1)


SIZES = [(500, 375), (375, 500), (512, 512), (1024, 683), (2000, 1500), (248, 248), (200, 150), (333, 249)]
MODES = [("L", "JPEG"), ("CMYK", "JPEG"), ("P", "PNG"), ("P+transparency", "PNG"), ("RGBA", "PNG"), ("RGB", "PNG")]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("official_pixels")
    out = {f"{w}x{h}": make_image(tmp, f"{w}x{h}", (w, h)) for w, h in SIZES}
    out.update({f"{m}.{fmt}": make_image(tmp, f"mode_{m}", (375, 500), m, fmt) for m, fmt in MODES})
    return out


@pytest.mark.parametrize("img_size", [224, 288, 32])
def test_eval_pixels_equal_the_reference_for_every_size_and_mode(images, img_size):
    t = transforms.EvalTransform(img_size, 0.9)
    for name, path in images.items():
        mine = t.pixels(path)
        assert mine.dtype == np.uint8 and mine.shape == (3, img_size, img_size), name
        np.testing.assert_array_equal(mine, reference_eval(path, img_size), err_msg=name)
        x = t(path)
        assert x.dtype == np.float32 and np.abs(x - reference_normalize(reference_eval(path, img_size))).max() <= 1e-6


@pytest.mark.parametrize("rounding", ["half_up", "half_even"])
def test_eval_center_crop_offsets_follow_the_chosen_torchvisions_rounding(tmp_path, rounding):
    # 253 x 249 -> short side 248, long side int(248 * 253 / 249) = 251: 27 spare columns, round(13.5) = 14,
    # int(28 * 0.5) = 14 too.
    path = make_image(tmp_path, "odd", (253, 249), "RGB", "PNG")
    t = transforms.EvalTransform(224, 0.9, crop_rounding=rounding)
    assert t.resized_size(253, 249) == (251, 248)
    np.testing.assert_array_equal(t.pixels(path), reference_eval(path, 224, crop_rounding=rounding))
    # 252 x 249 -> 250 wide: 13 either way; 254 x 249 -> 252: 14; 255 x 249 -> 253: round(14.5) = 14, half up 15.
    for w in (252, 254, 255, 256):
        path = make_image(tmp_path, f"odd{w}", (w, 249), "RGB", "PNG")
        np.testing.assert_array_equal(t.pixels(path), reference_eval(path, 224, crop_rounding=rounding))


# (width, height, img_size) -> resized width, where the spare columns are 1 mod 4 and the two roundings differ.
DIFFERING = [(500, 332, 224, 373), (666, 496, 224, 333), (401, 320, 288, 401)]


@pytest.mark.parametrize("w, h, img_size, resized", DIFFERING)
def test_half_up_and_half_even_crops_are_one_pixel_apart_where_torchvision_0_8_and_0_9_differ(tmp_path, w, h,
                                                                                               img_size, resized):
    path = make_image(tmp_path, f"{w}x{h}", (w, h), "RGB", "PNG")
    spare = resized - img_size
    assert spare % 4 == 1
    assert transforms.CROP_OFFSET["half_up"](spare) == (spare + 1) // 2 == transforms.CROP_OFFSET["half_even"](spare) + 1
    crops = {}
    for rounding in ("half_up", "half_even"):
        t = transforms.EvalTransform(img_size, 0.9, crop_rounding=rounding)
        assert t.resized_size(w, h)[0] == resized
        crops[rounding] = t.pixels(path)
        np.testing.assert_array_equal(crops[rounding], reference_eval(path, img_size, crop_rounding=rounding))
    np.testing.assert_array_equal(crops["half_up"][:, :, :-1], crops["half_even"][:, :, 1:])  # one column apart


@pytest.mark.parametrize("rounding", ["half_up", "half_even"])
def test_the_lit_data_photos_crop_as_the_reference_with_either_rounding(rounding):
    t = transforms.EvalTransform(224, 0.9, crop_rounding=rounding)
    photos = sorted(glob.glob(os.path.join(LIT_DATA, "val", "*", "*")))
    assert len(photos) == 20
    for path in photos:
        np.testing.assert_array_equal(t.pixels(path), reference_eval(path, 224, crop_rounding=rounding), err_msg=path)


def test_the_config_defaults_to_torchvision_0_8s_crop_and_rejects_other_roundings():
    assert load_config(SCHEMA_PATH).Data.crop_rounding == "half_up"
    with pytest.raises(UserError, match="Data.crop_rounding"):
        load_config(SCHEMA_PATH, ["Data.crop_rounding=nearest"])


def test_eval_never_decodes_at_reduced_scale(tmp_path, monkeypatch):
    path = make_image(tmp_path, "big", (2000, 1500))
    monkeypatch.setattr(Image.Image, "draft", lambda *a, **k: pytest.fail("eval must decode at full size"))
    transforms.EvalTransform(224, 0.9).pixels(path)


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((300, 260), 40000, np.uint16)).save(path)
    assert (transforms.EvalTransform(224, 0.9).pixels(str(path)) == 40000 >> 8).all()


def test_train_pixels_equal_the_reference_crop_then_resize(images):
    t = transforms.TrainTransform(224)  # interpolation None: random bilinear/bicubic, as 'random' in timm
    for name, path in images.items():
        for seed in range(4):
            mine = t(path, random.Random(seed))
            assert mine.dtype == np.uint8 and mine.shape == (3, 224, 224)
            np.testing.assert_array_equal(mine, reference_train(path, 224, random.Random(seed)),
                                          err_msg=f"{name} seed {seed}")


def test_train_crop_uses_nothing_outside_the_box(tmp_path):
    # A grey image whose outer 60 px are white: a box well inside it must come out grey only.
    a = np.full((400, 500, 3), 128, np.uint8)
    a[:60], a[-60:], a[:, :60], a[:, -60:] = 255, 255, 255, 255
    path = tmp_path / "frame.png"
    Image.fromarray(a).save(path)
    t = transforms.TrainTransform(64, scale=(0.2, 0.2), ratio=(1.0, 1.0), interpolation=Image.Resampling.BICUBIC)
    t.crop_box = lambda w, h, rng=None: (60, 60, 440, 340)
    assert (t(str(path), random.Random(0)) == 128).all()


def test_reduced_decode_is_opt_in_and_changes_pixels_of_large_jpegs(images):
    path = images["2000x1500"]
    exact, reduced = transforms.TrainTransform(224), transforms.TrainTransform(224, reduced_decode=True)
    diffs = [np.abs(exact(path, random.Random(s)).astype(int) - reduced(path, random.Random(s))).max()
             for s in range(4)]
    assert max(diffs) > 0


def test_lit_data_eval_pixels_equal_the_reference(lit_data):
    paths = sorted(os.path.join(d, f) for d, _, fs in os.walk(os.path.join(lit_data, "val")) for f in fs)
    assert len(paths) == 20
    t = transforms.EvalTransform(224, 0.9)
    for path in paths:
        np.testing.assert_array_equal(t.pixels(path), reference_eval(path, 224), err_msg=path)


# ------------------------------------------------------------------------ the batch: mixup, then erasing

def test_batch_is_mixed_as_uint8_then_normalised_then_erased_per_sample():
    rng = np.random.RandomState(0)
    images = rng.randint(0, 256, (4, 3, 32, 32)).astype(np.uint8)
    labels, seeds = np.arange(4, dtype=np.int64), np.array([11, 12, 13, 14], np.int64)
    mixer = MixupCutmix(mixup_alpha=0.8, cutmix_alpha=0.0, smoothing=0.1, num_classes=10)
    erasing = RandomErasing(1.0, mode="pixel", max_count=1)
    augment = BatchAugment(mixer, MEAN, STD, erasing)
    x, targets = augment(paddle.to_tensor(images), paddle.to_tensor(labels), paddle.to_tensor(seeds),
                         np.random.RandomState(3))
    lam, _ = mixer.sample(np.random.RandomState(3))
    f = images.astype(np.float32)
    mixed = np.rint(f * np.float32(lam) + f[::-1] * np.float32(1 - lam))
    m255 = np.array([m * 255 for m in MEAN], np.float32).reshape(1, 3, 1, 1)
    s255 = np.array([s * 255 for s in STD], np.float32).reshape(1, 3, 1, 1)
    want = (mixed - m255) / s255
    for i, seed in enumerate(seeds):
        erasing(want[i], random.Random(derived_seed(int(seed), ERASE_STREAM)))
    np.testing.assert_array_equal(x.numpy(), want)
    # Every sample got its own rectangle of noise over the mixed pixels (erasing came after the mix).
    assert all((x.numpy()[i] != ((mixed - m255) / s255)[i]).any() for i in range(4))


def test_train_samples_carry_no_erasing_it_happens_on_the_batch():
    cfg = load_config(os.path.join(ROOT, "config", "t2t_vit_7.yaml"), ["Global.img_size=32"])
    ds = dataset.build_dataset(cfg, "train")
    img = ds[(0, 5)]["image"]
    assert img.dtype == np.uint8  # still pixels: erasing noise (normal floats) cannot be in it
