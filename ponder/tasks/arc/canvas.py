"""The canvas encoding of ARC grids (TRM's): a grid is written into a side x side canvas of tokens.

Tokens: PAD = 0 (outside the grid), EOS = 1 (the border just below and just right of the grid,
marking its extent; left out where it would fall outside the canvas, so a grid as large as the
canvas needs none), colour c -> c + 2 (`VOCAB_SIZE` = 12). A grid sits at the canvas's top-left
corner, or at an offset (translation augmentation of training data). `decode` crops at EOS: from
the grid's top-left corner, the run of colour tokens down the first column gives the rows and the
run along the first row the columns; the rectangle must be all colours, else the canvas holds no
valid grid (None). The default side is 30, ARC's largest grid; small-grid presets use less.
"""
from __future__ import annotations

import numpy as np

__all__ = ["PAD", "EOS", "COLOUR0", "VOCAB_SIZE", "encode", "decode", "fits"]

PAD, EOS, COLOUR0 = 0, 1, 2
VOCAB_SIZE = 12


def fits(shape: tuple[int, int], side: int, offset: tuple[int, int] = (0, 0)) -> bool:
    return shape[0] >= 1 and shape[1] >= 1 and offset[0] + shape[0] <= side and offset[1] + shape[1] <= side


def encode(grid: np.ndarray, side: int = 30, offset: tuple[int, int] = (0, 0)) -> np.ndarray:
    """(h, w) colours 0-9 -> (side, side) uint8 canvas with the grid's top-left corner at `offset`."""
    g = np.asarray(grid)
    h, w = g.shape
    r, c = offset
    if not fits((h, w), side, offset):
        raise ValueError(f"a {h}x{w} grid at offset {offset} does not fit a {side}x{side} canvas")
    canvas = np.zeros((side, side), dtype=np.uint8)
    canvas[r:r + h, c:c + w] = g + COLOUR0
    if r + h < side:
        canvas[r + h, c:min(c + w + 1, side)] = EOS
    if c + w < side:
        canvas[r:r + h, c + w] = EOS
    return canvas


def decode(canvas: np.ndarray, origin: tuple[int, int] | None = (0, 0)) -> np.ndarray | None:
    """The grid a canvas holds (crop at EOS), as (h, w) uint8 colours, or None when there is none.

    Args:
        canvas: (side, side) or (side * side,) tokens (any integer dtype; logits' argmax).
        origin: the grid's top-left corner; None finds it as the first row and first column that
            hold a colour (for translated training canvases).
    """
    a = np.asarray(canvas)
    if a.ndim == 1:
        side = int(round(np.sqrt(a.size)))
        if side * side != a.size:
            raise ValueError(f"a flat canvas needs a square number of tokens, got {a.size}")
        a = a.reshape(side, side)
    colour = (a >= COLOUR0) & (a < VOCAB_SIZE)
    if origin is None:
        rows, cols = np.flatnonzero(colour.any(1)), np.flatnonzero(colour.any(0))
        if rows.size == 0:
            return None
        origin = (int(rows[0]), int(cols[0]))
    r, c = origin
    if r >= a.shape[0] or c >= a.shape[1] or not colour[r, c]:
        return None
    h = _run(colour[r:, c])
    w = _run(colour[r, c:])
    if not colour[r:r + h, c:c + w].all():
        return None
    return (a[r:r + h, c:c + w] - COLOUR0).astype(np.uint8)


def _run(flags: np.ndarray) -> int:
    """Length of the leading run of True."""
    stop = np.flatnonzero(~flags)
    return int(stop[0]) if stop.size else int(flags.size)
