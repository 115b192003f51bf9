"""The work folder the workers share: the compared images' crops, each measure's logits and latency profile."""
import os

import numpy as np

from .settings import config_of


def compared_crops(args):
    """(the compared images' uint8 crops, memory-mapped; the val transform's normalisation)."""
    from t2tvit.transforms import Normalize
    data = config_of(args).Data
    return np.load(os.path.join(args.work_dir, "crops.npy"), mmap_mode="r"), Normalize(data.mean, data.std)


def image_batches(args):
    """The compared images, normalised as the val transform does, in batches of --batch."""
    crops, normalize = compared_crops(args)
    for start in range(0, len(crops), args.batch):
        yield np.stack([normalize(c) for c in crops[start:start + args.batch]])


def logits_path(work_dir, tag):
    """Where a measure's logits on the compared images are kept (tag 'reference': the fp32 dynamic graph's)."""
    return os.path.join(work_dir, f"logits_{tag}.npy")


def profile_path(work_dir, tag):
    return os.path.join(work_dir, f"profile_{tag}.json")


def session_path(work_dir, tag):
    """Where a measure's runtime settings are kept (an OpenVINO or ONNX Runtime session's, as it reports them)."""
    return os.path.join(work_dir, f"session_{tag}.json")
