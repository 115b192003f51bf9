"""Attention maps: recomputed from the layers' inputs, they are the attention the model used, row-stochastic."""
import glob
import os

import numpy as np
import paddle
import pytest
from PIL import Image

from runner import ROOT, run_tool
from t2tvit.attention_maps import attention_maps
from t2tvit.t2t import T2T_ViT

PHOTO = sorted(glob.glob(os.path.join(ROOT, "lit_data", "val", "*", "*.JPEG")))[0]


@pytest.fixture(scope="module")
def tiny():
    paddle.seed(7)
    model = T2T_ViT(img_size=(48, 32), embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0, num_classes=3,
                    token_dim=16)
    model.eval()
    x = np.random.RandomState(1).standard_normal((2, 3, 48, 32)).astype("float32")
    return model, x, attention_maps(model, x, position=(20, 10))


def test_every_map_is_row_stochastic(tiny):
    _, _, maps = tiny
    for a in maps["attentions"]:
        np.testing.assert_allclose(a.sum(-1), 1.0, atol=1e-9)
    np.testing.assert_allclose(maps["rollout"].sum(-1), 1.0, atol=1e-9)
    assert maps["rollout_cls"].shape == (2, 3, 2) and maps["last_heads"].shape == (2, 2, 3, 2)
    for grid, m in maps["t2t"]:
        assert m.shape == (2, *grid)
        np.testing.assert_allclose(m.sum((1, 2)), 1.0, atol=1e-6)
    assert [g for g, _ in maps["t2t"]] == [(12, 8), (6, 4)]


def test_backbone_attention_and_rollout_equal_a_numpy_computation_and_the_model_s_own_output(tiny):
    model, x, maps = tiny
    inputs, outputs = [], []

    def record(layer, i, o):  # a hook's non-None return value would replace the layer's output
        inputs.append(i[0].numpy())
        outputs.append(o.numpy())

    hooks = [blk.attn.register_forward_post_hook(record) for blk in model.blocks]
    with paddle.no_grad():
        model(paddle.to_tensor(x))
    for h in hooks:
        h.remove()
    want_roll = np.eye(maps["rollout"].shape[-1])
    for blk, a, inp, out in zip(model.blocks, maps["attentions"], inputs, outputs):
        att = blk.attn
        B, N, C = inp.shape
        qkv = inp.astype("float64") @ att.qkv.weight.numpy()
        q, k, v = qkv.reshape(B, N, 3, 2, C // 2).transpose(2, 0, 3, 1, 4)
        s = q @ k.transpose(0, 1, 3, 2) * att.scale
        e = np.exp(s - s.max(-1, keepdims=True))
        np.testing.assert_allclose(a, e / e.sum(-1, keepdims=True), atol=1e-12)
        # the attention the model used: through v and the projection it gives the layer's own output
        mixed = (a @ v).transpose(0, 2, 1, 3).reshape(B, N, C)
        np.testing.assert_allclose(mixed @ att.proj.weight.numpy() + att.proj.bias.numpy(), out, atol=1e-5)
        step = (a.mean(1) + np.eye(N)) / 2.0  # rows of mean + I sum to 2
        want_roll = step @ want_roll
    np.testing.assert_allclose(maps["rollout"], want_roll, atol=1e-12)
    np.testing.assert_allclose(maps["rollout_cls"], want_roll[:, 0, 1:].reshape(2, 3, 2), atol=1e-12)


def test_performer_implied_attention_mixes_v_into_the_layer_s_own_result(tiny):
    model, x, maps = tiny
    layer = model.tokens_to_token.attention1
    seen = {}

    def keep(name):
        def hook(layer, inputs, output=None):  # returns None: the layer's arithmetic stays as it is
            seen[name] = (inputs[0] if output is None else output).numpy()
        return hook

    hook = layer.proj.register_forward_pre_hook(keep("y"))
    hook2 = layer.kqv.register_forward_post_hook(keep("kqv"))
    with paddle.no_grad():
        model(paddle.to_tensor(x))
    hook.remove()
    hook2.remove()
    grid, a = maps["t2t"][0]
    pos = (20 * 12 // 48) * 8 + 10 * 8 // 32
    v = np.split(seen["kqv"], 3, axis=-1)[2]
    np.testing.assert_allclose(np.einsum("bt,btc->bc", a.reshape(2, -1), v), seen["y"][:, pos], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_visualize_draws_pngs_of_the_image_s_size(tmp_path):
    out = tmp_path / "att.png"
    r = run_tool("visualize.py", PHOTO, "--out", out, "-o", "Global.img_size=[64,48]", "Global.num_classes=5")
    assert r.returncode == 0, r.stderr
    for suffix in ("", ".heads", ".t2t"):
        path = str(out).replace(".png", f"{suffix}.png")
        with Image.open(path) as img:
            assert img.size[1] == 64 and img.size[0] % 48 == 0, path
    with Image.open(out) as img:
        assert img.size == (48, 64)
