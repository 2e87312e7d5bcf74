"""Causal pieces shared by the language models: rotary positions at given indices, causal softmax
attention (whole sequence, or a subset of query rows against cached keys), and the pre-norm block

    x = x + mixer(RMSNorm(x));  x = x + SwiGLU(RMSNorm(x))

(RMSNorm with a learned scale, as in Llama and the Gated DeltaNet paper's blocks).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ponder.core.errors import PonderError
from ponder.models.attention import Rotary
from ponder.models.blocks import SwiGLU


def rotate(x: Tensor, rotary: Rotary, positions: Tensor) -> Tensor:
    """Rotate-half RoPE of head vectors at given positions.

    Args:
        x: (b, h, m, hd); positions: (m,) or (b, m) int64.
    Returns:
        (b, h, m, hd).
    """
    # no check of the values here (a host read per call): the models refuse sequences longer than
    # max_len at their entry, and every position is below the sequence's length
    cos, sin = rotary.cos[positions], rotary.sin[positions]  # (m, hd/2) or (b, m, hd/2)
    if positions.dim() == 2:
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (b, 1, m, hd/2)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


class CausalAttention(nn.Module):
    """Causal multi-head softmax attention with RoPE, no biases.

    Args:
        d_model: width; n_heads: heads (divide d_model); rotary: shared position tables.
    """

    def __init__(self, d_model: int, n_heads: int, rotary: Rotary):
        super().__init__()
        if d_model % n_heads:
            raise PonderError(f"n_heads={n_heads} must divide d_model={d_model}")
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)
        self.rotary = rotary

    def project(self, x: Tensor, positions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x (b, m, d) at positions (m,) or (b, m) -> q, k, v (b, h, m, hd), q and k rotated."""
        b, m, _ = x.shape
        q, k, v = self.qkv(x).view(b, m, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return rotate(q, self.rotary, positions), rotate(k, self.rotary, positions), v

    def attend(self, q: Tensor, k: Tensor, v: Tensor, q_positions: Tensor | None = None) -> Tensor:
        """Queries (b, h, m, hd) against keys/values (b, h, n, hd) -> (b, m, d).

        q_positions: (b, m) position of each query among the n keys (a query sees keys at
        positions <= its own); None: the m = n queries are the keys' own positions (is_causal).
        """
        b, _, m, _ = q.shape
        if q_positions is None:
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (b, h, m, hd)
        else:
            keys = torch.arange(k.shape[2], device=k.device)
            mask = keys.view(1, 1, 1, -1) <= q_positions.view(b, 1, m, 1)  # (b, 1, m, n)
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(o.transpose(1, 2).reshape(b, m, -1))  # (b, m, d)

    def forward(self, x: Tensor) -> Tensor:
        """Args: x (b, n, d). Returns: (b, n, d)."""
        q, k, v = self.project(x, torch.arange(x.shape[1], device=x.device))
        return self.attend(q, k, v)

    def flops_per_token(self, n: int) -> float:
        """Matmul FLOPs per token at sequence length n (projections plus mean causal scores)."""
        d = self.n_heads * self.head_dim
        return 2 * 4 * d * d + 2 * 2 * d * (n + 1) / 2


class Block(nn.Module):
    """Pre-norm block: x + mixer(RMSNorm(x)), then x + SwiGLU(RMSNorm(x)).

    Args:
        mixer: causal token mixer (b, n, d) -> (b, n, d); d_model: width; expansion: SwiGLU factor;
        eps: RMSNorm epsilon.
    """

    def __init__(self, mixer: nn.Module, d_model: int, expansion: float, eps: float):
        super().__init__()
        self.mixer = mixer
        self.norm1 = nn.RMSNorm(d_model, eps=eps)
        self.norm2 = nn.RMSNorm(d_model, eps=eps)
        self.mlp = SwiGLU(d_model, expansion)

    def forward(self, x: Tensor) -> Tensor:
        """Args: x (b, n, d). Returns: (b, n, d)."""
        x = x + self.mixer(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def init_lm_weights(module: nn.Module, std: float) -> None:
    """Normal(0, std) for every Linear and Embedding weight (GPT-2's scheme; the delta rule's own
    gate parameters keep their init)."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=std)


def param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def linear_flops(module: nn.Module) -> float:
    """Matmul FLOPs per token of every nn.Linear inside `module` (2 · in · out each)."""
    return float(sum(2 * m.in_features * m.out_features for m in module.modules() if isinstance(m, nn.Linear)))


def score_flops(module: nn.Module, n: int) -> float:
    """Per-token FLOPs of the attention scores (Q·Kᵀ and weights·V, causal: (n+1)/2 keys on
    average at length n) of every CausalAttention inside `module`."""
    return float(sum(2 * 2 * m.n_heads * m.head_dim * (n + 1) / 2 for m in module.modules()
                     if isinstance(m, CausalAttention)))


def check_dims(d_model: int, n_heads: int) -> None:
    """Refuse a width that does not split into `n_heads` heads of even width (RoPE pairs)."""
    if n_heads < 1 or d_model % n_heads or (d_model // n_heads) % 2:
        raise PonderError(f"d_model={d_model} must split into n_heads={n_heads} heads of even width")
