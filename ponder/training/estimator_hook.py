"""Train a recursive reasoner's recursion with any gradient estimator (config section `estimator`).

The recursion of one ACT step becomes a problem of the estimator protocol
(ponder.estimators.base), built from the model's own parts:

- the state is the packed (b, 2, n, d) stack of answer and latent states;
- one estimator "step" is one full outer cycle with gradient (`RecursiveReasoner.cycle`, the
  same cycle the model's own recursion runs, adapter included);
- the input is the batch's StepContext flattened into one (b, D) leaf (`StepContext.leaf`:
  the embedded inputs and, with an adapter, its per-sample factors), so every estimator,
  forward mode included, differentiates through the context;
- the loss is the task loss of the answer logits (`answer_logits`, soft clamp included) of the
  final answer state.

TRM's own rule ("trm": T - 1 cycles without gradient, then one with) is the default and is the
model's ordinary `step`. With an estimator, `estimated_step` returns a surrogate term whose value
is zero and whose gradient with respect to the recursion's parameters and the context (and,
through it, the embedding and the adapter's hypernetwork) is the estimator's gradient; the
readout and halting head read the final state detached and keep their ordinary gradients. The
training loop's `loss.backward()` is unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
from torch import Tensor, nn

from ponder.core.autocast import fp32_region
from ponder.core.errors import PonderError
from ponder.core.settings import KindRegistry, check
from ponder.core.types import State, StepOutput
from ponder.estimators import ESTIMATORS, EquilibriumPropagation
from ponder.models.recursive import RecursiveReasoner, StepContext, pack_state, unpack_state


@dataclass
class TRMRule:
    """The model's own gradient rule (TRM: T - 1 cycles without gradient, then one with; HRM: the
    last two net calls). No settings."""

    name: ClassVar[str] = "trm"


# kind -> the estimator's own dataclass, whose fields are its settings (config section `estimator`)
ESTIMATOR_SETTINGS = KindRegistry("estimator", key="name")
ESTIMATOR_SETTINGS.register(TRMRule)
for _name in ESTIMATORS.names():
    ESTIMATOR_SETTINGS.register(ESTIMATORS.get(_name))
# in training, the implicit solves are capped (the class's own default cap is the deployed T,
# meaningless for an equilibrium gradient) and plain fixed-point iteration is the forward
# solver (DESIGN.md: Anderson once stopped a float32 run on a singular Gram matrix)
ESTIMATOR_SETTINGS.defaults["implicit"] = dict(solver="fixed_point", tol=1e-4, max_iter=50, adjoint_tol=1e-4,
                                               adjoint_max_iter=50)


def validate_estimator(est) -> None:
    """Refuse, in one line, settings out of range and estimators that cannot train the reasoner."""
    check(est, "estimator")
    if isinstance(est, EquilibriumPropagation):
        raise PonderError(f"estimator.kind={est.name} needs an energy-based model; the recursive reasoner has none")
    if isinstance(est, TRMRule):
        return


class CycleMap:
    """The recursion's step map for the estimators: (packed (b, 2, n, d), leaf (b, D)) -> packed.

    `module` names the model, so forward-mode estimators can swap its parameters."""

    def __init__(self, model: RecursiveReasoner, ctx: StepContext):
        self.module: nn.Module = model
        self.ctx = ctx

    def __call__(self, packed: Tensor, leaf: Tensor) -> Tensor:
        y, z = unpack_state(packed)
        y, z = self.module.cycle(y, z, self.ctx.from_leaf(leaf))
        return pack_state(y, z)


@dataclass
class RecursionProblem:
    """One ACT step's recursion in the estimator protocol's terms.

    Attributes:
        step_fn: CycleMap.
        z0: (b, 2, n, d) packed starting state (detached).
        leaf: (b, D) the context as a leaf that requires grad (pass as x and list in params).
        context: the same values WITH their graph (to the embedding and adapter).
        loss_fn: packed state -> scalar loss of its answer logits.
        params: the recursion's parameters followed by `leaf`.
    """

    step_fn: CycleMap
    z0: Tensor
    leaf: Tensor
    context: Tensor
    loss_fn: Callable[[Tensor], Tensor]
    params: list[Tensor]


def recursion_problem(model: RecursiveReasoner, state: State, ctx: StepContext,
                      loss_of_logits: Callable[[Tensor], Tensor]) -> RecursionProblem:
    """The recursion of one ACT step of `model` from `state` on the batch prepared as `ctx`.

    Args:
        loss_of_logits: (b, n, v) logits -> scalar loss.
    """
    context = ctx.leaf()  # (b, D), with its graph
    leaf = context.detach().requires_grad_(True)
    z0 = pack_state(state.y, state.z).detach()  # (b, 2, n, d)

    def loss_fn(packed: Tensor) -> Tensor:
        return loss_of_logits(model.answer_logits(unpack_state(packed)[0]))

    return RecursionProblem(CycleMap(model, ctx), z0, leaf, context, loss_fn,
                            [*model.recursion_parameters(), leaf])


def surrogate(tensors: list[Tensor], grads: tuple[Tensor, ...]) -> Tensor:
    """A scalar with value 0 whose gradient with respect to each tensor t_i is grads[i]."""
    total = sum((t * g.detach()).sum() for t, g in zip(tensors, grads))
    return total - total.detach()


def estimated_step(model: RecursiveReasoner, state: State, ctx: StepContext,
                   loss_of_logits: Callable[[Tensor], Tensor], estimator, *, steps: int | None = None
                   ) -> tuple[State, StepOutput, Tensor, dict[str, float]]:
    """One ACT step whose recursion is differentiated by `estimator`.

    Args:
        state, ctx: as for `RecursiveReasoner.step`.
        loss_of_logits: the task loss of (b, n, v) logits (labels bound in).
        estimator: a ponder.estimators estimator.
        steps: cycles T (default the model's h_cycles).
    Returns:
        (new state detached, StepOutput from the final answer state (detached, so readout and
        halting head get ordinary gradients), surrogate (value 0; its gradient is the estimator's
        gradient for the recursion and the context), the estimator's statistics).
    """
    prob = recursion_problem(model, state, ctx, loss_of_logits)
    # float32 whatever the run's precision: a solver's tolerance (floored at 10 float32 epsilons),
    # Anderson's Gram matrix, GMRES's small solves and the VJPs lose their meaning in bf16, where
    # every solve would run to its cap (ponder.estimators.solvers.dtype_floor)
    with torch.enable_grad(), fp32_region(prob.z0):
        roll = estimator.estimate(prob.step_fn, prob.z0, prob.leaf, prob.loss_fn,
                                  steps=steps or model.cfg.h_cycles, params=prob.params)
    y, z = unpack_state(roll.state.detach())
    y, z = y.contiguous(), z.contiguous()
    extra = surrogate([*model.recursion_parameters(), prob.context], roll.grads)
    stats = {f"est_{k}": float(v) for k, v in roll.stats.items()}
    return State(y, z), model.output(y), extra, stats
