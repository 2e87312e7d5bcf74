"""Recursive reasoners: one ACT step of TRM or HRM.

TRM ("Less is More: Recursive Reasoning with Tiny Networks", arXiv 2510.04871) keeps an answer
state y and a latent z and refines them with ONE small net: each of T outer cycles runs n latent
updates z = net(z, y + x) and one answer update y = net(y, z). Only the last cycle is
differentiated (the first T-1 run under no_grad).

HRM ("Hierarchical Reasoning Model", arXiv 2506.21734) keeps a high-level state z_H (stored as
State.y) and a low-level state z_L (State.z) with two nets: each of T high cycles runs n updates
z_L = l_net(z_L, z_H + x) and one z_H = h_net(z_H, z_L). Only the very last z_L and z_H updates
are differentiated (the "1-step gradient").

The model only knows one ACT step, and it is composed of parts that every training path uses
(the default recursion and every gradient estimator alike):

- `prepare(batch) -> StepContext`: per-sample preparation, once per batch: embedded inputs plus
  the task's conditioning (a learned per-puzzle embedding or pooled context tokens) and the
  adapter's per-sample factors;
- `cycle(y, z, ctx)`: one outer cycle (n latent updates, then one answer update);
- `recursion(y, z, ctx)`: T cycles with the style's gradient rule (TRM: the last cycle; HRM:
  the last two net calls);
- `output(y) -> StepOutput`: readout (with the soft logit clamp) and halting logits;
- `step(state, ctx)` = recursion, then output; the carried state is returned detached.

Halting, losses and the loop over steps live elsewhere.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from ponder.core.errors import PonderError
from ponder.core.settings import check, setting
from ponder.core.types import Batch, Knob, State, StepOutput
from ponder.models.adapters import AdapterFactors, HyperLoRA, soft_clamp
from ponder.models.attention import Attention, Rotary
from ponder.models.blocks import ReasoningNet, SequenceMLP, TransformerBlock, swiglu_hidden, trunc_normal_
from ponder.models.board import BoardConv

STYLES = ("trm", "hrm")
MIXERS = ("attention", "mlp")
POSITIONS = ("rope", "learned", "none")
CONDITIONING = ("none", "puzzle", "context")


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
        conditioning: per-sample conditioning from the task: "none", "puzzle" (a learned
            embedding per puzzle identifier, zero at start, as TRM's) or "context" (the task's
            context tokens, embedded and mean-pooled); the conditioning vector is added to every
            position of the embedded input and is the adapter's context.
        adapter_rank: r of the HyperLoRA per-sample delta on the net's input (0 = off; see
            ponder.models.adapters); context = the conditioning vector, else the pooled input.
        adapter_max_norm, adapter_target_norm, adapter_reg_weight, adapter_scale: its guards.
        logit_clamp, logit_clamp_max: soft clamp of the token logits, identity up to t, bounded by
            m (0 = off).
        readout_init_scale: readout std = readout_init_scale / sqrt(d). 1.0 is TRM's LeCun init;
            the default 0.1 starts from near-uniform predictions (all Sudoku and maze figures use
            it), but it slows learning parity badly; the parity presets use 1.0 (DESIGN.md).
        board_conv: k, the kernel of a depthwise k x k convolution over the task's grid applied to
            every block's feed-forward input (local mixing on the board, as nano-trm's
            BoardConvSwiGLU; ponder.models.board); 0 = off, else odd.
    """

    style: str = setting("trm", choices=STYLES)
    d_model: int = setting(64, ge=1)
    n_heads: int = setting(4, ge=1)
    n_layers: int = setting(2, ge=1)
    mixer: str = setting("attention", choices=MIXERS)
    positions: str = setting("rope", choices=POSITIONS)
    expansion: float = setting(4.0, gt=0)
    h_cycles: int = setting(2, ge=1)
    l_cycles: int = setting(2, ge=1)
    norm_eps: float = setting(1e-5, gt=0)
    rope_theta: float = setting(10000.0, gt=0)
    conditioning: str = setting("none", choices=CONDITIONING)
    adapter_rank: int = setting(0, ge=0)
    adapter_max_norm: float = setting(3.0, gt=0)
    adapter_target_norm: float = setting(1.0, ge=0)
    adapter_reg_weight: float = setting(1e-3, ge=0)
    adapter_scale: float = setting(1.0, ge=0)
    logit_clamp: float = setting(0.0, ge=0)
    logit_clamp_max: float = setting(100.0, gt=0)
    readout_init_scale: float = setting(0.1, gt=0)
    board_conv: int = setting(0, ge=0)

    def inactive(self) -> dict[str, str]:
        """Settings that do nothing under the current values."""
        out = {}
        if self.adapter_rank == 0:
            out.update({k: "the adapter is off (model.adapter_rank=0)" for k in
                        ("adapter_max_norm", "adapter_target_norm", "adapter_reg_weight", "adapter_scale")})
        if self.logit_clamp == 0:
            out["logit_clamp_max"] = "the logit clamp is off (model.logit_clamp=0)"
        # n_heads and rope_theta are left out on purpose: presets set them, and a user who
        # switches the mixer should not have to reset them (the mlp mixer just has no heads)
        return out

    def validate(self) -> None:
        """Raise PonderError (one line) for a value the model cannot be built with."""
        check(self, "model")
        if self.d_model % self.n_heads:
            raise PonderError(f"model d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if self.mixer == "attention" and self.positions == "rope" and (self.d_model // self.n_heads) % 2:
            raise PonderError(f"model head size {self.d_model // self.n_heads} must be even for rope")
        if self.board_conv % 2 == 0 and self.board_conv:
            raise PonderError(f"model board_conv must be 0 (off) or an odd kernel size, got {self.board_conv}")
        if self.logit_clamp > 0 and self.logit_clamp_max <= self.logit_clamp:
            raise PonderError(f"model logit_clamp must be 0 (off) or below logit_clamp_max, got "
                              f"{self.logit_clamp} and {self.logit_clamp_max}")


@dataclass
class StepContext:
    """What `RecursiveReasoner.prepare` computes once per batch and every step of it reuses.

    Attributes:
        x: (b, n, d) embedded inputs (scaled by sqrt(d)) plus the conditioning vector.
        adapter: the adapter's per-sample factors, or None without an adapter.
    """

    x: Tensor
    adapter: AdapterFactors | None = None

    def __len__(self) -> int:
        return self.x.shape[0]

    def index(self, idx: Tensor) -> "StepContext":
        """Rows selected by a (b,) bool mask or an index tensor."""
        return StepContext(self.x[idx], None if self.adapter is None else self.adapter.index(idx))

    @property
    def aux_loss(self) -> Tensor | None:
        """The auxiliary loss of preparing this batch (the adapter's norm regulariser), or None."""
        return None if self.adapter is None else self.adapter.reg

    def leaf(self) -> Tensor:
        """The context's tensors flattened into one (b, D) tensor (with their graph): the input
        of the recursion's step map for the gradient estimators (ponder.training.estimator_hook)."""
        parts = [self.x.flatten(1)]
        if self.adapter is not None:
            parts += [self.adapter.u.flatten(1), self.adapter.v.flatten(1)]
        return parts[0] if len(parts) == 1 else torch.cat(parts, 1)

    def from_leaf(self, flat: Tensor) -> "StepContext":
        """A context with the same shapes whose tensors are read from `flat` (b, D) (inverse of `leaf`)."""
        b = flat.shape[0]
        sizes = [self.x[0].numel()]
        if self.adapter is not None:
            sizes += [self.adapter.u[0].numel(), self.adapter.v[0].numel()]
        parts = flat.split(sizes, 1) if len(sizes) > 1 else (flat,)
        x = parts[0].view(b, *self.x.shape[1:])
        if self.adapter is None:
            return StepContext(x)
        a = self.adapter
        return StepContext(x, replace(a, u=parts[1].view(b, *a.u.shape[1:]), v=parts[2].view(b, *a.v.shape[1:])))


class RecursiveReasoner(nn.Module):
    """TRM / HRM recursive reasoner exposing one ACT step, composed of named parts.

    Initialisation: every Linear in the nets is LeCun (truncated normal at +-2 std, std
    1/sqrt(fan_in), no biases); token and learned position embeddings have std 1/sqrt(d) and are
    multiplied by sqrt(d) (TRM), so the input x has unit-scale entries; learned positions are
    averaged in as (tok + pos) / sqrt(2); the y/z init vectors are truncated normal std 1; the
    readout is truncated normal std cfg.readout_init_scale / sqrt(d); the puzzle embedding is
    zero. The halting head is passed in and keeps its own initialisation. The y/z init vectors
    only get a gradient when the first net call is differentiated (TRM with T=1, HRM with
    T=n=1); otherwise they stay at their init, like TRM's fixed buffers.

    Args:
        cfg: architecture (validated here).
        vocab_size: number of token ids v.
        seq_len: number of positions n (fixed: learned positions and the mlp mixer need it).
        halting: a `HaltingHead` (its `logits(y)` is called on the new answer state every step,
            with gradient). It becomes a submodule, so its parameters are the model's.
        num_puzzle_ids: puzzle identifiers of the task (for conditioning "puzzle").
        context_len: context tokens per sample of the task (for conditioning "context").
        grid_shape: (rows, cols) laying out the seq_len positions (for model.board_conv).
    """

    def __init__(self, cfg: ModelConfig, *, vocab_size: int, seq_len: int, halting: nn.Module,
                 num_puzzle_ids: int = 0, context_len: int = 0, grid_shape: tuple[int, int] | None = None):
        super().__init__()
        cfg.validate()
        if vocab_size <= 0 or seq_len <= 0:
            raise PonderError(f"model needs positive vocab_size and seq_len, got {vocab_size}, {seq_len}")
        if cfg.conditioning == "puzzle" and num_puzzle_ids <= 0:
            raise PonderError("model.conditioning=puzzle needs a task with puzzle identifiers; this one has none")
        if cfg.conditioning == "context" and context_len <= 0:
            raise PonderError("model.conditioning=context needs a task with context tokens; this one has none")
        if cfg.board_conv and (grid_shape is None or grid_shape[0] * grid_shape[1] != seq_len):
            raise PonderError(f"model.board_conv needs the task's grid of {seq_len} positions; got "
                              f"{'none' if grid_shape is None else 'x'.join(map(str, grid_shape))}")
        self.grid_shape = grid_shape
        self.cfg, self.vocab_size, self.seq_len = cfg, vocab_size, seq_len
        d = cfg.d_model
        self.embed_scale = math.sqrt(d)
        self.embed = nn.Embedding(vocab_size, d)
        self.pos = nn.Parameter(torch.empty(seq_len, d)) if cfg.positions == "learned" else None
        self.puzzle_embedding = nn.Embedding(num_puzzle_ids, d) if cfg.conditioning == "puzzle" else None
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
            if self.puzzle_embedding is not None:
                self.puzzle_embedding.weight.zero_()

    def _make_net(self) -> ReasoningNet:
        cfg = self.cfg
        blocks = []
        for _ in range(cfg.n_layers):
            if cfg.mixer == "attention":
                mixer: nn.Module = Attention(cfg.d_model, cfg.n_heads, self.rotary)
            else:
                mixer = SequenceMLP(self.seq_len, cfg.expansion)
            local = BoardConv(cfg.d_model, self.grid_shape, cfg.board_conv) if cfg.board_conv else None
            blocks.append(TransformerBlock(mixer, cfg.d_model, cfg.expansion, cfg.norm_eps, local))
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

    # ----------------------------------------------------------------------------- the parts

    def embed_inputs(self, inputs: Tensor) -> Tensor:
        """Args: inputs (b, n) int64. Returns: x (b, n, d), scaled by sqrt(d)."""
        x = self.embed(inputs)  # (b, n, d)
        if self.pos is not None:
            return (x + self.pos) * (self.embed_scale / math.sqrt(2.0))  # (b, n, d)
        return x * self.embed_scale  # (b, n, d)

    def conditioning(self, batch: Batch) -> Tensor | None:
        """(b, d) per-sample conditioning vector from the batch's puzzle ids or context tokens
        (None when the model uses none)."""
        mode = self.cfg.conditioning
        if mode == "none":
            return None
        if mode == "puzzle":
            if batch.puzzle_id is None:
                raise PonderError("model.conditioning=puzzle but the batch carries no puzzle_id")
            return self.puzzle_embedding(batch.puzzle_id) * self.embed_scale  # (b, d)
        if batch.context is None:
            raise PonderError("model.conditioning=context but the batch carries no context tokens")
        tokens = self.embed(batch.context)  # (b, c, d)
        keep = (batch.context != 0).unsqueeze(-1).to(tokens.dtype)  # PAD = 0 does not count
        return (tokens * keep).sum(1) / keep.sum(1).clamp(min=1) * self.embed_scale  # (b, d)

    def prepare(self, batch: Batch) -> StepContext:
        """Per-sample preparation, once per batch: embedded inputs with the conditioning vector
        added at every position, and the adapter's factors (from the conditioning vector, else
        the input embedding pooled over positions).

        Args:
            batch: inputs (b, n) with n == seq_len, and the conditioning the config asks for.
        """
        inputs = batch.inputs
        if inputs.shape[1] != self.seq_len:
            raise ValueError(f"inputs have {inputs.shape[1]} positions, model built for {self.seq_len}")
        x = self.embed_inputs(inputs)  # (b, n, d)
        cond = self.conditioning(batch)  # (b, d) or None
        if cond is not None:
            x = x + cond.unsqueeze(1)  # (b, n, d)
        factors = None
        if self.adapter is not None:
            factors = self.adapter.factors(x.mean(1) if cond is None else cond)  # context (b, d)
        return StepContext(x, factors)

    def _net(self, net: ReasoningNet, hidden: Tensor, injection: Tensor, ctx: StepContext) -> Tensor:
        """net(hidden, injection), with the adapter's per-sample delta on the input if enabled."""
        if self.adapter is not None:  # the net sums its inputs: h -> h + s * dW_i h
            injection = injection + self.adapter.delta(hidden + injection, ctx.adapter)
        return net(hidden, injection)

    def cycle(self, y: Tensor, z: Tensor, ctx: StepContext, *, grad_calls: int | None = None
              ) -> tuple[Tensor, Tensor]:
        """One outer cycle: n latent updates z = low(z, y + x), then one answer update y = high(y, z).

        TRM: low = high = the one net. HRM: low = l_net, high = h_net (y is z_H, z is z_L).

        Args:
            y, z: (b, n, d) answer and latent states.
            ctx: the batch's StepContext.
            grad_calls: how many of the cycle's n + 1 net calls, counted from the end, are
                differentiated (None: all; HRM's 1-step gradient is 2). Ignored under no_grad.
        Returns: the new (y, z), each (b, n, d).
        """
        low, high = (self.net, self.net) if self.cfg.style == "trm" else (self.l_net, self.h_net)
        n = self.cfg.l_cycles
        first_grad = 0 if grad_calls is None else max(0, n + 1 - grad_calls)
        outer = torch.is_grad_enabled()
        injection, injection_grad = None, False
        for i in range(n):
            with torch.set_grad_enabled(outer and i >= first_grad):
                if injection is None or (torch.is_grad_enabled() and not injection_grad):
                    injection = y + ctx.x  # (b, n, d), fixed during the latent updates
                    injection_grad = torch.is_grad_enabled()
                z = self._net(low, z, injection, ctx)  # (b, n, d) latent update
        with torch.set_grad_enabled(outer and n >= first_grad):
            y = self._net(high, y, z, ctx)  # (b, n, d) answer update
        return y, z

    def recursion(self, y: Tensor, z: Tensor, ctx: StepContext) -> tuple[Tensor, Tensor]:
        """T cycles: T - 1 without gradient, then one with the style's rule (TRM: the whole last
        cycle, n + 1 net calls; HRM: only its last latent and answer updates)."""
        with torch.no_grad():
            for _ in range(self.cfg.h_cycles - 1):
                y, z = self.cycle(y, z, ctx)
        return self.cycle(y, z, ctx, grad_calls=None if self.cfg.style == "trm" else 2)

    def answer_logits(self, y: Tensor) -> Tensor:
        """(b, n, d) answer state -> (b, n, v) token logits, soft-clamped when configured."""
        logits = self.readout(y)  # (b, n, v)
        if self.cfg.logit_clamp > 0:
            logits = soft_clamp(logits, self.cfg.logit_clamp, self.cfg.logit_clamp_max)
        return logits

    def output(self, y: Tensor) -> StepOutput:
        """What a step reports from its answer state: token logits and the halting head's logits."""
        logits = self.answer_logits(y)  # (b, n, v)
        halt_logits, aux = self.halting.logits(y)  # (b,), per-sample extras
        return StepOutput(logits=logits, halt_logits=halt_logits, aux=aux)

    # TRM and HRM train each ACT step on its own (deep supervision): the carried state never keeps
    # its graph between steps, also under trajectory-trained heads (ponder.training.objectives.Trajectory)
    through_steps = False

    def step(self, state: State, ctx: StepContext, *, detach: bool = True) -> tuple[State, StepOutput]:
        """One ACT step: the recursion, then the output read from the non-detached answer state.

        Args:
            state: carry with y, z (b, n, d) (from init_state / reset_state / a previous step).
            ctx: the batch's StepContext (`prepare`).
            detach: return the new state detached (False only for a model whose `through_steps`).
        Returns:
            new state and StepOutput(logits (b, n, v), halt_logits (b,)).
        """
        y, z = self.recursion(state.y, state.z, ctx)
        return (State(y.detach(), z.detach()) if detach else State(y, z)), self.output(y)

    def forward(self, state: State, ctx: StepContext) -> tuple[State, StepOutput]:
        """Same as `step`."""
        return self.step(state, ctx)

    def networks(self) -> tuple[nn.Module, ...]:
        """The recursion's networks: TRM's one net, HRM's low- and high-level nets."""
        return (self.net,) if self.cfg.style == "trm" else (self.l_net, self.h_net)

    def cycle_description(self) -> str:
        """What one cycle of the recursion does (for the gradient diagnostics' header)."""
        return f"{self.cfg.l_cycles} latent updates + 1 answer update"

    def recursion_parameters(self) -> list[nn.Parameter]:
        """Parameters of the recursion's step map (the net or nets; not embedding, readout, head)."""
        return [p for net in self.networks() for p in net.parameters()]

    def knobs(self) -> dict[str, Knob]:
        """Runtime settings the stability controller may change, declared by the parts that own
        them (the halting head's loss weight; the adapter's scale and regulariser weight)."""
        out = dict(self.halting.knobs())
        if self.adapter is not None:
            out.update(self.adapter.knobs())
        return out


def pack_state(y: Tensor, z: Tensor) -> Tensor:
    """(b, n, d) answer and latent states -> (b, 2, n, d) batch-first packed state."""
    return torch.stack([y, z], 1)


def unpack_state(packed: Tensor) -> tuple[Tensor, Tensor]:
    """Inverse of `pack_state`: (b, 2, n, d) -> (y, z), each (b, n, d)."""
    return packed[:, 0], packed[:, 1]
