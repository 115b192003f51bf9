import numpy as np
import paddle
import pytest

from t2tvit.config import Config
from t2tvit.optim import build_optimizer, decay_groups, layer_lr_scales
from t2tvit.t2t import T2T_ViT


class Small(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.cls_token = self.create_parameter([1, 1, 4])
        self.pos_embed = self.create_parameter([1, 3, 4])
        self.norm = paddle.nn.LayerNorm(4)
        self.head = paddle.nn.Linear(4, 2)
        self.proj = self.create_parameter([4, 4])
        self.proj.stop_gradient = True

    def forward(self, x):
        x = paddle.concat([self.cls_token.expand([x.shape[0], 1, 4]), x], axis=1) + self.pos_embed
        return self.head(self.norm(x) @ self.proj)


def cfg(lr=0.5, wd=0.1):
    return Config({"Optimizer": {"lr": lr, "weight_decay": wd, "betas": [0.9, 0.999], "eps": 1e-8,
                                 "layer_decay": 1.0}})


def test_groups_by_structured_name():
    decay, no_decay = decay_groups(Small())
    assert decay == ["head.weight"]
    assert sorted(no_decay) == ["cls_token", "head.bias", "norm.bias", "norm.weight", "pos_embed"]


def test_one_step_with_zero_gradients_only_decays():
    paddle.seed(0)
    model = Small()
    opt = build_optimizer(model, cfg(lr=0.5, wd=0.1))
    assert {id(p) for p in opt._parameter_list} == {id(p) for p in model.parameters() if not p.stop_gradient}
    before = {n: p.numpy().copy() for n, p in model.named_parameters()}
    (model(paddle.ones([2, 2, 4])).sum() * 0.0).backward()
    opt.step()
    after = {n: p.numpy() for n, p in model.named_parameters()}
    np.testing.assert_allclose(after["head.weight"], before["head.weight"] * (1 - 0.5 * 0.1), rtol=1e-6)
    for name in ("cls_token", "pos_embed", "norm.weight", "norm.bias", "head.bias", "proj"):
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)


def test_hyper_parameters():
    model = Small()
    opt = build_optimizer(model, Config({"Optimizer": {"lr": 1e-3, "weight_decay": 0.03, "betas": [0.8, 0.99],
                                                       "eps": 1e-6, "layer_decay": 1.0}}))
    assert opt.get_lr() == pytest.approx(1e-3)
    assert (opt._beta1, opt._beta2, opt._epsilon) == (0.8, 0.99, 1e-6)
    opt.set_lr(2e-4)
    assert opt.get_lr() == pytest.approx(2e-4)


def test_layer_decay_scales_each_block_s_lr_by_its_depth_below_the_head():
    model = T2T_ViT(img_size=32, embed_dim=16, depth=3, num_heads=2, num_classes=2, token_dim=8)
    scales = layer_lr_scales(model, 0.5)
    assert scales["head.weight"] == scales["norm.weight"] == 1.0
    assert [scales[f"blocks.{i}.attn.qkv.weight"] for i in range(3)] == [0.5 ** 3, 0.5 ** 2, 0.5]
    assert scales["cls_token"] == scales["tokens_to_token.project.weight"] == 0.5 ** 4
    assert "pos_embed" not in scales  # frozen: never optimised


def test_with_layer_decay_one_adam_step_moves_each_layer_by_its_scaled_lr():
    paddle.seed(0)
    model = T2T_ViT(img_size=32, embed_dim=16, depth=3, num_heads=2, num_classes=2, token_dim=8)
    o = {"lr": 1e-3, "weight_decay": 0.0, "betas": [0.9, 0.999], "eps": 1e-12, "layer_decay": 0.5}
    opt = build_optimizer(model, Config({"Optimizer": o}))
    before = {n: p.numpy().copy() for n, p in model.named_parameters()}
    model(paddle.randn([2, 3, 32, 32])).sum().backward()
    opt.step()
    after = dict(model.named_parameters())
    # Adam's first step is lr * g / (|g| + eps): lr * sign(g) but where |g| is within float noise of eps
    for name, scale in layer_lr_scales(model, 0.5).items():
        step = np.abs(after[name].numpy() - before[name])
        assert np.median(step[step > 0]) == pytest.approx(1e-3 * scale, rel=1e-3), name
