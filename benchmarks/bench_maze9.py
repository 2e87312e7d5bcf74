"""The maze9 preset end to end: accuracy with adaptive halting vs always M steps, and the
Q-halt threshold trade-off on the same weights."""
from __future__ import annotations

import sys
import time
from pathlib import Path

from benchmarks.common import ROOT, threshold_table, write_fragment
from ponder.presets import get_config
from ponder.runs.config import apply_overrides
from ponder.runs.report import evaluate_run, format_report

THREADS = 2


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--from-run":  # report on a finished maze9 run
        run_dir, wall = Path(sys.argv[2]), None
        report = _evaluate(run_dir)
    else:
        cfg = apply_overrides(get_config("maze9"), ["--train.progress=false", f"--train.threads={THREADS}"])
        run_dir = ROOT / "runs" / f"bench-maze9-{time.strftime('%Y%m%d-%H%M%S')}"
        from ponder.runs.run import train_run

        t0 = time.perf_counter()
        report = train_run(cfg, run_dir)
        wall = time.perf_counter() - t0
    h = report["held_out"]
    table, rows = threshold_table(run_dir, THREADS)
    timing = f"whole run {wall / 60:.1f} min on {THREADS} threads" if wall else f"run `{run_dir.name}`"
    md = ["## 9x9 mazes (`maze9` preset)", "",
          f"Shortest-path labels, {h['n']} held-out mazes; {timing}. The copy-input baseline's exact score "
          "counts mazes whose start and goal are adjacent (no path cells to mark).", "",
          format_report(report).split("\n", 2)[2], "", table]
    write_fragment("maze9", "\n".join(md), {"report": report, "thresholds": rows, "wall_seconds": wall})


def _evaluate(run_dir: Path) -> dict:
    import torch

    from ponder.runs.trained import load_trained

    model, task, cfg, _ = load_trained(run_dir)
    torch.set_num_threads(THREADS)
    return evaluate_run(model, task, cfg, run_dir, device=next(model.parameters()).device, quiet=True)  # the run's


if __name__ == "__main__":
    main()
