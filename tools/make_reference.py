"""Regenerate tests/data/official/ by running the official T2T-ViT code: the reference the parity tests compare with.

    python tools/make_reference.py --official-repo PATH [--out tests/data/official] [--threads 2]

PATH is a checkout of github.com/yitu-opensource/T2T-ViT at OFFICIAL_COMMIT (its model files are checked by
sha256, imported from there at run time and never copied); timm 0.3.4 and torch (CPU) must be importable; the
fixtures' README.md says which versions made the committed files and how to set them up. Two fixtures:
- t2t_vit_7/: the official T2T-ViT-7 with the seeded weights of tools/official_fixtures.py, in eval mode, on a
  seeded input: its logits and a sample of 6 intermediate activations;
- train_step_t2t_vit_7/: three training steps of the official code as its main.py takes them (timm's
  create_optimizer, SoftTargetCrossEntropy, FastCollateMixup and the prefetcher's normalisation) from the same
  weights on 8 lit_data photos, dropout and drop path zeroed: losses, logits, and a sample of every tensor's
  gradient and updated values with every tensor's norms; also the float32 run's own error against float64.
Every file is written byte for byte the same on a rerun with the same versions and threads.
"""
import argparse
import collections.abc
import contextlib
import importlib.util
import io
import json
import os
import platform
import sys
import types
import zipfile

import numpy as np
from PIL import Image

import official_fixtures as fx
from t2tvit import atomic
from t2tvit.errors import UserError, cli
from t2tvit.transforms import EvalTransform

OFFICIAL_REPO = "yitu-opensource/T2T-ViT"
OFFICIAL_COMMIT = "0f63dc9558f4d192de926504dbddfa1b3f5db6ca"
OFFICIAL_SOURCES = {  # the model files at OFFICIAL_COMMIT (unchanged since 2021-06-13)
    "models/t2t_vit.py": "58cbd8f600acd20319f693197ca8982884784525c3c3c8a6e2c2396dabd0e59c",
    "models/token_performer.py": "3e3dfa33523e3d090d9e639d8b442a7883860a650e1af241786d1e4561f136d3",
    "models/token_transformer.py": "6dc55462e5ff1138a2b19883aec86d43591494efdb65bce383152dcdc0fdfc6a",
    "models/transformer_block.py": "7d4da490e811af278eafb7fe768622a68de6ab8fcc78adce36c59db307ca96a4",
}
TIMM_VERSION = "0.3.4"  # the official requirements' timm
MODEL, IMG_SIZE, NUM_CLASSES = "t2t_vit_7", 224, 1000
WEIGHTS_SEED, INPUT_SEED, SAMPLE_SEED, MIX_SEED = 0, 1, 2, 3
EVAL_SAMPLE, TRAIN_SAMPLE = 4096, 3072  # elements kept per tensor (all of a smaller one)
INTERMEDIATES = ("tokens_to_token.attention1", "tokens_to_token.attention2", "tokens_to_token", "blocks.0",
                 "blocks.6", "norm")
# The training step: the T2T-ViT-7 recipe's AdamW (train_script.sh: --lr 1e-3 --weight-decay .03) with its
# learning rate held constant, mixup (alpha 0.8, no CutMix: the pixel tests prove CutMix) and smoothing 0.1.
BATCH, STEPS, PHOTOS = 8, 3, os.path.join(fx.ROOT, "lit_data", "val.txt")
OPTIMIZER = {"opt": "adamw", "lr": 1e-3, "weight_decay": 0.03, "momentum": 0.9, "opt_eps": None, "opt_betas": None}
MIXUP_ALPHA, SMOOTHING = 0.8, 0.1

README = """# Reference fixtures of the official T2T-ViT code

What the parity tests compare this repository with: outputs of the official PyTorch code
([{repo}](https://github.com/{repo}) at `{commit}`) under timm {timm}, made by `tools/make_reference.py`.
They are data, a few MB: no code of the official repository or of timm is here. The weights and the eval input
are not stored: `tools/official_fixtures.py` regenerates them from a seed, bit for bit on any machine, and
`meta.json` holds their sha256 (`tests/test_reference_fixtures.py` checks both, and the sha256 of every file).

## t2t_vit_7/

The official T2T-ViT-7 (224 px, 1000 classes) with the seeded weights (`meta.json`: `weights`; Linear weights
and biases, LayerNorm biases and `cls_token` uniform with std 0.02, LayerNorm weights 1 +- std 0.1, the
Performer's frozen features exactly orthogonal, the position table the model's own), in eval mode, float32 on
CPU, on `official_fixtures.random_input` ([2, 3, 224, 224], uniform with std 1).

| file | what |
| --- | --- |
| `outputs.npz` | `logits` [2, 1000]; for each of `{intermediates}`: {eval_sample} of its elements (`official_fixtures.sample`) |
| `meta.json` | versions, the weights' recipe and sha256, the official position table's sha256, every intermediate's shape and L2 norm, parameter counts, the frozen tensors, sha256 of each file |

## train_step_t2t_vit_7/

Three training steps of the official code as its `main.py` takes them: T2T-ViT-7 built by `timm.create_model`
with drop path 0.1 and every `Dropout` and `DropPath` then set to 0 (the Performer's hard-coded 0.1 included),
so that the step is deterministic; timm's `create_optimizer` (AdamW, lr {lr} held constant, weight decay {wd}
on the Linear weights only), `SoftTargetCrossEntropy`; each step's batch made by timm's `FastCollateMixup`
(mixup alpha {alpha}, smoothing {smoothing}, sample i mixed with 7 - i) and the prefetcher's normalisation, from
8 lit_data photos (their eval crops; step s takes them in the order `meta.json` gives). Float32 on CPU, {threads}
threads.

| file | what |
| --- | --- |
| `pixels.npz` | `pixels` [8, 3, 224, 224] uint8: the photos as stored (JPEG decoders differ, so they are not re-decoded) |
| `logits.npz` | `step1`..`step3`: the forward's logits [8, 1000] at each step, before its update |
| `grads_step1.npz` | every optimised tensor's step-1 gradient: {train_sample} of its elements (torch layout) |
| `params_step3.npz` | every optimised tensor after the third update: the same elements |
| `meta.json` | the recipe, each step's lam, order and batch sha256, the losses, the optimised / decayed / frozen tensors, every tensor's gradient and parameter norms at each step, the float32 run's own error against a float64 run (`fp64_floor`), sha256 of each file |

## How they were made

With Python {python}, torch {torch} (CPU), timm {timm}, numpy {numpy}, Pillow {pillow}, {threads} threads:

    git clone https://github.com/{repo} /tmp/T2T-ViT && git -C /tmp/T2T-ViT checkout {commit}
    python3 -m venv /tmp/reference && . /tmp/reference/bin/activate
    pip install torch=={torch_pin} numpy=={numpy} pillow=={pillow} && pip install --no-deps timm=={timm}
    python tools/make_reference.py --official-repo /tmp/T2T-ViT

timm {timm} imports two things torch {torch} no longer has or that are not installed here: `torch._six` and
`torchvision` (its data transforms). The tool stands in for them at import time only (`meta.json`:
`import_shims`); nothing that runs here uses either. A rerun with these versions writes the same bytes.
"""


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--official-repo", required=True, help=f"a checkout of {OFFICIAL_REPO} at {OFFICIAL_COMMIT[:7]}")
    ap.add_argument("--out", default=fx.FIXTURES, help="fixtures folder (default: tests/data/official)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2; results depend on it)")
    return ap.parse_args(argv)


def check_sources(repo):
    for rel, want in OFFICIAL_SOURCES.items():
        path = os.path.join(repo, rel)
        if not os.path.isfile(path):
            raise UserError(f"--official-repo: {path} does not exist (expected a checkout of {OFFICIAL_REPO})")
        if fx.file_sha256(path) != want:
            raise UserError(f"{path}: sha256 {fx.file_sha256(path)}, not that of {OFFICIAL_REPO} at "
                            f"{OFFICIAL_COMMIT[:7]} ({want})")


def import_official(repo):
    """(torch, timm, shims) with the official models registered in timm; installs the import shims timm 0.3.4
    needs (and names them)."""
    for package, how in (("torch", "pip install torch (the CPU build)"),
                         ("timm", f"pip install --no-deps timm=={TIMM_VERSION}")):
        if importlib.util.find_spec(package) is None:
            raise UserError(f"making the fixtures needs {package}: {how} (see tests/data/official/README.md)")
    shims = []
    import torch
    try:
        import torch._six  # noqa: F401
    except ImportError:  # removed in torch 2.0; timm 0.3.4's layers/helpers.py takes container_abcs from it
        six = types.ModuleType("torch._six")
        six.container_abcs, six.string_classes, six.int_classes = collections.abc, (str,), (int,)
        sys.modules["torch._six"] = six
        shims.append("torch._six: container_abcs = collections.abc")
    try:
        import torchvision  # noqa: F401
    except ImportError:  # timm.data imports torchvision.transforms at module level, and calls it in transforms only
        for name in ("torchvision", "torchvision.transforms", "torchvision.transforms.functional"):
            sys.modules[name] = types.ModuleType(name)
        sys.modules["torchvision"].transforms = sys.modules["torchvision.transforms"]
        sys.modules["torchvision.transforms"].functional = sys.modules["torchvision.transforms.functional"]
        shims.append("torchvision: empty placeholder modules (timm.data imports them; nothing here calls them)")
    import timm
    if timm.__version__ != TIMM_VERSION:
        raise UserError(f"timm {timm.__version__} is installed; the fixtures are made with timm {TIMM_VERSION} "
                        f"(pip install --no-deps timm=={TIMM_VERSION})")
    sys.path.insert(0, os.path.abspath(repo))
    import models  # noqa: F401  (the official package: registers t2t_vit_* with timm's create_model)
    return torch, timm, shims


def npz_bytes(arrays):
    """An .npz of {name: array} whose bytes depend on the arrays alone (np.savez stamps each member's time)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, array in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type, info.external_attr = zipfile.ZIP_DEFLATED, 0o644 << 16
            z.writestr(info, member.getvalue())
    return buf.getvalue()


def write(folder, files, meta):
    """Write {file name: bytes} and meta.json (with each file's sha256) into folder, each atomically."""
    meta["files_sha256"] = {}
    for name, data in files.items():
        atomic.write_bytes(os.path.join(folder, name), data)
        meta["files_sha256"][name] = fx.file_sha256(os.path.join(folder, name))
    atomic.write_bytes(os.path.join(folder, fx.META), (json.dumps(meta, indent=1) + "\n").encode())


def load_seeded(torch, model, seed):
    """Load the seeded weights into an official model; returns their spec and digest (pos_embed stays its own)."""
    spec = [[name, list(t.shape)] for name, t in model.state_dict().items() if name != "pos_embed"]
    weights = fx.seeded_weights(spec, seed)
    missing, unexpected = model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=False)
    assert list(missing) == ["pos_embed"] and not unexpected, (missing, unexpected)
    return {"seed": seed, "spec": spec, "sha256": fx.digest(weights)}


def eval_fixture(torch, timm):
    model = timm.create_model(MODEL, img_size=IMG_SIZE, num_classes=NUM_CLASSES)
    weights = load_seeded(torch, model, WEIGHTS_SEED)
    model.eval()
    x = fx.random_input(INPUT_SEED, (2, 3, IMG_SIZE, IMG_SIZE))
    seen = {}
    modules = dict(model.named_modules())
    for name in INTERMEDIATES:
        modules[name].register_forward_hook(lambda m, i, out, name=name: seen.__setitem__(name, out.numpy()))
    with torch.no_grad():
        logits = model(torch.from_numpy(x)).numpy()
    params = dict(model.named_parameters())
    meta = {
        "model": MODEL, "img_size": IMG_SIZE, "num_classes": NUM_CLASSES, "mode": "eval, torch.no_grad, float32, CPU",
        "weights": weights,
        "pos_embed": {"shape": list(model.pos_embed.shape),
                      "sha256": fx.digest({"pos_embed": model.pos_embed.detach().numpy()})},
        "input": {"seed": INPUT_SEED, "shape": list(x.shape), "sha256": fx.digest({"input": x})},
        "sample": {"count": EVAL_SAMPLE, "seed": SAMPLE_SEED},
        "intermediates": {name: {"shape": list(seen[name].shape), "norm": fx.norm(seen[name])}
                          for name in INTERMEDIATES},
        "logits": {"shape": list(logits.shape), "std": float(logits.std()), "argmax": logits.argmax(1).tolist()},
        "params_total": sum(p.numel() for p in params.values()),
        "params_trainable": sum(p.numel() for p in params.values() if p.requires_grad),
        "frozen_params": [n for n, p in params.items() if not p.requires_grad],
    }
    outputs = {"logits": logits, **{name: fx.sample(seen[name], EVAL_SAMPLE, SAMPLE_SEED) for name in INTERMEDIATES}}
    return {"outputs.npz": npz_bytes(outputs)}, meta


def photos():
    """(uint8 pixels [8, 3, 224, 224], labels, their lit_data paths): the first 8 photos of lit_data/val.txt,
    as the official eval transform crops them."""
    with open(PHOTOS) as f:
        rows = [line.split() for line in f if line.strip()][:BATCH]
    crop = EvalTransform(IMG_SIZE, 0.9)
    pixels = np.stack([crop.pixels(os.path.join(fx.ROOT, "lit_data", rel)) for rel, _ in rows])
    return pixels, np.array([int(label) for _, label in rows], np.int64), [f"lit_data/{rel}" for rel, _ in rows]


def official_batch(torch, pixels, labels, step):
    """Step `step`'s (images, targets, lam, order) through the official collate and prefetcher arithmetic,
    checked equal, bit for bit, to official_fixtures.mixed_batch / soft_targets (what the tests rebuild)."""
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    from timm.data.mixup import FastCollateMixup
    assert (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD) == (fx.MEAN, fx.STD)
    order = np.roll(np.arange(BATCH), -3 * (step - 1))
    collate = FastCollateMixup(mixup_alpha=MIXUP_ALPHA, cutmix_alpha=0.0, label_smoothing=SMOOTHING,
                               num_classes=NUM_CLASSES)
    np.random.seed(MIX_SEED + step)
    lam = collate._params_per_batch()[0]
    np.random.seed(MIX_SEED + step)
    mixed, targets = collate([(pixels[i], int(labels[i])) for i in order])
    # timm's PrefetchLoader, on the CPU: its 0..255 mean and std, then float().sub_(mean).div_(std)
    mean = torch.tensor([m * 255 for m in IMAGENET_DEFAULT_MEAN]).view(1, 3, 1, 1)
    std = torch.tensor([s * 255 for s in IMAGENET_DEFAULT_STD]).view(1, 3, 1, 1)
    images = mixed.float().sub_(mean).div_(std)
    assert np.array_equal(images.numpy(), fx.mixed_batch(pixels[order], lam))
    assert np.array_equal(targets.numpy(), fx.soft_targets(labels[order], lam, NUM_CLASSES, SMOOTHING))
    return images, targets, lam, order


def zero_stochastic(torch, model):
    """Set every Dropout and DropPath to 0; returns what they were."""
    from timm.models.layers import DropPath
    zeroed = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Dropout):
            zeroed[name], module.p = ["Dropout", module.p], 0.0
        elif isinstance(module, DropPath):
            zeroed[name], module.drop_prob = ["DropPath", module.drop_prob], 0.0
    return zeroed


def train(torch, timm, batches, dtype):
    """Three steps of the official code in dtype: what every step gave, full tensors."""
    from timm.loss import SoftTargetCrossEntropy
    from timm.optim import create_optimizer
    # as main.py builds it: timm.create_model drops the None-valued arguments of main.py's call
    model = timm.create_model(MODEL, pretrained=False, num_classes=NUM_CLASSES, drop_rate=0.0,
                              drop_path_rate=0.1, img_size=IMG_SIZE)
    zeroed = zero_stochastic(torch, model)
    weights = load_seeded(torch, model, WEIGHTS_SEED)
    model.to(dtype).train()
    optimizer = create_optimizer(argparse.Namespace(**OPTIMIZER), model)
    loss_fn = SoftTargetCrossEntropy()
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    run = {"zeroed": zeroed, "weights": weights, "losses": [], "logits": [], "grads": [], "params": [],
           "start": {n: p.detach().numpy().copy() for n, p in named.items()},
           "groups": [{"weight_decay": g["weight_decay"], "params": [n for n, p in named.items()
                                                                   if any(p is q for q in g["params"])]}
                      for g in optimizer.param_groups],
           "frozen": [n for n, p in model.named_parameters() if not p.requires_grad]}
    for images, targets in batches:
        output = model(images.to(dtype))
        loss = loss_fn(output, targets.to(dtype))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        run["losses"].append(loss.item())
        run["logits"].append(output.detach().numpy())
        run["grads"].append({n: p.grad.numpy().copy() for n, p in named.items()})
        run["params"].append({n: p.detach().numpy().copy() for n, p in named.items()})
    return run


@contextlib.contextmanager
def float_kept(torch):
    """Tensor.float() as the identity: the Performer's x.float() (there for AMP) would turn a float64 run back
    into float32 halfway."""
    original = torch.Tensor.float
    torch.Tensor.float = lambda self, *args, **kwargs: self
    try:
        yield
    finally:
        torch.Tensor.float = original


def rel_l2(a, b):
    return fx.norm(np.asarray(a, np.float64) - b) / max(fx.norm(b), 1e-300)


def fp64_floor(run32, run64):
    """The float32 reference's own error against the same steps in float64."""
    start = run64["start"]
    return {
        "loss_abs_diff": [abs(a - b) for a, b in zip(run32["losses"], run64["losses"])],
        "logits_max_abs": [float(np.abs(a - b).max()) for a, b in zip(run32["logits"], run64["logits"])],
        "grads_step1_rel_l2": {n: rel_l2(g, run64["grads"][0][n]) for n, g in run32["grads"][0].items()},
        "params_step3_rel_l2_of_update": {n: rel_l2(p - start[n], run64["params"][2][n] - start[n])
                                          for n, p in run32["params"][2].items()},
    }


def train_step_fixture(torch, timm):
    pixels, labels, paths = photos()
    steps = [official_batch(torch, pixels, labels, s) for s in range(1, STEPS + 1)]
    batches = [(images, targets) for images, targets, _, _ in steps]
    run = train(torch, timm, batches, torch.float32)
    with float_kept(torch):
        floor = fp64_floor(run, train(torch, timm, batches, torch.float64))
    optimised = list(run["start"])
    meta = {
        "model": MODEL, "img_size": IMG_SIZE, "num_classes": NUM_CLASSES, "batch": BATCH, "steps": STEPS,
        "weights": run["weights"],
        "photos": {"paths": paths, "labels": labels.tolist(), "source": "t2tvit.transforms.EvalTransform(224, 0.9)"
                   ".pixels, Pillow " + Image.__version__},
        "batches": [{"order": order.tolist(), "lam": lam,
                     "sha256": fx.digest({"images": images.numpy(), "targets": targets.numpy()})}
                    for images, targets, lam, order in steps],
        "mixup": {"kind": "timm FastCollateMixup, mode batch, mixup only", "alpha": MIXUP_ALPHA,
                  "mix_seed": "np.random.seed(MIX_SEED + step), MIX_SEED = %d" % MIX_SEED, "smoothing": SMOOTHING},
        "optimizer": {"kind": "timm create_optimizer(args, model) -> torch.optim.AdamW", **OPTIMIZER,
                      "betas": [0.9, 0.999], "eps": 1e-08, "lr_schedule": "constant (no scheduler)",
                      "clip_grad": None},
        "loss": "timm.loss.SoftTargetCrossEntropy",
        "stochastic_zeroed": run["zeroed"],
        "param_groups": run["groups"],
        "optimised": optimised,
        "decayed": [n for g in run["groups"] if g["weight_decay"] for n in g["params"]],
        "frozen": run["frozen"],
        "losses": run["losses"],
        "sample": {"count": TRAIN_SAMPLE, "seed": SAMPLE_SEED},
        "norms": {
            **{f"grads_step{s + 1}": {n: fx.norm(g) for n, g in grads.items()} for s, grads in enumerate(run["grads"])},
            **{f"params_step{s + 1}": {n: fx.norm(p) for n, p in params.items()}
               for s, params in enumerate(run["params"])},
            "update_step3": {n: fx.norm(p - run["start"][n]) for n, p in run["params"][2].items()},
        },
        "fp64_floor": floor,
    }
    files = {
        "pixels.npz": npz_bytes({"pixels": pixels}),
        "logits.npz": npz_bytes({f"step{s + 1}": logits for s, logits in enumerate(run["logits"])}),
        "grads_step1.npz": npz_bytes({n: fx.sample(g, TRAIN_SAMPLE, SAMPLE_SEED) for n, g in run["grads"][0].items()}),
        "params_step3.npz": npz_bytes({n: fx.sample(p, TRAIN_SAMPLE, SAMPLE_SEED)
                                       for n, p in run["params"][2].items()}),
    }
    return files, meta


def versions(torch, timm, threads, shims):
    return {"python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__,
            "numpy": np.__version__, "pillow": Image.__version__, "threads": threads,
            "official": {"repo": OFFICIAL_REPO, "commit": OFFICIAL_COMMIT, "sources_sha256": OFFICIAL_SOURCES},
            "import_shims": shims, "made_by": "python tools/make_reference.py --official-repo PATH"}


def readme(v, eval_meta, train_meta):
    return README.format(
        repo=OFFICIAL_REPO, commit=OFFICIAL_COMMIT, timm=v["timm"], torch=v["torch"],
        torch_pin=v["torch"].split("+")[0], numpy=v["numpy"], pillow=v["pillow"], python=v["python"],
        threads=v["threads"], intermediates="`, `".join(INTERMEDIATES), eval_sample=eval_meta["sample"]["count"],
        train_sample=train_meta["sample"]["count"], lr=OPTIMIZER["lr"], wd=OPTIMIZER["weight_decay"],
        alpha=MIXUP_ALPHA, smoothing=SMOOTHING)


@cli
def main(argv=None):
    args = parse_args(argv)
    check_sources(args.official_repo)
    torch, timm, shims = import_official(args.official_repo)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    v = versions(torch, timm, args.threads, shims)
    eval_files, eval_meta = eval_fixture(torch, timm)
    train_files, train_meta = train_step_fixture(torch, timm)
    write(os.path.join(args.out, "t2t_vit_7"), eval_files, {**eval_meta, "versions": v})
    write(os.path.join(args.out, "train_step_t2t_vit_7"), train_files, {**train_meta, "versions": v})
    atomic.write_bytes(os.path.join(args.out, "README.md"), readme(v, eval_meta, train_meta).encode())
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
