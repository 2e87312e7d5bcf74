"""Gated DeltaNet in plain PyTorch: the gated delta rule (recurrent and chunked forms) and the layer.

Gated Delta Networks (Yang, Kautz, Hatamizadeh, arXiv 2412.06464). Per head, with the state S a
(d_k, d_v) matrix (the layout of flash-linear-attention, so S_paper = Sᵀ):

    S_t = α_t S_{t−1}(I − β_t k_t k_tᵀ) + β_t v_t k_tᵀ        (paper's notation, S_paper (d_v, d_k))
    o_t = S_t q_t / √d_k

with α_t = exp(g_t), g_t ≤ 0. Written as one update of the decayed state S' = α_t S_{t−1}:
u_t = β_t (v_t − S'ᵀ k_t) (the value written: new value minus what the key already retrieves),
S_t = S' + k_t u_tᵀ.

The chunked form (DeltaNet's WY/UT transform, Yang et al. arXiv 2406.06484, with the gate) works
on chunks of C tokens. Inside a chunk, with Γ the cumulative log-decay (Γ_i = Σ_{j≤i} g_j) and S
the state entering the chunk, the values written satisfy a unit lower-triangular system:

    (I + L) U = βV − (βK ⊙ e^Γ) S,   L_ij = β_i e^{Γ_i−Γ_j} k_iᵀk_j (j < i), 0 elsewhere;
    O = (Q ⊙ e^Γ) S + [QKᵀ ⊙ e^{Γ_i−Γ_j} ⊙ (j ≤ i)] U;
    S ← e^{Γ_C} S + (K ⊙ e^{Γ_C−Γ})ᵀ U.

So per chunk one triangular solve replaces C sequential rank-one updates, and everything else is
matmuls. Every exponent is a difference Γ_i − Γ_j with j ≤ i (masked before `exp`), never positive,
so nothing overflows however strong the decay.

The layer (`GatedDeltaNet`), as in the paper: q, k, v from SiLU(causal depthwise convolution of
width 4) of linear projections; q and k L2-normalised per head; β = σ(W_β x); g = −exp(A_log) ·
softplus(W_a x + dt_bias) (Mamba-2's gate); output RMSNorm(o)·w ⊙ SiLU(W_g x) per head, then W_o.
`step` runs one token from a fixed-size cache (conv window and S): recurrent inference whose
memory does not grow with the sequence.

When the `fla` package (fla-core, Triton) is installed and the tensors are on CUDA, `backend="fla"`
runs the same layer through flash-linear-attention's `chunk_gated_delta_rule` kernel.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ponder.core.errors import PonderError

try:  # optional: flash-linear-attention's Triton kernels (CUDA only)
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule as _fla_chunk
except ImportError:  # pragma: no cover - depends on the environment
    _fla_chunk = None

FLA_AVAILABLE = _fla_chunk is not None


def gated_delta_rule_recurrent(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, *,
                               scale: Optional[float] = None,
                               initial_state: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """The gated delta rule one token at a time.

    Args:
        q, k: (b, h, n, d_k); v: (b, h, n, d_v); g: (b, h, n) log-decay (≤ 0); beta: (b, h, n).
        scale: multiplies q (default 1/√d_k).
        initial_state: (b, h, d_k, d_v) or None (zeros).
    Returns:
        o: (b, h, n, d_v) and the final state S: (b, h, d_k, d_v), both in float32 or q's dtype
        if wider.
    """
    b, h, n, dk = q.shape
    dv = v.shape[-1]
    dtype = torch.promote_types(q.dtype, torch.float32)
    scale = dk ** -0.5 if scale is None else scale
    q, k, v, g, beta = (t.to(dtype) for t in (q, k, v, g, beta))
    state = q.new_zeros(b, h, dk, dv) if initial_state is None else initial_state.to(dtype).clone()
    out = q.new_empty(b, h, n, dv)
    for t in range(n):
        state = state * g[:, :, t].exp()[..., None, None]  # (b, h, dk, dv): S' = α S
        kt = k[:, :, t]  # (b, h, dk)
        retrieved = (kt.unsqueeze(-2) @ state).squeeze(-2)  # (b, h, dv): S'ᵀ k
        u = beta[:, :, t, None] * (v[:, :, t] - retrieved)  # (b, h, dv)
        state = state + kt.unsqueeze(-1) * u.unsqueeze(-2)  # (b, h, dk, dv): + k uᵀ
        out[:, :, t] = (q[:, :, t].unsqueeze(-2) @ state).squeeze(-2) * scale  # (b, h, dv)
    return out, state


def gated_delta_rule_chunked(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, *,
                             chunk_size: int = 64, scale: Optional[float] = None,
                             initial_state: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """The gated delta rule in chunks of `chunk_size` tokens (WY/UT transform; module docstring).

    Same arguments and results as `gated_delta_rule_recurrent`; the sequence is padded to a
    multiple of the chunk with β = 0, g = 0, k = 0 (tokens that leave the state unchanged).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    b, h, n, dk = q.shape
    dv = v.shape[-1]
    dtype = torch.promote_types(q.dtype, torch.float32)
    scale = dk ** -0.5 if scale is None else scale
    q, k, v, g, beta = (t.to(dtype) for t in (q, k, v, g, beta))
    c = chunk_size
    pad = (-n) % c
    if pad:
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
        g, beta = F.pad(g, (0, pad)), F.pad(beta, (0, pad))
    m = (n + pad) // c
    q, k, v = (t.reshape(b, h, m, c, t.shape[-1]) for t in (q * scale, k, v))  # (b, h, m, c, ·)
    g, beta = g.reshape(b, h, m, c), beta.reshape(b, h, m, c)
    gamma = g.cumsum(-1)  # (b, h, m, c): Γ inside each chunk
    idx = torch.arange(c, device=q.device)
    strict = idx[:, None] > idx[None, :]  # (c, c) j < i
    causal = idx[:, None] >= idx[None, :]  # (c, c) j <= i
    diff = gamma[..., :, None] - gamma[..., None, :]  # (b, h, m, c, c): Γ_i − Γ_j
    decay = torch.where(causal, diff, diff.new_full((), -math.inf)).exp()  # (b, h, m, c, c), 0 above the diagonal
    kb = k * beta[..., None]  # (b, h, m, c, dk)
    lower = (kb @ k.transpose(-1, -2)) * decay * strict  # (b, h, m, c, c): L
    eye = torch.eye(c, dtype=dtype, device=q.device)
    # U = A βV and W = A (βK ⊙ e^Γ) with A = (I + L)^{-1}: one unit-triangular solve for both
    rhs = torch.cat([v * beta[..., None], kb * gamma.exp()[..., None]], dim=-1)  # (b, h, m, c, dv + dk)
    solved = torch.linalg.solve_triangular(lower + eye, rhs, upper=False, unitriangular=True)
    u_base, w = solved[..., :dv], solved[..., dv:]  # (b, h, m, c, dv), (b, h, m, c, dk)
    scores = (q @ k.transpose(-1, -2)) * decay  # (b, h, m, c, c), causal incl. the diagonal
    q_decayed = q * gamma.exp()[..., None]  # (b, h, m, c, dk)
    k_to_end = k * (gamma[..., -1:] - gamma).exp()[..., None]  # (b, h, m, c, dk): K ⊙ e^{Γ_C − Γ}
    state = q.new_zeros(b, h, dk, dv) if initial_state is None else initial_state.to(dtype)
    outs = []
    for i in range(m):  # the only sequential part: one state hand-over per chunk
        u = u_base[:, :, i] - w[:, :, i] @ state  # (b, h, c, dv): V' = U − W S
        outs.append(q_decayed[:, :, i] @ state + scores[:, :, i] @ u)  # (b, h, c, dv)
        state = state * gamma[:, :, i, -1].exp()[..., None, None] + k_to_end[:, :, i].transpose(-1, -2) @ u
    o = torch.stack(outs, dim=2).reshape(b, h, m * c, dv)[:, :, :n]  # (b, h, n, dv)
    return o, state


class ShortConv(nn.Module):
    """Causal depthwise convolution of width `size` over the sequence, then SiLU.

    Args:
        channels: feature size; size: kernel width (the current token and size−1 before it).
    """

    def __init__(self, channels: int, size: int):
        super().__init__()
        self.size = size
        self.conv = nn.Conv1d(channels, channels, size, groups=channels, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """Args: x (b, n, c). Returns: (b, n, c)."""
        y = self.conv(F.pad(x.transpose(1, 2), (self.size - 1, 0)))  # (b, c, n)
        return F.silu(y.transpose(1, 2))

    def step(self, x: Tensor, window: Tensor) -> tuple[Tensor, Tensor]:
        """One token: x (b, c) and the last size−1 inputs (b, c, size−1) -> (b, c) output, new window."""
        full = torch.cat([window, x.unsqueeze(-1)], dim=-1)  # (b, c, size)
        y = (full * self.conv.weight.squeeze(1)).sum(-1)  # (b, c)
        return F.silu(y), full[..., 1:]


@dataclass
class DeltaCache:
    """Fixed-size recurrent inference state of one `GatedDeltaNet` layer.

    Attributes:
        conv: (b, channels, conv_size − 1) last inputs of the q/k/v convolutions (q, k, v stacked).
        state: (b, h, d_k, d_v) the delta-rule state S.
    """

    conv: Tensor
    state: Tensor


def fla_inputs(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """q, k, v in the one 16-bit dtype flash-linear-attention's kernel takes: autocast's dtype when
    autocast is on, else bf16. Under autocast F.normalize (on autocast's float32 list) gives q and
    k in fp32 while v, a convolution output, is bf16; without autocast all three are fp32."""
    kind = v.device.type
    dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else torch.bfloat16
    return q.to(dtype), k.to(dtype), v.to(dtype)


class GatedDeltaNet(nn.Module):
    """The Gated DeltaNet token mixer (module docstring).

    Args:
        d_model: model width.
        n_heads: number of heads h.
        head_dim: d_k per head (d_v = expand_v * d_k).
        expand_v: value width factor.
        conv_size: width of the short causal convolutions.
        mode: "chunk" (WY/UT, training and prefill) or "recurrent" (token by token).
        chunk_size: tokens per chunk in "chunk" mode.
        backend: "torch" (this module's code) or "fla" (flash-linear-attention's kernel; needs
            the package and CUDA tensors).
    """

    def __init__(self, d_model: int, n_heads: int, head_dim: int, *, expand_v: float = 1.0, conv_size: int = 4,
                 mode: str = "chunk", chunk_size: int = 64, backend: str = "torch"):
        super().__init__()
        if mode not in ("chunk", "recurrent"):
            raise PonderError(f"deltanet mode must be chunk or recurrent, got {mode!r}")
        if backend not in ("torch", "fla"):
            raise PonderError(f"deltanet backend must be torch or fla, got {backend!r}")
        self.n_heads, self.dk = n_heads, head_dim
        self.dv = int(head_dim * expand_v)
        self.mode, self.chunk_size, self.backend = mode, chunk_size, backend
        key, value = n_heads * self.dk, n_heads * self.dv
        self.q_proj = nn.Linear(d_model, key, bias=False)
        self.k_proj = nn.Linear(d_model, key, bias=False)
        self.v_proj = nn.Linear(d_model, value, bias=False)
        self.a_proj = nn.Linear(d_model, n_heads, bias=False)
        self.b_proj = nn.Linear(d_model, n_heads, bias=False)
        self.g_proj = nn.Linear(d_model, value, bias=False)
        self.o_proj = nn.Linear(value, d_model, bias=False)
        self.conv = ShortConv(2 * key + value, conv_size)
        # Mamba-2's decay parameters: A in [1, 16], dt log-uniform in [1e-3, 1e-1] (dt_bias = softplus⁻¹(dt))
        self.A_log = nn.Parameter(torch.empty(n_heads).uniform_(1, 16).log())
        dt = torch.exp(torch.rand(n_heads) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3)).clamp(min=1e-4)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        self.norm_weight = nn.Parameter(torch.ones(self.dv))
        self.eps = 1e-5

    def gates(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(..., d) -> g (..., h) log-decay ≤ 0 and beta (..., h) in (0, 1)."""
        g = -self.A_log.float().exp() * F.softplus(self.a_proj(x).float() + self.dt_bias)
        return g, torch.sigmoid(self.b_proj(x).float())

    def _split(self, mixed: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(..., 2·h·dk + h·dv) conv output -> L2-normalised q, k (..., h, dk) and v (..., h, dv)."""
        key = self.n_heads * self.dk
        q, k, v = mixed.split([key, key, self.n_heads * self.dv], dim=-1)
        q = F.normalize(q.unflatten(-1, (self.n_heads, self.dk)), dim=-1)
        k = F.normalize(k.unflatten(-1, (self.n_heads, self.dk)), dim=-1)
        return q, k, v.unflatten(-1, (self.n_heads, self.dv))

    def _project(self, x: Tensor) -> Tensor:
        return torch.cat([self.q_proj(x), self.k_proj(x), self.v_proj(x)], dim=-1)

    def _output(self, o: Tensor, x: Tensor) -> Tensor:
        """(..., h, dv) rule output and (..., d) layer input -> (..., d): gated RMSNorm, then W_o."""
        o = F.rms_norm(o, (self.dv,), self.norm_weight, self.eps)
        gate = F.silu(self.g_proj(x).unflatten(-1, (self.n_heads, self.dv)))
        return self.o_proj((o.to(x.dtype) * gate).flatten(-2))

    def forward(self, x: Tensor, *, return_state: bool = False):
        """Args: x (b, n, d). Returns: (b, n, d), and the final state (b, h, dk, dv) when asked."""
        q, k, v = self._split(self.conv(self._project(x)))  # (b, n, h, ·)
        g, beta = self.gates(x)  # (b, n, h)
        if self.backend == "fla":
            if _fla_chunk is None or not x.is_cuda:
                raise PonderError("deltanet backend fla needs the fla package (fla-core) and CUDA tensors")
            o, state = _fla_chunk(*fla_inputs(q, k, v), g, beta, scale=self.dk ** -0.5, output_final_state=True)
        else:
            rule = gated_delta_rule_chunked if self.mode == "chunk" else gated_delta_rule_recurrent
            kw = {"chunk_size": self.chunk_size} if self.mode == "chunk" else {}
            o, state = rule(*(t.transpose(1, 2) for t in (q, k, v, g, beta)), **kw)  # (b, h, n, dv)
            o = o.transpose(1, 2)  # (b, n, h, dv)
        y = self._output(o, x)
        return (y, state) if return_state else y

    def rule_flops_per_token(self) -> float:
        """Matmul FLOPs per token of the chunked delta rule (projections excluded): per chunk of c
        tokens and per head, βK·Kᵀ and Q·Kᵀ (2c²d_k each), the triangular solve (c²(d_k + d_v)),
        scores·U (2c²d_v) and the state products W·S, Q·S, Kᵀ·U (2c·d_k·d_v each)."""
        c, dk, dv = self.chunk_size, self.dk, self.dv
        per_chunk = 4 * c * c * dk + c * c * (dk + dv) + 2 * c * c * dv + 6 * c * dk * dv
        return self.n_heads * per_chunk / c

    def empty_cache(self, batch: int, device: torch.device | None = None) -> DeltaCache:
        """A fresh recurrent cache for `batch` sequences."""
        channels = self.conv.conv.in_channels
        return DeltaCache(torch.zeros(batch, channels, self.conv.size - 1, device=device),
                          torch.zeros(batch, self.n_heads, self.dk, self.dv, device=device))

    def step(self, x: Tensor, cache: DeltaCache) -> tuple[Tensor, DeltaCache]:
        """One token of recurrent inference: x (b, d) -> (b, d) and the updated fixed-size cache."""
        mixed, window = self.conv.step(self._project(x), cache.conv)
        q, k, v = self._split(mixed)  # (b, h, ·)
        g, beta = self.gates(x)  # (b, h)
        o, state = gated_delta_rule_recurrent(q[:, :, None], k[:, :, None], v[:, :, None], g[..., None],
                                              beta[..., None], initial_state=cache.state)
        return self._output(o[:, :, 0], x), DeltaCache(window, state)
