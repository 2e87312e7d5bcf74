"""The default preset end to end (what `make demo` runs): wall time and the results table."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

from benchmarks.common import ROOT, write_fragment
from ponder.presets import get_config
from ponder.report import format_report
from ponder.run import train_run


def main() -> None:
    cfg = get_config("demo")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        report = train_run(cfg, Path(tmp) / "run")  # includes data generation (cold cache) and final eval
        wall = time.perf_counter() - t0
    h = report["held_out"]
    md = ["## Default preset `demo` (`make demo`)", "",
          f"Wall time of the whole run (data generation, {cfg.train.steps} training steps, final evaluation): "
          f"**{wall / 60:.1f} min**. Held-out exact accuracy with adaptive halting **{100 * h['exact']:.1f}%** "
          f"using {h['mean_steps']:.2f} of at most {h['max_steps']} steps.", "",
          format_report(report).split("\n", 2)[2]]
    write_fragment("demo", "\n".join(md), {"wall_seconds": wall, "report": {k: v for k, v in report.items()}})
    readme = ROOT / "README.md"
    text = readme.read_text()
    start, end = "<!-- demo-results -->", "<!-- /demo-results -->"
    if start in text and end in text:
        table = format_report(report).split("\n", 2)[2].split("\n\n| step budget")[0]
        block = f"{start}\n{table.strip()}\n\n(`make bench`, {wall / 60:.1f} min wall on a 2-core CPU)\n{end}"
        text = text[:text.index(start)] + block + text[text.index(end) + len(end):]
        readme.write_text(text)


if __name__ == "__main__":
    main()
