"""Turn IDX image/label files (MNIST, Fashion-MNIST, ...) into this repo's dataset layout.

    python tools/idx_to_dataset.py --src /usr/share/datasets/fashion-mnist --out data/fashion_mnist
    python tools/idx_to_dataset.py --train-images a.idx3 --train-labels a.idx1 --val-images b.idx3 \
        --val-labels b.idx1 --out data/mine --class-names names.txt --limit-train 5000 --limit-val 1000

Writes OUT/train/<class>/<n>.png and OUT/val/<class>/<n>.png (grayscale stored as RGB, the 3 channels the
model takes), OUT/train.txt and OUT/val.txt (`train/<class>/<n>.png label`) and OUT/classes.txt (one class
per line, line i = label i) for Data.classes. The class names double as folder names, so a `/` in a name
becomes `_` (Fashion-MNIST's `T-shirt/top` is `T-shirt_top`); then both the list files and the
folder layout give the same labels. Files may be gzip-compressed or raw.

Hostile or broken files are refused up front with one line: an IDX header is checked against the file's
length (and a gzip stream is never inflated past what its header promises, at most IDX_MAX_BYTES), labels
must be class indices, images must have pixels, and class names must make folder names. The dataset is
written into a hidden temporary folder beside OUT, renamed to OUT at the end: no half-made dataset.
"""
import t2tvit.cpu_env  # noqa: F401  (first: sets CPU threads before Paddle loads)
import argparse
import gzip
import os
import shutil
import sys
import tempfile

import numpy as np
from PIL import Image

from t2tvit import errors
from t2tvit.names import is_folder_name
from t2tvit.quiet import add_verbose_flag

FASHION_MNIST = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                 "Ankle boot"]
# The MNIST-family file names inside a --src folder: (split, kind) -> stem; `.gz` is optional.
STEMS = {("train", "images"): "train-images-idx3-ubyte", ("train", "labels"): "train-labels-idx1-ubyte",
         ("val", "images"): "t10k-images-idx3-ubyte", ("val", "labels"): "t10k-labels-idx1-ubyte"}
IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


# The largest IDX payload read (EMNIST's biggest file is about 550 MB): a header or a gzip stream promising
# more is refused before anything that size is allocated, so a small gzip bomb cannot exhaust memory.
IDX_MAX_BYTES = 1 << 30
# Labels are class indices: one past this would mean a folder and a name per class up to it.
MAX_LABEL = 100_000


def read_idx(path):
    """The array stored in an IDX file (gzip or raw); UserError naming the file if it is not one.

    The header is read first and the payload size it promises is checked against the file (raw) or is the
    most that is inflated (gzip, read in chunks), so nothing larger than the header says is ever allocated.
    """
    try:
        with open(path, "rb") as raw:
            compressed = raw.read(2) == b"\x1f\x8b"
            raw.seek(0)
            f = gzip.GzipFile(fileobj=raw) if compressed else raw
            try:
                return _read_idx_stream(path, f, None if compressed else os.fstat(raw.fileno()).st_size)
            except (OSError, EOFError, gzip.BadGzipFile) as e:
                if not compressed:
                    raise
                raise errors.UserError(f"{path}: broken gzip file ({e})") from None
    except OSError as e:
        raise errors.UserError(f"cannot read {path}: {e.strerror}") from None


def _read_idx_stream(path, f, file_size):
    magic = f.read(4)
    if len(magic) < 4 or magic[:2] != b"\0\0" or magic[2] not in IDX_DTYPES:
        raise errors.UserError(f"{path} is not an IDX file (it must start with 00 00 <type> <ndim>)")
    ndim = magic[3]
    dims = f.read(4 * ndim)
    if len(dims) < 4 * ndim:
        raise errors.UserError(f"{path}: IDX header cut short")
    shape = tuple(int(d) for d in np.frombuffer(dims, ">u4", ndim))
    dtype = np.dtype(IDX_DTYPES[magic[2]])
    payload = int(np.prod(shape, dtype=object)) * dtype.itemsize
    header = 4 + 4 * ndim
    if payload > IDX_MAX_BYTES:
        raise errors.UserError(f"{path}: IDX header promises shape {shape} ({payload} bytes), over the "
                               f"{IDX_MAX_BYTES}-byte limit")
    if file_size is not None and file_size != header + payload:
        raise errors.UserError(f"{path}: IDX header promises shape {shape} ({header + payload} bytes), "
                               f"file has {file_size} bytes")
    data = f.read(payload + 1)  # one byte more: a gzip stream longer than the header says is caught unread
    if len(data) != payload:
        found = f"{header + len(data)} bytes" if len(data) < payload else "more"
        raise errors.UserError(f"{path}: IDX header promises shape {shape} ({header + payload} bytes), "
                               f"file has {found}")
    return np.frombuffer(data, dtype).reshape(shape)


def read_split(images_path, labels_path):
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise errors.UserError(f"{images_path}: expected unsigned-byte images of shape (N, H, W), "
                               f"got {images.dtype} {images.shape}")
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise errors.UserError(f"{labels_path}: expected integer labels of shape (N,), got {labels.dtype} "
                               f"{labels.shape}")
    if len(images) != len(labels):
        raise errors.UserError(f"{images_path} holds {len(images)} images but {labels_path} holds "
                               f"{len(labels)} labels")
    if not len(labels):
        raise errors.UserError(f"{images_path} holds no images")
    if 0 in images.shape[1:]:
        raise errors.UserError(f"{images_path}: images of size {images.shape[1]}x{images.shape[2]} hold no pixels")
    if labels.min() < 0 or labels.max() > MAX_LABEL:
        bad = labels.min() if labels.min() < 0 else labels.max()
        raise errors.UserError(f"{labels_path}: label {bad} is not a class index in [0, {MAX_LABEL}]")
    return images, labels.astype(np.int64)


def subset(labels, limit, how):
    """Sorted indices of at most `limit` samples: the first ones, or class-balanced ('stratified').

    Stratified takes each class's samples in file order, round-robin over the classes, so class counts
    differ by at most one (unless a class runs out) and the choice needs no random numbers.
    """
    if limit is None or limit >= len(labels):
        return np.arange(len(labels))
    if how == "first":
        return np.arange(limit)
    rank = np.empty(len(labels), np.int64)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        rank[members] = np.arange(len(members))
    order = np.lexsort((np.arange(len(labels)), rank))
    return np.sort(order[:limit])


def folder_name(name):
    """`name` as a folder name (`/` -> `_`); refused up front if no file system would take it (empty, hidden,
    a NUL or other control character, over 255 bytes), before any file is written."""
    safe = name.replace("/", "_").replace(os.sep, "_").strip()
    if not is_folder_name(safe):
        raise errors.UserError(f"--class-names: class name {name!r} cannot be a folder name")
    return safe


def class_names(choice, num_labels, images_path):
    """Names for labels 0..num_labels-1: 'auto' (Fashion-MNIST's when the images file or its folder
    has 'fashion' in its name, else the numbers), 'fashion-mnist', 'numbers', or a file with one name per line."""
    if choice == "auto":
        folder, name = os.path.split(os.path.abspath(images_path))
        named = (os.path.basename(folder) + "/" + name).lower()
        choice = "fashion-mnist" if "fashion" in named else "numbers"
    if choice == "fashion-mnist":
        names = FASHION_MNIST
    elif choice == "numbers":
        names = [str(i) for i in range(num_labels)]
    else:
        try:
            with open(choice, encoding="utf-8") as f:
                names = [line.strip() for line in f if line.strip()]
        except OSError as e:
            raise errors.UserError(f"--class-names: cannot read {choice}: {e.strerror}") from None
    if len(names) < num_labels:
        raise errors.UserError(f"--class-names: {len(names)} names for labels up to {num_labels - 1}")
    folders = [folder_name(n) for n in names]
    if len(set(folders)) != len(folders):
        raise errors.UserError("--class-names: two classes would share a folder name")
    return folders


def write_split(out, split, images, labels, keep, folders):
    """PNG files out/split/<class>/<n>.png for the samples `keep` (n = index in the source file) and
    out/<split>.txt."""
    lines = []
    for name in sorted(set(folders[c] for c in labels[keep])):
        os.makedirs(os.path.join(out, split, name), exist_ok=True)
    width = len(str(len(labels) - 1))
    for i in keep:
        label = labels[i]
        rel = f"{split}/{folders[label]}/{i:0{width}d}.png"
        Image.fromarray(images[i], "L").convert("RGB").save(os.path.join(out, rel))
        lines.append(f"{rel} {label}\n")
    with open(os.path.join(out, f"{split}.txt"), "w") as f:
        f.writelines(lines)


def source_paths(args):
    """(split, kind) -> path: explicit --<split>-<kind> options, else the standard names inside --src."""
    paths = {}
    for (split, kind), stem in STEMS.items():
        given = getattr(args, f"{split}_{kind}")
        if given:
            paths[split, kind] = given
            continue
        candidates = [os.path.join(args.src, stem + ext) for ext in (".gz", "")]
        found = [p for p in candidates if os.path.isfile(p)]
        if not found:
            raise errors.UserError(f"no {split} {kind}: neither {' nor '.join(candidates)} exists "
                                   f"(pass --src DIR or --{split}-{kind} FILE)")
        paths[split, kind] = found[0]
    return paths


@errors.cli
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_verbose_flag(ap)
    ap.add_argument("--src", default="/usr/share/datasets/fashion-mnist",
                    help="folder with {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] (Debian's "
                         "dataset-fashion-mnist by default)")
    for split in ("train", "val"):
        for kind in ("images", "labels"):
            ap.add_argument(f"--{split}-{kind}", default="", help=f"{split} {kind} IDX file (overrides --src)")
    ap.add_argument("--out", required=True, help="dataset root to create (Data.root)")
    ap.add_argument("--class-names", default="auto",
                    help="auto (fashion-mnist if the images file or its folder has 'fashion' in its name, else "
                         "numbers) | fashion-mnist | numbers | a file with one name per line (line i = label i)")
    ap.add_argument("--limit-train", type=int, default=None, help="keep at most this many training images")
    ap.add_argument("--limit-val", type=int, default=None, help="keep at most this many validation images")
    ap.add_argument("--subset", choices=["stratified", "first"], default="stratified",
                    help="how --limit-* choose: class-balanced, or the first N in the file")
    args = ap.parse_args(argv)
    for key in ("limit_train", "limit_val"):
        if getattr(args, key) is not None and getattr(args, key) < 1:
            raise errors.UserError(f"--{key.replace('_', '-')} must be at least 1")
    paths = source_paths(args)
    splits = {s: read_split(paths[s, "images"], paths[s, "labels"]) for s in ("train", "val")}
    num_labels = int(max(labels.max(initial=0) for _, labels in splits.values())) + 1
    folders = class_names(args.class_names, num_labels, paths["train", "images"])
    if os.path.exists(args.out) and (not os.path.isdir(args.out) or os.listdir(args.out)):
        raise errors.UserError(f"--out {args.out} is not empty: remove it or pick another --out")
    # Everything is written into a temporary folder beside --out, renamed to --out at the end: a failed or
    # interrupted conversion never leaves a half-made dataset that looks whole.
    parent, name = os.path.split(os.path.abspath(args.out))
    try:
        os.makedirs(parent, exist_ok=True)
        work = tempfile.mkdtemp(dir=parent, prefix=f".{name}.", suffix=".partial")
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(work, 0o777 & ~mask)  # mkdtemp's 0700 would make the dataset private to this user
    except OSError as e:
        raise errors.UserError(f"cannot write the dataset under {args.out}: {e}") from None
    try:
        for split, limit in (("train", args.limit_train), ("val", args.limit_val)):
            images, labels = splits[split]
            keep = subset(labels, limit, args.subset)
            write_split(work, split, images, labels, keep, folders)
            print(f"{split}: {len(keep)} images of {images.shape[1]}x{images.shape[2]} in "
                  f"{len(np.unique(labels[keep]))} classes -> {os.path.join(args.out, split)}/", flush=True)
        with open(os.path.join(work, "classes.txt"), "w") as f:
            f.writelines(name + "\n" for name in folders)
        os.replace(work, args.out)  # an empty --out folder is replaced as a whole
    except OSError as e:
        raise errors.UserError(f"cannot write the dataset under {args.out}: {e}") from None
    finally:
        if os.path.isdir(work):
            shutil.rmtree(work, ignore_errors=True)
    print(f"classes: {', '.join(folders)} -> {os.path.join(args.out, 'classes.txt')}")


if __name__ == "__main__":
    sys.exit(main())
