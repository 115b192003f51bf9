import numpy as np
import paddle
import pytest

from t2tvit.mixup import MixupCutmix, cutmix_box, round_half_even, smooth_one_hot, soft_target_cross_entropy


def batch(b=4, c=3, h=16, w=20, seed=0):
    """A uint8 batch, as the loader gives it, and its labels."""
    images = paddle.to_tensor(np.random.RandomState(seed).randint(0, 256, (b, c, h, w)).astype("uint8"))
    labels = paddle.to_tensor(np.arange(b, dtype="int64") * 2)
    return images, labels


def timm_rand_bbox(height, width, lam, rng):
    """timm 0.3.4's rand_bbox (no margin), written out for comparison: centre -/+ cut // 2 on each axis."""
    ratio = np.sqrt(1 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy, cx = rng.randint(0, height), rng.randint(0, width)
    return (int(np.clip(cy - cut_h // 2, 0, height)), int(np.clip(cy + cut_h // 2, 0, height)),
            int(np.clip(cx - cut_w // 2, 0, width)), int(np.clip(cx + cut_w // 2, 0, width)))


def test_smoothing_values_for_imagenet():
    y = smooth_one_hot(paddle.to_tensor([3, 999], dtype="int64"), 1000, 0.1).numpy()
    assert y.dtype == np.float32 and y.shape == (2, 1000)
    assert y[0, 3] == pytest.approx(0.9001) and y[1, 999] == pytest.approx(0.9001)
    assert y[0, 0] == pytest.approx(0.0001) and y[1, 3] == pytest.approx(0.0001)
    np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-5)


def test_lam_and_mode_come_from_the_rng():
    mixer = MixupCutmix()
    expected = np.random.RandomState(7)
    assert expected.rand() < 1.0
    use_cutmix = expected.rand() < 0.5
    alpha = 1.0 if use_cutmix else 0.8
    lam = expected.beta(alpha, alpha)
    assert mixer.sample(np.random.RandomState(7)) == (pytest.approx(lam), use_cutmix)
    modes = {mixer.sample(np.random.RandomState(s))[1] for s in range(20)}
    assert modes == {True, False}


def test_mixup_blends_uint8_pixels_and_rounds_half_to_even_like_fast_collate_mixup():
    images, labels = batch()
    mixer = MixupCutmix(mixup_alpha=0.8, cutmix_alpha=0.0, smoothing=0.1, num_classes=10)
    lam, use_cutmix = mixer.sample(np.random.RandomState(3))
    assert not use_cutmix and 0 < lam < 1
    out, targets = mixer(images, labels, np.random.RandomState(3))
    x = images.numpy()
    # FastCollateMixup: float32 blend, np.rint, uint8; float32 times a Python float stays float32.
    f = x.astype(np.float32)
    want = np.rint(f * np.float32(lam) + f[::-1] * np.float32(1 - lam))
    assert out.dtype == paddle.float32
    np.testing.assert_array_equal(out.numpy(), want)
    y = np.full((4, 10), 0.01, dtype=np.float32)
    y[np.arange(4), labels.numpy()] = 0.91
    np.testing.assert_allclose(targets.numpy(), lam * y + (1 - lam) * y[::-1], rtol=1e-5)
    np.testing.assert_allclose(targets.numpy().sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(images.numpy(), x)  # the input batch is not modified


def test_round_half_even_matches_numpy_rint_on_ties():
    values = np.array([0.0, 0.5, 1.5, 2.5, 3.49, 3.5, 254.5, 255.0, 127.50001, 0.49999997], np.float32)
    np.testing.assert_array_equal(round_half_even(paddle.to_tensor(values)).numpy(), np.rint(values))


@pytest.mark.parametrize("size", [(64, 64), (224, 224), (15, 21), (31, 7), (32, 33)])
def test_cutmix_box_is_timms_rand_bbox_for_odd_and_even_sizes(size):
    h, w = size
    for s in range(200):
        lam = np.random.RandomState(1000 + s).beta(1.0, 1.0)
        assert cutmix_box(h, w, lam, np.random.RandomState(s)) == timm_rand_bbox(h, w, lam, np.random.RandomState(s))


def test_cutmix_box_area_and_clipping():
    boxes = [cutmix_box(64, 64, 0.75, np.random.RandomState(s)) for s in range(200)]
    assert all(0 <= t <= b <= 64 and 0 <= l <= r <= 64 for t, b, l, r in boxes)
    assert all((b - t) * (r - l) <= 0.25 * 64 * 64 for t, b, l, r in boxes)  # clipping only shrinks it
    unclipped = [(t, b, l, r) for t, b, l, r in boxes if 0 < t and b < 64 and 0 < l and r < 64]
    clipped = [(t, b, l, r) for t, b, l, r in boxes if (b - t) * (r - l) < 32 * 32]
    assert unclipped and clipped
    assert all((b - t, r - l) == (32, 32) for t, b, l, r in unclipped)
    # An odd cut size loses a pixel, as in timm: cut 33 -> 2 * 16.
    odd = [cutmix_box(66, 66, 0.75, np.random.RandomState(s)) for s in range(200)]
    assert {(b - t, r - l) for t, b, l, r in odd if 0 < t and b < 66 and 0 < l and r < 66} == {(32, 32)}


def test_cutmix_images_and_corrected_lam():
    images, labels = batch()
    mixer = MixupCutmix(mixup_alpha=0.0, cutmix_alpha=1.0, smoothing=0.0, num_classes=10)
    rng = np.random.RandomState(5)
    lam, use_cutmix = mixer.sample(rng)
    t, b, l, r = cutmix_box(16, 20, lam, rng)
    assert use_cutmix and (b - t) * (r - l) > 0
    out, targets = mixer(images, labels, np.random.RandomState(5))
    x = images.numpy().astype(np.float32)
    want = x.copy()
    want[:, :, t:b, l:r] = x[::-1, :, t:b, l:r]
    np.testing.assert_array_equal(out.numpy(), want)
    corrected = 1 - (b - t) * (r - l) / (16 * 20)
    y = np.eye(10, dtype=np.float32)[labels.numpy()]
    np.testing.assert_allclose(targets.numpy(), corrected * y + (1 - corrected) * y[::-1], rtol=1e-6)


@pytest.mark.parametrize("kwargs", [dict(mixup_alpha=0.0, cutmix_alpha=0.0), dict(prob=0.0)])
def test_smoothing_alone(kwargs):
    images, labels = batch()
    out, targets = MixupCutmix(num_classes=1000, **kwargs)(images, labels, np.random.RandomState(0))
    np.testing.assert_array_equal(out.numpy(), images.numpy().astype(np.float32))
    np.testing.assert_allclose(targets.numpy(), smooth_one_hot(labels, 1000, 0.1).numpy())


def test_soft_target_cross_entropy_matches_numpy():
    rng = np.random.RandomState(0)
    logits = rng.randn(5, 7).astype("float32") * 3
    targets = rng.dirichlet(np.ones(7), size=5).astype("float32")
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    expected = np.mean(np.sum(-targets * log_softmax, axis=1))
    loss = soft_target_cross_entropy(paddle.to_tensor(logits), paddle.to_tensor(targets))
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)


def test_the_losss_gradient_is_within_1e_7_of_float64_on_mixed_smoothed_targets():
    rng = np.random.RandomState(0)
    logits = (rng.randn(8, 1000) * 3).astype("float32")
    labels = paddle.to_tensor(rng.randint(0, 1000, 8))
    targets = (smooth_one_hot(labels, 1000, 0.1) * 0.7 + smooth_one_hot(labels.flip([0]), 1000, 0.1) * 0.3).numpy()
    x = paddle.to_tensor(logits, stop_gradient=False)
    soft_target_cross_entropy(x, paddle.to_tensor(targets)).backward()
    x64, t64 = logits.astype(np.float64), targets.astype(np.float64)
    p = np.exp(x64 - x64.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    expected = (p * t64.sum(1, keepdims=True) - t64) / len(x64)  # d/dx of mean(-sum t log_softmax(x))
    err = np.linalg.norm(x.grad.numpy() - expected) / np.linalg.norm(expected)
    assert err <= 1e-7  # measured 3e-8 to 8e-8 on Paddle 3.3.1 and 2.6.2; the spelled-out formula: 7e-7


def test_a_non_finite_logit_makes_the_loss_non_finite():
    logits = paddle.to_tensor(np.random.RandomState(0).randn(4, 1000).astype("float32"))
    logits[1, 7] = float("nan")
    assert not np.isfinite(float(soft_target_cross_entropy(logits, paddle.full([4, 1000], 1e-3))))
