"""Parity task tests, checked against plain-Python computations independent of the module."""
from __future__ import annotations

import itertools
import time

import numpy as np
import pytest

from ponder.core.errors import PonderError
from ponder.core.task import TASKS
from ponder.core.types import IGNORE
from ponder.tasks import build_task
from ponder.tasks.parity.task import ParityConfig, build_parity, count_vectors

DECODE = {1: 0, 2: 1, 3: -1}  # input token -> entry value


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("PONDER_CACHE_DIR", str(tmp_path))
    return tmp_path


def small(**kw) -> ParityConfig:
    base = dict(length=12, n_train=2000, n_test=300)
    base.update(kw)
    return ParityConfig(**base)


def values_of(inputs: np.ndarray) -> list[list[int]]:
    return [[DECODE[int(t)] for t in row] for row in inputs]


def rows(split) -> set[bytes]:
    return {r.tobytes() for r in split.inputs}


def test_registered_and_built_through_registry():
    cls, build = TASKS.get("parity").config, TASKS.get("parity").build
    assert cls is ParityConfig and build is build_parity
    task = build_task(small())
    assert task.name == "parity"


def test_layout_tokens_vocab_and_ignore():
    cfg = small()
    task = build_parity(cfg)
    L = cfg.length
    assert task.vocab_size == 6 and task.seq_len == L and task.grid_shape == (1, L)
    assert task.augment is None and task.difficulty_name == "non-zeros"
    for split, n in ((task.train, cfg.n_train), (task.test, cfg.n_test)):
        assert split.inputs.shape == (n, L) and split.labels.shape == (n, L) and split.difficulty.shape == (n,)
        assert split.inputs.dtype == np.int64 and split.labels.dtype == np.int64 and split.difficulty.dtype == np.float32
        assert set(np.unique(split.inputs).tolist()) <= {1, 2, 3}  # no PAD, only entry tokens
        assert set(np.unique(split.labels[:, 0]).tolist()) == {4, 5}
        assert (split.labels[:, 1:] == IGNORE).all()


def test_labels_and_difficulty_match_an_independent_computation():
    task = build_parity(small())
    for split in (task.train, task.test):
        for vals, lab, diff in zip(values_of(split.inputs), split.labels, split.difficulty):
            plus = sum(1 for v in vals if v == 1)
            nonzero = sum(1 for v in vals if v != 0)
            assert lab[0] == (5 if plus % 2 else 4)
            assert diff == nonzero


def test_interpolation_k_range_covers_1_to_L_in_both_splits():
    cfg = small(n_test=1000)
    task = build_parity(cfg)
    for split in (task.train, task.test):
        k = split.difficulty
        assert k.min() >= 1 and k.max() <= cfg.length
    assert set(task.train.difficulty.astype(int).tolist()) == set(range(1, cfg.length + 1))
    assert len(set(task.test.difficulty.astype(int).tolist())) >= cfg.length - 2  # rare small k may be absent


@pytest.mark.parametrize("length", [12, 13])
def test_extrapolation_k_ranges(length):
    task = build_parity(small(length=length, split="extrapolation"))
    half = length // 2
    assert task.train.difficulty.min() == 1 and task.train.difficulty.max() == half
    assert task.test.difficulty.min() == half + 1 and task.test.difficulty.max() == length


@pytest.mark.parametrize("split", ["interpolation", "extrapolation"])
def test_no_duplicates_and_disjoint_splits(split):
    task = build_parity(small(split=split))
    train, test = rows(task.train), rows(task.test)
    assert len(train) == len(task.train) and len(test) == len(task.test)
    assert not train & test


def test_deterministic_by_seed_and_cache(cache_dir, tmp_path_factory, monkeypatch):
    a = build_parity(small())
    b = build_parity(small())  # from the cache
    monkeypatch.setenv("PONDER_CACHE_DIR", str(tmp_path_factory.mktemp("fresh")))
    c = build_parity(small())  # regenerated
    for x in (b, c):
        assert np.array_equal(a.train.inputs, x.train.inputs) and np.array_equal(a.test.inputs, x.test.inputs)
    d = build_parity(small(seed=1))
    assert not np.array_equal(a.train.inputs, d.train.inputs)


def test_count_vectors_exact():
    for L in (2, 3, 5):
        every = [v for v in itertools.product((-1, 0, 1), repeat=L) if any(v)]
        assert count_vectors(L, 1, L) == len(every) == 3 ** L - 1
        for lo, hi in ((1, L // 2), (L // 2 + 1, L)):
            assert count_vectors(L, lo, hi) == sum(1 for v in every if lo <= sum(x != 0 for x in v) <= hi)


def test_small_space_can_be_used_up_exactly():
    # L=4 has 80 non-zero vectors: asking for all of them gives all of them, once each
    task = build_parity(ParityConfig(length=4, n_train=70, n_test=10))
    allv = rows(task.train) | rows(task.test)
    assert len(allv) == 80
    ext = build_parity(ParityConfig(length=4, split="extrapolation", n_train=32, n_test=48))
    assert len(rows(ext.train)) == 32 and len(rows(ext.test)) == 48


@pytest.mark.parametrize("kw, match", [
    (dict(length=1), "length must be >= 2"),
    (dict(split="sideways"), "split must be"),
    (dict(n_test=0), "n_test must be >= 1"),
    (dict(n_train=-1), "n_train must be >= 0"),
    (dict(length=4, n_train=71, n_test=10), "only 80 distinct"),
    (dict(length=4, split="extrapolation", n_train=33, n_test=1), "only 32 distinct"),
    (dict(length=4, split="extrapolation", n_train=1, n_test=49), "only 48 distinct"),
])
def test_impossible_requests_are_one_line_errors(kw, match):
    with pytest.raises(PonderError, match=match) as e:
        build_parity(ParityConfig(**kw))
    assert "\n" not in str(e.value)


def test_default_size_is_fast():
    t0 = time.perf_counter()
    task = build_parity(ParityConfig())
    assert time.perf_counter() - t0 < 1.0
    assert len(task.train) == 20000 and len(task.test) == 1000


def _plus_share_at_extremes(values: list[list[int]], k: int) -> float:
    """Among the vectors with k non-zeros, the share whose +1 entries number 0 or k."""
    rows_k = [v for v in values if sum(x != 0 for x in v) == k]
    return sum(sum(x == 1 for x in v) in (0, k) for v in rows_k) / max(len(rows_k), 1)


@pytest.mark.parametrize("length, n_train", [(96, 4000), (8, 500)])  # drawn, and enumerated (a small space)
def test_uniform_plus_training_signs_reach_large_counts_and_keep_the_held_out_split(length, n_train):
    paper = build_parity(small(length=length, split="extrapolation", n_train=n_train, n_test=200))
    wide = build_parity(small(length=length, split="extrapolation", n_train=n_train, n_test=200,
                              train_signs="uniform_plus"))
    assert rows(wide.test) == rows(paper.test)  # the held-out vectors are the paper's
    values = values_of(wide.train.inputs)
    assert len({tuple(v) for v in values}) == n_train
    assert all(1 <= sum(x != 0 for x in v) <= length // 2 for v in values)  # still the training range of k
    k = length // 2
    # p ~ U{0..k}: p in {0, k} has probability 2/(k+1) among vectors with k non-zeros (random signs: 2/2^k)
    assert _plus_share_at_extremes(values, k) > 1 / (k + 1)
    assert _plus_share_at_extremes(values_of(paper.train.inputs), k) < 1 / (k + 1)
    if length == 96:  # +1 counts of 33 or more: sum over k of P(k) (k - 32) / (k + 1) = 6.8%; random signs: 0.03%
        big = [sum(x == 1 for x in v) >= 33 for v in values]
        assert np.mean(big) > 0.04
        assert np.mean([sum(x == 1 for x in v) >= 33 for v in values_of(paper.train.inputs)]) < 0.01


def test_uniform_plus_is_refused_for_interpolation():
    with pytest.raises(PonderError, match="task.train_signs=uniform_plus applies to the extrapolation split"):
        build_parity(small(train_signs="uniform_plus"))
