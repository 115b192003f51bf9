"""The evaluation sets papers report beside ImageNet val, each read from its own layout and scored as the field
scores it (timm's validate.py and its published result tables):

- imagenet: the config's validation split (Data.val_list, else Data.root/val/<class>/): top-1 / top-5;
- real: the same ImageNet val images, and beside their top-1 / top-5 the ReaL ones (Beyer et al. 2020, "Are we
  done with ImageNet?"): an image counts when the prediction is in its reassessed label set, and images whose set
  is empty are left out. The sets (data/imagenet_real_labels.json, from timm) are listed in the order of the
  ILSVRC2012 validation files, so an image is known by its file name, ILSVRC2012_val_NNNNNNNN.JPEG (number N is
  set N - 1), as timm's RealLabelsImagenet knows it;
- v2: ImageNetV2 (Recht et al. 2019): Data.root/<class index 0..999>/;
- a, r: ImageNet-A and ImageNet-R (Hendrycks et al. 2021): Data.root/<wnid>/ over their 200 classes, whose
  logits alone are kept before top-1 / top-5 (data/imagenet_{a,r}_indices.txt, from timm; its --valid-labels);
- sketch: ImageNet-Sketch (Wang et al. 2019): Data.root/<wnid>/ over the 1000 classes.
For v2, a, r and sketch, Data.root is the folder of class folders (the top folder of the published archive), and
every class folder must be there: a missing or foreign one is a one-line error naming them.
"""
import json
import os
import re

import numpy as np
import paddle

from . import errors
from .dataset import DATA_DIR, IMAGENET_SYNSETS, ImageDataset, build_dataset, build_loader, scan_folders
from .engine import evaluate
from .transforms import build_transform

KINDS = ("imagenet", "real", "v2", "a", "r", "sketch")
NAMES = {"imagenet": "ImageNet val", "real": "ImageNet-ReaL", "v2": "ImageNetV2", "a": "ImageNet-A",
         "r": "ImageNet-R", "sketch": "ImageNet-Sketch"}
# Images in each published set: another count is said in a note (a partial copy is not the published figure).
SIZES = {"real": 50000, "v2": 10000, "a": 7500, "r": 30000, "sketch": 50889}
REAL_LABELS = os.path.join(DATA_DIR, "imagenet_real_labels.json")
VAL_FILE = re.compile(r"^ILSVRC2012_val_(\d{8})\.[A-Za-z]+$")
LAYOUTS = {"v2": "class folders named 0..999", "a": "its 200 class folders named by WordNet id",
           "r": "its 200 class folders named by WordNet id", "sketch": "1000 class folders named by WordNet id"}


def data_lines(path):
    """The non-empty lines of one of the package's own data files."""
    with open(path, encoding="utf-8") as f:
        return [s for s in (line.strip() for line in f) if s]


def subset_classes(kind):
    """(wnids, their ImageNet-1k indices) of ImageNet-A or -R, checked against the 1000 synsets."""
    wnids = data_lines(os.path.join(DATA_DIR, f"imagenet_{kind}_synsets.txt"))
    indices = [int(i) for i in data_lines(os.path.join(DATA_DIR, f"imagenet_{kind}_indices.txt"))]
    synsets = data_lines(IMAGENET_SYNSETS)
    if len(wnids) != len(indices) or any(synsets[i] != w for i, w in zip(indices, wnids)):
        raise errors.UserError(f"{DATA_DIR}: imagenet_{kind}_synsets.txt and imagenet_{kind}_indices.txt disagree")
    return wnids, indices


def check_folders(root, classes, what):
    """Data.root holds exactly the class folders `classes` (hidden ones aside), or one line naming the others."""
    if not os.path.isdir(root):
        raise errors.UserError(f"Data.root: directory not found: {errors.shown(root)} (--dataset {what})")
    found = {e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith(".")}
    missing = [c for c in classes if c not in found]
    foreign = sorted(found - set(classes))
    if missing or foreign:
        parts = [f"{len(names)} {kind} ({', '.join(map(errors.shown, names[:5]))}{' ...' if len(names) > 5 else ''})"
                 for kind, names in (("missing", missing), ("foreign", foreign)) if names]
        raise errors.UserError(f"{errors.shown(root)} is not the {NAMES[what]} layout ({LAYOUTS[what]}): class "
                               f"folders {'; '.join(parts)}")


def real_label_sets(dataset):
    """The ReaL label set of each image of `dataset`, known by its ILSVRC2012 validation file name."""
    try:
        with open(REAL_LABELS) as f:
            table = json.load(f)
    except (OSError, ValueError) as e:
        raise errors.UserError(f"cannot read the ReaL labels {REAL_LABELS}: {e}") from None
    sets = []
    for i in range(len(dataset)):
        path = dataset.path(i)
        match = VAL_FILE.match(os.path.basename(path))
        number = int(match.group(1)) if match else 0
        if not 1 <= number <= len(table):
            raise errors.UserError(f"--dataset real: {errors.shown(path)} is not an ImageNet validation file "
                                   f"(ILSVRC2012_val_00000001.JPEG .. ILSVRC2012_val_{len(table):08d}.JPEG), by "
                                   "whose names the ReaL labels are listed")
        sets.append(frozenset(table[number - 1]))
    return sets


class Indexed(paddle.io.Dataset):
    """An ImageDataset whose samples also carry their "index" (which image a row of a batch is)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, item):
        return {**self.dataset[item], "index": np.int64(item)}

    def load(self, index, seed=None):
        return self.dataset.load(index, seed)

    def path(self, index):
        return self.dataset.path(index)


class Restricted(paddle.nn.Layer):
    """model's logits of the classes `indices` only, in that order (ImageNet-A / -R's 200)."""

    def __init__(self, model, indices):
        super().__init__()
        self.model = model
        self.indices = paddle.to_tensor(np.asarray(indices, np.int64))

    def forward(self, x):
        return paddle.index_select(self.model(x), self.indices, axis=-1)


class RealScore:
    """ReaL top-1 / top-5 counts of the batches it observes (rows of images with an empty set are skipped)."""

    def __init__(self, sets):
        self.sets = sets
        self.correct1 = self.correct5 = self.images = 0

    def __call__(self, logits, batch):
        top5 = paddle.topk(logits.astype("float32"), k=5, axis=-1)[1].numpy()
        for index, predicted in zip(batch["index"].numpy(), top5):
            labels = self.sets[int(index)]
            if labels:
                self.images += 1
                self.correct1 += int(predicted[0]) in labels
                self.correct5 += any(int(p) in labels for p in predicted)


class EvalSet:
    """One evaluation set (a KINDS member) read from the config: `dataset`, and evaluate(model, ...)."""

    def __init__(self, kind, cfg):
        if kind not in KINDS:
            raise errors.UserError(f"--dataset {kind!r}: choose one of {', '.join(KINDS)}")
        self.kind, self.name, self.cfg = kind, NAMES[kind], cfg
        self.indices = self.real_sets = None
        if kind in ("imagenet", "real"):
            self.root = os.path.join(cfg.Data.root, cfg.Data.val_list) if cfg.Data.val_list else \
                os.path.join(cfg.Data.root, "val")
            self.dataset = build_dataset(cfg, "val", defer_errors=True)
            if kind == "real":
                self.real_sets = real_label_sets(self.dataset)
                self.dataset = Indexed(self.dataset)
            return
        self.root = cfg.Data.root
        if kind == "v2":
            classes = [str(i) for i in range(1000)]
        elif kind == "sketch":
            classes = data_lines(IMAGENET_SYNSETS)
        else:
            classes, self.indices = subset_classes(kind)
        check_folders(self.root, classes, kind)
        paths, labels = scan_folders(self.root, classes, len(classes), f"--dataset {kind}")
        self.dataset = ImageDataset(self.root, paths, labels, build_transform(cfg, "val"), train=False,
                                    defer_errors=True)

    def notes(self):
        """What makes this run's figure differ from the published set's, if anything."""
        expected = SIZES.get(self.kind)
        if expected and len(self.dataset) != expected:
            return [f"{self.name} has {expected} images and {self.root} holds {len(self.dataset)}: not the "
                    "published set's figure"]
        return []

    def evaluate(self, model, runtime, log=None, print_every=0):
        """{top1, top5, images[, real_top1, real_top5, real_images]} (fractions) over every rank's share."""
        if self.kind != "imagenet" and model.num_classes != 1000:
            raise errors.UserError(f"--dataset {self.kind} scores ImageNet-1k's 1000 classes; this model has "
                                   f"{model.num_classes}")
        loader, _ = build_loader(self.cfg, "val", world_size=runtime.world, rank=runtime.rank, dataset=self.dataset)
        real = RealScore(self.real_sets) if self.real_sets is not None else None
        scored = Restricted(model, self.indices) if self.indices is not None else model
        top1, top5, images = evaluate(scored, loader, runtime, log, print_every, observe=real)
        result = {"top1": top1, "top5": top5, "images": images}
        if real:
            correct1, correct5, n = runtime.all_sum([real.correct1, real.correct5, real.images])
            result.update(real_top1=correct1 / max(n, 1), real_top5=correct5 / max(n, 1), real_images=int(n))
        return result

    def summary(self, result):
        """The line saying what was measured on a set other than the config's own."""
        line = f"{self.name}: top1 {result['top1']:.4f}, top5 {result['top5']:.4f}, images: {result['images']}"
        if self.indices is not None:
            line += f" (logits of its {len(self.indices)} classes)"
        if "real_top1" in result:
            line += (f"; ReaL top1 {result['real_top1']:.4f}, top5 {result['real_top5']:.4f} over the "
                     f"{result['real_images']} images with ReaL labels")
        return line
