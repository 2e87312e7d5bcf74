"""Q-learning halting heads of TRM and HRM (deep supervision: one loss per ACT step).

- `q_halt` (TRM, arXiv 2510.04871): a probe predicts whether the whole answer is currently
  exactly right, trained with BCE against that event; a sample halts once the logit is positive.
  Bias -5 and zero weight at start ("deep start").
- `q_continue` (HRM, arXiv 2506.21734): a second logit q_continue is trained towards the
  bootstrapped value sigmoid(max(q_halt', q_continue')) of the NEXT step (q_halt' alone at the
  last step), computed by an extra no-grad forward; halt when q_halt > q_continue. TRM's copy of
  this path crashes (it unpacks five values from three); here it is tested.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ponder.models.halting import HALTING, HaltConfig, Memo, ProbeHead, penalty_scale
from ponder.types import StepOutput


@HALTING.register("q_halt")
class QHaltHead(ProbeHead):
    """TRM's Q-halt: BCE(q, exact-correct); halt when sigmoid(q) > halt.threshold (0.5, i.e. q > 0,
    is TRM's rule), at max_steps, never before min_steps. A higher threshold at evaluation trades
    compute for accuracy without retraining."""

    unrolled = False
    needs_next_step = False

    def start(self, batch_size: int, device: torch.device) -> Memo:
        return {}

    def _halt_logit(self, out: StepOutput, steps: Tensor) -> Tensor:
        return self.probe.shape(out.halt_logits, steps)  # (b,)

    def decide(self, out: StepOutput, steps: Tensor, memo: Memo) -> tuple[Tensor, Memo]:
        # halt when the predicted probability of "exactly right" exceeds the threshold (0.5: q > 0)
        t = min(max(self.cfg.threshold, 1e-6), 1 - 1e-6)
        cut = math.log(t / (1 - t))
        halt = (self._halt_logit(out, steps) > cut) & (steps >= self.cfg.min_steps)
        return halt | (steps >= self.cfg.max_steps), memo

    def answer(self, out: StepOutput, memo: Memo) -> Tensor:
        return out.logits

    def loss(self, out: StepOutput, correct: Tensor, *, steps: Tensor,
             next_out: StepOutput | None = None) -> tuple[Tensor, dict[str, float]]:
        logit = self._halt_logit(out, steps)
        bce = F.binary_cross_entropy_with_logits(logit, correct.to(logit.dtype))
        weight = self.cfg.loss_weight * penalty_scale(self.cfg, self.train_step)
        with torch.no_grad():
            acc = ((logit > 0) == correct).float().mean().item()
        return weight * bce + self.probe.penalty(logit), {"halt_loss": bce.item(), "q_halt_acc": acc}

    def trajectory_loss(self, outs, labels, task_loss):
        raise NotImplementedError("q_halt trains by deep supervision (unrolled = False)")


@HALTING.register("q_continue")
class QContinueHead(ProbeHead):
    """HRM's Q-halt + Q-continue with the bootstrapped continue target; halt when q_halt > q_continue."""

    unrolled = False
    needs_next_step = True

    outputs = 2

    def __init__(self, cfg: HaltConfig, d_model: int):
        super().__init__(cfg, d_model)
        with torch.no_grad():  # q_continue starts at 0 > q_halt's bias: deep start
            self.probe.linear.bias[1] = 0.0

    def logits(self, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        q = self.probe(y)  # (b, 2)
        return q[:, 0], {"q_continue": q[:, 1]}

    def start(self, batch_size: int, device: torch.device) -> Memo:
        return {}

    def decide(self, out: StepOutput, steps: Tensor, memo: Memo) -> tuple[Tensor, Memo]:
        q_halt = self.probe.shape(out.halt_logits, steps)
        halt = (q_halt > out.aux["q_continue"]) & (steps >= self.cfg.min_steps)
        return halt | (steps >= self.cfg.max_steps), memo

    def answer(self, out: StepOutput, memo: Memo) -> Tensor:
        return out.logits

    def loss(self, out: StepOutput, correct: Tensor, *, steps: Tensor,
             next_out: StepOutput | None = None) -> tuple[Tensor, dict[str, float]]:
        if next_out is None:
            raise ValueError("q_continue needs the next step's output (needs_next_step = True)")
        q_halt = self.probe.shape(out.halt_logits, steps)
        with torch.no_grad():  # bootstrapped target from the next step, as in HRM
            nxt_halt = self.probe.shape(next_out.halt_logits, steps + 1)
            nxt = torch.where(steps + 1 >= self.cfg.max_steps, nxt_halt,
                              torch.maximum(nxt_halt, next_out.aux["q_continue"]))
            target = torch.sigmoid(nxt)
        halt_bce = F.binary_cross_entropy_with_logits(q_halt, correct.to(q_halt.dtype))
        cont_bce = F.binary_cross_entropy_with_logits(out.aux["q_continue"], target)
        weight = self.cfg.loss_weight * penalty_scale(self.cfg, self.train_step)
        with torch.no_grad():
            acc = ((q_halt > 0) == correct).float().mean().item()
        loss = weight * (halt_bce + cont_bce) + self.probe.penalty(q_halt)
        return loss, {"halt_loss": halt_bce.item(), "continue_loss": cont_bce.item(), "q_halt_acc": acc}

    def trajectory_loss(self, outs, labels, task_loss):
        raise NotImplementedError("q_continue trains by deep supervision (unrolled = False)")
