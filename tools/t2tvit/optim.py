"""AdamW with the official recipe's weight-decay groups: no decay for 1-D parameters (biases, LayerNorm) or
for cls_token and pos_embed, decay for every other trainable parameter; optionally layer-wise lr decay."""
import numpy as np
import paddle
from paddle import _C_ops

NO_DECAY_SUFFIXES = ("cls_token", "pos_embed")


def decay_groups(model):
    """(decay, no_decay): structured names of the trainable parameters in each group; frozen ones are in neither."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.stop_gradient:
            continue
        if len(p.shape) <= 1 or name.endswith(NO_DECAY_SUFFIXES):
            no_decay.append(name)
        else:
            decay.append(name)
    return decay, no_decay


def layer_id(name, depth):
    """BEiT / timm's layer of a parameter: 0 for the tokens-to-token module, cls_token and pos_embed, i + 1 for
    blocks.i, depth + 1 for the final norm and the head."""
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    if name.startswith(("tokens_to_token.", "cls_token", "pos_embed")):
        return 0
    return depth + 1


def layer_lr_scales(model, layer_decay):
    """{structured name: lr scale} of the trainable parameters: layer_decay ** (depth + 1 - layer), so the head
    trains at the full lr and each block below it at layer_decay times the one above (1.0: no decay)."""
    depth = len(model.blocks)
    return {n: layer_decay ** (depth + 1 - layer_id(n, depth)) for n, p in model.named_parameters()
            if not p.stop_gradient}


def build_optimizer(model, cfg):
    o = cfg.Optimizer
    decay, _ = decay_groups(model)
    named = dict(model.named_parameters())
    # Layer-wise lr as each parameter's lr multiplier, which Paddle's AdamW applies to the step and to the
    # decoupled decay alike (as timm's per-group lr does); its lr_ratio argument is GPU-only. Set on every
    # trainable parameter, so an optimizer built later without layer decay does not inherit old scales.
    scales = {} if o.layer_decay == 1.0 else layer_lr_scales(model, o.layer_decay)
    for n, p in named.items():
        if not p.stop_gradient:
            p.optimize_attr["learning_rate"] = scales.get(n, 1.0)
    # Paddle asks apply_decay_param_fun about a parameter by its internal name (`linear_3.w_0`), not by the
    # structured name the groups are defined by.
    decay_internal = {named[n].name for n in decay}
    return paddle.optimizer.AdamW(
        learning_rate=o.lr, beta1=o.betas[0], beta2=o.betas[1], epsilon=o.eps, weight_decay=o.weight_decay,
        parameters=[p for p in model.parameters() if not p.stop_gradient],
        apply_decay_param_fun=lambda internal_name: internal_name in decay_internal)


class FusedAdamW:
    """Paddle's AdamW step with one multi-tensor kernel (_C_ops.fused_adam_, Paddle's port of apex's
    multi_tensor_adam) per group of parameters sharing a dtype, a weight decay and an lr multiplier, instead of one
    adamw kernel per parameter: 2 kernels for T2T-ViT-7's 108 tensors (decayed and not).

    It updates the optimizer's own state (moments, beta powers, master weights), so checkpoints stay Paddle's.
    The first step after a start or a load (reset()) is Paddle's own: it makes that state. Guarded: the fused
    kernel is used only where it reproduced Paddle's AdamW step bit for bit on a probe (its arguments differ
    between Paddle 2.6 and 3.x, and not every dtype has a kernel on every device); otherwise, and for what it does
    not cover (lazy mode, amsgrad, tensor hyperparameters, a parameter without a gradient), it is opt.step().
    """

    def __init__(self, optimizer, probe=True):
        self.opt = optimizer
        self.groups = None  # None: the next step is Paddle's; []: always Paddle's; else [(lr scale, kwargs)]
        # dtype -> the fused call's argument layout that passed the probe, or None; probed here, at start-up
        covered = probe and self._covered()
        self.call = {p.dtype: _probe(p.dtype, optimizer._multi_precision) if covered else None
                     for p in optimizer._parameter_list}

    def reset(self):
        """After optimizer.set_state_dict: Paddle makes its state anew at the next step."""
        self.groups = None

    def step(self):
        if self.groups:
            params = [p for _, group in self.groups for p in group["params"]]
            if all(p.grad is not None for p in params):
                lr = self.opt._global_learning_rate()
                for scale, group in self.groups:
                    _fused_adam(self.call[group["params"][0].dtype], lr if scale == 1.0 else lr * scale, **group)
                return
        self.opt.step()
        if self.groups is None:
            self.groups = self._groups()

    def _groups(self):
        o = self.opt
        if not self._covered():
            return []
        keyed = {}
        for p in o._parameter_list:
            if p.stop_gradient:
                continue
            decay = o._apply_decay_param_fun is None or o._apply_decay_param_fun(p.name)
            scale = float((getattr(p, "optimize_attr", None) or {}).get("learning_rate", 1.0))
            keyed.setdefault((str(p.dtype), decay, scale), []).append(p)
        groups = []
        for (_, decay, scale), params in keyed.items():
            dtype = params[0].dtype
            if self.call.get(dtype) is None:
                return []
            master = o._multi_precision and dtype in (paddle.float16, paddle.bfloat16)
            acc = lambda name: [o._get_accumulator_master(name, p) for p in params]  # noqa: E731
            groups.append((scale, dict(
                params=params, moment1=acc(o._moment1_acc_str), moment2=acc(o._moment2_acc_str),
                beta1_pow=acc(o._beta1_pow_acc_str), beta2_pow=acc(o._beta2_pow_acc_str),
                master=[o._master_weights[p.name] for p in params] if master else None,
                beta1=o._beta1, beta2=o._beta2, epsilon=o._epsilon,
                weight_decay=float(o._weight_decay) if decay else 0.0)))
        return groups

    def _covered(self):
        o = self.opt
        return (hasattr(_C_ops, "fused_adam_") and type(o) is paddle.optimizer.AdamW and not o._lazy_mode
                and not getattr(o, "_amsgrad", False) and o._lr_ratio is None and not isinstance(o._param_groups[0], dict)
                and all(isinstance(v, float) for v in (o._beta1, o._beta2, o._epsilon, o._weight_decay)))


def _fused_adam(layout, lr, params, moment1, moment2, beta1_pow, beta2_pow, master, beta1, beta2, epsilon,
                weight_decay):
    grads = [p.grad for p in params]
    head = [params, grads, lr, moment1, moment2] + ([None] if layout == "3.x" else [])
    tail = [beta1, beta2, epsilon, 4096, weight_decay, True, master is not None, False]
    _C_ops.fused_adam_(*head, beta1_pow, beta2_pow, master, None, *tail, *([False] if layout == "3.x" else []))


def _probe(dtype, multi_precision):
    """The fused call's layout ('3.x' or '2.6') under which it gives Paddle's own second AdamW step on two small
    tensors of `dtype`, bit for bit; None if neither does."""
    def setup():
        layer = paddle.nn.Linear(3, 4, weight_attr=paddle.nn.initializer.Constant(0.5))
        layer.to(dtype=dtype)
        opt = paddle.optimizer.AdamW(0.1, parameters=layer.parameters(), weight_decay=0.03,
                                     multi_precision=multi_precision)
        return layer, opt

    def backward(layer, i):
        (sum((p.astype("float32") * (0.25 * i - 0.3)).sum() for p in layer.parameters())).backward()

    def state(layer, opt):
        values = [v for v in opt.state_dict().values() if isinstance(v, paddle.Tensor)]
        values += [v for d in opt.state_dict().values() if isinstance(d, dict) for v in d.values()]
        return [np.asarray(v.astype("float32").numpy()) for v in list(layer.parameters()) + values]

    try:
        reference, ref_opt = setup()
        for i in range(2):
            backward(reference, i)
            ref_opt.step()
            ref_opt.clear_grad()
        want = state(reference, ref_opt)
    except (RuntimeError, ValueError, TypeError, NotImplementedError):
        return None  # no AdamW in this dtype here: nothing to fuse either
    for layout in ("3.x", "2.6"):
        try:
            layer, opt = setup()
            fused = FusedAdamW(opt, probe=False)
            fused.call[layer.weight.dtype] = layout
            backward(layer, 0)
            fused.step()  # Paddle's own first step, then the fused kernel
            opt.clear_grad()
            if not fused.groups:
                continue
            backward(layer, 1)
            fused.step()
            got = state(layer, opt)
        except (RuntimeError, ValueError, TypeError, NotImplementedError):
            continue
        if len(got) == len(want) and all(np.array_equal(a, b) for a, b in zip(got, want)):
            return layout
    return None
