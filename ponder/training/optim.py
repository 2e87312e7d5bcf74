"""Optimisers and weight averaging in plain PyTorch (CPU, CUDA and MPS alike).

- The config section `optim` picks the update rule (`optim.kind`) with that rule's own
  constants: `adamw` (betas, weight decay, eps) or `adam_atan2` (betas, weight decay, a, b). The
  learning rate and its schedule belong to the training loop (`train.lr`, ...).
- `AdamATan2`: Adam with the division m / (sqrt(v) + eps) replaced by a * atan2(m, b * sqrt(v))
  (Everett et al. 2024, "Scaling Exponents Across Parameterizations and Optimizers"), which
  needs no epsilon and is bounded. TRM uses a CUDA-only extension of it whose update is
  atan2(m, sqrt(v)), i.e. a = b = 1 (the defaults here); this one runs anywhere.
- `ExponentialMovingAverage`: EMA of the weights, used for evaluation.
- `lr_factor`: linear warm-up, then constant or cosine decay.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Iterable

import torch
from torch import Tensor, nn

from ponder.core.settings import KindRegistry, check, setting


class AdamATan2(torch.optim.Optimizer):
    """Adam with an atan2 update and decoupled weight decay.

    update = a * atan2(m_hat, b * sqrt(v_hat)); p <- p * (1 - lr * wd) - lr * update.
    For |m_hat| << b*sqrt(v_hat) this is Adam with step a/b * m_hat/sqrt(v_hat).
    """

    def __init__(self, params: Iterable, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.95),
                 weight_decay: float = 0.0, a: float = 1.0, b: float = 1.0):
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


@dataclass(kw_only=True)
class AdamSettings:
    """What both update rules share: Adam's moment decays and decoupled weight decay (on
    matrices only)."""

    kind: ClassVar[str] = ""
    beta1: float = setting(0.9, ge=0, lt=1)
    beta2: float = setting(0.95, ge=0, lt=1)
    weight_decay: float = setting(0.1, ge=0)

    def validate(self) -> None:
        check(self, "optim")


@dataclass(kw_only=True)
class AdamWSettings(AdamSettings):
    """torch.optim.AdamW."""

    kind: ClassVar[str] = "adamw"
    eps: float = setting(1e-8, gt=0)


@dataclass(kw_only=True)
class AdamATan2Settings(AdamSettings):
    """AdamATan2 above; a = b = 1 is the update of the package TRM and HRM import."""

    kind: ClassVar[str] = "adam_atan2"
    a: float = setting(1.0, gt=0)
    b: float = setting(1.0, gt=0)


OPTIMIZERS = KindRegistry("optim")  # kind -> settings dataclass (config section `optim`)
OPTIMIZERS.register(AdamWSettings)
OPTIMIZERS.register(AdamATan2Settings)


def build_optimizer(model: nn.Module, settings, *, lr: float, halting_lr_scale: float = 1.0) -> torch.optim.Optimizer:
    """The optimizer of `settings` (AdamWSettings or AdamATan2Settings); weight decay only on
    matrices (not biases, norms or init vectors).

    The halting head (`model.halting`, if any) gets its own parameter group whose learning rate
    is `halting_lr_scale` times the base (group key "lr_scale", applied by the schedule).
    """
    halting = getattr(model, "halting", None)
    head_ids = {id(p) for p in halting.parameters()} if isinstance(halting, nn.Module) else set()
    body = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
    head = [p for p in model.parameters() if p.requires_grad and id(p) in head_ids]
    wd = settings.weight_decay
    groups = [{"params": [p for p in body if p.ndim >= 2], "weight_decay": wd, "lr_scale": 1.0},
              {"params": [p for p in body if p.ndim < 2], "weight_decay": 0.0, "lr_scale": 1.0}]
    if head:
        groups.append({"params": head, "weight_decay": 0.0, "lr_scale": halting_lr_scale})
    betas = (settings.beta1, settings.beta2)
    if settings.kind == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=settings.eps)
    return AdamATan2(groups, lr=lr, betas=betas, a=settings.a, b=settings.b)


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
