"""The data pipeline's measures: one worker's train or val transform on ImageNet-sized JPEGs made from lit_data."""
import glob
import os
import random

import numpy as np

from t2tvit.errors import UserError

from .settings import DATA_SETTINGS, ROOT, config_of, timed


def measure_data(args, name):
    from t2tvit.transforms import build_transform
    split, overrides = DATA_SETTINGS[name]
    cfg = config_of(args, overrides)
    transform = build_transform(cfg, split)
    paths = sorted(glob.glob(os.path.join(args.work_dir, "jpeg", "*.JPEG")))
    random.seed(0)
    np.random.seed(0)

    def run():
        for path in paths:
            transform(path)

    # Time per image, so that images/s = 1 / median.
    return [t / len(paths) for t in timed(run, args.warmup, args.repeat)]


def make_jpegs(out_dir, count):
    """ImageNet-sized JPEGs (long side 500, short 375, quality 90) made from the photos in lit_data."""
    from PIL import Image
    sources = sorted(glob.glob(os.path.join(ROOT, "lit_data", "**", "*.JPEG"), recursive=True))
    if not sources:
        raise UserError(f"no JPEGs under {os.path.join(ROOT, 'lit_data')} to make benchmark images from")
    os.makedirs(out_dir, exist_ok=True)
    for i in range(count):
        with Image.open(sources[i % len(sources)]) as img:
            img = img.convert("RGB")
            size = (500, 375) if img.width >= img.height else (375, 500)
            img.resize(size, Image.Resampling.BICUBIC).save(os.path.join(out_dir, f"img_{i:04d}.JPEG"), quality=90)
