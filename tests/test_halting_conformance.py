"""Conformance suite of the halting-head family: every head registered in HALTING must pass it.

Adding a head = adding a row to FACTS (a test fails until the row exists). Checks, per head, on
synthetic halt logits and random states with small tensors:
1. the halting distribution sums to one over the truncated steps;
2. the halting objective has a non-zero gradient on the halting parameters;
3. no NaN/inf when probabilities underflow (logits +-100) or the task loss is large;
4. PonderNet's KL is KL(p || prior), not the reverse;
5. hand-computed constant-probability cases (ACT, PonderNet);
6. the halting step used in training equals what inference returns, on a tiny real model;
7. unrolled heads learn to ponder longer on inputs whose later steps are better;
plus a short end-to-end training run of each unrolled head.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import ponder.models.halting as halting
from ponder.core.metrics import ExactMatch
from ponder.core.task import Split
from ponder.core.types import Batch, StepOutput
from ponder.models.halting import HALTING, Segment, build_halting, halt_config
from ponder.presets import get_config
from ponder.runs.config import apply_overrides
from ponder.runs.run import build_model, train_run
from ponder.training.carry import batch_of
from ponder.training.evaluate import adaptive_inference, rollout_all_steps
from ponder.training.objectives import Trajectory

D, M, N_POS, V = 8, 5, 3, 4  # state width, max steps, positions, vocabulary of the synthetic outputs


@dataclass
class Facts:
    """What the suite needs to know about a head beyond the protocol.

    distribution: "head" = the head's own `halting_distribution`; "decide" = the distribution
        implied by its decide rule (one-hot at the first step `decide` halts).
    learn: halt_config overrides for the learning check (None = deep-supervision head: its
        learning is tested in tests/test_halting.py).
    """

    distribution: str
    learn: dict | None = None
    config: dict = field(default_factory=dict)  # overrides for every check (e.g. a deterministic eval rule)


FACTS = {
    "q_halt": Facts("decide"),
    "q_continue": Facts("decide"),
    "act": Facts("head", learn={"act_tau": 0.03}),
    "pondernet": Facts("head", learn={"prior_lambda": 0.7, "kl_weight": 0.1}, config={"eval_rule": "threshold"}),
}
HEADS = HALTING.names()
UNROLLED = [k for k in HEADS if HALTING.get(k).trains_on == "trajectory"]


def test_every_registered_head_has_a_row_of_facts():
    assert set(HEADS) == set(FACTS), "add a row to FACTS for each new halting head"
    assert {"act", "pondernet"} <= set(UNROLLED)


# -- synthetic outputs ------------------------------------------------------------------------------

def make_head(kind: str, *, weight_std: float = 0.5, bias: float | None = 0.0, **cfg):
    """A head with probe weight ~ N(0, weight_std) and halt-logit bias `bias` (None: keep the init)."""
    head = build_halting(halt_config(kind=kind, max_steps=M, **{**FACTS[kind].config, **cfg}), d_model=D)
    with torch.no_grad():
        head.probe.linear.weight.normal_(0, weight_std)
        if bias is not None:  # output 0 is the halt logit; others (q_continue) keep their init
            head.probe.linear.bias[0] = bias
    return head


def make_outs(head, b: int = 6, *, logit_scale: float = 1.0, steps: int = M) -> list[StepOutput]:
    """`steps` step outputs: random token logits (leaf tensors) and the head's logits of random states."""
    outs = []
    for _ in range(steps):
        halt_logits, aux = head.logits(torch.randn(b, N_POS, D))
        logits = (logit_scale * torch.randn(b, N_POS, V)).requires_grad_()
        outs.append(StepOutput(logits=logits, halt_logits=halt_logits, aux=aux))
    return outs


def ce(logits, labels):
    return F.cross_entropy(logits.transpose(1, 2), labels, reduction="none").mean(1)  # (b,)


def trajectory(outs, labels, task_loss=ce) -> Segment:
    """A whole trajectory from step 1 as one segment (what the Trajectory objective hands a head)."""
    b = len(labels)
    return Segment(outs, torch.ones(b, dtype=torch.long), labels, task_loss, [torch.zeros(b, dtype=torch.bool)] * len(outs))


def decide_replay(head, outs) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """First step the head's decide rule halts at (b,), and its answers at every step."""
    b = len(outs[0].halt_logits)
    memo = head.start(b, torch.device("cpu"))
    stop = torch.zeros(b, dtype=torch.long)
    answers = []
    with torch.no_grad():
        for t, out in enumerate(outs, start=1):
            halt, memo = head.decide(out, torch.full((b,), t), memo)
            stop = torch.where(halt & (stop == 0), t, stop)
            answers.append(head.answer(out, memo))
    return stop, answers


def distribution(head, outs) -> torch.Tensor:
    halt_logits = torch.stack([o.halt_logits for o in outs], 1)
    if FACTS[head.cfg.kind].distribution == "head":
        return head.halting_distribution(halt_logits)
    stop, _ = decide_replay(head, outs)
    return F.one_hot(stop - 1, len(outs)).to(halt_logits.dtype)


def objective(head, outs, labels, task_loss=ce):
    """The head's objective over the steps: one trajectory segment, or one segment per step
    (deep supervision)."""
    if head.trains_on == "trajectory":
        return head.loss(trajectory(outs, labels, task_loss))[0]
    b = len(labels)
    total = 0.0
    for t in range(len(outs) - 1):  # the last step has no next step for heads that need one
        correct = torch.rand(b) < 0.5
        nxt = outs[t + 1] if head.needs_next_step else None
        loss, _ = head.loss(Segment([outs[t]], torch.full((b,), t + 1), labels, task_loss, [correct], next_out=nxt))
        total = total + loss
    return total


# -- 1. the halting distribution sums to one ----------------------------------------------------------

@pytest.mark.parametrize("kind", HEADS)
@pytest.mark.parametrize("regime", ["random", "halt_now", "never", "min_steps", "step_gate"])
def test_halting_distribution_sums_to_one(kind, regime):
    torch.manual_seed(1)
    cfg, bias, std = {}, 0.0, 2.0
    if regime == "halt_now":
        bias, std = 100.0, 0.0
    elif regime == "never":
        bias, std = -100.0, 0.0
    elif regime == "min_steps":
        cfg = {"min_steps": 3}
    elif regime == "step_gate":
        cfg = {"step_gate": True, "logit_bound": 4.0}
    head = make_head(kind, weight_std=std, bias=bias, **cfg)
    p = distribution(head, make_outs(head, b=16))
    assert p.shape == (16, M)
    assert torch.isfinite(p).all() and (p >= 0).all()
    assert torch.allclose(p.sum(1), torch.ones(16), atol=1e-6)
    if regime == "min_steps":
        assert (p[:, :2] == 0).all()
    if regime == "never":
        assert torch.allclose(p[:, -1], torch.ones(16), atol=1e-6)  # everything runs to the cap
    if regime == "halt_now":
        assert torch.allclose(p[:, 0], torch.ones(16), atol=1e-6)


# -- 2. the halting objective has a gradient on the halting parameters --------------------------------

@pytest.mark.parametrize("kind", HEADS)
@pytest.mark.parametrize("init", ["random_weight", "deep_start", "step_gate"])
def test_halting_objective_has_gradient_on_halting_parameters(kind, init):
    """Catches a ponder loss on integer counts or detached with `.item()`: zero gradient."""
    torch.manual_seed(2)
    if init == "deep_start":  # the default initialisation: zero weight, negative bias
        head = build_halting(halt_config(kind=kind, max_steps=M, **FACTS[kind].config), d_model=D)
    else:
        head = make_head(kind, weight_std=0.5, bias=-1.0, **({"step_gate": True} if init == "step_gate" else {}))
    outs = make_outs(head)
    labels = torch.randint(0, V, (6, N_POS))
    objective(head, outs, labels).backward()
    linear = head.probe.linear
    assert linear.bias.grad is not None and linear.bias.grad.abs().sum() > 0
    assert linear.weight.grad.abs().sum() > 0
    if init == "step_gate":
        assert head.probe.gate.grad.abs().sum() > 0


def test_act_ponder_cost_alone_has_gradient():
    """With identical outputs at every step the task loss cannot depend on halting: only rho = N + R
    drives the head, and it must still have a gradient (through R)."""
    head = make_head("act", weight_std=0.0, bias=-2.0, act_tau=1.0)
    outs = make_outs(head)
    same = [StepOutput(logits=outs[0].logits, halt_logits=o.halt_logits) for o in outs]
    zero_task = lambda lo, la: lo.new_zeros(len(lo))  # noqa: E731
    loss, stats = head.loss(trajectory(same, torch.zeros(6, N_POS, dtype=torch.long), zero_task))
    loss.backward()
    assert stats["ponder_cost"] > stats["expected_steps"] == M
    assert head.probe.linear.bias.grad < 0  # raising h lowers R: gradient descent raises the bias


# -- 3. no NaN / inf when probabilities underflow or the task loss is large ---------------------------

@pytest.mark.parametrize("kind", HEADS)
@pytest.mark.parametrize("bias,logit_scale", [(100.0, 1.0), (-100.0, 1.0), (0.0, 1e4), (100.0, 1e4)])
def test_no_nan_when_probabilities_underflow_or_task_loss_is_large(kind, bias, logit_scale):
    torch.manual_seed(3)
    head = make_head(kind, weight_std=30.0, bias=bias)  # +-100 bias, or logits spread over +-100
    outs = make_outs(head, logit_scale=logit_scale)
    labels = torch.randint(0, V, (6, N_POS))
    loss = objective(head, outs, labels)
    assert torch.isfinite(loss)
    loss.backward()
    for p in head.parameters():
        assert p.grad is None or torch.isfinite(p.grad).all()
    for o in outs:
        assert o.logits.grad is None or torch.isfinite(o.logits.grad).all()
    assert torch.isfinite(distribution(head, outs)).all()


@pytest.mark.parametrize("kind", UNROLLED)
def test_unrolled_heads_are_finite_with_min_steps_and_extreme_logits(kind):
    head = make_head(kind, weight_std=0.0, bias=100.0, min_steps=3)
    outs = make_outs(head)
    loss, stats = head.loss(trajectory(outs, torch.randint(0, V, (6, N_POS)), ce))
    loss.backward()
    assert torch.isfinite(loss) and all(math.isfinite(v) for v in stats.values())
    assert torch.isfinite(head.probe.linear.bias.grad)
    assert stats["expected_steps"] == pytest.approx(3.0)  # halting at once is deferred to min_steps


# -- 4. PonderNet's KL is KL(p || prior) --------------------------------------------------------------

def test_pondernet_kl_is_p_against_the_prior():
    head = make_head("pondernet", weight_std=0.0, prior_lambda=0.2, kl_weight=1.0)
    lam = torch.tensor([[0.6, 0.5, 0.7, 0.2, 0.9]], dtype=torch.float64)  # lambda_5 is replaced by 1
    outs = [StepOutput(logits=torch.zeros(1, N_POS, V), halt_logits=torch.logit(lam[:, i]).float()) for i in range(M)]
    zero_task = lambda lo, la: lo.new_zeros(len(lo))  # noqa: E731
    loss, stats = head.loss(trajectory(outs, torch.zeros(1, N_POS, dtype=torch.long), zero_task))
    # by hand, in float64
    p, rest = [], 1.0
    for n in range(M):
        h = 1.0 if n == M - 1 else lam[0, n].item()
        p.append(rest * h)
        rest *= 1 - h
    prior = [0.2 * 0.8 ** n for n in range(M)]
    prior = [q / sum(prior) for q in prior]
    kl = sum(a * math.log(a / q) for a, q in zip(p, prior))
    reverse = sum(q * math.log(q / a) for a, q in zip(p, prior))
    assert abs(kl - reverse) > 0.05  # the case tells the two directions apart
    assert stats["kl"] == pytest.approx(kl, rel=1e-5)
    assert loss.item() == pytest.approx(kl, rel=1e-5)
    assert torch.allclose(head.halting_distribution(torch.stack([o.halt_logits for o in outs], 1)),
                          torch.tensor([p], dtype=torch.float32), atol=1e-6)


def test_pondernet_kl_is_zero_when_p_is_the_prior_and_zero_mass_steps_count_zero():
    head = make_head("pondernet", weight_std=0.0, prior_lambda=0.3, kl_weight=1.0)
    prior = head.log_prior(M).double().exp()  # truncated and renormalised: not "the last step holds the rest"
    hazard = prior / prior.flip(0).cumsum(0).flip(0)  # lambda_n = prior_n / sum_{j>=n} prior_j
    assert not torch.allclose(hazard[:-1], torch.full((M - 1,), 0.3, dtype=torch.float64))
    lam = torch.cat([hazard[:-1], torch.tensor([0.5], dtype=torch.float64)])  # lambda_M := 1 anyway
    lam = lam.float().expand(2, M)
    outs = [StepOutput(logits=torch.zeros(2, N_POS, V), halt_logits=torch.logit(lam[:, i])) for i in range(M)]
    zero_task = lambda lo, la: lo.new_zeros(len(lo))  # noqa: E731
    _, stats = head.loss(trajectory(outs, torch.zeros(2, N_POS, dtype=torch.long), zero_task))
    assert stats["kl"] == pytest.approx(0.0, abs=1e-6)
    head = make_head("pondernet", weight_std=0.0, bias=100.0, kl_weight=1.0)  # p = one-hot at step 1
    outs = make_outs(head, b=2)
    _, stats = head.loss(trajectory(outs, torch.zeros(2, N_POS, dtype=torch.long), zero_task))
    assert stats["kl"] == pytest.approx(-math.log(head.log_prior(M)[0].exp().item()), rel=1e-5)


# -- 5. hand-computed constant-probability cases ------------------------------------------------------

def constant_outs(prob: float, b: int = 2, steps: int = 6) -> list[StepOutput]:
    torch.manual_seed(5)
    logit = math.log(prob / (1 - prob))
    return [StepOutput(logits=torch.randn(b, N_POS, V), halt_logits=torch.full((b,), logit)) for _ in range(steps)]


def test_act_constant_probability_hand_case():
    head = build_halting(halt_config(kind="act", max_steps=6, act_epsilon=0.01, act_tau=0.01), d_model=D)
    outs = constant_outs(0.3)
    halt_logits = torch.stack([o.halt_logits for o in outs], 1)
    p = head.halting_distribution(halt_logits)
    assert torch.allclose(p, torch.tensor([[0.3, 0.3, 0.3, 0.1, 0.0, 0.0]] * 2), atol=1e-6)
    assert head.halting_steps(halt_logits).tolist() == [4, 4]
    labels = torch.randint(0, V, (2, N_POS))
    seen = {}

    def task(logits, labels):
        seen["logits"] = logits
        return ce(logits, labels)

    loss, stats = head.loss(trajectory(outs, labels, task))
    y = [o.logits for o in outs]
    mean_field = 0.3 * y[0] + 0.3 * y[1] + 0.3 * y[2] + 0.1 * y[3]
    assert torch.allclose(seen["logits"], mean_field, atol=1e-6)  # the LOGITS are averaged
    assert stats["expected_steps"] == 4 and stats["ponder_cost"] == pytest.approx(4.1, abs=1e-5)
    assert loss.item() == pytest.approx(ce(mean_field, labels).mean().item() + 0.01 * 4.1, abs=1e-5)
    # inference: halts at N = 4 with the same answer; a forced budget t < N answers with
    # sum_{n<t} h_n y_n + R_t y_t, a budget past N keeps the step-N answer
    stop, answers = decide_replay(head, outs)
    assert stop.tolist() == [4, 4]
    assert torch.equal(answers[3], seen["logits"].detach())  # exactly: same additions in the same order
    assert torch.allclose(answers[1], 0.3 * y[0] + 0.7 * y[1], atol=1e-6)
    assert torch.equal(answers[5], answers[3])


def test_act_min_steps_masks_early_halting_mass():
    head = build_halting(halt_config(kind="act", max_steps=6, min_steps=3), d_model=D)
    halt_logits = torch.stack([o.halt_logits for o in constant_outs(0.3)], 1)
    p = head.halting_distribution(halt_logits)
    assert torch.allclose(p, torch.tensor([[0.0, 0.0, 0.3, 0.3, 0.3, 0.1]] * 2), atol=1e-6)
    assert head.halting_steps(halt_logits).tolist() == [6, 6]
    head = build_halting(halt_config(kind="act", max_steps=6, min_steps=3), d_model=D)
    halt_logits = torch.stack([o.halt_logits for o in constant_outs(0.999)], 1)  # would halt at step 1
    assert head.halting_steps(halt_logits).tolist() == [3, 3]
    assert torch.allclose(head.halting_distribution(halt_logits)[:, 2], torch.ones(2))


def test_pondernet_constant_lambda_hand_case():
    lam = 0.3
    head = build_halting(halt_config(kind="pondernet", max_steps=6, threshold=0.5), d_model=D)
    halt_logits = torch.stack([o.halt_logits for o in constant_outs(lam)], 1)
    expected = [lam * (1 - lam) ** n for n in range(5)] + [(1 - lam) ** 5]  # the last step holds the rest
    assert torch.allclose(head.halting_distribution(halt_logits), torch.tensor([expected] * 2), atol=1e-6)
    assert head.halting_steps(halt_logits).tolist() == [2, 2]  # cumulative 0.3, 0.51 >= 0.5
    stop, _ = decide_replay(head, constant_outs(lam))
    assert stop.tolist() == [2, 2]
    head = build_halting(halt_config(kind="pondernet", max_steps=6, min_steps=2), d_model=D)
    expected = [0.0] + [lam * (1 - lam) ** n for n in range(4)] + [(1 - lam) ** 4]
    assert torch.allclose(head.halting_distribution(halt_logits), torch.tensor([expected] * 2), atol=1e-6)


def test_pondernet_sampled_halting_is_reproducible_only_when_seeded():
    head = make_head("pondernet", weight_std=0.0, bias=0.0, eval_rule="sample", min_steps=2)
    outs = make_outs(head, b=4000)
    head.generator = torch.Generator().manual_seed(0)
    first, _ = decide_replay(head, outs)
    head.generator = torch.Generator().manual_seed(0)
    again, _ = decide_replay(head, outs)
    assert torch.equal(first, again)
    assert first.min() == 2 and first.max() == M  # never before min_steps; always by M
    assert (first == 2).float().mean().item() == pytest.approx(0.5, abs=0.05)  # lambda = sigmoid(0)


# -- 6. training and inference halt at the same step ---------------------------------------------------

@pytest.mark.parametrize("kind", UNROLLED)
@pytest.mark.parametrize("cfg", [{}, {"min_steps": 3}, {"step_gate": True}])
def test_decide_halts_at_the_step_the_trajectory_loss_uses(kind, cfg):
    """Many random trajectories: the decide replay equals `halting_steps` (the N of training)."""
    torch.manual_seed(8)
    head = make_head(kind, weight_std=1.0, bias=-0.5, **cfg)
    outs = make_outs(head, b=512)
    stop, answers = decide_replay(head, outs)
    trained_n = head.halting_steps(torch.stack([o.halt_logits for o in outs], 1))
    assert torch.equal(stop, trained_n)
    assert len(stop.unique()) >= 2
    if kind == "act":  # the answer at N is exactly the mean-field logits the task loss sees
        seen = {}

        def task(logits, labels):
            seen["logits"] = logits.detach()
            return ce(logits, labels)

        head.loss(trajectory(outs, torch.zeros(512, N_POS, dtype=torch.long), task))
        assert torch.equal(torch.stack(answers, 1)[torch.arange(512), stop - 1], seen["logits"])


class _Task:
    vocab_size, seq_len, num_puzzle_ids, context_len, grid_shape = 6, 16, 0, 0, (4, 4)


class _Stream:
    def __init__(self, batch: Batch):
        self.batch = batch

    def take(self, k: int) -> Batch:
        return self.batch


def tiny_model(kind: str):
    torch.manual_seed(6)
    overrides = [f"--halt.kind={kind}", f"--halt.max_steps={M}", "--halt.min_steps=2"]
    overrides += [f"--halt.{k}={v}" for k, v in FACTS[kind].config.items()]
    cfg = apply_overrides(get_config("debug"), overrides)
    model = build_model(cfg, _Task).eval()
    with torch.no_grad():  # a probe whose decision differs across samples and steps
        model.halting.probe.linear.weight.normal_(0, 3.0)
        model.halting.probe.linear.bias[0] = 0.0
    return model, cfg


@pytest.mark.parametrize("kind", HEADS)
def test_training_and_inference_halt_at_the_same_step(kind, monkeypatch):
    model, cfg = tiny_model(kind)
    head = model.halting
    b = 24
    inputs = torch.randint(0, _Task.vocab_size, (b, _Task.seq_len))
    labels = torch.randint(1, _Task.vocab_size, (b, _Task.seq_len))
    split = Split(inputs.numpy(), labels.numpy(), torch.zeros(b).numpy())
    answers_early, steps = adaptive_inference(model, batch_of(split), max_steps=M)  # real early exit
    preds = answers_early.argmax(-1)
    assert len(steps.unique()) >= 2, "the probe should make halting differ across samples"
    full = rollout_all_steps(model, split, ExactMatch(), max_steps=M, batch_size=b, device=torch.device("cpu"))
    assert full["halt_step"].tolist() == steps.tolist()

    # the decide rule replayed on the full-batch trajectory (what the training loops use)
    with torch.no_grad():
        state, outs = model.init_state(b, torch.device("cpu")), []
        ctx = model.prepare(batch_of(split))
        for _ in range(M):
            state, out = model.step(state, ctx)
            outs.append(out)
    stop, answers = decide_replay(head, outs)
    assert stop.tolist() == steps.tolist()
    answer_at_stop = torch.stack(answers, 1)[torch.arange(b), stop - 1]
    assert torch.equal(answer_at_stop.argmax(-1), preds)
    if head.trains_on != "trajectory":
        return

    # trajectory heads: the N of their loss == the Trajectory objective's decide replay == inference
    captured = {}
    real = head.loss

    def capture(segment):
        captured["halt_logits"] = torch.stack([o.halt_logits for o in segment.outs], 1).detach()
        captured["logits"] = [o.logits.detach() for o in segment.outs]
        return real(segment)

    monkeypatch.setattr(head, "loss", capture)
    objective = Trajectory(model, _Stream(Batch(inputs, labels, torch.zeros(b))), ExactMatch(), batch_size=b,
                           halt_cfg=cfg.halt, loss_kind=cfg.train.loss, device=torch.device("cpu"))
    _, metrics = objective.forward(0)
    trained_n = head.halting_steps(captured["halt_logits"])
    assert objective._stop.tolist() == trained_n.tolist() == steps.tolist()
    if kind == "act":  # the mean-field answer of training is the answer inference gives
        p = head.halting_distribution(captured["halt_logits"])
        mean_field = sum(p[:, i].view(-1, 1, 1) * y for i, y in enumerate(captured["logits"]))
        assert torch.equal(mean_field.argmax(-1), preds)
        assert metrics["expected_steps"] == pytest.approx(steps.float().mean().item())


# -- 7. unrolled heads learn where to stop ------------------------------------------------------------

@pytest.mark.parametrize("kind", UNROLLED)
def test_unrolled_head_learns_to_ponder_longer_where_later_steps_are_better(kind):
    """Half the inputs ("hard", feature 0 = +1) get better with every step (wrong before step 3,
    right after), the others are right at every step. Starting from halting at ~step 2 everywhere,
    a few hundred Adam steps on the head alone must move hard inputs to more steps and keep easy
    inputs at fewer. (The improvement must be gradual for ACT: its gradient only sees the steps
    up to N.)"""
    torch.manual_seed(7)
    m, b = 6, 64
    head = build_halting(halt_config(kind=kind, max_steps=m, bias_init=0.0, **FACTS[kind].config,
                                    **FACTS[kind].learn), d_model=2)
    hard = torch.arange(b) % 2 == 0
    state = torch.stack([torch.where(hard, 1.0, -1.0), torch.ones(b)], 1).view(b, 1, 2)  # (b, 1, d)
    labels = torch.zeros(b, 1, dtype=torch.long)
    margin = torch.where(hard.view(b, 1, 1), 0.0, 3.0)  # logit of the right class minus the wrong one
    outs_logits = [torch.cat([margin + torch.where(hard.view(b, 1, 1), 2.0 * (t - 2.5), 0.0), torch.zeros(b, 1, 1)], -1)
                   for t in range(1, m + 1)]

    def run():
        outs = [StepOutput(logits=y, halt_logits=head.logits(state + 0.1 * torch.randn_like(state))[0])
                for y in outs_logits]
        return head.loss(trajectory(outs, labels, ce))

    def expected_steps(mask):
        with torch.no_grad():
            outs = [StepOutput(logits=y[mask], halt_logits=head.logits(state[mask])[0]) for y in outs_logits]
            return head.loss(trajectory(outs, labels[mask], ce))[1]["expected_steps"]

    before_hard, before_easy = expected_steps(hard), expected_steps(~hard)
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    for _ in range(300):
        loss, _ = run()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after_hard, after_easy = expected_steps(hard), expected_steps(~hard)
    assert after_hard >= before_hard + 1.0, (before_hard, after_hard)
    assert after_easy <= before_easy + 0.01, (before_easy, after_easy)
    assert after_hard >= after_easy + 1.5


# -- end to end --------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", UNROLLED)
def test_train_runs_end_to_end_with_unrolled_heads(kind, tmp_path):
    cfg = apply_overrides(get_config("debug"), [f"--halt.kind={kind}", "--train.steps=10", "--train.eval_every=10"])
    train_run(cfg, tmp_path, final_eval=False)
    records = [json.loads(line) for line in (Path(tmp_path) / "metrics.jsonl").read_text().splitlines()]
    trains = [r for r in records if r["kind"] == "train"]
    assert trains and all(math.isfinite(r["loss"]) for r in trains)
    assert trains[-1]["samples_dropped"] == 0 and trains[-1]["skipped_steps"] == 0
    assert trains[-1]["samples_completed"] == 10 * cfg.train.batch_size
    assert "expected_steps" in trains[-1]
    assert any(r["kind"] != "train" for r in records)  # the evaluation with the head's rule ran


def test_module_registers_trajectory_heads_on_import():
    assert halting.HALTING.get("act").trains_on == halting.HALTING.get("pondernet").trains_on == "trajectory"
    assert not halting.HALTING.get("act").needs_next_step and not halting.HALTING.get("pondernet").needs_next_step
