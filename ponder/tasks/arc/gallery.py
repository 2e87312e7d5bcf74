"""A PNG gallery of solved and failed ARC tasks in the ARC palette: per task (first test input) its
demonstrations, the test input, the target and both attempts."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ponder.core.files import save_figure
from ponder.tasks.arc.data import ArcTask
from ponder.tasks.arc.scoring import ScoreReport
from ponder.tasks.arc.task import ARC_PALETTE
from ponder.tasks.arc.vote import Candidate

__all__ = ["draw_gallery"]

MAX_DEMOS_DRAWN = 3
CELL_PX = 8
_RGB = np.array([[int(c[i:i + 2], 16) for i in (1, 3, 5)] for c in ARC_PALETTE], dtype=np.uint8)


def grid_image(grid: np.ndarray, cell: int | None = None) -> np.ndarray:
    """An ARC grid as an RGB image in the ARC palette, each cell `cell` pixels (default: about 60
    pixels a side in all) with a one-pixel grey border."""
    g = np.asarray(grid)
    cell = cell or max(CELL_PX, 60 // max(g.shape))
    img = np.repeat(np.repeat(_RGB[g], cell, 0), cell, 1)
    img[::cell, :] = img[:, ::cell] = 85
    img = np.pad(img, ((0, 1), (0, 1), (0, 0)), constant_values=85)
    return img


def _pick(tasks: tuple[ArcTask, ...], report: ScoreReport, per_group: int) -> list[tuple[ArcTask, bool]]:
    solved = {t.task for t in report.tasks if t.solved(2) == t.n_tests}
    ok = [t for t in tasks if t.id in solved][:per_group]
    bad = [t for t in tasks if t.id not in solved][:per_group]
    return [(t, True) for t in ok] + [(t, False) for t in bad]


def draw_gallery(tasks: tuple[ArcTask, ...], report: ScoreReport, voted: dict[tuple[str, int], list[Candidate]],
                 path: Path, *, per_group: int = 6, title: str = "") -> Path:
    """Up to `per_group` solved and `per_group` failed tasks, one row each, to `path` (PNG)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _pick(tasks, report, per_group)
    n_demo = min(MAX_DEMOS_DRAWN, max((len(t.train) for t, _ in rows), default=1))
    cols = 2 * n_demo + 4
    fig, axes = plt.subplots(max(1, len(rows)), cols, figsize=(1.3 * cols, 1.45 * max(1, len(rows)) + 0.8),
                             squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for r, (task, solved) in enumerate(rows):
        cands = voted.get((task.id, 0), [])
        panels = []
        for j in range(n_demo):
            pair = task.train[j] if j < len(task.train) else (None, None)
            panels += [(pair[0], f"demo {j + 1} in"), (pair[1], f"demo {j + 1} out")]
        x, y = task.test[0]
        panels += [(x, "test input"), (y, "target")]
        for k in range(2):
            g = cands[k].grid if k < len(cands) else None
            mark = "" if g is None else (" ✓" if g.shape == y.shape and np.array_equal(g, y) else " ✗")
            votes = f" ({cands[k].votes} votes)" if k < len(cands) else " (none)"
            panels.append((g, f"attempt {k + 1}{votes}{mark}"))
        for c, (grid, name) in enumerate(panels):
            ax = axes[r, c]
            if grid is not None:
                ax.imshow(grid_image(grid), interpolation="nearest")
            ax.set_title(name, fontsize=6)
        axes[r, 0].text(-0.15, 0.5, f"{task.id}\n{'SOLVED' if solved else 'failed'}", fontsize=7, rotation=90,
                        ha="right", va="center", transform=axes[r, 0].transAxes,
                        color="#1a7f37" if solved else "#b42318")
    n_ok = sum(s for _, s in rows)
    fig.suptitle(f"{title}\n{n_ok} solved and {len(rows) - n_ok} failed tasks shown (test input 1 of each)",
                 fontsize=8)
    fig.subplots_adjust(left=0.04, right=0.99, bottom=0.02, top=1 - 0.8 / fig.get_figheight(), wspace=0.15,
                        hspace=0.35)
    save_figure(fig, path, "the ARC gallery", dpi=90)
    plt.close(fig)
    return path
