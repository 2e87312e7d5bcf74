"""Optimisers and weight averaging in plain PyTorch (CPU, CUDA and MPS alike).

- `AdamATan2`: Adam with the division m / (sqrt(v) + eps) replaced by a * atan2(m, b * sqrt(v))
  (Everett et al. 2024, "Scaling Exponents Across Parameterizations and Optimizers"), which
  needs no epsilon and is bounded. TRM uses a CUDA-only extension of it; this one runs anywhere.
- `ExponentialMovingAverage`: EMA of the weights, used for evaluation.
- `lr_factor`: linear warm-up, then constant or cosine decay.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import Tensor, nn


class AdamATan2(torch.optim.Optimizer):
    """Adam with an atan2 update and decoupled weight decay.

    update = a * atan2(m_hat, b * sqrt(v_hat)); p <- p * (1 - lr * wd) - lr * update.
    For |m_hat| << b*sqrt(v_hat) this is Adam with step a/b * m_hat/sqrt(v_hat).
    """

    def __init__(self, params: Iterable, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.95),
                 weight_decay: float = 0.0, a: float = 1.27, b: float = 1.0):
        if lr < 0 or not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"invalid lr {lr} or betas {betas}")
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay, a=a, b=b))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, wd, a, b = group["lr"], group["weight_decay"], group["a"], group["b"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                t = state["step"]
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.lerp_(p.grad, 1 - beta1)
                v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                m_hat = m / (1 - beta1**t)
                v_hat = v / (1 - beta2**t)
                if wd:
                    p.mul_(1 - lr * wd)
                p.add_(torch.atan2(m_hat, b * v_hat.sqrt()), alpha=-lr * a)
        return loss


def build_optimizer(model: nn.Module, *, name: str, lr: float, beta1: float, beta2: float,
                    weight_decay: float, halting_lr_scale: float = 1.0) -> torch.optim.Optimizer:
    """AdamW or AdamATan2; weight decay only on matrices (not biases, norms or init vectors).

    The halting head (`model.halting`, if any) gets its own parameter group whose learning rate
    is `halting_lr_scale` times the base (group key "lr_scale", applied by the schedule).
    """
    halting = getattr(model, "halting", None)
    head_ids = {id(p) for p in halting.parameters()} if isinstance(halting, nn.Module) else set()
    body = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
    head = [p for p in model.parameters() if p.requires_grad and id(p) in head_ids]
    groups = [{"params": [p for p in body if p.ndim >= 2], "weight_decay": weight_decay, "lr_scale": 1.0},
              {"params": [p for p in body if p.ndim < 2], "weight_decay": 0.0, "lr_scale": 1.0}]
    if head:
        groups.append({"params": head, "weight_decay": 0.0, "lr_scale": halting_lr_scale})
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(beta1, beta2))
    if name == "adam_atan2":
        return AdamATan2(groups, lr=lr, betas=(beta1, beta2))
    from ponder.errors import PonderError

    raise PonderError(f"unknown optimizer {name!r}; valid: adamw, adam_atan2")


def lr_factor(step: int, *, warmup: int, total: int, schedule: str, min_ratio: float) -> float:
    """Multiplier of the base LR at optimizer step `step` (0-based)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class ExponentialMovingAverage:
    """Shadow copy of a model's floating-point parameters and buffers: s <- d*s + (1-d)*p."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.shadow: dict[str, Tensor] = {k: v.detach().clone() for k, v in model.state_dict().items()
                                          if v.dtype.is_floating_point}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for k, v in model.state_dict().items():
            if k in self.shadow:
                self.shadow[k].lerp_(v, 1 - self.decay)

    def state_dict(self) -> dict[str, Tensor]:
        return self.shadow

    def load_state_dict(self, shadow: dict[str, Tensor]) -> None:
        for k in self.shadow:
            self.shadow[k].copy_(shadow[k])

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        model.load_state_dict(self.shadow, strict=False)
