"""Image lists or class folders -> a paddle Dataset and DataLoader of named samples.

Label sources (list files `relative/path label`, ImageNet synset folders, class folders, a class-name file),
ImageDataset, and the loader that carries the bad-image protocol: an unreadable training image is replaced,
an unreadable validation image is an error, and both reach the main process with the real message.
The pixels come from transforms.py, the order and seeds from samplers.py.
"""
import os
import random
import sys
import threading
import time

import numpy as np
import paddle

from . import errors, inputs
from .batch_augment import Normalize
from .decode import BadImage
from .names import is_folder_name
from .samplers import EvalBatchSampler, TrainBatchSampler
from .transforms import build_transform

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
IMAGENET_SYNSETS = os.path.join(DATA_DIR, "imagenet_synsets.txt")
IMAGENET_NAMES = os.path.join(DATA_DIR, "imagenet1k_label_list.txt")
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".gif")

class ImageDataset(paddle.io.Dataset):
    """Samples (root-relative path, label). Items are `index` or `(index, sample_seed)`; each sample is a dict.

    train: {"image": CHW uint8, "label", "seed": the sample seed (it also drives the sample's random
    erasing, applied later to the mixed batch), "n_bad", "failed"}. An unreadable image is reported on
    stderr and replaced by the next sample (same seed), n_bad counting the images skipped; MAX_SKIPS
    unreadable images in a row is a UserError. val: {"image": CHW uint8, the pixels EvalTransform crops (a
    quarter of the float32 bytes through shared memory; the loader normalises them on the device), "label",
    "failed"}; an unreadable image is a UserError.

    defer_errors (what build_loader asks for): an exception raised inside a paddle DataLoader never reaches
    the caller intact (with num_workers 0 the loader hangs; with workers it becomes an opaque SystemError),
    so a sample that would raise comes back blank with "failed" = its index (-1 when it did not fail), and
    CheckedLoader raises the UserError again in the main process.
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
        ok = np.int64(-1)
        if not self.train:
            try:
                return {"image": self.transform.pixels(self.path(index)), "label": self.labels[index], "failed": ok}
            except BadImage as e:
                raise errors.UserError(f"cannot read validation image {e.path} ({e.reason})") from None
        if seed is None:
            seed = random.getrandbits(32)
        n = len(self)
        for n_bad in range(min(n, self.MAX_SKIPS)):
            i = (index + n_bad) % n
            try:
                image = self.transform(self.path(i), random.Random(seed))
            except BadImage as e:
                print(f"warning: skipping unreadable training image {e.path} ({e.reason}); "
                      f"using {self.path((i + 1) % n)} instead", file=sys.stderr, flush=True)
                continue
            return {"image": image, "label": self.labels[i], "seed": np.int64(seed), "n_bad": np.int64(n_bad),
                    "failed": ok}
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
        size = (3, *self.transform.size)
        blank = {"image": np.zeros(size, np.uint8), "label": np.int64(0),
                 "failed": np.int64(index)}
        if self.train:
            blank.update(seed=np.int64(0), n_bad=np.int64(0))
        return blank


class CheckedLoader:
    """Iterates a paddle DataLoader over a defer_errors ImageDataset; raises the deferred UserErrors.

    Batches reach the device as they come, and nothing of them is read back on the way: the failure flags are
    kept on the device and read by check() (the trainer calls it at its print steps; every iteration ends with
    it), which raises the UserError again in the main process. Validation images are normalised on the device
    (`normalize`). A worker that gives no batch for `timeout` seconds ends the iteration with a UserError instead
    of a hang (Paddle's own timeout only notices dead workers).
    """

    def __init__(self, loader, dataset, normalize=None, timeout=0):
        self.loader = loader
        self.dataset = dataset
        self.normalize = normalize
        self.timeout = timeout
        self._failed = None  # device: the largest failed index seen since the last check (-1: none)

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for batch in self._batches():
            failed = batch["failed"].max()
            self._failed = failed if self._failed is None else paddle.maximum(self._failed, failed)
            if self.normalize is not None:
                batch["image"] = self.normalize(batch["image"])
            yield batch
        self.check()

    def check(self):
        """Raise the UserError of a sample that failed since the last check (one read of a device scalar)."""
        if self._failed is None:
            return
        failed, self._failed = int(self._failed), None
        if failed >= 0:
            self.dataset.load(failed)  # fails again here, in the main process, with the real message
            raise errors.UserError(f"reading {self.dataset.path(failed)} failed in a data loader worker")

    def _batches(self):
        """The loader's batches; with workers and a timeout, a watchdog ends a wait longer than the timeout."""
        batches = iter(self.loader)
        if not (self.timeout and self.loader.num_workers and hasattr(batches, "_blocking_queue")):
            yield from batches
            return
        waiting, stuck, done = [None], threading.Event(), threading.Event()

        def watch():
            while not done.wait(min(1.0, self.timeout)):
                since = waiting[0]
                if since is not None and time.monotonic() - since > self.timeout:
                    stuck.set()
                    # Paddle's shutdown of the loader and multiprocessing's exit hook (SIGTERM, then join) wait for
                    # the workers with no timeout: one that cannot run (stopped, or wedged) would keep the process
                    # from ever exiting after its error line. Nothing in them is worth saving: they are killed,
                    # once Paddle's SIGCHLD handler no longer watches them (it would raise in the main thread).
                    paddle.base.core._erase_process_pids(id(batches))
                    for worker in batches._workers:
                        worker.kill()
                    batches._blocking_queue.kill()  # what Paddle does when a worker dies: the wait raises
                    return

        threading.Thread(target=watch, name="loader-timeout", daemon=True).start()
        try:
            while True:
                waiting[0] = time.monotonic()
                try:
                    batch = next(batches)
                except StopIteration:
                    return
                except Exception:
                    if not stuck.is_set():
                        raise
                    batch = None
                waiting[0] = None
                if stuck.is_set():
                    raise errors.UserError(
                        f"no {'training' if getattr(self.dataset, 'train', False) else 'validation'} batch from the "
                        f"{self.loader.num_workers} data loader worker(s) in {self.timeout:g} s (Data.timeout): a "
                        "worker is stuck (a hung file system?); raise Data.timeout if reading is that slow")
                yield batch
        finally:
            done.set()


def check_shared_memory(cfg, split, batch_size, local_processes=None, path="/dev/shm"):
    """Refuse, in one line saying what to change, a loader whose batches in flight would not fit in /dev/shm.

    With Data.use_shared_memory, every worker hands its batches to the trainer through /dev/shm, up to
    prefetch_factor (2) each, plus the one being copied to the device; on one machine, every training
    process has its own workers. Docker's default /dev/shm is 64 MB, which ends a run with `Bus error`.
    """
    d = cfg.Data
    if not (d.use_shared_memory and d.num_workers) or not os.path.isdir(path):
        return
    h, w = (cfg.Global.img_size,) * 2 if isinstance(cfg.Global.img_size, int) else cfg.Global.img_size
    per_batch = batch_size * 3 * h * w  # uint8 pixels, train and val alike; labels and flags are bytes
    local = local_processes or int(os.environ.get("PADDLE_LOCAL_SIZE", "1"))
    need = per_batch * (d.num_workers * 2 + 1) * local
    st = os.statvfs(path)
    free = st.f_bavail * st.f_frsize
    if need > free:
        mib = 1 << 20
        raise errors.UserError(
            f"the {split} data loader needs about {need / mib:.0f} MiB in {path} ({local} process(es) x "
            f"({d.num_workers} workers x 2 + 1) batches of {per_batch / mib:.1f} MiB) but {free / mib:.0f} MiB are "
            f"free: give the container more (docker run --shm-size={max(1, -(-need * 2 // (1 << 30)))}g), lower "
            "Data.num_workers, or set Data.use_shared_memory=false")


# List and class files are streamed within these budgets: ImageNet's train.txt is 1.28M lines, 50 MB; past a GiB a
# "list" is a mistake or an attack (a 6 GB one was read whole), and no path or class name is 8,192 characters.
LIST_MAX_BYTES = 1 << 30
CLASSES_MAX_BYTES = 16 << 20
MAX_LINE = 8192


def _read_lines(path, max_bytes, what="list file"):
    """(line number, line) of a UTF-8 list or class file, a BOM dropped, streamed (inputs.text_lines); a UserError
    naming the file for one that is not a regular file, unreadable, not UTF-8, or over its budget."""
    try:
        yield from inputs.text_lines(path, max_bytes, MAX_LINE)
    except inputs.NotRegular as e:
        raise errors.UserError(f"{what} {path} is {e.kind}, not a file") from None
    except inputs.TooLarge as e:
        raise errors.UserError(f"{what} {path}: {e}; is it the right file?") from None
    except (OSError, UnicodeDecodeError) as e:
        raise errors.UserError(f"cannot read {what} {path}: {e}") from None


def read_list(list_file, root, num_classes, key="list file", allow_outside_root=False):
    """Parse `relative/path label` lines; check labels, that every path stays inside `root` (an absolute path
    or a `..` escape is refused unless allow_outside_root: Data.allow_outside_root) and that every listed
    image exists. A UTF-8 BOM at the start of the file is not part of the first path."""
    if not os.path.exists(list_file):
        raise errors.UserError(f"{key}: list file not found: {list_file}")
    paths, labels, linenos = [], [], []
    for lineno, line in _read_lines(list_file, LIST_MAX_BYTES, f"{key}: list file"):
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
        path = fields[0].strip()
        if not allow_outside_root and (os.path.isabs(path) or os.path.normpath(path).split(os.sep)[0] == ".."):
            raise errors.UserError(f"{list_file}:{lineno}: {path!r} is outside Data.root {root} (set "
                                   f"Data.allow_outside_root: true to allow it)")
        paths.append(path)
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
        if os.path.exists(path):  # a folder or FIFO by that name is then told as such (_read_lines)
            return path
    raise errors.UserError(f"Data.classes: {name!r} is neither imagenet1k, folders nor an existing file")


def class_folders(cfg):
    """Folder names in label order (folder i holds class i) for the folder layout."""
    classes = cfg.Data.classes
    if classes == "imagenet1k":
        return _names(IMAGENET_SYNSETS)
    if classes == "folders":
        train_dir = os.path.join(cfg.Data.root, "train")
        if not os.path.isdir(train_dir):
            raise errors.UserError(
                f"Data.classes: folders takes the class folders of {train_dir}, which does not exist")
        return _subfolders(train_dir)
    path = _classes_file(cfg)
    names = _names(path)
    seen = set()
    for name in names:  # each names a class folder (and is printed): what a folder name may be
        if not is_folder_name(name):
            raise errors.UserError(f"Data.classes: {errors.shown(path)}: class name {name!r} cannot be a folder "
                                   "name (empty, hidden, a `/`, a control character or over 255 bytes)")
        if name in seen:
            raise errors.UserError(f"Data.classes: {errors.shown(path)} names the class {name!r} twice")
        seen.add(name)
    return names


def _names(path):
    """The non-blank lines of a class file, stripped."""
    return [s for s in (line.strip() for _, line in _read_lines(path, CLASSES_MAX_BYTES, "Data.classes file")) if s]


def imagenet_names():
    """ImageNet-1k's 1000 human-readable class names, in label order."""
    return [line.split(" ", 1)[1] for line in _names(IMAGENET_NAMES)]


def class_names(cfg):
    """Human-readable class names in label order, for printing predictions."""
    if cfg.Data.classes == "imagenet1k":
        return imagenet_names()
    return class_folders(cfg)


def is_imagenet(cfg, names=None):
    """Whether the classes are ImageNet-1k's: `names` (e.g. a checkpoint's) are its names, or, with none, the
    config says so (Data.classes imagenet1k, 1000 classes)."""
    if names is not None:
        return list(names) == imagenet_names()
    return cfg.Data.classes == "imagenet1k" and cfg.Global.num_classes == 1000


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


def build_dataset(cfg, split, defer_errors=False):
    """The 'train' or 'val' ImageDataset: from the list file Data.<split>_list, else root/<split>/<class>/."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    root = cfg.Data.root
    if not os.path.isdir(root):
        raise errors.UserError(f"Data.root: directory not found: {root}")
    num_classes = cfg.Global.num_classes
    list_name = getattr(cfg.Data, f"{split}_list")
    if list_name:
        paths, labels = read_list(os.path.join(root, list_name), root, num_classes, f"Data.{split}_list",
                                  cfg.Data.allow_outside_root)
        base = root
    else:
        base = os.path.join(root, split)
        source = {"imagenet1k": IMAGENET_SYNSETS, "folders": os.path.join(root, "train")}.get(
            cfg.Data.classes, cfg.Data.classes)
        paths, labels = scan_folders(base, class_folders(cfg), num_classes, f"Data.classes ({source})")
    return ImageDataset(base, paths, labels, build_transform(cfg, split), train=split == "train",
                        defer_errors=defer_errors)


def build_loader(cfg, split, batch_size=None, world_size=1, rank=0, accum_steps=1, dataset=None):
    """(loader, batch sampler) for 'train' or 'val': a paddle.io.DataLoader wrapped in CheckedLoader.

    batch_size: images per device and micro-step (default Data.batch_size). Train batches are dicts of
    "image" [B,3,H,W] uint8 (batch_augment.BatchAugment makes them model inputs), "label", "seed" (the sample
    seeds), "n_bad" and "failed"; call batch_sampler.set_epoch(epoch, start_step) before each epoch. Val
    batches: "image" [B,3,H,W] float32 normalised (on the device; uint8 through the loader), "label", "failed".
    dataset: a defer_errors dataset to load instead of the config's split (eval_sets.py: the robustness sets).
    """
    if dataset is None:
        dataset = build_dataset(cfg, split, defer_errors=True)
    batch_size = batch_size or cfg.Data.batch_size
    check_shared_memory(cfg, split, batch_size)
    if split == "train":
        sampler = TrainBatchSampler(len(dataset), batch_size, world_size, rank, accum_steps, cfg.Global.seed)
    else:
        sampler = EvalBatchSampler(len(dataset), batch_size, world_size, rank)
    loader = paddle.io.DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.Data.num_workers,
                                  use_shared_memory=cfg.Data.use_shared_memory, return_list=True)
    normalize = Normalize(cfg.Data.mean, cfg.Data.std) if split != "train" else None
    return CheckedLoader(loader, dataset, normalize, cfg.Data.timeout), sampler
