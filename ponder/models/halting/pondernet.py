"""PonderNet (Banino et al. 2021, arXiv 2107.05407): a learned halting distribution, trained on
whole unrolled trajectories.

lambda_n = sigmoid(shaped logit) is the probability of halting at step n given step n was
reached; the halting distribution is p_n = lambda_n prod_{j<n} (1 - lambda_j), computed in log
space with logsigmoid (log lambda = logsigmoid(x), log(1 - lambda) = logsigmoid(-x)), so nothing
turns into NaN when lambda underflows. Truncation: lambda_M := 1, so p sums to one over M steps.
min_steps: lambda_n := 0 before min_steps (p_n = 0 there; the mass moves to later steps).

Objective: sum_n p_n task_loss_n + kl_weight * KL(p || prior) (+ the probe's L1 penalty), where
the prior is Geometric(prior_lambda) truncated at M and renormalised, and
KL(p || prior) = sum_n p_n (log p_n - log prior_n) -- p against the prior, not the reverse;
terms with p_n = 0 count 0.

Inference (`halt.eval_rule`):
- "threshold": halt at the first step whose cumulative halting mass 1 - prod_{j<=n} (1 - lambda_j)
  reaches `halt.threshold` (the memo keeps the log of the remaining mass);
- "sample": halt at step n with probability lambda_n (torch.bernoulli). Sampled decisions are
  not reproducible unless the global torch RNG is seeded, or `head.generator` is set to a
  seeded `torch.Generator`; the training loop saves and restores the global RNG, so training
  runs stay resume-exact.
Both respect min_steps and always halt at M. The answer is the step's own readout.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ponder.core.settings import setting
from ponder.core.types import StepOutput
from ponder.models.halting.act import step_grid
from ponder.models.halting.base import (HaltSettings, Memo, ProbeHead, Segment, ThresholdRule, ThresholdSettings,
                                        register_head)


@dataclass(kw_only=True)
class PonderNetSettings(ThresholdSettings, HaltSettings):
    """PonderNet.

    Attributes:
        prior_lambda: lambda_p of the geometric prior.
        kl_weight: beta, weight of KL(p || prior); the controller's "halt_weight".
        eval_rule: at inference, "threshold" (cumulative halt mass >= threshold) or "sample".
        threshold: the cumulative halting mass at which the "threshold" rule halts (1: never
            before max_steps). "auto", auto_margin, calibration_samples: `ThresholdSettings`.
    """

    kind = "pondernet"
    prior_lambda: float = setting(0.2, gt=0, lt=1)
    kl_weight: float = setting(0.01, ge=0)
    eval_rule: str = setting("threshold", choices=("threshold", "sample"))

    def inactive(self) -> dict[str, str]:
        if self.eval_rule == "sample":
            why = "halt.eval_rule=sample draws each halt"
            return {"threshold": why, "auto_margin": why, "calibration_samples": why}
        return super().inactive()


@register_head(PonderNetSettings)
class PonderNetHead(ThresholdRule, ProbeHead):
    """PonderNet: halting distribution p_n = lambda_n prod_{j<n}(1 - lambda_j), expected task
    loss under p plus beta * KL(p || truncated geometric prior).

    Inference memo (batch-first): log_remaining (b,) = sum_{j<=t} log(1 - lambda_j), the log of
    the probability mass not yet halted after the steps decided so far. Under threshold "auto":
    0.5 in training, the calibrated value in evaluation (`ThresholdRule`).
    """

    trains_on = "trajectory"
    needs_next_step = False
    weight_setting = "kl_weight"

    def __init__(self, cfg: PonderNetSettings, d_model: int):
        super().__init__(cfg, d_model)
        self.generator: torch.Generator | None = None  # for eval_rule "sample"; None = global RNG

    # -- the halting distribution ---------------------------------------------------------------
    def _log_lambdas(self, raw: Tensor, steps: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(b,) raw logits at (b,) steps -> shaped logit, allowed (b,) bool, log lambda and
        log(1 - lambda), with lambda := 0 before min_steps (log lambda is then a finite dummy:
        use `allowed`)."""
        shaped = self.probe.shape(raw, steps)
        allowed = steps >= self.cfg.min_steps
        log_halt = torch.where(allowed, F.logsigmoid(shaped), torch.zeros_like(shaped))
        log_go_on = torch.where(allowed, F.logsigmoid(-shaped), torch.zeros_like(shaped))
        return shaped, allowed, log_halt, log_go_on

    def _log_distribution(self, halt_logits: Tensor, steps: Tensor | None = None) -> dict[str, Tensor]:
        """(b, M) raw halt logits -> log p (b, M) (finite everywhere), support (b, M) bool
        (where p may be non-zero), shaped logits (b, M). Truncation: lambda at column M is 1.
        All columns at once: the mass not yet halted is a cumulative sum of log(1 - lambda)."""
        b, m = halt_logits.shape
        steps = step_grid(halt_logits, steps)
        shaped = self.probe.shape(halt_logits, steps)
        allowed = steps >= self.cfg.min_steps
        zeros = torch.zeros_like(shaped)
        log_halt = torch.where(allowed, F.logsigmoid(shaped), zeros)
        log_go_on = torch.where(allowed, F.logsigmoid(-shaped), zeros)
        # lambda_M := 1: the rest of the mass halts at the last column
        last = torch.arange(m, device=halt_logits.device) == m - 1
        log_halt = torch.where(last, zeros, log_halt)
        support = allowed | last
        log_remaining = torch.cat([zeros[:, :1], log_go_on[:, :-1].cumsum(1)], 1)  # before each column
        return {"log_p": log_remaining + log_halt, "support": support, "shaped": shaped}

    def halting_distribution(self, halt_logits: Tensor, steps: Tensor | None = None) -> Tensor:
        """(b, M) raw halt logits -> (b, M) halting distribution p (sums to one over the M steps).

        steps: the step count of each column, (M,) or (b, M); default 1..M."""
        d = self._log_distribution(halt_logits, steps)
        return torch.where(d["support"], d["log_p"].exp(), torch.zeros_like(d["log_p"]))

    def halting_steps(self, halt_logits: Tensor, steps: Tensor | None = None) -> Tensor:
        """(b, M) raw halt logits -> (b,) step the "threshold" rule halts at (what `decide` returns
        with eval_rule "threshold"), accumulated exactly as `decide` does."""
        b, m = halt_logits.shape
        steps = step_grid(halt_logits, steps)
        memo = self.start(b, halt_logits.device)
        stop = steps[:, -1].clone()
        halted = torch.zeros(b, dtype=torch.bool, device=halt_logits.device)
        for i in range(m):
            halt, memo = self._threshold_decide(halt_logits[:, i].contiguous(), steps[:, i].contiguous(), memo,
                                                last=i == m - 1)
            stop = torch.where(halt & ~halted, steps[:, i], stop)
            halted |= halt
        return stop

    def stopping_steps(self, halt_logits: Tensor) -> Tensor | None:
        """(b, M) raw halt logits of steps 1..M -> (b,) step at which `decide` stops each sample,
        all columns at once (a cumulative sum instead of the step-by-step memo); None under
        eval_rule "sample", whose draws must be made step by step."""
        if self.cfg.eval_rule != "threshold":
            return None
        b, m = halt_logits.shape
        steps = step_grid(halt_logits, None)
        shaped = self.probe.shape(halt_logits, steps)
        allowed = steps >= self.cfg.min_steps
        log_remaining = torch.where(allowed, F.logsigmoid(-shaped), torch.zeros_like(shaped)).cumsum(1)
        t = self.threshold_in_use()
        bound = math.log1p(-t) if t < 1 else -math.inf
        halt = (allowed & (log_remaining <= bound)) | (steps >= self.cfg.max_steps)
        halt[:, -1] = True
        return steps.gather(1, halt.to(torch.uint8).argmax(1, keepdim=True)).squeeze(1)

    def log_prior(self, m: int, device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
        """(M,) log of Geometric(prior_lambda) truncated at M and renormalised."""
        lp = self.cfg.prior_lambda
        n = torch.arange(m, device=device, dtype=torch.float64)
        log_prior = math.log(lp) + n * math.log1p(-lp)
        return (log_prior - torch.logsumexp(log_prior, 0)).to(dtype)

    # -- training -------------------------------------------------------------------------------
    def loss(self, segment: Segment) -> tuple[Tensor, dict[str, float]]:
        """Expected task loss under p + kl_weight * KL(p || prior) (+ L1 penalty) over the
        trajectory in `segment` (its steps from `segment.steps`; the last one is treated as M)."""
        outs, labels = segment.outs, segment.labels
        halt_logits = torch.stack([o.halt_logits for o in outs], 1)  # (b, M)
        steps = segment.steps.view(-1, 1) + torch.arange(len(outs), device=halt_logits.device)  # (b, M)
        d = self._log_distribution(halt_logits, steps)
        support, log_p = d["support"], d["log_p"]
        p = torch.where(support, log_p.exp(), torch.zeros_like(log_p))
        losses = (segment.step_losses() if segment.step_losses is not None else
                  torch.stack([segment.task_loss(o.logits, labels) for o in outs], 1)).to(p.dtype)  # (b, M)
        reconstruction = (p * losses).sum(1).mean()
        log_prior = self.log_prior(len(outs), halt_logits.device, p.dtype)
        # 0 * log 0 = 0: off-support log p is a finite dummy and p is exactly 0 there
        kl = torch.where(support, p * (log_p - log_prior), torch.zeros_like(p)).sum(1).mean()
        weight = self.weight(segment.train_step)
        loss = reconstruction + weight * kl + self.probe.penalty(d["shaped"])
        with torch.no_grad():
            n = torch.arange(1, len(outs) + 1, device=p.device, dtype=p.dtype)
            # detached 0-dim tensors: the training loop reads them in its one host transfer
            stats = {"kl": kl.detach(), "expected_steps": (p * n).sum(1).mean(),
                     "reconstruction": reconstruction.detach(), "lm_loss": reconstruction.detach(),
                     "halt_prob_mean": torch.sigmoid(d["shaped"]).mean()}
        return loss, stats

    # -- inference ------------------------------------------------------------------------------
    def start(self, batch_size: int, device: torch.device) -> Memo:
        return {"log_remaining": torch.zeros(batch_size, device=device)}

    def _threshold_decide(self, raw: Tensor, steps: Tensor, memo: Memo, *, last: Tensor | bool) -> tuple[Tensor, Memo]:
        _, allowed, _, log_go_on = self._log_lambdas(raw, steps)
        log_remaining = memo["log_remaining"].to(log_go_on.dtype) + log_go_on
        # cumulative mass 1 - exp(log_remaining) >= threshold  <=>  log_remaining <= log(1 - threshold)
        t = self.threshold_in_use()
        bound = math.log1p(-t) if t < 1 else -math.inf
        return (allowed & (log_remaining <= bound)) | last, {"log_remaining": log_remaining}

    def decide(self, out: StepOutput, steps: Tensor, memo: Memo) -> tuple[Tensor, Memo]:
        at_max = steps >= self.cfg.max_steps
        if self.cfg.eval_rule == "threshold":
            return self._threshold_decide(out.halt_logits, steps, memo, last=at_max)
        shaped, allowed, _, log_go_on = self._log_lambdas(out.halt_logits, steps)
        lam = torch.sigmoid(shaped).detach()
        draw = torch.bernoulli(lam, generator=self.generator).bool()
        log_remaining = memo["log_remaining"].to(log_go_on.dtype) + log_go_on
        return (draw & allowed) | at_max, {"log_remaining": log_remaining}

    def answer(self, out: StepOutput, memo: Memo) -> Tensor:
        return out.logits
