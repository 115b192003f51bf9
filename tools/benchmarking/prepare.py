"""The prepare worker: the weights, compared images, reference logits and exported model every other worker uses."""
import glob
import os

import numpy as np

from t2tvit.errors import UserError

from .machine import model_macs
from .paddle_measures import new_paddle_model, start_paddle
from .settings import PHOTOS, config_of, repo_relative
from .workdir import compared_crops, image_batches, logits_path


def agreement_paths(args, cfg):
    """(where, image paths, their labels or None) the logits are compared on: lit_data's photos, or the
    config's val split (whose labels give each measure's top-1 accuracy too)."""
    if args.agree_on == "photos":
        paths = sorted(glob.glob(os.path.join(PHOTOS, "*", "*.JPEG")))
        if not paths:
            raise UserError(f"no photos under {PHOTOS} to compare logits on")
        return repo_relative(PHOTOS), paths, None
    from t2tvit.dataset import build_dataset
    dataset = build_dataset(cfg, "val")
    picked = np.unique(np.linspace(0, len(dataset) - 1, min(len(dataset), args.agree_limit)).round().astype(int))
    return (f"{cfg.Data.root} (val split, {len(picked)} of {len(dataset)} images)", [dataset.path(i) for i in picked],
            dataset.labels[picked])


def prepare(args):
    """Fix the weights, the images compared on (uint8 crops of the val transform), the reference logits (fp32
    dynamic graph) and the exported model that every other worker uses; report the deployment backends and
    precisions installed."""
    paddle = start_paddle(args)
    from t2tvit.checkpoint import load_weights
    from t2tvit.export import export
    from t2tvit.t2t import linear_weight_names
    from t2tvit.transforms import build_transform
    cfg = config_of(args)
    model = new_paddle_model(args, paddle)
    weights = "random init (seed 0)"
    if args.weights:
        load_weights(model, args.weights)
        weights = args.weights
    model.eval()
    macs = model_macs(model, args.img_size)  # before export: to_static turns the model's forward static
    paddle.save(model.state_dict(), os.path.join(args.work_dir, "weights.pdparams"))
    linear = set(linear_weight_names(model))
    np.savez(os.path.join(args.work_dir, "weights_torch_layout.npz"),
             **{k: (v.numpy().T if k in linear else v.numpy()) for k, v in model.state_dict().items()})
    where, paths, labels = agreement_paths(args, cfg)
    if labels is not None:
        np.save(os.path.join(args.work_dir, "labels.npy"), labels)
    transform = build_transform(cfg, "val")
    # uint8 on disk, normalised a batch at a time by each worker: 10,000 crops of 224 px are 1.5 GB, not 6.
    crops = np.lib.format.open_memmap(os.path.join(args.work_dir, "crops.npy"), mode="w+", dtype=np.uint8,
                                      shape=(len(paths), 3, args.img_size, args.img_size))
    for i, path in enumerate(paths):
        crops[i] = transform.pixels(path)
    crops.flush()
    del crops

    def predict(x):
        with paddle.no_grad():
            return model(paddle.to_tensor(x)).numpy()

    reference = np.concatenate([predict(x) for x in image_batches(args)])
    np.save(logits_path(args.work_dir, "reference"), reference)
    from t2tvit.backends import available_backends, supported_precisions
    backends = {b: supported_precisions(b) for b in available_backends()} if "engine" in args.only else {}
    if "engine" in args.only:
        export(model, args.img_size, os.path.join(args.work_dir, "inference"))
        if any("int8" in p for p in backends.values()):
            quantize_for_benchmark(args, cfg, backends)
    top2 = np.sort(reference, axis=-1)[:, -2:]
    gap = top2[:, 1] - top2[:, 0] if reference.shape[-1] > 1 else np.zeros(len(reference))
    return {"weights": weights, "compared_on": where, "compared_images": len(paths), "backends": backends,
            "model_macs": macs,
            "reference_top2_gap": {"min": float(gap.min()), "median": float(np.median(gap)),
                                   "logit_std": float(reference.std())}}


def quantize_for_benchmark(args, cfg, backends):
    """The int8 models of the export, calibrated on --calib (at most DEFAULT_CALIB_SIZE images, evenly spaced,
    through the val transform), else on as many of the compared images: with --agree-on val a calibration set
    of the same distribution as, but not disjoint from, the images measured."""
    from t2tvit.quantize import DEFAULT_CALIB_SIZE, calibration_images, quantize_export
    if args.calib:
        images = calibration_images(cfg, args.calib, DEFAULT_CALIB_SIZE)
    else:
        crops, normalize = compared_crops(args)
        picked = np.unique(np.linspace(0, len(crops) - 1, min(len(crops), DEFAULT_CALIB_SIZE)).round().astype(int))
        images = np.stack([normalize(crops[i]) for i in picked])
    quantize_export(os.path.join(args.work_dir, "inference"), images, tuple(b for b, p in backends.items() if "int8" in p))
