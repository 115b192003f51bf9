"""The official code's reference fixtures (tests/data/official/): what they are made from and how they are kept.

Shared by the tool that makes them (tools/make_reference.py, which runs the official code) and the tests that read
them; it needs neither torch nor Paddle. Only what cannot be regenerated is stored:
- the weights are drawn from a seed by seeded_weights(), in the order of meta.json's `spec`, and the eval input by
  random_input(): from RandomState's uniform doubles and an exact Hadamard basis only (no log, sin or exp whose last
  bit could differ between math libraries), so that every machine regenerates the same bits; meta.json holds the
  digest() of each to prove it;
- the training step's input is 8 lit_data photos as uint8 pixels (JPEG decoding differs between libjpeg builds,
  so they are stored); mixed_batch() and soft_targets() make each step's batch from them, as the official
  pipeline does (timm 0.3.4's FastCollateMixup, then its prefetcher's normalisation);
- large outputs are a fixed sample of elements (sample(), exact float32) plus each whole tensor's L2 norm().
"""
import hashlib
import json
import math
import os

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "data", "official")
EVAL = os.path.join(FIXTURES, "t2t_vit_7")
TRAIN_STEP = os.path.join(FIXTURES, "train_step_t2t_vit_7")
META = "meta.json"

# timm's IMAGENET_DEFAULT_MEAN / _STD, as the prefetcher scales them to 0..255
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def read_meta(folder):
    with open(os.path.join(folder, META), encoding="utf-8") as f:
        return json.load(f)


def centred_uniform(rng, shape, std, mean=0.0):
    """float32 draws, uniform with the given mean and standard deviation.

    RandomState.random_sample builds each double from two 32-bit Mersenne Twister words and a power-of-two
    division, and the rest is a multiply and an add: the same bits on every platform and numpy version.
    """
    half_width = std * math.sqrt(3.0)
    return (mean + (2.0 * rng.random_sample(shape) - 1.0) * half_width).astype(np.float32)


def orthogonal_features(rng, rows, dim):
    """[rows, dim] with orthogonal rows of norm sqrt(rows), as the Performer's orthogonal_(w) * sqrt(m), exactly:
    random rows of a Sylvester Hadamard matrix (entries +-1), with random column signs and column order."""
    hadamard = np.ones((1, 1))
    while hadamard.shape[0] < dim:
        hadamard = np.block([[hadamard, hadamard], [hadamard, -hadamard]])
    if hadamard.shape != (dim, dim) or rows > dim:
        raise ValueError(f"no exact {rows} x {dim} orthogonal features: dim must be a power of two >= rows")
    picked = rng.permutation(dim)[:rows]
    signs = 2.0 * rng.randint(0, 2, dim) - 1.0
    order = rng.permutation(dim)
    return ((hadamard[picked] * signs)[:, order] * (math.sqrt(rows) / math.sqrt(dim))).astype(np.float32)


def init_kind(name, shape):
    """How seeded_weights() draws a tensor: `features` (the Performer's frozen w), `scale` (LayerNorm weights,
    around 1) or `small` (Linear weights and biases, LayerNorm biases, cls_token: std 0.02, mean 0).

    Biases and LayerNorm parameters are not the official init's zeros and ones, so that a bias or a LayerNorm
    affine applied wrongly changes the outputs the tests compare."""
    if name.endswith(".w"):
        return "features"
    if len(shape) == 1 and name.endswith(".weight"):
        return "scale"
    return "small"


def seeded_weights(spec, seed):
    """{name: float32 array in torch layout} for spec [[name, shape], ...], drawn in spec's order from
    RandomState(seed): the fixtures' weights (every tensor of the state dict but the fixed position table)."""
    rng = np.random.RandomState(seed)
    weights = {}
    for name, shape in spec:
        kind = init_kind(name, shape)
        if kind == "features":
            weights[name] = orthogonal_features(rng, *shape)
        elif kind == "scale":
            weights[name] = centred_uniform(rng, shape, 0.1, mean=1.0)
        else:
            weights[name] = centred_uniform(rng, shape, 0.02)
    return weights


def random_input(seed, shape):
    """The eval fixture's input: uniform, mean 0, std 1 (the range of normalised images), float32."""
    return centred_uniform(np.random.RandomState(seed), shape, 1.0)


def sample_indices(size, count, seed):
    """Sorted flat indices of the `count` elements kept of a tensor of `size` (all of them when it has no more)."""
    if size <= count:
        return np.arange(size)
    return np.sort(np.random.RandomState(seed).permutation(size)[:count])


def sample(array, count, seed):
    """The kept elements of array (flattened), exact."""
    flat = np.asarray(array).reshape(-1)
    return flat[sample_indices(flat.size, count, seed)]


def norm(array):
    """L2 norm of the whole tensor, summed in float64 by numpy's pairwise sum (np.linalg.norm's BLAS dot gives
    other last bits with another number of threads)."""
    squares = np.square(np.asarray(array, np.float64).reshape(-1))
    return math.sqrt(float(np.sum(squares)))


def mixed_batch(pixels, lam):
    """The model's input from uint8 pixels [B, 3, H, W]: timm 0.3.4's FastCollateMixup in batch mode (sample i
    blended with sample B-1-i in float32, rounded to uint8), then its prefetcher's (x - 255 mean) / (255 std)."""
    f = pixels.astype(np.float32)
    mixed = np.rint(f * np.float32(lam) + f[::-1] * np.float32(1.0 - lam)).astype(np.uint8)
    mean = np.array([m * 255 for m in MEAN], np.float32).reshape(1, 3, 1, 1)
    std = np.array([s * 255 for s in STD], np.float32).reshape(1, 3, 1, 1)
    return (mixed.astype(np.float32) - mean) / std


def soft_targets(labels, lam, num_classes, smoothing):
    """timm 0.3.4's mixup_target: lam * smooth(onehot(labels)) + (1 - lam) * smooth(onehot(labels reversed))."""
    off = smoothing / num_classes
    on = 1.0 - smoothing + off
    labels = np.asarray(labels)

    def smooth(y):
        t = np.full((len(y), num_classes), off, np.float32)
        t[np.arange(len(y)), y] = on
        return t

    return smooth(labels) * np.float32(lam) + smooth(labels[::-1]) * np.float32(1.0 - lam)


def train_batches(folder=TRAIN_STEP):
    """[(images, targets)] of each step of the training-step fixture, rebuilt from its pixels and meta.json."""
    meta = read_meta(folder)
    with np.load(os.path.join(folder, "pixels.npz")) as stored:
        pixels = stored["pixels"]
    labels = np.array(meta["photos"]["labels"])
    return [(mixed_batch(pixels[b["order"]], b["lam"]),
             soft_targets(labels[b["order"]], b["lam"], meta["num_classes"], meta["mixup"]["smoothing"]))
            for b in meta["batches"]]


def digest(arrays):
    """sha256 over each array's name, dtype, shape and little-endian bytes, in the mapping's order: the identity of
    regenerated weights or inputs, whatever they are stored in."""
    h = hashlib.sha256()
    for name, array in arrays.items():
        a = np.ascontiguousarray(array)
        a = a.astype(a.dtype.newbyteorder("<"))
        h.update(f"{name}|{a.dtype.str}|{tuple(int(n) for n in a.shape)}\n".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
