"""An exponential moving average of a model's weights, updated after every optimizer step (timm's ModelEma)."""
import copy

import paddle
from paddle import _C_ops


class ModelEMA:
    """`.module` is a separate copy of the model, in eval mode, outside the optimizer and without gradients.

    update(model): ema = decay * ema + (1 - decay) * w for the model's trainable floating-point parameters;
    frozen parameters and buffers are copied as they are.

    The averaged parameters of `.module` are views into one float32 vector per dtype of the model's weights
    (one for float32 training, two under AMP O2), so that an update is a concat of the model's weights and one
    lerp per vector (5 kernels for T2T-ViT-7, the 3 frozen tensors copied, instead of 111; Paddle has no
    multi-tensor lerp), with the same arithmetic element by element. Where Paddle cannot make the views (coalesce_tensor), each tensor is updated
    on its own.
    """

    def __init__(self, model, decay):
        self.decay = decay
        # A tensor made once: a Python float weight would make lerp_ build one per parameter per step.
        self._weight = paddle.full([], 1.0 - decay, dtype="float32")
        self.module = copy.deepcopy(model)
        self.module.eval()
        # With pure half-precision weights (AMP O2) each step's change, (1 - decay) x (w - ema), would round away
        # and the average never move: the copy keeps float32 weights whatever the model holds.
        self.module.float()
        self._averaged = {name for name, p in model.named_parameters()
                          if not p.stop_gradient and p.is_floating_point()}
        for p in self.module.parameters():
            p.stop_gradient = True
        self._groups = None  # [(averaged, names, module tensors, vector or None)], per dtype of the model's tensors
        self._source = None  # (id of the model, [(its tensors, their flat views or None)] in the order of _groups)

    def _state(self, layer):
        named = dict(layer.named_parameters())
        named.update(layer.named_buffers())
        return named

    def _group(self, model):
        """Group the module's tensors by what update() does to them and by the model's dtype: a vector (views
        of the module's tensors) per group of averaged ones, and flat views of the model's tensors to
        concatenate (reshape shares memory: made once, not per step)."""
        own, theirs = self._state(self.module), self._state(model)
        keys = {}
        for name in own:
            keys.setdefault((name in self._averaged, theirs[name].dtype), []).append(name)
        self._groups, self._source = [], (id(model), [])
        for (averaged, _), names in keys.items():
            tensors, sources = [own[n] for n in names], [theirs[n] for n in names]
            vector = _views(tensors) if averaged else None
            flat = [s.reshape([-1]) for s in sources] if vector is not None else None
            self._groups.append((averaged, names, tensors, vector))
            self._source[1].append((sources, flat))

    @paddle.no_grad()
    def update(self, model):
        if self._source is None or self._source[0] != id(model) or not self._views_hold():
            self._group(model)
        for (averaged, _, tensors, vector), (sources, flat) in zip(self._groups, self._source[1]):
            if vector is not None:
                w = paddle.concat(flat)
                vector.lerp_(w if w.dtype == vector.dtype else w.astype(vector.dtype), self._weight)
                continue
            for ema, w in zip(tensors, sources):  # few tensors (frozen, buffers), or no views
                if w.dtype != ema.dtype:
                    w = w.astype(ema.dtype)
                if averaged:
                    ema.lerp_(w, self._weight)
                else:
                    paddle.assign(w, ema)

    def _views_hold(self):
        """Whether the module's averaged tensors still share their vector and the model's flat views their tensors
        (a load may give a tensor new memory): checked on the host, no kernel."""
        return all(vector is None or (all(t._is_shared_buffer_with(vector) for t in tensors)
                                      and all(f._is_shared_buffer_with(s) for f, s in zip(flat, sources)))
                   for (_, _, tensors, vector), (sources, flat) in zip(self._groups, self._source[1]))

    def state_dict(self):
        return self.module.state_dict()

    def set_state_dict(self, state):
        self.module.set_state_dict(state)


def _views(tensors):
    """One float32 vector holding `tensors` (same dtype), which become views into it; None where Paddle cannot."""
    coalesce = getattr(_C_ops, "coalesce_tensor", None)
    if coalesce is None or any(t.dtype != tensors[0].dtype for t in tensors):
        return None
    try:
        views, vector = coalesce(tensors, tensors[0].dtype, True, False, False, 0.0, False, 0, -1, [], [])
        for view, t in zip(views, tensors):
            view._share_buffer_to(t)
    except (RuntimeError, ValueError, TypeError, AttributeError):
        return None
    return vector if all(t._is_shared_buffer_with(vector) for t in tensors) else None


def best_source(results, choice="ema"):
    """Whose val top1 decides best.pdckpt, given {"model": (top1, top5), ["ema": ...]} and EMA.best.

    The official protocol validates both but selects and reports on the EMA model when EMA is on (the
    published T2T-ViT-7 weights are EMA weights); 'either' takes the better of the two each time.
    """
    if "ema" not in results:
        return "model"
    if choice == "either":
        return max(results, key=lambda k: results[k][0])
    return choice


def short_run_note(decay, steps, choice):
    """One line for a run of `steps` optimizer steps, fewer than its EMA's horizon 2 / (1 - decay); else None.

    After n steps the average still holds decay ** n of the weights it started from: over e^-2 (14%) below the
    horizon, so on a short run the EMA stays near the start (random or pretrained) and, picking best.pdckpt by
    it (EMA.best: ema), an early model wins. 'either' takes the better of the two each time.
    """
    if steps * (1 - decay) >= 2 - 1e-9:  # (1 - 0.9) * 20 is 1.9999999999999996 in floats
        return None
    picks = {"ema": "best.pdckpt follows them (EMA.best: ema): EMA.best=either keeps the better of the model and its "
                    "EMA, a lower EMA.decay averages over fewer steps",
             "either": "best.pdckpt is the better of the model and its EMA (EMA.best: either)",
             "model": "best.pdckpt follows the model (EMA.best: model)"}[choice]
    return (f"note: this run has {steps} optimizer steps, under the ~{2 / (1 - decay):.0f} that EMA.decay {decay} "
            f"averages over (2 / (1 - decay)): the EMA weights will still hold {decay ** steps:.0%} of the starting "
            f"ones; {picks}")
