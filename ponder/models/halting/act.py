"""Adaptive Computation Time (Graves 2016, arXiv 1603.08983): trained on whole unrolled trajectories.

A halting unit h_n = sigmoid(shaped logit) is read after every step n. The sample halts at

    N = first n with sum_{j<=n} h_j >= 1 - act_epsilon   (capped at M = max_steps),

with remainder R = 1 - sum_{n<N} h_n and halting distribution p_n = h_n (n < N), R (n = N),
0 (n > N); p sums to one over the M steps. The answer is the mean-field output sum_n p_n y_n
(the LOGITS are averaged). The ponder cost rho = N + R is differentiable only through R (N is a
count); the objective is task_loss(sum_n p_n y_n) + act_tau * rho (+ the probe's L1 penalty).

min_steps: before step min_steps the halting unit is masked to h_n = 0 (and a crossing there is
not a halt). Those steps take no halting mass and get no weight in the answer, but they still
count in N, so rho >= min_steps. Clamping N up to min_steps instead would leave R negative
whenever the mass crossed early; masking keeps p a distribution that sums to one.

Train/eval agreement: `trajectory_loss`, `halting_distribution`, `halting_steps` and `decide`
all accumulate the halting mass step by step with the same float operations, so the step used
in training is exactly the step inference halts at.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ponder.core.settings import setting
from ponder.core.types import StepOutput
from ponder.models.halting.base import HaltSettings, Memo, ProbeHead, Segment, register_head


@dataclass(kw_only=True)
class ACTSettings(HaltSettings):
    """Graves' ACT.

    Attributes:
        act_tau: weight tau of the ponder cost N + R; the controller's "halt_weight".
        act_epsilon: a sample halts once its cumulative halting probability reaches 1 - epsilon.
    """

    kind = "act"
    act_tau: float = setting(0.01, ge=0)
    act_epsilon: float = setting(0.01, ge=0, lt=1)


@register_head(ACTSettings)
class ACTHead(ProbeHead):
    """Graves' ACT: halt once the cumulative halting probability reaches 1 - epsilon; answer
    with the mean-field logits; ponder cost N + R.

    Inference memo (batch-first, indexable along the batch; starts as {"cum", "halted"} and
    gains the two (b, n, v) entries at the first `decide`, when n and v are known):
        cum (b,): halting mass of the steps decided so far, sum_{n<=t} h_n;
        halted (b,) bool: the sample has already halted (its memo is frozen from then on);
        weighted (b, n, v): sum_{n<=t} h_n y_n, the running weighted logits;
        answer (b, n, v): sum_{n<t} h_n y_n + R_t y_t, what the sample answers if it halts at t.
    A budget t past the halting step N answers with the step-N answer (ACT capped at t runs
    min(N, t) steps), so `rollout_all_steps` never sees negative remainders.
    """

    trains_on = "trajectory"
    needs_next_step = False
    weight_setting = "act_tau"

    # -- the halting unit, shared by training and inference ------------------------------------
    def _h(self, raw: Tensor, steps: Tensor) -> tuple[Tensor, Tensor]:
        """(b,) raw logits at (b,) steps -> shaped logit and masked halting unit h (0 before min_steps)."""
        shaped = self.probe.shape(raw, steps)
        h = torch.sigmoid(shaped)
        return shaped, torch.where(steps >= self.cfg.min_steps, h, torch.zeros_like(h))

    def _crossed(self, cum: Tensor, steps: Tensor) -> Tensor:
        return (cum >= 1.0 - self.cfg.act_epsilon) & (steps >= self.cfg.min_steps)

    def _trajectory(self, halt_logits: Tensor, steps: Tensor | None = None) -> dict[str, Tensor]:
        """Whole-trajectory quantities from (b, M) raw halt logits (truncation at column M).

        Returns p (b, M) halting distribution, N (b,) long halting step, R (b,) remainder,
        h (b, M) masked halting units, shaped (b, M) shaped logits.
        """
        b, m = halt_logits.shape
        steps = step_grid(halt_logits, steps)
        shaped, h = zip(*(self._h(halt_logits[:, i].contiguous(), steps[:, i].contiguous()) for i in range(m)))
        cum = halt_logits.new_zeros(b)
        stop = torch.full((b,), m, dtype=torch.long, device=halt_logits.device)
        remainder = halt_logits.new_zeros(b)
        halted = torch.zeros(b, dtype=torch.bool, device=halt_logits.device)
        p = []
        for i in range(m):  # sequential, exactly as `decide` accumulates it
            rem_i = 1.0 - cum  # R if the sample halts at this step
            cum = cum + h[i]
            now = ~halted & (self._crossed(cum, steps[:, i]) | (i == m - 1))
            p.append(torch.where(halted, torch.zeros_like(rem_i), torch.where(now, rem_i, h[i])))
            remainder = torch.where(now, rem_i, remainder)
            stop = torch.where(now, steps[:, i], stop)
            halted = halted | now
        return {"p": torch.stack(p, 1), "N": stop, "R": remainder, "h": torch.stack(h, 1),
                "shaped": torch.stack(shaped, 1)}

    def halting_distribution(self, halt_logits: Tensor, steps: Tensor | None = None) -> Tensor:
        """(b, M) raw halt logits -> (b, M) halting distribution p (sums to one over the M steps).

        steps: the step count of each column, (M,) or (b, M); default 1..M."""
        return self._trajectory(halt_logits, steps)["p"]

    def halting_steps(self, halt_logits: Tensor, steps: Tensor | None = None) -> Tensor:
        """(b, M) raw halt logits -> (b,) step N each sample halts at (what `decide` returns)."""
        return self._trajectory(halt_logits, steps)["N"]

    def stopping_steps(self, halt_logits: Tensor) -> Tensor:
        """(b, M) raw halt logits of steps 1..M -> (b,) step at which `decide` stops each sample."""
        return self.halting_steps(halt_logits)

    # -- training -------------------------------------------------------------------------------
    def loss(self, segment: Segment) -> tuple[Tensor, dict[str, float]]:
        """task_loss(mean-field logits) + act_tau * (N + R) (+ L1 penalty) over the trajectory in
        `segment` (its steps from `segment.steps`; the last one is treated as M)."""
        outs, labels = segment.outs, segment.labels
        halt_logits = torch.stack([o.halt_logits for o in outs], 1)  # (b, M)
        steps = segment.steps.view(-1, 1) + torch.arange(len(outs), device=halt_logits.device)  # (b, M)
        tr = self._trajectory(halt_logits, steps)
        p = tr["p"]
        # in float32 under bf16 autocast too, the same additions as the inference memo's
        mean_field = torch.zeros_like(outs[0].logits, dtype=p.dtype)
        for i, o in enumerate(outs):
            mean_field = mean_field + p[:, i].view(-1, 1, 1) * o.logits.to(p.dtype)
        task = segment.task_loss(mean_field, labels).mean()
        rho = tr["N"].to(tr["R"].dtype) + tr["R"]  # gradient only through R
        weight = self.weight(segment.train_step)
        loss = task + weight * rho.mean() + self.probe.penalty(tr["shaped"])
        with torch.no_grad():
            # detached 0-dim tensors: the training loop reads them in its one host transfer
            stats = {"ponder_cost": rho.mean(), "expected_steps": tr["N"].float().mean(),
                     "halt_prob_mean": torch.sigmoid(tr["shaped"]).mean(), "task_loss": task.detach(),
                     "lm_loss": task.detach()}
        return loss, stats

    # -- inference ------------------------------------------------------------------------------
    def start(self, batch_size: int, device: torch.device) -> Memo:
        return {"cum": torch.zeros(batch_size, device=device),
                "halted": torch.zeros(batch_size, dtype=torch.bool, device=device)}

    def decide(self, out: StepOutput, steps: Tensor, memo: Memo) -> tuple[Tensor, Memo]:
        _, h = self._h(out.halt_logits, steps)
        prev = memo["cum"].to(h.dtype)
        done = memo["halted"]
        y = out.logits.to(h.dtype)  # (b, n, v): the running answer in the halting mass's dtype (float32)
        weighted = memo["weighted"] if "weighted" in memo else torch.zeros_like(y)
        rem = 1.0 - prev
        cum = prev + h
        now = ~done & (self._crossed(cum, steps) | (steps >= self.cfg.max_steps))
        answer = weighted + rem.view(-1, 1, 1) * y
        new_weighted = weighted + h.view(-1, 1, 1) * y
        keep = done.view(-1, 1, 1)  # halted samples keep their memo: the answer stays the step-N one
        memo = {"cum": torch.where(done, prev, cum), "halted": done | now,
                "weighted": torch.where(keep, weighted, new_weighted),
                "answer": torch.where(keep, memo["answer"], answer) if "answer" in memo else answer}
        return done | now, memo

    def answer(self, out: StepOutput, memo: Memo) -> Tensor:
        return memo["answer"]


def step_grid(halt_logits: Tensor, steps: Tensor | None) -> Tensor:
    """(b, M) step counts for the columns of (b, M) halt logits: (M,) or (b, M) given, default 1..M
    (shared with PonderNet)."""
    b, m = halt_logits.shape
    if steps is None:
        steps = torch.arange(1, m + 1, device=halt_logits.device)
    return steps.expand(b, m) if steps.dim() == 1 else steps
