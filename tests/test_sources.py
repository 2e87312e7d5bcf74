"""Readers of the published files (Sudoku-Extreme, Maze-Hard): small files in exactly their format
are written, read back and checked with the Sudoku and maze tests' independent checkers; every
malformed file is refused in one line naming the file, the line and the fault, with nothing cached."""
from __future__ import annotations

import csv
import re
from pathlib import Path

import networkx as nx
import numpy as np
import pytest

import ponder.tasks.common.published as sources
from ponder.core.errors import PonderError
from ponder.tasks.mazes.task import MazeConfig, build_maze, generate_maze
from ponder.tasks.sudoku.task import SudokuConfig, build_sudoku, generate_puzzle
from tests.test_mazes import open_graph
from tests.test_sudoku import naive_valid

HEADER = "source,question,answer,rating"
WALL, OPEN, START, GOAL, PATH = 1, 2, 3, 4, 5


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("PONDER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "no-hub"))
    return tmp_path / "cache"


def cached_files(cache_dir: Path) -> list[Path]:
    return sorted(cache_dir.glob("*")) if cache_dir.exists() else []


# ----------------------------------------------------------------------------- writing the formats


def sudoku_rows(n: int, seed: int) -> list[list[str]]:
    """`n` rows of Sudoku-Extreme's format: 9x9 puzzles ('.' blank) with their solutions."""
    rng = np.random.default_rng(seed)
    rows = []
    while len(rows) < n:
        made = generate_puzzle(3, 3, rng, 30, 40)
        if made is None:
            continue
        q = "".join("." if v == 0 else str(v) for v in made[0].ravel())
        a = "".join(str(v) for v in made[1].ravel())
        rows.append([f"set{len(rows) % 3}", q, a, str(int(rng.integers(0, 60)))])
    return rows


def maze_rows(n: int, seed: int) -> list[list[str]]:
    """`n` rows of Maze-Hard's format: 30x30 grids over '# SGo', a carved 29x29 maze in a corner,
    plus one open room where many shortest paths exist (the answer marks one)."""
    rng = np.random.default_rng(seed)
    rows = [open_room_row()]
    while len(rows) < n:
        made = generate_maze(29, 0.1, 20, rng)
        if made is None:
            continue
        x, y = (np.pad(a, ((0, 1), (0, 1)), constant_values=WALL) for a in made[:2])
        rows.append(["hard", to_chars(x), to_chars(y), str(made[2])])
    return rows


def to_chars(grid: np.ndarray) -> str:
    return "".join("# SGo"[t - 1] for t in np.asarray(grid).ravel())


def open_room_row() -> list[str]:
    q = np.full((30, 30), WALL)
    q[2:12, 3:15] = OPEN
    q[2, 3], q[11, 14] = START, GOAL
    a = q.copy()
    a[2, 4:15] = PATH  # along the top row, then down the right side: one of many shortest paths
    a[3:11, 14] = PATH
    a[2, 14] = PATH
    return ["room", to_chars(q), to_chars(a), "0"]


def write_csv(path: Path, rows: list[list[str]], header: str = HEADER) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        f.write(header + "\n")
        csv.writer(f, lineterminator="\n").writerows(rows)
    return path


def folder(tmp_path: Path, train: list[list[str]], test: list[list[str]], name: str = "data") -> Path:
    d = tmp_path / name
    write_csv(d / "train.csv", train)
    write_csv(d / "test.csv", test)
    return d


def sudoku_cfg(d, **kw) -> SudokuConfig:
    return SudokuConfig(box_rows=3, box_cols=3, source=str(d), **{"n_train": 6, "n_test": 0, **kw})


def maze_cfg(d, **kw) -> MazeConfig:
    return MazeConfig(size=30, source=str(d), **{"n_train": 4, "n_test": 0, **kw})


def decode_sudoku(tokens: np.ndarray) -> str:
    return "".join("." if t == 1 else str(t - 1) for t in tokens)


# ----------------------------------------------------------------------------- Sudoku-Extreme


def test_sudoku_extreme_read_back(tmp_path):
    train, test = sudoku_rows(10, 0), sudoku_rows(4, 1)
    task = build_sudoku(sudoku_cfg(folder(tmp_path, train, test)))
    assert (task.seq_len, task.vocab_size) == (81, 11)
    assert [decode_sudoku(x) for x in task.test.inputs] == [r[1] for r in test]  # all, in file order
    assert [decode_sudoku(y) for y in task.test.labels] == [r[2] for r in test]
    assert task.test.difficulty.tolist() == [float(r[3]) for r in test]
    by_question = {r[1]: r for r in train}
    assert len(task.train) == 6 and len({decode_sudoku(x) for x in task.train.inputs}) == 6
    for x, y, d in zip(task.train.inputs, task.train.labels, task.train.difficulty):
        row = by_question[decode_sudoku(x)]
        assert decode_sudoku(y) == row[2] and d == float(row[3])
    for split in (task.train, task.test):  # the sudoku tests' own checker on what was read
        for x, y in zip(split.inputs, split.labels):
            assert naive_valid(y - 1, 3, 3)
            assert ((x == 1) | (x == y)).all()


def test_sudoku_extreme_subsample_is_seeded_and_rating_filter(tmp_path):
    train = sudoku_rows(12, 2)
    d = folder(tmp_path, train, sudoku_rows(2, 3))
    pick = lambda seed: sorted(decode_sudoku(x) for x in build_sudoku(sudoku_cfg(d, seed=seed)).train.inputs)
    assert pick(0) == pick(0) and pick(0) != pick(1)
    cut = sorted(int(r[3]) for r in train)[6]
    task = build_sudoku(sudoku_cfg(d, n_train=0, n_test=0, min_rating=float(cut)))
    assert len(task.train) == 0
    task = build_sudoku(sudoku_cfg(d, n_train=sum(int(r[3]) >= cut for r in train), min_rating=float(cut)))
    assert sorted(decode_sudoku(x) for x in task.train.inputs) == sorted(r[1] for r in train if int(r[3]) >= cut)
    with pytest.raises(PonderError, match=r"train.csv has 12 usable rows \(of 12\), fewer than the 13 asked for"):
        build_sudoku(sudoku_cfg(d, n_train=13))


def test_cache_is_used_and_keyed_by_content(tmp_path, monkeypatch):
    d = folder(tmp_path, sudoku_rows(6, 4), sudoku_rows(2, 5))
    a = build_sudoku(sudoku_cfg(d))
    calls = []
    real = sources.read_rows
    monkeypatch.setattr(sources, "read_rows", lambda *a, **k: calls.append(1) or real(*a, **k))
    b = build_sudoku(sudoku_cfg(d))
    assert calls == [] and np.array_equal(a.train.inputs, b.train.inputs)
    write_csv(d / "test.csv", sudoku_rows(3, 6))  # new content: read again
    c = build_sudoku(sudoku_cfg(d))
    assert calls == [1, 1] and len(c.test) == 3


def test_hugging_face_cache_is_found(tmp_path, monkeypatch):
    hub = tmp_path / "hub"
    base = hub / "datasets--sapientinc--sudoku-extreme"
    folder(base / "snapshots", sudoku_rows(3, 7), sudoku_rows(2, 8), name="0123abc")
    folder(base / "snapshots", sudoku_rows(3, 9), sudoku_rows(1, 10), name="old")  # not the main revision
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text("0123abc")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    assert len(build_sudoku(sudoku_cfg("hf", n_train=3)).test) == 2
    with pytest.raises(PonderError, match="data set sapientinc/maze-30x30-hard-1k .* is not in the Hugging Face cache"):
        build_maze(maze_cfg("hf"))


def test_hf_home_is_honoured(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert sources.hub_dirs() == [tmp_path / "hf" / "hub"]


# ----------------------------------------------------------------------------- Maze-Hard


def test_maze_hard_read_back(tmp_path):
    train, test = maze_rows(6, 0), maze_rows(3, 1)
    task = build_maze(maze_cfg(folder(tmp_path, train, test)))
    assert (task.seq_len, task.grid_shape, task.vocab_size) == (900, (30, 30), 6)
    assert [to_chars(x) for x in task.test.inputs] == [r[1] for r in test]
    assert [to_chars(y) for y in task.test.labels] == [r[2] for r in test]
    for split in (task.train, task.test):  # networkx, as in the maze tests
        for x, y, d in zip(split.inputs, split.labels, split.difficulty):
            x, y = x.reshape(30, 30), y.reshape(30, 30)
            s, t = (tuple(np.argwhere(x == v)[0]) for v in (START, GOAL))
            g = open_graph(x)
            assert nx.shortest_path_length(g, s, t) == d == (y == PATH).sum() + 1
            walk = g.subgraph([s, t, *map(tuple, np.argwhere(y == PATH))])
            assert nx.shortest_path_length(walk, s, t) == d  # the marked cells are a shortest path
            assert ((y == x) | ((y == PATH) & (x == OPEN))).all()
    room = task.test.inputs[0].reshape(30, 30)
    s, t = (tuple(np.argwhere(room == v)[0]) for v in (START, GOAL))
    assert len(list(nx.all_shortest_paths(open_graph(room), s, t))) > 1  # the file may mark any one


def test_maze_min_path_len_filters_rows(tmp_path):
    test = maze_rows(5, 2)
    task = build_maze(maze_cfg(folder(tmp_path, maze_rows(4, 3), test), n_train=1, min_path_len=25))
    assert sorted(task.test.difficulty.tolist()) == sorted(float(r[3]) for r in test if int(r[3]) >= 25)


# ----------------------------------------------------------------------------- one line per fault


def _sudoku_fault(rows: list[list[str]], kind: str) -> None:
    r = rows[1]
    q, a = r[1], r[2]
    given = next(i for i, ch in enumerate(q) if ch != ".")
    blank = next(i for i, ch in enumerate(q) if ch == ".")
    if kind == "columns":
        rows[1] = r + ["extra"]
    elif kind == "char":
        rows[1][1] = q[:5] + "x" + q[6:]
    elif kind == "length":
        rows[1][1] = q[:80]
    elif kind == "givens":
        rows[1][2] = a[:given] + str(int(a[given]) % 9 + 1) + a[given + 1:]
    elif kind == "rules":  # swap two digits of a blank's row in the answer: givens kept, rules broken
        row0 = blank - blank % 9
        other = next(j for j in range(row0, row0 + 9) if j != blank)
        digits = list(a)
        digits[blank] = digits[other]
        rows[1][2] = "".join(digits)
    elif kind == "rating":
        rows[1][3] = "hard"


@pytest.mark.parametrize("kind,message", [
    ("columns", "expected 4 columns (source,question,answer,rating), got 5"),
    ("char", "question has 'x' at position 6; allowed: '.123456789'"),
    ("length", "question has 80 characters, Sudoku-Extreme needs 81 (9x9)"),
    ("givens", "where the question gives"),
    ("rules", "answer breaks the Sudoku rules: row"),
    ("rating", "rating 'hard' is not a finite number"),
])
def test_malformed_sudoku_file_is_refused_in_one_line(tmp_path, cache_dir, kind, message):
    rows = sudoku_rows(3, 11)
    _sudoku_fault(rows, kind)
    d = folder(tmp_path, sudoku_rows(2, 12), rows)
    with pytest.raises(PonderError) as err:
        build_sudoku(sudoku_cfg(d, n_train=1))
    text = str(err.value)
    assert text.startswith(f"{d / 'test.csv'} line 3: ") and message in text and "\n" not in text
    assert cached_files(cache_dir) == []  # nothing half-loaded


def test_bad_header_and_empty_file(tmp_path, cache_dir):
    d = folder(tmp_path, sudoku_rows(2, 13), sudoku_rows(2, 14))
    write_csv(d / "train.csv", sudoku_rows(2, 13), header="question,answer")
    with pytest.raises(PonderError, match=r"train.csv line 1: header must be source,question,answer,rating, "
                                          r"got question,answer$"):
        build_sudoku(sudoku_cfg(d, n_train=1))
    (d / "train.csv").write_text("")
    with pytest.raises(PonderError, match="got an empty file"):
        build_sudoku(sudoku_cfg(d, n_train=1))
    assert cached_files(cache_dir) == []


def _maze_fault(row: list[str], kind: str) -> None:
    q, a = list(row[1]), list(row[2])
    path = [i for i, ch in enumerate(a) if ch == "o"]
    wall = q.index("#")
    if kind == "no start":
        q[q.index("S")] = " "
        a[a.index("S")] = " "
    elif kind == "char":
        q[wall] = "x"
    elif kind == "length":
        q, a = q[:899], a[:899]
    elif kind == "moves wall":
        a[wall] = " "
    elif kind == "gap":  # unmark one path cell and mark a cell elsewhere: same count, not joined
        a[path[len(path) // 2]] = " "
        a[next(i for i, ch in enumerate(a) if ch == " " and i not in path)] = "o"
    elif kind == "detour":  # one extra marked cell: no longer a shortest path
        a[next(i for i, ch in enumerate(a) if ch == " ")] = "o"
    elif kind == "unreachable":  # wall in G
        g = q.index("G")
        for k in (g - 30, g + 30, g - 1, g + 1):
            if q[k] in " o":
                q[k] = a[k] = "#"
    row[1], row[2] = "".join(q), "".join(a)


@pytest.mark.parametrize("kind,message", [
    ("no start", "question has 0 S cells, needs exactly 1"),
    ("char", "question has 'x' at position 1; allowed: ' #GS'"),
    ("length", "question has 899 characters, Maze-Hard (30x30) needs 900 (30x30); set --task.size"),
    ("moves wall", "answer changes row 1 column 1 from '#' to ' '"),
    ("gap", "the answer's path does not join S to G"),
    ("detour", "but a shortest path from S to G has"),
    ("unreachable", "G cannot be reached from S"),
])
def test_malformed_maze_file_is_refused_in_one_line(tmp_path, cache_dir, kind, message):
    rows = maze_rows(3, 15)
    _maze_fault(rows[2], kind)
    d = folder(tmp_path, rows, maze_rows(2, 16))
    with pytest.raises(PonderError) as err:
        build_maze(maze_cfg(d, n_train=1))
    text = str(err.value)
    assert text.startswith(f"{d / 'train.csv'} line 4: ") and message in text and "\n" not in text
    assert cached_files(cache_dir) == []


@pytest.mark.parametrize("cfg,message", [
    (lambda d: SudokuConfig(source=str(d)), "set --task.box_rows=3 --task.box_cols=3"),
    (lambda d: sudoku_cfg(d / "nowhere"), "no such folder"),
    (lambda d: sudoku_cfg(d, min_givens=20), "task.min_givens=20 would do nothing: task.source reads"),
    (lambda d: SudokuConfig(min_rating=5.0), "task.min_rating=5.0 would do nothing"),
    (lambda d: SudokuConfig(n_test=0), "n_test must be >= 1 for generated puzzles"),
    (lambda d: maze_cfg(d, loop_fraction=0.1), "task.loop_fraction=0.1 would do nothing"),
    (lambda d: SudokuConfig(box_rows=3, box_cols=3, source=""), "task.source is empty"),
])
def test_config_errors(tmp_path, cfg, message):
    with pytest.raises(PonderError, match=re.escape(message)):
        c = cfg(tmp_path)
        (build_sudoku if isinstance(c, SudokuConfig) else build_maze)(c)


def test_folder_without_test_file(tmp_path):
    write_csv(tmp_path / "d" / "train.csv", sudoku_rows(1, 17))
    with pytest.raises(PonderError, match="the folder has no test.csv"):
        build_sudoku(sudoku_cfg(tmp_path / "d"))
