"""t2tvit as a package: pip install -e . imports it anywhere; t2tvit.create_model builds a model to fine-tune."""
import os
import subprocess
import sys
import sysconfig

import numpy as np
import paddle
import pytest

import t2tvit
from runner import ROOT
from t2tvit.errors import UserError
from t2tvit.t2t import sinusoid_table


@pytest.mark.slow
def test_an_editable_install_imports_t2tvit_and_its_label_lists_from_another_directory(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    py = str(venv / "bin" / "python")
    # The scratch venv (no pip of its own) sees this interpreter's pip and packages (a .pth line), so the build
    # uses the installed setuptools and nothing is fetched (no build isolation); t2tvit is not among them.
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    with open(os.path.join(site, "parent.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "-e", ROOT],
                   check=True, timeout=600, cwd=str(tmp_path))
    probe = ("import importlib.resources as r, t2tvit; print(t2tvit.__file__); "
             "print(len(r.files('t2tvit').joinpath('data/imagenet1k_label_list.txt').read_text().splitlines()))")
    out = subprocess.run([py, "-c", probe], capture_output=True, text=True, check=True, timeout=120,
                         cwd=str(tmp_path), env=dict(os.environ, PYTHONPATH="")).stdout.split()
    assert out[0] == os.path.join(ROOT, "tools", "t2tvit", "__init__.py")
    assert int(out[1]) == 1000


def _saved(tmp_path, name, num_classes, img_size, as_checkpoint=False):
    paddle.seed(1)
    model = t2tvit.create_model("t2t_vit_7", num_classes=num_classes, img_size=img_size)
    state = model.state_dict()
    path = str(tmp_path / name)
    paddle.save({"model": state, "ema": None, "best_which": "model"} if as_checkpoint else state, path)
    return path, {k: v.numpy() for k, v in state.items()}


@pytest.mark.parametrize("src_classes,src_size,as_checkpoint", [(10, 32, False), (0, 32, True), (3, (48, 32), True)])
@pytest.mark.parametrize("num_classes,img_size", [(3, (48, 32)), (10, 32), (0, 64)])
def test_create_model_loads_any_file_for_any_class_count_and_size_and_says_what_it_re_made(
        tmp_path, src_classes, src_size, as_checkpoint, num_classes, img_size):
    path, src = _saved(tmp_path, "w.pdparams", src_classes, src_size, as_checkpoint)
    model = t2tvit.create_model("t2t_vit_7", pretrained=path, num_classes=num_classes, img_size=img_size)
    own = {k: v.numpy() for k, v in model.state_dict().items()}
    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    np.testing.assert_array_equal(own["pos_embed"], sinusoid_table(h // 16 * w // 16 + 1, 256))
    for k in own:
        if k != "pos_embed" and not k.startswith("head.") or (k in src and src[k].shape == own[k].shape):
            np.testing.assert_array_equal(own[k], src[k], err_msg=k)
    notes = " ".join(model.pretrained_notes)
    assert ("pos_embed" in notes) == (src["pos_embed"].shape != own["pos_embed"].shape)
    head_differs = ("head.weight" in src) != ("head.weight" in own) or (
        "head.weight" in own and src["head.weight"].shape != own["head.weight"].shape)
    assert ("head.weight" in notes) == head_differs
    out = model(paddle.zeros([1, 3, h, w]))
    assert out.shape == [1, num_classes or 256]


def test_create_model_names_the_file_and_keys_of_weights_from_another_architecture(tmp_path):
    paddle.seed(1)
    path = str(tmp_path / "t14.pdparams")
    paddle.save(t2tvit.create_model("t2t_vit_10", num_classes=2, img_size=32).state_dict(), path)
    with pytest.raises(UserError, match=r"t14.pdparams does not fit .*unexpected: blocks.7"):
        t2tvit.create_model("t2t_vit_7", pretrained=path, num_classes=2, img_size=32)


@pytest.mark.parametrize("bad", [(224, 100), 30, (224,), "224", (16.0, 32)])
def test_a_size_that_is_not_a_multiple_of_16_or_not_two_integers_is_one_user_error(bad):
    with pytest.raises(UserError, match="img_size"):
        t2tvit.create_model("t2t_vit_7", img_size=bad)


def test_the_readme_example_fine_tunes_converted_weights_at_a_non_square_size(tmp_path, monkeypatch):
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        code = f.read().split("<!-- create-model-example -->\n```python\n", 1)[1].split("```", 1)[0]
    assert len(code.strip().splitlines()) <= 12
    os.makedirs(tmp_path / "weights")
    paddle.seed(2)
    official = t2tvit.create_model("t2t_vit_7")  # the converted release's shapes: 1000 classes, 224 px
    paddle.save(official.state_dict(), str(tmp_path / "weights" / "t2t_vit_7.pdparams"))
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)
    model = scope["model"]
    notes = " ".join(model.pretrained_notes)
    assert "head.weight [256, 1000] dropped" in notes and "pos_embed [1, 197, 256] -> [1, 141, 256]" in notes
    # one optimizer step moved the trainable weights from the loaded ones, and never the fixed table
    assert model.head.weight.shape == [256, 5]
    np.testing.assert_array_equal(model.pos_embed.numpy(), sinusoid_table(141, 256))
    assert not np.allclose(model.blocks[0].mlp.fc1.weight.numpy(), official.blocks[0].mlp.fc1.weight.numpy())


def test_reset_head_re_makes_a_head_of_the_same_class_count_for_other_classes(tmp_path):
    # Pretrained on 5 classes, fine-tuned on 5 others: shapes match, so only reset_head re-makes the head.
    path, src = _saved(tmp_path, "five.pdparams", 5, 32)
    kept = t2tvit.create_model("t2t_vit_7", pretrained=path, num_classes=5, img_size=32)
    np.testing.assert_array_equal(kept.head.weight.numpy(), src["head.weight"])
    assert kept.pretrained_notes == []
    paddle.seed(3)
    fresh = t2tvit.create_model("t2t_vit_7", pretrained=path, num_classes=5, img_size=32, reset_head=True)
    assert not np.allclose(fresh.head.weight.numpy(), src["head.weight"])
    np.testing.assert_array_equal(fresh.blocks[0].attn.qkv.weight.numpy(), src["blocks.0.attn.qkv.weight"])
    assert fresh.pretrained_notes == ["head.weight [256, 5] dropped: re-initialised for 5 new classes (reset_head)",
                                      "head.bias [5] dropped: re-initialised for 5 new classes (reset_head)"]
