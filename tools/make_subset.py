"""Write a list file (and its class-name file) selecting some classes of a dataset, optionally N images per class.

    python tools/make_subset.py --root data/fashion_mnist --split train --classes 5-9 --per-class 100 \
        --seed 0 --out train_5to9_100.txt

The images are read as training reads them (tools/t2tvit/dataset.py): the list file --list under --root (lines
`relative/path label`, default `<split>.txt`, what idx_to_dataset writes), or with `--list ''` the class
folders root/<split>/<class>/, numbered by --names as Data.classes numbers them. The subset's labels are
renumbered: the i-th class of --classes (in the order given) becomes label i, so a model fine-tuned on it has
len(--classes) outputs. Both files are written inside --root, where Data.train_list / Data.val_list and
Data.classes find them: --out (lines `relative/path new_label`) and --names-out (default `classes_<CLASSES>.txt`,
line i = the name of new label i), each atomically.

--per-class N keeps N images of each class, chosen by --seed through a hash of (seed, path): the choice does
not depend on the Python or numpy version, and the N images for a seed are among its M > N ones.
"""
import t2tvit.cpu_env  # noqa: F401  (first: sets CPU threads before Paddle loads)
import argparse
import hashlib
import os
import sys
from types import SimpleNamespace

from t2tvit import atomic, errors
from t2tvit.dataset import class_folders, read_list, scan_folders
from t2tvit.quiet import add_verbose_flag


def parse_classes(spec, num_classes):
    """'5-9' or '0,2,4' or '0-2,7' -> [class index, ...] in the order written; UserError on anything else."""
    picked = []
    for part in spec.split(","):
        lo, sep, hi = part.strip().partition("-")
        try:
            first, last = int(lo), int(hi if sep else lo)
        except ValueError:
            raise errors.UserError(f"--classes: {spec!r} is not a list of class indices and ranges such as "
                                   f"5-9 or 0,2,4") from None
        if first > last:
            raise errors.UserError(f"--classes: range {part.strip()!r} runs backwards")
        picked.extend(range(first, last + 1))
    outside = [c for c in picked if not 0 <= c < num_classes]
    if outside:
        raise errors.UserError(f"--classes: class {outside[0]} is outside [0, {num_classes}) (the dataset's "
                               f"{num_classes} classes)")
    if len(set(picked)) != len(picked):
        raise errors.UserError(f"--classes: {spec!r} names a class twice")
    return picked


def inside_root(root, name, key):
    """root/name for a file the dataset code will read as Data.<key>: it must stay inside root."""
    if not name or os.path.isabs(name) or os.path.normpath(name).split(os.sep)[0] == "..":
        raise errors.UserError(f"{key}: {name!r} must be a file name relative to --root {root} (Data.train_list, "
                               f"Data.val_list and Data.classes are read from there)")
    return os.path.join(root, name)


def hash_rank(seed, path):
    return hashlib.sha256(f"{seed}\0{path}".encode("utf-8", "surrogateescape")).digest()


def choose(paths, labels, classes, per_class, seed, names, source):
    """[(path, new label)]: the images of each chosen class (per_class of them, by hash rank), in source order."""
    chosen = []
    for new, old in enumerate(classes):
        members = [p for p, label in zip(paths, labels) if label == old]
        if not members:
            raise errors.UserError(f"class {old} ({names[old]}) has no images in {source}")
        if len(members) < per_class:
            raise errors.UserError(f"class {old} ({names[old]}) has {len(members)} images in {source}, fewer than "
                                   f"--per-class {per_class}")
        if per_class:
            keep = set(sorted(members, key=lambda p: hash_rank(seed, p))[:per_class])
            members = [p for p in members if p in keep]
        chosen.extend((p, new) for p in members)
    return chosen


@errors.cli
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_verbose_flag(ap)
    ap.add_argument("--root", required=True, help="the dataset root (Data.root)")
    ap.add_argument("--split", choices=["train", "val"], required=True, help="which images to draw from")
    ap.add_argument("--list", default=None, help="list file under --root to draw from (default <split>.txt); "
                                                "'' = the class folders root/<split>/<class>/")
    ap.add_argument("--names", default="classes.txt",
                    help="the dataset's class names as Data.classes takes them: a file (under --root or a path), "
                         "folders (sorted names of root/train) or imagenet1k")
    ap.add_argument("--classes", required=True,
                    help="class indices to keep, e.g. 5-9 or 0,2,4; the i-th becomes label i")
    ap.add_argument("--per-class", type=int, default=0, help="images per class (default 0: all of them)")
    ap.add_argument("--seed", type=int, default=0, help="which --per-class images (default 0)")
    ap.add_argument("--out", required=True, help="list file to write, relative to --root (Data.<split>_list)")
    ap.add_argument("--names-out", default="",
                    help="class-name file to write, relative to --root (Data.classes; default classes_<CLASSES>.txt)")
    args = ap.parse_args(argv)
    root = args.root
    if not os.path.isdir(root):
        raise errors.UserError(f"--root: directory not found: {root}")
    if args.per_class < 0:
        raise errors.UserError(f"--per-class must be at least 0, got {args.per_class}")
    names = class_folders(SimpleNamespace(Data=SimpleNamespace(root=root, classes=args.names)))
    if not names:
        raise errors.UserError(f"--names {args.names} names no classes")
    classes = parse_classes(args.classes, len(names))
    list_name = f"{args.split}.txt" if args.list is None else args.list
    if list_name:
        source = inside_root(root, list_name, "--list")
        paths, labels = read_list(source, root, len(names), "--list")
    else:
        source = os.path.join(root, args.split)
        found, labels = scan_folders(source, names, len(names), f"--names ({args.names})")
        paths = [os.path.join(args.split, p) for p in found]  # list-file paths are relative to the root
    out = inside_root(root, args.out, "--out")
    names_out = inside_root(root, args.names_out or f"classes_{args.classes.replace(',', '_')}.txt", "--names-out")
    for path in (out, names_out):
        if list_name and os.path.abspath(path) == os.path.abspath(source):
            raise errors.UserError(f"{path} is the list file drawn from: write the subset to another name")
    chosen = choose(paths, labels, classes, args.per_class, args.seed, names, source)
    try:
        atomic.write_bytes(out, "".join(f"{p} {label}\n" for p, label in chosen).encode("utf-8", "surrogateescape"))
        atomic.write_bytes(names_out, "".join(names[c] + "\n" for c in classes).encode("utf-8"))
    except OSError as e:
        raise errors.StorageError(e.filename or out, e) from None
    per = f"{args.per_class} per class, seed {args.seed}" if args.per_class else "all of each class"
    print(f"wrote {out}: {len(chosen)} images of {len(classes)} classes from {source} ({per})")
    print("labels: " + ", ".join(f"{old} {names[old]} -> {new}" for new, old in enumerate(classes)))
    print(f"wrote {names_out}: their names in that order (Data.classes)")


if __name__ == "__main__":
    sys.exit(main())
