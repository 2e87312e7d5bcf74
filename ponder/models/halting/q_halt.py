"""Q-learning halting heads of TRM and HRM (deep supervision: one loss per ACT step).

- `q_halt` (TRM, arXiv 2510.04871): a probe predicts whether the whole answer is currently
  exactly right, trained with BCE against that event; a sample halts once the logit is positive.
  Bias -5 and zero weight at start ("deep start").
- `q_continue` (HRM, arXiv 2506.21734): a second logit q_continue is trained towards the
  bootstrapped value sigmoid(max(q_halt', q_continue')) of the NEXT step (q_halt' alone at the
  last step), computed by an extra no-grad forward; halt when q_halt > q_continue. TRM's copy of
  this path crashes (it unpacks five values from three); here it is tested.

Both are trained on one step at a time (`trains_on = "step"`); given a longer segment, the
objective is the mean over its steps.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ponder.core.settings import setting
from ponder.core.types import StepOutput
from ponder.models.halting.base import (HaltSettings, Memo, ProbeHead, Segment, ThresholdRule, ThresholdSettings,
                                        register_head)


@dataclass(kw_only=True)
class QHaltSettings(ThresholdSettings, HaltSettings):
    """TRM's Q-halt.

    Attributes:
        explore_prob: with this probability a fresh sample must run at least U{2..M} steps before
            it may halt (TRM's exploration during deep supervision).
        loss_weight: weight of the BCE halting term (TRM: 0.5); the controller's "halt_weight".
        threshold: halt when sigmoid(q_halt) > threshold (0.5, i.e. q > 0, is TRM's rule; 1 never
            halts before max_steps); a higher threshold at evaluation trades compute for accuracy
            without retraining. "auto", auto_margin, calibration_samples: `ThresholdSettings`.
    """

    kind = "q_halt"
    explore_prob: float = setting(0.1, ge=0, le=1)
    loss_weight: float = setting(0.5, ge=0)


@dataclass(kw_only=True)
class QContinueSettings(HaltSettings):
    """HRM's Q-halt + Q-continue (halts when q_halt > q_continue: no threshold).

    Attributes:
        explore_prob: as for q_halt.
        loss_weight: weight of the two BCE terms (HRM: 0.5); the controller's "halt_weight".
    """

    kind = "q_continue"
    explore_prob: float = setting(0.1, ge=0, le=1)
    loss_weight: float = setting(0.5, ge=0)


def _mean_over_steps(terms: list[Tensor]) -> Tensor:
    return terms[0] if len(terms) == 1 else torch.stack(terms).mean()


def q_loss(head: ProbeHead, segment: Segment,
           continue_bce: Callable[[int, Tensor], Tensor] | None = None) -> tuple[Tensor, dict[str, float]]:
    """The Q heads' objective, the mean over the segment's steps of task loss + weight *
    (BCE(q_halt, answer exactly right) [+ the continue term of step i]) + the probe's L1 penalty.

    continue_bce: (step index i in the segment, (b,) step counts) -> that step's Q-continue term.
    """
    weight = head.weight(segment.train_step)
    totals, lms, halts, conts, accs = [], [], [], [], []
    for i, correct in enumerate(segment.correct):
        out, steps = segment.outs[i], segment.steps + i
        lm = segment.task_loss(out.logits, segment.labels).mean()
        q_halt = head.probe.shape(out.halt_logits, steps)
        halt_bce = F.binary_cross_entropy_with_logits(q_halt, correct.to(q_halt.dtype))
        halting = halt_bce
        if continue_bce is not None:
            conts.append(continue_bce(i, steps))
            halting = halt_bce + conts[-1]
        totals.append(lm + (weight * halting + head.probe.penalty(q_halt)))
        lms.append(lm)
        halts.append(halt_bce)
        with torch.no_grad():
            accs.append(((q_halt > 0) == correct).float().mean())
    # figures as detached 0-dim tensors: the training loop reads them in its one host transfer
    stats = {"lm_loss": _mean_over_steps(lms).detach(), "halt_loss": _mean_over_steps(halts).detach()}
    if conts:
        stats["continue_loss"] = _mean_over_steps(conts).detach()
    stats["q_halt_acc"] = _mean_over_steps(accs).detach()
    return _mean_over_steps(totals), stats


@register_head(QHaltSettings)
class QHaltHead(ThresholdRule, ProbeHead):
    """TRM's Q-halt: BCE(q, exact-correct); halt when sigmoid(q) > halt.threshold, at max_steps,
    never before min_steps. Under threshold "auto": 0.5 in training, the calibrated value in
    evaluation (`ThresholdRule`)."""

    trains_on = "step"
    needs_next_step = False
    weight_setting = "loss_weight"

    def start(self, batch_size: int, device: torch.device) -> Memo:
        return {}

    def _halt_logit(self, out: StepOutput, steps: Tensor) -> Tensor:
        return self.probe.shape(out.halt_logits, steps)  # (b,)

    def decide(self, out: StepOutput, steps: Tensor, memo: Memo) -> tuple[Tensor, Memo]:
        # halt when the predicted probability of "exactly right" exceeds the threshold (0.5: q > 0;
        # 1: never, as no probability exceeds 1; 0: any finite logit)
        t = self.threshold_in_use()
        cut = math.inf if t >= 1 else -math.inf if t <= 0 else math.log(t / (1 - t))
        halt = (self._halt_logit(out, steps) > cut) & (steps >= self.cfg.min_steps)
        return halt | (steps >= self.cfg.max_steps), memo

    def answer(self, out: StepOutput, memo: Memo) -> Tensor:
        return out.logits

    def loss(self, segment: Segment) -> tuple[Tensor, dict[str, float]]:
        """Per step: task loss + loss_weight * BCE(q_halt, exactly right) (+ L1 penalty)."""
        return q_loss(self, segment)


@register_head(QContinueSettings)
class QContinueHead(ProbeHead):
    """HRM's Q-halt + Q-continue with the bootstrapped continue target; halt when q_halt > q_continue."""

    trains_on = "step"
    needs_next_step = True
    weight_setting = "loss_weight"
    outputs = 2

    def __init__(self, cfg: QContinueSettings, d_model: int):
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

    def loss(self, segment: Segment) -> tuple[Tensor, dict[str, float]]:
        """Per step: task loss + loss_weight * (BCE(q_halt, right) + BCE(q_continue, bootstrapped
        target)); the target of the last step of the segment comes from `segment.next_out`."""
        if segment.next_out is None:
            raise ValueError("q_continue needs the next step's output (needs_next_step = True)")
        outs = [*segment.outs, segment.next_out]

        def continue_bce(i: int, steps: Tensor) -> Tensor:
            with torch.no_grad():  # bootstrapped target from the next step, as in HRM
                nxt_halt = self.probe.shape(outs[i + 1].halt_logits, steps + 1)
                nxt = torch.where(steps + 1 >= self.cfg.max_steps, nxt_halt,
                                  torch.maximum(nxt_halt, outs[i + 1].aux["q_continue"]))
                target = torch.sigmoid(nxt)
            return F.binary_cross_entropy_with_logits(outs[i].aux["q_continue"], target)

        return q_loss(self, segment, continue_bce)
