import torch

from ponder.models.halting import HALTING, HaltConfig, QHaltHead, build_halting
from ponder.types import StepOutput


def _out(halt_logits):
    return StepOutput(logits=torch.zeros(len(halt_logits), 3, 4), halt_logits=halt_logits)


def test_q_halt_starts_deep_and_halts_on_positive_logit_or_at_max():
    head = build_halting(HaltConfig(max_steps=5), d_model=8)
    assert isinstance(head, QHaltHead) and "q_halt" in HALTING
    y = torch.randn(3, 4, 8)
    assert torch.allclose(head.logits(y), torch.full((3,), -5.0))  # zero weight, bias -5
    out = _out(torch.tensor([1.0, -1.0, -1.0]))
    assert head.should_halt(out, torch.tensor([1, 2, 5])).tolist() == [True, False, True]


def test_q_halt_loss_has_gradient_on_its_parameters():
    """Catches the known bugs: loss on integer counts or detached with .item() gives no gradient."""
    head = build_halting(HaltConfig(loss_weight=0.5), d_model=8)
    y = torch.randn(6, 4, 8, requires_grad=True)
    out = _out(head.logits(y))
    loss, stats = head.loss(out, torch.tensor([True, False, True, False, False, True]))
    loss.backward()
    assert head.probe.bias.grad.abs() > 0 and head.probe.weight.grad.abs().sum() > 0
    assert y.grad.abs().sum() == 0  # zero-initialised weight: the state gets gradient once it moves
    with torch.no_grad():
        head.probe.weight.add_(0.1)
    y.grad = None
    loss, _ = head.loss(_out(head.logits(y)), torch.ones(6, dtype=torch.bool))
    loss.backward()
    assert y.grad.abs().sum() > 0
    assert 0 <= stats["q_halt_acc"] <= 1


def test_q_halt_learns_to_predict_correctness():
    """Trained on a separable toy signal, the probe's halting decision tracks correctness."""
    torch.manual_seed(0)
    head = build_halting(HaltConfig(), d_model=4)
    opt = torch.optim.Adam(head.parameters(), lr=0.1)
    for _ in range(200):
        y = torch.randn(64, 2, 4)
        correct = y[:, :, 0].mean(1) > 0
        loss, _ = head.loss(_out(head.logits(y)), correct)
        opt.zero_grad()
        loss.backward()
        opt.step()
    y = torch.randn(256, 2, 4)
    correct = y[:, :, 0].mean(1) > 0
    halts = head.should_halt(_out(head.logits(y)), torch.ones(256, dtype=torch.long))
    assert (halts == correct).float().mean() > 0.9
