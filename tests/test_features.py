"""T2T-ViT as a backbone: forward_intermediates (timm's semantics) and create_model(features_only=True), tied to the
full forward at a square and a non-square size."""
import os

import numpy as np
import paddle
import pytest

import t2tvit
from runner import ROOT
from t2tvit.errors import UserError
from t2tvit.t2t import create_model

SIZES = [32, (64, 32)]


def model_and_images(size, seed=0):
    paddle.seed(seed)
    model = create_model("t2t_vit_7", img_size=size, num_classes=10)
    model.eval()
    h, w = (size, size) if isinstance(size, int) else size
    return model, paddle.to_tensor(np.random.RandomState(seed).standard_normal((2, 3, h, w)).astype("float32"))


def block_outputs(model, x):
    """Each block's output [B, 1 + N, C] during the plain forward, and the logits."""
    seen = []
    hooks = [blk.register_forward_post_hook(lambda layer, inputs, out: seen.append(out.numpy()))
             for blk in model.blocks]
    try:
        logits = model(x).numpy()
    finally:
        for h in hooks:
            h.remove()
    return seen, logits


@pytest.mark.parametrize("size", SIZES)
def test_intermediates_are_the_blocks_outputs_of_the_full_forward_and_the_final_features_what_the_head_sees(size):
    model, x = model_and_images(size)
    outputs, logits = block_outputs(model, x)
    final, maps = model.forward_intermediates(x)
    tokens = model.forward_intermediates(x, output_fmt="NLC", intermediates_only=True)
    h, w = model.img_size[0] // 16, model.img_size[1] // 16
    assert len(maps) == len(tokens) == len(model.blocks) == 7
    for out, fmap, seq in zip(outputs, maps, tokens):
        np.testing.assert_array_equal(seq.numpy(), out[:, 1:])  # the class token kept apart
        assert fmap.shape == [2, 256, h, w]
        for i in range(h):  # map[:, :, i, j] is token i * w + j: the grid row by row, as the T2T module folds it
            for j in range(w):
                np.testing.assert_array_equal(fmap.numpy()[:, :, i, j], out[:, 1 + i * w + j])
    assert final.shape == [2, 1 + h * w, 256]
    np.testing.assert_array_equal(model.forward_head(final).numpy(), logits)
    np.testing.assert_array_equal(final[:, 0].numpy(), model.forward_features(x).numpy())
    np.testing.assert_array_equal(model.forward_head(final, pre_logits=True).numpy(),
                                  model.forward_features(x).numpy())
    last = model.forward_intermediates(x, indices=1, norm=True, output_fmt="NLC", intermediates_only=True)
    np.testing.assert_array_equal(last[0].numpy(), final[:, 1:].numpy())


def test_indices_take_the_last_n_or_the_named_blocks_in_block_order_and_say_when_out_of_range():
    model, x = model_and_images(32)
    outputs, _ = block_outputs(model, x)
    for indices, blocks in ((2, [5, 6]), ([0, -1], [0, 6]), ([-1, 0], [0, 6]), ([3], [3]), (None, range(7))):
        got = model.forward_intermediates(x, indices=indices, output_fmt="NLC", intermediates_only=True)
        assert len(got) == len(blocks)
        for seq, b in zip(got, blocks):
            np.testing.assert_array_equal(seq.numpy(), outputs[b][:, 1:])
    with_cls = model.forward_intermediates(x, indices=[2], return_prefix_tokens=True, intermediates_only=True)
    np.testing.assert_array_equal(with_cls[0][1].numpy(), outputs[2][:, :1])
    for bad, message in ((8, "1 to 7"), (0, "1 to 7"), ([7], "outside the model's 7 blocks"),
                         ([-8], "outside"), ([], "at least one block")):
        with pytest.raises(UserError, match=message):
            model.forward_intermediates(x, indices=bad)
    with pytest.raises(UserError, match="NCHW or NLC"):
        model.forward_intermediates(x, output_fmt="NHWC")


def test_stop_early_runs_no_block_after_the_last_one_named():
    model, x = model_and_images(32)
    ran = []
    hooks = [blk.register_forward_pre_hook(lambda layer, inputs, i=i: ran.append(i)) for i, blk in
             enumerate(model.blocks)]
    model.forward_intermediates(x, indices=[1, 2], stop_early=True, intermediates_only=True)
    for h in hooks:
        h.remove()
    assert ran == [0, 1, 2]


@pytest.mark.parametrize("size", SIZES)
def test_a_features_only_model_yields_the_maps_of_the_full_model_with_the_same_weights(tmp_path, size):
    model, x = model_and_images(size, seed=4)
    path = str(tmp_path / "w.pdparams")
    paddle.save(model.state_dict(), path)
    full = model.forward_intermediates(x, indices=[1, 3], intermediates_only=True)
    full_normed = model.forward_intermediates(x, indices=[1, 3], norm=True, intermediates_only=True)
    backbone = t2tvit.create_model("t2t_vit_7", pretrained=path, num_classes=10, img_size=size, features_only=True,
                                   out_indices=(1, -4))
    backbone.eval()
    assert backbone.out_indices == [1, 3] and len(backbone.model.blocks) == 4  # blocks 4..6 are not kept
    assert isinstance(backbone.model.head, paddle.nn.Identity) and isinstance(backbone.model.norm, paddle.nn.Identity)
    assert [f["module"] for f in backbone.feature_info] == ["blocks.1", "blocks.3"]
    assert all(f["num_chs"] == 256 and f["reduction"] == 16 for f in backbone.feature_info)
    for got, want in zip(backbone(x), full):
        np.testing.assert_array_equal(got.numpy(), want.numpy())
    normed = t2tvit.t2t.FeatureBackbone(create_model("t2t_vit_7", img_size=size, num_classes=10), (1, 3), norm=True)
    normed.model.set_state_dict(model.state_dict())
    normed.eval()
    for got, want in zip(normed(x), full_normed):
        np.testing.assert_array_equal(got.numpy(), want.numpy())


def test_a_default_features_only_model_gives_the_last_three_blocks():
    backbone = create_model("t2t_vit_7", img_size=32, features_only=True)
    assert backbone.out_indices == [4, 5, 6]
    assert [m.shape for m in backbone(paddle.zeros([1, 3, 32, 32]))] == [[1, 256, 2, 2]] * 3


def test_the_finetuning_page_backbone_example_runs_as_written_and_gives_the_full_models_maps(tmp_path, monkeypatch):
    with open(os.path.join(ROOT, "docs", "finetuning.md"), encoding="utf-8") as f:
        code = f.read().split("<!-- backbone-example -->\n```python\n", 1)[1].split("```", 1)[0]
    os.makedirs(tmp_path / "weights")
    paddle.seed(5)
    paddle.save(create_model("t2t_vit_7").state_dict(), str(tmp_path / "weights" / "t2t_vit_7.pdparams"))
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(compile(code, "docs/finetuning.md", "exec"), scope)
    model, images, maps = scope["model"], scope["images"], scope["maps"]
    assert [m.shape for m in maps] == [[1, 256, 14, 20]] * 3
    for got, want in zip(maps, model.forward_intermediates(images, indices=[2, 4, 6], intermediates_only=True)):
        np.testing.assert_array_equal(got.numpy(), want.numpy())
    np.testing.assert_array_equal(scope["logits"].numpy(), model(images).numpy())
    assert [t.shape for t in scope["tokens"]] == [[1, 280, 256]] * 2
