"""AdamW with the official recipe's weight-decay groups: no decay for 1-D parameters (biases, LayerNorm) or
for cls_token and pos_embed, decay for every other trainable parameter; optionally layer-wise lr decay."""
import paddle

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
