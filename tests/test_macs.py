"""MACs counted as fvcore counts the official model, and the parameter counts of the release."""
import os
import re

import pytest

from runner import ROOT, run_tool
from t2tvit.macs import count_macs, count_parameters
from t2tvit.t2t import VARIANTS, create_model

FVCORE_T2T_VIT_7_224 = 1.157e9  # fvcore on the official T2T-ViT-7 at 224, attention matmuls included (issue 18)


def test_t2t_vit_7_at_224_is_fvcore_s_1_157_gmacs_and_the_release_s_parameter_counts():
    model = create_model("t2t_vit_7")
    macs = count_macs(model, 224)
    assert sum(macs.values()) == pytest.approx(FVCORE_T2T_VIT_7_224, rel=0.01)
    # timm's table (0.98 G) counts the linear layers alone
    assert macs["linear"] == pytest.approx(0.98e9, rel=0.01)
    assert count_parameters(model) == (4310222, 4255694, 4310222 - 4255694)


def test_macs_follow_a_non_square_size_by_its_token_count():
    model = create_model("t2t_vit_7", img_size=(224, 160))
    square = count_macs(create_model("t2t_vit_7"), 224)
    macs = count_macs(model, (224, 160))
    # the linear layers and einsums scale with the token count (10/14 of 224 x 224's); attention faster
    assert macs["linear"] < square["linear"] * 0.75 and macs["attention matmuls"] < square["attention matmuls"] * 0.6


@pytest.mark.slow
def test_the_command_prints_the_counts_and_says_flops_are_twice_the_macs():
    r = run_tool("count_macs.py", "--model", "t2t_vit_7", "--img-size", "224", config=None)
    assert r.returncode == 0, r.stderr
    assert "FLOPs = 2 x MACs" in r.stdout
    assert "| t2t_vit_7 | 4.310 | 4.256 | 0.055 | 1.156 |" in r.stdout


def test_the_readme_model_table_gives_every_variant_s_counted_macs_at_224():
    readme = open(os.path.join(ROOT, "README.md")).read()
    rows = dict(re.findall(r"^\| `(\w+)` \|(?: [^|]* \|){6} ([\d.]+) \|", readme, flags=re.M))
    assert sorted(rows) == sorted(VARIANTS)
    for name, gmacs in rows.items():
        assert gmacs == f"{sum(count_macs(create_model(name), 224).values()) / 1e9:.3f}", name
