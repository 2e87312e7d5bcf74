"""Hard data: how fast the offline hard generators run and how hard their puzzles are, beside
Sudoku-Extreme's published figures; and (--train) the CPU hard-Sudoku preset after 30 minutes
beside the baselines and beside the same model on the easy generator (the sudoku9 section).

    python -m benchmarks.bench_hard_data [--puzzles N] [--mazes N] [--source FOLDER]
    python -m benchmarks.bench_hard_data --train [--minutes M] [--easy] [--override=--task.n_train=200 ...]

--source FOLDER rates a sample of Sudoku-Extreme's test puzzles (the user's files) with the same
counter, the only like-for-like comparison; without it the published mean (22 backtracks of the
tdoku solver, whose propagation is stronger than ours) is shown for orientation. --easy trains
sudoku9 for the same time too, instead of citing the sudoku9 section. Each part keeps the
other's figures in benchmarks/results/hard_data.json.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from benchmarks.common import RESULTS, ROOT, write_fragment
from ponder.presets import get_config
from ponder.runs.config import apply_overrides
from ponder.runs.run import train_run
from ponder.tasks import build_task
from ponder.tasks.common.published import read_rows, resolve
from ponder.tasks.mazes.task import generate_maze
from ponder.tasks.sudoku.hard import minimal_puzzle
from ponder.tasks.sudoku.published import SUDOKU_EXTREME
from ponder.tasks.sudoku.search import search_stats
from ponder.tasks.sudoku.task import generate_puzzle

NAME = "hard_data"
PUBLISHED_MEAN_BACKTRACKS = 22  # Sudoku-Extreme, HRM paper (backtracks of the tdoku solver)
TARGETS = (1, 3, 5, 10, 22)
THREADS = int(os.environ.get("PONDER_BENCH_THREADS", "1"))  # as bench_sudoku9, so the two compare


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--puzzles", type=int, default=400, help="minimal 9x9 puzzles to generate and rate")
    ap.add_argument("--mazes", type=int, default=200, help="hard 30x30 mazes to generate")
    ap.add_argument("--source", help="a folder with Sudoku-Extreme's test.csv (or 'hf') to rate beside ours")
    ap.add_argument("--train", action="store_true", help="train the sudoku-hard-cpu preset instead")
    ap.add_argument("--minutes", type=float, default=float(os.environ.get("PONDER_BENCH_MINUTES", "30")))
    ap.add_argument("--easy", action="store_true", help="with --train: also train sudoku9 for the same time")
    ap.add_argument("--override", action="append", default=[], metavar="--SECTION.KEY=VALUE",
                    help="with --train: an extra override for every run, as --override=--task.n_train=200 (repeatable)")
    ap.add_argument("--out", default=NAME, help="result fragment name (default hard_data)")
    ap.add_argument("--from-runs", nargs=2, metavar=("HARD_RUN", "EASY_RUN"),
                    help="rebuild the training part from two finished run directories (sudoku-hard-cpu, sudoku9)")
    args = ap.parse_args()
    for n, what in ((args.puzzles, "--puzzles"), (args.mazes, "--mazes")):
        if n < 1:
            ap.error(f"{what} must be >= 1")
    if args.minutes <= 0:
        ap.error("--minutes must be > 0")
    path = RESULTS / f"{args.out}.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data.pop("measured", None), data.pop("machine", None)
    if args.from_runs:
        data["training"] = from_runs(*map(Path, args.from_runs), minutes=args.minutes)
    elif args.train:
        data["training"] = training(args.minutes, args.easy, args.override)
    else:
        data["generation"] = generation(args.puzzles, args.mazes, args.source)
    write_fragment(args.out, render(data), data)


# ----------------------------------------------------------------------------- generation


def summary(values: list[float]) -> dict:
    v = np.asarray(values, dtype=float)
    return {"n": int(v.size), "mean": float(v.mean()), "median": float(np.median(v)),
            "p90": float(np.percentile(v, 90)), "p99": float(np.percentile(v, 99)), "max": float(v.max()),
            "share_at_least": {str(t): float((v >= t).mean()) for t in TARGETS}}


def generation(n_puzzles: int, n_mazes: int, source: str | None) -> dict:
    rng = np.random.default_rng(0)
    backtracks, givens = [], []
    t0 = time.perf_counter()
    for _ in range(n_puzzles):
        puzzle, _ = minimal_puzzle(3, 3, rng)
        backtracks.append(search_stats(puzzle).backtracks)
        givens.append(int((puzzle > 0).sum()))
    minimal_s = time.perf_counter() - t0
    easy = []
    t0 = time.perf_counter()
    while len(easy) < 100:  # the sudoku9 preset's puzzles (28-36 givens), for contrast
        made = generate_puzzle(3, 3, rng, 28, 36)
        if made is not None:
            easy.append(search_stats(made[0]).backtracks)
    easy_s = time.perf_counter() - t0
    out = {"minimal": {"rate": n_puzzles / minimal_s, "seconds": minimal_s, "backtracks": summary(backtracks),
                       "givens": summary(givens)},
           "easy": {"rate": len(easy) / easy_s, "backtracks": summary(easy)},
           "published_mean": PUBLISHED_MEAN_BACKTRACKS}
    if source:
        rows = read_rows(resolve(source, SUDOKU_EXTREME) / "test.csv", SUDOKU_EXTREME, keep=n_puzzles, seed=0)
        grids = np.where(rows.questions == 1, 0, rows.questions.astype(np.int64) - 1).reshape(-1, 9, 9)
        out["sudoku_extreme"] = {"backtracks": summary([search_stats(g).backtracks for g in grids]),
                                 "rating": summary(rows.ratings.tolist()),
                                 "givens": summary((grids > 0).sum((1, 2)).tolist())}
    lengths, tries = [], 0
    t0 = time.perf_counter()
    while len(lengths) < n_mazes:
        tries += 1
        made = generate_maze(29, 0.05, 111, rng)
        if made is not None:
            lengths.append(made[2])
    maze_s = time.perf_counter() - t0
    out["maze"] = {"rate": n_mazes / maze_s, "accepted": n_mazes / tries, "path_len": summary(lengths)}
    out["load"] = list(os.getloadavg())
    return out


# ----------------------------------------------------------------------------- training


def training(minutes: float, easy: bool, overrides: list[str]) -> dict:
    out = {"minutes": minutes, "threads": THREADS, "overrides": overrides}
    for preset in ("sudoku-hard-cpu", "sudoku9") if easy else ("sudoku-hard-cpu",):
        cfg = apply_overrides(get_config(preset), [f"--train.max_minutes={minutes}", "--train.steps=1000000",
                                                   "--train.progress=false", f"--train.threads={THREADS}", *overrides])
        t0 = time.perf_counter()
        build_task(cfg.task)  # generated (or read from the cache) before the training clock starts
        data_s = time.perf_counter() - t0
        run_dir = ROOT / "runs" / f"bench-{preset}-{time.strftime('%Y%m%d-%H%M%S')}"
        t0 = time.perf_counter()
        report = train_run(cfg, run_dir)
        steps = max(int(p.name.split("-")[1]) for p in (run_dir / "checkpoints").iterdir() if p.name.startswith("step-"))
        out[preset] = {"report": report, "steps": steps, "wall_seconds": time.perf_counter() - t0,
                       "data_seconds": data_s, "run_dir": run_dir.name, "load": list(os.getloadavg()),
                       "task": {k: getattr(cfg.task, k) for k in ("generator", "min_backtracks", "n_train", "n_test",
                                                                  "min_givens", "max_givens")}}
    if not easy:
        path = RESULTS / "sudoku9.json"
        if path.exists():
            s9 = json.loads(path.read_text())
            out["sudoku9"] = {"report": s9["report"], "steps": s9.get("steps"), "cited": s9.get("measured"),
                              "minutes": s9.get("minutes"), "threads": s9.get("threads")}
    return out


def from_runs(hard: Path, easy: Path, *, minutes: float) -> dict:
    """The training part from finished run directories (their eval/report.json, checkpoints and
    config); what the runs did not record (machine load, data time) is left out."""
    out: dict = {"minutes": minutes, "overrides": []}
    for preset, run in (("sudoku-hard-cpu", hard), ("sudoku9", easy)):
        cfg = json.loads((run / "config.json").read_text())
        steps = max(int(p.name.split("-")[1]) for p in (run / "checkpoints").iterdir() if p.name.startswith("step-"))
        out["threads"] = cfg["train"]["threads"]
        out[preset] = {"report": json.loads((run / "eval" / "report.json").read_text()), "steps": steps,
                       "run_dir": run.name, "load": None, "data_seconds": None,
                       "task": {k: cfg["task"].get(k) for k in ("generator", "min_backtracks", "n_train", "n_test",
                                                                "min_givens", "max_givens")}}
    return out


# ----------------------------------------------------------------------------- the section


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def render(data: dict) -> str:
    md = ["## Hard data: offline hard puzzles and the hard CPU presets", ""]
    g = data.get("generation")
    if g:
        m, e = g["minimal"], g["easy"]
        cols = ["mean", "median", "p90", "p99", "max"] + [f">= {t}" for t in TARGETS]

        def row(name: str, s: dict) -> str:
            vals = [f"{s[k]:.1f}" for k in ("mean", "median", "p90", "p99", "max")]
            return f"| {name} | {s['n']} | " + " | ".join(vals + [_pct(s["share_at_least"][str(t)]) for t in TARGETS]) + " |"

        md += [f"Minimal 9x9 puzzles (`--task.generator=minimal`): {m['rate']:.1f} per second on one core"
               + (f", load average {g['load'][0]:.1f} at the end " if g.get("load") else " ")
               + f"({m['backtracks']['n']} made in {m['seconds']:.0f} s; {m['givens']['mean']:.1f} givens on average, "
               f"{m['givens']['median']:.0f} median). Backtracks of a complete search with naked and hidden singles "
               "(`sudoku_solver.search_stats`); a target keeps the share shown, so its rate is the rate above times "
               "that share.", "",
               "| puzzles | n | " + " | ".join(cols) + " |", "|---" * (len(cols) + 2) + "|",
               row("minimal (ours)", m["backtracks"]),
               row("sudoku9 preset (28-36 givens)", e["backtracks"])]
        if "sudoku_extreme" in g:
            md.append(row("Sudoku-Extreme test sample, our counter", g["sudoku_extreme"]["backtracks"]))
            md += ["", f"Sudoku-Extreme sample: its own rating column averages "
                       f"{g['sudoku_extreme']['rating']['mean']:.1f}; {g['sudoku_extreme']['givens']['mean']:.1f} givens."]
        md += ["", f"Published: Sudoku-Extreme's puzzles average {g['published_mean']} backtracks of the tdoku solver "
                   "(HRM paper). tdoku propagates more than singles, so the two counters differ on the same puzzle: the "
                   "published mean orients, it does not compare like for like (run with `--source FOLDER` to rate "
                   "Sudoku-Extreme's own puzzles with our counter).", ""]
        mz = g["maze"]
        md += [f"Hard 30x30 mazes (`--task.size=29 --task.canvas=30 --task.min_path_len=111 --task.loop_fraction=0.05`): "
               f"{mz['rate']:.0f} per second, {_pct(mz['accepted'])} of tries accepted; shortest path "
               f"{mz['path_len']['mean']:.1f} steps on average (median {mz['path_len']['median']:.0f}, "
               f"max {mz['path_len']['max']:.0f}); Maze-Hard's rule is a shortest path longer than 110.", ""]
    t = data.get("training")
    if t:
        md += training_md(t)
    return "\n".join(md)


def training_md(t: dict) -> list[str]:
    hard = t["sudoku-hard-cpu"]
    h, m = hard["report"]["held_out"], hard["report"]["held_out"]["max_steps"]
    task = hard["task"]
    md = [f"### `sudoku-hard-cpu` after {t['minutes']:g} minutes of CPU training", "",
          f"Minimal 9x9 puzzles needing >= {task['min_backtracks']} backtracks, {task['n_train']} training and "
          f"{h['n']} held-out; sudoku9's model and training; {hard['steps']} optimizer steps on {t['threads']} "
          f"thread(s)" + (f" (load average at the end {hard['load'][0]:.1f}); the data took "
                          f"{hard['data_seconds']:.0f} s to make or load before training"
                          if hard.get("load") else " (the machine's load was not recorded; other jobs shared it "
                          "during the hard run and had finished during the easy one, so the two runs had unequal "
                          "machines: compare steps trained, not minutes)")
          + f". Overrides: {' '.join(t['overrides']) or 'none'}.", "",
          "| model / data | exact, always M steps | exact, adaptive halting | mean steps | cell, adaptive | steps trained |",
          "|---|---|---|---|---|---|",
          f"| sudoku-hard-cpu (minimal, >= {task['min_backtracks']} backtracks) | {_pct(h['exact_by_budget'][-1])} | "
          f"{_pct(h['exact'])} | {h['mean_steps']:.2f} of {m} | {_pct(h['cell'])} | {hard['steps']} |"]
    easy = t.get("sudoku9")
    if easy:
        e = easy["report"]["held_out"]
        src = (f"cited from the sudoku9 section, measured {easy['cited']} on {easy.get('threads')} thread(s)"
               if easy.get("cited") else "trained in this run")
        md.append(f"| sudoku9 (28-36 givens; {src}) | {_pct(e['exact_by_budget'][-1])} | {_pct(e['exact'])} | "
                  f"{e['mean_steps']:.2f} of {e['max_steps']} | {_pct(e['cell'])} | {easy.get('steps')} |")
    for name, b in hard["report"]["baselines"].items():
        md.append(f"| baseline: {name} (hard) | {_pct(b.get('exact'))} | | | {_pct(b.get('cell'))} | |")
    return md + [""]


if __name__ == "__main__":
    main()
