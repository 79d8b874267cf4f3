"""Transformer building blocks shared by the MAE, PoseT, CPEP, EMBridge (and EMG-JEPA) models.

Pre-LayerNorm blocks (``x + attn(ln(x))``, ``x + mlp(ln(x))``) whose attention goes through
``torch.nn.functional.scaled_dot_product_attention``, so it takes torch's fused kernels (flash /
memory-efficient on GPU, the fused CPU path otherwise). One :class:`Attention` serves self- and
cross-attention; an optional boolean mask ``(Lq, Lk)`` (True = may attend) expresses EMBridge's
reconstruction-pass mask.

Tokenising follows CPEP/EMBridge Sec. 2.2: a window ``(B, T, C)`` is cut along time into
``K = T // S`` non-overlapping patches of ``S`` samples, each flattened over channels
(``S * C`` values) and projected linearly to ``d``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Attention(nn.Module):
    """Multi-head attention of queries ``x (B, Lq, d)`` over ``context (B, Lk, d)`` (default x).

    No dropout on the attention probabilities (timm ViT's and I-JEPA's ``attn_drop=0``); the
    blocks drop on their residual branches and feed-forward instead. Why: the papers' "dropout
    0.1" does not say where, and probability dropout takes CPU's unfused SDPA path, 10x slower
    at EMG-JEPA's smoke size (B 32, 4 heads, 320 tokens: 250 ms against 25 ms a call).
    """

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(
        self, x: Tensor, context: Tensor | None = None, mask: Tensor | None = None
    ) -> Tensor:
        b, lq, d = x.shape
        ctx = x if context is None else context
        h = self.heads
        q = self.q(x).view(b, lq, h, d // h).transpose(1, 2)  # (B, h, Lq, d/h)
        k, v = self.kv(ctx).view(b, ctx.shape[1], 2, h, d // h).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, h, Lq, d/h)
        return self.out(o.transpose(1, 2).reshape(b, lq, d))


class FeedForward(nn.Module):
    """The feed-forward half of a block: ``d -> hidden -> d`` with GELU."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(F.gelu(self.fc1(x)))))


class Block(nn.Module):
    """Pre-LN Transformer block: self-attention, then feed-forward; ``(B, L, d) -> (B, L, d)``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.mlp = FeedForward(dim, int(dim * mlp_ratio), dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor | None = None, first: int = 0) -> Tensor:
        """``first > 0``: outputs only for tokens ``first:`` (all tokens still serve as keys and
        values), ``(B, L - first, d)``: a last block whose other outputs nobody reads."""
        h = self.ln1(x)
        q = h[:, first:] if first else h
        m = mask[first:] if mask is not None and first else mask
        x = x[:, first:] + self.drop(self.attn(q, h if first else None, mask=m))
        return x + self.mlp(self.ln2(x))


def sincos_1d(n: int, dim: int) -> Tensor:
    """Fixed sinusoidal position table ``(n, dim)`` (Vaswani et al.; MAE's fixed embeddings)."""
    if dim % 2:
        raise ValueError(f"a sinusoidal table needs an even width, got {dim}")
    pos = torch.arange(n, dtype=torch.float64)[:, None]
    freq = torch.exp(-math.log(10000.0) * torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    table = torch.zeros(n, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)
    return table.float()


def patchify(x: Tensor, patch: int) -> Tensor:
    """``(B, T, C) -> (B, K, S*C)``: K = T // S patches, channels flattened within each patch.

    A ragged tail (``T % S`` samples) is dropped, as ``floor(T / S)`` in the papers.
    """
    b, t, c = x.shape
    k = t // patch
    if k == 0:
        raise ValueError(f"window of {t} samples is shorter than one patch of {patch}")
    return x[:, : k * patch].reshape(b, k, patch * c)


def unpatchify(tokens: Tensor, patch: int, channels: int) -> Tensor:
    """Inverse of :func:`patchify`: ``(B, K, S*C) -> (B, K*S, C)``."""
    b, k, _ = tokens.shape
    return tokens.reshape(b, k * patch, channels)


def init_weights(module: nn.Module) -> None:
    """MAE's initialisation: Xavier-uniform linears with zero bias, unit LayerNorms."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
