"""Recurrent-cell reasoners (model.kind=cell): the step against hand-written cell formulas, the
gradient through the carried state against a hand-unrolled trajectory, every halting head, early
exit, resume, gradient diagnostics and the refusals."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from run_support import assert_resume_matches, records

from ponder.core.errors import PonderError
from ponder.core.types import StepOutput
from ponder.experiments.diagnose import diagnose_gradients
from ponder.models.cell import CellConfig, CellReasoner
from ponder.models.halting import Segment, build_halting, halt_config
from ponder.presets import get_config
from ponder.runs.config import apply_overrides
from ponder.runs.run import build_model, train_run
from ponder.tasks import build_task
from ponder.training.carry import SampleStream, batch_of
from ponder.training.evaluate import evaluate_split
from ponder.training.objectives import build_objective, per_sample_task_loss

SMALL = ["--model.kind=cell", "--model.d_model=16", "--model.embed_dim=8", "--task.length=8", "--task.n_train=400",
         "--task.n_test=64", "--halt.max_steps=4", "--train.batch_size=16", "--train.steps=8",
         "--train.eval_every=4", "--train.checkpoint_every=4", "--train.log_every=2", "--train.progress=false",
         "--eval.train_samples=32", "--eval.during_training_samples=32", "--eval.batch_size=64"]


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("PONDER_CACHE_DIR", str(tmp_path / "cache"))


def _cfg(*overrides):
    return apply_overrides(get_config("parity16"), [*SMALL, *overrides])


def _model(cell: str, **kw) -> CellReasoner:
    torch.manual_seed(0)
    cfg = CellConfig(cell=cell, d_model=6, embed_dim=5, **kw)
    return CellReasoner(cfg, vocab_size=4, seq_len=3, halting=build_halting(halt_config("pondernet", max_steps=3), 6))


def _batch(b=5, n=3, v=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    inputs = torch.randint(0, v, (b, n), generator=g)
    return SimpleNamespace(inputs=inputs)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_one_step_is_the_cell_formula_on_the_one_hot_input(cell):
    model = _model(cell)
    batch = _batch()
    state = model.init_state(5)
    h0 = torch.randn(5, 6)
    c0 = torch.randn(5, 6)
    state.y[:, 0], state.z[:, 0] = h0, c0
    new, out = model.step(state, model.prepare(batch))
    one_hot = F.one_hot(batch.inputs, 4).float().flatten(1)  # (b, n*v), position-major
    x = one_hot @ model.read.weight.T  # (b, E)
    c = model.cell
    gi, gh = x @ c.weight_ih.T + c.bias_ih, h0 @ c.weight_hh.T + c.bias_hh
    if cell == "rnn":
        h, c_new = torch.tanh(gi + gh), c0
    elif cell == "gru":
        ir, iz, in_ = gi.chunk(3, 1)
        hr, hz, hn = gh.chunk(3, 1)
        r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
        n = torch.tanh(in_ + r * hn)
        h, c_new = (1 - z) * n + z * h0, c0
    else:
        i, f, g, o = (gi + gh).chunk(4, 1)
        c_new = torch.sigmoid(f) * c0 + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c_new)
    assert torch.allclose(new.y[:, 0], h, atol=1e-6)
    assert torch.allclose(new.z[:, 0], c_new, atol=1e-6)
    assert out.logits.shape == (5, 3, 4)
    assert torch.allclose(out.logits, (h @ model.readout.weight.T).view(5, 3, 4), atol=1e-6)
    assert not new.y.requires_grad  # detached by default


def test_layer_norm_and_orthogonal_init():
    model = _model("gru", layer_norm=True, orthogonal_init=True)
    for block in model.cell.weight_hh.detach().chunk(3, 0):
        assert torch.allclose(block @ block.T, torch.eye(6), atol=1e-5)
    assert float(model.cell.bias_hh.detach().abs().sum()) == 0.0
    new, _ = model.step(model.init_state(5), model.prepare(_batch()))
    h = new.y[:, 0]
    assert torch.allclose(h.mean(1), torch.zeros(5), atol=1e-5)
    assert torch.allclose(h.var(1, unbiased=False), torch.ones(5), atol=1e-3)


@pytest.mark.parametrize("through", [True, False])
def test_trajectory_gradient_runs_through_the_carried_state(through):
    """The trajectory objective's gradient equals the head's loss of a hand-unrolled tanh RNN, with
    the graph kept between steps (through_steps, as PonderNet trains) or cut at every step."""
    cfg = _cfg(f"--model.through_steps={str(through).lower()}", "--halt.kind=pondernet")
    task = build_task(cfg.task)
    torch.manual_seed(0)
    model = build_model(cfg, task)
    stream = SampleStream(task.train, seed=0, augment=task.augment)
    objective = build_objective(model, stream, task.metric, batch_size=16, halt_cfg=cfg.halt, loss_kind="softmax",
                                device=torch.device("cpu"), seed=0)
    batch = batch_of(task.train.slice(0, 16))
    objective.stream = SimpleNamespace(take=lambda n: batch)
    loss, _ = objective.forward(0)
    got = torch.autograd.grad(loss, model.cell.weight_hh)[0]

    c, m = model.cell, cfg.halt.max_steps
    x = F.one_hot(batch.inputs, task.vocab_size).float().flatten(1) @ model.read.weight.T  # (b, E)
    h = torch.zeros(16, cfg.model.d_model)
    outs = []
    for _ in range(m):
        h = torch.tanh(x @ c.weight_ih.T + c.bias_ih + h @ c.weight_hh.T + c.bias_hh)
        logits = (h @ model.readout.weight.T).view(16, task.seq_len, task.vocab_size)
        halt_logits, aux = model.halting.logits(h.unsqueeze(1))
        outs.append(StepOutput(logits, halt_logits, aux))
        if not through:
            h = h.detach()
    correct = [task.metric.correct(task.metric.score(o.logits, batch.labels)) for o in outs]
    segment = Segment(outs, torch.ones(16, dtype=torch.long), batch.labels,
                      lambda lg, lb: per_sample_task_loss(lg, lb, "softmax"), correct, train_step=0)
    want = torch.autograd.grad(model.halting.loss(segment)[0], c.weight_hh)[0]
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-7), (got - want).abs().max()
    if through:  # and cutting the graph would have given another gradient
        assert got.abs().sum() > 0


@pytest.mark.parametrize("head", ["q_halt", "q_continue", "act", "pondernet"])
def test_every_halting_head_trains_and_evaluates_with_early_exit(tmp_path, head):
    cfg = _cfg(f"--halt.kind={head}", "--train.steps=4", "--train.eval_every=4", "--train.lr=0.01")
    report = train_run(cfg, tmp_path / head)
    held = report["held_out"]
    assert held["n"] == 64 and 1.0 <= held["mean_steps"] <= 4.0
    assert held["halt_consistent"] == 1.0  # early exit stops where the full rollout's rule says
    losses = [r["loss"] for r in records(tmp_path / head) if r["kind"] == "train"]
    assert losses and all(torch.isfinite(torch.tensor(losses)))


def test_early_exit_scores_equal_the_full_rollout_at_each_halting_step():
    cfg = _cfg("--halt.kind=pondernet", "--halt.bias_init=-1.0")
    task = build_task(cfg.task)
    torch.manual_seed(3)
    model = build_model(cfg, task)
    with torch.no_grad():  # halting probabilities that differ across inputs
        model.halting.probe.linear.weight.normal_(0, 3.0)
    r = evaluate_split(model, task.test, task.metric, max_steps=4, batch_size=20, device=torch.device("cpu"))
    assert len(set(r["steps"])) > 2  # samples halt at different steps
    assert r["halt_consistent"] == 1.0  # each at the step the full rollout's rule names


def test_resume_after_crash_equals_uninterrupted_run(tmp_path):
    cfg = _cfg("--halt.kind=pondernet")
    train_run(cfg, tmp_path / "a", final_eval=False)
    assert_resume_matches(cfg, tmp_path / "a", tmp_path / "b", crash_at=6)  # after checkpoint 4


def test_gradient_diagnostics_run_on_a_cell():
    result = diagnose_gradients("parity16", steps=3, ref_steps=6, batch=4, max_iter=10, ref_max_iter=20,
                                overrides=[*SMALL, "--halt.kind=q_halt"], progress=False)
    assert result["cycle"] == "one RNN cell application"
    bptt = next(r for r in result["rows"] if r["estimator"].startswith("bptt") and "skipped" not in r)
    assert bptt["bptt_long"]["cosine"] > 0.0


def test_a_task_with_conditioning_is_refused():
    cfg = _cfg()
    fake = SimpleNamespace(num_puzzle_ids=5, context_len=0, vocab_size=6, seq_len=8)
    with pytest.raises(PonderError, match="model.kind=cell reads only"):
        build_model(cfg, fake)
    with pytest.raises(PonderError, match="model.cell must be one of"):
        _cfg("--model.cell=transformer")
    with pytest.raises(PonderError, match="unknown key 'mixer'"):
        _cfg("--model.mixer=mlp")
