"""Q-halt heads (TRM's q_halt, HRM's q_continue) and the stabiliser switches shared by all heads.
The family-wide conformance suite is tests/test_halting_conformance.py."""
import pytest
import torch

from ponder.core.errors import PonderError
from ponder.core.types import StepOutput
from ponder.models.halting import HALTING, Segment, build_halting, halt_config
from ponder.models.halting.q_halt import QContinueHead, QHaltHead
from ponder.training.optim import AdamWSettings, build_optimizer


def _out(halt_logits, **aux):
    return StepOutput(logits=torch.zeros(len(halt_logits), 3, 4), halt_logits=halt_logits, aux=aux)


def _zero_task(logits, labels):
    return logits.new_zeros(len(logits))


def _step(out, correct, steps, *, next_out=None, train_step=0):
    """A one-step segment as deep supervision hands it to a Q head (task loss 0: only halting)."""
    return Segment([out], steps, torch.zeros(len(correct), 3, dtype=torch.long), _zero_task, [correct],
                   train_step=train_step, next_out=next_out)


def test_q_halt_starts_deep_and_halts_on_positive_logit_or_at_max():
    head = build_halting(halt_config(max_steps=5), d_model=8)
    assert isinstance(head, QHaltHead) and "q_halt" in HALTING
    assert torch.allclose(head.logits(torch.randn(3, 4, 8))[0], torch.full((3,), -5.0))  # zero weight, bias -5
    halt, _ = head.decide(_out(torch.tensor([1.0, -1.0, -1.0])), torch.tensor([1, 2, 5]), {})
    assert halt.tolist() == [True, False, True]


def test_min_steps_blocks_early_halts():
    head = build_halting(halt_config(max_steps=5, min_steps=3), d_model=8)
    halt, _ = head.decide(_out(torch.tensor([4.0, 4.0, -4.0])), torch.tensor([2, 3, 5]), {})
    assert halt.tolist() == [False, True, True]


def test_q_halt_loss_has_gradient_on_its_parameters():
    """Catches the known bugs: loss on integer counts or detached with .item() gives no gradient."""
    head = build_halting(halt_config(loss_weight=0.5), d_model=8)
    y = torch.randn(6, 4, 8, requires_grad=True)
    correct = torch.tensor([True, False, True, False, False, True])
    loss, stats = head.loss(_step(_out(head.logits(y)[0]), correct, torch.ones(6, dtype=torch.long)))
    loss.backward()
    assert head.probe.linear.bias.grad.abs() > 0 and head.probe.linear.weight.grad.abs().sum() > 0
    assert y.grad.abs().sum() == 0  # zero-initialised weight: the state gets gradient once it moves
    with torch.no_grad():
        head.probe.linear.weight.add_(0.1)
    y.grad = None
    loss, _ = head.loss(_step(_out(head.logits(y)[0]), correct, torch.ones(6, dtype=torch.long)))
    loss.backward()
    assert y.grad.abs().sum() > 0 and 0 <= stats["q_halt_acc"] <= 1


def test_q_halt_learns_to_predict_correctness():
    torch.manual_seed(0)
    head = build_halting(halt_config(), d_model=4)
    opt = torch.optim.Adam(head.parameters(), lr=0.1)
    steps = torch.ones(64, dtype=torch.long)
    for _ in range(200):
        y = torch.randn(64, 2, 4)
        loss, _ = head.loss(_step(_out(head.logits(y)[0]), y[:, :, 0].mean(1) > 0, steps))
        opt.zero_grad()
        loss.backward()
        opt.step()
    y = torch.randn(256, 2, 4)
    halts, _ = head.decide(_out(head.logits(y)[0]), torch.ones(256, dtype=torch.long), {})
    assert (halts == (y[:, :, 0].mean(1) > 0)).float().mean() > 0.9


def test_q_continue_bootstraps_from_the_next_step_and_halts_when_q_halt_wins():
    head = build_halting(halt_config(kind="q_continue", max_steps=4), d_model=8)
    assert isinstance(head, QContinueHead) and head.needs_next_step
    q_halt, aux = head.logits(torch.randn(3, 2, 8))
    assert torch.allclose(q_halt, torch.full((3,), -5.0)) and torch.allclose(aux["q_continue"], torch.zeros(3))
    halt, _ = head.decide(_out(torch.tensor([1.0, -1.0, -1.0]), q_continue=torch.tensor([0.0, 0.0, 0.0])),
                          torch.tensor([1, 1, 4]), {})
    assert halt.tolist() == [True, False, True]
    out = _out(torch.zeros(2, requires_grad=True), q_continue=torch.zeros(2, requires_grad=True))
    nxt = _out(torch.tensor([3.0, -3.0]), q_continue=torch.tensor([-1.0, 2.0]))
    loss, stats = head.loss(_step(out, torch.tensor([True, False]), torch.tensor([1, 1]), next_out=nxt))
    loss.backward()
    # target = sigmoid(max(next q_halt, next q_continue)) = sigmoid([3, 2]); gradient = w*(sigmoid(0) - target)/b
    expected = 0.5 * (0.5 - torch.sigmoid(torch.tensor([3.0, 2.0]))) / 2
    assert torch.allclose(out.aux["q_continue"].grad, expected, atol=1e-6)
    with pytest.raises(ValueError, match="next step"):
        head.loss(_step(out, torch.tensor([True, False]), torch.tensor([1, 1])))


def test_bounded_logit_and_step_gate_and_l1():
    head = build_halting(halt_config(logit_bound=2.0, bias_init=50.0, step_gate=True, max_steps=4, l1_weight=0.1), d_model=4)
    raw, _ = head.logits(torch.zeros(2, 3, 4))
    assert torch.allclose(raw, torch.full((2,), 2.0), atol=1e-4)  # bounded by the scaled tanh
    shaped = head.probe.shape(raw, torch.tensor([1, 4]))
    assert shaped[0] < shaped[1]  # the cycle-aware factor (c+1)/C grows with the step
    loss, _ = head.loss(_step(_out(raw), torch.tensor([True, True]), torch.tensor([1, 4])))
    loss.backward()
    assert head.probe.gate.grad is not None and head.probe.cycle_embedding.grad is not None


def test_penalty_warmup_scales_the_halting_loss():
    head = build_halting(halt_config(penalty_warmup_steps=10), d_model=4)
    out, correct, steps = _out(torch.zeros(2)), torch.tensor([True, False]), torch.ones(2, dtype=torch.long)
    early, _ = head.loss(_step(out, correct, steps, train_step=0))
    late, _ = head.loss(_step(out, correct, steps, train_step=20))
    assert torch.isclose(early * 10, late)


def test_halting_head_gets_its_own_learning_rate_group():
    from ponder.presets import get_config
    from ponder.runs.config import apply_overrides
    from ponder.runs.run import build_model

    cfg = apply_overrides(get_config("debug"), ["--halt.lr_scale=0.1"])

    class Task:
        vocab_size, seq_len, num_puzzle_ids, context_len, grid_shape = 6, 16, 0, 0, (4, 4)

    model = build_model(cfg, Task)
    opt = build_optimizer(model, AdamWSettings(), lr=1e-3, halting_lr_scale=cfg.halt.lr_scale)
    head_group = opt.param_groups[-1]
    assert head_group["lr_scale"] == 0.1
    assert {id(p) for p in head_group["params"]} == {id(p) for p in model.halting.parameters()}


def test_bad_halting_config_is_a_clear_error():
    with pytest.raises(PonderError, match="unknown halt.kind 'nope'; valid: .*q_halt"):
        build_halting(halt_config(kind="nope"), d_model=4)
    with pytest.raises(PonderError, match="min_steps"):
        build_halting(halt_config(min_steps=9, max_steps=4), d_model=4)


def test_q_halt_threshold_trades_compute_for_certainty():
    logits = torch.tensor([0.5, 2.0, 3.0])  # sigmoid: 0.62, 0.88, 0.95
    steps = torch.ones(3, dtype=torch.long)
    default = build_halting(halt_config(max_steps=5), d_model=4)
    strict = build_halting(halt_config(max_steps=5, threshold=0.9), d_model=4)
    assert default.decide(_out(logits), steps, {})[0].tolist() == [True, True, True]
    assert strict.decide(_out(logits), steps, {})[0].tolist() == [False, False, True]


def test_a_setting_the_head_does_not_have_is_refused():
    with pytest.raises(PonderError, match="halt.kind=q_halt has no setting act_tau; its settings: .*loss_weight"):
        halt_config("q_halt", act_tau=0.1)
    with pytest.raises(PonderError, match="no setting threshold"):
        halt_config("q_continue", threshold=0.9)  # HRM's head halts when q_halt > q_continue


def test_every_head_declares_its_halt_weight_knob():
    for kind in HALTING.names():
        head = build_halting(halt_config(kind), d_model=4)
        knob = head.knobs()["halt_weight"]
        before = knob.get()
        knob.set(before * 3 + 1)
        assert knob.get() == before * 3 + 1 and knob.loss_weight
