"""Loading never runs code: crafted pickles through every load path, safetensors, non-finite weights."""
import glob
import hashlib
import json
import os
import pickle
import re
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


def list_bomb(levels):
    """The 312-byte file of issue 31: lists shared through the pickle memo, L[i+1] = [L[i], L[i]]; a walk that
    follows every reference visits 2**levels of them."""
    bomb = []
    for _ in range(levels):
        bomb = [bomb, bomb]
    return pickle.dumps({"model": bomb, "optimizer": {}, "epoch": 0, "step": 0}, protocol=4)


@pytest.mark.parametrize("levels, reason", [(49, "nests containers over 32 deep"),
                                            (24, "holds over 1,000,000 values once its shared parts are counted")])
def test_a_memo_shared_list_bomb_is_refused_at_once_in_bounded_memory_on_every_load_path(tmp_path, levels, reason):
    import tracemalloc
    data = list_bomb(levels)
    assert len(data) < 400
    out = tmp_path / "out"
    out.mkdir()
    for name in ("bomb.pdparams", "latest.pdckpt"):
        (out / name).write_bytes(data)
    tracemalloc.start()
    try:
        loads = [lambda: load_weights(tiny(), str(out / "bomb.pdparams")),  # --weights
                 lambda: load_weights(tiny(), str(out / "bomb.pdparams"), drop_head=True),  # Global.pretrained
                 lambda: CheckpointDir(str(out)).resume_from(str(out / "latest.pdckpt"), pytest.fail),  # --resume
                 lambda: CheckpointDir(str(out)).resume_from("auto", pytest.fail)]  # a planted latest.pdckpt
        for load in loads:
            with pytest.raises(UserError) as e:
                load()
            assert reason in str(e.value) and "\n" not in str(e.value), e.value
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 << 20, peak  # the whole walk: tens of MB would mean it expanded the shared lists


def test_shared_values_within_the_budget_load_once_each(tmp_path):
    shared = [np.arange(3, dtype="float32")] * 2
    path = tmp_path / "shared.pdckpt"
    path.write_bytes(pickle.dumps({"a": [shared, shared], "b": shared}, protocol=4))
    loaded = load_file(str(path))
    assert loaded["a"][0] is loaded["a"][1] is loaded["b"]  # one walk per object: the sharing survives
    assert loaded["b"][0] is loaded["b"][1] and isinstance(loaded["b"][0], paddle.Tensor)


@pytest.mark.parametrize("value, reason", [
    (np.zeros(3, dtype=[("a", "f4"), ("b", "i4")]), "dtype '|V8' ([('a', '<f4'), ('b', '<i4')]), which is no tensor's"),
    (np.array(["unicode"]), "dtype '<U7' (<U7), which is no tensor's"),
    (np.empty(10 ** 12, dtype=np.dtype([])), "which is no tensor's"),  # zero itemsize: a trillion items in 0 bytes
    (np.zeros(2, "complex64"), "dtype '<c8' (complex64), which is no tensor's"),
    (np.float64(1.0).astype("datetime64[s]"), "which is no tensor's"),
])
def test_arrays_of_no_tensor_dtype_are_refused_in_one_line(tmp_path, value, reason):
    path = tmp_path / "odd.pdparams"
    path.write_bytes(pickle.dumps({"pos_embed": value}, protocol=4))
    with pytest.raises(UserError) as e:
        load_weights(tiny(), str(path))
    assert str(e.value).startswith(f"{path}: refused to load: ['pos_embed'] is a numpy ") and reason in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("content, reason", [
    ({"model": {0: np.zeros(1, "float32")}}, "['model'] has a key 0 (int), not a string"),
    ({("a", 1): 1}, "the top level has a key ('a', 1) (tuple), not a string"),
    ({"class_names": {"a", "b"}}, "['class_names'] is a set"),
    ({"x": np.array([1, "a"], dtype=object)}, "numpy.dtype(object)"),
])
def test_non_string_keys_sets_and_object_arrays_are_refused_in_one_line(tmp_path, content, reason):
    path = tmp_path / "odd.pdckpt"
    path.write_bytes(pickle.dumps(content, protocol=4))
    with pytest.raises(UserError) as e:
        load_file(str(path))
    assert reason in str(e.value) and "\n" not in str(e.value), e.value


def test_numpy_arrays_are_only_built_as_numpy_pickles_them(tmp_path):
    # numpy.ndarray((10**10,)) called directly would allocate 10 GB (uninitialised) from a 60-byte file
    direct = b"\x80\x04cnumpy\nndarray\nJ\x00\xe4\x0bT\x85\x85R."
    reconstruct = (b"\x80\x04cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nJ\x00\xe4\x0bT\x85C\x01b\x87R.")
    for i, data in enumerate((direct, reconstruct)):
        path = tmp_path / f"big{i}.pdparams"
        path.write_bytes(data)
        with pytest.raises(UserError, match=f"cannot read {path} as Paddle weights"):
            load_file(str(path))


def test_big_endian_arrays_load_as_their_values(tmp_path):
    path = tmp_path / "be.pdparams"
    path.write_bytes(pickle.dumps({"w": np.arange(4, dtype=">f4")}, protocol=4))
    np.testing.assert_array_equal(load_file(str(path))["w"].numpy(), np.arange(4, dtype="float32"))


def weights_as(dtype):
    return {k: v.numpy().astype(dtype) for k, v in tiny().state_dict().items()}


def test_float16_weights_are_cast_exactly_on_every_load_path(tmp_path):
    from safetensors.numpy import save_file
    state = weights_as("float16")
    save_file(state, str(tmp_path / "w.safetensors"))
    paddle.save({k: paddle.to_tensor(v) for k, v in state.items()}, str(tmp_path / "w.pdparams"))
    bf16 = {k: paddle.to_tensor(v.astype("float32")).astype("bfloat16") for k, v in state.items()}
    paddle.save(bf16, str(tmp_path / "bf.pdparams"))
    for name in ("w.safetensors", "w.pdparams"):
        for drop_head in (False, True):  # --weights; Global.pretrained
            model = tiny()
            which, notes = load_weights(model, str(tmp_path / name), drop_head=drop_head)
            assert f"{len(state)} float16 tensor(s) cast to the model's float32 (exact)" in notes
            for k, v in model.state_dict().items():
                assert v.dtype == paddle.float32
                np.testing.assert_array_equal(v.numpy(), state[k].astype("float32"))
    model = tiny()
    assert f"{len(state)} bfloat16 tensor(s) cast to the model's float32 (exact)" in \
        load_weights(model, str(tmp_path / "bf.pdparams"))[1]
    np.testing.assert_array_equal(model.state_dict()["head.weight"].numpy(), bf16["head.weight"].astype("float32").numpy())


@pytest.mark.parametrize("dtype", ["float64", "int32"])
def test_weights_of_an_inexact_dtype_are_refused_in_one_line_saying_so(tmp_path, dtype):
    path = str(tmp_path / "w.pdparams")
    paddle.save(weights_as(dtype), path)
    for drop_head in (False, True):
        with pytest.raises(UserError) as e:
            load_weights(tiny(), path, drop_head=drop_head)
        assert str(e.value).startswith(f"{path} holds tensors of a dtype the model does not take: {dtype} where the "
                                       "model has float32 (") and "\n" not in str(e.value)
        assert str(e.value).endswith("only float16 / bfloat16 -> float32 convert exactly: save the weights as float32")


def test_a_checkpoint_of_float64_weights_is_refused_on_resume(tmp_path):
    from t2tvit.checkpoint import restore_training
    model = tiny()
    state, opt = real_checkpoint(model)
    state["model"] = {k: v.astype("float64") for k, v in state["model"].items()}
    with pytest.raises(UserError, match=r"^x.pdckpt \(model\) holds tensors of a dtype the model does not take: float64"):
        restore_training(state, "x.pdckpt", model, opt, config=state["config"])


@pytest.mark.parametrize("field, value, shown", [
    ("epoch", -3, "int -3, not a whole number in [0, 10,000,000)"),
    ("epoch", "3", "str '3', not a whole number"),
    ("step", 2.5, "float 2.5, not a whole number"),
    ("skips", None, "missing, not a whole number"),
    ("best", [0.5], "list [0.5], not a dict {acc, which, epoch}"),
    ("best", {"acc": float("nan"), "which": "ema", "epoch": 1}, "best.acc is float nan, not a finite number"),
    ("best", {"acc": 0.5, "which": "both", "epoch": 1}, "best.which is str 'both', not model or ema"),
    ("model", [], "model is list [], not a dict of tensors"),
])
def test_crafted_progress_fields_are_refused_on_resume_in_one_line(tmp_path, field, value, shown):
    from t2tvit.checkpoint import restore_training
    model = tiny()
    state, opt = real_checkpoint(model)
    if value is None:
        del state[field]
    else:
        state[field] = value
    with pytest.raises(UserError) as e:
        restore_training(state, "x.pdckpt", model, opt, config=state["config"])
    assert str(e.value).startswith("x.pdckpt: the checkpoint's ") and shown in str(e.value), e.value
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("kind, shown", [("fifo", "a FIFO (named pipe)"), ("folder", "a folder")])
def test_weights_on_a_fifo_or_folder_say_what_they_are_and_never_hang(tmp_path, kind, shown):
    path = tmp_path / "w.pdparams"
    os.mkfifo(path) if kind == "fifo" else path.mkdir()  # nobody writes the FIFO: a blocking open would wait
    with pytest.raises(UserError, match=re.escape(f"weights file {path} is {shown}, not a file") + "$"):
        load_weights(tiny(), str(path))
    with pytest.raises(UserError, match=f"^weights file not found: {tmp_path / 'nope.pdparams'}$"):
        load_file(str(tmp_path / "nope.pdparams"))


def test_sha256_is_of_the_bytes_parsed_in_one_read(tmp_path, monkeypatch):
    path = tmp_path / "w.pdparams"
    paddle.save(weights_as("float32"), str(path))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    opened = []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda p, *a, **k: opened.append(p) or real_open(p, *a, **k))
    assert load_weights(tiny(), str(path), sha256=digest)[0] == "weights"
    assert opened == [str(path)]  # opened once: hashed as it is parsed, no second read that could see other bytes
    path.write_bytes(path.read_bytes()[:1000])  # truncated: unreadable, and its digest says why
    with pytest.raises(UserError, match=f"{path}: sha256 is [0-9a-f]{{64}}, not the expected {digest}"):
        load_file(str(path), sha256=digest)
