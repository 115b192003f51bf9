"""Gradient checkpointing (model.set_grad_checkpointing, Global.grad_checkpointing): every block and both T2T
layers are recomputed in backward, with the random state of their dropout and drop path replayed, so the gradients
are the plain run's, bit for bit, on one process and on two."""
import argparse

import numpy as np
import paddle
import pytest

from runner import fast_overrides, losses, run_tool
from t2tvit.checkpoint import load_file
from t2tvit.t2t import create_model

# Dropout and drop path on: the recomputation must draw the same masks as the forward did.
RANDOM = dict(drop_rate=0.1, attn_drop_rate=0.1, drop_path_rate=0.3)


def step(name, checkpointing, seed=5):
    """(loss, {name: gradient}, forward calls per layer) of one training forward and backward."""
    paddle.seed(0)
    model = create_model(name, img_size=32, num_classes=10, **RANDOM)
    model.train()
    model.set_grad_checkpointing(checkpointing)
    layers = list(model.blocks) + [model.tokens_to_token.attention1, model.tokens_to_token.attention2]
    calls = [0] * len(layers)

    def count(i):
        def hook(layer, inputs):
            calls[i] += 1
        return hook

    hooks = [layer.register_forward_pre_hook(count(i)) for i, layer in enumerate(layers)]
    x = paddle.to_tensor(np.random.RandomState(0).standard_normal((2, 3, 32, 32)).astype("float32"))
    targets = paddle.to_tensor(np.random.RandomState(1).randint(0, 10, 2))
    paddle.seed(seed)
    loss = paddle.nn.functional.cross_entropy(model(x), targets)
    loss.backward()
    for h in hooks:
        h.remove()
    grads = {n: p.grad.numpy() for n, p in model.named_parameters() if not p.stop_gradient and p.grad is not None}
    trainable = [n for n, p in model.named_parameters() if not p.stop_gradient]
    assert sorted(grads) == sorted(trainable)  # every trained weight got its gradient, the first T2T layer's too
    return float(loss), grads, calls


@pytest.mark.parametrize("name", ["t2t_vit_7", "t2t_vit_t_14"])  # Performer and transformer T2T layers
def test_checkpointed_gradients_equal_the_plain_ones_exactly(name):
    loss, plain, once = step(name, False)
    loss_c, checkpointed, twice = step(name, True)
    assert once == [1] * len(once) and twice == [2] * len(twice)  # each layer's forward recomputed in backward
    assert loss_c == loss
    for k in plain:
        np.testing.assert_array_equal(checkpointed[k], plain[k], err_msg=k)
    # the masks matter: another seed gives other gradients, so equal ones mean the masks were replayed
    _, other, _ = step(name, True, seed=6)
    assert any(not np.array_equal(other[k], plain[k]) for k in plain)


def test_evaluation_is_not_recomputed():
    paddle.seed(0)
    model = create_model("t2t_vit_7", img_size=32, num_classes=10)
    x = paddle.ones([1, 3, 32, 32])
    model.eval()
    plain = model(x).numpy()
    model.set_grad_checkpointing()
    calls = []
    hook = model.blocks[0].register_forward_pre_hook(lambda layer, inputs: calls.append(1))
    np.testing.assert_array_equal(model(x).numpy(), plain)
    hook.remove()
    assert calls == [1]


@pytest.mark.slow
def test_two_process_training_with_grad_checkpointing_follows_the_plain_run_exactly(two_process_run, tmp_path):
    r = run_tool("train.py", *fast_overrides(tmp_path, **{"Global.grad_checkpointing": "true"}), nproc=2)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert losses(tmp_path / "log") == two_process_run.losses
    ours = load_file(str(tmp_path / "out" / "latest.pdckpt"))
    plain = load_file(str(two_process_run.folder / "out" / "latest.pdckpt"))
    for k, v in plain["model"].items():
        np.testing.assert_array_equal(np.asarray(ours["model"][k]), np.asarray(v), err_msg=k)


def test_the_benchmark_train_measure_takes_grad_checkpointing_from_the_config(tmp_path, monkeypatch):
    # docs/training.md measures the memory with `benchmark.py --only train -o Global.grad_checkpointing=true`
    from benchmarking.paddle_measures import measure_train
    from t2tvit.config import DEFAULT_CONFIG
    from t2tvit.t2t import T2T_ViT
    paddle.save(create_model("t2t_vit_7", img_size=32).state_dict(), str(tmp_path / "weights.pdparams"))
    seen = []
    original = T2T_ViT.set_grad_checkpointing
    monkeypatch.setattr(T2T_ViT, "set_grad_checkpointing", lambda self, enable=True: (
        seen.append(enable), original(self, enable)))
    for flag in ("true", "false"):
        args = argparse.Namespace(config=DEFAULT_CONFIG, override=[f"Global.grad_checkpointing={flag}"], model="t2t_vit_7",
                                  img_size=32, batch=2, device="cpu", warmup=0, repeat=1, work_dir=str(tmp_path))
        assert len(measure_train(args)) == 1
    assert seen == [True, False]
