import math
import os

import pytest

from runner import ROOT
from t2tvit import config
from t2tvit.scheduler import WarmupCosineLR

STEPS = 2502  # ImageNet-1k at a global batch of 512


def paper(by="epoch"):
    return WarmupCosineLR(1e-3, 310, 5, 1e-6, 1e-5, 10, STEPS, by)


def cosine(t):
    return 1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + math.cos(math.pi * t / 300))


@pytest.mark.parametrize("epoch, expected", [
    (0, 1e-6),
    (1, 1e-6 + (1e-3 - 1e-6) / 5),
    (4, 1e-6 + 4 * (1e-3 - 1e-6) / 5),
    (5, cosine(5)),  # the cosine counts from epoch 0, not from the end of warmup
    (150, (1e-3 + 1e-5) / 2),
    (299, cosine(299)),
    (300, 1e-5),
    (309, 1e-5),
])
def test_paper_schedule(epoch, expected):
    assert paper().lr_at(epoch) == pytest.approx(expected, rel=1e-12)
    assert paper().lr_at(epoch, STEPS - 1) == pytest.approx(expected, rel=1e-12)  # constant within an epoch


def test_known_values():
    # Numbers written out, not derived from the formula above.
    sched = paper()
    assert sched.lr_at(1) == pytest.approx(2.008e-4)
    assert sched.lr_at(5) == pytest.approx(9.99321e-4, rel=1e-5)
    assert sched.lr_at(150) == pytest.approx(5.05e-4)


def test_by_step_is_continuous_in_the_epoch():
    sched = paper("step")
    half = STEPS // 2
    assert sched.lr_at(2, half) == pytest.approx(1e-6 + 2.5 * (1e-3 - 1e-6) / 5)
    assert sched.lr_at(100, half) == pytest.approx(cosine(100.5))
    assert sched.lr_at(299, STEPS - 1) == pytest.approx(cosine(299 + (STEPS - 1) / STEPS))
    assert sched.lr_at(7, 0) == paper().lr_at(7)


@pytest.mark.parametrize("by", ["epoch", "step"])
def test_never_rises_after_warmup(by):
    sched = paper(by)
    lrs = [sched.lr_at(e, s) for e in range(5, 310) for s in (0, STEPS // 3, STEPS - 1)]
    assert all(b <= a for a, b in zip(lrs, lrs[1:]))
    assert min(lrs) == 1e-5


def test_resumed_schedule_equals_continuous():
    continuous = paper("step")
    values = {(e, s): continuous.lr_at(e, s) for e in range(310) for s in (0, 1000)}
    resumed = paper("step")  # a fresh object, as after a restart at epoch 200
    assert all(resumed.lr_at(e, s) == values[(e, s)] for e in range(200, 310) for s in (0, 1000))


def test_from_config():
    cfg = config.load_config(os.path.join(ROOT, "config", "t2t_vit_7.yaml"), ["Scheduler.by=step"])
    sched = WarmupCosineLR.from_config(cfg, STEPS)
    assert sched.by == "step" and sched.t_initial == 300
    assert sched.lr_at(150) == pytest.approx(5.05e-4)


def test_no_warmup():
    sched = WarmupCosineLR(0.1, 10, 0, 0.0, 0.0, 0, 5)
    assert sched.lr_at(0) == pytest.approx(0.1)
    assert sched.lr_at(5) == pytest.approx(0.05)
