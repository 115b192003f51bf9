"""Loading never runs code: crafted pickles through every load path, safetensors, non-finite weights."""
import glob
import hashlib
import json
import os
import pickle
import struct

import numpy as np
import paddle
import pytest

from runner import ROOT, error_lines, fast_overrides, run_main, run_tool
from t2tvit.checkpoint import CheckpointDir, load_file, load_weights, refuse_nonfinite, training_state
from t2tvit.ema import ModelEMA
from t2tvit.errors import UserError
from t2tvit.t2t import create_model


class Payload:
    """What an attacker pickles: unpickling calls os.system, which would create the marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class EvalPayload(Payload):
    def __reduce__(self):
        return eval, (f"open({str(self.marker)!r}, 'w')",)


def tiny():
    return create_model("t2t_vit_7", img_size=32, num_classes=10)


def real_checkpoint(model, **extra):
    """A training checkpoint as the trainer writes it (model, AdamW with its LR scheduler, EMA, progress)."""
    opt = paddle.optimizer.AdamW(learning_rate=paddle.optimizer.lr.LinearWarmup(1e-3, 2, 0.0, 1e-3),
                                 parameters=model.parameters())
    model(paddle.rand([1, 3, 32, 32])).sum().backward()
    opt.step()
    config = {"Global": {"model": "t2t_vit_7", "img_size": 32, "num_classes": 10}, "Data": {"global_batch_size": 4}}
    state = training_state(model, opt, ModelEMA(model, 0.9), None,
                           {"epoch": 1, "step": 5, "best": {"acc": 0.5, "which": "ema", "epoch": 0}, "skips": 0},
                           "t2t_vit_7", 4, 32, ["a", "b"], config)
    state.update(extra)
    return state, opt


def assert_refused(error, path, marker, global_name="system"):
    text = str(error.value)
    assert "\n" not in text and str(path) in text and f".{global_name}" in text and "refused" in text, text
    assert not marker.exists(), "the payload ran"


@pytest.mark.parametrize("payload", [Payload, EvalPayload])
def test_a_weights_file_whose_pickle_runs_a_command_is_refused_without_running_it(tmp_path, payload):
    marker, path = tmp_path / "ran", tmp_path / "evil.pdparams"
    with open(path, "wb") as f:
        pickle.dump({"pos_embed": payload(marker)}, f, protocol=4)
    with pytest.raises(UserError) as e:
        load_weights(tiny(), str(path))
    assert_refused(e, path, marker, "system" if payload is Payload else "eval")


@pytest.mark.parametrize("global_name", ["builtins.getattr", "builtins.exec", "subprocess.Popen", "numpy.load"])
def test_no_callable_a_file_names_is_resolved(tmp_path, global_name):
    module, name = global_name.rsplit(".", 1)
    path = tmp_path / "evil.pdparams"
    # GLOBAL 'module name', EMPTY_TUPLE, REDUCE, STOP: the smallest pickle that calls what it names.
    path.write_bytes(b"\x80\x04c" + f"{module}\n{name}\n".encode() + b")R.")
    with pytest.raises(UserError, match=f"{global_name}, which no Paddle weights file"):
        load_file(str(path))


def test_a_real_checkpoint_with_a_payload_hidden_in_one_value_is_refused(tmp_path):
    marker, path = tmp_path / "ran", tmp_path / "ckpt.pdckpt"
    state, _ = real_checkpoint(tiny(), class_names=["a", Payload(marker)])
    paddle.save(state, str(path))
    with pytest.raises(UserError) as e:
        load_weights(tiny(), str(path))
    assert_refused(e, path, marker)


def test_what_paddle_save_writes_loads_as_paddle_load_gives_it(tmp_path):
    model = tiny()
    state, opt = real_checkpoint(model)
    state["config"]["Augment"] = {"scale": [0.08, 1.0], "rand_augment": ""}
    state["bf16"] = paddle.ones([3]).astype("bfloat16")
    path = str(tmp_path / "ckpt.pdckpt")
    paddle.save(state, path)
    ours, theirs = load_file(path), paddle.load(path)

    def same(a, b, where):
        if isinstance(b, paddle.Tensor):
            assert isinstance(a, paddle.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
            np.testing.assert_array_equal(a.astype("float32").numpy(), b.astype("float32").numpy())
        elif isinstance(b, dict):
            assert type(a) is type(b) and list(a) == list(b), where
            for k in b:
                same(a[k], b[k], f"{where}/{k}")
        else:
            assert a == b and type(a) is type(b), where

    same(ours, theirs, "")
    paddle.save(model.state_dict(), path)  # a bare state dict, to which paddle.save adds its name table
    same(load_file(path), paddle.load(path), "")
    assert len(ours["optimizer"]) > 10  # moments, beta powers and the LR scheduler's state
    again = paddle.optimizer.AdamW(learning_rate=paddle.optimizer.lr.LinearWarmup(1e-3, 2, 0.0, 1e-3),
                                   parameters=model.parameters())
    again.set_state_dict(ours["optimizer"])
    assert again._learning_rate.last_epoch == opt._learning_rate.last_epoch


def planted(root, marker):
    os.makedirs(root, exist_ok=True)
    path = os.path.join(root, "latest.pdckpt")
    with open(path, "wb") as f:
        pickle.dump({"model": {}, "optimizer": {}, "epoch": 0, "step": Payload(marker)}, f, protocol=4)
    return path


def test_resume_auto_and_its_fallback_over_periodic_checkpoints_run_no_payload(tmp_path):
    marker = tmp_path / "ran"
    root = str(tmp_path / "out")
    planted(root, marker)
    ckpts = CheckpointDir(root)
    for name in ("ckpt-e0001-s000005.pdckpt", "ckpt-e0002-s000010.pdckpt"):
        os.link(ckpts.latest, os.path.join(root, name))
    with pytest.raises(UserError) as e:
        ckpts.resume_from("auto", warn=pytest.fail)
    text = str(e.value)
    assert "\n" not in text and text.count("posix.system") == 3 and "ckpt-e0001-s000005" in text, text
    assert not marker.exists()
    with pytest.raises(UserError) as e:
        ckpts.resume_from(ckpts.latest, warn=pytest.fail)  # --resume PATH
    assert_refused(e, ckpts.latest, marker)


@pytest.mark.slow
def test_a_planted_latest_checkpoint_runs_nothing_on_a_plain_train(tmp_path):
    marker = tmp_path / "ran"
    planted(str(tmp_path / "out"), marker)
    r = run_tool("train.py", *fast_overrides(tmp_path))
    errors = error_lines(r)
    assert r.returncode == 2 and len(errors) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "latest.pdckpt" in errors[0] and "posix.system" in errors[0]
    assert not marker.exists()


def test_non_finite_weights_are_refused_naming_tensors_and_counts(tmp_path):
    state = {k: v.numpy() for k, v in tiny().state_dict().items()}
    state["head.weight"][0, :3] = np.nan
    state["cls_token"][0, 0, 0] = np.inf
    path = str(tmp_path / "nan.pdparams")
    paddle.save(state, path)
    for drop_head in (False, True):  # predict / val / export, and fine-tuning
        with pytest.raises(UserError, match=r"nan.pdparams holds non-finite \(NaN/inf\) weights in 2 tensor\(s\): "
                                            r"cls_token \(1 of 256\), head.weight \(3 of 2560\)"):
            load_weights(tiny(), path, drop_head=drop_head)
    with pytest.raises(UserError, match=r"bf \(1 of 2\)"):
        refuse_nonfinite({"bf": paddle.to_tensor([1.0, float("nan")]).astype("bfloat16")}, "x")


def test_safetensors_weights_load_like_pdparams_and_a_wrong_sha256_is_refused(tmp_path):
    from safetensors.numpy import save_file
    paddle.seed(1)
    model = tiny()
    path = str(tmp_path / "w.safetensors")
    save_file({k: v.numpy() for k, v in model.state_dict().items()}, path)
    digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
    again = tiny()
    assert load_weights(again, path, sha256=digest.upper())[0] == "weights"
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(again.state_dict()[k].numpy(), v.numpy())
    with pytest.raises(UserError, match=f"w.safetensors: sha256 is {digest}, not the expected 00ff"):
        load_weights(tiny(), path, sha256="00ff")


def test_bfloat16_safetensors_are_refused_in_one_line(tmp_path):
    header = json.dumps({"w": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]}}).encode()
    path = tmp_path / "bf.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\x80\x3f\x80\x3f")
    with pytest.raises(UserError, match="bf.safetensors holds bfloat16 tensors"):
        load_file(str(path))


PHOTO = sorted(glob.glob(os.path.join(ROOT, "lit_data", "val", "*", "*.JPEG")))[0]
AT_32 = ["-o", "Global.img_size=32", "Global.device=cpu"]


@pytest.mark.slow
@pytest.mark.parametrize("tool", ["predict.py", "val.py", "export_model.py"])
def test_nan_weights_are_refused_by_predict_val_and_export(tmp_path, tool):
    state = {k: v.numpy() for k, v in create_model("t2t_vit_7", img_size=32).state_dict().items()}
    state["blocks.0.mlp.fc1.weight"][:2] = np.nan
    path = tmp_path / "nan.pdparams"
    paddle.save(state, str(path))
    args = {"predict.py": [PHOTO], "val.py": [], "export_model.py": ["--out", tmp_path / "exported"]}[tool]
    # val.py sets up a Runtime and its loggers: in a process of its own; predict and export need none
    r = (run_tool if tool == "val.py" else run_main)(tool, *args, "--weights", path, *AT_32)
    errors = error_lines(r)
    assert r.returncode == 2 and len(errors) == 1 and "Traceback" not in r.stderr, r.stderr
    assert f"{path} holds non-finite (NaN/inf) weights in 1 tensor(s): blocks.0.mlp.fc1.weight (1024 of 131072); " in errors[0]
    assert not (tmp_path / "exported").exists()


@pytest.mark.slow
def test_predict_takes_safetensors_weights_checked_by_sha256(tmp_path):
    from safetensors.numpy import save_file
    paddle.seed(2)
    state = {k: v.numpy() for k, v in create_model("t2t_vit_7", img_size=32).state_dict().items()}
    pickled, published = tmp_path / "w.pdparams", tmp_path / "w.safetensors"
    paddle.save(state, str(pickled))
    save_file(state, str(published))
    digest = hashlib.sha256(published.read_bytes()).hexdigest()
    r = run_main("predict.py", PHOTO, "--weights", published, "--sha256", digest, *AT_32)
    assert r.returncode == 0, r.stderr
    assert r.stdout == run_main("predict.py", PHOTO, "--weights", pickled, *AT_32).stdout and "class_id" in r.stdout
    r = run_main("predict.py", PHOTO, "--weights", published, "--sha256", "ab" * 32, *AT_32)
    assert r.returncode == 2 and error_lines(r) == [f"error: {published}: sha256 is {digest}, not the expected "
                                                    f"{'ab' * 32}; refusing a file that is not the one published"]


@pytest.mark.slow
def test_train_refuses_to_resume_a_checkpoint_of_another_class_count(tmp_path):
    state, _ = real_checkpoint(tiny())
    path = tmp_path / "other.pdckpt"
    paddle.save(state, str(path))
    r = run_tool("train.py", *fast_overrides(tmp_path), "--resume", path)
    errors = error_lines(r)
    assert r.returncode == 2 and len(errors) == 1 and "Traceback" not in r.stderr, r.stderr
    assert f"{path} does not fit this config, which differs in Global.num_classes (checkpoint 10, config 1000);" \
        in errors[0]
