"""AdamW with the official recipe's weight-decay groups: no decay for 1-D parameters (biases, LayerNorm) or
for cls_token and pos_embed, decay for every other trainable parameter."""
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


def build_optimizer(model, cfg):
    o = cfg.Optimizer
    decay, _ = decay_groups(model)
    named = dict(model.named_parameters())
    # Paddle asks apply_decay_param_fun about a parameter by its internal name (`linear_3.w_0`), not by the
    # structured name the groups are defined by.
    decay_internal = {named[n].name for n in decay}
    return paddle.optimizer.AdamW(
        learning_rate=o.lr, beta1=o.betas[0], beta2=o.betas[1], epsilon=o.eps, weight_decay=o.weight_decay,
        parameters=[p for p in model.parameters() if not p.stop_gradient],
        apply_decay_param_fun=lambda internal_name: internal_name in decay_internal)
