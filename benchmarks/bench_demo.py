"""The default preset end to end, as a user runs it: `make demo` from a cold data cache (data
generation, training until the held-out target, final evaluation; the install step is done
before timing). Reports the wall time, the training time to the target, the results table, the
precision the run resolved (the preset's `auto`) with its reason, and the CPU with its native bf16
flags and the same-run fp32 and bf16 matmul rates (before and after) that the times hold for."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import ROOT, cpu_summary, machine, matmul_gflops, write_fragment
from ponder.presets import get_config
from ponder.runs.report import format_report
from ponder.training.in_training import evaluation_cost, target_reached
from ponder.training.host import auto_threads
from ponder.training.precision import cpu_flags, native_bf16

START, END = "<!-- {0} -->", "<!-- /{0} -->"


def replace_block(text: str, name: str, body: str) -> str:
    """`text` with the marked block `name` replaced by `body` (the markers are kept)."""
    start, end = START.format(name), END.format(name)
    if start not in text or end not in text:
        raise SystemExit(f"bench_demo: README.md has no {start} ... {end} block")
    return text[:text.index(start)] + f"{start}\n{body.strip()}\n{end}" + text[text.index(end) + len(end):]


def main() -> None:
    cfg = get_config("demo")
    threads = auto_threads()
    rate_before = matmul_gflops(threads)
    bf16 = native_bf16(cpu_flags()) or []
    bf16_before = matmul_gflops(threads, dtype=torch.bfloat16) if bf16 else None
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, PONDER_CACHE_DIR=str(Path(tmp) / "cache"))  # cold cache, as on a fresh machine
        t0 = time.perf_counter()
        done = subprocess.run(["make", "demo"], cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if done.returncode != 0:
            raise SystemExit(f"bench_demo: make demo failed: {done.stderr[-800:]}")
        run_dir = ROOT / re.search(r"run directory: (\S+)", done.stderr).group(1)
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        report = json.loads((run_dir / "eval" / "report.json").read_text())
        precision = json.loads((run_dir / "setup.json").read_text())[0]["precision"]  # resolved, with its reason
        shutil.rmtree(run_dir)
    rate_after = matmul_gflops(threads)
    rate = (rate_before + rate_after) / 2
    bf16_rate = (bf16_before + matmul_gflops(threads, dtype=torch.bfloat16)) / 2 if bf16 else None
    cpu = cpu_summary()["cpu"]
    flags = f"native bf16: {', '.join(bf16)}" if bf16 else "no native bf16"
    rates = f"fp32 1024x1024 matmul ran at {rate:.0f}" + (f" and bf16 at {bf16_rate:.0f}" if bf16_rate else "")
    evals = [r for r in records if r["kind"] == "eval"]
    hit = next((r for r in evals if target_reached(r, "exact", cfg)), None)
    cost = evaluation_cost(records)
    h = report["held_out"]
    reached = (f"reached {100 * cfg.train.target:.0f}% held-out exact at step {hit['step']} after "
               f"**{hit['time_since_start'] / 60:.1f} min** of training" if hit else
               f"did NOT reach {100 * cfg.train.target:.0f}% held-out exact within {cfg.train.steps} steps "
               f"(best {100 * max(r['test_exact'] for r in evals):.1f}%)")
    summary = (f"`make demo` {reached}; whole command **{wall / 60:.1f} min** wall (cold data cache: data generation, "
               f"training, final evaluation; installation not included), in {precision['value']} (precision auto: "
               f"{precision['reason']}), on {threads} thread(s) of a {os.cpu_count()}-core {cpu} ({flags}) whose "
               f"{rates} GFLOP/s in the same run. "
               f"Times scale roughly inversely with that rate: measure yours with `make bench`.")
    table = format_report(report).split("\n", 2)[2]
    # the report's "Evaluated:" line names the run's checkpoint, a folder this benchmark deletes
    table = "\n".join(line for line in table.split("\n") if not line.startswith("Evaluated: ")).lstrip("\n")
    md = ["## Default preset `demo` (`make demo`)", "",
          summary + f" Load average at the start {load:.1f}; matmul rate {rate_before:.0f} before and "
                    f"{rate_after:.0f} GFLOP/s after.", "",
          f"Preset: batch {cfg.train.batch_size}, LR {cfg.train.lr:g}, evaluation every {cfg.train.eval_every} "
          f"steps on a fixed subset of {cfg.eval.during_training_samples or h['n']} of the {h['n']} held-out "
          f"puzzles; when the subset reaches {100 * cfg.train.target:.0f}% exact the whole split is scored, and "
          f"only its score stops the run (`train.target`); at most {cfg.train.steps} steps. Evaluation inside "
          f"training took {_cost(cost)}.", "",
          "| step | held-out exact (subset) | whole split | mean steps | evaluation | training time |",
          "|---|---|---|---|---|---|",
          *[f"| {r['step']} | {100 * r['test_exact']:.1f}% | "
            f"{_percent(r.get('full_test_exact'))} | "
            f"{r['test_mean_steps']:.2f} | {r.get('time_eval_sec', float('nan')):.1f} s | "
            f"{r['time_since_start'] / 60:.1f} min |" for r in evals], "",
          table]
    write_fragment("demo", "\n".join(md), {"evaluation_cost": cost, "wall_seconds": wall, "target_step": hit and hit["step"],
                                           "target_seconds": hit and hit["time_since_start"],
                                           "matmul_gflops": [rate_before, rate_after], "threads": threads,
                                           "bf16_matmul_gflops": bf16_rate, "precision": precision,
                                           "evals": evals, "report": report})
    readme = ROOT / "README.md"
    text = replace_block(readme.read_text(), "demo-time", summary)
    block = table.split("\n\n| step budget")[0]
    text = replace_block(text, "demo-results", f"{block.strip()}\n\n(`make bench`; measured on: {machine()})")
    readme.write_text(text)
    torch.set_num_threads(threads)


def _percent(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f}%"


def _cost(cost: dict | None) -> str:
    if not cost or cost["share"] is None:
        return "an unmeasured time (no timed evaluations)"
    return (f"{cost['seconds']:.1f} s over {cost['evaluations']} evaluations, {100 * cost['share']:.1f}% of the "
            f"training loop's {cost['loop_seconds']:.0f} s")


if __name__ == "__main__":
    main()
