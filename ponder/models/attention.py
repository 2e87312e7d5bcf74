"""Non-causal multi-head self-attention for the recursive reasoners, with rotary position
embeddings (`Rotary`) fused into the head split: one small autograd Function writes q, k and v
in the head-major layout `scaled_dot_product_attention` reads, rotating q and k on the way.
Under `plain_ops()` (ponder.models.blocks: forward-mode differentiation) plain PyTorch ops are
used instead, since the fused split and SDPA's CPU kernel have no forward-mode rule.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from ponder.models.blocks import lecun_linear, plain_ops_active, plain_ops_requested


def _rotate_into(x: Tensor, cos: Tensor, sin: Tensor, out: Tensor, sign: float = 1.0) -> Tensor:
    """Rotate-half RoPE of x written into `out` (no temporaries).

    With halves x = [x1, x2]: out = [x1 cos - sign x2 sin, x2 cos + sign x1 sin]; sign=-1 is the
    inverse (= transposed) rotation, used for the gradient.

    Args:
        x: (..., n, hd) head vectors; out: same shape, must not overlap x.
        cos, sin: (n, hd/2) tables for the n positions.
    """
    x1, x2 = x.chunk(2, dim=-1)  # (..., n, hd/2) each
    o1, o2 = out.chunk(2, dim=-1)
    torch.mul(x1, cos, out=o1).addcmul_(x2, sin, value=-sign)
    torch.mul(x2, cos, out=o2).addcmul_(x1, sin, value=sign)
    return out


class _Heads(torch.autograd.Function):
    """Fused q/k/v projection (b, n, 3d) -> q, k, v as contiguous (b, h, n, hd), RoPE on q and k.

    One pass writes the head-major layout attention reads fastest while rotating q and k; the
    backward writes the (b, n, 3d) gradient into one buffer (instead of autograd's stack or cat,
    the layout copy and the rotary products' temporaries). cos = sin = None: no rotation.
    """

    @staticmethod
    def forward(ctx, qkv: Tensor, cos: Tensor | None, sin: Tensor | None, n_heads: int) -> tuple[Tensor, Tensor, Tensor]:  # type: ignore[override]
        b, n, three_d = qkv.shape
        src = qkv.view(b, n, 3, n_heads, three_d // (3 * n_heads)).permute(2, 0, 3, 1, 4)  # (3, b, h, n, hd)
        out = qkv.new_empty(src.shape)  # (3, b, h, n, hd)
        if cos is None or sin is None:
            out.copy_(src)
        else:
            _rotate_into(src[:2], cos, sin, out[:2])
            out[2].copy_(src[2])
        ctx.save_for_backward(cos, sin)
        ctx.n_heads = n_heads
        return out[0], out[1], out[2]

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_q: Tensor, grad_k: Tensor, grad_v: Tensor) -> tuple[Tensor, None, None, None]:  # type: ignore[override]
        cos, sin = ctx.saved_tensors
        b, h, n, hd = grad_q.shape
        grad = grad_q.new_empty(b, n, 3, h, hd)
        heads = grad.permute(2, 0, 3, 1, 4)  # (3, b, h, n, hd) view
        if cos is None:
            heads[0].copy_(grad_q)
            heads[1].copy_(grad_k)
        else:
            _rotate_into(grad_q, cos, sin, heads[0], sign=-1.0)
            _rotate_into(grad_k, cos, sin, heads[1], sign=-1.0)
        heads[2].copy_(grad_v)
        return grad.view(b, n, 3 * h * hd), None, None, None


class Rotary(nn.Module):
    """Rotary position embeddings (RoPE, rotate-half convention): cos/sin tables per position.

    Frequencies w_i = theta^(-i / (hd/2)); position p rotates the pair (x_i, x_{i+hd/2}) by p*w_i,
    so the dot product of rotated q and k depends only on their position difference.

    Args:
        head_dim: per-head size (even).
        max_len: number of positions precomputed.
        theta: frequency base.
    """

    def __init__(self, head_dim: int, max_len: int, theta: float):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary needs an even head dim, got {head_dim}")
        half = head_dim // 2
        inv_freq = theta ** -(torch.arange(half, dtype=torch.float64) / half)  # (hd/2,)
        angles = torch.outer(torch.arange(max_len, dtype=torch.float64), inv_freq)  # (L, hd/2)
        self.register_buffer("cos", angles.cos().float(), persistent=False)  # (L, hd/2)
        self.register_buffer("sin", angles.sin().float(), persistent=False)  # (L, hd/2)


def split_heads(qkv: Tensor, n_heads: int, rotary: Rotary | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Split a fused projection into attention heads, rotating q and k when `rotary` is given.

    Args:
        qkv: (b, n, 3d) output of the fused q/k/v Linear.
        n_heads: h.
        rotary: position tables, or None for no positions.
    Returns:
        q, k, v: (b, h, n, hd) each, contiguous.
    """
    n = qkv.shape[1]
    cos, sin = (rotary.cos[:n], rotary.sin[:n]) if rotary is not None else (None, None)
    if plain_ops_active():
        return _split_heads_plain(qkv, cos, sin, n_heads)
    return _Heads.apply(qkv.contiguous(), cos, sin, n_heads)


def _split_heads_plain(qkv: Tensor, cos: Tensor | None, sin: Tensor | None, n_heads: int) -> tuple[Tensor, Tensor, Tensor]:
    """`split_heads` with out-of-place ops only (same values as the fused `_Heads`)."""
    b, n, three_d = qkv.shape
    q, k, v = qkv.reshape(b, n, 3, n_heads, three_d // (3 * n_heads)).permute(2, 0, 3, 1, 4).unbind(0)

    def rotate(x: Tensor) -> Tensor:  # (b, h, n, hd)
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)

    if cos is not None and sin is not None:
        q, k = rotate(q), rotate(k)
    return q.contiguous(), k.contiguous(), v.contiguous()


class Attention(nn.Module):
    """Non-causal multi-head self-attention with a fused q/k/v projection and no biases.

    Args:
        d_model: model width.
        n_heads: number of heads (divides d_model).
        rotary: shared rotary tables, or None for no positions inside attention.
    """

    def __init__(self, d_model: int, n_heads: int, rotary: Rotary | None = None):
        super().__init__()
        self.n_heads = n_heads
        self.qkv = lecun_linear(d_model, 3 * d_model)
        self.out = lecun_linear(d_model, d_model)
        self.rotary = rotary

    def forward(self, x: Tensor) -> Tensor:
        """Args: x (b, n, d). Returns: (b, n, d)."""
        b, n, d = x.shape
        q, k, v = split_heads(self.qkv(x), self.n_heads, self.rotary)  # (b, h, n, hd) each
        if plain_ops_requested():  # SDPA's CPU kernel has no forward-mode rule
            weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)  # (b, h, n, n)
            o = weights @ v
        else:
            o = F.scaled_dot_product_attention(q, k, v)  # (b, h, n, hd)
        return self.out(o.transpose(1, 2).reshape(b, n, d))  # (b, n, d)
