"""Sudoku-Extreme's published CSV format (HRM's `sapientinc/sudoku-extreme`, used by TRM): the
characters of each field and the rules every row must keep, for the readers of
ponder.tasks.common.published."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ponder.core.errors import PonderError
from ponder.tasks.common.published import Format

SUDOKU_BLANK = 1  # ponder's tokens: PAD 0, blank 1, digit d -> d + 1


def _check_sudoku(path: Path, lines: np.ndarray, q: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Answers keep the givens and are valid 9x9 grids; difficulty = number of blanks."""
    given = q != SUDOKU_BLANK
    clash = given & (q != a)
    for i in np.flatnonzero(clash.any(1))[:1]:
        j = int(np.flatnonzero(clash[i])[0])
        raise PonderError(f"{path} line {lines[i]}: answer has {a[i, j] - 1} at row {j // 9 + 1} column "
                          f"{j % 9 + 1} where the question gives {q[i, j] - 1}")
    grid = a.reshape(-1, 9, 9).astype(np.int64) - 1
    boxes = grid.reshape(-1, 3, 3, 3, 3).transpose(0, 1, 3, 2, 4).reshape(-1, 9, 9)
    for unit, arr in (("row", grid), ("column", grid.transpose(0, 2, 1)), ("box", boxes)):
        counts = np.zeros((len(arr), 9, 10), dtype=np.int64)
        np.put_along_axis(counts, arr, 1, axis=2)  # (k, unit, digit): present?
        bad = counts[:, :, 1:].sum(2) != 9
        for i in np.flatnonzero(bad.any(1))[:1]:
            u = int(np.flatnonzero(bad[i])[0])
            raise PonderError(f"{path} line {lines[i]}: answer breaks the Sudoku rules: {unit} {u + 1} "
                              f"does not hold each digit 1-9 once")
    return (~given).sum(1)


SUDOKU_EXTREME = Format(
    name="Sudoku-Extreme", repo="sapientinc/sudoku-extreme", side=9,
    question={".": SUDOKU_BLANK, **{str(d): d + 1 for d in range(1, 10)}},
    answer={str(d): d + 1 for d in range(1, 10)},
    check=_check_sudoku,
    offline="--task.source=none --task.generator=minimal --task.min_backtracks=10 --task.n_test=1000",
)

