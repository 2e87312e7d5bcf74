"""Train a recursive reasoner's recursion with any gradient estimator (`--train.estimator=NAME`).

The adapter turns one ACT step of a `RecursiveReasoner` into the estimator protocol
(ponder.estimators.base): the state is the packed (b, 2, n, d) stack of answer and latent
states, one estimator "step" is one full outer cycle with gradient (`RecursiveReasoner.cycle`),
the input is the embedded tokens and the loss is the task loss of the readout of the final
answer state. TRM's own rule ("trm": T - 1 cycles without gradient, then one with) is the
default and keeps the model's ordinary `step`.

With an estimator, `estimated_step` returns a surrogate term whose value is zero and whose
gradient with respect to the recursion's parameters (and, through the embedded inputs, the
embedding) is the estimator's gradient; the readout and halting head read the final state
detached and keep their ordinary gradients. The training loop's `loss.backward()` is unchanged.
"""
from __future__ import annotations

import dataclasses
import inspect
from typing import Callable

import torch
from torch import Tensor

from ponder.errors import PonderError
from ponder.models.recursive import RecursiveReasoner, pack_state, unpack_state
from ponder.types import State, StepOutput

DEFAULT = "trm"  # TRM's rule: the model's own step, no estimator


def estimator_names() -> list[str]:
    """Every value `train.estimator` accepts."""
    from ponder.estimators import ESTIMATORS

    return [DEFAULT, *ESTIMATORS.names()]


def make_estimator(name: str, **settings):
    """The estimator registered as `name` (None for "trm"), built with the settings it accepts.

    Args:
        name: "trm" or a name in ponder.estimators.ESTIMATORS.
        settings: candidate constructor arguments (e.g. k, tol, max_iter); those the estimator's
            constructor does not take are ignored, so one config serves every estimator.
    """
    from ponder.estimators import ESTIMATORS

    if name == DEFAULT:
        return None
    if name not in ESTIMATORS:
        raise PonderError(f"train.estimator {name!r} unknown; valid: {', '.join(estimator_names())}")
    cls = ESTIMATORS.get(name)
    from ponder.estimators.ep import EquilibriumPropagation

    if isinstance(cls, type) and issubclass(cls, EquilibriumPropagation):
        raise PonderError(f"train.estimator={name} needs an energy-based model; the recursive reasoner has none")
    # forward mode (forward_gradient, rtrl): estimate() raises NotApplicable
    # (one line) at the first step when an op has no forward AD or rtrl's traces would be too big
    if dataclasses.is_dataclass(cls):
        accepted = {f.name for f in dataclasses.fields(cls) if f.init}
    else:
        accepted = set(inspect.signature(cls).parameters)
    return cls(**{k: v for k, v in settings.items() if k in accepted and k != "name"})


def estimator_from_train_config(tc):
    """`make_estimator` from a TrainConfig's `estimator*` fields (the tolerance and iteration cap
    apply to both the forward solve and the adjoint solve of the implicit estimator)."""
    if tc.estimator_k < 1 or tc.estimator_max_iter < 1 or not tc.estimator_tol > 0:
        raise PonderError("train.estimator_k and train.estimator_max_iter must be >= 1, train.estimator_tol > 0")
    return make_estimator(tc.estimator, k=tc.estimator_k, tol=tc.estimator_tol, max_iter=tc.estimator_max_iter,
                          adjoint_tol=tc.estimator_tol, adjoint_max_iter=tc.estimator_max_iter,
                          solver=tc.estimator_solver)


def recursion_problem(model: RecursiveReasoner, state: State, inputs: Tensor,
                      loss_of_logits: Callable[[Tensor], Tensor]):
    """The recursion of one ACT step in the estimator protocol's terms.

    Args:
        state: carry with y, z (b, n, d); used detached.
        inputs: (b, n) tokens.
        loss_of_logits: (b, n, v) logits -> scalar loss.
    Returns:
        dict with step_fn ((b, 2, n, d), x -> (b, 2, n, d)), z0 (b, 2, n, d), x (b, n, d) embedded
        inputs WITH their graph to the embedding, x_leaf (the same values as a leaf that requires
        grad; pass it to the estimator and list it in params), loss_fn (packed state -> scalar)
        and params (the recursion's parameters followed by x_leaf).
    """
    x = model.embed_inputs(inputs)  # (b, n, d)
    x_leaf = x.detach().requires_grad_(True)
    z0 = pack_state(state.y, state.z).detach()  # (b, 2, n, d)

    def loss_fn(packed: Tensor) -> Tensor:
        return loss_of_logits(model.readout(unpack_state(packed)[0]))

    return {"step_fn": model.cycle, "z0": z0, "x": x, "x_leaf": x_leaf, "loss_fn": loss_fn,
            "params": [*model.recursion_parameters(), x_leaf]}


def surrogate(tensors: list[Tensor], grads: tuple[Tensor, ...]) -> Tensor:
    """A scalar with value 0 whose gradient with respect to each tensor t_i is grads[i]."""
    total = sum((t * g.detach()).sum() for t, g in zip(tensors, grads))
    return total - total.detach()


def estimated_step(model: RecursiveReasoner, state: State, inputs: Tensor,
                   loss_of_logits: Callable[[Tensor], Tensor], estimator, *, steps: int | None = None
                   ) -> tuple[State, StepOutput, Tensor, dict[str, float]]:
    """One ACT step whose recursion is differentiated by `estimator`.

    Args:
        state, inputs: as for `RecursiveReasoner.step`.
        loss_of_logits: the task loss of (b, n, v) logits (labels bound in).
        estimator: a ponder.estimators estimator.
        steps: cycles T (default the model's h_cycles).
    Returns:
        (new state detached, StepOutput from the final answer state (detached, so readout and
        halting head get ordinary gradients), surrogate (value 0; its gradient is the estimator's
        gradient for the recursion and embedding), the estimator's statistics).
    """
    if inputs.shape[1] != model.seq_len:
        raise ValueError(f"inputs have {inputs.shape[1]} positions, model built for {model.seq_len}")
    prob = recursion_problem(model, state, inputs, loss_of_logits)
    with torch.enable_grad():
        roll = estimator.estimate(prob["step_fn"], prob["z0"], prob["x_leaf"], prob["loss_fn"],
                                  steps=steps or model.cfg.h_cycles, params=prob["params"])
    y, z = unpack_state(roll.state.detach())
    logits = model.readout(y)  # (b, n, v)
    halt = model.halting.logits(y)
    halt_logits, aux = halt if isinstance(halt, tuple) else (halt, {})
    targets = [*model.recursion_parameters(), prob["x"]]
    extra = surrogate(targets, roll.grads)
    stats = {f"est_{k}": float(v) for k, v in roll.stats.items()}
    return State(y.contiguous(), z.contiguous()), StepOutput(logits=logits, halt_logits=halt_logits, aux=aux), \
        extra, stats
