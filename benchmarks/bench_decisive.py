"""The decisive experiment (`ponder diagnose decisive`, 3 seeds, one thread): from the same
starting weights, train a fixed-point model with BPTT through the deployed T steps, with the exact
equilibrium gradient, and with the equilibrium gradient plus the contraction homeostat; which
one drifts toward rho = 1?"""
from __future__ import annotations

import os
import shutil
import time

import torch

from benchmarks.common import RESULTS, ROOT, write_fragment
from ponder.experiments.equilibrium import DecisiveConfig, report_markdown, run_decisive, write_report

THREADS = 1
SEEDS = [0, 1, 2]


def main() -> None:
    torch.set_num_threads(THREADS)
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    result = run_decisive(DecisiveConfig(), SEEDS, progress=False)
    wall = time.perf_counter() - t0
    load1 = os.getloadavg()
    out = ROOT / "runs" / f"bench-decisive-{time.strftime('%Y%m%d-%H%M%S')}"
    paths = write_report(result, out)
    RESULTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(paths["png"], RESULTS / "decisive.png")
    body = report_markdown(result, png_name="benchmarks/results/decisive.png")
    md = ["## The decisive experiment: equilibrium gradient vs BPTT on a fixed-point model", "",
          f"`ponder diagnose decisive --seeds {len(SEEDS)}`: {wall / 60:.1f} min wall on {THREADS} thread "
          f"(load average {load0[0]:.1f} at the start, {load1[0]:.1f} at the end).", "", body]
    write_fragment("decisive", "\n".join(md), {"wall_seconds": wall, "load": [load0, load1], **result})


if __name__ == "__main__":
    main()
