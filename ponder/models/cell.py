"""Recurrent-cell reasoners: PonderNet's and ACT's own step function.

PonderNet (Banino et al. 2021) and ACT (Graves 2016) ponder with a recurrent cell that reads the
WHOLE input at every step: h_n = cell(x, h_{n-1}), the answer and the halting probability read
from h_n. This module gives that step function the composed-step protocol of the recursive
reasoner (ponder.models.recursive), so every halting head, the evaluator with early exit, the
training objectives, the health monitors and the gradient diagnostics use it unchanged:

- `prepare(batch) -> StepContext`: the input read once per batch, x = W onehot(inputs): a
  linear map of the whole one-hot input (one learned vector per position and token, summed), so
  a vector of L entries is one cell input (b, 1, E), whatever L is;
- `cycle(y, z, ctx)`: one cell application; y is the hidden state h, z the LSTM's cell state c
  (zeros for the RNN and GRU cells, which have none); both (b, 1, H);
- `recursion`: `h_cycles` cell applications per ACT step (PonderNet: 1);
- `output(y)`: token logits for every position from h (one linear map to (n, v)) and the
  halting head's logits of h;
- `step(state, ctx)`: recursion then output.

Gradient through the carried state: the papers differentiate the whole unrolled trajectory.
With a head trained on whole trajectories (PonderNet, ACT) the carried state keeps its graph
between ACT steps when `through_steps` is on (the default), so the loss of step n reaches the
cell applications of steps 1..n (backpropagation through time). Deep supervision (Q-halt,
Q-continue) carries the state across optimizer steps and always detaches it.

The cell is torch's own (nn.RNNCell with tanh, nn.GRUCell, nn.LSTMCell). Options: LayerNorm on
the new hidden state (`layer_norm`), orthogonal recurrent weights (`orthogonal_init`, per gate
block). The cell reads only the inputs: a task whose samples carry a puzzle identifier or
context tokens for conditioning is refused when the model is built (ponder.runs.run).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ponder.core.settings import check, setting
from ponder.core.types import Batch, Knob, State, StepOutput
from ponder.models.blocks import trunc_normal_
from ponder.models.recursive import StepContext
from ponder.models.sections import PlainSection

CELLS = ("rnn", "gru", "lstm")
GATES = {"rnn": 1, "gru": 3, "lstm": 4}


@dataclass(kw_only=True)
class CellConfig(PlainSection):
    """A recurrent-cell reasoner (config section `model` with `model.kind=cell`).

    It shares the base of the language models' sections (no adapter, no logit clamp: the health
    wing reads those settings from any model section).

    Attributes:
        cell: "rnn" (tanh), "gru" or "lstm".
        d_model: H, the hidden state's size (PonderNet's parity: an RNN of 128 units); the
            halting head reads the hidden state, so it is also the head's width.
        embed_dim: E, the size of the cell's input x (the one-hot input's linear map).
        h_cycles: cell applications per ACT step (PonderNet and ACT: 1).
        layer_norm: LayerNorm on the new hidden state (h = LN(cell(x, h))).
        orthogonal_init: orthogonal recurrent weights (each gate's block), zero biases.
        through_steps: under a head trained on whole trajectories (PonderNet, ACT), let the
            gradient flow through the state carried between ACT steps, as the papers do.
        readout_init_scale: readout std = readout_init_scale / sqrt(H).
    """

    cell: str = setting("rnn", choices=CELLS)
    d_model: int = setting(128, ge=1)
    embed_dim: int = setting(128, ge=1)
    h_cycles: int = setting(1, ge=1)
    layer_norm: bool = False
    orthogonal_init: bool = False
    through_steps: bool = True
    readout_init_scale: float = setting(1.0, gt=0)

    def validate(self) -> None:
        check(self, "model")


class CellReasoner(nn.Module):
    """A recurrent cell applied again and again to a hidden state that reads the whole input.

    Args:
        cfg: the cell's settings (validated here).
        vocab_size: number of token ids v.
        seq_len: number of positions n of every sample.
        halting: a `HaltingHead` of width cfg.d_model; it becomes a submodule.
    """

    def __init__(self, cfg: CellConfig, *, vocab_size: int, seq_len: int, halting: nn.Module):
        super().__init__()
        cfg.validate()
        self.cfg, self.vocab_size, self.seq_len = cfg, vocab_size, seq_len
        h, e = cfg.d_model, cfg.embed_dim
        self.read = nn.Linear(seq_len * vocab_size, e, bias=False)  # a column per (position, token)
        self.register_buffer("offsets", torch.arange(seq_len) * vocab_size, persistent=False)
        make = {"rnn": lambda: nn.RNNCell(e, h, nonlinearity="tanh"), "gru": lambda: nn.GRUCell(e, h),
                "lstm": lambda: nn.LSTMCell(e, h)}[cfg.cell]
        self.cell = make()
        self.norm = nn.LayerNorm(h) if cfg.layer_norm else None
        self.readout = nn.Linear(h, seq_len * vocab_size, bias=False)
        self.halting = halting
        with torch.no_grad():
            trunc_normal_(self.read.weight, 1.0 / math.sqrt(seq_len))  # n ones per row: unit scale
            trunc_normal_(self.readout.weight, cfg.readout_init_scale / math.sqrt(h))
            if cfg.orthogonal_init:
                for block in self.cell.weight_hh.chunk(GATES[cfg.cell], 0):  # (H, H) per gate
                    nn.init.orthogonal_(block)
                self.cell.bias_hh.zero_()
                self.cell.bias_ih.zero_()

    @property
    def through_steps(self) -> bool:
        """Does the carried state keep its graph between ACT steps (trajectory training)?"""
        return self.cfg.through_steps

    # ----------------------------------------------------------------------------- state

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        """Zero hidden (and cell) state, each (b, 1, H)."""
        zeros = torch.zeros(batch_size, 1, self.cfg.d_model, device=device if device is not None else
                            self.readout.weight.device)
        return State(zeros, zeros.clone())

    def reset_state(self, state: State, mask: Tensor) -> State:
        """Fresh states in the rows where mask (b,) is True, `state` elsewhere."""
        return state.where(mask, self.init_state(state.y.shape[0], state.y.device))

    # ----------------------------------------------------------------------------- the parts

    def prepare(self, batch: Batch) -> StepContext:
        """The cell's input x (b, 1, E): the linear map of the one-hot input (b, n * v)."""
        inputs = batch.inputs
        if inputs.shape[1] != self.seq_len:
            raise ValueError(f"inputs have {inputs.shape[1]} positions, model built for {self.seq_len}")
        one_hot = self.read.weight.new_zeros(len(inputs), self.seq_len * self.vocab_size)
        one_hot.scatter_(1, inputs + self.offsets, 1.0)  # (b, n * v), n ones per row
        return StepContext(self.read(one_hot).unsqueeze(1))

    def cycle(self, y: Tensor, z: Tensor, ctx: StepContext, *, grad_calls: int | None = None
              ) -> tuple[Tensor, Tensor]:
        """One cell application. y: hidden state h, z: the LSTM's cell state (zeros otherwise),
        each (b, 1, H); returns the new (y, z). `grad_calls` is accepted for the protocol: the one
        call is always differentiated."""
        x, h = ctx.x[:, 0], y[:, 0]  # (b, E), (b, H)
        if self.cfg.cell == "lstm":
            h, c = self.cell(x, (h, z[:, 0]))  # (b, H) each
        else:
            h, c = self.cell(x, h), z[:, 0]
        if self.norm is not None:
            h = self.norm(h)
        return h.unsqueeze(1), c.unsqueeze(1)

    def recursion(self, y: Tensor, z: Tensor, ctx: StepContext) -> tuple[Tensor, Tensor]:
        """`h_cycles` cell applications, all differentiated."""
        for _ in range(self.cfg.h_cycles):
            y, z = self.cycle(y, z, ctx)
        return y, z

    def answer_logits(self, y: Tensor) -> Tensor:
        """(b, 1, H) hidden state -> (b, n, v) token logits."""
        return self.readout(y[:, 0]).view(-1, self.seq_len, self.vocab_size)

    def output(self, y: Tensor) -> StepOutput:
        halt_logits, aux = self.halting.logits(y)  # (b,)
        return StepOutput(logits=self.answer_logits(y), halt_logits=halt_logits, aux=aux)

    def step(self, state: State, ctx: StepContext, *, detach: bool = True) -> tuple[State, StepOutput]:
        """One ACT step. The new state is detached unless `detach` is False (trajectory training
        with `through_steps`: ponder.training.objectives.Trajectory)."""
        y, z = self.recursion(state.y, state.z, ctx)
        new = State(y.detach(), z.detach()) if detach else State(y, z)
        return new, self.output(y)

    def forward(self, state: State, ctx: StepContext) -> tuple[State, StepOutput]:
        return self.step(state, ctx)

    def networks(self) -> tuple[nn.Module, ...]:
        """The recursion's network: the cell (and its LayerNorm)."""
        return (self.cell,) if self.norm is None else (self.cell, self.norm)

    def recursion_parameters(self) -> list[nn.Parameter]:
        return [p for net in self.networks() for p in net.parameters()]

    def cycle_description(self) -> str:
        return f"one {self.cfg.cell.upper()} cell application" + (" + LayerNorm" if self.norm is not None else "")

    def knobs(self) -> dict[str, Knob]:
        """The halting head's runtime settings (the cell declares none)."""
        return dict(self.halting.knobs())
