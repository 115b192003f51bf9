"""The official training step, reproduced by the project's own path: three AdamW steps of T2T-ViT-7 at 224 px on
the batches of tests/data/official/train_step_t2t_vit_7 (made by the official code, see its README), with the
weights converted by tools/convert_weights.py, the model built as tools/train.py builds it (CPU, training mode,
every dropout and drop path zeroed as the fixture's were), t2tvit.optim.build_optimizer and the Trainer's own
loss, backward and optimizer step, once with one batch of 8 and once with 2 accumulated micro-batches of 4.

The fixture keeps a fixed sample of each tensor's elements (all of a small one, 3,072 of a large one) and every
tensor's norm: gradients are compared on the sample (relative L2) and by norm. Measured (Paddle 3.3.1 / 2.6.2,
2 threads) and asserted below with margin:
  loss            max |diff| 4.8e-7 / 7.2e-7 (one batch / accumulated)                   (limit 1e-5)
  logits          max |diff| 2.6e-6 / 2.9e-6 (one batch / accumulated)                   (limit 1e-5)
  step-1 grads    max relative L2 per tensor 2.2e-6 one batch / 2.1e-6 accumulated, both on
                  tokens_to_token.attention1.norm2.weight, where the reference's own error against
                  float64 is 2.0e-6; norms within 4.6e-7                                 (limit 3e-6)
  accumulation    max relative L2 of its grads against one batch's 6.6e-7 (two float32 summation orders)
  directions      0 of 133,362 judged elements step the other way after 3 steps
"""
import os

import numpy as np
import paddle
import pytest

import official_fixtures as fx
from runner import ROOT, TRAIN_REFERENCE as FIXTURE, official_weights, write_official_checkpoint

torch = pytest.importorskip("torch", reason="torch is not installed (requirements-test.txt installs it)")

from convert_weights import convert  # noqa: E402  (tools/ is on sys.path, see conftest.py)
from t2tvit.checkpoint import load_file  # noqa: E402
from t2tvit.config import load_config  # noqa: E402
from t2tvit.engine import Trainer  # noqa: E402
from t2tvit.optim import build_optimizer, decay_groups  # noqa: E402
from t2tvit.runtime import Runtime  # noqa: E402
from t2tvit.t2t import create_model, linear_weight_names  # noqa: E402

META = fx.read_meta(FIXTURE)
STEPS = 3
LOSS_TOL, LOGIT_TOL, GRAD_TOL = 1e-5, 1e-5, 3e-6
# An element's direction is judged only where the reference moved it by more than a tenth of one step of size
# lr (1e-4 after 3 steps of at most ~lr each): below that the step is decided by gradients of ~1e-9, where
# Adam divides by |g| + eps and float32 rounding alone (the reference's own against float64) flips the sign.
MOVED = 0.1 * 1e-3


def _torch_layout(model, state):
    """Our parameters in the fixture's layout (Linear weights back to [out, in])."""
    transposed = set(linear_weight_names(model))
    return {k: v.T if k in transposed else v for k, v in state.items()}


def _run(tmp_path, accum):
    """Three steps of the project's path; returns what the test compares, all in the fixture's layout."""
    weights = str(tmp_path / f"init_{accum}.pdparams")
    convert(write_official_checkpoint(tmp_path / f"init_{accum}.pth.tar", FIXTURE), weights, "t2t_vit_7")
    lr = META["optimizer"]["lr"]
    cfg = load_config(os.path.join(ROOT, "config", "t2t_vit_7.yaml"), [
        "Global.device=cpu", f"Optimizer.lr={lr}", f"Optimizer.weight_decay={META['optimizer']['weight_decay']}",
        "Model.drop_rate=0", "Model.attn_drop_rate=0", "Model.drop_path_rate=0", "EMA.enable=false"])
    g = cfg.Global
    model = create_model(g.model, img_size=g.img_size, num_classes=g.num_classes, drop_rate=cfg.Model.drop_rate,
                         attn_drop_rate=cfg.Model.attn_drop_rate, drop_path_rate=cfg.Model.drop_path_rate)
    for layer in model.sublayers():  # the Performer's dropout is 0.1 whatever the config says, as upstream
        if isinstance(layer, paddle.nn.Dropout):
            layer.p = 0.0
    model.set_state_dict(load_file(weights))
    model.train()
    opt = build_optimizer(model, cfg)
    opt.set_lr(lr)  # held constant, as the fixture's
    trainer = Trainer(cfg, Runtime(cfg), model, opt, None, None, None, None, accum, None, None, None, None, None)
    named = dict(model.named_parameters())
    out = {"losses": [], "logits": [], "optimised": sorted(n for n, p in named.items() if not p.stop_gradient),
           "frozen": sorted(n for n, p in named.items() if p.stop_gradient), "decayed": sorted(decay_groups(model)[0])}
    for step, batch in enumerate(fx.train_batches(FIXTURE), 1):
        images, targets = np.array_split(batch[0], accum), np.array_split(batch[1], accum)
        losses, logits = [], []
        for j in range(accum):
            loss, lg = trainer.learn(paddle.to_tensor(images[j]), paddle.to_tensor(targets[j]), last=j == accum - 1)
            losses.append(float(loss)), logits.append(lg.numpy())
        out["losses"].append(float(np.mean(losses)))
        out["logits"].append(np.concatenate(logits))
        if step == 1:
            out["grads"] = _torch_layout(model, {n: named[n].grad.numpy() for n in out["optimised"]})
        trainer.optimizer_step(loss_is_finite=True)
    out["params3"] = _torch_layout(model, {n: named[n].numpy() for n in out["optimised"]})
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train_step")
    return {accum: _run(tmp, accum) for accum in (1, 2)}


def _rel_l2(a, b):
    return float(np.linalg.norm((a - b).ravel()) / max(np.linalg.norm(b.ravel()), 1e-30))



@pytest.mark.parametrize("accum", [1, 2])
def test_the_optimised_decayed_and_frozen_sets_are_the_official_ones(runs, accum):
    r = runs[accum]
    assert r["optimised"] == sorted(META["optimised"]) and len(r["optimised"]) == 108
    assert r["decayed"] == sorted(META["decayed"]) and len(r["decayed"]) == 38
    assert r["frozen"] == sorted(META["frozen"]) and len(r["frozen"]) == 3


@pytest.mark.parametrize("accum", [1, 2])
def test_every_steps_loss_and_logits_are_the_officials_within_1e_5(runs, accum):
    r = runs[accum]
    with np.load(os.path.join(FIXTURE, "logits.npz")) as stored:
        reference = dict(stored)
    loss_err = np.abs(np.array(r["losses"]) - np.array(META["losses"])).max()
    logit_err = max(np.abs(r["logits"][i] - reference[f"step{i + 1}"]).max() for i in range(STEPS))
    print(f"accum {accum}: loss max |diff| {loss_err:.2e}, logits max |diff| {logit_err:.2e}")
    assert loss_err <= LOSS_TOL
    assert logit_err <= LOGIT_TOL


@pytest.mark.parametrize("accum", [1, 2])
def test_every_step_1_gradient_is_the_officials_within_3e_6_relative_l2(runs, accum):
    """Relative L2 over each tensor's kept elements, and its whole norm's relative difference (which the relative
    L2 over all its elements bounds)."""
    with np.load(os.path.join(FIXTURE, "grads_step1.npz")) as stored:
        reference = dict(stored)
    norms = META["norms"]["grads_step1"]
    grads = runs[accum]["grads"]
    errors = {n: _rel_l2(fx.sample(g, **META["sample"]), reference[n]) for n, g in grads.items()}
    norm_errors = {n: abs(fx.norm(g) - norms[n]) / norms[n] for n, g in grads.items()}
    print(f"accum {accum}: worst gradients", sorted(errors.items(), key=lambda kv: -kv[1])[:4],
          "worst norms", sorted(norm_errors.items(), key=lambda kv: -kv[1])[:2])
    assert set(errors) == set(reference) == set(norms)
    over = {n: e for n, e in {**errors, **{f"{n} norm": e for n, e in norm_errors.items()}}.items() if e > GRAD_TOL}
    assert over == {}


@pytest.mark.parametrize("accum", [1, 2])
def test_no_adam_step_goes_another_way_than_the_officials_after_3_steps(runs, accum):
    """sign(ours_3 - init) == sign(reference_3 - init) on every kept element the reference moved by > MOVED."""
    with np.load(os.path.join(FIXTURE, "params_step3.npz")) as stored:
        reference = dict(stored)
    assert sorted(reference) == runs[accum]["optimised"]
    start = official_weights(FIXTURE)
    flipped = judged = 0
    for name, after in reference.items():
        before = fx.sample(start[name], **META["sample"])
        moved = after - before
        mask = np.abs(moved) > MOVED
        judged += int(mask.sum())
        ours = fx.sample(runs[accum]["params3"][name], **META["sample"]) - before
        flipped += int((np.sign(ours)[mask] != np.sign(moved[mask])).sum())
    print(f"accum {accum}: {flipped} of {judged} judged elements step another way")
    # the criterion judges most of the 135,566 kept elements (every element of the 70 small tensors, 3,072 of each
    # of the 38 others), not a handful
    assert judged > 100_000
    assert flipped == 0


def test_two_accumulated_micro_batches_give_the_gradients_of_one_batch(runs):
    errors = [_rel_l2(runs[2]["grads"][n], g) for n, g in runs[1]["grads"].items()]
    print(f"accumulation against one batch: max relative L2 {max(errors):.2e}")
    assert max(errors) <= 4e-6  # measured 6.6e-7
