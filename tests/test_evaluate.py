import numpy as np
import torch

from ponder.core.metrics import ExactMatch, exact_and_cells
from ponder.core.task import Split, grid_baselines
from ponder.core.types import IGNORE
from ponder.presets import get_config
from ponder.runs.config import apply_overrides
from ponder.runs.run import build_model
from ponder.training.carry import batch_of
from ponder.training.evaluate import adaptive_inference, evaluate_split, rollout_all_steps


def test_exact_and_cells_ignore_unsupervised_positions():
    preds = torch.tensor([[1, 2, 3], [1, 2, 0]])
    labels = torch.tensor([[1, 2, IGNORE], [1, 3, 0]])
    exact, correct, total = exact_and_cells(preds, labels)
    assert exact.tolist() == [True, False]
    assert correct.tolist() == [2, 2] and total.tolist() == [2, 3]


def test_baselines_on_a_hand_example():
    train = Split(np.array([[2, 1], [2, 1], [3, 1]]), np.array([[2, 4], [2, 4], [3, 5]]), np.zeros(3, np.float32))
    test = Split(np.array([[2, 1], [3, 1]]), np.array([[2, 4], [3, 4]]), np.zeros(2, np.float32))
    b = grid_baselines(test, train)
    assert b["copy input"] == {"exact": 0.0, "cell": 0.5}
    assert b["most frequent label"]["exact"] == 0.5 and b["most frequent label"]["cell"] == 0.75


def _model_with_varied_halting():
    torch.manual_seed(0)
    cfg = apply_overrides(get_config("debug"), ["--halt.max_steps=5"])
    from ponder.tasks import build_task

    task = build_task(cfg.task)
    model = build_model(cfg, task).eval()
    with torch.no_grad():  # a probe whose decision differs across samples and steps
        model.halting.probe.linear.weight.normal_(0, 3.0)
        model.halting.probe.linear.bias.fill_(0.0)
    return model, task


def test_early_exit_matches_full_rollout_and_really_shrinks_the_batch():
    model, task = _model_with_varied_halting()
    split = task.test.subset(np.arange(32))
    seen = []
    step = model.step

    def counting_step(state, ctx):
        seen.append(len(ctx))
        return step(state, ctx)

    model.step = counting_step
    answers, steps = adaptive_inference(model, batch_of(split), max_steps=5)
    assert seen == sorted(seen, reverse=True) and seen[-1] < seen[0]  # finished samples left
    assert sum(seen) == int(steps.sum())  # compute = steps actually used
    model.step = step
    full = rollout_all_steps(model, split, ExactMatch(), max_steps=5, batch_size=32, device=torch.device("cpu"))
    assert np.array_equal(full["halt_step"], steps.numpy())
    # the adaptive prediction is the full rollout's prediction at the halting step
    ex, _, _ = exact_and_cells(answers.argmax(-1), torch.as_tensor(split.labels))
    by_step = np.stack([s["exact"] for s in full["by_budget"]], 1)  # (N, M)
    assert np.array_equal(ex.numpy(), by_step[np.arange(32), steps.numpy() - 1])


def test_evaluate_split_report_fields():
    model, task = _model_with_varied_halting()
    r = evaluate_split(model, task.test, task.metric, max_steps=5, batch_size=16, device=torch.device("cpu"))
    assert r["n"] == len(task.test) and len(r["exact_by_budget"]) == 5
    assert sum(r["steps_histogram"]) == r["n"] and 1 <= r["mean_steps"] <= 5
    assert r["halt_consistent"] == 1.0
    assert sum(b["n"] for b in r["by_difficulty"]) == r["n"]
