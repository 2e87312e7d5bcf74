"""Maze generator tests, checked with networkx and numpy code independent of the module."""
from __future__ import annotations

import networkx as nx
import numpy as np
import pytest

import ponder.tasks.mazes.task as mazes
from ponder.core.errors import PonderError
from ponder.core.task import TASKS
from ponder.tasks.mazes.task import MazeConfig, augment, build_maze

WALL, OPEN, START, GOAL, PATH = 1, 2, 3, 4, 5


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("PONDER_CACHE_DIR", str(tmp_path))
    return tmp_path


def small(**kw) -> MazeConfig:
    base = dict(n_train=60, n_test=20)
    base.update(kw)
    return MazeConfig(**base)


def symmetries(grid: np.ndarray) -> list[np.ndarray]:
    """The 8 rotations/reflections of a square grid."""
    return [np.rot90(g, k) for g in (grid, np.fliplr(grid)) for k in range(4)]


def canon(grid: np.ndarray) -> bytes:
    return min(g.astype(np.uint8).tobytes() for g in symmetries(grid))


def open_graph(inputs: np.ndarray) -> nx.Graph:
    """Grid graph on the non-wall cells."""
    g = nx.grid_2d_graph(*inputs.shape)
    g.remove_nodes_from([tuple(p) for p in np.argwhere(inputs == WALL)])
    return g


def check_maze(x: np.ndarray, y: np.ndarray, difficulty: float, perfect: bool) -> None:
    """All properties of one maze (x inputs, y labels, both (size, size) tokens)."""
    size = x.shape[0]
    border = np.ones_like(x, dtype=bool)
    border[1:-1, 1:-1] = False
    assert (x[border] == WALL).all() and (x[::2, ::2] == WALL).all()  # outer wall and pillars
    assert set(np.unique(x)) <= {WALL, OPEN, START, GOAL}
    assert (x == START).sum() == 1 and (x == GOAL).sum() == 1
    assert ((y == x) | ((y == PATH) & (x == OPEN))).all()  # walls, S, G intact; path only on open cells
    s, t = (tuple(np.argwhere(x == v)[0]) for v in (START, GOAL))
    g = open_graph(x)
    assert nx.shortest_path_length(g, s, t) == (y == PATH).sum() + 1 == difficulty
    paths = list(nx.all_shortest_paths(g, s, t))
    assert len(paths) == 1  # the shortest path is unique
    marked = {tuple(p) for p in np.argwhere(y == PATH)}
    assert marked == set(paths[0][1:-1])
    if perfect:
        assert nx.is_tree(g)
    assert size * size == x.size


@pytest.mark.parametrize("size,loops", [(9, 0.0), (9, 0.3), (11, 0.1)])
def test_mazes_are_consistent(size, loops):
    data = build_maze(small(size=size, loop_fraction=loops))
    for split in (data.train, data.test):
        for x, y, d in zip(split.inputs, split.labels, split.difficulty):
            check_maze(x.reshape(size, size), y.reshape(size, size), d, perfect=loops == 0)
    if loops > 0:  # knocked-out walls really create cycles
        cyclic = sum(not nx.is_tree(open_graph(x.reshape(size, size))) for x in data.train.inputs)
        assert cyclic > len(data.train) // 2


def test_tokens_and_task_fields():
    cfg_cls, build = TASKS.get("maze").config, TASKS.get("maze").build
    assert cfg_cls is MazeConfig and build is build_maze
    data = build_maze(small())
    assert (data.vocab_size, data.seq_len, data.grid_shape) == (6, 81, (9, 9))
    assert data.difficulty_name == "path length"
    for split, n in ((data.train, 60), (data.test, 20)):
        assert split.inputs.shape == split.labels.shape == (n, 81)
        assert split.inputs.dtype == split.labels.dtype == np.int64
        assert split.difficulty.dtype == np.float32 and split.difficulty.shape == (n,)
        assert split.labels.min() >= 1 and split.labels.max() <= 5  # no PAD, all supervised
    assert len(np.unique(data.train.difficulty)) > 5
    assert data.augment is not None and build_maze(small(augment=False)).augment is None


def test_min_path_len():
    data = build_maze(small(size=11, min_path_len=20, n_train=30, n_test=10))
    assert data.train.difficulty.min() >= 20 and data.test.difficulty.min() >= 20
    for x, y, d in zip(data.train.inputs, data.train.labels, data.train.difficulty):
        check_maze(x.reshape(11, 11), y.reshape(11, 11), d, perfect=True)


def test_augment_is_a_shared_dihedral_transform():
    data = build_maze(small(loop_fraction=0.2, n_train=20, n_test=2))
    x = np.repeat(data.train.inputs, 10, axis=0)
    y = np.repeat(data.train.labels, 10, axis=0)
    d = np.repeat(data.train.difficulty, 10)
    ax, ay = augment(x, y, np.random.default_rng(0))
    assert ax.shape == x.shape and ax.dtype == x.dtype
    seen = set()
    for i in range(len(x)):
        ox, oy = x[i].reshape(9, 9), y[i].reshape(9, 9)
        nx_, ny_ = ax[i].reshape(9, 9), ay[i].reshape(9, 9)
        matches = [k for k, (sx, sy) in enumerate(zip(symmetries(ox), symmetries(oy))) if (sx == nx_).all() and (sy == ny_).all()]
        assert matches  # one of the 8 transforms, the same for inputs and labels
        seen.update(matches[:1])
        check_maze(nx_, ny_, d[i], perfect=False)
    assert len(seen) == 8


def test_train_test_disjoint_up_to_symmetry():
    data = build_maze(small(size=7, n_train=150, n_test=50))  # small size: collisions are likely
    train = {canon(x.reshape(7, 7)) for x in data.train.inputs}
    test = {canon(x.reshape(7, 7)) for x in data.test.inputs}
    assert len(train) == len(data.train) and len(test) == len(data.test)
    assert not train & test


def test_determinism(cache_dir, monkeypatch):
    a = build_maze(small(seed=4))
    monkeypatch.setenv("PONDER_CACHE_DIR", str(cache_dir / "other"))
    b = build_maze(small(seed=4))
    c = build_maze(small(seed=5))
    for s in ("train", "test"):
        for f in ("inputs", "labels", "difficulty"):
            assert np.array_equal(getattr(getattr(a, s), f), getattr(getattr(b, s), f))
    assert not np.array_equal(a.train.inputs, c.train.inputs)


def test_cache_hit(cache_dir, monkeypatch):
    a = build_maze(small(seed=2))
    assert len(list(cache_dir.glob("maze-*.npz"))) == 1

    def boom(cfg):
        raise AssertionError("generated again instead of loading the cache")

    monkeypatch.setattr(mazes, "_generate", boom)
    b = build_maze(small(seed=2, augment=False))
    assert np.array_equal(a.train.inputs, b.train.inputs) and np.array_equal(a.test.labels, b.test.labels)


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(size=8), "odd"),
        (dict(size=3), ">= 5"),
        (dict(min_path_len=33), "at most 32"),
        (dict(n_test=0), "n_test"),
        (dict(loop_fraction=1.5), "loop_fraction"),
        (dict(size=5, n_train=200, n_test=10), "distinct"),
    ],
)
def test_impossible_requests(kw, match):
    with pytest.raises(PonderError, match=match) as err:
        build_maze(MazeConfig(**kw))
    assert "\n" not in str(err.value)
