"""Recurrent-cell reasoners: PonderNet's and ACT's own step function.

PonderNet (Banino et al. 2021) and ACT (Graves 2016) ponder with a recurrent cell that reads the
WHOLE input at every step: h_n = cell(x, h_{n-1}), the answer and the halting probability read
from h_n. This module gives that step function the composed-step protocol of the recursive
reasoner (ponder.models.recursive), so every halting head, the evaluator with early exit, the
training objectives, the health monitors and the gradient diagnostics use it unchanged:

- `prepare(batch) -> StepContext`: the input read once per batch, x = W onehot(inputs): a
  linear map of the whole one-hot input (one learned vector per position and token, summed), so
  a vector of L entries is one cell input (b, 1, E), whatever L is; the cell's input projection
  W_ih x + b (every gate's) is computed there too, once per trajectory, since x does not change
  over the steps: the context holds it, (b, 1, G * H);
- `cycle(y, z, ctx)`: one cell application on the projected input, the formulas of torch's cells
  (nn.RNNCell with tanh, nn.GRUCell, nn.LSTMCell, whose parameters the model keeps); y is the
  hidden state h, z the LSTM's cell state c (zeros for the RNN and GRU cells); both (b, 1, H);
- `recursion`: `h_cycles` cell applications per ACT step (PonderNet: 1);
- `output(y)`: token logits from h (one linear map to (n, v)) and the halting head's logits of h.
  A task that supervises only some positions (parity: position 0) builds the model with
  `answer_positions`: only those positions' logits are computed (the rest are 0, never scored:
  their labels are IGNORE in every sample), which is most of the step's arithmetic otherwise;
- `step(state, ctx)`: recursion then output.

Gradient through the carried state: the papers differentiate the whole unrolled trajectory.
With a head trained on whole trajectories (PonderNet, ACT) the carried state keeps its graph
between ACT steps when `through_steps` is on (the default), so the loss of step n reaches the
cell applications of steps 1..n (backpropagation through time). Deep supervision (Q-halt,
Q-continue) carries the state across optimizer steps and always detaches it.

The cell's parameters are torch's own cells' (nn.RNNCell with tanh, nn.GRUCell, nn.LSTMCell),
applied by the same formulas in `cycle` with the input projection hoisted into `prepare` (the
sums differ from torch's cell only in their order). Options: LayerNorm on
the new hidden state (`layer_norm`), orthogonal recurrent weights (`orthogonal_init`, per gate
block). The cell reads only the inputs: a task whose samples carry a puzzle identifier or
context tokens for conditioning is refused when the model is built (ponder.runs.run).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ponder.core.settings import check, setting
from ponder.core.types import Batch, Knob, State, StepOutput
from ponder.models.blocks import trunc_normal_
from ponder.models.compiled import compiled, signature
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
        answer_positions: the positions whose logits are ever scored (the task's labels are IGNORE
            everywhere else); None: all. The others' logits are returned as zeros.
    """

    def __init__(self, cfg: CellConfig, *, vocab_size: int, seq_len: int, halting: nn.Module,
                 answer_positions: list[int] | None = None):
        super().__init__()
        cfg.validate()
        self.cfg, self.vocab_size, self.seq_len = cfg, vocab_size, seq_len
        if answer_positions is not None and sorted(set(answer_positions)) == list(range(seq_len)):
            answer_positions = None
        if answer_positions is not None:
            if not answer_positions or not all(0 <= p < seq_len for p in answer_positions):
                raise ValueError(f"answer_positions must be positions 0..{seq_len - 1}, got {answer_positions}")
            answer_positions = sorted(set(answer_positions))
            rows = torch.tensor([p * vocab_size + t for p in answer_positions for t in range(vocab_size)])
            self.register_buffer("_answer_rows", rows, persistent=False)  # readout rows of those positions
            self.register_buffer("_answer_cols", torch.tensor(answer_positions), persistent=False)
        self.answer_positions = answer_positions
        h, e = cfg.d_model, cfg.embed_dim
        self.read = nn.Linear(seq_len * vocab_size, e, bias=False)  # a column per (position, token)
        self.register_buffer("offsets", torch.arange(seq_len) * vocab_size, persistent=False)
        make = {"rnn": lambda: nn.RNNCell(e, h, nonlinearity="tanh"), "gru": lambda: nn.GRUCell(e, h),
                "lstm": lambda: nn.LSTMCell(e, h)}[cfg.cell]
        self.cell = make()
        self.norm = nn.LayerNorm(h) if cfg.layer_norm else None
        self.readout = nn.Linear(h, seq_len * vocab_size, bias=False)
        self.halting = halting
        self.compile_backend: str | None = None  # set by `compile_trajectory`
        with torch.no_grad():
            trunc_normal_(self.read.weight, 1.0 / math.sqrt(seq_len))  # n ones per row: unit scale
            trunc_normal_(self.readout.weight, cfg.readout_init_scale / math.sqrt(h))
            if cfg.orthogonal_init:
                for block in self.cell.weight_hh.chunk(GATES[cfg.cell], 0):  # (H, H) per gate
                    nn.init.orthogonal_(block)
                self.cell.bias_hh.zero_()
                self.cell.bias_ih.zero_()

    # the trajectory objective runs the recursion in one call (`trajectory`) and reads every step's
    # output from one call on the stacked states (`output` acts on each hidden state alone): one
    # readout and one halting map per trajectory
    outputs_at_once = True

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
        """The cell's projected input (b, 1, G * H): W_ih x + b_ih (+ b_hh for the RNN and LSTM,
        whose recurrent bias adds to the same sum; the GRU keeps b_hh inside its reset gate), with
        x = the linear map of the one-hot input (b, n * v). Once per trajectory: x is constant."""
        inputs = batch.inputs
        if inputs.shape[1] != self.seq_len:
            raise ValueError(f"inputs have {inputs.shape[1]} positions, model built for {self.seq_len}")
        one_hot = self.read.weight.new_zeros(len(inputs), self.seq_len * self.vocab_size)
        one_hot.scatter_(1, inputs + self.offsets, 1.0)  # (b, n * v), n ones per row
        x, c = self.read(one_hot), self.cell
        bias = c.bias_ih if self.cfg.cell == "gru" else c.bias_ih + c.bias_hh
        return StepContext(torch.addmm(bias, x, c.weight_ih.t()).unsqueeze(1))  # autocast casts as it would the cell

    def cycle(self, y: Tensor, z: Tensor, ctx: StepContext, *, grad_calls: int | None = None
              ) -> tuple[Tensor, Tensor]:
        """One cell application on the projected input (torch's cell formulas). y: hidden state h,
        z: the LSTM's cell state (zeros otherwise), each (b, 1, H); returns the new (y, z).
        `grad_calls` is accepted for the protocol: the one call is always differentiated."""
        xp, h, c = ctx.x[:, 0], y[:, 0], z[:, 0]  # (b, G * H), (b, H), (b, H)
        w_hh = self.cell.weight_hh.t()
        if self.cfg.cell == "rnn":
            h = torch.tanh(torch.addmm(xp, h, w_hh))
        elif self.cfg.cell == "lstm":
            i, f, g, o = torch.addmm(xp, h, w_hh).chunk(4, 1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
        else:  # GRU: n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
            xr, xz, xn = xp.chunk(3, 1)
            hr, hz, hn = torch.addmm(self.cell.bias_hh, h, w_hh).chunk(3, 1)
            r, u = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
            h = (1 - u) * torch.tanh(xn + r * hn) + u * h
        if self.norm is not None:
            h = self.norm(h)
        return h.unsqueeze(1), c.unsqueeze(1)

    def recursion(self, y: Tensor, z: Tensor, ctx: StepContext) -> tuple[Tensor, Tensor]:
        """`h_cycles` cell applications, all differentiated."""
        for _ in range(self.cfg.h_cycles):
            y, z = self.cycle(y, z, ctx)
        return y, z

    def trajectory(self, state: State, ctx: StepContext, steps: int) -> tuple[Tensor, State]:
        """`steps` ACT steps' recursions from `state` in one call: every step's new hidden state,
        stacked step-major along the batch axis (steps * b, 1, H), and the last state. The carried
        state keeps its graph between steps when `through_steps` (trajectory training). After
        `compile_trajectory` the unrolled recursion, forward and backward, runs as one compiled
        graph (the same arithmetic; the compiler may fuse and reorder it)."""
        if self.compile_backend is not None:
            ys, y, z = compiled(_unroll, self.compile_backend, signature(self))(self, state.y, state.z, ctx.x, steps)
        else:
            ys, y, z = _unroll(self, state.y, state.z, ctx.x, steps)
        return ys, State(y, z)

    def compile_trajectory(self, backend: str = "inductor") -> None:
        """Run `trajectory` through torch.compile from now on (`train.compile`). Only the
        backend's name is kept: a deep copy (the EMA evaluation's) shares the compiled graph,
        its weights being graph inputs (ponder.models.compiled)."""
        self.compile_backend = backend

    def answer_logits(self, y: Tensor) -> Tensor:
        """(b, 1, H) hidden state -> (b, n, v) token logits (zeros outside `answer_positions`)."""
        if self.answer_positions is None:
            return self.readout(y[:, 0]).view(-1, self.seq_len, self.vocab_size)
        some = self.position_logits(y)
        return some.new_zeros(len(some), self.seq_len, self.vocab_size).index_copy(1, self._answer_cols, some)

    def position_logits(self, y: Tensor) -> Tensor:
        """(b, 1, H) hidden state -> (b, P, v) logits of the `answer_positions` only (all
        positions when there are none)."""
        if self.answer_positions is None:
            return self.answer_logits(y)
        h = y[:, 0]
        some = F.linear(h, self.readout.weight[self._answer_rows])  # (b, P * v)
        for hook in self.readout._forward_hooks.values():  # what watches the readout sees these logits
            hook(self.readout, (h,), some)
        return some.view(len(h), len(self.answer_positions), self.vocab_size)

    def output(self, y: Tensor, *, positions_only: bool = False) -> StepOutput:
        """The step's output; `positions_only`: logits (b, P, v) of the `answer_positions` alone
        (the trajectory objective then scores them against those positions' labels)."""
        halt_logits, aux = self.halting.logits(y)  # (b,)
        logits = self.position_logits(y) if positions_only else self.answer_logits(y)
        return StepOutput(logits=logits, halt_logits=halt_logits, aux=aux)

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


def _unroll(model: CellReasoner, y: Tensor, z: Tensor, x: Tensor, steps: int) -> tuple[Tensor, Tensor, Tensor]:
    """`steps` recursions of `model` from (y, z) on the projected input x: every step's y
    concatenated (steps * b, 1, H), and the last (y, z) (`CellReasoner.trajectory`)."""
    ctx, ys = StepContext(x), []
    for _ in range(steps):
        y, z = model.recursion(y, z, ctx)
        ys.append(y)
        if not model.cfg.through_steps:  # the carried state without its graph
            y, z = y.detach(), z.detach()
    return torch.cat(ys, 0), y, z
