import argparse
import os

import pytest

from runner import ROOT
from t2tvit import config
from t2tvit import errors

T2T_7 = os.path.join(ROOT, "config", "t2t_vit_7.yaml")


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def based(tmp_path, name, body):
    """A config file in tmp_path whose _base_ chain reaches the repository's default.yaml."""
    rel = os.path.relpath(os.path.join(ROOT, "config", "default.yaml"), tmp_path)
    return write(tmp_path, name, f"_base_: {rel}\n{body}")


def error_of(path, overrides=()):
    with pytest.raises(errors.UserError) as e:
        config.load_config(path, overrides)
    return str(e.value)


def test_t2t_vit_7_is_the_paper_recipe():
    cfg = config.load_config(T2T_7)
    assert cfg.Global.model == "t2t_vit_7"
    assert cfg.Data.global_batch_size == 512
    assert cfg.Optimizer.betas == [0.9, 0.999]
    assert cfg.Optimizer.eps == 1e-8
    assert cfg.Optimizer.lr == 1e-3
    assert cfg.Optimizer.weight_decay == 0.03
    assert cfg.Global.epochs == 310
    assert (cfg.Scheduler.warmup_epochs, cfg.Scheduler.warmup_lr) == (5, 1e-6)
    assert cfg.Scheduler.cooldown_epochs == 10
    assert cfg.Scheduler.min_lr == 1e-5
    assert cfg.Model.drop_path_rate == 0.1
    assert cfg.Augment.rand_augment == "rand-m9-mstd0.5-inc1"
    assert cfg.Augment.reprob == 0.25  # pixel-mode erasing is fixed in the code, not a key
    assert (cfg.Augment.mixup, cfg.Augment.cutmix) == (0.8, 1.0)
    assert (cfg.Augment.mixup_prob, cfg.Augment.switch_prob) == (1.0, 0.5)
    assert cfg.Augment.smoothing == 0.1
    assert cfg.EMA.enable is True and cfg.EMA.decay == 0.99996


def test_access_dump_and_assignment():
    cfg = config.load_config(T2T_7)
    assert cfg["Data"]["root"] == cfg.Data.root == "lit_data"
    assert "Data" in cfg and "nope" not in cfg
    cfg.Data.batch_size = 32
    assert cfg.to_dict()["Data"]["batch_size"] == 32
    text = cfg.dump()
    assert "mean: [0.485, 0.456, 0.406]" in text
    assert text.index("Global:") < text.index("Model:") < text.index("Data:")  # schema order, not sorted
    with pytest.raises(AttributeError):
        cfg.Data.nope


def test_base_chain_merges_deeply(tmp_path):
    base = based(tmp_path, "base.yaml", "Global:\n  epochs: 100\n  seed: 3\nData:\n  root: /a\n")
    child = write(tmp_path, "child.yaml", "_base_: base.yaml\nGlobal:\n  epochs: 50\n")
    cfg = config.load_config(child)
    assert (cfg.Global.epochs, cfg.Global.seed, cfg.Data.root) == (50, 3, "/a")
    assert cfg.Data.batch_size == 64  # untouched keys keep the schema's defaults
    assert config.load_config(base).Global.epochs == 100


def test_demo_config_loads():
    cfg = config.load_config(os.path.join(ROOT, "config", "t2t_vit_7_demo.yaml"))
    assert cfg.Global.epochs == 8 and cfg.Global.model == "t2t_vit_7" and cfg.EMA.decay == 0.9


def test_overrides_are_typed():
    cfg = config.load_config(T2T_7, ["Global.epochs=100", "Data.mean=[0.5,0.5,0.5]", "Data.root=/data/imagenet",
                                     "Data.train_list=", "Optimizer.lr=2", "Optimizer.eps=1e-6",
                                     "Data.classes=2012", "EMA.enable=false", "Global.resume=''"])
    assert cfg.Global.epochs == 100
    assert cfg.Data.mean == [0.5, 0.5, 0.5]
    assert cfg.Data.root == "/data/imagenet"
    assert cfg.Data.train_list == ""
    assert cfg.Optimizer.lr == 2.0 and isinstance(cfg.Optimizer.lr, float)
    assert cfg.Optimizer.eps == 1e-6  # PyYAML reads 1e-6 as a string; a float key takes it
    assert cfg.Data.classes == "2012"  # a string key keeps the text, not the number
    assert cfg.EMA.enable is False
    assert cfg.Global.resume == ""


def test_cli_arguments():
    parser = argparse.ArgumentParser()
    config.add_config_args(parser)
    args = parser.parse_args(["-o", "Global.epochs=100", "Global.seed=4", "-o", "Data.root=/x"])
    assert args.override == ["Global.epochs=100", "Global.seed=4", "Data.root=/x"]
    cfg = config.config_from_args(args)
    assert (cfg.Global.epochs, cfg.Global.seed, cfg.Data.root) == (100, 4, "/x")
    # Without -c: every command's one default, the lit_data demo that scripts/train.sh trains, found from any
    # working directory.
    assert parser.parse_args([]).config is None and os.path.isabs(config.DEFAULT_CONFIG)
    assert config.config_from_args(parser.parse_args([])).Global.output_dir == "output/t2t_vit_7_demo"
    assert parser.parse_args(["-c", "a.yaml"]).config == "a.yaml"


def test_unknown_key_suggests_the_closest(tmp_path):
    path = based(tmp_path, "x.yaml", "Data:\n  rot: /data\n")
    assert error_of(path) == f"unknown config key 'Data.rot' (in {path}); did you mean 'Data.root'?"
    assert error_of(T2T_7, ["Data.rot=/data"]) == \
        "unknown config key 'Data.rot' (in -o Data.rot=/data); did you mean 'Data.root'?"
    assert "did you mean 'Optimizer.lr'?" in error_of(T2T_7, ["Global.lr=0.1"])


def test_unknown_section(tmp_path):
    path = based(tmp_path, "x.yaml", "Optimiser:\n  lr: 0.1\n")
    assert error_of(path) == f"unknown config section 'Optimiser' (in {path}); did you mean 'Optimizer'?"
    assert "unknown config section 'Dataa' (in -o Dataa.root=/x)" in error_of(T2T_7, ["Dataa.root=/x"])


@pytest.mark.parametrize("override, expected", [
    ("Global.epochs=1.5", "1.5 is not an integer"),
    ("Data.batch_size=true", "True is not an integer"),
    ("Optimizer.lr=fast", "'fast' is not a number"),
    ("Data.mean=[0.5,0.5]", "[0.5, 0.5] is not a list of 3 numbers"),
    ("Data.mean=[0.5,0.5,x]", "is not a list of 3 numbers"),
    ("EMA.enable=1", "1 is not a boolean"),
    ("Data.root=[a]", "['a'] is not a string"),
])
def test_wrong_type(override, expected):
    message = error_of(T2T_7, [override])
    assert message.startswith(f"config key '{override.split('=')[0]}' (in -o {override}): ")
    assert expected in message


def test_wrong_type_in_file_names_the_file(tmp_path):
    path = based(tmp_path, "x.yaml", "Global:\n  epochs: 10.5\n")
    assert error_of(path) == f"config key 'Global.epochs' (in {path}): 10.5 is not an integer"


@pytest.mark.parametrize("override", ["Global.device=tpu", "Global.amp=fp32", "Global.amp_level=O3",
                                      "Global.nonfinite=retry", "Scheduler.by=iter",
                                      "Augment.train_interpolation=nearest", "Data.interpolation=random"])
def test_bad_choice(override):
    key, value = override.split("=")
    assert f"config key '{key}' (in -o {override}): '{value}' is not one of" in error_of(T2T_7, [override])


@pytest.mark.parametrize("override, expected", [
    ("Data.batch_size=0", "must be > 0"),
    ("Data.global_batch_size=-8", "must be > 0"),
    ("Optimizer.lr=0", "must be > 0"),
    ("Augment.mixup_prob=1.5", "not a probability"),
    ("EMA.decay=1", "must be in [0, 1)"),
    ("Optimizer.betas=[0.9,1.0]", "must all be in [0, 1)"),
    ("Scheduler.min_lr=0.01", "above Optimizer.lr"),
    ("Global.epochs=15", "no cosine phase"),
])
def test_ranges(override, expected):
    assert expected in error_of(T2T_7, [override])


@pytest.mark.parametrize("override", ["Global.epochs", "epochs=3", "=3", "Global.=3", "Global=3"])
def test_malformed_override(override):
    assert error_of(T2T_7, [override]).startswith(f"malformed override -o {override!r}")


def test_unparsable_override_value():
    assert "cannot parse the value '[1,2'" in error_of(T2T_7, ["Data.mean=[1,2"])


def test_missing_file(tmp_path):
    missing = str(tmp_path / "nope.yaml")
    assert error_of(missing) == f"config file not found: {missing}"
    child = write(tmp_path, "child.yaml", "_base_: gone.yaml\n")
    assert error_of(child) == f"config file not found: {tmp_path / 'gone.yaml'} (the _base_ of {child})"


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = based(tmp_path, "bad.yaml", "Global:\n  epochs: 10\n  seed: [1, 2\n")
    message = error_of(path)
    assert message.startswith(f"{path}:") and "YAML syntax error" in message
    line = int(message[len(path) + 1:].split(":")[0])
    assert 3 <= line <= 5


def test_base_cycle(tmp_path):
    write(tmp_path, "a.yaml", "_base_: b.yaml\n")
    b = write(tmp_path, "b.yaml", "_base_: a.yaml\n")
    assert "comes back to it" in error_of(b)


def test_section_must_be_a_mapping(tmp_path):
    path = based(tmp_path, "x.yaml", "Global: 3\n")
    assert error_of(path) == f"config section 'Global' (in {path}) must be a mapping of keys, got 3"


@pytest.mark.parametrize("override, expected", [
    ("Global.epochs=1:30", "override -o Global.epochs: '1:30' is 90 in YAML 1.1 (base 60), surely not what was meant"),
    ("Optimizer.lr=0:0:1.5", "'0:0:1.5' is 1.5 in YAML 1.1 (base 60)"),
    ("Global.seed=010", "override -o Global.seed: '010' is 8 in YAML 1.1 (octal: a leading 0)"),
    ("Global.seed=!!int abc", "override -o Global.seed: 'abc' is not a valid !!int (ValueError)"),
    ("Global.seed=!!timestamp x", "override -o Global.seed: 'x' is not a valid !!timestamp"),
    ("EMA.enable=!!bool maybe", "'maybe' is not a valid !!bool"),
    ("Global.seed=" + "9" * 5000, "(5,000 characters) is not a valid !!int (over Python's 4300 digits)"),
])
def test_yaml_1_1_oddities_and_failing_tags_are_one_short_line(override, expected):
    message = error_of(T2T_7, [override])
    assert expected in message and "\n" not in message and len(message) < 300, message


def test_yaml_1_1_oddities_in_a_file_name_the_file_and_line(tmp_path):
    path = based(tmp_path, "x.yaml", "Global:\n  epochs: 1:30\n")
    assert error_of(path).startswith(f"{path}:3: YAML value error: '1:30' is 90 in YAML 1.1 (base 60)")


def test_string_keys_take_any_text_and_explicit_numbers_still_work():
    cfg = config.load_config(T2T_7, ["Global.output_dir=0123", "Global.log_dir=1:30", "Global.epochs=0x20",
                                     "Global.seed=0", "Optimizer.lr=1e-3"])
    assert (cfg.Global.output_dir, cfg.Global.log_dir, cfg.Global.epochs, cfg.Optimizer.lr) == ("0123", "1:30", 32, 1e-3)


@pytest.mark.parametrize("override", ["Augment.cutmix=.inf", "Optimizer.eps=.inf", "Optimizer.lr=.nan",
                                      "Data.mean=[.inf,0.4,0.4]", "Data.std=[.inf,0.2,0.2]", "Augment.mixup=-.inf"])
def test_non_finite_numbers_are_refused(override):
    key = override.split("=")[0]
    assert error_of(T2T_7, [override]).startswith(f"config key '{key}' (in -o {override}): ")
    assert "is not finite (inf and nan are never a setting)" in error_of(T2T_7, [override])


@pytest.mark.parametrize("override, bound", [
    ("Global.num_classes=1000000000", "1 to 100,000"), ("Global.img_size=8192", "16 to 4,096"),
    ("Global.img_size=[224,8192]", "16 to 4,096"), ("Global.epochs=1000000", "1 to 100,000"),
    ("Data.batch_size=1000000", "1 to 65,536"), ("Data.global_batch_size=1000000000039", "1 to 16,777,216"),
    ("Data.num_workers=100000", "0 to 1,024"), ("Data.mean=[0.5,2,0.5]", "0 to 1"), ("Data.std=[0.5,1e-9,0.5]", "0.001 to 1"),
])
def test_values_past_their_bounds_are_refused_naming_them(override, bound):
    key, value = override.split("=")
    assert error_of(T2T_7, [override]).endswith(f"is outside {bound}")


def test_every_bound_is_written_in_default_yaml_beside_its_key():
    from t2tvit.config_doc import read_schema
    meanings = {f"{section}.{key}": meaning for section, keys in read_schema()[1] for key, _, meaning in keys}
    for key, (low, high) in config.BOUNDS.items():
        assert config.bounds_text(low, high) in meanings[key], (key, meanings[key])
