"""What the model attends to, recomputed from each attention layer's input (the model's arithmetic is unchanged).

Forward pre-hooks record the input of every backbone Attention (the LayerNorm'd tokens) and every T2T layer;
the attention is then recomputed from those inputs and the layers' own weights:
- backbone: softmax(q k^T * scale) per head, [B, heads, N, N], N = 1 + H/16 * W/16;
- rollout (Abnar & Zuidema 2020): per block the head mean plus the identity, rows renormalised, multiplied
  from the first block to the last; the class token's row says where the prediction's information came from;
- Performer T2T layers: the attention they imply, q'_i . k'_j / (q'_i . sum_j k'_j + eps), for one query
  position (a full T x T matrix is 3136^2 at 224 px); rows sum to 1 up to that eps.
"""
import numpy as np
import paddle
import paddle.nn.functional as F

from .t2t import Attention, TokenPerformer


def _recorded(model, x):
    """{layer: its input} for every backbone Attention and T2T Performer layer, from one eval forward."""
    layers = [blk.attn for blk in model.blocks if isinstance(blk.attn, Attention)]
    layers += [t for t in (model.tokens_to_token.attention1, model.tokens_to_token.attention2)
               if isinstance(t, TokenPerformer)]
    seen = {}
    hooks = [layer.register_forward_pre_hook(lambda layer, inputs: seen.__setitem__(id(layer), inputs[0]))
             for layer in layers]
    try:
        with paddle.no_grad():
            logits = model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return logits, [seen[id(layer)] for layer in layers[:len(model.blocks)]], \
        [(layer, seen[id(layer)]) for layer in layers[len(model.blocks):]]


def block_attention(attn, x):
    """[B, heads, N, N] softmax attention of backbone layer `attn` on its input x [B, N, C] (float64)."""
    B, N, C = x.shape
    qkv = paddle.matmul(x.astype("float64"), attn.qkv.weight.astype("float64"))
    if attn.qkv.bias is not None:
        qkv = qkv + attn.qkv.bias.astype("float64")
    qkv = qkv.reshape([B, N, 3, attn.num_heads, C // attn.num_heads]).transpose([2, 0, 3, 1, 4])
    return F.softmax(paddle.matmul(qkv[0], qkv[1], transpose_y=True) * attn.scale, axis=-1).numpy()


def performer_attention(layer, x, position):
    """[B, T] implied attention of query `position` in T2T Performer `layer` on its input x (float64)."""
    k, q, _ = np.split(paddle.matmul(layer.norm1(x), layer.kqv.weight).numpy().astype("float64")
                       + layer.kqv.bias.numpy(), 3, axis=-1)
    w = layer.w.numpy().astype("float64")

    def features(t):
        return np.exp(t @ w.T - 0.5 * (t * t).sum(-1, keepdims=True)) / np.sqrt(layer.m)

    qp, kp = features(q[:, position]), features(k)  # [B, m], [B, T, m]
    scores = np.einsum("bm,btm->bt", qp, kp)
    return scores / (scores.sum(-1, keepdims=True) + 1e-8)


def rollout(attentions):
    """[B, N, N] attention rollout of per-block [B, heads, N, N] attentions (first block first)."""
    out = None
    for a in attentions:
        a = a.mean(1) + np.eye(a.shape[-1])
        a = a / a.sum(-1, keepdims=True)
        out = a if out is None else a @ out
    return out


def attention_maps(model, images, position=None):
    """The maps of `model` (eval mode) on images [B, 3, H, W]; position: the T2T query's (y, x) in pixels
    (default: the centre), taken to the token covering it on each T2T layer's grid.

    Returns a dict of float64 arrays: logits; attentions (per block [B, heads, N, N]); rollout [B, N, N];
    rollout_cls [B, H/16, W/16] (the class token's rollout row over the patches); last_heads
    [B, heads, H/16, W/16] (the last block's class-token attention per head); t2t: per Performer T2T layer
    (grid, [B, gh, gw] implied attention of the query at `position` on that layer's grid).
    """
    model.eval()
    h, w = model.img_size
    x = paddle.to_tensor(np.asarray(images, dtype="float32"))
    logits, block_inputs, t2t_inputs = _recorded(model, x)
    attentions = [block_attention(blk.attn, inp) for blk, inp in zip(model.blocks, block_inputs)]
    roll = rollout(attentions)
    B, grid = x.shape[0], (h // 16, w // 16)
    maps = {"logits": logits.numpy(), "attentions": attentions, "rollout": roll,
            "rollout_cls": roll[:, 0, 1:].reshape([B, *grid]),
            "last_heads": attentions[-1][:, :, 0, 1:].reshape([B, attentions[-1].shape[1], *grid]), "t2t": []}
    y, x_ = (h // 2, w // 2) if position is None else position
    for (layer, inp), g in zip(t2t_inputs, model.tokens_to_token.grids):
        pos = (y * g[0] // h) * g[1] + x_ * g[1] // w
        maps["t2t"].append((g, performer_attention(layer, inp, pos).reshape([B, *g])))
    return maps
