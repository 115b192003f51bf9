import os
import random
import json
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image

from runner import LIT_DATA as LIT, ROOT
from t2tvit import augment, config, dataset, decode, errors, samplers, transforms
from t2tvit.augment import AugmentOp, RandAugment, RandomErasing

# Class ids of some lit_data photos, from the foolbox file names imagenet_<k>_<class id>.jpg.
LIT_LABELS = {"imagenet_00": 243, "imagenet_01": 559, "imagenet_03": 990, "imagenet_06": 609,
              "imagenet_07": 609, "imagenet_15": 99, "imagenet_17": 22}


def make_cfg(**overrides):
    """The default config through the real loader, Data.root = lit_data, overrides given as Section_key=value."""
    overrides = {"Data_root": LIT, **overrides}
    texts = [f"{key.replace('_', '.', 1)}={json.dumps(value) if not isinstance(value, str) else value}"
             for key, value in overrides.items()]
    return config.load_config(config.SCHEMA_PATH, texts)


def folder_cfg(root, **overrides):
    return make_cfg(Data_root=str(root), Data_train_list="", Data_val_list="", **overrides)


def write_image(path, size=(80, 60), mode="RGB", seed=0, fmt=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.RandomState(seed)
    w, h = size
    # Smooth gradients plus noise: compresses like a photo, unlike pure noise.
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (w + h)], -1)
    rgb = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    Image.fromarray(rgb).convert(mode).save(path, fmt)
    return path


def by_name(ds):
    return {os.path.splitext(os.path.basename(ds.path(i)))[0]: int(ds.labels[i]) for i in range(len(ds))}


# ---------------------------------------------------------------------------------------------- labels

@pytest.mark.parametrize("split", ["train", "val"])
def test_lit_data_list_files_give_true_imagenet_ids(split):
    ds = dataset.build_dataset(make_cfg(), split)
    assert len(ds) == 20
    assert len(set(ds.labels.tolist())) == 19
    names = by_name(ds)
    for name, label in LIT_LABELS.items():
        assert names[name] == label
    assert ds.path(0) == os.path.join(LIT, split, "n02108422", "imagenet_00.JPEG")


def test_lit_data_folders_with_imagenet1k_match_list_files():
    listed = by_name(dataset.build_dataset(make_cfg(), "train"))
    folders = by_name(dataset.build_dataset(folder_cfg(LIT), "train"))
    assert folders == listed


def test_imagenet1k_numbering_is_synset_index(tmp_path):
    write_image(tmp_path / "train" / "n01440764" / "a.jpg")
    write_image(tmp_path / "train" / "n15075141" / "b.PNG")
    (tmp_path / "train" / "n15075141" / "notes.txt").write_text("not an image")
    ds = dataset.build_dataset(folder_cfg(tmp_path), "train")
    assert by_name(ds) == {"a": 0, "b": 999}


def test_folders_mode_numbers_sorted_train_folders(tmp_path):
    for i, cls in enumerate(["dog", "ant", "cat"]):
        write_image(tmp_path / "train" / cls / f"{cls}1.jpeg", seed=i)
    write_image(tmp_path / "train" / "cat" / "deeper" / "cat2.JPG")
    write_image(tmp_path / "val" / "dog" / "dog9.jpg")
    cfg = folder_cfg(tmp_path, Data_classes="folders", Global_num_classes=3)
    assert by_name(dataset.build_dataset(cfg, "train")) == {"ant1": 0, "cat1": 1, "cat2": 1, "dog1": 2}
    # val lacks classes, yet keeps the train numbering.
    assert by_name(dataset.build_dataset(cfg, "val")) == {"dog9": 2}
    assert dataset.class_names(cfg) == ["ant", "cat", "dog"]


def test_classes_file(tmp_path):
    (tmp_path / "names.txt").write_text("zebra\n\nyak\n")
    write_image(tmp_path / "train" / "yak" / "y.jpg")
    cfg = folder_cfg(tmp_path, Data_classes=str(tmp_path / "names.txt"), Global_num_classes=2)
    assert by_name(dataset.build_dataset(cfg, "train")) == {"y": 1}
    assert dataset.class_names(cfg) == ["zebra", "yak"]
    write_image(tmp_path / "train" / "emu" / "e.jpg")
    with pytest.raises(errors.UserError, match="emu"):
        dataset.build_dataset(cfg, "train")


def test_imagenet1k_class_names():
    names = dataset.class_names(make_cfg())
    assert len(names) == 1000
    assert names[0] == "tench, Tinca tinca"
    assert names[243] == "bull mastiff"
    assert names[999] == "toilet tissue, toilet paper, bathroom tissue"


def test_class_tables_agree():
    synsets = dataset.class_folders(make_cfg())
    assert len(synsets) == len(dataset.class_names(make_cfg())) == 1000
    assert synsets == sorted(synsets) and len(set(synsets)) == 1000
    assert (synsets[0], synsets[999]) == ("n01440764", "n15075141")


# ------------------------------------------------------------------------------------------ transforms

@pytest.mark.parametrize("img_size", [224, 64])
@pytest.mark.parametrize("split", ["train", "val"])
def test_transform_output(split, img_size):
    ds = dataset.build_dataset(make_cfg(Global_img_size=img_size), split)
    sample = ds[(5, 11)] if split == "train" else ds[5]
    img, label = sample["image"], sample["label"]
    assert img.shape == (3, img_size, img_size)
    assert img.flags["C_CONTIGUOUS"]
    assert label.dtype == np.int64 and label == ds.labels[5]
    if split == "train":
        # uint8 pixels (normalised after mixup, on the device), the sample seed, no unreadable image.
        assert img.dtype == np.uint8 and sample["seed"] == 11 and sample["n_bad"] == 0
    else:
        # uint8 pixels too (a quarter of float32's bytes through shared memory), normalised on the device.
        assert img.dtype == np.uint8
        img = ds.transform.normalize(img)
        # The normalised range of 0..255 pixels.
        assert -2.12 < img.min() < -1.5 and 2.0 < img.max() < 2.65


@pytest.mark.parametrize("mode", ["L", "CMYK", "RGBA", "P", "1", "I;16"])
def test_any_colour_mode_becomes_rgb(tmp_path, mode):
    if mode == "I;16":
        path = tmp_path / "x.png"
        Image.fromarray(np.full((40, 50), 40000, np.uint16)).save(path)
    else:
        fmt = "PNG" if mode in ("RGBA", "P", "1") else "JPEG"
        path = write_image(tmp_path / f"x.{fmt.lower()}", mode=mode, fmt=fmt)
    img = decode.read_image(str(path))
    assert img.mode == "RGB"
    if mode == "I;16":
        assert np.asarray(img).max() == 40000 >> 8
    cfg = make_cfg(Global_img_size=32)
    for split in ("train", "val"):
        assert transforms.build_transform(cfg, split)(str(path)).shape == (3, 32, 32)


def test_normalize_is_the_prefetchers_float32_arithmetic_and_torchvisions_within_1e_6():
    a = np.random.RandomState(0).randint(0, 256, (3, 5, 7)).astype(np.uint8)
    a[:, 0, :3] = [[0, 128, 255]] * 3
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    out = transforms.Normalize(mean, std)(a)
    assert out.dtype == np.float32 and out.shape == a.shape
    # timm's prefetcher: x.float().sub_(255 * mean).div_(255 * std), float32 throughout.
    m255 = np.array([m * 255 for m in mean], np.float32).reshape(3, 1, 1)
    s255 = np.array([v * 255 for v in std], np.float32).reshape(3, 1, 1)
    np.testing.assert_array_equal(out, (a.astype(np.float32) - m255) / s255)
    # torchvision: ToTensor (x / 255) then Normalize, float32.
    f32 = np.float32
    tv = (a.astype(f32) / f32(255) - np.array(mean, f32).reshape(3, 1, 1)) / np.array(std, f32).reshape(3, 1, 1)
    assert np.abs(out - tv).max() <= 1e-6


def test_val_resize_and_crop_sizes():
    t = transforms.EvalTransform(224, 0.9)
    assert t.resize_to == 248
    assert t.resized_size(500, 375) == (330, 248)
    assert t.resized_size(375, 500) == (248, 330)
    assert transforms.EvalTransform(64, 0.875).resize_to == 73
    assert transforms.EvalTransform(288, 0.9).resize_to == 320


def test_reduced_decode_decodes_large_jpeg_reduced_but_never_too_small(tmp_path):
    path = str(write_image(tmp_path / "big.jpg", size=(2000, 1500)))
    train = transforms.TrainTransform(224)
    reduced = 0
    for seed in range(300):
        rng = random.Random(seed)
        img, box = decode.read_reduced(path, lambda w, h: train.crop_box(w, h, rng), (224, 224))
        assert box[2] - box[0] >= 224 - 1e-9 and box[3] - box[1] >= 224 - 1e-9
        assert 0 <= box[0] and box[2] <= img.size[0] + 1e-9 and box[3] <= img.size[1] + 1e-9
        reduced += img.size[0] < 2000
    assert reduced > 150
    # A crop only just bigger than the output is decoded at full size.
    img, box = decode.read_reduced(path, lambda w, h: (0, 0, 300, 300), (224, 224))
    assert img.size == (2000, 1500) and box == (0, 0, 300, 300)


def test_train_crop_box_statistics():
    t = transforms.TrainTransform(224, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3))
    rng = random.Random(0)
    for _ in range(500):
        left, top, right, bottom = t.crop_box(500, 375, rng)
        w, h = right - left, bottom - top
        assert 0 <= left and right <= 500 and 0 <= top and bottom <= 375
        assert 0.08 * 500 * 375 * 0.9 <= w * h <= 500 * 375
        assert 3 / 4 - 0.05 <= w / h <= 4 / 3 + 0.05
    # Impossible scale: the fallback is the whole image cropped to the ratio range.
    t = transforms.TrainTransform(224, scale=(5.0, 6.0), ratio=(1.0, 1.0))
    assert t.crop_box(500, 300) == (100, 0, 400, 300)


def test_augmentation_is_a_function_of_index_and_seed():
    ds = dataset.build_dataset(make_cfg(Global_img_size=64), "train")
    a, b, c = ds[(3, 77)], ds[(3, 77)], ds[(3, 78)]
    np.testing.assert_array_equal(a["image"], b["image"])
    assert not np.array_equal(a["image"], c["image"])
    # The global generators are neither used nor disturbed, even by another thread reseeding them
    # meanwhile (paddle's DataLoader makes samples in a thread when num_workers is 0).
    random.seed(1)
    np.random.seed(1)
    ds[(3, 77)]
    assert random.random() == random.Random(1).random()
    assert np.random.rand() == np.random.RandomState(1).rand()
    stop = threading.Event()

    def reseed():
        while not stop.is_set():
            random.seed(0)
            np.random.seed(0)

    thread = threading.Thread(target=reseed)
    thread.start()
    try:
        for _ in range(5):
            np.testing.assert_array_equal(ds[(3, 77)]["image"], a["image"])
    finally:
        stop.set()
        thread.join()


# ---------------------------------------------------------------------------------------------- errors

def _lit_like(tmp_path, n=3):
    lines = []
    for i in range(n):
        write_image(tmp_path / "train" / "n01440764" / f"i{i}.jpg", seed=i)
        lines.append(f"train/n01440764/i{i}.jpg {i}")
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n\n")
    return make_cfg(Data_root=str(tmp_path), Data_val_list="train.txt", Global_num_classes=10)


def test_list_file_with_blank_lines_and_spaces_in_paths(tmp_path):
    cfg = _lit_like(tmp_path)
    write_image(tmp_path / "train" / "odd dir" / "x y.jpg")
    (tmp_path / "train.txt").write_text("\ntrain/odd dir/x y.jpg 7\n  \ntrain/n01440764/i0.jpg 2\n")
    assert by_name(dataset.build_dataset(cfg, "train")) == {"x y": 7, "i0": 2}


@pytest.mark.parametrize("escape", ["{outside}/o.jpg", "../outside/o.jpg", "train/../../outside/o.jpg"])
def test_list_file_paths_leaving_the_root_are_refused_unless_allowed(tmp_path, escape):
    cfg = _lit_like(tmp_path / "root")
    write_image(tmp_path / "outside" / "o.jpg")
    path = escape.format(outside=tmp_path / "outside")
    (tmp_path / "root" / "train.txt").write_text(f"train/n01440764/i0.jpg 2\n{path} 3\n")
    with pytest.raises(errors.UserError) as e:
        dataset.build_dataset(cfg, "train")
    assert str(e.value) == (f"{tmp_path / 'root' / 'train.txt'}:2: {path!r} is outside Data.root "
                            f"{tmp_path / 'root'} (set Data.allow_outside_root: true to allow it)")
    cfg.Data.allow_outside_root = True
    assert by_name(dataset.build_dataset(cfg, "train")) == {"i0": 2, "o": 3}


def test_list_file_with_a_utf8_bom(tmp_path):
    cfg = _lit_like(tmp_path)
    (tmp_path / "train.txt").write_bytes(b"\xef\xbb\xbftrain/n01440764/i1.jpg 4\n")
    assert by_name(dataset.build_dataset(cfg, "train")) == {"i1": 4}


@pytest.mark.parametrize("case, culprit", [
    ("root", "nowhere"),
    ("list", "absent.txt"),
    ("split", "val"),
    ("parse", "train.txt:2"),
    ("label_text", "train.txt:1"),
    ("missing", "gone.jpg"),
    ("label", "train.txt:3"),
    ("negative", "-1"),
    ("empty_list", "train.txt"),
    ("empty_folder", "train"),
    ("not_synset", "kittens"),
    ("folder_label", "n15075141"),
])
def test_bad_input_is_a_user_error_naming_the_culprit(tmp_path, case, culprit):
    cfg = _lit_like(tmp_path)
    text = (tmp_path / "train.txt").read_text().splitlines()
    split = "train"
    if case == "root":
        cfg.Data.root = str(tmp_path / "nowhere")
    elif case == "list":
        cfg.Data.train_list = "absent.txt"
    elif case == "split":
        cfg.Data.val_list, split = "", "val"
    elif case == "parse":
        text[1] = "train/n01440764/i1.jpg"
    elif case == "label_text":
        text[0] = "train/n01440764/i0.jpg dog"
    elif case == "missing":
        text[1] = "train/n01440764/gone.jpg 1"
    elif case == "label":
        text[2] = "train/n01440764/i2.jpg 10"
    elif case == "negative":
        text[2] = "train/n01440764/i2.jpg -1"
    elif case == "empty_list":
        text = ["", "  "]
    elif case == "empty_folder":
        cfg.Data.train_list = ""
        for f in (tmp_path / "train" / "n01440764").iterdir():
            f.unlink()
    elif case == "not_synset":
        cfg.Data.train_list = ""
        write_image(tmp_path / "train" / "kittens" / "k.jpg")
    elif case == "folder_label":
        cfg.Data.train_list = ""
        write_image(tmp_path / "train" / "n15075141" / "t.jpg")
    (tmp_path / "train.txt").write_text("\n".join(text) + "\n")
    with pytest.raises(errors.UserError, match=culprit.replace(".", r"\.")) as e:
        dataset.build_dataset(cfg, split)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("override, culprit", [
    ("Augment.train_interpolation=cubic", "Augment.train_interpolation"),
    ("Data.interpolation=random", "Data.interpolation"),
    ("Augment.reprob=1.5", "Augment.reprob"),
    ("Augment.hflip=-0.5", "Augment.hflip"),
    ("Augment.scale=[0.5,0.1]", "Augment.scale"),
    ("Augment.ratio=[0,1]", "Augment.ratio"),
    ("Data.crop_pct=0.0", "Data.crop_pct"),
    ("Data.std=[0.2,0,0.2]", "Data.std"),
])
def test_bad_augment_settings_are_config_errors_naming_the_key(override, culprit):
    with pytest.raises(errors.UserError, match=culprit.replace(".", r"\.")) as e:
        config.load_config(os.path.join(ROOT, "config", "t2t_vit_7.yaml"), [override])
    assert "\n" not in str(e.value)


def test_bad_rand_augment_spec_is_a_config_error_naming_the_part():
    with pytest.raises(errors.UserError, match=r"config key 'Augment\.rand_augment' .*bogus3"):
        make_cfg(Augment_rand_augment="rand-m9-bogus3")


def _corrupt(path):
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 3])


def test_corrupt_validation_image_is_a_user_error(tmp_path):
    cfg = _lit_like(tmp_path)
    _corrupt(tmp_path / "train" / "n01440764" / "i1.jpg")
    ds = dataset.build_dataset(cfg, "val")
    ds[0]
    with pytest.raises(errors.UserError, match=r"i1\.jpg \(OSError: image file is truncated"):
        ds[1]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_loader_raises_deferred_errors_in_the_main_process(tmp_path, num_workers):
    cfg = _lit_like(tmp_path)
    cfg.Global.img_size, cfg.Data.batch_size, cfg.Data.num_workers = 32, 3, num_workers
    _corrupt(tmp_path / "train" / "n01440764" / "i1.jpg")
    loader, _ = dataset.build_loader(cfg, "val")
    with pytest.raises(errors.UserError, match=r"validation image .*i1\.jpg \(OSError"):
        list(loader)
    for i in (0, 2):
        _corrupt(tmp_path / "train" / "n01440764" / f"i{i}.jpg")
    loader, _ = dataset.build_loader(cfg, "train")
    with pytest.raises(errors.UserError, match=r"3 training images in a row, from .*, could not be read"):
        list(loader)


def test_garbage_file_is_reported_as_unreadable(tmp_path):
    cfg = _lit_like(tmp_path)
    (tmp_path / "train" / "n01440764" / "i2.jpg").write_bytes(b"not an image at all")
    with pytest.raises(errors.UserError, match="i2.jpg"):
        dataset.build_dataset(cfg, "val")[2]


def test_corrupt_training_image_is_replaced_and_counted(tmp_path, capsys):
    cfg = _lit_like(tmp_path, n=4)
    cfg.Global.img_size = 32
    _corrupt(tmp_path / "train" / "n01440764" / "i1.jpg")
    ds = dataset.build_dataset(cfg, "train")
    sample = ds[(1, 5)]
    assert (sample["n_bad"], sample["label"], sample["seed"]) == (1, 2, 5)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "i1.jpg" in err and "warning" in err
    # The substitute is the next sample, augmented with the same seed.
    np.testing.assert_array_equal(sample["image"], ds[(2, 5)]["image"])
    assert ds[(0, 5)]["n_bad"] == 0
    # The bad counts reach the batches.
    cfg.Data.batch_size, cfg.Data.num_workers = 4, 0
    loader, sampler = dataset.build_loader(cfg, "train")
    batch, = list(loader)
    labels, bad = batch["label"], batch["n_bad"]
    assert int(bad.sum()) == 1 and bad.dtype == labels.dtype


# -------------------------------------------------------------------------------------------- samplers

def _steps(sampler, epoch=0, start_step=0):
    sampler.set_epoch(epoch, start_step)
    return list(sampler)


def test_devices_and_accumulation_split_the_same_global_batch():
    n, b = 103, 4
    one = _steps(samplers.TrainBatchSampler(n, b, world_size=1, rank=0, accum_steps=2, seed=3), epoch=2)
    two = [_steps(samplers.TrainBatchSampler(n, b, world_size=2, rank=r, accum_steps=1, seed=3), epoch=2)
           for r in range(2)]
    four = [_steps(samplers.TrainBatchSampler(n, 2, world_size=2, rank=r, accum_steps=2, seed=3), epoch=2)
            for r in range(2)]
    steps = n // 8
    assert len(one) == 2 * steps and all(len(x) == steps for x in two)
    for s in range(steps):
        per_step = one[2 * s] + one[2 * s + 1]
        assert per_step == two[0][s] + two[1][s]
        assert sorted(per_step) == sorted(sum((four[r][2 * s + j] for r in range(2) for j in range(2)), []))
    flat = [i for batch in one for i, _ in batch]
    assert len(set(flat)) == steps * 8  # no repeats within an epoch


def test_order_depends_on_seed_and_epoch_only():
    def order(seed, epoch):
        return [i for batch in _steps(samplers.TrainBatchSampler(50, 5, seed=seed), epoch) for i, _ in batch]

    assert order(0, 0) == order(0, 0)
    assert order(0, 0) != order(0, 1)
    assert order(0, 0) != order(1, 0)
    sampler = samplers.TrainBatchSampler(50, 5, seed=0)
    first = _steps(sampler, 4)
    _steps(sampler, 9)
    assert _steps(sampler, 4) == first
    seeds = {s for batch in first for _, s in batch}
    assert len(seeds) == 50 and all(isinstance(s, int) and 0 <= s < 2**32 for s in seeds)
    assert first[0][0][1] == samplers.sample_seed(0, 4, first[0][0][0])


def test_start_step_skips_exactly():
    sampler = samplers.TrainBatchSampler(100, 3, world_size=2, rank=1, accum_steps=2, seed=7)
    assert sampler.steps_per_epoch == 100 // 12
    full = _steps(sampler, 5)
    assert len(full) == len(sampler) == 16
    resumed = _steps(sampler, 5, start_step=3)
    assert len(sampler) == len(resumed) == 10
    assert resumed == full[6:]
    assert _steps(sampler, 5, start_step=8) == []
    with pytest.raises(errors.UserError, match=r"cannot continue epoch 6 after optimizer step 9: the training set has "
                                               r"100 images, 8 steps of 12 per epoch \(did the training list change"):
        sampler.set_epoch(5, start_step=9)


def test_dataset_smaller_than_global_batch():
    with pytest.raises(errors.UserError, match=r"has 20 images, fewer than the global batch 32"):
        samplers.TrainBatchSampler(20, 8, world_size=2, accum_steps=2)


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_eval_sampler_covers_every_index_once(world_size):
    n, b = 23, 4
    seen = []
    for rank in range(world_size):
        sampler = samplers.EvalBatchSampler(n, b, world_size, rank)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        assert all(len(x) <= b for x in batches)
        flat = [i for batch in batches for i in batch]
        assert flat == list(range(rank, n, world_size))
        seen += flat
    assert sorted(seen) == list(range(n))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_loader_passes_index_and_seed_to_the_dataset(num_workers):
    cfg = make_cfg(Global_img_size=32, Data_batch_size=4, Data_num_workers=num_workers)
    loader, sampler = dataset.build_loader(cfg, "train")
    sampler.set_epoch(1, start_step=3)
    assert len(loader) == 2
    first = next(iter(loader))
    assert sorted(first) == ["failed", "image", "label", "n_bad", "seed"]
    images, labels, seeds, bad = first["image"], first["label"], first["seed"], first["n_bad"]
    assert images.shape == [4, 3, 32, 32] and str(images.dtype).endswith("uint8")
    assert labels.shape == [4] and str(labels.dtype).endswith("int64")
    ds = loader.dataset
    batch = list(sampler)[0]
    expected = np.stack([ds[item]["image"] for item in batch])
    np.testing.assert_array_equal(images.numpy(), expected)
    assert labels.numpy().tolist() == [int(ds.labels[i]) for i, _ in batch]
    assert seeds.numpy().tolist() == [seed for _, seed in batch]
    assert bad.numpy().tolist() == [0] * 4

    val_loader, _ = dataset.build_loader(cfg, "val", world_size=3, rank=2)
    batches = list(val_loader)
    assert [sorted(x) for x in batches] == [["failed", "image", "label"]] * 2
    assert batches[0]["image"].shape == [4, 3, 32, 32] and str(batches[0]["image"].dtype).endswith("float32")
    assert batches[1]["label"].numpy().tolist() == [int(ds.labels[i]) for i in (14, 17)]


# ----------------------------------------------------------------------------------------- RandAugment

def _args(name, m, seed=0):
    return AugmentOp(name).level_args(m, random.Random(seed))


def _both_signs(name, m):
    return sorted({round(_args(name, m, seed)[0], 9) for seed in range(40)})


def test_randaugment_magnitudes_at_9():
    assert _both_signs("Rotate", 9) == [-27.0, 27.0]
    assert _both_signs("ShearX", 9) == _both_signs("ShearY", 9) == [-0.27, 0.27]
    assert _both_signs("TranslateXRel", 9) == _both_signs("TranslateYRel", 9) == [-0.405, 0.405]
    for name in ("ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing"):
        assert _both_signs(name, 9) == [0.19, 1.81]
    assert _args("PosterizeIncreasing", 9) == (1,)  # 4 - int(3.6)
    assert _args("PosterizeIncreasing", 0) == (4,)
    assert _args("PosterizeIncreasing", 10) == (0,)
    assert _args("SolarizeIncreasing", 9) == (26,)  # 256 - int(230.4)
    assert _args("SolarizeIncreasing", 0) == (256,)
    assert _args("SolarizeAdd", 9) == (99,)
    assert _args("SolarizeAdd", 10) == (110,)
    assert _args("Color", 9) == (pytest.approx(1.72),)
    assert _args("Posterize", 9) == (3,) and _args("Solarize", 9) == (230,)
    assert _args("Equalize", 9) == ()
    # Enhance factors never go below 0.1.
    assert _both_signs("ContrastIncreasing", 10) == [0.1, 1.9]


def test_magnitude_noise_is_clipped():
    op = AugmentOp("Rotate", magnitude=9, magnitude_std=0.5)
    rng = random.Random(0)
    m = np.array([op.sample_magnitude(rng) for _ in range(4000)])
    assert m.max() == 10.0 and m.min() >= 0.0
    assert 0.015 < (m == 10.0).mean() < 0.031  # P(N(9, 0.5) > 10) = 2.3%
    # Mean and spread of N(9, 0.5) clipped at 10.
    assert abs(m[m < 10].mean() - 8.973) < 0.03 and abs(m.std() - 0.49) < 0.03
    wide = AugmentOp("Rotate", magnitude=5, magnitude_std=10)
    m = np.array([wide.sample_magnitude(rng) for _ in range(2000)])
    assert m.min() == 0.0 and m.max() == 10.0
    uniform = AugmentOp("Rotate", magnitude=9, magnitude_std=float("inf"))
    m = np.array([uniform.sample_magnitude(rng) for _ in range(2000)])
    assert m.min() >= 0 and m.max() <= 9 and abs(m.mean() - 4.5) < 0.3
    assert AugmentOp("Rotate", magnitude=9).sample_magnitude() == 9


def test_rand_augment_from_spec():
    ra = RandAugment.from_spec("rand-m9-mstd0.5-inc1")
    assert [op.name for op in ra.ops] == list(augment.RAND_INCREASING_OPS)
    assert len(ra.ops) == 15 and ra.num_layers == 2
    settings = {(op.prob, op.magnitude, op.magnitude_std, op.magnitude_max) for op in ra.ops}
    assert settings == {(0.5, 9, 0.5, 10)}
    assert {op.fill for op in ra.ops} == {(124, 116, 104)} and {op.interpolation for op in ra.ops} == {None}
    ra = RandAugment.from_spec("rand-n3-m7-p0.7-mstd101-mmax12")
    assert ra.num_layers == 3 and ra.ops[4].name == "Posterize"
    assert (ra.ops[0].prob, ra.ops[0].magnitude, ra.ops[0].magnitude_std, ra.ops[0].magnitude_max) == (
        0.7, 7, 101.0, 12)  # timm 0.3.4: mstd101 is a Gaussian std like any other
    bad = [("rand-m9-foo", "foo"), ("augmix-m3", "augmix"), ("rand-m", "'m'"), ("rand-tweights", "tweights")]
    for spec, culprit in bad:
        with pytest.raises(errors.UserError, match=culprit):
            RandAugment.from_spec(spec)


def test_geometric_ops_fill_with_the_mean_colour():
    img = Image.new("RGB", (64, 64), (255, 255, 255))
    rotate = AugmentOp("Rotate", prob=1.0, magnitude=9, interpolation=Image.Resampling.BILINEAR)
    out = np.asarray(rotate(img, random.Random(0)))
    assert tuple(out[0, 0]) == (124, 116, 104) and tuple(out[32, 32]) == (255, 255, 255)
    out = np.asarray(AugmentOp("TranslateXRel", prob=1.0, magnitude=9)(img, random.Random(0)))
    assert (out == (124, 116, 104)).all(-1).mean() == pytest.approx(0.405, abs=0.02)


def test_rand_augment_ops_run_and_keep_the_image_size():
    img = Image.open(os.path.join(LIT, "train", "n02108422", "imagenet_00.JPEG")).resize((48, 40))
    ra = RandAugment.from_spec("rand-m9-mstd0.5-inc1")
    for op in ra.ops + RandAugment.from_spec("rand-m9").ops:
        for m in (0, 9, 10):
            out = AugmentOp(op.name, prob=1.0, magnitude=m)(img, random.Random(1))
            assert out.size == (48, 40) and out.mode == "RGB"
    # Keeping 0 bits (magnitude 10) blacks the image out.
    assert np.asarray(AugmentOp("PosterizeIncreasing", prob=1.0, magnitude=10)(img)).max() == 0
    rng = random.Random(3)
    changed = sum(not np.array_equal(np.asarray(ra(img, rng)), np.asarray(img)) for _ in range(50))
    assert 25 < changed < 50  # an image is left alone only when both ops are skipped (1/4) or no-ops


def test_op_probability():
    calls = []
    op = AugmentOp("Invert", prob=0.5)
    op.fn = lambda img, *_: calls.append(1) or img
    rng = random.Random(0)
    for _ in range(2000):
        op(None, rng)
    assert abs(len(calls) / 2000 - 0.5) < 0.04


# -------------------------------------------------------------------------------------- RandomErasing

def test_random_erasing_area_and_aspect_bounds():
    re_ = RandomErasing(prob=1.0, mode="pixel", min_area=0.02, max_area=1 / 3, min_aspect=0.3)
    rng = random.Random(0)
    values = []
    for _ in range(300):
        x = re_(np.zeros((3, 64, 48), np.float32), rng)
        rows, cols = np.nonzero((x != 0).any(0))
        h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert (x != 0).all(0).sum() == h * w  # one solid rectangle, on every channel
        assert 0.02 * 64 * 48 * 0.8 <= h * w <= 64 * 48 / 3 * 1.2
        assert 0.3 * 0.7 <= h / w <= 1 / 0.3 * 1.4
        values.append(x[:, rows.min():rows.max() + 1, cols.min():cols.max() + 1].ravel())
    values = np.concatenate(values)
    # Erased pixels are standard normal noise.
    assert abs(values.mean()) < 0.01 and abs(values.std() - 1) < 0.01
    assert abs((np.abs(values) < 1).mean() - 0.6827) < 0.01


def test_random_erasing_probability_and_modes():
    rng = random.Random(1)
    re_ = RandomErasing(prob=0.25)
    erased = sum((re_(np.zeros((3, 32, 32), np.float32), rng) != 0).any() for _ in range(2000))
    assert abs(erased / 2000 - 0.25) < 0.03
    ones = RandomErasing(prob=1.0, mode="const")(np.ones((3, 32, 32), np.float32))
    assert 0 < (ones == 0).sum() and set(np.unique(ones)) == {0.0, 1.0}
    x = RandomErasing(prob=1.0, mode="rand")(np.zeros((3, 32, 32), np.float32))
    for c in range(3):
        assert len(np.unique(x[c][x[c] != 0])) == 1
    assert (RandomErasing(prob=0.0)(np.ones((3, 8, 8), np.float32)) == 1).all()
    with pytest.raises(errors.UserError, match="sparkle"):
        RandomErasing(mode="sparkle")



def test_png_still_decodes_when_a_command_imports_paddle_right_after_the_package(tmp_path):
    # Paddle 2.6 exports a zlib of its own; the package loads the system one first (t2tvit/__init__.py).
    path = write_image(tmp_path / "x.png", fmt="PNG")
    code = ("import t2tvit.cpu_env, paddle\nfrom t2tvit.decode import read_image\n"
            f"print(read_image({str(path)!r}).size)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       cwd=os.path.join(ROOT, "tools"))
    assert r.returncode == 0 and r.stdout.strip().endswith("(80, 60)"), r.stderr[-2000:]


def test_rand_augment_specs_read_as_timm_0_3_4_reads_them():
    # inc0 still selects the increasing ops: timm 0.3.4 tests bool('0'), a non-empty string
    assert [op.name for op in RandAugment.from_spec("rand-m9-inc0").ops] == list(augment.RAND_INCREASING_OPS)
    assert [op.name for op in RandAugment.from_spec("rand-m9").ops] == list(augment.RAND_OPS)
    assert RandAugment.from_spec("rand-n3").num_layers == 3 and RandAugment.from_spec("rand").num_layers == 2
    assert {op.magnitude for op in RandAugment.from_spec("rand-m0").ops} == {0}
    assert {op.magnitude for op in RandAugment.from_spec("rand").ops} == {10}
    with pytest.raises(errors.UserError, match="integer"):
        RandAugment.from_spec("rand-m9.5")
    # mstd0: no noise; mstd101: Gaussian noise of std 101 (then clipped to [0, 10]), never uniform
    assert {AugmentOp("Rotate", magnitude=9, magnitude_std=0.0).sample_magnitude(random.Random(i))
            for i in range(20)} == {9}
    op = RandAugment.from_spec("rand-m10-mstd101").ops[0]
    rng, ref = random.Random(3), random.Random(3)
    draws = [op.sample_magnitude(rng) for _ in range(200)]
    assert draws == [max(0.0, min(ref.gauss(10, 101), 10)) for _ in range(200)]
    assert {0.0, 10.0} <= set(draws)  # the wide Gaussian clips at both ends, a uniform draw would not


def test_rand_augment_w0_picks_distinct_ops_by_timm_s_choice_weights():
    ra = RandAugment.from_spec("rand-m9-w0-inc1")
    weights = dict(zip(augment.RAND_OPS, ra.choice_weights))
    assert sum(ra.choice_weights) == pytest.approx(1.0) and weights["Rotate"] == pytest.approx(0.3)
    assert weights["Posterize"] == weights["Invert"] == 0.0  # never picked
    rng, counts = random.Random(0), {}
    for _ in range(4000):
        picked = ra.picked(rng)
        assert len(picked) == 2 and picked[0] is not picked[1]  # without replacement, as np.random.choice
        for op in picked:
            counts[op.name] = counts.get(op.name, 0) + 1
    assert "PosterizeIncreasing" not in counts and "Invert" not in counts
    # Rotate is picked first (0.3) or second (sum over the first op k of w_k * 0.3 / (1 - w_k)): 0.547 of the calls
    assert 0.51 < counts["Rotate"] / 4000 < 0.59 and counts["ShearX"] > counts["ColorIncreasing"] * 4
    assert RandAugment.from_spec("rand-m9").choice_weights is None
    for spec, culprit in (("rand-w1", "only the weights w0"), ("rand-n14-w0", "13 have a weight")):
        with pytest.raises(errors.UserError, match=culprit):
            RandAugment.from_spec(spec)


# ------------------------------------------------------------------------------------ hostile list files


@pytest.mark.parametrize("case", ["6 GB list", "one endless line", "FIFO", "folder"])
def test_a_list_file_is_read_within_its_budget_and_never_hangs(tmp_path, case):
    cfg = _lit_like(tmp_path)
    path = tmp_path / "train.txt"
    path.unlink()
    if case == "6 GB list":
        with open(path, "wb") as f:
            f.truncate(6 << 30)  # sparse: 6 GB to stat, nothing on disk
        reason = f"Data.train_list: list file {path}: 6,442,450,944 bytes, over the 1,073,741,824"
    elif case == "one endless line":
        with open(path, "wb") as f:
            f.truncate(100 << 20)  # 100 MB without a newline
        reason = f"Data.train_list: list file {path}: line 1 is over 8,192 characters"
    elif case == "FIFO":
        os.mkfifo(path)  # nobody writes it: a blocking open would wait for ever
        reason = f"Data.train_list: list file {path} is a FIFO (named pipe), not a file"
    else:
        path.mkdir()
        reason = f"Data.train_list: list file {path} is a folder, not a file"
    with pytest.raises(errors.UserError) as e:
        dataset.build_dataset(cfg, "train")
    assert str(e.value).startswith(reason) and "\n" not in str(e.value), e.value


def test_a_class_file_is_read_within_its_budget_and_a_fifo_is_named(tmp_path):
    cfg = folder_cfg(tmp_path, Data_classes="names.txt")
    with open(tmp_path / "names.txt", "wb") as f:
        f.truncate(dataset.CLASSES_MAX_BYTES + 1)
    with pytest.raises(errors.UserError, match=r"^Data.classes file .*names.txt: 16,777,217 bytes, over the"):
        dataset.class_names(cfg)
    os.remove(tmp_path / "names.txt")
    os.mkfifo(tmp_path / "names.txt")
    with pytest.raises(errors.UserError, match=r"names.txt is a FIFO \(named pipe\), not a file$"):
        dataset.class_names(cfg)


def test_a_failing_sampler_raises_in_the_main_thread_and_never_hangs_the_loader():
    """Paddle's DataLoader draws batches in a thread of its own, where an exception is lost and leaves the main thread
    waiting for ever (no signal handler runs either). A sampler's failure must come out of iter() instead."""
    code = """
import sys
sys.path.insert(0, sys.argv[1])
import numpy as np, paddle
from t2tvit.samplers import TrainBatchSampler

class Items(paddle.io.Dataset):
    def __len__(self):
        return 8
    def __getitem__(self, item):
        return np.float32(item[0])

sampler = TrainBatchSampler(8, 2, seed=0)
sampler.epoch = -3  # what a crafted checkpoint's progress once reached
loader = paddle.io.DataLoader(Items(), batch_sampler=sampler, num_workers=0)
try:
    list(loader)
except ValueError as e:
    print("raised in the main thread:", type(e).__name__)
"""
    r = subprocess.run([sys.executable, "-c", code, os.path.join(ROOT, "tools")], capture_output=True, text=True,
                       timeout=120)
    assert "raised in the main thread: ValueError" in r.stdout, r.stdout + r.stderr[-2000:]


def test_the_batch_plan_answers_at_once_for_a_huge_prime_global_batch():
    from t2tvit.engine import batch_plan
    assert batch_plan(1000000000039, 64, 1) == (1, 1000000000039)  # trial division to 10**6, not 10**12 tries
    assert batch_plan(16_777_216, 64, 8) == (64, 32768)
    with pytest.raises(errors.UserError, match=r"Data.global_batch_size' \(in -o Data.global_batch_size=1000000000039\): "
                                               r"1000000000039 is outside 1 to 16,777,216"):
        make_cfg(Data_global_batch_size=1000000000039)


# ------------------------------------------------------------------------------ shared memory, stuck workers

def test_a_loader_that_would_not_fit_in_dev_shm_is_refused_before_any_step_saying_what_to_change(monkeypatch):
    free = 64 << 20  # Docker's default /dev/shm
    monkeypatch.setattr(dataset.os, "statvfs", lambda path: type("S", (), {"f_bavail": free // 4096,
                                                                           "f_frsize": 4096})())
    monkeypatch.setattr(dataset.os.path, "isdir", lambda path: True)
    cfg = make_cfg(Data_num_workers=4)
    with pytest.raises(errors.UserError) as e:
        dataset.check_shared_memory(cfg, "train", 64, local_processes=1)
    assert str(e.value) == ("the train data loader needs about 83 MiB in /dev/shm (1 process(es) x (4 workers x 2 + "
                            "1) batches of 9.2 MiB) but 64 MiB are free: give the container more (docker run "
                            "--shm-size=1g), lower Data.num_workers, or set Data.use_shared_memory=false")
    dataset.check_shared_memory(cfg, "val", 32, local_processes=1)  # half the batch fits
    with pytest.raises(errors.UserError, match=r"\(8 process\(es\) x"):
        dataset.check_shared_memory(cfg, "val", 32, local_processes=8)
    for fits in (make_cfg(Data_num_workers=0), make_cfg(Data_num_workers=4, Data_use_shared_memory=False)):
        dataset.check_shared_memory(fits, "train", 64, local_processes=1)
    monkeypatch.setenv("PADDLE_LOCAL_SIZE", "8")  # what paddle.distributed.launch tells each of 8 local processes
    with pytest.raises(errors.UserError, match=r"^the val data loader needs about 331 MiB"):
        dataset.build_loader(make_cfg(Data_num_workers=4), "val", 32)


def test_a_stuck_loader_worker_stops_the_iteration_with_one_line_instead_of_hanging(monkeypatch):
    load = dataset.ImageDataset.load

    def stuck(self, index, seed=None):
        if index == 3:
            time.sleep(60)  # a read from a hung file system (longer than the test waits)
        return load(self, index, seed)
    monkeypatch.setattr(dataset.ImageDataset, "load", stuck)  # the workers fork with it
    cfg = make_cfg(Global_img_size=32, Data_batch_size=2, Data_num_workers=2, Data_timeout=2)
    loader, _ = dataset.build_loader(cfg, "val")
    start = time.monotonic()
    with pytest.raises(errors.UserError) as e:
        list(loader)
    assert str(e.value) == ("no validation batch from the 2 data loader worker(s) in 2 s (Data.timeout): a worker is "
                            "stuck (a hung file system?); raise Data.timeout if reading is that slow")
    assert time.monotonic() - start < 30


def test_a_stuck_worker_that_cannot_run_is_ended_so_that_the_process_exits_after_its_error_line(monkeypatch, tmp_path):
    # Paddle's loader shutdown and multiprocessing's exit hook (SIGTERM, then join) wait for a stuck worker for
    # ever when it cannot run (stopped, here): the trainer printed its error line and then never exited.
    pid_file, load = tmp_path / "stuck_pid", dataset.ImageDataset.load

    def stopped(self, index, seed=None):
        if index == 3:
            pid_file.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGSTOP)
        return load(self, index, seed)
    monkeypatch.setattr(dataset.ImageDataset, "load", stopped)  # the workers fork with it
    loader, _ = dataset.build_loader(make_cfg(Global_img_size=32, Data_batch_size=2, Data_num_workers=2,
                                              Data_timeout=2), "val")
    rescued = []

    def rescue():  # what the test needs to end if the loader leaves the stopped worker waiting for ever
        pid = int(pid_file.read_text())
        if running(pid):
            rescued.append(pid)
            os.kill(pid, signal.SIGKILL)
    timer = threading.Timer(30, rescue)
    timer.start()
    try:
        with pytest.raises(errors.UserError, match=r"\(Data.timeout\): a worker is stuck"):
            list(loader)
    finally:
        timer.cancel()
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while running(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    rescue()
    assert not rescued, f"the stuck worker {pid} was left stopped"


def running(pid):
    """Whether the process `pid` has not ended (a zombie has ended: only its parent has yet to collect it)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return not any(line.startswith("State:\tZ") for line in f)
    except FileNotFoundError:
        return False
