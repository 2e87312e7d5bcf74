"""ARC scoring on known answers (both rules, two attempts), submission validation, voting and the
baselines' program search."""
import json

import numpy as np
import pytest

from ponder.core.errors import PonderError
from ponder.tasks.arc.augment import Transform
from ponder.tasks.arc.baselines import BASELINES, Program, consistent_programs, local_rule, program_search, run_baseline
from ponder.tasks.arc.canvas import encode
from ponder.tasks.arc.data import SPLITS, ArcTask, load_split
from ponder.tasks.arc.scoring import (InvalidGrid, check_grid, first_attempt_cells, parse_submission, read_submission,
                                      score_attempts)
from ponder.tasks.arc.vote import View, attempts_from_views, to_kaggle, vote


def _solutions(tasks):
    return {t.id: [{"attempt_1": o.tolist(), "attempt_2": o.tolist()} for _, o in t.test] for t in tasks}


def _score(sub, tasks, split, **kw):
    return score_attempts(tasks, parse_submission(json.loads(json.dumps(sub)), tasks, split=split, **kw), split=split)


@pytest.mark.parametrize("split", SPLITS)
def test_own_solutions_score_100_and_all_zeros_0_under_both_rules(split):
    tasks = load_split(split)
    r = _score(_solutions(tasks), tasks, split)
    for rule in ("fractional", "all_or_nothing"):
        assert r.rule(rule, 1) == 1.0 and r.rule(rule, 2) == 1.0
    zeros = {t.id: [{"attempt_1": np.zeros_like(i).tolist(), "attempt_2": np.zeros_like(i).tolist()} for i, _ in t.test]
             for t in tasks}  # the all-zeros model: a grid of 0s of the test input's shape
    r = _score(zeros, tasks, split)
    assert all(r.rule(rule, k) == 0.0 for rule in ("fractional", "all_or_nothing") for k in (1, 2))


def test_one_attempt_right_counts_at_pass2_only_and_partial_tasks():
    tasks = load_split("arc1-eval")
    sub = {t.id: [{"attempt_1": [[0]], "attempt_2": o.tolist()} for _, o in t.test] for t in tasks}
    r = _score(sub, tasks, "arc1-eval")
    assert r.rule("fractional", 1) == 0.0 and r.rule("fractional", 2) == 1.0
    assert r.rule("all_or_nothing", 1) == 0.0 and r.rule("all_or_nothing", 2) == 1.0
    two = next(t for t in tasks if len(t.test) == 2)
    half = {two.id: [{"attempt_1": two.test[0][1].tolist(), "attempt_2": [[0]]},
                     {"attempt_1": [[0]], "attempt_2": [[0]]}]}
    r = _score(half, [two], "arc1-eval")
    assert r.rule("fractional", 2) == 0.5 and r.rule("all_or_nothing", 2) == 0.0
    # a random mix against an independent count
    rng = np.random.default_rng(0)
    right = {t.id: rng.random(len(t.test)) < 0.5 for t in tasks}
    def wrong(o):
        w = o.copy()
        w[0, 0] = (w[0, 0] + 1) % 10
        return w

    mix = {t.id: [{"attempt_1": (o if ok else wrong(o)).tolist(), "attempt_2": wrong(o).tolist()}
                  for (_, o), ok in zip(t.test, right[t.id])] for t in tasks}
    r = _score(mix, tasks, "arc1-eval")
    assert r.rule("fractional", 1) == pytest.approx(np.mean([v.mean() for v in right.values()]))
    assert r.rule("all_or_nothing", 1) == pytest.approx(np.mean([v.all() for v in right.values()]))


@pytest.mark.parametrize("bad, reason", [
    ([[1, 2], [3]], "ragged grid: row 1 has 1 cells, row 0 has 2"),
    ([[10]], "colour 10, outside 0-9"),
    ([[-1]], "colour -1"),
    ([[1.0]], "not an integer"),
    ([[True]], "not an integer"),
    ([["1"]], "not an integer"),
    ([[0] * 31], "31 columns, more than 30"),
    ([[0]] * 31, "31 rows, more than 30"),
    ([], "empty grid"),
    ([[]], "row 0 is empty"),
    ("[[0]]", "must be a list of rows, got str"),
    ({"a": 1}, "must be a list of rows, got dict"),
    ([1, 2], "row 0 is a int"),
    (None, "got NoneType"),
])
def test_malformed_grid_makes_the_task_invalid_never_credit(bad, reason):
    with pytest.raises(InvalidGrid, match=reason.replace("(", r"\(")):
        check_grid(bad)
    tasks = load_split("arc1-eval")[:3]
    sub = _solutions(tasks)
    sub[tasks[0].id][0]["attempt_2"] = bad  # attempt_1 is right, yet the task gets no credit
    r = _score(sub, tasks, "arc1-eval")
    assert r.tasks[0].invalid and r.tasks[0].solved(2) == 0 and reason.split(":")[0] in r.tasks[0].invalid
    assert r.rule("fractional", 2) == pytest.approx(2 / 3)


@pytest.mark.parametrize("entry, reason", [
    ([], "0 test predictions for 1 test input"),
    ({"attempt_1": [[0]]}, "expected a list of 1 test predictions, got dict"),
    ([[[0]]], "expected an object with attempt_1 and attempt_2, got list"),
    ([{"attempt_1": [[0]]}], "missing attempt_2"),
    ([{"attempt_1": [[0]], "attempt_2": [[0]], "attempt_3": [[0]]}], "unexpected key 'attempt_3'"),
    ("x", "got str"),
])
def test_wrong_structure_is_invalid(entry, reason):
    tasks = load_split("arc1-eval")[:2]
    assert len(tasks[0].test) == 1
    sub = _solutions(tasks)
    sub[tasks[0].id] = entry
    r = _score(sub, tasks, "arc1-eval")
    assert reason in r.tasks[0].invalid and r.rule("all_or_nothing", 2) == 0.5


def test_file_level_errors_are_one_line(tmp_path):
    tasks = load_split("arc1-eval")
    with pytest.raises(PonderError, match="expected a JSON object"):
        parse_submission([], tasks, split="arc1-eval")
    sub = _solutions(tasks)
    sub["nope"] = []
    with pytest.raises(PonderError, match="1 task id not in arc1-eval, e.g. 'nope'"):
        parse_submission(sub, tasks, split="arc1-eval")
    with pytest.raises(PonderError, match=r"belongs to arc1-train"):
        parse_submission({load_split("arc1-train")[0].id: []}, tasks, split="arc1-eval")
    sub = _solutions(tasks[:10])
    with pytest.raises(PonderError, match="390 of the 400 arc1-eval tasks have no predictions"):
        parse_submission(sub, tasks, split="arc1-eval")
    r = score_attempts(tasks, parse_submission(sub, tasks, split="arc1-eval", allow_missing=True))
    assert r.rule("fractional", 2) == pytest.approx(10 / 400)
    for text, msg in [('{"a": ', "invalid JSON: Expecting value"), ('{"a": NaN}', "NaN is not a number"),
                      ('{"a": [], "a": []}', "key 'a' appears twice"), ("\xff\xfe", "invalid JSON")]:
        p = tmp_path / "s.json"
        p.write_text(text)
        with pytest.raises(PonderError, match=msg):
            read_submission(p)
    with pytest.raises(PonderError, match="no such submission file"):
        read_submission(tmp_path / "missing.json")


def test_vote_inverts_counts_and_breaks_ties_by_confidence():
    g = np.array([[1, 2, 3], [4, 5, 6]], np.uint8)
    t1 = Transform(1, (0, 2, 1, 3, 4, 5, 6, 7, 8, 9))
    t2 = Transform(6, (0, 9, 8, 7, 6, 5, 4, 3, 2, 1))
    other = np.array([[7]], np.uint8)
    views = [(encode(t1.apply(g), 5), t1, 0.1), (encode(t2.apply(g), 5), t2, 0.2),
             (encode(other, 5), Transform(), 0.9), (np.zeros((5, 5), np.uint8), Transform(), 1.0)]
    c = vote(views)
    assert np.array_equal(c[0].grid, g) and c[0].votes == 2 and c[0].confidence == pytest.approx(0.15)
    assert c[1].votes == 1 and len(c) == 2  # the empty canvas casts no vote
    tie = vote([(encode(other, 5), Transform(), 0.3), (encode(g, 5), Transform(), 0.8)])
    assert np.array_equal(tie[0].grid, g)  # one vote each: the more confident first
    vs = [View("t", 0, t1), View("t", 1, t2)]
    att = attempts_from_views(vs, np.stack([encode(t1.apply(g), 5).ravel(), encode(t2.apply(other), 5).ravel()]),
                              np.array([0.5, 0.5]))
    assert np.array_equal(att["t"][0][0], g) and np.array_equal(att["t"][1][0], other)
    assert to_kaggle(att)["t"][1] == {"attempt_1": [[7]], "attempt_2": [[7]]}


def test_program_search_finds_planted_programs_and_its_solutions_are_right():
    rng = np.random.default_rng(0)
    cmap = np.array([0, 2, 1, 3, 4, 5, 6, 7, 8, 9], np.uint8)
    p = Program(3, ("tile", 2, 1), cmap)
    pairs = [(x, p(x)) for x in (rng.integers(0, 3, (3, 4)).astype(np.uint8) for _ in range(4))]
    task = ArcTask("planted", tuple(pairs[:3]), (pairs[3],))
    assert any(np.array_equal(q(pairs[3][0]), pairs[3][1]) for q in consistent_programs(task))
    r = score_attempts([task], {task.id: program_search(task)})
    assert r.rule("all_or_nothing", 2) == 1.0
    tasks = load_split("arc1-train")
    ps = run_baseline("program search (dihedral x colour map x tiling/scaling)", tasks)
    r = score_attempts(tasks, ps)
    solved = r.solved_ids(2)
    assert 0 < len(solved) < 40
    for t in tasks:  # every program it keeps reproduces all demonstrations
        if t.id in solved:
            assert all(all(np.array_equal(q(x), y) for x, y in t.train) for q in consistent_programs(t))
    for name in BASELINES:
        assert score_attempts(tasks[:5], run_baseline(name, tasks[:5])).tasks[0].invalid is None


def _life_step(x: np.ndarray) -> np.ndarray:
    """A planted local rule: a cell turns 2 when it has exactly one neighbour of colour 1 (8-neighbourhood,
    edges included); every other cell keeps its colour."""
    p = np.pad(x == 1, 1).astype(int)
    n = sum(np.roll(np.roll(p, i, 0), j, 1) for i in (-1, 0, 1) for j in (-1, 0, 1) if (i, j) != (0, 0))[1:-1, 1:-1]
    return np.where(n == 1, 2, x).astype(np.uint8)


def test_local_rule_learns_a_planted_neighbourhood_rule_and_refuses_conflicts_and_shape_changes():
    grids = []
    for i, j in np.ndindex(6, 6):  # demonstrations: one dot of colour 1 in each place
        grids.append(np.zeros((6, 6), np.uint8))
        grids[-1][i, j] = 1
    test = np.zeros((6, 6), np.uint8)
    test[1, 1] = test[4, 4] = 1  # two dots: a grid never shown, every neighbourhood of it was
    task = ArcTask("planted", tuple((x, _life_step(x)) for x in grids), ((test, _life_step(test)),))
    assert score_attempts([task], {task.id: local_rule(task)}).rule("all_or_nothing", 1) == 1.0
    # the same input asked to become two outputs: no table fits, no attempt
    x = test
    conflict = ArcTask("conflict", ((x, x), (x, _life_step(x))), ((x, x),))
    assert local_rule(conflict) == [[]]
    resized = ArcTask("resized", ((x, x[:3]),), ((x, x[:3]),))
    assert local_rule(resized) == [[]]
    # a colour map is a 1x1 rule: attempt 2 carries it over to neighbourhoods never seen
    swap = np.array([0, 3, 2, 1, 4, 5, 6, 7, 8, 9], np.uint8)
    demo = np.array([[1, 2], [3, 1]], np.uint8)
    test = np.array([[3, 3, 1], [2, 1, 1]], np.uint8)
    attempts = local_rule(ArcTask("map", ((demo, swap[demo]),), ((test, swap[test]),)))[0]
    assert not np.array_equal(attempts[0], swap[test]) and np.array_equal(attempts[1], swap[test])


def test_first_attempt_cells_counts_target_cells_and_nothing_for_a_wrong_shape_or_a_missing_attempt():
    a, b = np.array([[1, 2], [3, 4]], np.uint8), np.array([[5, 5, 5]], np.uint8)
    task = ArcTask("t", ((a, a),), ((a, a), (b, b)))
    half = np.array([[1, 2], [0, 0]], np.uint8)
    assert first_attempt_cells([task], {"t": [[half, a], [b]]}) == pytest.approx((2 + 3) / 7)
    assert first_attempt_cells([task], {"t": [[b], []]}) == 0.0  # wrong shape; missing
    assert first_attempt_cells([task], {}) == 0.0
    assert first_attempt_cells([task], run_baseline("all zeros", [task])) == 0.0
    assert first_attempt_cells([task], run_baseline("copy input", [task])) == 1.0
