import math

import torch

from ponder.training.optim import AdamATan2, ExponentialMovingAverage, lr_factor


def test_adam_atan2_follows_its_closed_form():
    """p <- p - lr * a * atan2(m_hat, b * sqrt(v_hat)), with Adam's bias-corrected moments."""
    torch.manual_seed(0)
    w0 = torch.randn(5, 3)
    grads = [torch.randn(5, 3) for _ in range(3)]
    p = torch.nn.Parameter(w0.clone())
    opt = AdamATan2([p], lr=1e-2, betas=(0.9, 0.95), a=1.27, b=1.0)
    ref, m, v = w0.clone(), torch.zeros(5, 3), torch.zeros(5, 3)
    for t, g in enumerate(grads, start=1):
        p.grad = g.clone()
        opt.step()
        m = 0.9 * m + 0.1 * g
        v = 0.95 * v + 0.05 * g * g
        ref -= 1e-2 * 1.27 * torch.atan2(m / (1 - 0.9**t), (v / (1 - 0.95**t)).sqrt())
        assert torch.allclose(p.detach(), ref, atol=1e-6)
    # first step moves every coordinate by exactly lr * a * pi/4 against the gradient sign
    q = torch.nn.Parameter(torch.zeros(4))
    q.grad = torch.tensor([1e-8, -3.0, 5.0, -1e-3])
    AdamATan2([q], lr=0.1, a=1.0).step()
    assert torch.allclose(q.detach(), -0.1 * math.pi / 4 * torch.sign(q.grad))


def test_adam_atan2_minimises_a_quadratic_and_decays_weights():
    p = torch.nn.Parameter(torch.tensor([3.0, -2.0]))
    opt = AdamATan2([p], lr=0.05)
    for _ in range(400):
        opt.zero_grad()
        (p ** 2).sum().backward()
        opt.step()
    assert p.abs().max() < 0.05
    q = torch.nn.Parameter(torch.ones(2))
    q.grad = torch.zeros(2)
    AdamATan2([q], lr=0.1, weight_decay=0.5).step()
    assert torch.allclose(q.detach(), torch.full((2,), 0.95))


def test_ema_follows_the_formula():
    model = torch.nn.Linear(2, 1)
    ema = ExponentialMovingAverage(model, decay=0.9)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    assert torch.allclose(ema.shadow["weight"], start + 0.1)


def test_lr_schedule_warms_up_then_holds_or_decays():
    assert lr_factor(0, warmup=10, total=100, schedule="constant", min_ratio=0.1) == 0.1
    assert lr_factor(9, warmup=10, total=100, schedule="constant", min_ratio=0.1) == 1.0
    assert lr_factor(50, warmup=10, total=100, schedule="constant", min_ratio=0.1) == 1.0
    assert math.isclose(lr_factor(100, warmup=10, total=100, schedule="cosine", min_ratio=0.1), 0.1)
    assert math.isclose(lr_factor(55, warmup=10, total=100, schedule="cosine", min_ratio=0.0), 0.5)
