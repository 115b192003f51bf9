"""Parameters and multiply-accumulates (MACs) of a model, counted the way fvcore counts the official one.

fvcore's default handles count matrix products (linear/addmm, matmul, bmm, einsum) as MACs, and LayerNorm as 5
operations per element (normalise and affine); element-wise ops, softmax, GELU and the unfolds count nothing.
The counts here follow one forward of one image through forward hooks (so every shape is the real one), by
kind: linear layers, the backbone's attention matmuls (q k^T and attn v), the Performer T2T layers' einsums,
LayerNorm. FLOPs, as the T2T-ViT paper's table reports them, are 2 x MACs.
"""
import paddle
import paddle.nn as nn

from .t2t import Attention, TokenAttention, TokenPerformer
from .sizes import image_hw

KINDS = ("linear", "attention matmuls", "performer einsums", "layernorm")


def _numel(shape):
    out = 1
    for s in shape:
        out *= int(s)
    return out


def count_macs(model, img_size):
    """{kind: MACs} of one [1, 3, H, W] image through `model`."""
    counts = dict.fromkeys(KINDS, 0)

    def hook(layer, inputs, output):
        x = inputs[0]
        if isinstance(layer, nn.Linear):
            counts["linear"] += _numel(x.shape[:-1]) * _numel(layer.weight.shape)
        elif isinstance(layer, nn.LayerNorm):
            counts["layernorm"] += _numel(x.shape) * (5 if layer.weight is not None else 4)
        elif isinstance(layer, Attention):
            B, N, C = x.shape
            counts["attention matmuls"] += 2 * B * N * N * C  # q k^T and attn v over all heads
            # its qkv and proj are GEMMs on the Linear weights, not calls of the Linear layers (see t2t.py)
            counts["linear"] += B * N * (_numel(layer.qkv.weight.shape) + _numel(layer.proj.weight.shape))
        elif isinstance(layer, TokenAttention):
            B, T, _ = x.shape
            counts["attention matmuls"] += 2 * B * T * T * layer.proj.weight.shape[0]  # one head of in_dim
        elif isinstance(layer, TokenPerformer):
            B, T, _ = x.shape
            m, emb = layer.m, layer.emb
            # w.k and w.q features, the denominator q'.sum(k'), k'^T v, and q' (k'^T v)
            counts["performer einsums"] += B * (2 * T * emb * m + T * m + 2 * T * m * emb)

    hooks = [layer.register_forward_post_hook(hook) for layer in model.sublayers()
             if isinstance(layer, (nn.Linear, nn.LayerNorm, Attention, TokenAttention, TokenPerformer))]
    try:
        model.eval()
        with paddle.no_grad():
            model(paddle.zeros([1, 3, *image_hw(img_size)]))
    finally:
        for h in hooks:
            h.remove()
    return counts


def count_parameters(model):
    """(total, trainable, frozen) parameter counts."""
    sizes = [(_numel(p.shape), p.stop_gradient) for p in model.parameters()]
    total = sum(n for n, _ in sizes)
    frozen = sum(n for n, stop in sizes if stop)
    return total, total - frozen, frozen
