"""T2T-ViT (Yuan et al., "Tokens-to-Token ViT", ICCV 2021) in PaddlePaddle.

Parameter names and shapes equal the official PyTorch release's, so converted checkpoints load by name
(Linear weights transposed). Facts that decide numerical parity with the official code:
- soft splits are unfolds k7/s4/p2, then k3/s2/p1 twice: 16x fewer tokens per side;
- the Performer T2T layer splits its projection as k, q, v, uses m = emb/2 frozen orthogonal random
  features scaled by sqrt(m), and its residual goes through v (the input has another width);
- the position table is the fixed 1-D sinusoid over cls + patches, never trained;
- backbone attention scale is head_dim ** -0.5 and every LayerNorm uses eps 1e-5.
Linear, Dropout and LayerNorm are Paddle's layers with faster kernels for training on CPU (cpu_training.py).
"""
import contextlib
import math

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from .cpu_training import Dropout, LayerNorm, Linear
from .errors import UserError
from .sizes import image_hw

_normal_02 = nn.initializer.Normal(mean=0.0, std=0.02)
_zeros = nn.initializer.Constant(0.0)
_ones = nn.initializer.Constant(1.0)


def sinusoid_table(n_position, dim):
    """[1, n_position, dim] float32: sin on even channels, cos on odd ones (computed in float64)."""
    pos = np.arange(n_position, dtype=np.float64)[:, None]
    rate = np.power(10000.0, 2 * (np.arange(dim) // 2) / dim)
    table = pos / rate
    table[:, 0::2] = np.sin(table[:, 0::2])
    table[:, 1::2] = np.cos(table[:, 1::2])
    return table[None].astype("float32")


def drop_path(x, p, training):
    """Stochastic depth: drop whole residual branches per sample, rescaling the kept ones."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = paddle.bernoulli(paddle.full([x.shape[0]] + [1] * (x.ndim - 1), keep, dtype=x.dtype))
    return x * mask / keep


def checkpointed(layer, x, enabled):
    """layer(x); when `enabled` while training with gradients on, its activations are dropped after the forward and
    recomputed in backward (Paddle's recompute), the random state of its dropout and drop path replayed, so the
    gradients are those of the plain run, bit for bit on CPU (tests/test_grad_checkpointing.py).

    Paddle's recompute is a PyLayer: when no input needs a gradient (the first T2T layer takes the image's
    patches) its output would need none either, and the layer's weights would get no gradient; the input is then
    given one (a [B, T, 147] gradient computed and dropped). Its hook-based variant (use_reentrant=False) cannot
    replay the random state on CPU in Paddle 2.6 and gave other gradients in 3.3.
    """
    if not (enabled and layer.training and paddle.in_dynamic_mode() and paddle.is_grad_enabled()):
        return layer(x)
    from paddle.distributed.fleet.utils import recompute  # imported on first use: it loads paddle.distributed
    if x.stop_gradient:
        x = x.detach()
        x.stop_gradient = False
    return recompute(layer, x, preserve_rng_state=True, use_reentrant=True)


def take_indices(count, indices):
    """timm's feature_take_indices: (absolute block indices, the largest) from None (all blocks), an int n (the last
    n) or a list of indices (negative ones count from the end; kept in the order given)."""
    if indices is None:
        indices = count
    if isinstance(indices, int) and not isinstance(indices, bool):
        if not 0 < indices <= count:
            raise UserError(f"indices={indices}: the last n blocks must be 1 to {count}")
        take = list(range(count - indices, count))
    else:
        take = []
        for i in indices:
            absolute = count + i if i < 0 else i
            if not 0 <= absolute < count:
                raise UserError(f"block index {i} is outside the model's {count} blocks")
            take.append(absolute)
        if not take:
            raise UserError("indices=[]: name at least one block")
    return take, max(take)


class DropPath(nn.Layer):
    def __init__(self, p=0.0):
        super().__init__()
        self.p = p

    def forward(self, x):
        return drop_path(x, self.p, self.training)


class TokenPerformer(nn.Layer):
    """T2T layer with Performer attention: linear in the token count, needed for 3136 tokens at 224 px."""

    def __init__(self, dim, in_dim, kernel_ratio=0.5, dp1=0.1, dp2=0.1):
        super().__init__()
        self.emb = in_dim
        self.m = int(in_dim * kernel_ratio)
        self.kqv = Linear(dim, 3 * in_dim)
        self.dp = Dropout(dp1)
        self.proj = Linear(in_dim, in_dim)
        self.norm1 = LayerNorm(dim, epsilon=1e-5)
        self.norm2 = LayerNorm(in_dim, epsilon=1e-5)
        self.mlp = nn.Sequential(Linear(in_dim, in_dim), nn.GELU(), Linear(in_dim, in_dim), Dropout(dp2))
        # Random features are part of the model (saved, loaded) but fixed, as in the official release.
        self.w = self.create_parameter([self.m, in_dim], default_initializer=nn.initializer.Orthogonal())
        self.w.set_value(self.w * math.sqrt(self.m))
        self.w.stop_gradient = True

    def prm_exp(self, x):
        # Positive random features: exp(w.x - |x|^2 / 2) / sqrt(m) approximates the softmax kernel. Row sums
        # here and below are GEMMs with a constant vector: Paddle's reduction kernels are several times slower.
        xd = paddle.matmul(x * x, paddle.full([self.emb, 1], 0.5, dtype=x.dtype))
        return paddle.exp(paddle.matmul(x, self.w, transpose_y=True) - xd) / math.sqrt(self.m)

    def forward(self, x):
        k, q, v = paddle.split(self.kqv(self.norm1(x)), 3, axis=-1)
        x = v + self.dp(self.proj(self.attend(k, q, v)))
        return x + self.mlp(self.norm2(x))

    def attend(self, k, q, v):
        """The Performer's attention, always in float32 (the official code's x.float()): under fp16 the
        `+ 1e-8` below is 0 and flat images give 0 / 0 (official issue #69), so autocast is switched off here."""
        dtype = v.dtype
        k, q, v = (t if t.dtype == paddle.float32 else t.astype("float32") for t in (k, q, v))
        # In the dynamic graph and in Paddle 3's programs (PIR) alike; Paddle 2.6's legacy programs take no autocast
        # context (they are exported in float32).
        amp_aware = paddle.in_dynamic_mode() or paddle.framework.in_pir_mode()
        island = paddle.amp.auto_cast(enable=False) if amp_aware else contextlib.nullcontext()
        with island:
            kp, qp = self.prm_exp(k), self.prm_exp(q)  # [B, T, m]
            kp_sum = paddle.matmul(paddle.ones([1, 1, kp.shape[1]], dtype=kp.dtype), kp)  # [B, 1, m]
            denom = paddle.matmul(qp, kp_sum, transpose_y=True)  # [B, T, 1]
            kptv = paddle.matmul(kp, v, transpose_x=True)  # [B, m, emb]
            # The official epsilon as a tensor, not a Python float: from Paddle 2.6 through paddle2onnx 1.3.1,
            # `denom + 1e-8` lost its epsilon (the ONNX graph divided by denom itself), and tokens whose features
            # all underflow (flat dark backgrounds of trained Fashion-MNIST models) gave 0 / 0 = NaN logits in
            # ONNX Runtime and OpenVINO. tests/test_own_data.py runs every backend on such images.
            y = paddle.matmul(qp, kptv) / (denom + paddle.full([1], 1e-8, dtype=denom.dtype))
        return y if dtype == paddle.float32 else y.astype(dtype)


class TokenAttention(nn.Layer):
    """Single-head attention of the transformer T2T layer: scaled by the input width, residual through v."""

    def __init__(self, dim, in_dim, qkv_bias=False, qk_scale=None, attn_drop=0.0, proj_drop=0.0):
        super().__init__()
        self.in_dim = in_dim
        self.scale = qk_scale or dim ** -0.5
        self.qkv = Linear(dim, in_dim * 3, bias_attr=None if qkv_bias else False)
        self.attn_drop = Dropout(attn_drop)
        self.proj = Linear(in_dim, in_dim)
        self.proj_drop = Dropout(proj_drop)

    def forward(self, x):
        q, k, v = paddle.split(self.qkv(x), 3, axis=-1)
        attn = F.softmax(paddle.matmul(q * self.scale, k, transpose_y=True), axis=-1)
        x = self.proj_drop(self.proj(paddle.matmul(self.attn_drop(attn), v)))
        return v + x


class TokenTransformer(nn.Layer):
    def __init__(self, dim, in_dim, mlp_ratio=1.0, qkv_bias=False, qk_scale=None, drop=0.0, attn_drop=0.0):
        super().__init__()
        self.norm1 = LayerNorm(dim, epsilon=1e-5)
        self.attn = TokenAttention(dim, in_dim, qkv_bias, qk_scale, attn_drop, drop)
        self.norm2 = LayerNorm(in_dim, epsilon=1e-5)
        self.mlp = Mlp(in_dim, int(in_dim * mlp_ratio), in_dim, drop=drop)

    def forward(self, x):
        x = self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class T2TModule(nn.Layer):
    """Tokens-to-token: three soft splits with a T2T layer between them, then a projection to embed_dim."""

    grad_checkpointing = False  # recompute the T2T layers in backward (T2T_ViT.set_grad_checkpointing)

    def __init__(self, img_size=224, tokens_type="performer", in_chans=3, embed_dim=768, token_dim=64):
        super().__init__()
        if tokens_type == "performer":
            self.attention1 = TokenPerformer(in_chans * 7 * 7, token_dim)
            self.attention2 = TokenPerformer(token_dim * 3 * 3, token_dim)
        elif tokens_type == "transformer":
            self.attention1 = TokenTransformer(in_chans * 7 * 7, token_dim)
            self.attention2 = TokenTransformer(token_dim * 3 * 3, token_dim)
        else:
            raise UserError(f"unknown tokens_type {tokens_type!r}; use 'performer' or 'transformer'")
        self.project = Linear(token_dim * 3 * 3, embed_dim)
        # The official code folds tokens back with a side of int(sqrt(T)), so it only takes square images; the
        # grids after the first two soft splits are H/4 x W/4 and H/8 x W/8, which is the same for a square.
        h, w = image_hw(img_size)
        self.grids = ((h // 4, w // 4), (h // 8, w // 8))
        self.num_patches = (h // 16) * (w // 16)

    @staticmethod
    def _reshape_to_image(x, grid):
        B, T, C = x.shape
        return x.transpose([0, 2, 1]).reshape([B, C, *grid])

    def forward(self, x):
        x = F.unfold(x, [7, 7], strides=4, paddings=2).transpose([0, 2, 1])
        x = self._reshape_to_image(checkpointed(self.attention1, x, self.grad_checkpointing), self.grids[0])
        x = F.unfold(x, [3, 3], strides=2, paddings=1).transpose([0, 2, 1])
        x = self._reshape_to_image(checkpointed(self.attention2, x, self.grad_checkpointing), self.grids[1])
        x = F.unfold(x, [3, 3], strides=2, paddings=1).transpose([0, 2, 1])
        return self.project(x)


class Attention(nn.Layer):
    """Multi-head self-attention of the ViT backbone."""

    def __init__(self, dim, num_heads, qkv_bias=False, qk_scale=None, attn_drop=0.0, proj_drop=0.0):
        super().__init__()
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.qkv = Linear(dim, dim * 3, bias_attr=None if qkv_bias else False)
        self.attn_drop = Dropout(attn_drop)
        self.proj = Linear(dim, dim)
        self.proj_drop = Dropout(proj_drop)

    def forward(self, x):
        # Heads are computed channels-first, [B, heads, head_dim, N], so that every transpose of the usual
        # formulation becomes a GEMM flag instead of a copy: op by op, Paddle's copies cost as much as the
        # GEMMs. The scale goes into the (small) query weight and bias.
        B, N, C = x.shape
        shape = [B, self.num_heads, C // self.num_heads, N]
        weights = paddle.split(self.qkv.weight, 3, axis=1)
        biases = paddle.split(self.qkv.bias, 3) if self.qkv.bias is not None else [None] * 3
        scales = (self.scale, 1.0, 1.0)
        q, k, v = [self._heads(x, w, b, s, shape) for w, b, s in zip(weights, biases, scales)]
        attn = F.softmax(paddle.matmul(q, k, transpose_x=True), axis=-1)
        out = paddle.matmul(v, self.attn_drop(attn), transpose_y=True).reshape([B, C, N])
        return self.proj_drop(self.proj.add_bias(paddle.matmul(out, self.proj.weight, transpose_x=True)))

    @staticmethod
    def _heads(x, weight, bias, scale, shape):
        y = paddle.matmul(weight * scale if scale != 1.0 else weight, x, transpose_x=True, transpose_y=True)
        if bias is not None:
            y = y + (bias * scale).unsqueeze(-1)
        return y.reshape(shape)  # [B, C, N] -> [B, heads, head_dim, N]


class Mlp(nn.Layer):
    def __init__(self, in_features, hidden_features, out_features=None, drop=0.0):
        super().__init__()
        self.fc1 = Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = Linear(hidden_features, out_features or in_features)
        self.drop = Dropout(drop)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Block(nn.Layer):
    def __init__(self, dim, num_heads, mlp_ratio=4.0, qkv_bias=False, qk_scale=None, drop=0.0, attn_drop=0.0,
                 drop_path=0.0):
        super().__init__()
        self.norm1 = LayerNorm(dim, epsilon=1e-5)
        self.attn = Attention(dim, num_heads, qkv_bias, qk_scale, attn_drop, drop)
        self.drop_path = DropPath(drop_path)
        self.norm2 = LayerNorm(dim, epsilon=1e-5)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

    def forward(self, x):
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class T2T_ViT(nn.Layer):
    grad_checkpointing = False  # recompute each block in backward (set_grad_checkpointing)

    def __init__(self, img_size=224, tokens_type="performer", in_chans=3, num_classes=1000, embed_dim=768,
                 depth=12, num_heads=12, mlp_ratio=4.0, qkv_bias=False, qk_scale=None, drop_rate=0.0,
                 attn_drop_rate=0.0, drop_path_rate=0.0, token_dim=64):
        super().__init__()
        self.img_size = image_hw(img_size)
        self.num_classes = num_classes
        self.embed_dim = embed_dim
        self.tokens_to_token = T2TModule(img_size, tokens_type, in_chans, embed_dim, token_dim)
        num_patches = self.tokens_to_token.num_patches
        self.cls_token = self.create_parameter([1, 1, embed_dim], default_initializer=_normal_02)
        table = sinusoid_table(num_patches + 1, embed_dim)
        self.pos_embed = self.create_parameter(table.shape, default_initializer=nn.initializer.Assign(table))
        self.pos_embed.stop_gradient = True
        self.pos_drop = Dropout(drop_rate)
        dpr = np.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.LayerList([
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, qk_scale, drop_rate, attn_drop_rate, dpr[i])
            for i in range(depth)])
        self.norm = LayerNorm(embed_dim, epsilon=1e-5)
        self.head = Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()

    def _init_weights(self):
        # The reference truncates at +-2 (absolute) with std .02: in effect a plain normal. Paddle 2.6's
        # TruncatedNormal truncates at +-2 std instead, so a Normal gives the reference distribution on both.
        for layer in self.sublayers():
            if isinstance(layer, nn.Linear):
                _normal_02(layer.weight)
                if layer.bias is not None:
                    _zeros(layer.bias)
            elif isinstance(layer, nn.LayerNorm):
                _ones(layer.weight)
                _zeros(layer.bias)

    def embed(self, x):
        """Images -> the [B, 1 + N, C] tokens entering the first block: the class token, then the T2T tokens of
        the H/16 x W/16 grid row by row, plus the position table."""
        x = self.tokens_to_token(x)
        cls = self.cls_token.expand([x.shape[0], -1, -1])
        # The tokens join cls_token and pos_embed in their dtype (float32, also under AMP O2: FLOAT32_LAYERS), not
        # the other way round: so the residual stream of every block is float32 under autocast, as torch.autocast
        # makes it in the official model (its cat and add promote to the float32 parameters); the blocks' Linear
        # layers and attention products still run in half precision, their outputs added into float32.
        if x.dtype != cls.dtype:
            x = x.astype(cls.dtype)
        return self.pos_drop(paddle.concat([cls, x], axis=1) + self.pos_embed)

    def forward_features(self, x):
        x = self.embed(x)
        for blk in self.blocks:
            x = checkpointed(blk, x, self.grad_checkpointing)
        return self.norm(x)[:, 0]

    def forward_head(self, x, pre_logits=False):
        """The head on forward_intermediates' final [B, 1 + N, C] features: it sees the class token alone."""
        x = x[:, 0]
        return x if pre_logits else self.head(x)

    def forward(self, x):
        return self.head(self.forward_features(x))

    def set_grad_checkpointing(self, enable=True):
        """Recompute every block and both T2T layers in backward instead of keeping their activations (timm's
        method; Global.grad_checkpointing in training): less memory, one more forward per step, same gradients."""
        self.grad_checkpointing = enable
        self.tokens_to_token.grad_checkpointing = enable

    def forward_intermediates(self, x, indices=None, return_prefix_tokens=False, norm=False, stop_early=False,
                              output_fmt="NCHW", intermediates_only=False):
        """The outputs of the blocks named by `indices`, as timm's VisionTransformer gives them.

        indices: None (every block), n (the last n) or a list (negative ones from the end). Each intermediate is
        a block's output without the class token, after the final norm if `norm`: an NCHW map [B, C, H/16, W/16]
        (tokens row by row, as the T2T module folds them) or NLC tokens [B, N, C]; return_prefix_tokens pairs it
        with its class token [B, 1, C]. Returns the list if intermediates_only, else (final features, list) with
        the final features [B, 1 + N, C] after the final norm, what forward_head takes (its class token is what
        the head sees). stop_early: no block after the last one named is run.
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise UserError(f"output_fmt {output_fmt!r}: use NCHW or NLC")
        take, last = take_indices(len(self.blocks), indices)
        grid = (x.shape[2] // 16, x.shape[3] // 16)
        x = self.embed(x)
        intermediates = []
        for i, blk in enumerate(self.blocks[:last + 1] if stop_early else self.blocks):
            x = checkpointed(blk, x, self.grad_checkpointing)
            if i in take:
                intermediates.append(self.norm(x) if norm else x)
        prefix = [y[:, :1] for y in intermediates]
        intermediates = [y[:, 1:] for y in intermediates]
        if output_fmt == "NCHW":
            intermediates = [y.transpose([0, 2, 1]).reshape([y.shape[0], y.shape[2], *grid]) for y in intermediates]
        if return_prefix_tokens:
            intermediates = list(zip(intermediates, prefix))
        return intermediates if intermediates_only else (self.norm(x), intermediates)

    def prune_intermediate_layers(self, indices=1, prune_norm=False, prune_head=True):
        """Drop what forward_intermediates(indices) does not use: the blocks after the last one named, the head
        (prune_head) and the final norm (prune_norm). Returns the absolute indices kept."""
        take, last = take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[:last + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.head = nn.Identity()
            self.num_classes = 0
        return take


# Layers whose own parameters stay float32 when AMP O2 casts the rest to half precision (amp.py): the Performer's
# random features (its attention runs in float32), every LayerNorm (its statistics are float32 under autocast),
# and cls_token / pos_embed (they make the residual stream float32, see forward_features).
FLOAT32_LAYERS = (TokenPerformer, nn.LayerNorm, T2T_ViT)

# name -> (tokens_type, embed_dim, depth, num_heads, mlp_ratio), as in the official release.
VARIANTS = {
    "t2t_vit_7": ("performer", 256, 7, 4, 2.0),
    "t2t_vit_10": ("performer", 256, 10, 4, 2.0),
    "t2t_vit_12": ("performer", 256, 12, 4, 2.0),
    "t2t_vit_14": ("performer", 384, 14, 6, 3.0),
    "t2t_vit_19": ("performer", 448, 19, 7, 3.0),
    "t2t_vit_24": ("performer", 512, 24, 8, 3.0),
    "t2t_vit_t_14": ("transformer", 384, 14, 6, 3.0),
    "t2t_vit_t_19": ("transformer", 448, 19, 7, 3.0),
    "t2t_vit_t_24": ("transformer", 512, 24, 8, 3.0),
    "t2t_vit_14_resnext": ("performer", 384, 14, 32, 3.0),
    "t2t_vit_14_wide": ("performer", 768, 4, 12, 3.0),
}


class FeatureBackbone(nn.Layer):
    """A T2T-ViT as a backbone (timm's FeatureGetterNet): forward(x) is the list of the maps of blocks
    `out_indices` (forward_intermediates' intermediates: NCHW [B, C, H/16, W/16] or NLC tokens, after the final
    norm if `norm`). The blocks after the last one, the head and (without `norm`) the final norm are dropped.
    feature_info: per map, its channels, its reduction (16) and the block it comes from."""

    def __init__(self, model, out_indices=3, norm=False, output_fmt="NCHW"):
        super().__init__()
        self.out_indices = model.prune_intermediate_layers(out_indices, prune_norm=not norm)
        self.model, self.norm, self.output_fmt = model, norm, output_fmt
        self.feature_info = [{"num_chs": model.embed_dim, "reduction": 16, "module": f"blocks.{i}"}
                             for i in self.out_indices]

    def forward(self, x):
        return self.model.forward_intermediates(x, indices=self.out_indices, norm=self.norm,
                                                output_fmt=self.output_fmt, intermediates_only=True)


def create_model(name, features_only=False, out_indices=3, **kwargs):
    """Build a variant by name; kwargs (img_size, num_classes, drop_path_rate, ...) go to T2T_ViT.

    features_only: a FeatureBackbone of blocks out_indices instead (as timm's create_model: an int n is the
    last n blocks, 3 by default as timm's ViTs; a list names blocks, negative ones from the end)."""
    if name not in VARIANTS:
        raise UserError(f"unknown model {name!r}; known models: {', '.join(VARIANTS)}")
    tokens_type, embed_dim, depth, num_heads, mlp_ratio = VARIANTS[name]
    arch = dict(tokens_type=tokens_type, embed_dim=embed_dim, depth=depth, num_heads=num_heads,
                mlp_ratio=mlp_ratio)
    model = T2T_ViT(**{**arch, **kwargs})
    model.arch_name = name
    return FeatureBackbone(model, out_indices) if features_only else model


def _factory(name):
    def build(**kwargs):
        return create_model(name, **kwargs)

    build.__name__ = name
    build.__doc__ = f"{name}: tokens_type, embed_dim, depth, num_heads, mlp_ratio = {VARIANTS[name]}"
    return build


t2t_vit_7 = _factory("t2t_vit_7")
t2t_vit_10 = _factory("t2t_vit_10")
t2t_vit_12 = _factory("t2t_vit_12")
t2t_vit_14 = _factory("t2t_vit_14")
t2t_vit_19 = _factory("t2t_vit_19")
t2t_vit_24 = _factory("t2t_vit_24")
t2t_vit_t_14 = _factory("t2t_vit_t_14")
t2t_vit_t_19 = _factory("t2t_vit_t_19")
t2t_vit_t_24 = _factory("t2t_vit_t_24")
t2t_vit_14_resnext = _factory("t2t_vit_14_resnext")
t2t_vit_14_wide = _factory("t2t_vit_14_wide")


def frozen_parameter_names(model):
    """Structured names of the parameters that are part of the model but never trained."""
    return [n for n, p in model.named_parameters() if p.stop_gradient]


def linear_weight_names(model):
    """Structured names of Linear weights: stored [in, out] here and [out, in] in PyTorch checkpoints."""
    return [f"{prefix}.weight" for prefix, layer in model.named_sublayers() if isinstance(layer, nn.Linear)]
