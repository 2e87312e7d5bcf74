"""Recursive reasoners: one ACT step of TRM or HRM.

TRM ("Less is More: Recursive Reasoning with Tiny Networks", arXiv 2510.04871) keeps an answer
state y and a latent z and refines them with ONE small net: each of T outer cycles runs n latent
updates z = net(z, y + x) and one answer update y = net(y, z). Only the last cycle is
differentiated (the first T-1 run under no_grad).

HRM ("Hierarchical Reasoning Model", arXiv 2506.21734) keeps a high-level state z_H (stored as
State.y) and a low-level state z_L (State.z) with two nets: each of T high cycles runs n updates
z_L = l_net(z_L, z_H + x) and one z_H = h_net(z_H, z_L). Only the very last z_L and z_H updates
are differentiated (the "1-step gradient").

The model only knows one ACT step; halting, losses and the loop over steps live elsewhere. The
carried state is always returned detached, while the step outputs (logits, halting logits) are
read from the non-detached answer state so a loss on them trains every part of the model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ponder.errors import PonderError
from ponder.models.adapters import HyperLoRA, soft_clamp
from ponder.models.blocks import (
    Attention,
    ReasoningNet,
    Rotary,
    SequenceMLP,
    TransformerBlock,
    swiglu_hidden,
    trunc_normal_,
)
from ponder.types import State, StepOutput

STYLES = ("trm", "hrm")
MIXERS = ("attention", "mlp")
POSITIONS = ("rope", "learned", "none")


@dataclass(kw_only=True)
class ModelConfig:
    """Architecture of a recursive reasoner.

    Attributes:
        style: "trm" (one net, y/z) or "hrm" (l_net/h_net, z_H/z_L).
        d_model: width d.
        n_heads: attention heads (must divide d_model).
        n_layers: blocks per net (per level for HRM).
        mixer: "attention" (self-attention) or "mlp" (TRM's sequence MLP, mlp_t).
        positions: "rope" (rotary, attention only), "learned" (added to the embedding) or "none".
        expansion: SwiGLU hidden size factor.
        h_cycles: T, outer (high-level) cycles per ACT step.
        l_cycles: n, latent (low-level) updates per outer cycle.
        norm_eps: RMSNorm epsilon.
        rope_theta: rotary frequency base.
        adapter_rank: r of the HyperLoRA per-sample delta on the net's input (0 = off; see
            ponder.models.adapters); context = input embedding pooled over positions.
        adapter_max_norm, adapter_target_norm, adapter_reg_weight, adapter_scale: its guards.
        logit_clamp, logit_clamp_max: soft clamp of the token logits, identity up to t, bounded by
            m (0 = off).
        readout_init_scale: readout std = readout_init_scale / sqrt(d). 1.0 is TRM's LeCun init;
            the default 0.1 starts from near-uniform predictions (all Sudoku and maze figures use
            it), but it slows learning parity badly; the parity presets use 1.0 (DESIGN.md).
    """

    style: str = "trm"
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 2
    mixer: str = "attention"
    positions: str = "rope"
    expansion: float = 4.0
    h_cycles: int = 2
    l_cycles: int = 2
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    adapter_rank: int = 0
    adapter_max_norm: float = 3.0
    adapter_target_norm: float = 1.0
    adapter_reg_weight: float = 1e-3
    adapter_scale: float = 1.0
    logit_clamp: float = 0.0
    logit_clamp_max: float = 100.0
    readout_init_scale: float = 0.1

    def validate(self) -> None:
        """Raise PonderError (one line) for a value the model cannot be built with."""
        for name, allowed in (("style", STYLES), ("mixer", MIXERS), ("positions", POSITIONS)):
            value = getattr(self, name)
            if value not in allowed:
                raise PonderError(f"model {name} {value!r} unknown; allowed: {', '.join(allowed)}")
        for name in ("d_model", "n_heads", "n_layers", "h_cycles", "l_cycles"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise PonderError(f"model {name} must be a positive integer, got {value!r}")
        if self.d_model % self.n_heads:
            raise PonderError(f"model d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if self.mixer == "attention" and self.positions == "rope" and (self.d_model // self.n_heads) % 2:
            raise PonderError(f"model head size {self.d_model // self.n_heads} must be even for rope")
        if self.adapter_rank < 0 or self.adapter_max_norm <= 0 or self.adapter_target_norm < 0:
            raise PonderError("model adapter_rank must be >= 0, adapter_max_norm > 0, adapter_target_norm >= 0")
        if self.logit_clamp < 0 or (self.logit_clamp > 0 and self.logit_clamp_max <= self.logit_clamp):
            raise PonderError(f"model logit_clamp must be 0 (off) or below logit_clamp_max, got "
                              f"{self.logit_clamp} and {self.logit_clamp_max}")
        for name in ("expansion", "norm_eps", "rope_theta", "readout_init_scale"):
            value = getattr(self, name)
            if not value > 0:
                raise PonderError(f"model {name} must be positive, got {value!r}")


class RecursiveReasoner(nn.Module):
    """TRM / HRM recursive reasoner exposing one ACT step.

    Initialisation: every Linear in the nets is LeCun (truncated normal at +-2 std, std
    1/sqrt(fan_in), no biases); token and learned position embeddings have std 1/sqrt(d) and are
    multiplied by sqrt(d) (TRM), so the input x has unit-scale entries; learned positions are
    averaged in as (tok + pos) / sqrt(2); the y/z init vectors are truncated normal std 1; the
    readout is truncated normal std cfg.readout_init_scale / sqrt(d). The halting head is passed
    in and keeps its own initialisation. The y/z init vectors only get a gradient when the first net call is differentiated (TRM with T=1, HRM with
    T=n=1); otherwise they stay at their init, like TRM's fixed buffers.

    Args:
        cfg: architecture (validated here).
        vocab_size: number of token ids v.
        seq_len: number of positions n (fixed: learned positions and the mlp mixer need it).
        halting: module with `logits(y: (b, n, d)) -> (b,)`, called on the new answer state every
            step (with gradient). It becomes a submodule, so its parameters are the model's.
    """

    def __init__(self, cfg: ModelConfig, *, vocab_size: int, seq_len: int, halting: nn.Module):
        super().__init__()
        cfg.validate()
        if vocab_size <= 0 or seq_len <= 0:
            raise PonderError(f"model needs positive vocab_size and seq_len, got {vocab_size}, {seq_len}")
        self.cfg, self.vocab_size, self.seq_len = cfg, vocab_size, seq_len
        d = cfg.d_model
        self.embed_scale = math.sqrt(d)
        self.embed = nn.Embedding(vocab_size, d)
        self.pos = nn.Parameter(torch.empty(seq_len, d)) if cfg.positions == "learned" else None
        use_rope = cfg.positions == "rope" and cfg.mixer == "attention"
        self.rotary = Rotary(d // cfg.n_heads, seq_len, cfg.rope_theta) if use_rope else None
        if cfg.style == "trm":
            self.net = self._make_net()
        else:
            self.l_net, self.h_net = self._make_net(), self._make_net()
        self.y_init = nn.Parameter(torch.empty(d))
        self.z_init = nn.Parameter(torch.empty(d))
        self.readout = nn.Linear(d, vocab_size, bias=False)
        self.halting = halting
        self.adapter = HyperLoRA(d, d, cfg.adapter_rank, max_norm=cfg.adapter_max_norm,
                                 target_norm=cfg.adapter_target_norm, reg_weight=cfg.adapter_reg_weight,
                                 scale=cfg.adapter_scale) if cfg.adapter_rank > 0 else None
        with torch.no_grad():
            trunc_normal_(self.embed.weight, 1.0 / math.sqrt(d))
            if self.pos is not None:
                trunc_normal_(self.pos, 1.0 / math.sqrt(d))
            trunc_normal_(self.y_init, 1.0)
            trunc_normal_(self.z_init, 1.0)
            trunc_normal_(self.readout.weight, cfg.readout_init_scale / math.sqrt(d))

    def _make_net(self) -> ReasoningNet:
        cfg = self.cfg
        blocks = []
        for _ in range(cfg.n_layers):
            if cfg.mixer == "attention":
                mixer: nn.Module = Attention(cfg.d_model, cfg.n_heads, self.rotary)
            else:
                mixer = SequenceMLP(self.seq_len, cfg.expansion)
            blocks.append(TransformerBlock(mixer, cfg.d_model, cfg.expansion, cfg.norm_eps))
        return ReasoningNet(blocks, row_elements=self._row_elements())

    def _row_elements(self) -> int:
        """Elements of the widest intermediate per batch row (sizes ReasoningNet's row chunks)."""
        cfg, n = self.cfg, self.seq_len
        widest = n * 2 * swiglu_hidden(cfg.d_model, cfg.expansion)  # SwiGLU gate/up projection
        if cfg.mixer == "attention":
            return max(widest, n * 3 * cfg.d_model)  # q/k/v projection
        return max(widest, cfg.d_model * 2 * swiglu_hidden(n, cfg.expansion))  # sequence MLP

    # ----------------------------------------------------------------------------- state

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        """Fresh latents from the learned init vectors.

        Args:
            batch_size: b.
            device: where to put them (default: the model's device).
        Returns:
            State with y, z of shape (b, n, d), contiguous.
        """
        shape = (batch_size, self.seq_len, self.cfg.d_model)
        y = self.y_init.to(device).expand(shape).contiguous()  # (b, n, d)
        z = self.z_init.to(device).expand(shape).contiguous()  # (b, n, d)
        return State(y, z)

    def reset_state(self, state: State, mask: Tensor) -> State:
        """Fresh latents in the rows where mask (b,) is True, `state` elsewhere."""
        return state.where(mask, self.init_state(state.y.shape[0], state.y.device))

    # ----------------------------------------------------------------------------- step

    def embed_inputs(self, inputs: Tensor) -> Tensor:
        """Args: inputs (b, n) int64. Returns: x (b, n, d), scaled by sqrt(d)."""
        x = self.embed(inputs)  # (b, n, d)
        if self.pos is not None:
            return (x + self.pos) * (self.embed_scale / math.sqrt(2.0))  # (b, n, d)
        return x * self.embed_scale  # (b, n, d)

    def step(self, state: State, inputs: Tensor) -> tuple[State, StepOutput]:
        """One ACT step: T cycles of recursion, then readout and halting logits.

        Args:
            state: carry with y, z (b, n, d) (from init_state / reset_state / a previous step).
            inputs: (b, n) int64 tokens, n == seq_len.
        Returns:
            new state (detached) and StepOutput(logits (b, n, v), halt_logits (b,)), both computed
            from the non-detached answer state.
        """
        if inputs.shape[1] != self.seq_len:
            raise ValueError(f"inputs have {inputs.shape[1]} positions, model built for {self.seq_len}")
        x = self.embed_inputs(inputs)  # (b, n, d)
        if self.adapter is not None:
            self.adapter.prepare(x.mean(1))  # context (b, d): the pooled input embedding
        if self.cfg.style == "trm":
            y, z = self._trm_cycles(state.y, state.z, x)
        else:
            y, z = self._hrm_cycles(state.y, state.z, x)
        logits = self.readout(y)  # (b, n, v)
        if self.cfg.logit_clamp > 0:
            logits = soft_clamp(logits, self.cfg.logit_clamp, self.cfg.logit_clamp_max)
        halt = self.halting.logits(y)  # (b,), or ((b,), aux dict) for heads with several logits
        halt_logits, aux = halt if isinstance(halt, tuple) else (halt, {})
        return State(y.detach(), z.detach()), StepOutput(logits=logits, halt_logits=halt_logits, aux=aux)

    def forward(self, state: State, inputs: Tensor) -> tuple[State, StepOutput]:
        """Same as `step`."""
        return self.step(state, inputs)

    def pop_aux_loss(self) -> Tensor | None:
        """Auxiliary loss of the differentiated steps since the last call (the adapter's norm
        regulariser), or None when there is none. The training loop adds it to the loss."""
        return self.adapter.pop_aux_loss() if self.adapter is not None else None

    def _net(self, net: ReasoningNet, hidden: Tensor, injection: Tensor) -> Tensor:
        """net(hidden, injection), with the adapter's per-sample delta on the input if enabled."""
        if self.adapter is not None:  # the net sums its inputs: h -> h + s * dW_i h
            injection = injection + self.adapter.delta(hidden + injection)
        return net(hidden, injection)

    def _trm_cycles(self, y: Tensor, z: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """TRM recursion: T-1 cycles without gradient, then one cycle (n + 1 net calls) with it."""
        T, n = self.cfg.h_cycles, self.cfg.l_cycles
        with torch.no_grad():
            for _ in range(T - 1):
                y, z = self._trm_cycle(y, z, x, n)
        return self._trm_cycle(y, z, x, n)

    def _trm_cycle(self, y: Tensor, z: Tensor, x: Tensor, n: int) -> tuple[Tensor, Tensor]:
        injection = y + x  # (b, n, d), fixed during the latent updates
        for _ in range(n):
            z = self._net(self.net, z, injection)  # (b, n, d) latent update
        y = self._net(self.net, y, z)  # (b, n, d) answer update
        return y, z

    def _hrm_cycles(self, z_h: Tensor, z_l: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """HRM recursion: everything without gradient except the last z_L and z_H updates."""
        T, n = self.cfg.h_cycles, self.cfg.l_cycles
        with torch.no_grad():
            for cycle in range(T):
                last = cycle == T - 1
                injection = z_h + x  # (b, n, d), fixed during the low-level updates
                for _ in range(n - 1 if last else n):
                    z_l = self._net(self.l_net, z_l, injection)  # (b, n, d) low-level update
                if not last:
                    z_h = self._net(self.h_net, z_h, z_l)  # (b, n, d) high-level update
        z_l = self._net(self.l_net, z_l, z_h + x)  # (b, n, d) with gradient
        z_h = self._net(self.h_net, z_h, z_l)  # (b, n, d) with gradient
        return z_h, z_l

    # ----------------------------------------------------------------------------- estimator hook

    def cycle(self, packed: Tensor, x: Tensor) -> Tensor:
        """One full outer cycle on the packed state, with gradient: the step map of the recursion.

        TRM: n updates z = net(z, y + x), then y = net(y, z). HRM: n updates z_L = l_net(z_L,
        z_H + x), then z_H = h_net(z_H, z_L). A gradient estimator (ponder.estimators) iterates
        this map; `_trm_cycles` is T - 1 of them without gradient and one with.

        Args:
            packed: (b, 2, n, d) state from `pack_state` (answer state first).
            x: (b, n, d) embedded inputs.
        Returns: (b, 2, n, d) the next packed state.
        """
        y, z = unpack_state(packed)
        if self.cfg.style == "trm":
            y, z = self._trm_cycle(y, z, x, self.cfg.l_cycles)
        else:
            injection = y + x  # (b, n, d)
            for _ in range(self.cfg.l_cycles):
                z = self.l_net(z, injection)  # (b, n, d)
            y = self.h_net(y, z)  # (b, n, d)
        return pack_state(y, z)

    def recursion_parameters(self) -> list[nn.Parameter]:
        """Parameters of the recursion's step map (the net or nets; not embedding, readout, head)."""
        nets = (self.net,) if self.cfg.style == "trm" else (self.l_net, self.h_net)
        return [p for net in nets for p in net.parameters()]


def pack_state(y: Tensor, z: Tensor) -> Tensor:
    """(b, n, d) answer and latent states -> (b, 2, n, d) batch-first packed state."""
    return torch.stack([y, z], 1)


def unpack_state(packed: Tensor) -> tuple[Tensor, Tensor]:
    """Inverse of `pack_state`: (b, 2, n, d) -> (y, z), each (b, n, d)."""
    return packed[:, 0], packed[:, 1]
