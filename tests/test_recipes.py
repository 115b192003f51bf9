"""Each model's config carries its official recipe, and the batch split keeps the global batch."""
import pytest

from t2tvit.config import load_config
from t2tvit.errors import UserError
from runner import ROOT
from t2tvit.t2t import VARIANTS
from train import batch_plan

# (lr, weight decay) of the official training commands; everything else is the T2T-ViT-7 recipe.
RECIPES = {
    "t2t_vit_7": (1e-3, 0.03), "t2t_vit_10": (1e-3, 0.03), "t2t_vit_12": (1e-3, 0.03),
    "t2t_vit_14": (5e-4, 0.05), "t2t_vit_19": (5e-4, 0.065), "t2t_vit_24": (5e-4, 0.065),
    "t2t_vit_t_14": (5e-4, 0.05), "t2t_vit_t_19": (5e-4, 0.065), "t2t_vit_t_24": (5e-4, 0.065),
    "t2t_vit_14_resnext": (5e-4, 0.05), "t2t_vit_14_wide": (5e-4, 0.05),
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_model_has_a_config_with_its_recipe(name):
    cfg = load_config(f"{ROOT}/config/{name}.yaml")
    assert cfg.Global.model == name and cfg.Global.output_dir == f"output/{name}"
    assert (cfg.Optimizer.lr, cfg.Optimizer.weight_decay) == RECIPES[name]
    assert (cfg.Data.global_batch_size, cfg.Global.epochs, cfg.Scheduler.cooldown_epochs) == (512, 310, 10)
    assert cfg.Model.drop_path_rate == 0.1 and cfg.EMA.decay == 0.99996


@pytest.mark.parametrize("devices,max_batch,expected", [
    (1, 64, (64, 8)), (2, 64, (64, 4)), (4, 64, (64, 2)), (8, 64, (64, 1)),
    (1, 128, (128, 4)), (8, 128, (64, 1)), (1, 100, (64, 8)), (4, 1024, (128, 1)),
])
def test_global_batch_512_on_1_2_4_8_devices(devices, max_batch, expected):
    batch, accum = batch_plan(512, max_batch, devices)
    assert (batch, accum) == expected and batch * devices * accum == 512


def test_impossible_splits_are_refused():
    with pytest.raises(UserError, match="not divisible by the 3 devices"):
        batch_plan(512, 64, 3)
    with pytest.raises(UserError, match="Data.batch_size 0"):
        batch_plan(512, 0, 1)


def test_the_fine_tuning_recipe_follows_the_authors_weight_decay_advice_and_leaves_layer_decay_off():
    cfg = load_config(f"{ROOT}/config/finetune_example.yaml")
    assert 1e-5 <= cfg.Optimizer.weight_decay <= 5e-5  # official issue #44
    assert cfg.Optimizer.layer_decay == 1.0
