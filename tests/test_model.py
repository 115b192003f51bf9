"""The model computes exactly what the official T2T-ViT computes, with the official names and sizes."""
import json
import os

import numpy as np
import paddle
import pytest

import official_fixtures
from runner import REFERENCE, error_lines, official_eval_errors, official_weights, reference_input, run_main
from t2tvit.checkpoint import load_file, match_state_dict
from t2tvit.errors import UserError
from t2tvit.t2t import VARIANTS, create_model, frozen_parameter_names, linear_weight_names, sinusoid_table


PARAMS = {
    "t2t_vit_7": 4310222, "t2t_vit_10": 5889230, "t2t_vit_12": 6941902, "t2t_vit_14": 21545550,
    "t2t_vit_19": 39177422, "t2t_vit_24": 64105934, "t2t_vit_t_14": 21541070, "t2t_vit_t_19": 39172942,
    "t2t_vit_t_24": 64101454, "t2t_vit_14_resnext": 21545550, "t2t_vit_14_wide": 25156302,
}
# A faithful float32 port lands ~1e-6 from the reference; 1e-5 already signals a differing detail.
PARITY_TOL = 1e-5


def n_params(model, trainable_only=False):
    return sum(int(p.numel()) for p in model.parameters() if not (trainable_only and p.stop_gradient))


def torch_layout_to_paddle(model, state):
    linear = set(linear_weight_names(model))
    return {k: (v.T if k in linear else v) for k, v in state.items()}


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_parameter_count(name):
    assert n_params(create_model(name)) == PARAMS[name]


def test_every_variant_has_a_count():
    assert set(VARIANTS) == set(PARAMS)


def test_unknown_model_lists_known_ones():
    with pytest.raises(UserError, match="t2t_vit_7.*t2t_vit_14_wide"):
        create_model("t2t_vit_8")


def test_frozen_parameters_are_the_official_ones():
    meta = json.load(open(os.path.join(REFERENCE, "meta.json")))
    model = create_model("t2t_vit_7")
    assert sorted(frozen_parameter_names(model)) == sorted(meta["frozen_params"])
    assert n_params(model, trainable_only=True) == meta["params_trainable"] == 4255694


def test_init_statistics():
    paddle.seed(1)
    model = create_model("t2t_vit_14")
    sd = model.state_dict()
    for name in ("blocks.0.attn.qkv.weight", "blocks.3.mlp.fc1.weight", "tokens_to_token.project.weight"):
        assert abs(float(sd[name].std()) - 0.02) < 0.001, name
        assert abs(float(sd[name].mean())) < 0.001, name
    assert abs(float(sd["cls_token"].std()) - 0.02) < 0.005
    assert float(paddle.abs(sd["blocks.0.attn.proj.bias"]).max()) == 0.0
    assert float(sd["blocks.0.norm1.weight"].min()) == 1.0 and float(sd["norm.bias"].abs().max()) == 0.0
    for att in ("attention1", "attention2"):
        w = sd[f"tokens_to_token.{att}.w"].numpy()
        assert w.shape == (32, 64)
        np.testing.assert_allclose(w @ w.T, 32 * np.eye(32), atol=1e-4)
    pos = sd["pos_embed"].numpy()[0]
    assert pos.shape == (197, 384)
    i = np.arange(384)
    expected = 5 / np.power(10000.0, 2 * (i // 2) / 384)
    np.testing.assert_allclose(pos[5], np.where(i % 2 == 0, np.sin(expected), np.cos(expected)), atol=1e-6)


def test_position_table_follows_img_size():
    model = create_model("t2t_vit_7", img_size=384, num_classes=10)
    assert model.pos_embed.shape == [1, 577, 256]
    np.testing.assert_array_equal(model.pos_embed.numpy(), sinusoid_table(577, 256))
    assert model(paddle.randn([1, 3, 384, 384])).shape == [1, 10]


def test_drop_path_rates_are_linear_over_blocks():
    model = create_model("t2t_vit_7", drop_path_rate=0.1)
    rates = [blk.drop_path.p for blk in model.blocks]
    np.testing.assert_allclose(rates, np.linspace(0, 0.1, 7))
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.1)


def test_the_position_table_is_the_official_codes_bit_for_bit():
    official = official_fixtures.read_meta(REFERENCE)["pos_embed"]
    assert list(create_model("t2t_vit_7").pos_embed.shape) == official["shape"] == [1, 197, 256]
    assert official_fixtures.digest({"pos_embed": create_model("t2t_vit_7").pos_embed.numpy()}) == official["sha256"]
    assert official_fixtures.digest({"pos_embed": sinusoid_table(197, 256)}) == official["sha256"]


def reference_model():
    model = create_model("t2t_vit_7")
    state = official_weights()
    state, notes = match_state_dict(model, torch_layout_to_paddle(model, state), "fixture")
    assert notes == []
    model.set_state_dict(state)
    model.eval()
    return model


def run_with_intermediates(model, x):
    names = ["tokens_to_token.attention1", "tokens_to_token.attention2", "tokens_to_token", "blocks.0",
             "blocks.6", "norm"]
    layers = dict(model.named_sublayers())
    seen, hooks = {}, []
    for name in names:
        hooks.append(layers[name].register_forward_post_hook(
            lambda layer, inp, out, name=name: seen.__setitem__(name, out.numpy())))
    with paddle.no_grad():
        logits = model(paddle.to_tensor(x)).numpy()
    for h in hooks:
        h.remove()
    return logits, seen


def test_logits_and_intermediates_match_reference():
    errors = official_eval_errors(*run_with_intermediates(reference_model(), reference_input()))
    print("max |diff| against the official code:", errors)
    assert len(errors) == 13 and {k: e for k, e in errors.items() if not e < PARITY_TOL} == {}


def convert(tmp_path, *args):
    return run_main("convert_weights.py", *args, config=None)


@pytest.mark.slow
def test_converter_cli_gives_reference_logits(tmp_path, official_checkpoint):
    pytest.importorskip("torch")
    dst = tmp_path / "t2t_vit_7.pdparams"
    r = convert(tmp_path, "--src", official_checkpoint, "--dst", str(dst), "--model", "t2t_vit_7")
    assert r.returncode == 0, r.stderr
    model = create_model("t2t_vit_7")
    model.set_state_dict(load_file(str(dst)))
    model.eval()
    with paddle.no_grad():
        logits = model(paddle.to_tensor(reference_input())).numpy()
    with np.load(os.path.join(REFERENCE, "outputs.npz")) as ref:
        assert np.abs(logits - ref["logits"]).max() < PARITY_TOL


def save_official_layout(model, path, wrap="state_dict_ema", prefix=""):
    """Write a Paddle model the way the official release stores it: torch tensors, [out, in] Linears."""
    import torch
    linear = set(linear_weight_names(model))
    state = {prefix + k: torch.from_numpy(np.ascontiguousarray(v.numpy().T if k in linear else v.numpy()))
             for k, v in model.state_dict().items()}
    torch.save({wrap: state} if wrap else state, path)


@pytest.mark.slow
@pytest.mark.parametrize("name,img,wrap,prefix", [
    ("t2t_vit_t_14", 64, "state_dict", "module."),
    ("t2t_vit_14_resnext", 96, "model", ""),
    ("t2t_vit_10", 32, None, ""),
])
def test_converter_round_trip_other_variants(tmp_path, name, img, wrap, prefix):
    pytest.importorskip("torch")
    paddle.seed(3)
    model = create_model(name, img_size=img)
    model.eval()
    src, dst = tmp_path / "official.pth.tar", tmp_path / "out.pdparams"
    save_official_layout(model, src, wrap, prefix)
    r = convert(tmp_path, "--src", str(src), "--dst", str(dst), "--model", name, "--img-size", str(img))
    assert r.returncode == 0, r.stderr
    again = create_model(name, img_size=img)
    again.set_state_dict(load_file(str(dst)))
    again.eval()
    x = paddle.randn([2, 3, img, img])
    with paddle.no_grad():
        np.testing.assert_array_equal(model(x).numpy(), again(x).numpy())


@pytest.mark.slow
def test_converter_for_fine_tuning_drops_head_and_remakes_position_table(tmp_path, official_checkpoint):
    pytest.importorskip("torch")
    dst = tmp_path / "ft.pdparams"
    r = convert(tmp_path, "--src", official_checkpoint, "--dst", str(dst),
                "--model", "t2t_vit_7", "--num-classes", "10", "--img-size", "64")
    assert r.returncode == 0, r.stderr
    assert "head.weight [256, 1000] dropped" in r.stdout and "pos_embed" in r.stdout
    state = load_file(str(dst))
    ref = official_weights()
    np.testing.assert_array_equal(state["blocks.3.attn.qkv.weight"].numpy(), ref["blocks.3.attn.qkv.weight"].T)
    model = create_model("t2t_vit_7", img_size=64, num_classes=10)
    match_state_dict(model, state, "ft")  # loads strictly


@pytest.mark.slow
@pytest.mark.parametrize("case", ["unknown_model", "wrong_model", "not_a_checkpoint", "missing_src", "pickle"])
def test_converter_bad_input_one_line_and_nothing_written(tmp_path, case, official_checkpoint):
    pytest.importorskip("torch")
    src, model = official_checkpoint, "t2t_vit_7"
    if case == "unknown_model":
        model = "t2t_vit_77"
    elif case == "wrong_model":
        model = "t2t_vit_12"
    elif case == "not_a_checkpoint":
        src = os.path.join(REFERENCE, "outputs.npz")
    elif case == "missing_src":
        src = str(tmp_path / "nope.pth")
    else:
        import pickle
        src = str(tmp_path / "evil.pth")
        with open(src, "wb") as f:
            pickle.dump({"state_dict": {"x": object()}}, f)
    dst = tmp_path / "out.pdparams"
    r = convert(tmp_path, "--src", src, "--dst", str(dst), "--model", model)
    assert r.returncode != 0
    errors = error_lines(r)
    assert len(errors) == 1 and "Traceback" not in r.stderr, r.stderr
    assert not dst.exists() and not list(tmp_path.glob("out.pdparams*"))
    key = {"unknown_model": "t2t_vit_77", "wrong_model": "missing: blocks.7", "not_a_checkpoint": "outputs.npz",
           "missing_src": "nope.pth", "pickle": "evil.pth"}[case]
    assert key in errors[0]


@pytest.mark.parametrize("input_needs_grad", [True, False])
def test_training_layer_norm_gradients_equal_paddles(input_needs_grad):
    from t2tvit.cpu_training import LayerNorm
    rng = np.random.RandomState(0)
    x0, dy = rng.randn(2, 50, 147).astype("float32") * 3 + 1, rng.randn(2, 50, 147).astype("float32")
    x0[0, :3] = 0.25  # constant rows: variance 0, rstd = 1 / sqrt(eps)
    weight, bias = rng.rand(147).astype("float32") + 0.5, rng.randn(147).astype("float32")
    results = []
    for layer in (paddle.nn.LayerNorm(147, epsilon=1e-5), LayerNorm(147, epsilon=1e-5)):
        layer.weight.set_value(weight)
        layer.bias.set_value(bias)
        layer.train()
        x = paddle.to_tensor(x0, stop_gradient=not input_needs_grad)
        y = layer(x)
        y.backward(paddle.to_tensor(dy))
        dx = x.grad.numpy() if input_needs_grad else np.zeros(0) if x.grad is None else x.grad.numpy()
        results.append([y.numpy(), layer.weight.grad.numpy(), layer.bias.grad.numpy(), dx])
    for native, ours in zip(*results):
        np.testing.assert_allclose(ours, native, rtol=1e-5, atol=1e-5)


def test_training_dropout_drops_p_keeps_and_rescales_the_rest_and_follows_paddle_seed():
    from t2tvit.cpu_training import Dropout
    layer = Dropout(0.1)
    layer.train()
    x = paddle.ones([16, 3136, 64])
    x.stop_gradient = False
    paddle.seed(3)
    y = layer(x)
    y.backward(paddle.full(y.shape, 2.0))
    out, grad = y.numpy(), x.grad.numpy()
    # 3.2M Bernoulli draws: the dropped fraction has std 1.7e-4 around p.
    assert set(np.unique(out)) == {np.float32(0.0), np.float32(1 / 0.9)}
    assert abs((out == 0).mean() - 0.1) < 1e-3
    np.testing.assert_array_equal(grad, 2 * out)  # the gradient goes through the kept elements only
    paddle.seed(3)
    assert (layer(x).numpy() == out).all()
    assert (layer(x).numpy() != out).any()  # a fresh mask on the next call
    layer.eval()
    assert (layer(x).numpy() == 1).all()
    layer.train()
    assert Dropout(0.0)(x) is x


def save_official_main_checkpoint(model, path, args):
    """A full checkpoint as the official main.py (timm's CheckpointSaver) writes it: its args are a Namespace."""
    import torch
    save_official_layout(model, path, wrap=None)
    state = torch.load(path, weights_only=True)
    torch.save({"epoch": 309, "arch": "t2t_vit_7", "state_dict": {k: v * 0 for k, v in state.items()},
                "optimizer": {"state": {}, "param_groups": [{"lr": 1e-5, "params": [0]}]}, "version": 2,
                "args": args, "state_dict_ema": state, "metric": 71.7}, path)


@pytest.mark.slow
def test_an_official_main_checkpoint_converts_to_safetensors_with_its_sha256(tmp_path):
    pytest.importorskip("torch")
    import argparse
    import hashlib
    paddle.seed(5)
    model = create_model("t2t_vit_7", img_size=32)
    src, dst = tmp_path / "model_best.pth.tar", tmp_path / "t2t_vit_7.safetensors"
    save_official_main_checkpoint(model, src, argparse.Namespace(model="t2t_vit_7", lr=1e-3, model_ema=True))
    src_sha = hashlib.sha256(src.read_bytes()).hexdigest()
    r = convert(tmp_path, "--src", src, "--dst", dst, "--model", "t2t_vit_7", "--img-size", 32, "--sha256", src_sha)
    assert r.returncode == 0, r.stderr
    digest = hashlib.sha256(dst.read_bytes()).hexdigest()
    assert f"sha256 {digest}" in r.stdout
    state = load_file(str(dst))
    for k, v in model.state_dict().items():  # the EMA weights, not the zeroed model weights
        np.testing.assert_array_equal(state[k], v.numpy())
    r = convert(tmp_path, "--src", src, "--dst", tmp_path / "x.safetensors", "--model", "t2t_vit_7",
                "--img-size", 32, "--sha256", "0" * 64)
    assert r.returncode == 2 and f"sha256 is {src_sha}, not the expected" in error_lines(r)[0]
    assert not (tmp_path / "x.safetensors").exists()


class NotANamespace:
    pass


@pytest.mark.slow
def test_an_official_checkpoint_with_any_other_class_is_refused(tmp_path):
    pytest.importorskip("torch")
    src, dst = tmp_path / "odd.pth.tar", tmp_path / "out.pdparams"
    save_official_main_checkpoint(create_model("t2t_vit_7", img_size=32), src, NotANamespace())
    r = convert(tmp_path, "--src", src, "--dst", dst, "--model", "t2t_vit_7", "--img-size", 32)
    errors = error_lines(r)
    assert r.returncode == 2 and len(errors) == 1 and "odd.pth.tar" in errors[0] and "Traceback" not in r.stderr
    assert not dst.exists()


@pytest.mark.parametrize("fault", ["full_disk", "not_a_folder"])
def test_a_converter_write_error_is_one_line_and_leaves_no_file(tmp_path, monkeypatch, capsys, fault):
    pytest.importorskip("torch")
    import errno

    import convert_weights
    src = tmp_path / "src.pth"
    save_official_layout(create_model("t2t_vit_7", img_size=32), src, wrap=None)
    folder = tmp_path / "weights"
    if fault == "full_disk":
        folder.mkdir()

        def full(fd):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        monkeypatch.setattr(convert_weights.os, "fsync", full)
    else:
        folder.write_text("a file where the folder should be")
    dst = folder / "w.safetensors"
    with pytest.raises(SystemExit) as e:
        convert_weights.main(["--src", str(src), "--dst", str(dst), "--model", "t2t_vit_7", "--img-size", "32"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith(f"error: cannot write {dst}: "), err
    assert ("No space left" in err[0]) == (fault == "full_disk")
    assert not folder.is_dir() or os.listdir(folder) == []
