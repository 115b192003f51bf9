"""T2T-ViT in PyTorch, as the official release computes it: the yardstick of tools/benchmark.py and the tests.

Not part of the Paddle model: nothing that trains, evaluates or deploys imports it. It exists so that the
benchmark can time, on the user's own machine and in the same run, what a user would otherwise run, and
tests/test_torch_reference.py proves on tests/data/official that it computes the official logits (bit for bit there).
It follows the official formulation op for op where that decides speed (unfold soft splits, einsum-based
Performer with its repeat-ed sums, [B, N, 3, heads, head_dim] attention), and takes the official parameter
names and torch layout, so a state dict of the release (or the fixture's npz) loads strictly.
"""
import math

import numpy as np
import torch
from torch import nn


def sinusoid_table(n_position, dim):
    """[1, n_position, dim]: sin on even channels, cos on odd ones (the paper's fixed position table)."""
    pos = np.arange(n_position, dtype=np.float64)[:, None]
    angle = pos / np.power(10000.0, 2 * (np.arange(dim) // 2) / dim)
    angle[:, 0::2] = np.sin(angle[:, 0::2])
    angle[:, 1::2] = np.cos(angle[:, 1::2])
    return torch.from_numpy(angle[None]).float()


class DropPath(nn.Module):
    def __init__(self, p):
        super().__init__()
        self.p = p

    def forward(self, x):
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class Mlp(nn.Module):
    def __init__(self, dim, hidden, drop=0.0):
        super().__init__()
        self.fc1, self.act, self.fc2, self.drop = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim), nn.Dropout(drop)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        weights = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((weights @ v).transpose(1, 2).reshape(B, N, C))


class Block(nn.Module):
    def __init__(self, dim, heads, mlp_ratio, drop_path):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.drop_path = DropPath(drop_path)
        self.norm2, self.mlp = nn.LayerNorm(dim), Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x):
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class TokenPerformer(nn.Module):
    """Performer T2T layer: k, q, v split; m = in_dim / 2 frozen orthogonal features * sqrt(m); residual via v."""

    def __init__(self, dim, in_dim, kernel_ratio=0.5, eps=1e-8):
        super().__init__()
        self.emb, self.m, self.eps = in_dim, int(in_dim * kernel_ratio), eps
        self.kqv, self.proj = nn.Linear(dim, 3 * in_dim), nn.Linear(in_dim, in_dim)
        self.dp = nn.Dropout(0.1)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(in_dim)
        self.mlp = nn.Sequential(nn.Linear(in_dim, in_dim), nn.GELU(), nn.Linear(in_dim, in_dim), nn.Dropout(0.1))
        w = nn.init.orthogonal_(torch.empty(self.m, in_dim)) * math.sqrt(self.m)
        self.w = nn.Parameter(w, requires_grad=False)

    def features(self, x):
        half_sq = (x * x).sum(dim=-1, keepdim=True).repeat(1, 1, self.m) / 2
        return torch.exp(torch.einsum("bti,mi->btm", x.float(), self.w) - half_sq) / math.sqrt(self.m)

    def forward(self, x):
        k, q, v = torch.split(self.kqv(self.norm1(x)), self.emb, dim=-1)
        kp, qp = self.features(k), self.features(q)
        denom = torch.einsum("bti,bi->bt", qp, kp.sum(dim=1)).unsqueeze(2)
        kptv = torch.einsum("bin,bim->bnm", v.float(), kp)
        y = torch.einsum("bti,bni->btn", qp, kptv) / (denom.repeat(1, 1, self.emb) + self.eps)
        x = v + self.dp(self.proj(y))
        return x + self.mlp(self.norm2(x))


class TokensToToken(nn.Module):
    def __init__(self, img_size, in_chans, embed_dim, token_dim=64):
        super().__init__()
        self.soft_split0 = nn.Unfold(kernel_size=7, stride=4, padding=2)
        self.soft_split1 = nn.Unfold(kernel_size=3, stride=2, padding=1)
        self.soft_split2 = nn.Unfold(kernel_size=3, stride=2, padding=1)
        self.attention1 = TokenPerformer(in_chans * 49, token_dim)
        self.attention2 = TokenPerformer(token_dim * 9, token_dim)
        self.project = nn.Linear(token_dim * 9, embed_dim)
        # The official code folds back with side int(sqrt(T)) and so takes square images only; an (H, W) pair
        # is the natural extension (fold to H/4 x W/4, then H/8 x W/8), identical to it for a square.
        h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
        self.grids = ((h // 4, w // 4), (h // 8, w // 8))
        self.num_patches = (h // 16) * (w // 16)

    @staticmethod
    def to_image(x, grid):
        B, T, C = x.shape
        return x.transpose(1, 2).reshape(B, C, *grid)

    def forward(self, x):
        x = self.to_image(self.attention1(self.soft_split0(x).transpose(1, 2)), self.grids[0])
        x = self.to_image(self.attention2(self.soft_split1(x).transpose(1, 2)), self.grids[1])
        return self.project(self.soft_split2(x).transpose(1, 2))


class T2TViT(nn.Module):
    """Performer T2T-ViT (t2t_vit_7/10/12/14/19/24 by embed_dim, depth, heads, mlp_ratio)."""

    def __init__(self, img_size=224, in_chans=3, num_classes=1000, embed_dim=256, depth=7, num_heads=4,
                 mlp_ratio=2.0, drop_path_rate=0.0):
        super().__init__()
        self.tokens_to_token = TokensToToken(img_size, in_chans, embed_dim)
        n = self.tokens_to_token.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.pos_embed = nn.Parameter(sinusoid_table(n + 1, embed_dim), requires_grad=False)
        rates = np.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, r) for r in rates)
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x):
        x = self.tokens_to_token(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)[:, 0])


# The Performer variants the benchmark can time: name -> (embed_dim, depth, num_heads, mlp_ratio).
PERFORMER_VARIANTS = {
    "t2t_vit_7": (256, 7, 4, 2.0), "t2t_vit_10": (256, 10, 4, 2.0), "t2t_vit_12": (256, 12, 4, 2.0),
    "t2t_vit_14": (384, 14, 6, 3.0), "t2t_vit_19": (448, 19, 7, 3.0), "t2t_vit_24": (512, 24, 8, 3.0),
}


def create_reference(name, **kwargs):
    embed_dim, depth, num_heads, mlp_ratio = PERFORMER_VARIANTS[name]
    return T2TViT(embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio, **kwargs)


def load_torch_layout(model, arrays):
    """Load {official name: numpy array in torch layout} strictly (as the release's state_dict_ema)."""
    model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in arrays.items()}, strict=True)
    return model
