"""One composed step for every training path: every model option x gradient estimator x halting
head either takes one real optimizer step through the model's own parts (adapter and logit clamp
included, under every estimator) or is refused in one line by `Config.validate()`."""
from __future__ import annotations

import itertools

import pytest
import torch
from conftest import SUMMARY

from ponder.core.errors import PonderError
from ponder.estimators import EquilibriumPropagation
from ponder.models.halting import HALTING
from ponder.presets import get_config
from ponder.runs.config import apply_overrides
from ponder.runs.run import open_run
from ponder.training.estimator_hook import ESTIMATOR_SETTINGS

CLAMP_MAX = 1.0
MODELS = list(itertools.product(["trm", "hrm"], ["attention", "mlp"], [False, True], [False, True]))
ESTIMATORS = ESTIMATOR_SETTINGS.names()
HEADS = HALTING.names()
# small solves and a tiny model: the matrix has one optimizer step per cell
ESTIMATOR_SETTINGS_FOR_TEST = {"implicit": ["--estimator.max_iter=4", "--estimator.adjoint_max_iter=4"],
                               "phantom": ["--estimator.k=2"], "truncated": ["--estimator.k=2"],
                               "rtrl": ["--train.batch_size=1"]}  # its traces grow with the batch


def overrides(style, mixer, adapter, clamp, estimator, head) -> list[str]:
    out = [f"--model.style={style}", f"--model.mixer={mixer}", "--model.d_model=8", "--model.n_heads=2",
           "--model.n_layers=1", "--model.h_cycles=2", "--model.l_cycles=1", "--train.batch_size=3",
           "--train.eval_every=0", "--train.log_every=0", "--train.checkpoint_every=0", "--health.attention_every=0",
           f"--halt.kind={head}", "--halt.max_steps=2", f"--estimator.kind={estimator}",
           *ESTIMATOR_SETTINGS_FOR_TEST.get(estimator, [])]
    if adapter:
        out.append("--model.adapter_rank=2")
    if clamp:
        out += ["--model.logit_clamp=0.5", f"--model.logit_clamp_max={CLAMP_MAX}"]
    return out


def applies(estimator: str, head: str) -> bool:
    """The rule Config.validate() enforces: the model's own rule trains every head; any other
    estimator needs a head trained one step at a time and a step without an energy."""
    if estimator == "trm":
        return True
    if issubclass(ESTIMATOR_SETTINGS.get(estimator), EquilibriumPropagation):
        return False
    return HALTING.get(head).trains_on == "step"


def refused(args: list[str], estimator: str, head: str, counts: dict) -> bool:
    """For a combination that does not apply: check it is refused in one line naming the estimator."""
    if applies(estimator, head):
        return False
    with pytest.raises(PonderError) as e:
        apply_overrides(get_config("debug"), args)
    assert "\n" not in str(e.value) and estimator in str(e.value)
    counts["refused"] += 1
    return True


@pytest.fixture(scope="module")
def counts():
    seen = {"stepped": 0, "refused": 0}
    yield seen
    SUMMARY.append(f"composed-step matrix: {seen['stepped']} combinations took an optimizer step, "
          f"{seen['refused']} were refused in one line")


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("style,mixer,adapter,clamp", MODELS)
def test_every_combination_steps_or_is_refused(style, mixer, adapter, clamp, estimator, head, tmp_path, counts):
    args = overrides(style, mixer, adapter, clamp, estimator, head)
    if refused(args, estimator, head, counts):
        return
    cfg = apply_overrides(get_config("debug"), args)
    run = open_run(cfg, tmp_path / "run")
    model = run.model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss, metrics = run.objective.forward(0)
    assert torch.isfinite(loss), metrics
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    recursion = model.recursion_parameters()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in recursion), "the recursion got no gradient"
    assert model.embed.weight.grad is not None and model.embed.weight.grad.abs().sum() > 0
    if adapter:  # the adapter is part of every path's cycle: its hypernetwork gets a gradient
        grad = model.adapter.to_u.weight.grad
        assert grad is not None and grad.abs().sum() > 0, "the adapter was skipped"
    if clamp:  # the clamp is part of every path's readout
        outs = [run.objective._out] if hasattr(run.objective, "_out") else []
        for out in outs:
            assert out.logits.detach().abs().max() <= CLAMP_MAX
    run.optimizer.step()
    run.objective.commit(True)
    changed = [n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])]
    assert changed
    counts["stepped"] += 1


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("cell", ["lstm"])
def test_the_recurrent_cell_steps_with_every_estimator_and_head_or_is_refused(cell, estimator, head, tmp_path, counts):
    """The recurrent-cell reasoner has the same parts: the same matrix, one optimizer step each."""
    args = ["--model.kind=cell", f"--model.cell={cell}", "--model.d_model=8", "--model.embed_dim=4",
            "--model.h_cycles=2", "--train.batch_size=3", "--train.eval_every=0", "--train.log_every=0",
            "--train.checkpoint_every=0", f"--halt.kind={head}", "--halt.max_steps=2", f"--estimator.kind={estimator}",
            *ESTIMATOR_SETTINGS_FOR_TEST.get(estimator, [])]
    if refused(args, estimator, head, counts):
        return
    run = open_run(apply_overrides(get_config("debug"), args), tmp_path / "run")
    model = run.model
    loss, metrics = run.objective.forward(0)
    assert torch.isfinite(loss), metrics
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.recursion_parameters())
    assert model.read.weight.grad is not None and model.read.weight.grad.abs().sum() > 0  # through the context
    run.optimizer.step()
    run.objective.commit(True)
    counts["stepped"] += 1
