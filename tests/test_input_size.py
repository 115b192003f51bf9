"""Global.img_size [H, W]: config, transforms, converter parsing, train/val/predict and export at a non-square size."""
import argparse
import glob
import os

import numpy as np
import paddle
import pytest
from PIL import Image

from runner import ROOT, error_lines, fast_overrides, run_tool
from t2tvit import deploy, export, export_meta
from t2tvit.config import SCHEMA_PATH, load_config
from t2tvit.errors import UserError
from t2tvit.sizes import parse_size
from t2tvit.t2t import create_model
from t2tvit.tool_config import config_for
from t2tvit.transforms import build_transform

PHOTO = sorted(glob.glob(os.path.join(ROOT, "lit_data", "val", "*", "*.JPEG")))[0]


def test_the_config_takes_one_integer_or_height_and_width():
    assert load_config(SCHEMA_PATH, ["Global.img_size=[64, 32]"]).Global.img_size == [64, 32]
    assert load_config(SCHEMA_PATH, ["Global.img_size=48"]).Global.img_size == 48


@pytest.mark.parametrize("bad,why", [("[64, 40]", "multiple of 16"), ("[64]", "height, width"),
                                     ("[64, 32, 16]", "height, width"), ("50", "multiple of 16"),
                                     ("[64, 0]", "multiple of 16"), ("big", "an integer or")])
def test_a_bad_img_size_is_one_error_naming_the_key(bad, why):
    with pytest.raises(UserError, match=rf"Global.img_size.*{why}"):
        load_config(SCHEMA_PATH, [f"Global.img_size={bad}"])


@pytest.mark.parametrize("text,hw", [(["224"], (224, 224)), (["224x160"], (224, 160)), (["192", "256"], (192, 256))])
def test_the_converter_size_argument_takes_s_hxw_or_h_w(text, hw):
    assert parse_size(text) == hw


def test_a_converter_size_of_three_numbers_or_words_is_a_user_error():
    for text in (["1", "2", "3"], ["224xabc"]):
        with pytest.raises(UserError, match="--img-size"):
            parse_size(text)


def test_non_square_eval_resizes_each_side_by_crop_pct_and_center_crops_as_timm_does_for_a_tuple():
    cfg = load_config(SCHEMA_PATH, ["Global.img_size=[64, 32]", "Data.crop_pct=0.875", "Data.crop_rounding=half_even"])
    got = build_transform(cfg, "val").pixels(PHOTO)
    # timm 0.3.4 transforms_imagenet_eval, (H, W) with H != W: Resize((int(H / crop_pct), int(W / crop_pct)))
    # then CenterCrop((H, W)) with torchvision >= 0.9's int(round((side - crop) / 2)) offsets (half_even; the
    # half_up default's offsets are tested in test_official_pixels.py)
    img = Image.open(PHOTO).convert("RGB").resize((36, 73), Image.Resampling.BICUBIC)
    top, left = int(round((73 - 64) / 2.0)), int(round((36 - 32) / 2.0))
    want = np.asarray(img.crop((left, top, left + 32, top + 64))).transpose(2, 0, 1)
    np.testing.assert_array_equal(got, want)
    train = build_transform(cfg, "train")(PHOTO)
    assert train.shape == (3, 64, 32)


def test_an_export_at_a_non_square_size_computes_the_dynamic_logits_and_checks_the_config(tmp_path):
    paddle.seed(4)
    model = create_model("t2t_vit_7", img_size=(64, 32), num_classes=3)
    model.eval()
    diffs = export.export_checked(model, [64, 32], str(tmp_path / "inference"), ("paddle",))
    assert diffs["paddle"] <= export.CHECK_TOL
    engine = deploy.create_predictor(str(tmp_path / "inference"), backend="paddle", threads=1)
    said = export_meta.read(str(tmp_path / "inference"))
    asked = argparse.Namespace(config=None, override=["Global.img_size=[64,32]"], img_size=None)
    assert config_for(asked, said)[0].Global.img_size == [64, 32]
    asked.override = ["Global.img_size=64"]
    with pytest.raises(UserError, match=r"Global.img_size 64x32 \(the export\) vs 64 \(-o Global.img_size=64\)"):
        config_for(asked, said)
    with pytest.raises(UserError, match=r"takes \[N, 3, 64, 32\] images"):
        engine(np.zeros((1, 3, 32, 64), "float32"))


@pytest.mark.slow
def test_train_val_and_predict_at_a_non_square_size(tmp_path):
    o = fast_overrides(tmp_path, **{"Global.img_size": "[48,32]"})
    for tool, extra in (("train.py", ()), ("val.py", ()), ("predict.py", (PHOTO,))):
        r = run_tool(tool, *extra, *o, timeout=600)
        assert r.returncode == 0 and not error_lines(r), (tool, r.stderr)
