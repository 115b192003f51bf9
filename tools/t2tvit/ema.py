"""An exponential moving average of a model's weights, updated after every optimizer step (timm's ModelEma)."""
import copy

import paddle


class ModelEMA:
    """`.module` is a separate copy of the model, in eval mode, outside the optimizer and without gradients.

    update(model): ema = decay * ema + (1 - decay) * w for the model's trainable floating-point parameters;
    frozen parameters and buffers are copied as they are.
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

    def _pairs(self, model):
        own = dict(self.module.named_parameters())
        own.update(self.module.named_buffers())
        theirs = dict(model.named_parameters())
        theirs.update(model.named_buffers())
        return ((name, own[name], theirs[name]) for name in own)

    @paddle.no_grad()
    def update(self, model):
        for name, ema, w in self._pairs(model):
            if w.dtype != ema.dtype:
                w = w.astype(ema.dtype)
            if name in self._averaged:
                ema.lerp_(w, self._weight)
            else:
                paddle.assign(w, ema)

    def state_dict(self):
        return self.module.state_dict()

    def set_state_dict(self, state):
        self.module.set_state_dict(state)


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
