"""Pictures of single samples as self-contained SVG strings (no dependencies beyond numpy).

`grid_svg` draws one rows x cols grid of squares; `grid_body` and `panels_svg` are its parts,
for pictures of several grids. The task renderers take ONE sample -- 1-D int token arrays `inputs`, `labels`,
`preds` of the same length n (preds: argmax token ids) -- and draw three panels side by side,
"input", "target" and "prediction", with a caption "exact: yes/no, k of m cells wrong".
A prediction cell is *wrong* when its label is supervised (not IGNORE) and differs from it;
wrong cells get a red outline (`<rect class="wrong">`). Unsupervised label cells are drawn in
a neutral grey and are never marked. `samples_html` wraps several SVGs into one HTML page.

SVG structure (stable, relied on by the tests): every grid square is `<rect class="cell">`,
every cell label `<text class="cell-text">`, each panel a `<g class="panel">` whose first
child is its `<text class="title">`, the caption `<text class="caption">`.

Each task module draws its own samples with these parts (`render_sudoku` in
ponder.tasks.sudoku.task, `render_maze` in ponder.tasks.mazes.task, `render_parity` in ponder.tasks.parity.task).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Optional
from xml.sax.saxutils import escape, quoteattr

import numpy as np

from ponder.core.types import IGNORE

__all__ = ["grid_svg", "grid_body", "panels_svg", "samples_html", "sample_arrays", "wrong_cells", "cells_caption",
           "WRONG", "NEUTRAL", "UNKNOWN", "INK", "SOLVED_INK", "GIVEN_FILL"]

# colours
WRONG = "#d62728"  # outline of wrong cells (and text of wrong digits)
NEUTRAL = "#cfcfcf"  # unsupervised (IGNORE) label cells
UNKNOWN = "#f2b8f2"  # token outside the task's vocabulary
INK, SOLVED_INK = "#111111", "#1f5fbf"
GIVEN_FILL = "#e6e6e6"

_PAD = 2  # margin around a grid so thick outer lines are not clipped
_TITLE_PX = 18  # height of the title band above a grid
_GAP = 16  # space between panels
_CHAR_PX = 7.0  # rough width of one 12-13 px sans-serif character, for sizing text bands

PerCell = Optional[Any]  # None | callable(value) | Mapping[value, x] | sequence of rows*cols items


# ----------------------------------------------------------------------------- generic grid


def _clean(s: Any) -> str:
    """str(s) without characters that XML 1.0 forbids (control characters other than \\t\\n\\r)."""
    return "".join(ch for ch in str(s) if ch >= " " or ch in "\t\n\r")


def _text(s: Any) -> str:
    return escape(_clean(s))


def _attr(s: Any) -> str:
    return quoteattr(_clean(s))


def _num(x: float) -> str:
    return f"{x:.2f}".rstrip("0").rstrip(".")


def _per_cell(spec: PerCell, values: list, default: Any) -> list:
    """Expand a per-cell spec (None, callable, mapping or sequence) to one item per cell."""
    if spec is None:
        out = [default] * len(values)
    elif callable(spec):
        out = [spec(v) for v in values]
    elif isinstance(spec, Mapping):
        out = [spec.get(v, default) for v in values]
    else:
        out = list(np.asarray(spec, dtype=object).ravel()) if isinstance(spec, np.ndarray) else list(spec)
        if len(out) != len(values):
            raise ValueError(f"per-cell sequence has {len(out)} items, the grid has {len(values)} cells")
    return [default if v is None else v for v in out]


def grid_body(
    cells: Any, *, rows: int, cols: int, fill: PerCell = None, text: PerCell = None,
    ink: PerCell = None, marks: PerCell = None, title: Optional[str] = None, cell_px: int = 24,
    borders: Optional[tuple[int, int]] = None,
) -> tuple[str, float, float]:
    """SVG elements of one grid (origin at 0, 0) and its (width, height); see `grid_svg`."""
    values = np.asarray(cells).ravel().tolist()
    if rows < 1 or cols < 1 or len(values) != rows * cols:
        raise ValueError(f"grid of {rows} x {cols} needs {rows * cols} cells, got {len(values)}")
    fills = _per_cell(fill, values, "#ffffff")
    texts = _per_cell(text, values, "")
    inks = _per_cell(ink, values, INK)
    flags = _per_cell(marks, values, False)
    top = _TITLE_PX if title else 0
    x0, y0, s = _PAD, top + _PAD, cell_px
    parts = []
    if title:
        parts.append(f'<text class="title" x="{x0}" y="13" font-size="13">{_text(title)}</text>')
    for i, colour in enumerate(fills):
        r, c = divmod(i, cols)
        parts.append(f'<rect class="cell" x="{x0 + c * s}" y="{y0 + r * s}" width="{s}" height="{s}" fill={_attr(colour)}/>')
    for i, (label, colour) in enumerate(zip(texts, inks)):
        label = _clean(label)
        if not label:
            continue
        r, c = divmod(i, cols)
        size = s * min(0.6, 1.3 / len(label))  # shrink long labels to fit the square
        parts.append(
            f'<text class="cell-text" x="{_num(x0 + (c + 0.5) * s)}" y="{_num(y0 + (r + 0.5) * s)}" '
            f'font-size="{_num(size)}" fill={_attr(colour)} text-anchor="middle" '
            f'dominant-baseline="central">{escape(label)}</text>'
        )
    br, bc = borders if borders else (rows, cols)
    thin, thick = [], [f"M{x0} {y0}h{cols * s}v{rows * s}h{-cols * s}z"]
    for r in range(1, rows):
        (thick if r % br == 0 else thin).append(f"M{x0} {y0 + r * s}h{cols * s}")
    for c in range(1, cols):
        (thick if c % bc == 0 else thin).append(f"M{x0 + c * s} {y0}v{rows * s}")
    if thin:
        parts.append(f'<path class="grid" d="{" ".join(thin)}" stroke="#999999" stroke-width="1" fill="none"/>')
    parts.append(f'<path class="border" d="{" ".join(thick)}" stroke="#222222" stroke-width="2.5" fill="none"/>')
    for i, flag in enumerate(flags):
        if flag:
            r, c = divmod(i, cols)
            parts.append(
                f'<rect class="wrong" x="{x0 + c * s + 1.5}" y="{y0 + r * s + 1.5}" width="{s - 3}" '
                f'height="{s - 3}" fill="none" stroke="{WRONG}" stroke-width="3"/>'
            )
    width = max(2 * _PAD + cols * s, len(title or "") * _CHAR_PX + 2 * _PAD)
    return "\n".join(parts), width, top + 2 * _PAD + rows * s


def _svg(body: str, width: float, height: float) -> str:
    """Wrap elements into a standalone <svg> with a white background."""
    w, h = _num(width), _num(height)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" '
        f'font-family="sans-serif">\n<rect class="background" width="{w}" height="{h}" fill="#ffffff"/>\n'
        f"{body}\n</svg>"
    )


def grid_svg(
    cells: Any, *, rows: int, cols: int, fill: PerCell = None, text: PerCell = None,
    title: Optional[str] = None, cell_px: int = 24, borders: Optional[tuple[int, int]] = None,
    ink: PerCell = None, marks: PerCell = None,
) -> str:
    """One self-contained <svg> of a rows x cols grid of squares.

    Args:
        cells: rows*cols cell values (any shape, row-major); fed to callable/mapping specs.
        fill: per-cell background colour; text: per-cell label; ink: per-cell text colour;
            marks: per-cell bool, True draws a red outline (`<rect class="wrong">`). Each is
            None (white / no text / near-black / no mark), a callable of the cell value, a
            mapping from cell value (missing or None -> the default), or a sequence of rows*cols items.
        title: optional text above the grid (escaped).
        cell_px: side of a square in pixels.
        borders: (block_rows, block_cols): thick lines every block_rows rows and block_cols
            columns (Sudoku boxes); the outer frame is always thick.
    Returns:
        the SVG document as a string (valid XML, with width, height and viewBox).
    """
    body, w, h = grid_body(cells, rows=rows, cols=cols, fill=fill, text=text, ink=ink, marks=marks,
                            title=title, cell_px=cell_px, borders=borders)
    return _svg(body, w, h)


def panels_svg(panels: Sequence[tuple[str, float, float]], caption: str, title: Optional[str] = None) -> str:
    """Grids from `_grid_body` side by side (`<g class="panel">`), an optional title above and
    a caption below."""
    top = _TITLE_PX + 4 if title else 0
    parts, x = [], 0.0
    if title:
        parts.append(f'<text class="title" x="{_PAD}" y="14" font-size="14" font-weight="bold">{_text(title)}</text>')
    for body, w, _ in panels:
        parts.append(f'<g class="panel" transform="translate({_num(x)},{top})">\n{body}\n</g>')
        x += w + _GAP
    grid_h = top + max(h for _, _, h in panels)
    parts.append(f'<text class="caption" x="{_PAD}" y="{_num(grid_h + 16)}" font-size="12">{_text(caption)}</text>')
    width = max(x - _GAP, (len(caption) + 1) * _CHAR_PX, len(title or "") * 8.0 + 2 * _PAD)
    return _svg("\n".join(parts), width, grid_h + 24)


# ----------------------------------------------------------------------------- sample helpers


def sample_arrays(inputs: Any, labels: Any, preds: Any, n: Optional[int] = None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Three 1-D int64 arrays of equal length (n if given), or ValueError."""
    x, y, p = (np.asarray(a).astype(np.int64).ravel() for a in (inputs, labels, preds))
    if not len(x) == len(y) == len(p):
        raise ValueError(f"inputs, labels and preds must have the same length (got {len(x)}, {len(y)}, {len(p)})")
    if n is not None and len(x) != n:
        raise ValueError(f"expected {n} tokens per sample, got {len(x)}")
    return x, y, p


def wrong_cells(labels: np.ndarray, preds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(supervised mask, wrong mask): wrong = supervised and pred != label."""
    sup = labels != IGNORE
    return sup, sup & (preds != labels)


def cells_caption(sup: np.ndarray, wrong: np.ndarray) -> str:
    k = int(wrong.sum())
    return f"exact: {'no' if k else 'yes'}, {k} of {int(sup.sum())} cells wrong"


# ----------------------------------------------------------------------------- HTML


def samples_html(svgs: Sequence[str], title: str) -> str:
    """A minimal self-contained HTML page showing `svgs` inline, one figure each (no network).

    The page is also well-formed XML after its first line (the doctype).
    """
    figures = "\n".join(f'<figure class="sample">\n{svg}\n</figure>' for svg in svgs)
    t = _text(title)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8"/>\n'
        f"<title>{t}</title>\n"
        "<style>body{font-family:sans-serif;margin:1.5em;color:#111}"
        "figure.sample{margin:0 0 1.5em 0}figure.sample svg{max-width:100%;height:auto}</style>\n"
        f"</head>\n<body>\n<h1>{t}</h1>\n{figures}\n</body>\n</html>\n"
    )
