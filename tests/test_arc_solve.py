"""`ponder arc solve` (mode c, a fresh model per task trained from scratch on its demonstrations):
end to end through the command line on two tasks (its score reproduced by `ponder arc score`,
resume, refusals), the model's exact equivariance to colour permutation and transposition, and
that the test outputs cannot reach the answers."""
from __future__ import annotations

import copy
import json
from dataclasses import fields, replace

import numpy as np
import pytest
import torch

import ponder.tasks.arc.solve as solve_module
from ponder.cli import main
from ponder.tasks.arc.data import SMALL_SIDE, load_split, small_tasks
from ponder.tasks.arc.solver_model import DIRECTIONS
from ponder.tasks.arc.solver_train import Puzzle, SolverSettings, build, make_optimizer, objective, puzzle_of, \
    solve_puzzle

TASKS = ("137f0df0", "27a77e38")  # two small evaluation tasks mode (c) has solved with a full budget
ARGS = ["arc", "solve", "--split", "arc1-eval", "--small", "--minutes-per-task", "0.04", "--tasks", ",".join(TASKS)]


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err.strip().splitlines()


def _task(task_id: str):
    return next(t for t in load_split("arc1-eval") if t.id == task_id)


def test_solve_end_to_end_scores_like_arc_score_and_resumes(capsys, tmp_path, monkeypatch):
    out = tmp_path / "solve"
    code, text, err = _run(capsys, *ARGS, "--jobs", "2", "--out", out, "--quiet")
    assert code == 0, err
    for name in ("submission.json", "tasks.csv", "report.md", "report.json", "gallery.png", "solve.json"):
        assert (out / name).exists(), name
    assert sorted(p.name for p in (out / "tasks").iterdir()) == sorted(f"{t}.json" for t in TASKS)
    report = json.loads((out / "report.json").read_text())
    assert "baseline: copy input" in text and "composite: model or program search" in text
    assert set(report["baselines"]) >= {"all zeros", "copy input"}
    rows = (out / "tasks.csv").read_text().splitlines()
    assert rows[0].startswith("task,tests,solved_at_1,solved_at_2,all_solved,demo_fit") and len(rows) == 3
    assert "mean_halting_steps" in rows[0] and "iterations" in rows[0] and "seconds" in rows[0]
    # the submission, scored by `ponder arc score`, gives the solver's own score
    cmd = report["score_command"].split()
    assert cmd[:3] == ["ponder", "arc", "score"]
    code, _, err = _run(capsys, *cmd[1:], "--out", tmp_path / "score.json")
    assert code == 0, err
    again = json.loads((tmp_path / "score.json").read_text())
    assert again["summary"] == report["score"]["summary"] and again["n_tasks"] == len(TASKS)
    assert again["solved_all_tests_at_2"] == report["score"]["solved_all_tests_at_2"]
    # a rerun skips the finished tasks (solving anything would fail here) and writes the same scores
    before = {p.name: p.read_bytes() for p in (out / "tasks").iterdir()}

    def no_solving(*_a, **_k):
        raise AssertionError("a finished task was solved again")

    monkeypatch.setattr(solve_module, "_solve_one", no_solving)
    code, text, err = _run(capsys, *ARGS, "--out", out)
    assert code == 0, err
    assert "resuming: 2 of 2 tasks already finished" in text
    assert {p.name: p.read_bytes() for p in (out / "tasks").iterdir()} == before
    assert json.loads((out / "report.json").read_text())["score"] == report["score"]
    # ... and refuses to mix settings into that directory
    code, _, err = _run(capsys, *[a if a != "0.04" else "0.05" for a in ARGS], "--out", out)
    assert code == 2 and len(err) == 1 and "holds a run with other settings" in err[0]


@pytest.mark.parametrize("argv, message", [
    (["--split", "arc1-eval", "--small"], "needs --minutes-per-task"),
    (["--split", "arc1-eval", "--small", "--minutes-per-task", "abc"], "--minutes-per-task expects a number"),
    (["--split", "arc1-eval", "--small", "--minutes-per-task", "0"], "--minutes-per-task must be > 0"),
    (["--split", "arc1-eval", "--small", "--minutes-per-task", "1", "--jobs", "0"], "--jobs must be >= 1"),
    (["--split", "arc1-evil", "--small", "--minutes-per-task", "1"], "unknown ARC split 'arc1-evil'"),
    (["--small", "--minutes-per-task", "1"], "--split is required"),
    (["--split", "arc1-eval", "--small", "--max-side", "8", "--minutes-per-task", "1"], "give one of them"),
    (["--split", "arc1-eval", "--small", "--minutes-per-task", "1", "--tasks", "00000000"],
     "'00000000' is not one of the arc1-eval, 77 tasks whose grids all fit 10x10"),
    (["--split", "arc1-eval", "--small", "--minutes-per-task", "1", "--tasks", ","], "--tasks names no task id"),
])
def test_bad_arguments_are_one_line_exit_2(capsys, tmp_path, argv, message):
    code, out, err = _run(capsys, "arc", "solve", *argv, "--out", tmp_path / "x")
    assert code == 2 and len(err) == 1 and err[0].startswith("ponder: error: ") and message in err[0], err
    assert not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------- the model


def _trained(puzzle: Puzzle, iters: int = 3):
    s = SolverSettings()
    enc, model, grid, known, prior = build(puzzle, s)
    opt = make_optimizer(model, s)
    for _ in range(iters):  # a few updates, so that no weight is still at its symmetric start
        loss = objective(model, grid, known, enc.targets, prior, s)[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model, grid


def _forward(model, grid):
    with torch.no_grad():
        logits, halts, kl = model(sample=False, grid=grid)
    return torch.stack(logits), halts, kl


def _colourful_puzzle() -> Puzzle:
    tasks = small_tasks(load_split("arc1-eval"), SMALL_SIDE)
    best = max(tasks[:30], key=lambda t: len({int(c) for p in t.train for g in p for c in np.unique(g)}))
    return puzzle_of(best)


def test_model_is_exactly_equivariant_to_colour_permutation():
    puzzle = _colourful_puzzle()
    model, grid = _trained(puzzle)
    n_c = grid["planes"].shape[2]
    assert n_c >= 3
    perm = torch.randperm(n_c, generator=torch.Generator().manual_seed(1))
    grid2 = {**grid, "planes": grid["planes"][:, :, perm]}
    model2 = copy.deepcopy(model)
    with torch.no_grad():
        for name in model2.mu:  # the colour latents travel with their colours
            if "C" in name:
                model2.mu[name].copy_(model.mu[name][:, :, perm])
                model2.adjust[name].copy_(model.adjust[name][:, :, perm])
    lg, halts, kl = _forward(model, grid)
    lg2, halts2, kl2 = _forward(model2, grid2)
    assert torch.allclose(lg2, lg[:, :, :, perm], atol=1e-4), (lg2 - lg[:, :, :, perm]).abs().max()
    assert torch.allclose(halts2, halts, atol=1e-4) and torch.allclose(kl2, kl)


def test_model_is_exactly_equivariant_to_transposition():
    puzzle = _colourful_puzzle()
    transposed = Puzzle(puzzle.id, tuple((i.T.copy(), o.T.copy()) for i, o in puzzle.train),
                        tuple(i.T.copy() for i in puzzle.test_inputs))
    model, grid = _trained(puzzle)
    _, model2, grid2, _, _ = build(transposed, SolverSettings())
    # transposing swaps (drow, dcol): the direction latents follow their directions
    dirs = [DIRECTIONS.index((dc, dr)) for dr, dc in DIRECTIONS]
    state = {k: (v[:, :, :, dirs] if k.startswith(("mu.", "adjust.")) and "D" in k.split(".")[1] else v)
             for k, v in model.state_dict().items()}
    model2.load_state_dict(state)
    for key in ("planes", "background", "in_mask", "out_mask"):
        assert torch.equal(grid2[key], grid[key].transpose(4, 5))
    lg, halts, kl = _forward(model, grid)
    lg2, halts2, kl2 = _forward(model2, grid2)
    assert torch.allclose(lg2, lg.transpose(4, 5), atol=1e-4), (lg2 - lg.transpose(4, 5)).abs().max()
    assert torch.allclose(halts2, halts, atol=1e-4) and torch.allclose(kl2, kl)


# ----------------------------------------------------------------------------- no leak


def test_test_outputs_cannot_reach_the_answers(monkeypatch):
    assert [f.name for f in fields(Puzzle)] == ["id", "train", "test_inputs"]  # no place for test outputs
    task = _task(TASKS[0])
    rng = np.random.default_rng(0)
    garbled = replace(task, test=tuple((i, rng.integers(0, 10, size=o.shape).astype(np.uint8)) for i, o in task.test))
    settings = SolverSettings(seconds=1e9, max_iters=12, warmup=3, log_every=3)  # iterations, not time, end it
    a, b = solve_puzzle(puzzle_of(task), settings), solve_puzzle(puzzle_of(garbled), settings)
    assert a.iters == b.iters == 12
    for x, y in zip(a.attempts + a.step_answers, b.attempts + b.step_answers):
        assert len(x) == len(y) and all(np.array_equal(g, h) for g, h in zip(x, y))
    assert [{k: v for k, v in h.items() if k != "t"} for h in a.history] == \
        [{k: v for k, v in h.items() if k != "t"} for h in b.history]  # all but the clock
    # the protocol hands its workers puzzles only
    seen = []
    monkeypatch.setattr(solve_module, "solve_puzzle", lambda p, s: seen.append(p) or solve_puzzle(p, settings))
    solve_module._solve_one(puzzle_of(task), settings)
    assert seen and all(isinstance(p, Puzzle) for p in seen)
