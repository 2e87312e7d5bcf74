"""SVG sample renderers: well-formed XML, one rect per cell, wrong cells marked exactly where
preds != labels on supervised positions, captions, escaping; samples from the real generators."""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from ponder.core import render
from ponder.core.types import IGNORE
from ponder.tasks import build_task
from ponder.tasks.mazes import task as mazes
from ponder.tasks.parity import task as parity
from ponder.tasks.parity.task import ParityConfig
from ponder.tasks.sudoku import task as sudoku

NS = "{http://www.w3.org/2000/svg}"


# ----------------------------------------------------------------------------- helpers


def parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg)
    assert root.tag == NS + "svg"
    w, h = float(root.get("width")), float(root.get("height"))
    assert root.get("viewBox") == f"0 0 {root.get('width')} {root.get('height')}" and w > 0 and h > 0
    return root


def by_class(el: ET.Element, tag: str, cls: str) -> list[ET.Element]:
    return [e for e in el.iter(NS + tag) if cls in (e.get("class") or "").split()]


def panels(root: ET.Element) -> list[ET.Element]:
    ps = [g for g in root.iter(NS + "g") if g.get("class") == "panel"]
    assert [p.find(NS + "text").text for p in ps] == ["input", "target", "prediction"]
    return ps


def marked_cells(panel: ET.Element) -> list[int]:
    """Indices (row-major) of the cells of `panel` that carry a wrong-cell outline."""
    cells = by_class(panel, "rect", "cell")
    where = {(float(c.get("x")), float(c.get("y"))): i for i, c in enumerate(cells)}
    return sorted(where[(float(m.get("x")) - 1.5, float(m.get("y")) - 1.5)] for m in by_class(panel, "rect", "wrong"))


def caption(root: ET.Element) -> str:
    (cap,) = by_class(root, "text", "caption")
    return cap.text


def fills(panel: ET.Element) -> list[str]:
    return [c.get("fill") for c in by_class(panel, "rect", "cell")]


# ----------------------------------------------------------------------------- samples


@pytest.fixture(scope="module")
def sudoku_sample() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    made = None
    while made is None:
        made = sudoku.generate_puzzle(2, 3, rng, 12, 18)
    return made[0].ravel() + 1, made[1].ravel() + 1  # blank 0 -> 1, digit d -> d + 1 (as build_sudoku)


@pytest.fixture(scope="module")
def maze_sample() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    made = None
    while made is None:
        made = mazes.generate_maze(9, 0.0, 4, rng)
    return made[0].ravel().astype(np.int64), made[1].ravel().astype(np.int64)


# ----------------------------------------------------------------------------- tests


def test_grid_svg_cells_text_borders_and_marks():
    cells = np.arange(12).reshape(3, 4)
    svg = render.grid_svg(cells, rows=3, cols=4, fill={0: "#ff0000"}, text=lambda v: str(v) if v % 2 else "",
                          borders=(3, 2), marks=[v == 5 for v in range(12)], title="grid", cell_px=20)
    root = parse(svg)
    cell_rects = by_class(root, "rect", "cell")
    assert len(cell_rects) == 12 and all(c.get("width") == "20" for c in cell_rects)
    assert [c.get("fill") for c in cell_rects].count("#ff0000") == 1
    assert [t.text for t in by_class(root, "text", "cell-text")] == ["1", "3", "5", "7", "9", "11"]
    assert len(by_class(root, "rect", "wrong")) == 1
    thick = by_class(root, "path", "border")[0].get("d")
    assert "M42 " in thick  # the block line after column 2 (x = pad 2 + 2 * 20) is thick
    with pytest.raises(ValueError):
        render.grid_svg(range(5), rows=2, cols=3)


def test_titles_and_texts_are_escaped():
    nasty = 'a <b> & "c" \'d\' \x01'
    root = parse(render.grid_svg([1, 2], rows=1, cols=2, text=[nasty, "<&>"], title=nasty))
    assert by_class(root, "text", "title")[0].text == 'a <b> & "c" \'d\' '
    assert [t.text for t in by_class(root, "text", "cell-text")] == ['a <b> & "c" \'d\' ', "<&>"]
    parse(render.grid_svg([1], rows=1, cols=1, fill=['x" onload="evil']))  # attribute values quoted too
    x = np.full(36, 2)
    parse(sudoku.render_sudoku(x, x, x, box_rows=2, box_cols=3, title="<&>"))


def test_sudoku_panels_givens_and_wrong_cells(sudoku_sample):
    inputs, labels = sudoku_sample
    preds = labels.copy()
    bad = [0, 7, 20]
    preds[bad] = (labels[bad] - 2 + 1) % 6 + 2  # another digit
    preds[30] = 1  # a blank prediction is wrong too
    root = parse(sudoku.render_sudoku(inputs, labels, preds, box_rows=2, box_cols=3))
    ps = panels(root)
    assert len(by_class(root, "rect", "cell")) == 3 * 36
    assert all(len(by_class(p, "rect", "cell")) == 36 for p in ps)
    assert marked_cells(ps[2]) == sorted(bad + [30])
    assert not by_class(ps[0], "rect", "wrong") and not by_class(ps[1], "rect", "wrong")
    assert caption(root) == "exact: no, 4 of 36 cells wrong"
    givens = [str(t - 1) for t in inputs if t >= 2]
    assert sorted(t.text for t in by_class(ps[0], "text", "cell-text")) == sorted(givens)
    assert fills(ps[0]).count(render.GIVEN_FILL) == len(givens)
    assert len(by_class(ps[1], "text", "cell-text")) == 36  # the target is full
    assert len(by_class(ps[2], "text", "cell-text")) == 35  # the blank prediction is empty

    root = parse(sudoku.render_sudoku(inputs, labels, labels, box_rows=2, box_cols=3))
    assert caption(root) == "exact: yes, 0 of 36 cells wrong" and not by_class(root, "rect", "wrong")


def test_sudoku_ignore_labels_are_not_marked(sudoku_sample):
    inputs, labels = sudoku_sample
    labels = labels.copy()
    labels[:6] = IGNORE
    preds = np.where(labels == IGNORE, 3, labels)
    preds[10] = 1
    root = parse(sudoku.render_sudoku(inputs, labels, preds, box_rows=2, box_cols=3))
    ps = panels(root)
    assert marked_cells(ps[2]) == [10]
    assert caption(root) == "exact: no, 1 of 30 cells wrong"
    assert fills(ps[1])[:6] == [render.NEUTRAL] * 6


def test_maze_colours_and_wrong_cells(maze_sample):
    inputs, labels = maze_sample
    path = np.flatnonzero(labels == mazes.PATH)
    open_ = np.flatnonzero(labels == mazes.OPEN)
    preds = labels.copy()
    preds[path[0]] = mazes.OPEN  # a missed path cell
    preds[open_[:2]] = mazes.PATH  # two spurious ones
    root = parse(mazes.render_maze(inputs, labels, preds, size=9))
    ps = panels(root)
    assert all(len(by_class(p, "rect", "cell")) == 81 for p in ps)
    for p in ps:
        f = fills(p)
        assert f.count(mazes.FILL[mazes.START]) == 1 and f.count(mazes.FILL[mazes.GOAL]) == 1
        assert f.count(mazes.FILL[mazes.WALL]) == int((inputs == mazes.WALL).sum())
        assert sorted(t.text for t in by_class(p, "text", "cell-text")) == ["G", "S"]
    assert fills(ps[1]).count(mazes.FILL[mazes.PATH]) == len(path)
    assert marked_cells(ps[2]) == sorted([int(path[0])] + open_[:2].tolist())
    assert caption(root) == "exact: no, 3 of 81 cells wrong"

    ignored = np.where(labels == mazes.WALL, IGNORE, labels)  # walls unsupervised
    preds = np.where(labels == mazes.WALL, mazes.OPEN, labels)  # wrong only where ignored
    root = parse(mazes.render_maze(inputs, ignored, preds, size=9))
    ps = panels(root)
    assert fills(ps[1]).count(render.NEUTRAL) == int((labels == mazes.WALL).sum())
    assert not by_class(root, "rect", "wrong")
    assert caption(root) == f"exact: yes, 0 of {int((labels != mazes.WALL).sum())} cells wrong"


def test_parity_right_and_wrong():
    task = build_task(ParityConfig(length=10, n_train=8, n_test=4))
    x, y = task.test.inputs[0], task.test.labels[0]
    assert (y[1:] == IGNORE).all() and y[0] in (parity.EVEN, parity.ODD)
    plus, minus = int((x == parity.PLUS).sum()), int((x == parity.MINUS).sum())
    name = {parity.EVEN: "even", parity.ODD: "odd"}
    target = name[int(y[0])]
    assert target == ("odd" if plus % 2 else "even")

    preds = np.zeros_like(y)  # whatever the model says at unsupervised positions is ignored
    preds[0] = y[0]
    root = parse(parity.render_parity(x, y, preds))
    ps = panels(root)
    assert [len(by_class(p, "rect", "cell")) for p in ps] == [10, 1, 1]
    assert fills(ps[0]).count(parity.FILL[parity.PLUS]) == plus
    assert fills(ps[0]).count(parity.FILL[parity.MINUS]) == minus
    assert [t.text for t in by_class(ps[1], "text", "cell-text")] == [target]
    assert not by_class(root, "rect", "wrong")
    assert caption(root).startswith(f"exact: yes, parity right (target {target}, predicted {target});")
    assert caption(root).endswith(f"{plus + minus} non-zeros, {plus} of them +1")

    preds[0] = parity.EVEN + parity.ODD - y[0]
    other = name[int(preds[0])]
    root = parse(parity.render_parity(x, y, preds))
    ps = panels(root)
    assert len(by_class(ps[2], "rect", "wrong")) == 1 and not by_class(ps[1], "rect", "wrong")
    assert [t.text for t in by_class(ps[2], "text", "cell-text")] == [other]
    assert caption(root).startswith(f"exact: no, parity wrong (target {target}, predicted {other});")


def test_mismatched_lengths_raise(sudoku_sample):
    inputs, labels = sudoku_sample
    with pytest.raises(ValueError):
        sudoku.render_sudoku(inputs, labels, labels[:-1], box_rows=2, box_cols=3)
    with pytest.raises(ValueError):
        sudoku.render_sudoku(inputs, labels, labels, box_rows=3, box_cols=3)
    with pytest.raises(ValueError):
        parity.render_parity([1, 2], [IGNORE, IGNORE], [4, 4])


def test_samples_html_embeds_svgs_inline(sudoku_sample, maze_sample):
    svgs = [sudoku.render_sudoku(*sudoku_sample, sudoku_sample[1], box_rows=2, box_cols=3),
            mazes.render_maze(*maze_sample, maze_sample[1], size=9)]
    page = render.samples_html(svgs, title="samples <&>")
    assert page.startswith("<!DOCTYPE html>") and all(s in page for s in svgs)
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")  # no network
    root = ET.fromstring(page.split("\n", 1)[1])  # well-formed XML after the doctype
    assert root.find("head/title").text == "samples <&>"
    assert len(root.findall(f"body/figure/{NS}svg")) == 2


def test_every_task_draws_its_samples(sudoku_sample):
    """Every registered task owns a renderer; built tasks carry it."""
    from ponder.core.task import TASKS
    from ponder.tasks.arc.task import ArcConfig
    from ponder.tasks.lm.task import LMTaskConfig
    from ponder.tasks.mazes.task import MazeConfig
    from ponder.tasks.sudoku.task import SudokuConfig

    configs = {"sudoku": SudokuConfig(box_rows=2, box_cols=2, n_train=4, n_test=2, min_givens=6, max_givens=8),
               "maze": MazeConfig(size=5, n_train=4, n_test=2), "parity": ParityConfig(length=6, n_train=8, n_test=4),
               "arc": ArcConfig(dataset="arc1", max_side=10, views=2, seed=0),
               "lm": LMTaskConfig(corpus=str(Path(__file__)), max_files=0, vocab_size=300, seq_len=16)}
    assert set(configs) == set(TASKS.names()), "add a small config of the new task here"
    for name, cfg in configs.items():
        task = build_task(cfg)
        x, y = task.test.inputs[0], task.test.labels[0]
        parse(task.render(x, y, np.where(y == IGNORE, 0, y)))
