"""Build lit_data/, the committed smoke-test sample, from the foolbox wheel's 20 ImageNet photos.

    python tools/make_lit_data.py path/to/foolbox-3.3.4-py3-none-any.whl [--out lit_data]

The wheel names each photo foolbox/data/imagenet_<k>_<class id>.jpg with its true ImageNet-1k class id.
"""
import t2tvit.cpu_env  # noqa: F401  (first: sets CPU threads before Paddle loads)
import argparse
import io
import os
import re
import sys
import zipfile

from PIL import Image

from t2tvit import errors
from t2tvit.quiet import add_verbose_flag

TOOLS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TOOLS)
DATA = os.path.join(TOOLS, "t2tvit", "data")  # the package's class tables
SYNSETS = os.path.join(DATA, "imagenet_synsets.txt")
NAME = re.compile(r"^foolbox/data/imagenet_(\d{2})_(\d+)\.jpg$")
SHORT_SIDE = 256

README = """# lit_data: a 20-photo ImageNet smoke-test sample

20 real ImageNet photos (19 classes) with their true ImageNet-1k class ids, small enough to commit.
It exists so that training, evaluation and prediction can be run end to end without ImageNet, and so
that the data path is tested on real photos. It is far too small to learn anything from.

**`train/` and `val/` hold the same 20 photos.** This is a smoke-test sample, not a split: accuracy on
`val/` after training on `train/` measures memorisation only.

## Contents

- `train/<wnid>/imagenet_<k>.JPEG`, `val/<wnid>/imagenet_<k>.JPEG`: the photos, in the ImageNet folder
  layout (`<wnid>` is the class's WordNet id, see `tools/t2tvit/data/imagenet_synsets.txt`).
- `train.txt`, `val.txt`: list files, one line per photo: `train/<wnid>/imagenet_<k>.JPEG <class id>`
  (path relative to this folder, then the ImageNet-1k class index 0..999).

Both layouts give the same labels: the list files directly, the folders through the synset table
(`Data.classes: imagenet1k`).

| k | class id | wnid | class |
|---|---|---|---|
{rows}

## Source and license

The photos are `foolbox/data/imagenet_<k>_<class id>.jpg` (512x512 JPEG) from the wheel
`foolbox-3.3.4-py3-none-any.whl` on PyPI ([bethgelab/foolbox](https://github.com/bethgelab/foolbox),
MIT License, Copyright (c) 2020 Jonas Rauber et al.). The photos themselves come from the ImageNet
(ILSVRC-2012) dataset; see https://image-net.org for its terms of use.

## How it was made

    python tools/make_lit_data.py foolbox-3.3.4-py3-none-any.whl

Each photo is resized so that its short side is {short} pixels (bicubic; the originals are 512x512, so
the results are {short}x{short}) and saved as JPEG quality 90, once under `train/` and once under
`val/`. The class id is taken from the file name in the wheel.
"""


def read_synsets():
    with open(SYNSETS) as f:
        return [line.strip() for line in f if line.strip()]


def read_label_names():
    with open(os.path.join(DATA, "imagenet1k_label_list.txt")) as f:
        return [line.rstrip("\n").split(" ", 1)[1] for line in f if line.strip()]


def shrink(data):
    img = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = img.size
    s = SHORT_SIDE / min(w, h)
    return img.resize((round(w * s), round(h * s)), Image.BICUBIC)


def photos(wheel):
    """Yield (k, class id, JPEG bytes) for the wheel's ImageNet photos, in k order."""
    try:
        zf = zipfile.ZipFile(wheel)
    except (OSError, zipfile.BadZipFile) as e:
        raise errors.UserError(f"cannot read wheel {wheel}: {e}")
    with zf:
        found = sorted((m.group(1), int(m.group(2)), n) for n in zf.namelist() if (m := NAME.match(n)))
        if not found:
            raise errors.UserError(
                f"{wheel} has no foolbox/data/imagenet_*.jpg (expected the foolbox 3.3.4 wheel)")
        for k, cls, name in found:
            yield k, cls, zf.read(name)


@errors.cli
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_verbose_flag(ap)
    ap.add_argument("wheel", help="foolbox-3.3.4-py3-none-any.whl")
    ap.add_argument("--out", default=os.path.join(ROOT, "lit_data"), help="output folder (default: lit_data)")
    args = ap.parse_args(argv)

    synsets = read_synsets()
    names = read_label_names()
    lists = {"train": [], "val": []}
    rows = []
    for k, cls, data in photos(args.wheel):
        img = shrink(data)
        wnid = synsets[cls]
        for split, lines in lists.items():
            rel = f"{split}/{wnid}/imagenet_{k}.JPEG"
            os.makedirs(os.path.join(args.out, split, wnid), exist_ok=True)
            img.save(os.path.join(args.out, rel), "JPEG", quality=90)
            lines.append(f"{rel} {cls}\n")
        rows.append(f"| {k} | {cls} | {wnid} | {names[cls]} |")
    for split, lines in lists.items():
        with open(os.path.join(args.out, f"{split}.txt"), "w") as f:
            f.writelines(lines)
    with open(os.path.join(args.out, "README.md"), "w") as f:
        f.write(README.format(rows="\n".join(rows), short=SHORT_SIDE))
    print(f"wrote {len(rows)} photos to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
