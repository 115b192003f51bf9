"""Mixed precision as the official run trained (`--amp`: float16 autocast with a dynamic loss scale), in Paddle.

- What runs: AmpPlan.resolve decides it once, at start-up, from Global.amp / amp_level and the device: one line
  for each request that runs otherwise (AMP on a CPU, float16 below compute capability 7.0, where Paddle's
  autocast and decorate switch themselves off) and an error for one that cannot run at all (bfloat16 without
  compute capability 8.0 and CUDA 11). Paddle's own warnings are left as they are.
- The autocast of every forward, training and evaluation alike (the official validate() runs under it too).
- O2: half-precision weights with float32 master copies in the optimizer, except the own parameters of
  t2t.FLOAT32_LAYERS, and under autocast the ops of Paddle's O1 black list in float32: O1 and O2 compute the
  same dtype plan (tests/test_amp.py) and differ only in where the weights are kept.
- LossScale: float16's dynamic loss scale, kept on the device, so that no step waits for the host to decide
  whether it overflowed.
"""
import contextlib

import numpy as np
import paddle
from paddle import _C_ops

from .errors import UserError
from .t2t import FLOAT32_LAYERS

DTYPES = {"fp16": "float16", "bf16": "bfloat16"}
# The compute capability from which Paddle's autocast and decorate run each dtype (its _is_gpu_float16_supported
# and _is_gpu_bfloat16_supported, which also need CUDA 11 for bfloat16): below it they do nothing.
MIN_CAPABILITY = {"float16": (7, 0), "bfloat16": (8, 0)}


def gpu_lacks(dtype):
    """Why this GPU cannot run Paddle's AMP in `dtype` (a phrase), or None when it can."""
    major, minor = paddle.device.cuda.get_device_capability()
    name = paddle.device.cuda.get_device_name()
    need = MIN_CAPABILITY[dtype]
    if (major, minor) < need:
        return f"{name} has compute capability {major}.{minor}, below {need[0]}.{need[1]}"
    cuda = paddle.version.cuda()
    if dtype == "bfloat16" and (cuda in (None, "False") or int(str(cuda).split(".")[0]) < 11):
        return f"this Paddle is built with CUDA {cuda}, below 11"
    return None


def o1_black_list(dtype):
    """Paddle's O1 black list for `dtype`: the ops autocast runs in float32 (layer_norm, softmax, exp, ...)."""
    from paddle.amp.amp_lists import black_list
    return set(black_list()[dtype]["O1"])


class AmpPlan:
    """What a run computes in: dtype None (float32) or 'float16' / 'bfloat16', at level 'O1' or 'O2'."""

    def __init__(self, dtype=None, level="O1", notes=()):
        self.dtype, self.level, self.notes = dtype, level, list(notes)

    @classmethod
    def resolve(cls, mode, level, device):
        """The plan for Global.amp (none | fp16 | bf16) and Global.amp_level on `device` ('cpu' or 'gpu')."""
        if mode == "none":
            return cls()
        if device != "gpu":
            return cls(notes=[f"Global.amp={mode} needs a GPU: Paddle's dynamic-graph AMP does nothing on {device}; "
                              "training in float32"])
        dtype = DTYPES[mode]
        lacks = gpu_lacks(dtype)
        if lacks and dtype == "bfloat16":
            raise UserError(f"Global.amp=bf16 cannot run here: {lacks} (bfloat16 needs compute capability 8.0 and "
                            "CUDA 11); use Global.amp=fp16 (the official run's) or none")
        if lacks:
            return cls(notes=[f"Global.amp=fp16: {lacks}, where Paddle's AMP does not run float16; training in "
                              "float32"])
        return cls(dtype, level)

    @property
    def enabled(self):
        return self.dtype is not None

    def autocast(self):
        """A fresh autocast context for one forward (a null context in float32)."""
        if not self.enabled:
            return contextlib.nullcontext()
        black = o1_black_list(self.dtype) if self.level == "O2" else None
        return paddle.amp.auto_cast(enable=True, level=self.level, dtype=self.dtype, custom_black_list=black)

    def decorate(self, model, optimizer):
        """(model, optimizer) for the plan: under O2, half-precision weights outside FLOAT32_LAYERS and float32
        master weights in the optimizer; refused in one line where Paddle did not keep a float32 island."""
        if not (self.enabled and self.level == "O2"):
            return model, optimizer
        weights = {k: v.numpy() for k, v in model.state_dict().items()}
        model, optimizer = paddle.amp.decorate(model, optimizer, level="O2", dtype=self.dtype, master_weight=True,
                                               excluded_layers=list(FLOAT32_LAYERS))
        check_o2_weights(model, self.dtype)
        load_into(model, optimizer, weights)  # master copies of the float32 weights, not of their rounding
        return model, optimizer

    def loss_scale(self):
        """float16's dynamic loss scale; None for float32 and bfloat16 (float32's range: nothing to scale)."""
        return LossScale() if self.dtype == "float16" else None


def check_o2_weights(model, dtype):
    """Refuse O2 in one line unless every float32 island kept float32 weights and the rest is `dtype`."""
    kept = {id(p) for layer in model.sublayers(include_self=True) if isinstance(layer, FLOAT32_LAYERS)
            for p in layer.parameters(include_sublayers=False)}
    for name, p in model.named_parameters():
        want = paddle.float32 if id(p) in kept else getattr(paddle, dtype)
        if p.dtype != want:
            raise UserError(f"Global.amp_level=O2 cannot keep this model's float32 islands: Paddle's decorate made "
                            f"{name} {p.dtype}, not {want}; use Global.amp_level=O1")


class LossScale:
    """float16's dynamic loss scale, on the device: the loss is multiplied by it, the gradients divided back, and a
    step whose gradients are not finite leaves the weights as they are (its gradients zeroed, its learning rate
    0) and halves the scale, down to 1; 2000 finite steps in a row double it. The constants are those of torch's GradScaler
    and apex (the official --amp). Nothing here is read on the host: read() returns the numbers the trainer
    checks at its print steps.
    """

    GROWTH_INTERVAL, GROWTH, BACKOFF, INIT = 2000, 2.0, 0.5, 2.0 ** 16
    FLOOR = 1.0  # Paddle's update_loss_scaling never halves below it

    def __init__(self, init=INIT):
        self.value = paddle.full([1], init, dtype="float32")
        self.good = paddle.zeros([1], dtype="int32")  # finite steps in a row (toward the next doubling)
        self.bad = paddle.zeros([1], dtype="int32")  # update_loss_scaling's own count, 0 after each halving
        self.streak = paddle.zeros([1], dtype="int32")  # skipped steps in a row, now
        self.longest = paddle.zeros([1], dtype="int32")  # the longest streak since the last read()
        self.skipped = paddle.zeros([1], dtype="int32")  # skipped steps since the last read()
        self.floored = paddle.zeros([1], dtype="int32")  # of which with the scale at its floor already

    def scale(self, loss):
        return loss * self.value

    def unscale(self, parameters):
        """Divide the gradients by the scale and update it; returns the step's keep factor (float32 [1]: 1 for a
        finite step, 0 for a skipped one, whose gradients are now zeros)."""
        groups = {}  # the kernels take one dtype at a time: float32, and AMP O2's half-precision gradients
        for p in parameters:
            if not p.stop_gradient and p.grad is not None:
                groups.setdefault(p.grad.dtype, []).append(p.grad)
        found = None
        for grads in groups.values():
            _, inf = _C_ops.check_finite_and_unscale_(grads, self.value)
            found = inf if found is None else paddle.logical_or(found, inf)
        skip = found.astype("int32")
        self.floored = self.floored + skip * (self.value <= self.FLOOR).astype("int32")
        for i, grads in enumerate(groups.values()):  # every group zeroed on an overflow; the scale moves once
            _C_ops.update_loss_scaling_(grads, found, self.value, self.good, self.bad, self.GROWTH_INTERVAL, 1,
                                        self.GROWTH, self.BACKOFF, i > 0)
        self.streak = (self.streak + 1) * skip
        self.longest = paddle.maximum(self.longest, self.streak)
        self.skipped = self.skipped + skip
        return 1.0 - found.astype("float32")

    def read(self):
        """(scale, longest streak of skipped steps, skipped steps, of which at the floor) since the last read: one
        copy to the host."""
        scale, longest, skipped, floored = paddle.concat([self.value] + [t.astype("float32") for t in (
            self.longest, self.skipped, self.floored)]).numpy().tolist()
        self.longest, self.skipped, self.floored = self.streak, paddle.zeros_like(self.skipped), \
            paddle.zeros_like(self.floored)
        return scale, int(longest), int(skipped), int(floored)

    def state_dict(self):
        """Paddle's GradScaler layout (older checkpoints hold that), with the skip streak."""
        return {"scale": self.value.numpy(), "incr_count": self.good.item(), "decr_count": self.bad.item(),
                "streak": self.streak.item(), "incr_ratio": self.GROWTH, "decr_ratio": self.BACKOFF,
                "incr_every_n_steps": self.GROWTH_INTERVAL, "decr_every_n_nan_or_inf": 1,
                "use_dynamic_loss_scaling": True}

    def load_state_dict(self, state):
        self.value = paddle.to_tensor(np.asarray(state["scale"], np.float32).reshape([1]))
        self.good = paddle.full([1], int(state.get("incr_count", 0)), dtype="int32")
        self.bad = paddle.full([1], int(state.get("decr_count", 0)), dtype="int32")
        self.streak = paddle.full([1], int(state.get("streak", 0)), dtype="int32")
        self.longest = self.streak


class MasterWeights:
    """The model as checkpoints hold it (training_state reads its state_dict()): every weight in float32, AMP O2's
    half-precision ones replaced by the optimizer's float32 master copies, which training continues from."""

    def __init__(self, model, optimizer):
        self.model, self.optimizer = model, optimizer

    def state_dict(self):
        masters = getattr(self.optimizer, "_master_weights", None) or {}
        named = dict(self.model.named_parameters())
        out = {}
        for key, value in self.model.state_dict().items():
            p = named.get(key)
            master = masters.get(p.name) if p is not None else None
            if master is not None:
                value = master
            elif value.dtype in (paddle.float16, paddle.bfloat16):
                value = value.astype("float32")
            out[key] = value
        return out


def load_into(model, optimizer, state):
    """Load float32 weights `state` (checked already) into an AMP O2 model: its half-precision weights and their
    float32 master copies in the optimizer, so that training continues from the exact float32 weights. Returns
    whether the model has half-precision weights (nothing is done otherwise)."""
    halves = {k: p for k, p in model.named_parameters() if p.dtype in (paddle.float16, paddle.bfloat16)}
    with paddle.no_grad():
        for key, p in halves.items():
            value = state[key]
            value = value.astype("float32") if isinstance(value, paddle.Tensor) else \
                paddle.to_tensor(np.asarray(value, np.float32))
            paddle.assign(value.astype(p.dtype), p)
            # The name Paddle's first _create_master_weight gives it (in a new process, as every run starts): the
            # optimizer keys the master's moments by it, in its state and in checkpoints (which lose tensor names).
            value.name = f"{p.name}_fp32_master_0"
            optimizer._master_weights[p.name] = value
    return bool(halves)
