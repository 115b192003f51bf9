import numpy as np
import paddle
import pytest

from mixup import MixupCutmix, cutmix_box, smooth_one_hot, soft_target_cross_entropy


def batch(b=4, c=3, h=16, w=20):
    images = paddle.to_tensor(np.arange(b * c * h * w, dtype="float32").reshape([b, c, h, w]))
    labels = paddle.to_tensor(np.arange(b, dtype="int64") * 2)
    return images, labels


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


def test_mixup_images_and_targets():
    images, labels = batch()
    mixer = MixupCutmix(mixup_alpha=0.8, cutmix_alpha=0.0, smoothing=0.1, num_classes=10)
    lam, use_cutmix = mixer.sample(np.random.RandomState(3))
    assert not use_cutmix and 0 < lam < 1
    out, targets = mixer(images, labels, np.random.RandomState(3))
    x = images.numpy()
    np.testing.assert_allclose(out.numpy(), lam * x + (1 - lam) * x[::-1], rtol=1e-6)
    y = np.full((4, 10), 0.01, dtype=np.float32)
    y[np.arange(4), labels.numpy()] = 0.91
    np.testing.assert_allclose(targets.numpy(), lam * y + (1 - lam) * y[::-1], rtol=1e-5)
    np.testing.assert_allclose(targets.numpy().sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(images.numpy(), x)  # the input batch is not modified


def test_cutmix_box_area_and_clipping():
    boxes = [cutmix_box(64, 64, 0.75, np.random.RandomState(s)) for s in range(200)]
    assert all(0 <= t <= b <= 64 and 0 <= l <= r <= 64 for t, b, l, r in boxes)
    assert all((b - t) * (r - l) <= 0.25 * 64 * 64 for t, b, l, r in boxes)  # clipping only shrinks it
    unclipped = [(t, b, l, r) for t, b, l, r in boxes if 0 < t and b < 64 and 0 < l and r < 64]
    clipped = [(t, b, l, r) for t, b, l, r in boxes if (b - t) * (r - l) < 32 * 32]
    assert unclipped and clipped
    assert all((b - t, r - l) == (32, 32) for t, b, l, r in unclipped)


def test_cutmix_images_and_corrected_lam():
    images, labels = batch()
    mixer = MixupCutmix(mixup_alpha=0.0, cutmix_alpha=1.0, smoothing=0.0, num_classes=10)
    rng = np.random.RandomState(5)
    lam, use_cutmix = mixer.sample(rng)
    t, b, l, r = cutmix_box(16, 20, lam, rng)
    assert use_cutmix and (b - t) * (r - l) > 0
    out, targets = mixer(images, labels, np.random.RandomState(5))
    x = images.numpy()
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
    np.testing.assert_array_equal(out.numpy(), images.numpy())
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
