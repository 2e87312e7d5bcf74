"""What one optimizer step computes, behind one small interface, for the two ways heads train.

- `DeepSupervision` (heads with trains_on = "step": Q-halt, Q-continue): each optimizer step
  advances every slot of the carry by ONE ACT step; halted slots take fresh samples from the
  stream. The recursion's gradient is the model's own rule, or a gradient estimator's
  (ponder.training.estimator_hook).
- `Trajectory` (trains_on = "trajectory": ACT, PonderNet): each optimizer step runs a fresh batch
  for all M steps.
- `TokenObjective` (language models, whose halting if any is per token): each optimizer step
  takes a fresh batch of token windows and the model's own `loss(tokens, labels, train_step)`.

Both hand the halting head a `Segment` and return its loss plus the model's auxiliary loss (the
adapter's regulariser): `forward(train_step) -> (loss, metrics)` (figures as 0-dim tensors: the
loop reads them with everything else in the step's one host transfer), `pending()` (the device
values `commit` needs, read in that same transfer), then `commit(ok, host)` once the optimizer
step was taken (ok) or refused (not ok, non-finite) with the fetched values, and `state_dict()`
for exact resume. `context` is the StepContext of the last forward (read by the health monitors).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ponder.core.errors import PonderError
from ponder.core.metrics import Metric
from ponder.core.types import IGNORE, StepOutput
from ponder.models.halting import Segment
from ponder.training.carry import Carry, SampleStream
from ponder.training.distributed import SINGLE, Shard
from ponder.training.estimator_hook import estimated_step
from ponder.training.transfer import fetch


def stablemax_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """TRM's stablemax CE in float64: s(x) = x+1 (x>=0) else 1/(1-x); p = s/sum(s). (b, n) loss."""
    x = logits.double()
    s = torch.where(x >= 0, x + 1, 1 / (1 - x.clamp(max=0)))
    logp = s.log() - s.sum(-1, keepdim=True).log()
    loss = -logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    # at least float32: under bf16 autocast the logits are bf16, and the loss must not be
    return torch.where(labels == IGNORE, torch.zeros_like(loss), loss).to(torch.promote_types(logits.dtype,
                                                                                                torch.float32))


def per_sample_task_loss(logits: Tensor, labels: Tensor, kind: str) -> Tensor:
    """(b, n, v) logits, (b, n) labels -> (b,) mean loss over each sample's supervised positions."""
    if kind == "stablemax":
        per_token = stablemax_cross_entropy(logits, labels)  # (b, n)
    else:
        per_token = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE, reduction="none")
    return per_token.sum(1) / (labels != IGNORE).sum(1).clamp(min=1)


def task_loss(logits: Tensor, labels: Tensor, kind: str) -> Tensor:
    """Mean over samples of `per_sample_task_loss` (scalar)."""
    return per_sample_task_loss(logits, labels, kind).mean()


def _halt_spread(halt_logits: Tensor) -> dict[str, Tensor | float]:
    """Mean and spread across inputs of the halt logits, and the mean halting probability (0-dim
    tensors, read with the step's one host transfer)."""
    h = halt_logits.detach()
    return {"halt_logit_mean": h.mean(), "halt_logit_std": h.std() if len(h) > 1 else 0.0,
            "halt_prob_mean": torch.sigmoid(h).mean()}


def _with_aux(loss: Tensor, ctx) -> Tensor:
    aux = ctx.aux_loss  # e.g. the adapter's norm regulariser
    return loss if aux is None else loss + aux


class _Counters:
    """Samples taken from the stream, samples completed, their steps, and the steps of the
    samples completed since the last log record (`halt_steps`); global across processes (the
    completed samples of every rank are gathered), so every rank holds the same counts."""

    def __init__(self, shard: Shard):
        self.shard = shard
        self.counters = {"samples_taken": 0, "samples_completed": 0, "steps_completed_total": 0}
        self.halt_steps: list[int] = []

    def complete(self, steps: Tensor, done: Tensor) -> None:
        """Count the samples whose slots are `done` (bool, this rank's rows), with their `steps`
        (host tensors: the loop fetched them)."""
        steps, done = np.asarray(steps), np.asarray(done, dtype=bool)
        if self.shard.active:
            steps = self.shard.gather_cat(torch.as_tensor(steps, device="cpu")).numpy()
            done = self.shard.gather_cat(torch.as_tensor(done, device="cpu")).numpy()
        steps = steps[done]
        self.counters["samples_completed"] += len(steps)
        self.counters["steps_completed_total"] += int(steps.sum())
        self.halt_steps.extend(steps.tolist())

    def state(self) -> dict:
        return {"counters": dict(self.counters), "halt_steps": list(self.halt_steps)}

    def load(self, s: dict) -> None:
        self.counters.update(s["counters"])
        self.halt_steps = list(s["halt_steps"])

    def _take_share(self):
        """A fresh global batch of `batch_size` from the stream (counted), this rank's rows of it,
        on the device (objectives with no carry: `stream`, `batch_size`, `rows`, `device`)."""
        batch = self.stream.take(self.batch_size)
        self.counters["samples_taken"] += len(batch)
        if self.shard.active:
            batch = batch.index(torch.arange(self.batch_size, device="cpu")[self.rows])  # the stream's batch is on the CPU
        return batch.to(self.device)

    # an objective with no carry: the counters are its whole state, and nothing is in flight
    def state_dict(self) -> dict:
        return self.state()

    def load_state_dict(self, s: dict) -> None:
        self.load(s)

    def in_flight(self) -> int:
        return 0

    def pending(self) -> dict[str, Tensor]:
        return {}


class DeepSupervision(_Counters):
    """TRM/HRM deep supervision with the carry kept across optimizer steps."""

    def __init__(self, model, stream: SampleStream, metric: Metric, *, batch_size: int, halt_cfg, loss_kind: str,
                 device: torch.device, seed: int, estimator=None, shard: Shard = SINGLE):
        super().__init__(shard)
        self.model, self.head, self.stream, self.metric = model, model.halting, stream, metric
        self.halt_cfg, self.loss_kind = halt_cfg, loss_kind
        self.estimator = estimator  # None: the model's own gradient rule; see ponder.training.estimator_hook
        self.carry = Carry(model, batch_size, device, shard)
        self.memo = self.head.start(len(self.carry.steps), device)
        self.explore_gen = torch.Generator().manual_seed(seed + 1)
        self.context = None

    def forward(self, train_step: int) -> tuple[Tensor, dict[str, float]]:
        carry, cfg = self.carry, self.halt_cfg
        fresh = carry.needs_sample.copy()  # on the host: which slots take a sample needs no device read
        self.counters["samples_taken"] += carry.refill(self.model, self.stream, max_steps=cfg.max_steps,
                                                       explore_prob=cfg.explore_prob, generator=self.explore_gen)
        if fresh.any():  # fresh samples start with a fresh halting memo
            start = self.head.start(len(fresh), carry.steps.device)
            mask = torch.as_tensor(fresh, device=carry.steps.device)
            self.memo = {k: torch.where(mask.view(-1, *[1] * (v.dim() - 1)), start[k], v) if k in start else v
                         for k, v in self.memo.items()}
        batch = carry.batch
        labels = batch.labels
        ctx = self.context = self.model.prepare(batch)
        est_loss, est_stats = None, {}
        if self.estimator is None:
            self._new_state, out = self.model.step(carry.state, ctx)
        else:  # the recursion's gradient comes from the estimator, through a zero-valued term
            self._new_state, out, est_loss, est_stats = estimated_step(
                self.model, carry.state, ctx, lambda lg: task_loss(lg, labels, self.loss_kind), self.estimator)
        with torch.no_grad():
            scores = self.metric.score(out.logits, labels)  # per sample
        next_out = None
        if self.head.needs_next_step:  # HRM's bootstrapped Q-continue target
            with torch.no_grad():
                _, next_out = self.model.step(self._new_state, ctx)
        segment = Segment([out], carry.steps + 1, labels, self._task_loss, [self.metric.correct(scores)],
                          train_step=train_step, next_out=next_out)
        loss, stats = self.head.loss(segment)
        self._out = out
        metrics = {**stats, **{f"step_{k}": v for k, v in self.metric.summarize_batch(scores).items()},
                   **_halt_spread(out.halt_logits), **est_stats}
        return _with_aux(loss if est_loss is None else loss + est_loss, ctx), metrics

    def _task_loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        return per_sample_task_loss(logits, labels, self.loss_kind)

    def pending(self) -> dict[str, Tensor]:
        """Which slots halt if the step is taken, and their step counts: the head's own `decide`
        on this step's output (the memo it would leave is kept until `commit`)."""
        carry = self.carry
        steps = carry.steps + 1
        with torch.no_grad():
            halted, self._next_memo = self.head.decide(self._out, steps, self.memo)
        halted = (halted & (steps >= carry.min_steps)) | (steps >= self.halt_cfg.max_steps)
        return {"_halted": halted, "_steps": steps}

    def commit(self, ok: bool, host: dict | None = None) -> None:
        """Keep the step (ok) or drop it; `host`: `pending()` as the loop fetched it (None: read here)."""
        carry = self.carry
        if not ok:  # a refused step: every slot keeps its sample but restarts from fresh latents
            everyone = torch.ones(len(carry.steps), dtype=torch.bool, device=carry.steps.device)
            carry.state = self.model.reset_state(carry.state, everyone)
            carry.steps.zero_()
            self.memo = self.head.start(len(everyone), carry.steps.device)
            return
        host = fetch(self.pending()) if host is None else host
        carry.state = self._new_state
        carry.steps += 1
        self.memo = self._next_memo
        halted = host["_halted"]  # (b,) on the host
        self.complete(host["_steps"], halted)
        carry.needs_sample |= halted

    def state_dict(self) -> dict:
        """Global (every rank's slots); a collective under several processes."""
        memo = {k: self.shard.gather_cat(v) for k, v in self.memo.items()}
        return {"carry": self.carry.state_dict(), "memo": memo, "explore_rng": self.explore_gen.get_state(),
                **self.state()}

    def load_state_dict(self, s: dict) -> None:
        self.carry.load_state_dict(s["carry"])
        rows = self.shard.rows(self.carry.global_size)
        self.memo = {k: v[rows].to(self.carry.device) for k, v in s["memo"].items()}
        self.explore_gen.set_state(s["explore_rng"])
        self.load(s)

    def in_flight(self) -> int:
        """Samples in flight in the global carry (a collective under several processes)."""
        needs = self.carry.needs_sample
        if self.shard.active:
            needs = self.shard.gather_cat(torch.as_tensor(needs, device="cpu")).numpy()
        return int((~needs).sum())


class _LazyCorrect:
    """Per step of a trajectory, is that step's answer exactly right: a (b,) bool per output,
    computed on first reading (Q-learning heads read it; PonderNet and ACT do not)."""

    def __init__(self, metric: Metric, outs: list, labels: Tensor):
        self._args, self._items = (metric, outs, labels), None

    def _all(self) -> list[Tensor]:
        if self._items is None:
            metric, outs, labels = self._args
            with torch.no_grad():
                self._items = [metric.correct(metric.score(o.logits, labels)) for o in outs]
        return self._items

    def __getitem__(self, i):
        return self._all()[i]

    def __iter__(self):
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._args[1])


def _fast_stops(head, halt_logits: Tensor) -> Tensor | None:
    """(b,) step at which the head's deployed rule stops each sample of a trajectory with (b, M)
    raw halt logits, computed at once (`head.stopping_steps`), or None where the head has no such
    shortcut (then the rule is replayed step by step: e.g. a rule that draws at random)."""
    fn = getattr(head, "stopping_steps", None)
    return None if fn is None else fn(halt_logits)


class Trajectory(_Counters):
    """Whole trajectories: a fresh batch runs all M steps; the head's loss of the trajectory trains it."""

    def __init__(self, model, stream: SampleStream, metric: Metric, *, batch_size: int, halt_cfg, loss_kind: str,
                 device: torch.device, shard: Shard = SINGLE):
        super().__init__(shard)
        self.model, self.head, self.stream, self.metric = model, model.halting, stream, metric
        self.halt_cfg, self.loss_kind, self.device, self.batch_size = halt_cfg, loss_kind, device, batch_size
        self.rows = shard.rows(batch_size)  # this rank's part of each global batch
        self.context = None
        self.detailed = True  # score the deployed answer this step (the loop sets it: on logged steps)

    def forward(self, train_step: int) -> tuple[Tensor, dict[str, float]]:
        """The trajectory's loss. The context is prepared once per trajectory (the recurrent
        cells read their constant input projection from it at every step); the deployed rule's
        stopping step of each sample is computed every step (vectorised where the head allows:
        the counters need it), its answer's score and the spread of the halt logits only on the
        steps whose figures are logged (`detailed`, set by the loop; no host read in between)."""
        batch = self._take_share()
        state = self.model.init_state(len(batch), self.device)
        ctx = self.context = self.model.prepare(batch)
        m, b = self.halt_cfg.max_steps, len(batch)
        cols = getattr(self.model, "_answer_cols", None)  # the only positions ever scored, or None
        labels = batch.labels if cols is None else batch.labels[:, cols]
        step_losses = None
        if getattr(self.model, "outputs_at_once", False):  # the recursion, then every output in one call
            ys, _ = self.model.trajectory(state, ctx, m)  # (m * b, 1, H), step-major
            # only the scored positions' logits, against their labels (`labels`), where the model
            # has such positions
            every = self.model.output(ys, **({} if cols is None else {"positions_only": True}))
            outs = [StepOutput(logits=lg, halt_logits=hl, aux={k: v[i * b:(i + 1) * b] for k, v in every.aux.items()})
                    for i, (lg, hl) in enumerate(zip(every.logits.split(b), every.halt_logits.split(b)))]
            out_labels = labels

            def task_loss(logits: Tensor, labels: Tensor) -> Tensor:
                return per_sample_task_loss(logits, labels, self.loss_kind)

            def step_losses() -> Tensor:  # (b, M): one cross-entropy call for the whole trajectory
                return task_loss(every.logits, labels.repeat(m, 1)).view(m, b).t()
        else:
            # a model whose gradient runs through its carried state keeps the trajectory's graph
            # between steps, as PonderNet and ACT train (the cells' `trajectory` does the same)
            detach = not self.model.through_steps
            outs = []
            for _ in range(m):
                state, out = self.model.step(state, ctx, detach=detach)
                outs.append(out)
            out_labels = batch.labels  # the outputs hold every position's logits

            def task_loss(logits: Tensor, labels: Tensor) -> Tensor:
                return per_sample_task_loss(logits if cols is None else logits[:, cols], labels, self.loss_kind)
        correct = _LazyCorrect(self.metric, outs, out_labels)  # only heads that read it pay for it
        first = torch.ones(b, dtype=torch.long, device=self.device)
        segment = Segment(outs, first, labels, task_loss, correct, train_step=train_step, step_losses=step_losses)
        loss, stats = self.head.loss(segment)
        metrics = dict(stats)
        with torch.no_grad():
            halt_logits = torch.stack([o.halt_logits for o in outs], 1).detach()  # (b, M)
            fast = None if self.detailed else _fast_stops(self.head, halt_logits)
            if fast is not None:  # where the deployed rule stops each sample, without its answers
                self._stop = fast
            else:  # the deployed rule replayed on this trajectory: where each sample stops, and its answer
                memo = self.head.start(len(batch), self.device)
                stop = torch.zeros(len(batch), dtype=torch.long, device=self.device)
                answer = None  # in the head's answer dtype (ACT's running answer is float32 under bf16)
                for t, out in enumerate(outs, start=1):
                    halt, memo = self.head.decide(out, torch.full_like(stop, t), memo)
                    new = halt & (stop == 0)
                    given = self.head.answer(out, memo)  # (b, n, v)
                    answer = torch.zeros_like(given) if answer is None else answer
                    # where, not a boolean-mask write: that would read the mask back to the host
                    answer = torch.where(new.view(-1, 1, 1), given, answer)
                    stop = torch.where(new, t, stop)
                self._stop = stop
                if self.detailed:
                    scores = self.metric.score(answer, out_labels)
                    metrics = {**{f"step_{k}": v for k, v in self.metric.summarize_batch(scores).items()},
                               **_halt_spread(halt_logits.mean(1)), **stats}  # the head's own figures win
        return _with_aux(loss, ctx), metrics

    def pending(self) -> dict[str, Tensor]:
        return {"_stop": self._stop}  # where the deployed rule stops each sample

    def commit(self, ok: bool, host: dict | None = None) -> None:
        if ok:
            host = fetch(self.pending()) if host is None else host
            self.complete(host["_stop"], np.ones(len(host["_stop"]), dtype=bool))


class TokenObjective(_Counters):
    """Language models: a fresh batch of windows per optimizer step, the model's whole loss of it
    (the recursive LM: all M cycles and its halting head's loss over every supervised token; the
    hybrid: next-token cross-entropy). No carry: a window is complete after its step.

    The model's figures are logged per step (mean_depth, halt_rate, halt_logit_mean/std and the
    head's own, e.g. ponder_cost, q_halt_acc), so the report shows whether halting moves. For the
    loop's halting counters a window counts as one sample whose "steps" are its tokens' mean depth
    (`halted_mean_steps` is then the mean depth per token; `steps_completed_total` sums them).
    """

    def __init__(self, model, stream: SampleStream, *, batch_size: int, device: torch.device, shard: Shard = SINGLE):
        super().__init__(shard)
        self.model, self.stream, self.device, self.batch_size = model, stream, device, batch_size
        self.rows = shard.rows(batch_size)
        self.context = None  # no StepContext: the health monitors' adapter checks do not apply
        self._depth = 0.0

    def forward(self, train_step: int) -> tuple[Tensor, dict[str, float]]:
        batch = self._take_share()
        loss, stats = self.model.loss(batch.inputs, batch.labels, train_step)
        self._depth = stats.get("mean_depth", 1.0)  # read by commit, fetched by the loop with the figures
        return loss, stats

    def commit(self, ok: bool, host: dict | None = None) -> None:
        self._depth = float((host or {}).get("mean_depth", self._depth))  # fetched with the step's figures
        if ok:  # every window of the global batch completed; this rank's mean depth stands for them
            self.counters["samples_completed"] += self.batch_size
            self.counters["steps_completed_total"] += self._depth * self.batch_size
            self.halt_steps.append(self._depth)


def build_objective(model, stream: SampleStream, metric: Metric, *, batch_size: int, halt_cfg, loss_kind: str,
                    device: torch.device, seed: int, estimator=None, shard: Shard = SINGLE):
    """The objective the model's halting head trains with; `estimator` (deep supervision only)
    replaces the model's own gradient rule for the recursion (ponder.training.estimator_hook). A language
    model (`token_objective`) trains with `TokenObjective`."""
    if getattr(model, "token_objective", False):
        if estimator is not None:
            raise PonderError(f"estimator.kind={estimator.name} does not apply to a language model")
        return TokenObjective(model, stream, batch_size=batch_size, device=device, shard=shard)
    if model.halting.trains_on == "trajectory":
        if estimator is not None:
            raise PonderError(f"estimator.kind={estimator.name} needs a halting head trained one step at a time "
                              f"(q_halt, q_continue), not {halt_cfg.kind}, whose loss spans the whole trajectory")
        return Trajectory(model, stream, metric, batch_size=batch_size, halt_cfg=halt_cfg, loss_kind=loss_kind,
                          device=device, shard=shard)
    return DeepSupervision(model, stream, metric, batch_size=batch_size, halt_cfg=halt_cfg, loss_kind=loss_kind,
                           device=device, seed=seed, estimator=estimator, shard=shard)
