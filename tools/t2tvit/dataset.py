"""The data path: image lists or class folders -> decoded, augmented uint8 (train) or normalised float32 (val).

The pixels are those of the official T2T-ViT pipeline (timm 0.3.4 on torchvision, with timm's prefetcher,
on by default in the official main.py): a full decode converted to RGB, then for validation Resize(short
side floor(img_size / crop_pct), bicubic) + CenterCrop, for training the crop box cut out and then resized
(RandomResizedCrop), flip and RandAugment. Training images leave the loader as uint8, because the official
mixup/cutmix works on uint8 batches; batch_augment.py then normalises them and applies random erasing, in
the prefetcher's order. Validation images are normalised here with a per-channel lookup table holding the
prefetcher's float32 arithmetic, (v - 255 mean) / (255 std), so both paths give the same floats.

Augmentation is a pure function of (Global.seed, epoch, sample index): TrainBatchSampler hands out
(index, sample_seed) pairs and the dataset draws every random number of that sample's transforms from
random.Random(sample_seed), never from the shared global generators (with num_workers 0 paddle's
DataLoader makes samples in a thread beside the training loop, so seeding those would race). Results
do not depend on the worker count, the number of devices (for the same global batch) or on restarts,
and an interrupted epoch can be resumed exactly from an optimizer step.
"""
import math
import os
import random
import sys
import warnings

import numpy as np
import paddle
from PIL import Image

from . import errors
from .augment import RANDOM_INTERPOLATION, RandAugment

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
IMAGENET_SYNSETS = os.path.join(DATA_DIR, "imagenet_synsets.txt")
IMAGENET_NAMES = os.path.join(DATA_DIR, "imagenet1k_label_list.txt")
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".gif")
# The interpolations a config can name (config.CHOICES lists the same two).
INTERPOLATIONS = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}
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
    try:
        return open(path, "rb")
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
        self.size = img_size
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
        size = (self.size, self.size)
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


class EvalTransform:
    """Image path -> Resize(short side floor(img_size / crop_pct)) + CenterCrop(img_size) -> normalised CHW.

    torchvision's arithmetic: the long side becomes int(size * long / short), an image whose short side
    already has the size is not resized, and the crop starts at int(round((h - img_size) / 2)) (Python's
    round, halves to even; torchvision 0.8.x alone rounded halves up). The whole image is resized, then
    cropped: resampling only the crop's source box would change Pillow's filter coefficients slightly.
    """

    def __init__(self, img_size, crop_pct=0.9, interpolation=Image.Resampling.BICUBIC,
                 mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)):
        self.size = img_size
        self.resize_to = int(math.floor(img_size / crop_pct))
        self.interpolation = interpolation
        self.normalize = Normalize(mean, std)

    def resized_size(self, width, height):
        """(width, height) after the short-side resize."""
        r = self.resize_to
        if width <= height:
            return r, int(r * height / width)
        return int(r * width / height), r

    def pixels(self, path):
        """The uint8 CHW crop that the model sees, before normalisation."""
        img = read_image(path)
        size = self.resized_size(*img.size)
        if size != img.size:
            img = img.resize(size, self.interpolation)
        left = int(round((size[0] - self.size) / 2.0))
        top = int(round((size[1] - self.size) / 2.0))
        return to_chw(img.crop((left, top, left + self.size, top + self.size)))

    def __call__(self, path):
        return self.normalize(self.pixels(path))


def _interpolation(name, allow_random=False):
    """The Pillow filter for a config's interpolation name (checked by config.py); None for 'random'."""
    return None if allow_random and name == "random" else INTERPOLATIONS[name]


def build_transform(cfg, split):
    """The transform of 'train' (uint8 out) or 'val' (normalised float32 out); values checked by config.py."""
    d, a, size = cfg.Data, cfg.Augment, cfg.Global.img_size
    if split != "train":
        return EvalTransform(size, d.crop_pct, _interpolation(d.interpolation), d.mean, d.std)
    interpolation = _interpolation(a.train_interpolation, allow_random=True)
    rand_augment = None
    if a.rand_augment:
        fill = tuple(min(255, round(255 * m)) for m in d.mean)
        try:
            rand_augment = RandAugment.from_spec(a.rand_augment, fill=fill, interpolation=interpolation)
        except errors.UserError as e:
            raise errors.UserError(f"Augment.rand_augment: {e}") from None
    return TrainTransform(size, tuple(a.scale), tuple(a.ratio), interpolation, a.hflip, rand_augment,
                          d.reduced_decode)


class ImageDataset(paddle.io.Dataset):
    """Samples (root-relative path, label). Items are `index` or `(index, sample_seed)`.

    train: (CHW uint8 image, int64 label, int64 sample_seed, n_bad); the seed also drives the sample's
    random erasing, applied later to the mixed batch. An unreadable image is reported on stderr and
    replaced by the next sample (same seed), n_bad counting the images skipped; MAX_SKIPS unreadable
    images in a row is a UserError. val: (CHW float32 normalised image, int64 label); an unreadable
    image is a UserError.

    With defer_errors, a sample that would raise returns a marker instead: a blank image with label
    (val) or n_bad (train) = -1 - index. An exception raised inside a paddle DataLoader never reaches
    the caller intact (with num_workers 0 the loader hangs; with workers it becomes an opaque
    SystemError), so CheckedLoader turns the marker back into the UserError in the main process.
    """

    MAX_SKIPS = 10

    def __init__(self, root, paths, labels, transform, train, defer_errors=False):
        self.root = root
        # Paths as one bytes array rather than a list of str: no per-item objects whose reference
        # counts would make every forked loader worker copy the whole list.
        self.paths = np.array([os.fsencode(p) for p in paths], dtype=np.bytes_)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.transform = transform
        self.train = train
        self.defer_errors = defer_errors

    def __len__(self):
        return len(self.labels)

    def path(self, index):
        return os.path.join(self.root, os.fsdecode(self.paths[index]))

    def load(self, index, seed=None):
        """The sample at `index`, augmented under `seed`; raises UserError where __getitem__ may defer."""
        if not self.train:
            try:
                return self.transform(self.path(index)), self.labels[index]
            except BadImage as e:
                raise errors.UserError(f"cannot read validation image {e.path} ({e.reason})") from None
        if seed is None:
            seed = random.getrandbits(32)
        n = len(self)
        for n_bad in range(min(n, self.MAX_SKIPS)):
            i = (index + n_bad) % n
            try:
                return self.transform(self.path(i), random.Random(seed)), self.labels[i], np.int64(seed), n_bad
            except BadImage as e:
                print(f"warning: skipping unreadable training image {e.path} ({e.reason}); "
                      f"using {self.path((i + 1) % n)} instead", file=sys.stderr, flush=True)
        raise errors.UserError(f"{min(n, self.MAX_SKIPS)} training images in a row, from {self.path(index)}, "
                               f"could not be read (see the warnings above)")

    def __getitem__(self, item):
        index, seed = item if isinstance(item, (tuple, list)) else (item, None)
        index = int(index)
        try:
            return self.load(index, seed)
        except errors.UserError:
            if not self.defer_errors:
                raise
        size = (3, self.transform.size, self.transform.size)
        marker = np.int64(-1 - index)
        if self.train:
            return np.zeros(size, np.uint8), np.int64(0), np.int64(0), marker
        return np.zeros(size, np.float32), marker


class CheckedLoader:
    """Iterates a paddle DataLoader over a defer_errors ImageDataset; raises the deferred UserErrors."""

    def __init__(self, loader, dataset):
        self.loader = loader
        self.dataset = dataset

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        slot = 3 if self.dataset.train else 1
        for batch in self.loader:
            marks = batch[slot].numpy()
            if marks.min() < 0:
                index = int(-1 - marks.min())
                self.dataset.load(index)  # fails again here, in the main process, with the real message
                raise errors.UserError(f"reading {self.dataset.path(index)} failed in a data loader worker")
            yield batch


def _read_lines(path):
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise errors.UserError(f"cannot read {path}: {e}") from None


def read_list(list_file, root, num_classes, key="list file"):
    """Parse `relative/path label` lines; check labels and that every listed image exists."""
    if not os.path.isfile(list_file):
        raise errors.UserError(f"{key}: list file not found: {list_file}")
    paths, labels, linenos = [], [], []
    for lineno, line in enumerate(_read_lines(list_file), 1):
        if not line.strip():
            continue
        fields = line.rsplit(None, 1)
        try:
            label = int(fields[1])
        except (IndexError, ValueError):
            raise errors.UserError(
                f"{list_file}:{lineno}: expected `relative/path label`, got {line.strip()!r}") from None
        if not 0 <= label < num_classes:
            raise errors.UserError(
                f"{list_file}:{lineno}: label {label} is outside [0, {num_classes}) (Global.num_classes)")
        paths.append(fields[0].strip())
        labels.append(label)
        linenos.append(lineno)
    if not paths:
        raise errors.UserError(f"{key}: list file {list_file} lists no images")
    # One directory listing per folder instead of one stat per image: ImageNet has 1.28M lines.
    listings = {}
    for path, lineno in zip(paths, linenos):
        folder, name = os.path.split(os.path.join(root, path))
        if folder not in listings:
            try:
                listings[folder] = set(os.listdir(folder))
            except OSError:
                listings[folder] = set()
        if name not in listings[folder]:
            raise errors.UserError(f"{list_file}:{lineno}: image not found: {os.path.join(root, path)}")
    return paths, labels


def _subfolders(path):
    return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))


def _classes_file(cfg):
    """Data.classes as a file path: as given, else relative to Data.root."""
    name = cfg.Data.classes
    for path in (name, os.path.join(cfg.Data.root, name)):
        if os.path.isfile(path):
            return path
    raise errors.UserError(f"Data.classes: {name!r} is neither imagenet1k, folders nor an existing file")


def class_folders(cfg):
    """Folder names in label order (folder i holds class i) for the folder layout."""
    classes = cfg.Data.classes
    if classes == "imagenet1k":
        return [s for s in (line.strip() for line in _read_lines(IMAGENET_SYNSETS)) if s]
    if classes == "folders":
        train_dir = os.path.join(cfg.Data.root, "train")
        if not os.path.isdir(train_dir):
            raise errors.UserError(
                f"Data.classes: folders takes the class folders of {train_dir}, which does not exist")
        return _subfolders(train_dir)
    return [s for s in (line.strip() for line in _read_lines(_classes_file(cfg))) if s]


def class_names(cfg):
    """Human-readable class names in label order, for printing predictions."""
    if cfg.Data.classes == "imagenet1k":
        return [line.split(" ", 1)[1].strip() for line in _read_lines(IMAGENET_NAMES) if line.strip()]
    return class_folders(cfg)


def scan_folders(split_dir, classes, num_classes, classes_source):
    """Images under split_dir/<class>/ (recursively), labelled by the class's position in `classes`."""
    if not os.path.isdir(split_dir):
        raise errors.UserError(f"split folder not found: {split_dir}")
    index = {name: i for i, name in enumerate(classes)}
    paths, labels = [], []
    for name in _subfolders(split_dir):
        if name not in index:
            raise errors.UserError(
                f"folder {os.path.join(split_dir, name)} is not a class of {classes_source}")
        if index[name] >= num_classes:
            raise errors.UserError(f"folder {os.path.join(split_dir, name)} is class {index[name]}, "
                                   f"outside [0, {num_classes}) (Global.num_classes)")
        class_dir = os.path.join(split_dir, name)
        for dirpath, dirnames, filenames in os.walk(class_dir):
            dirnames.sort()
            for fname in sorted(filenames):
                if fname.lower().endswith(IMG_EXTENSIONS):
                    paths.append(os.path.relpath(os.path.join(dirpath, fname), split_dir))
                    labels.append(index[name])
    if not paths:
        raise errors.UserError(f"no images found in {split_dir}/<class>/")
    return paths, labels


def build_dataset(cfg, split):
    """The 'train' or 'val' ImageDataset: from the list file Data.<split>_list, else root/<split>/<class>/."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    root = cfg.Data.root
    if not os.path.isdir(root):
        raise errors.UserError(f"Data.root: directory not found: {root}")
    num_classes = cfg.Global.num_classes
    list_name = getattr(cfg.Data, f"{split}_list")
    if list_name:
        paths, labels = read_list(os.path.join(root, list_name), root, num_classes, f"Data.{split}_list")
        base = root
    else:
        base = os.path.join(root, split)
        source = {"imagenet1k": IMAGENET_SYNSETS, "folders": os.path.join(root, "train")}.get(
            cfg.Data.classes, cfg.Data.classes)
        paths, labels = scan_folders(base, class_folders(cfg), num_classes, f"Data.classes ({source})")
    return ImageDataset(base, paths, labels, build_transform(cfg, split), train=split == "train")


def sample_seed(seed, epoch, index):
    """The augmentation seed of sample `index` in `epoch`: a 32-bit hash of the three."""
    return int(np.random.SeedSequence((seed, epoch, index)).generate_state(1)[0])


class TrainBatchSampler:
    """Yields this rank's micro-batches of (index, sample_seed), drop-last, in a (seed, epoch) order.

    Optimizer step s consumes the global batch perm[s*G:(s+1)*G], G = batch_size * world_size *
    accum_steps; micro-step j of rank r takes the slice at offset (j * world_size + r) * batch_size. So
    the samples of each optimizer step, and their augmentation, are the same for any split of G into
    devices x accumulation steps.
    """

    def __init__(self, num_samples, batch_size, world_size=1, rank=0, accum_steps=1, seed=0):
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.world_size = world_size
        self.rank = rank
        self.accum_steps = accum_steps
        self.seed = seed
        self.global_batch = batch_size * world_size * accum_steps
        if self.steps_per_epoch == 0:
            raise errors.UserError(
                f"the training set has {num_samples} images, fewer than the global batch {self.global_batch} "
                f"(batch_size {batch_size} x {world_size} devices x {accum_steps} accumulation steps); "
                f"lower Data.global_batch_size (or Data.batch_size)")
        self.set_epoch(0)

    @property
    def steps_per_epoch(self):
        return self.num_samples // self.global_batch

    def set_epoch(self, epoch, start_step=0):
        """Iterate `epoch` from optimizer step `start_step` (to resume inside an epoch)."""
        if not 0 <= start_step <= self.steps_per_epoch:
            raise ValueError(f"start_step {start_step} is outside [0, {self.steps_per_epoch}]")
        self.epoch = epoch
        self.start_step = start_step

    def permutation(self):
        # Legacy RandomState: its stream is frozen across NumPy versions, unlike Generator's.
        state = np.random.SeedSequence((self.seed, self.epoch)).generate_state(4)
        return np.random.RandomState(state).permutation(self.num_samples)

    def __iter__(self):
        perm = self.permutation()
        g, b = self.global_batch, self.batch_size
        for step in range(self.start_step, self.steps_per_epoch):
            for j in range(self.accum_steps):
                lo = step * g + (j * self.world_size + self.rank) * b
                yield [(int(i), sample_seed(self.seed, self.epoch, int(i))) for i in perm[lo:lo + b]]

    def __len__(self):
        return (self.steps_per_epoch - self.start_step) * self.accum_steps


class EvalBatchSampler:
    """Rank r gets indices r, r + W, r + 2W, ... in batches, in order: every image once over all ranks."""

    def __init__(self, num_samples, batch_size, world_size=1, rank=0):
        self.indices = range(rank, num_samples, world_size)
        self.batch_size = batch_size

    def __iter__(self):
        for lo in range(0, len(self.indices), self.batch_size):
            yield list(self.indices[lo:lo + self.batch_size])

    def __len__(self):
        return -(-len(self.indices) // self.batch_size)


def build_loader(cfg, split, world_size=1, rank=0, accum_steps=1):
    """(loader, batch sampler) for 'train' or 'val': a paddle.io.DataLoader wrapped in CheckedLoader.

    Train batches are [images [B,3,H,W] uint8, labels [B] int64, sample seeds [B] int64, n_bad [B] int64]
    (batch_augment.BatchAugment makes them model inputs); call batch_sampler.set_epoch(epoch, start_step)
    before each epoch. Val batches are [images [B,3,H,W] float32 normalised, labels].
    """
    dataset = build_dataset(cfg, split)
    if split == "train":
        if not 0 <= cfg.Global.seed < 2**63:
            raise errors.UserError(f"Global.seed: {cfg.Global.seed} must be a non-negative integer")
        sampler = TrainBatchSampler(len(dataset), cfg.Data.batch_size, world_size, rank, accum_steps,
                                    cfg.Global.seed)
    else:
        sampler = EvalBatchSampler(len(dataset), cfg.Data.batch_size, world_size, rank)
    dataset.defer_errors = True
    loader = paddle.io.DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.Data.num_workers,
                                  return_list=True)
    return CheckedLoader(loader, dataset), sampler
