"""Mixed precision, proved on a CPU: the dtype plan, O2, what runs on which device, and fp16's loss scale.

No Paddle GPU build runs here, and Paddle's dynamic-graph autocast casts nothing on a CPU. Its program-building
autocast does (Paddle 3's PIR, through the same C++ rule as the dynamic graph, GetAmpDestDtype, minus the place
test), so the plan is recorded from the program `paddle.jit.to_static` builds under auto_cast, in bfloat16 (the
CPU has bfloat16 kernels to check a program against, not float16 ones; Paddle's float16 and bfloat16 lists agree
on every op of the model, asserted below). One documented emulation: the CPU's unfold takes float32 only, so half
inputs are unfolded as float32 (it moves values, it computes nothing). The official model's plan is recorded under
torch.autocast on the CPU (tools/torch_reference.py, proven equal to the official code). torch's CPU autocast list
differs from its CUDA one, which the official run used: layer_norm, softmax, exp, sum and log_softmax are on
CUDA's float32 list (https://pytorch.org/docs/stable/amp.html#cuda-ops-that-can-autocast-to-float32), not on the
CPU's; where the two disagree, ours must be CUDA's answer.
"""
import collections
import os
import warnings

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest
from paddle.amp.auto_cast import amp_initialize

from t2tvit import amp, runtime
from t2tvit import t2t as T
from t2tvit.amp import AmpPlan, LossScale, MasterWeights, check_o2_weights, load_into
from t2tvit.checkpoint import set_checked
from t2tvit.config import SCHEMA_PATH, load_config
from t2tvit.errors import UserError
from t2tvit.mixup import soft_target_cross_entropy
from t2tvit.optim import build_optimizer

_NO_PLAN = ("Paddle 2.6 applies program AMP as a rewrite after tracing (no dtypes to record); the lists are asserted "
            "on both")


def needs_pir(test):
    """Runs on Paddle 3 only; CI's Paddle 3 run proves it, so its Paddle 2.6 run may skip it."""
    test = pytest.mark.skipif(not paddle.__version__.startswith("3"), reason=_NO_PLAN)(test)
    return pytest.mark.may_skip_in_ci("the dtype plan is recorded on Paddle 3, which CI also runs")(test)

CUDA_FLOAT32 = {"layer_norm", "softmax", "exp", "sum", "log_softmax"}
HALF = {"float16", "bfloat16"}


def kind(dtype):
    name = str(dtype).split(".")[-1]
    return "half" if name in HALF else name


@pytest.fixture
def unfold_any_dtype(monkeypatch):
    unfold = F.unfold

    def unfold_as_float32(x, *args, **kwargs):
        if x.dtype == paddle.float32:
            return unfold(x, *args, **kwargs)
        with paddle.amp.auto_cast(enable=False):
            return unfold(x.astype("float32"), *args, **kwargs).astype(x.dtype)
    monkeypatch.setattr(T.F, "unfold", unfold_as_float32)


def paddle_plan(level, excluded=T.FLOAT32_LAYERS, dtype="bfloat16"):
    """({module name: {output dtype kinds}}, {op: {output dtype kinds}}) of a training step's forward and loss,
    from the program Paddle builds under autocast; O2 after what paddle.amp.decorate does to the model on a GPU."""
    paddle.seed(0)
    model = T.create_model("t2t_vit_7", img_size=32, num_classes=10)
    if level == "O2":
        amp_initialize([model], dtype, list(excluded) if excluded else None)
    modules = collections.defaultdict(set)
    for name, layer in model.named_sublayers():
        layer.register_forward_post_hook(lambda l, i, o, name=name: modules[name].add(kind(o.dtype)))
    plan = AmpPlan(dtype, level)

    def step(x, targets):
        with plan.autocast():
            logits = model(x)
        return soft_target_cross_entropy(logits.astype("float32"), targets)
    spec = [paddle.static.InputSpec([2, 3, 32, 32], "float32"), paddle.static.InputSpec([2, 10], "float32")]
    program = paddle.jit.to_static(step, full_graph=True).get_concrete_program(*spec)[0].main_program
    ops = collections.defaultdict(set)
    for op in program.global_block().ops:
        try:
            ops[op.name().split(".")[-1]].add(kind(op.results()[0].dtype))
        except (ValueError, IndexError):  # results without a dense dtype (splits, combines)
            pass
    return modules, ops, model


def torch_plan(dtype):
    """The same records of the official model (tools/torch_reference.py) under torch.autocast on the CPU."""
    torch = pytest.importorskip("torch", reason="torch is not installed (requirements-test.txt installs it)")
    from torch.overrides import TorchFunctionMode
    from torch_reference import create_reference

    model = create_reference("t2t_vit_7", img_size=32, num_classes=10).train()
    modules, ops = collections.defaultdict(set), collections.defaultdict(set)
    for name, module in model.named_modules():
        if name:
            module.register_forward_hook(lambda m, i, o, name=name: modules[name].add(kind(o.dtype)))

    class Record(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if torch.is_tensor(out):
                ops[getattr(func, "__name__", str(func))].add(kind(out.dtype))
            return out
    with torch.autocast("cpu", dtype=getattr(torch, dtype)), Record():
        logits = model(torch.randn(2, 3, 32, 32))
        torch.sum(-torch.full_like(logits, 0.1) * torch.nn.functional.log_softmax(logits, dim=-1), dim=-1).mean()
    return modules, ops


@needs_pir
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_o1_computes_in_the_dtypes_of_the_official_model_under_autocast(unfold_any_dtype, dtype):
    ours, our_ops, _ = paddle_plan("O1")
    theirs, their_ops = torch_plan(dtype)
    common = sorted(set(ours) & set(theirs))
    assert len(common) > 70  # every Linear, LayerNorm, GELU, MLP, attention, block of both, by the same names
    differ = [n for n in common if ours[n] != theirs[n]]
    # The only differences: LayerNorms fed half precision (the T2T layers' stream, half in both), which torch's CPU
    # list leaves in half; layer_norm is on its CUDA list, so in the official run they are float32, as ours.
    fed_half = [n for n in common if n.split(".")[-1].startswith("norm") and theirs[n] == {"half"}]
    assert differ == fed_half and len(fed_half) == 3
    assert all(ours[n] == {"float32"} for n in differ)
    # The residual stream: every block adds its half-precision branches into float32, in both.
    assert all(ours[f"blocks.{i}"] == theirs[f"blocks.{i}"] == {"float32"} for i in range(7))
    assert all(ours[n] == {"half"} for n in common if n.endswith(("qkv", "proj", "fc1", "fc2", "kqv", "head")))
    # Ops: half-precision GEMMs, float32 where CUDA's list says so (torch's CPU list does not: shown here).
    assert "half" in our_ops["matmul"] and their_ops["linear"] == their_ops["einsum"] == {"half"}
    for op in ("softmax", "exp"):
        assert our_ops[op] == {"float32"} and their_ops[op] == {"half"} and op in CUDA_FLOAT32
    assert our_ops["layer_norm"] == {"float32"}
    # The loss is float32 (its log_softmax is on CUDA's list); the Performer's normaliser (its two divides) is
    # float32 here and half in the official model (half einsums, `+ 1e-8` lost in float16: docs/faithfulness.md).
    assert our_ops["cross_entropy_with_softmax"] == {"float32"} and "log_softmax" in CUDA_FLOAT32
    assert our_ops["divide"] == {"float32"}


def test_paddles_float16_and_bfloat16_lists_agree_on_the_models_ops():
    from paddle.amp.amp_lists import black_list, white_list
    ops = {"matmul", "layer_norm", "softmax", "exp", "gelu", "add", "subtract", "multiply", "divide", "scale",
           "concat", "unfold", "transpose", "reshape", "dropout", "cross_entropy_with_softmax", "sum", "mean_all",
           "cast", "split", "expand", "slice", "full"}
    for level in ("O1", "O2"):
        for op in ops:
            assert (op in white_list()["float16"][level]) == (op in white_list()["bfloat16"][level]), op
            assert (op in black_list()["float16"][level]) == (op in black_list()["bfloat16"][level]), op
    assert {"matmul"} <= white_list()["float16"]["O1"] and {"layer_norm", "softmax", "exp"} <= amp.o1_black_list(
        "float16")


@needs_pir
def test_o2_keeps_the_float32_islands_and_computes_the_o1_plan(unfold_any_dtype):
    o1, o1_ops, _ = paddle_plan("O1")
    o2, o2_ops, model = paddle_plan("O2")
    assert o2 == o1  # every layer's output
    # and every op's, but for the ops on the weights themselves, stored in half precision under O2 (splitting the
    # qkv weight, scaling its query part by 1/8, exact in any precision), which O1 casts to half at the GEMM.
    on_weights = {"parameter", "split", "scale"}
    assert {k: v for k, v in o2_ops.items() if k not in on_weights} == {k: v for k, v in o1_ops.items()
                                                                          if k not in on_weights}
    assert all("half" in o2_ops[k] for k in on_weights)
    check_o2_weights(model, "bfloat16")  # islands float32, every other weight bfloat16
    named = dict(model.named_parameters())
    assert named["tokens_to_token.attention1.w"].dtype == paddle.float32
    assert named["blocks.0.norm1.weight"].dtype == named["cls_token"].dtype == paddle.float32
    assert named["blocks.0.attn.qkv.weight"].dtype == named["head.bias"].dtype == paddle.bfloat16


@pytest.mark.parametrize("excluded", [None, T.FLOAT32_LAYERS])
def test_under_o2_casting_the_performer_attends_in_float32_only_with_its_island(excluded):
    """What decorate does on a GPU, then the Performer's attention on half-precision k, q, v (the CPU has the
    kernels for this layer): its frozen w cast to half meets a float32 k and fails (Paddle's matmul does not
    promote; the issue's crash at the first step); kept float32, it attends in float32, finite on a flat image."""
    layer = T.TokenPerformer(20, 16)
    amp_initialize([layer], "bfloat16", list(excluded) if excluded else None)
    flat = paddle.full([2, 50, 16], 30.0, dtype="float32").astype("bfloat16")
    if excluded is None:
        assert layer.w.dtype == paddle.bfloat16
        with pytest.raises(RuntimeError):
            layer.attend(flat, flat, flat)
        return
    assert layer.w.dtype == paddle.float32 and layer.kqv.weight.dtype == paddle.bfloat16
    y = layer.attend(flat, flat, flat)
    assert y.dtype == paddle.bfloat16 and np.isfinite(y.astype("float32").numpy()).all()


def test_o2_is_refused_in_one_line_naming_a_weight_that_left_its_island():
    model = T.create_model("t2t_vit_7", img_size=32, num_classes=10)
    amp_initialize([model], "bfloat16", None)
    with pytest.raises(UserError) as e:
        check_o2_weights(model, "bfloat16")
    assert str(e.value) == ("Global.amp_level=O2 cannot keep this model's float32 islands: Paddle's decorate made "
                            "cls_token paddle.bfloat16, not paddle.float32; use Global.amp_level=O1")


def o2_model(dtype="bfloat16"):
    """T2T-ViT-7 and its AdamW as plan.decorate makes them on a GPU (Paddle's decorate does nothing on a CPU)."""
    paddle.seed(0)
    model = T.create_model("t2t_vit_7", img_size=32, num_classes=10)
    opt = build_optimizer(model, load_config(SCHEMA_PATH))
    weights = {k: v.numpy() for k, v in model.state_dict().items()}
    amp_initialize([model], dtype, list(T.FLOAT32_LAYERS))
    opt._multi_precision = True
    load_into(model, opt, weights)
    return model, opt, weights


def test_o2_checkpoints_hold_the_float32_master_weights_and_load_into_float32_and_o2_models():
    model, opt, weights = o2_model()
    masters = opt._master_weights
    # Master weights move in float32 steps that bfloat16 cannot hold (training changes them by ~lr).
    for name, p in model.named_parameters():
        if p.name in masters:
            masters[p.name].set_value(masters[p.name] + 1e-4)
    saved = MasterWeights(model, opt).state_dict()
    half = {k for k, p in model.named_parameters() if p.dtype == paddle.bfloat16}
    assert len(half) == 69  # every Linear weight and bias
    assert all(v.dtype == paddle.float32 for v in saved.values())
    for k in half:  # the masters exactly, not their bfloat16 rounding
        assert np.array_equal(saved[k].numpy(), weights[k] + np.float32(1e-4))
        assert not np.array_equal(saved[k].numpy(), dict(model.named_parameters())[k].astype("float32").numpy())
    plain = T.create_model("t2t_vit_7", img_size=32, num_classes=10)
    set_checked(plain, saved, "o2.pdckpt")  # into a float32 model: the float32 weights as they are
    assert all(np.array_equal(v.numpy(), saved[k].numpy()) for k, v in plain.state_dict().items())
    again, opt2, _ = o2_model()
    load_into(again, opt2, saved)  # and back into an O2 model: bfloat16 weights, exact float32 masters
    # The masters are named as Paddle names them in a new process (a run's moments are keyed by that name, and a
    # checkpoint's tensors come back without names).
    names = []
    for ours in (True, False):
        with paddle.utils.unique_name.guard():
            fresh, opt3, _ = o2_model()
            head = dict(fresh.named_parameters())["head.weight"]
            if not ours:
                opt3._master_weights.clear()
            names.append(opt3._master_weights[head.name].name if ours else opt3._create_master_weight(head).name)
    assert names[0] == names[1] and names[0].endswith("_fp32_master_0")
    for k, p in again.named_parameters():
        if k in half:
            assert p.dtype == paddle.bfloat16
            assert np.array_equal(opt2._master_weights[p.name].numpy(), saved[k].numpy())
            assert np.array_equal(p.astype("float32").numpy(), saved[k].astype("bfloat16").astype("float32").numpy())


def test_evaluation_runs_under_the_training_autocast():
    from t2tvit.engine import evaluate
    entered = []

    class Recording:
        def __enter__(self):
            entered.append(1)

        def __exit__(self, *exc):
            return False
    model = paddle.nn.Linear(4, 3)
    loader = [{"image": paddle.rand([2, 4]), "label": paddle.to_tensor([0, 2])} for _ in range(3)]
    rt = type("RT", (), {"all_sum": staticmethod(lambda v: v)})()
    top1, top5, n = evaluate(model, loader, rt, autocast=Recording)
    assert entered == [1, 1, 1] and n == 6 and top5 == 1.0


# ------------------------------------------------------------------------------------------ what runs


@pytest.fixture
def gpu(monkeypatch):
    """A CUDA build that sees one GPU of a given compute capability and CUDA version."""
    def fake(capability=(7, 0), name="Tesla V100-SXM2-16GB", cuda="11.8"):
        monkeypatch.setattr(paddle.device.cuda, "get_device_capability", lambda *a: capability)
        monkeypatch.setattr(paddle.device.cuda, "get_device_name", lambda *a: name)
        monkeypatch.setattr(paddle.version, "cuda", lambda: cuda)
        monkeypatch.setattr(paddle, "is_compiled_with_cuda", lambda: True)
        monkeypatch.setattr(paddle.device.cuda, "device_count", lambda: 1)
    return fake


@pytest.mark.parametrize("capability,cuda,fp16,bf16", [((6, 1), "11.8", False, False), ((7, 0), "11.8", True, False),
                                                       ((7, 5), "10.2", True, False), ((8, 0), "10.2", True, False),
                                                       ((8, 0), "11.0", True, True), ((9, 0), "12.4", True, True)])
def test_the_gpu_check_is_paddles_own(gpu, capability, cuda, fp16, bf16):
    gpu(capability, cuda=cuda)
    from paddle.amp.auto_cast import _is_gpu_bfloat16_supported, _is_gpu_float16_supported
    assert (amp.gpu_lacks("float16") is None) == _is_gpu_float16_supported() == fp16
    assert (amp.gpu_lacks("bfloat16") is None) == _is_gpu_bfloat16_supported() == bf16


def test_fp16_below_compute_capability_7_says_it_trains_in_float32(gpu):
    gpu((6, 1), "Tesla P100-PCIE-16GB")
    plan = AmpPlan.resolve("fp16", "O1", "gpu")
    assert not plan.enabled and plan.loss_scale() is None
    assert plan.notes == ["Global.amp=fp16: Tesla P100-PCIE-16GB has compute capability 6.1, below 7.0, where "
                          "Paddle's AMP does not run float16; training in float32"]


def test_bf16_without_compute_capability_8_is_an_error_saying_what_runs(gpu):
    gpu((7, 0))
    with pytest.raises(UserError, match=r"^Global.amp=bf16 cannot run here: Tesla V100-SXM2-16GB has compute "
                                        r"capability 7.0, below 8.0 \(bfloat16 needs compute capability 8.0 and "
                                        r"CUDA 11\); use Global.amp=fp16 \(the official run's\) or none$"):
        AmpPlan.resolve("bf16", "O1", "gpu")
    gpu((8, 0), "A100", cuda="10.2")
    with pytest.raises(UserError, match="this Paddle is built with CUDA 10.2, below 11"):
        AmpPlan.resolve("bf16", "O2", "gpu")


def test_supported_precisions_run_as_asked_with_a_loss_scale_for_fp16_only(gpu):
    gpu((8, 0), "A100")
    fp16, bf16 = AmpPlan.resolve("fp16", "O1", "gpu"), AmpPlan.resolve("bf16", "O2", "gpu")
    assert (fp16.dtype, fp16.level, fp16.notes) == ("float16", "O1", []) and isinstance(fp16.loss_scale(), LossScale)
    assert (bf16.dtype, bf16.level, bf16.notes) == ("bfloat16", "O2", []) and bf16.loss_scale() is None
    assert AmpPlan.resolve("bf16", "O1", "cpu").notes == [
        "Global.amp=bf16 needs a GPU: Paddle's dynamic-graph AMP does nothing on cpu; training in float32"]


def test_device_auto_on_a_cuda_build_without_a_gpu_says_it_trains_on_the_cpu(monkeypatch):
    monkeypatch.setattr(paddle, "is_compiled_with_cuda", lambda: True)
    monkeypatch.setattr(paddle.device.cuda, "device_count", lambda: 0)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    notes = []
    assert runtime.select_device("auto", notes) == "cpu"
    assert notes == ["Global.device=auto: this Paddle is built with CUDA but sees no GPU (CUDA_VISIBLE_DEVICES='', "
                     "driver?); training on the CPU"]
    assert runtime.select_device("cpu", notes) == "cpu" and len(notes) == 1


def test_device_cpu_on_several_processes_of_a_cuda_build_meets_over_gloo(monkeypatch):
    seen = {}
    monkeypatch.setattr(paddle, "is_compiled_with_cuda", lambda: True)
    monkeypatch.setattr(paddle.device.cuda, "device_count", lambda: 8)
    monkeypatch.setattr(runtime.dist, "get_world_size", lambda: 4)
    monkeypatch.setattr(runtime.dist, "get_rank", lambda: 0)
    monkeypatch.setattr(runtime.dist, "init_parallel_env", lambda: seen.update(
        backend=os.environ.get("PADDLE_DISTRI_BACKEND")))
    monkeypatch.delenv("PADDLE_DISTRI_BACKEND", raising=False)
    rt = runtime.Runtime(load_config(SCHEMA_PATH, ["Global.device=cpu"]))
    assert seen == {"backend": "gloo"} and rt.device == "cpu" and paddle.get_device() == "cpu"
    assert rt.notes == ["Global.device=cpu on 4 processes of a CUDA build of Paddle: they meet over gloo and train "
                        "on the CPU"]


def test_paddles_own_amp_warnings_are_not_hidden():
    import train  # noqa: F401  (tools/train.py and everything it imports: none may filter Paddle's warnings)
    with warnings.catch_warnings(record=True) as caught:
        with paddle.amp.auto_cast(dtype="float16"):  # on a CPU: Paddle warns that it does nothing
            pass
    assert any("amp_guard can only be enabled on CUDAPlace" in str(w.message) for w in caught)


# ------------------------------------------------------------------------------------------ fp16's loss scale


def test_the_loss_scale_zeroes_an_overflowing_steps_gradients_and_halves_down_to_its_floor():
    scale = LossScale(init=4.0)
    p = paddle.create_parameter([3], "float32")
    (p * paddle.to_tensor([1.0, float("nan"), 2.0])).sum().backward()
    assert scale.unscale([p]).numpy().tolist() == [True] and p.grad.numpy().tolist() == [0.0, 0.0, 0.0]
    p.clear_grad()
    for _ in range(3):  # 2 -> 1, then the floor
        (p * float("inf")).sum().backward()
        scale.unscale([p])
        p.clear_grad()
    (p * 8.0).sum().backward()
    assert scale.unscale([p]).numpy().tolist() == [False] and p.grad.numpy().tolist() == [8.0] * 3
    assert scale.read() == (1.0, 4, 4, 2)  # scale, longest run of skipped steps, skipped steps, at the floor
    assert scale.read() == (1.0, 0, 0, 0)
    state = scale.state_dict()
    again = LossScale()
    again.load_state_dict(state)
    assert again.value.item() == 1.0 and state["incr_count"] == 1


def scaled_trainer(tmp_path, poisoned, init=LossScale.INIT, *overrides):
    """test_engine's Tiny classifier trainer (print every step) with fp16's loss scale, which runs on a CPU too."""
    from test_engine import Tiny, make_trainer
    t = make_trainer(tmp_path, *overrides, model=Tiny(poison_calls=poisoned))
    t.scaler = LossScale(init)
    t.loss_scale = init
    t.log = __import__("logging").getLogger("test_amp")
    return t


def optimizer_arrays(t):
    """The model's weights and every tensor of the optimizer's state (moments, beta powers), as numpy arrays."""
    state = t.opt.state_dict()
    tensors = {k: v for k, v in state.items() if isinstance(v, paddle.Tensor)}
    return {**{k: v.numpy().copy() for k, v in t.model.state_dict().items()},
            **{k: v.numpy().copy() for k, v in tensors.items()}}


@pytest.mark.parametrize("poisoned", [{2}, {0, 2}])  # {0, ...}: the very first step overflows (no AdamW state yet)
def test_an_overflowing_fp16_step_is_not_taken_and_its_scale_drop_is_logged(tmp_path, caplog, poisoned):
    """As torch's GradScaler (the official run's) skips the optimizer call: weights, AdamW's moments and its
    beta powers (the bias correction's step count) all stay bit for bit as they were."""
    t = scaled_trainer(tmp_path, poisoned)
    snapshots = []
    step = t.optimizer_step
    t.optimizer_step = lambda *a: (step(*a), snapshots.append(optimizer_arrays(t)))
    with caplog.at_level("WARNING", logger="test_amp"):
        t.train_epoch()
    same = lambda a, b: a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)  # noqa: E731
    assert same(snapshots[2], snapshots[1])  # the step of the NaN: nothing of the optimizer moved
    assert all(not same(snapshots[i], snapshots[i - 1]) for i in (1, 3, 4) if i - 1 not in poisoned)
    beta1_pows = [[v for k, v in s.items() if "beta1_pow" in k] for s in snapshots]
    taken = [i for i in range(len(snapshots)) if i not in poisoned]
    # Paddle's beta1_pow holds beta1 ** (t + 1) after t steps: the skipped steps did not count
    assert [float(b[0][0]) for b in beta1_pows if b][-1] == pytest.approx(0.9 ** (len(taken) + 1), rel=1e-6)
    assert t.skips == len(poisoned) and t.scaler.value.item() == 65536.0 / 2 ** len(poisoned)
    assert all(np.isfinite(v).all() for v in snapshots[-1].values())
    if poisoned == {2}:
        assert [r.message for r in caplog.records] == [
            "fp16 loss scale 65536 -> 32768 by epoch 1, step 2: 1 overflowing step(s) skipped since the last line "
            "(1 in all)"]


def test_max_skips_overflowing_fp16_steps_in_a_row_end_the_run_with_one_line(tmp_path):
    t = scaled_trainer(tmp_path, {1, 2, 3}, LossScale.INIT, "Global.max_skips=2")
    with pytest.raises(UserError) as e:
        t.train_epoch()
    assert str(e.value) == ("3 fp16 steps in a row overflowed by epoch 1, step 3 (Global.max_skips 2), loss scale "
                            "8192; last good checkpoint: none yet. Lower Optimizer.lr, or train with Global.amp=bf16 "
                            "(compute capability 8.0) or none")


def test_a_loss_scale_at_its_floor_that_still_overflows_ends_the_run(tmp_path):
    t = scaled_trainer(tmp_path, {0, 1}, 2.0)
    with pytest.raises(UserError, match=r"^the fp16 loss scale is at its floor \(1\) and 1 more step\(s\) overflowed "
                                        r"by epoch 1, step 1; last good checkpoint: none yet\."):
        t.train_epoch()


# ------------------------------------------------------------------------------------------ TensorRT


def test_tensorrt_fp16_is_refused_for_performer_models_in_one_line():
    from t2tvit.backends import gpu_config, trt_problem
    with pytest.raises(UserError) as e:
        gpu_config("inference.json", "inference.pdiparams", trt="fp16", trt_input=("x", [3, 224, 224]),
                   arch="t2t_vit_7")
    assert str(e.value) == ("--trt fp16 would run t2t_vit_7's Performer (its exp and normaliser) in float16, where "
                            "its `+ 1e-8` is 0 and flat images give NaN (the official repo's issues #65, #69); use "
                            "--trt fp32, or fp16 with a t2t_vit_t_* model")
    assert trt_problem("fp16", "t2t_vit_t_14") is None and trt_problem("fp32", "t2t_vit_7") is None
    assert trt_problem("fp16", None) is not None  # an export without its model's name: not assumed safe


def test_the_loss_scale_unscales_each_gradient_dtype_and_moves_once_for_the_step(monkeypatch):
    """AMP O2 has float32 and half-precision gradients, and Paddle's kernels take one dtype at a time (as its
    static-graph AMP does: every group zeroed on an overflow, the scale and its counts updated by the first call
    only). The CPU has no half-precision kernels, so the calls are recorded (float64 stands in for half)."""
    from t2tvit import amp as amp_module
    calls = []
    fake = type("Ops", (), {
        "check_finite_and_unscale_": staticmethod(lambda grads, scale: calls.append(
            ("check", [str(g.dtype) for g in grads])) or (grads, paddle.to_tensor([len(calls) == 2]))),
        "update_loss_scaling_": staticmethod(lambda grads, found, *args: calls.append(
            ("update", [str(g.dtype) for g in grads], bool(found), args[-1])))})
    monkeypatch.setattr(amp_module, "_C_ops", fake)
    a, b, c = (paddle.create_parameter([2], dtype) for dtype in ("float32", "float64", "float32"))
    (a.sum() + b.sum() + c.sum()).backward()
    found = LossScale().unscale([a, b, c])
    assert found.numpy().tolist() == [True]  # the second group overflowed: the step is skipped
    f32, f64 = ["paddle.float32"] * 2, ["paddle.float64"]
    assert calls == [("check", f32), ("check", f64), ("update", f32, True, False), ("update", f64, True, True)]
