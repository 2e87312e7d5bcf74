"""Transformer pieces shared by the recursive reasoners.

Implements the block used by TRM ("Less is More: Recursive Reasoning with Tiny Networks",
arXiv 2510.04871) and HRM ("Hierarchical Reasoning Model", arXiv 2506.21734): a POST-norm block

    h = rms_norm(h + mixer(h));  h = rms_norm(h + swiglu(h))

with a parameter-free RMSNorm, a SwiGLU feed-forward, and as mixer either non-causal multi-head
self-attention (optionally with rotary position embeddings; ponder.models.attention) or TRM's
sequence MLP ("mlp_t").
`ReasoningNet` stacks blocks and adds the input injection first.

Speed notes (CPU, fp32): every projection is one large bias-free matmul over all b*n tokens
(q/k/v fused, gate/up fused) and attention goes through `scaled_dot_product_attention`, so large
matmuls dominate. The elementwise glue is memory-bound, so three small autograd Functions cut its
passes and temporaries: RMSNorm (one reduction, closed-form backward), the SwiGLU gate (gradient
written into one buffer) and the head split (RoPE fused with the head-major layout copy). Under
no_grad (the recursion cycles that are not differentiated) blocks work in place on fresh buffers.
The fused head split and SDPA's CPU kernel have no forward-mode rule, so `plain_ops()` swaps in plain PyTorch ops for
forward-mode differentiation (torch.func.jvp / vmap: the forward-mode gradient estimators).
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from ponder.models.compiled import compiled, signature

SWIGLU_MULTIPLE = 64  # SwiGLU hidden width is rounded up to a multiple of this
CHUNK_BYTES = 24 * 2**20  # ReasoningNet runs big batches in row chunks with intermediates below this (CPU)
ACCELERATOR_CHUNK_SHARE = 8  # on a GPU, chunk only if one intermediate would take 1/8 of its memory
TRUNC_STDS = 2.0  # truncated-normal init cuts at +- this many standard deviations
_PLAIN_OPS = [False]  # set by plain_ops(): use ops every autodiff mode supports


@contextlib.contextmanager
def plain_ops() -> Iterator[None]:
    """Inside this context the head split and attention use plain, fully differentiable PyTorch
    ops (slower; for forward-mode AD, which the fused autograd Function and SDPA's CPU kernel do
    not support)."""
    previous = _PLAIN_OPS[0]
    _PLAIN_OPS[0] = True
    try:
        yield
    finally:
        _PLAIN_OPS[0] = previous


def plain_ops_requested() -> bool:
    """Inside `plain_ops()` (forward-mode AD), whether or not torch.compile traces."""
    return _PLAIN_OPS[0]


def plain_ops_active() -> bool:
    """Use plain out-of-place ops instead of the hand-fused autograd Functions and in-place
    buffers: under `plain_ops()` (forward-mode AD) and while torch.compile traces (a custom
    Function's `once_differentiable` backward and the rotary's strided `out=` writes break its
    graph, and inductor fuses the elementwise glue itself)."""
    return plain_ops_requested() or torch.compiler.is_compiling()


def trunc_normal_(weight: Tensor, std: float) -> Tensor:
    """Fill `weight` in place from N(0, std^2) truncated to +- TRUNC_STDS * std."""
    return nn.init.trunc_normal_(weight, mean=0.0, std=std, a=-TRUNC_STDS * std, b=TRUNC_STDS * std)


def lecun_linear(in_features: int, out_features: int) -> nn.Linear:
    """Bias-free Linear with LeCun init: truncated normal, std 1/sqrt(in_features)."""
    layer = nn.Linear(in_features, out_features, bias=False)
    with torch.no_grad():
        trunc_normal_(layer.weight, 1.0 / math.sqrt(in_features))
    return layer


def _rstd(x: Tensor, eps: float) -> Tensor:
    """(..., 1) reciprocal root-mean-square of x (..., d): one reduction pass, no (..., d) temporary."""
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)  # (..., 1)
    if torch.is_grad_enabled() and x.requires_grad:  # plain autograd (plain_ops, compile) keeps the norm
        return (norm.square() / x.shape[-1] + eps).rsqrt()
    return norm.square_().div_(x.shape[-1]).add_(eps).rsqrt_()


class _RMSNorm(torch.autograd.Function):
    """y = x * rstd(x) with the closed-form gradient rstd * (g - y * mean(g * y))."""

    @staticmethod
    def forward(ctx, x: Tensor, eps: float) -> Tensor:  # type: ignore[override]
        rstd = _rstd(x, eps)  # (..., 1)
        y = x * rstd  # (..., d)
        ctx.save_for_backward(y, rstd)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        y, rstd = ctx.saved_tensors
        mean_gy = (grad * y).sum(-1, keepdim=True).div_(-y.shape[-1])  # (..., 1), negated
        return torch.addcmul(grad, y, mean_gy).mul_(rstd), None  # (..., d)


def rms_norm(x: Tensor, eps: float) -> Tensor:
    """RMSNorm over the last axis without a learnable scale.

    Same values as `F.rms_norm(x, (d,), eps=eps)`, but on CPU that op decomposes into
    pow/mean/add/rsqrt/mul and records all of them for autograd; this version does one reduction
    and one multiply forward and a closed-form backward (about 1.7x faster forward + backward).

    Args:
        x: (..., d).
        eps: added to the mean square.
    Returns:
        (..., d) with unit root-mean-square along the last axis.
    """
    if torch.is_grad_enabled() and x.requires_grad and not plain_ops_active():
        return _RMSNorm.apply(x, eps)
    return x * _rstd(x, eps)


def rms_norm_(x: Tensor, eps: float) -> Tensor:
    """In-place `rms_norm` for tensors outside autograd (the no-grad recursion cycles)."""
    return x.mul_(_rstd(x, eps))


def swiglu_hidden(width: int, expansion: float) -> int:
    """SwiGLU hidden size: expansion * width * 2/3 rounded up to a multiple of SWIGLU_MULTIPLE."""
    return SWIGLU_MULTIPLE * math.ceil(expansion * width * 2 / 3 / SWIGLU_MULTIPLE)


class _SwiGLUGate(torch.autograd.Function):
    """silu(gate) * up from the fused (..., 2h) projection.

    The backward writes both halves of the (..., 2h) gradient in place of autograd's separate
    products plus the `cat` that undoing `chunk` would cost.
    """

    @staticmethod
    def forward(ctx, gate_up: Tensor) -> Tensor:  # type: ignore[override]
        gate, up = gate_up.chunk(2, dim=-1)  # (..., h) each, strided views
        act = F.silu(gate)  # (..., h)
        ctx.save_for_backward(gate_up, act)
        return act * up  # (..., h)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        gate_up, act = ctx.saved_tensors
        gate, up = gate_up.chunk(2, dim=-1)
        grad_gate_up = torch.empty_like(gate_up)  # (..., 2h)
        grad_gate, grad_up = grad_gate_up.chunk(2, dim=-1)
        torch.mul(grad, act, out=grad_up)
        torch.mul(grad, up, out=grad_gate)
        torch.ops.aten.silu_backward.grad_input(grad_gate, gate, grad_input=grad_gate)
        return grad_gate_up


class SwiGLU(nn.Module):
    """Gated feed-forward down(silu(gate(x)) * up(x)) with gate and up fused in one Linear.

    Args:
        width: size of the last input axis.
        expansion: hidden size factor (see `swiglu_hidden`).
    """

    def __init__(self, width: int, expansion: float):
        super().__init__()
        self.hidden = swiglu_hidden(width, expansion)
        self.gate_up = lecun_linear(width, 2 * self.hidden)
        self.down = lecun_linear(self.hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        """Args: x (..., width). Returns: (..., width)."""
        gate_up = self.gate_up(x)  # (..., 2 * hidden)
        if plain_ops_active():
            gate, up = gate_up.chunk(2, dim=-1)
            return self.down(F.silu(gate) * up)  # (..., width)
        if torch.is_grad_enabled():
            return self.down(_SwiGLUGate.apply(gate_up))  # (..., width)
        # no graph to keep: activate in the fresh gate_up buffer instead of two new tensors
        gate, up = gate_up.chunk(2, dim=-1)  # (..., hidden) each, strided views
        return self.down(F.silu(gate, inplace=True).mul_(up))  # (..., width)


class SequenceMLP(nn.Module):
    """TRM's "mlp_t" mixer: a SwiGLU across the sequence axis (same weights for every channel).

    Args:
        seq_len: number of positions n (fixed; the weights are per position).
        expansion: hidden size factor, hidden = swiglu_hidden(seq_len, expansion).
    """

    def __init__(self, seq_len: int, expansion: float):
        super().__init__()
        self.mlp = SwiGLU(seq_len, expansion)

    def forward(self, x: Tensor) -> Tensor:
        """Args: x (b, n, d). Returns: (b, n, d) (a strided view of a (b, d, n) result)."""
        return self.mlp(x.transpose(1, 2)).transpose(1, 2)  # (b, d, n) -> (b, n, d)


class TransformerBlock(nn.Module):
    """POST-norm block: h = rms_norm(h + mixer(h)); h = rms_norm(h + swiglu(local(h))), where
    `local` is the optional board convolution (identity without one).

    Args:
        mixer: token mixer mapping (b, n, d) -> (b, n, d) (ponder.models.attention.Attention or SequenceMLP).
        d_model: model width.
        expansion: SwiGLU hidden size factor.
        eps: RMSNorm epsilon.
        local: a module applied to the feed-forward's input (ponder.models.board.BoardConv), or None.
    """

    def __init__(self, mixer: nn.Module, d_model: int, expansion: float, eps: float,
                 local: nn.Module | None = None):
        super().__init__()
        self.mixer = mixer
        self.local = local
        self.mlp = SwiGLU(d_model, expansion)
        self.eps = eps

    def _feed_forward(self, h: Tensor) -> Tensor:
        return self.mlp(h if self.local is None else self.local(h))  # (b, n, d)

    def forward(self, h: Tensor) -> Tensor:
        """Args: h (b, n, d). Returns: (b, n, d) with unit RMS over d."""
        if torch.is_grad_enabled() or plain_ops_active():
            h = rms_norm(h + self.mixer(h), self.eps)  # (b, n, d)
            return rms_norm(h + self._feed_forward(h), self.eps)  # (b, n, d)
        # no graph to keep: add the residual into the fresh sublayer output and normalise in place
        h = rms_norm_(_residual(self.mixer(h), h), self.eps)  # (b, n, d)
        return rms_norm_(_residual(self._feed_forward(h), h), self.eps)  # (b, n, d)


def _residual(sub: Tensor, h: Tensor) -> Tensor:
    """sub + h for a fresh sublayer output `sub`: in place when `sub` holds the stream's dtype. Under
    bf16 autocast `sub` is bf16 while the residual stream (and the carried state) stays float32,
    so the sum is a new float32 tensor: adding into the bf16 buffer would round the stream."""
    return sub.add_(h) if sub.dtype == h.dtype else h + sub


class ReasoningNet(nn.Module):
    """A stack of blocks applied to the sum of a state and its injection (TRM's net, HRM's levels).

    Batch rows are independent, so a large batch runs in row chunks whose widest intermediate
    stays under CHUNK_BYTES: glibc hands out blocks over 32 MiB as fresh mmaps (a (5184, 2816)
    matmul into a fresh 58 MB output ran at 176 GFLOP/s vs 212 into reused memory here), and
    smaller chunks stay in cache for the elementwise glue. Measured on the TRM-size step: 4-5%
    faster than one chunk; results are identical up to float rounding.

    Args:
        blocks: the blocks, applied in order.
        row_elements: elements of the widest intermediate per batch row (e.g. n * 2h); 0 = never
            chunk.
    """

    def __init__(self, blocks: Sequence[nn.Module], row_elements: int = 0):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.row_elements = row_elements
        self.compile_backend: str | None = None  # set by `compile_stack`

    def compile_stack(self, backend: str = "inductor") -> None:
        """Run the stack through torch.compile from now on (`train.compile`). The batch axis is
        marked dynamic, so one graph serves every batch size (training's, evaluation's, the
        early-exit batches that shrink): one graph per grad mode and autocast dtype. A deep copy
        (the EMA evaluation's) compiles its own weights: only the backend's name is kept here,
        never a function bound to this instance."""
        self.compile_backend = backend

    def forward(self, hidden: Tensor, injection: Tensor) -> Tensor:
        """Args: hidden (b, n, d), injection (b, n, d). Returns: (b, n, d) updated state."""
        h = hidden + injection  # (b, n, d)
        if self.compile_backend is not None:
            # the sum stays outside the graph: in grad mode it always requires grad (the
            # injection carries the embedding's or the latent's graph) while `hidden` sometimes
            # does not, and each requires_grad pattern of an input would be a graph of its own
            torch._dynamo.maybe_mark_dynamic(h, 0)
            return compiled(_run_stack, self.compile_backend, signature(self))(self, h)
        b = h.shape[0]
        rows = chunk_rows(b, self.row_elements * h.element_size(), h.device)
        if b <= rows:
            return _run_stack(self, h)
        n_chunks = -(-b // max(1, rows))
        sizes = [b // n_chunks + (i < b % n_chunks) for i in range(n_chunks)]
        # split (one backward cat), not tensor_split (a zero-filled full gradient per chunk)
        return torch.cat([_run_stack(self, part) for part in h.split(sizes)])  # (b, n, d)


def chunk_rows(b: int, row_bytes: int, device: torch.device) -> int:
    """Batch rows per chunk of a `ReasoningNet` call whose widest intermediate takes `row_bytes`
    per row (`b` or more: no chunking).

    CPU: chunks under CHUNK_BYTES (the glibc mmap threshold; see ReasoningNet). An accelerator
    runs the whole batch in one call (about 29 small GEMMs per layer at TRM's batch 768 would
    leave a GPU idle between launches) unless that intermediate would take more than
    1/ACCELERATOR_CHUNK_SHARE of the device's memory.
    """
    if row_bytes <= 0:
        return b
    if device.type == "cpu":
        return max(1, CHUNK_BYTES // row_bytes)
    if device.type == "cuda":
        budget = torch.cuda.get_device_properties(device).total_memory // ACCELERATOR_CHUNK_SHARE
        return max(1, budget // row_bytes)
    return b


def _run_stack(net: ReasoningNet, h: Tensor) -> Tensor:
    """The blocks of `net` on h (b, n, d) -> (b, n, d)."""
    for block in net.blocks:
        h = block(h)  # (b, n, d)
    return h


