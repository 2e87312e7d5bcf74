"""Parity with PonderNet's own step function: a recurrent cell reading the whole vector each step.

PonderNet (Banino et al. 2021) trains an RNN of 128 units on parity of 64 entries (interpolation:
1-64 non-zeros in training and test) and of 96 entries (extrapolation: train 1-48, test 49-96),
with N = 20 steps, and ACT on the same splits. This script trains the presets `parity64-rnn` and
`parity96-rnn-extrapolation` (their recipe: LayerNorm, a curriculum over the number of
non-zeros, ponder/presets/parity.py) with PonderNet's head and ACT's (at each ponder cost of
ACT_TAUS), SEEDS seeds each, until the held-out target (99% interpolation, 95% extrapolation),
STEPS optimizer steps or MAX_MINUTES per run, JOBS runs at a time with one thread each (two runs
of one thread made more steps per hour than one run of two: BENCHMARKS.md, parity step speed),
and writes the section: held-out exact with adaptive halting per seed, the minutes and steps to
the target, mean steps, Spearman(steps, number of non-zeros), the paper's figures beside them,
the issue's goals checked, and the learning curves (docs/parity_cell.png).

The runs live in OUT (default runs/bench-parity-cell/, one directory per split, head and seed):
running the script again skips the finished runs and resumes the interrupted ones, so it can be
stopped and restarted. `--rewrite` writes the section from the finished runs in OUT without
training; `--from-runs RUN_DIR ...` from the runs named; `--probes RUN_DIR ...` adds runs stopped
before the end (their held-out accuracy at each evaluation). A run of another cell than the
presets' (`--model.cell=gru`) or with other training signs (`--task.train_signs=uniform_plus`),
trained by hand into OUT, gets rows of its own, labelled with the departure; the issue's goals
are checked on the presets' recipe and each departure's result is listed after them.

Settings (environment): PONDER_BENCH_PARITY_CELL_LENGTHS (the two splits' vector lengths,
default "64,96", the paper's), PONDER_BENCH_PARITY_CELL_SPLITS ("interpolation,extrapolation"),
PONDER_BENCH_PARITY_CELL_STEPS (100000), PONDER_BENCH_PARITY_CELL_SEEDS (3),
PONDER_BENCH_PARITY_CELL_MINUTES (per run, default 60), PONDER_BENCH_PARITY_CELL_JOBS (runs at
a time, 2), PONDER_BENCH_PARITY_CELL_TAUS (ACT's, "0.01"; empty: PonderNet only),
PONDER_BENCH_PARITY_CELL_OUT (the runs' folder).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from statistics import mean, pstdev

import numpy as np

from benchmarks.common import ROOT, finished_run, run_jobs, write_fragment
from ponder.training.in_training import wall_seconds
from ponder.tasks.parity.task import count_vectors, k_range

STEPS = int(os.environ.get("PONDER_BENCH_PARITY_CELL_STEPS", "100000"))
SEEDS = int(os.environ.get("PONDER_BENCH_PARITY_CELL_SEEDS", "3"))
MINUTES = float(os.environ.get("PONDER_BENCH_PARITY_CELL_MINUTES", "60"))
LENGTHS = [int(x) for x in os.environ.get("PONDER_BENCH_PARITY_CELL_LENGTHS", "64,96").split(",")]
SPLITS = [x for x in os.environ.get("PONDER_BENCH_PARITY_CELL_SPLITS", "interpolation,extrapolation").split(",") if x]
JOBS = int(os.environ.get("PONDER_BENCH_PARITY_CELL_JOBS", "2"))
ACT_TAUS = tuple(float(x) for x in os.environ.get("PONDER_BENCH_PARITY_CELL_TAUS", "0.01").split(",") if x)
OUT = Path(os.environ.get("PONDER_BENCH_PARITY_CELL_OUT", str(ROOT / "runs" / "bench-parity-cell")))
PRESETS = {"interpolation": "parity64-rnn", "extrapolation": "parity96-rnn-extrapolation"}
TARGETS = {"interpolation": 0.99, "extrapolation": 0.95}
PRESET_CELL = "rnn"  # the presets' cell; runs of another (--model.cell=gru) get rows of their own
PAPER = {  # what the PonderNet paper reports (REFERENCE.md section 2); no exact figures are given there
    ("pondernet", "interpolation"): "almost perfect; settles near 3 steps",
    ("pondernet", "extrapolation"): "almost perfect; near 5 steps",
    ("act", "interpolation"): "solves it (tau <= 0.03)",
    ("act", "extrapolation"): "at chance",
}
PLOT = ROOT / "docs" / "parity_cell.png"


def sizes(length: int, split: str) -> list[str]:
    """The presets' 200000 training and 1000 held-out vectors, or as many as `length` entries allow."""
    test = min(1000, count_vectors(length, *k_range(length, split, "test")) // 5)
    room = count_vectors(length, *k_range(length, split, "train")) - (test if split == "interpolation" else 0)
    return [f"--task.length={length}", f"--task.n_train={min(200000, room)}", f"--task.n_test={test}"]


def jobs() -> list[tuple[str, list[str], str]]:
    """(label, overrides, split) for every run: PonderNet first, then ACT at each tau."""
    out = []
    for split, length in zip(PRESETS, LENGTHS):
        if split not in SPLITS:
            continue
        heads = [("pondernet", [])] + [(f"act-tau{tau:g}", ["--halt.kind=act", f"--halt.act_tau={tau}"])
                                       for tau in ACT_TAUS]
        for head, extra in heads:
            for seed in range(SEEDS):
                out.append((f"{split}-L{length}-{head}-s{seed}",
                            [*sizes(length, split), *extra, f"--train.seed={seed}"], split))
    return out


def train_all() -> list[Path]:
    """Every run of `jobs()` in OUT: finished ones kept, interrupted ones resumed, the rest started."""
    run_dirs, commands = [], []
    for name, overrides, split in jobs():  # JOBS at a time, one thread each
        run_dir = OUT / name
        run_dirs.append(run_dir)
        if finished_run(run_dir):
            continue
        if (run_dir / "config.json").exists():  # interrupted: continue it exactly
            commands.append([sys.executable, "-m", "ponder", "train", PRESETS[split], "--resume", str(run_dir)])
            continue
        commands.append([sys.executable, "-m", "ponder", "train", PRESETS[split], "--run-dir", str(run_dir),
                         *overrides, f"--train.steps={STEPS}", f"--train.max_minutes={MINUTES}", "--train.threads=1",
                         f"--train.target={TARGETS[split]}", "--train.progress=false"])
    run_jobs(commands, JOBS, env=dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1"))
    return run_dirs


def row(run_dir: Path) -> dict:
    """One run's figures from its config, metrics log and final report."""
    report = run_dir / "eval" / "report.json"
    if not report.exists():
        sys.exit(f"bench_parity_cell: {run_dir} is not a finished run (no eval/report.json)")
    cfg = json.loads((run_dir / "config.json").read_text())
    if cfg["model"].get("kind") != "cell":
        sys.exit(f"bench_parity_cell: {run_dir} is not a run of a recurrent-cell reasoner")
    held = json.loads(report.read_text())["held_out"]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r.get("kind") == "eval" and "test_exact" in r]
    trains = [r for r in records if r.get("kind") == "train"]
    halt = cfg["halt"]
    head = halt["kind"]
    cell = cfg["model"].get("cell", "rnn")
    label = head if head == "pondernet" else f"act (tau {halt['act_tau']:g})"
    task = cfg["task"]
    signs = task.get("train_signs", "random")
    if cell != PRESET_CELL:  # a departure from the presets' cell: its own row
        label += f", {cell.upper()} cell"
    if signs != "random":  # a departure from the paper's training vectors: its own row
        label += ", training +1 counts uniform (`task.train_signs=uniform_plus`)"
    target = TARGETS[task["split"]]
    minutes = {r["step"]: t / 60 for r, t in zip(evals, wall_seconds(evals)) if t is not None}  # sessions summed
    reached = next((r for r in evals if r["test_exact"] >= target), None)
    return {"run": run_dir.name, "head": head, "label": label, "cell": cell, "split": task["split"],
            "presets_recipe": cell == PRESET_CELL and signs == "random",
            "length": task["length"],
            "target": target, "steps_to_target": reached["step"] if reached else None,
            "minutes_to_target": minutes.get(reached["step"]) if reached else None,
            "curriculum": [(r["step"], r["curriculum_limit"]) for r in trains if "curriculum_limit" in r],
            "seed": cfg["train"]["seed"], "steps_trained": trains[-1]["step"] if trains else 0,
            "exact": held["exact"], "mean_steps": held["mean_steps"], "spearman": held["spearman_steps_difficulty"],
            "best_fixed": max(held["exact_by_budget"]), "test_k": list(k_range(task["length"], task["split"], "test")),
            "curve": [(r["step"], r["test_exact"]) for r in evals],
            "minutes": max(minutes.values(), default=0.0), "max_minutes": cfg["train"].get("max_minutes", 0),
            "sessions": session_minutes(evals),
            "span": ((run_dir / "config.json").stat().st_mtime, report.stat().st_mtime)}  # its last session's start, end


def session_minutes(evals: list[dict]) -> list[float]:
    """Minutes of training of each session of a run (a resume restarts time_since_start)."""
    out = []
    for before, record in zip([None, *evals], evals):
        if before is None or record.get("time_since_start", 0) < before.get("time_since_start", 0):
            out.append(0.0)
        out[-1] = record.get("time_since_start", 0) / 60
    return out


def fmt(values, pct=True) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "n/a"
    scale = 100 if pct else 1
    spread = f" ± {scale * pstdev(vals):.2f}" if len(vals) > 1 else ""
    return f"{scale * mean(vals):.1f}{'%' if pct else ''}{spread}" if pct else f"{mean(vals):.2f}{spread}"


def goals(rows: list[dict]) -> list[str]:
    """The issue's goals, each checked against the PonderNet rows of the presets' recipe (their cell
    and the paper's training vectors); the rows of a departure are listed after them."""
    pn = {s: [r for r in rows if r["head"] == "pondernet" and r["split"] == s and r.get("presets_recipe", True)]
          for s in PRESETS}
    out = []
    for split, bar in (("interpolation", 0.99), ("extrapolation", 0.95)):
        cell = pn[split]
        if not cell:
            out.append(f"PonderNet {split} >= {100 * bar:.0f}% in every seed: not run")
            continue
        ok = all(r["exact"] >= bar for r in cell)
        out.append(f"PonderNet {split} >= {100 * bar:.0f}% in every seed: {'met' if ok else 'NOT met'} "
                   "(seeds: " + ", ".join(f"{100 * r['exact']:.1f}%" for r in sorted(cell, key=lambda r: r["seed"])) + ")")
    rho = [r["spearman"] for s in PRESETS for r in pn[s] if r["spearman"] is not None]
    out.append("steps rising with the number of non-zeros (Spearman > 0.3 in every PonderNet run): "
               + ("met" if rho and all(x > 0.3 for x in rho) and len(rho) == sum(map(len, pn.values())) else "NOT met")
               + " (Spearman " + (", ".join(f"{x:+.2f}" for x in rho) or "undefined") + ")")
    if pn["interpolation"] and pn["extrapolation"]:
        a, b = (mean(r["mean_steps"] for r in pn[s]) for s in ("interpolation", "extrapolation"))
        out.append(f"extrapolation pondering longer than interpolation: {'met' if b > a else 'NOT met'} "
                   f"({b:.2f} against {a:.2f} mean steps)")
    for r in rows:
        if r["head"] == "pondernet" and not r.get("presets_recipe", True):
            bar = TARGETS[r["split"]]
            out.append(f"with a departure from the presets' recipe ({r['label']}), {r['split']} seed {r['seed']}: "
                       f"{100 * r['exact']:.1f}% ({'reaches' if r['exact'] >= bar else 'short of'} "
                       f"{100 * bar:.0f}%), {r['mean_steps']:.2f} mean steps, Spearman "
                       + ("undefined" if r["spearman"] is None else f"{r['spearman']:+.2f}"))
    return out


def runs_at_once(row: dict, rows: list[dict]) -> int:
    """How many of the runs (this one included) were training at the middle of this run's last
    session, by the times of their files (config.json written at the start, the report at the end)."""
    if "span" not in row:
        return 0
    middle = sum(row["span"]) / 2
    return sum(1 for r in rows if "span" in r and r["span"][0] <= middle <= r["span"][1])


def _sessions(row: dict) -> str:
    spans = row.get("sessions", [])
    if isinstance(spans, int) or len(spans) < 2:  # one session (older rows held a count)
        return ""
    return f" ({len(spans)} sessions, resumed, of {' + '.join(f'{m:.1f}' for m in spans)} min: its minutes sum them)"


def plot(rows: list[dict]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    splits = [split for split in PRESETS if any(r["split"] == split for r in rows)]  # a panel per split run
    fig, axes = plt.subplots(1, len(splits), figsize=(5.5 * len(splits), 4), sharey=True, squeeze=False)
    axes = axes[0]
    labels = sorted({r["label"] for r in rows})
    colours = {lab: plt.cm.tab10(i) for i, lab in enumerate(labels)}
    dashes = ("-", "--", ":", "-.")  # the head by colour, the seed by line style
    for ax, split in zip(axes, splits):
        for r in (r for r in rows if r["split"] == split):
            if r["curve"]:
                steps, acc = zip(*r["curve"])
                ax.plot(steps, np.array(acc) * 100, color=colours[r["label"]], alpha=0.8,
                        ls=dashes[r["seed"] % len(dashes)], label=f"{r['label']} s{r['seed']}")
        lengths = sorted({r["length"] for r in rows if r["split"] == split})
        ax.set_title(f"{split}, {'/'.join(map(str, lengths))} entries")
        ax.axhline(50, color="grey", lw=0.8, ls=":")
        ax.set_xlabel("optimizer step")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    axes[0].set_ylabel("held-out exact (%)")
    fig.tight_layout()
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOT, dpi=90)
    plt.close(fig)


def probe_row(run_dir: Path) -> dict:
    """A run stopped before its end: its settings and the held-out accuracy at each evaluation."""
    cfg = json.loads((run_dir / "config.json").read_text())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r.get("kind") == "eval" and "test_exact" in r]
    trains = [r for r in records if r.get("kind") == "train"]
    return {"run": run_dir.name, "length": cfg["task"]["length"], "split": cfg["task"]["split"],
            "cell": cfg["model"]["cell"], "lr": cfg["train"]["lr"], "head": cfg["halt"]["kind"],
            "steps_trained": trains[-1]["step"] if trains else 0,
            "best_exact": max((r["test_exact"] for r in evals), default=None),
            "last_exact": evals[-1]["test_exact"] if evals else None,
            "seconds_per_step": trains[-1].get("time_sec_per_step") if trains else None,
            "lowest_train_loss": min((r["loss"] for r in trains), default=None)}


def probe_lines(probes: list[dict]) -> list[str]:
    if not probes:
        return []
    md = ["", "Single-seed probes stopped by hand when the budget ran out (the longer vectors, and the learning-rate "
          "probes on 8 entries with 5000 training vectors): held-out exact at the evaluations they reached, and the "
          "lowest logged training loss (ln 2 = 0.693 is chance).", "",
          "| split | entries | cell | LR | head | steps trained | best held-out exact | last | lowest training loss "
          "| seconds per step (shared machine) |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for p in sorted(probes, key=lambda p: (p["split"], p["length"], p["lr"])):
        pct = lambda v: "n/a" if v is None else f"{100 * v:.1f}%"  # noqa: E731
        sps = "n/a" if p["seconds_per_step"] is None else f"{p['seconds_per_step']:.2f}"
        md.append(f"| {p['split']} | {p['length']} | {p['cell']} | {p['lr']:g} | {p['head']} | {p['steps_trained']} | "
                  f"{pct(p['best_exact'])} | {pct(p['last_exact'])} | {p['lowest_train_loss']:.3f} | {sps} |")
    return md


def render(rows: list[dict], probes: list[dict]) -> None:
    md = ["## Parity with PonderNet's step function (a recurrent cell)", "",
          "`parity64-rnn` / `parity96-rnn-extrapolation` (`model.kind=cell`): a tanh RNN of 128 units with "
          "LayerNorm on its new state, reading the whole one-hot vector at every step, gradient through the whole "
          "unrolled trajectory, N = 20, batch 128, Adam at LR 3e-4, gradient clipping at 1, a curriculum over the "
          "number of non-zeros (from 2, x1.25 whenever the logged training exact match reaches 95%), PonderNet with "
          "beta = 0.1, lambda_p = 0.1 and halting bias -3, ACT with epsilon = 0.01 at the ponder costs tau listed; "
          "one thread per run, two runs at a time unless the list of runs below says otherwise; each run stops at "
          "the held-out target (99% interpolation, 95% "
          "extrapolation) or its time limit. Departures from the paper: LayerNorm, the curriculum, beta 0.1 and the "
          "deep start (the preset's docstring says why each was needed); a row whose label names a GRU cell or uniform "
          "+1 counts in training adds that departure. Held-out exact = the parity is right on "
          "1000 held-out vectors (chance 50%). The paper's column is what REFERENCE.md records of the PonderNet "
          "paper (it gives curves, not a table).", "",
          "| split | entries (test non-zeros) | head | steps trained | held-out exact, adaptive | per seed | "
          "minutes to target per seed | best fixed budget | mean steps | Spearman(steps, non-zeros) | paper |",
          "|---|---|---|---|---|---|---|---|---|---|---|"]
    order = lambda r: (list(PRESETS).index(r["split"]), r["length"], r["head"] != "pondernet", r["label"])  # noqa: E731
    keys = dict.fromkeys((r["split"], r["length"], r["label"]) for r in sorted(rows, key=order))
    for split, length, label in keys:
        cell = sorted((r for r in rows if (r["split"], r["length"], r["label"]) == (split, length, label)),
                      key=lambda r: r["seed"])
        k = cell[0]["test_k"]
        trained = sorted({r["steps_trained"] for r in cell})
        md.append(f"| {split} | {length} ({k[0]}-{k[1]}) | {label} | {'/'.join(map(str, trained))} | "
                  f"{fmt([r['exact'] for r in cell])} | " + ", ".join(f"{100 * r['exact']:.1f}" for r in cell) + " | "
                  + ", ".join("not reached" if r.get("minutes_to_target") is None else f"{r['minutes_to_target']:.1f}"
                              for r in cell) + " | "
                  f"{fmt([r['best_fixed'] for r in cell])} | {fmt([r['mean_steps'] for r in cell], pct=False)} | "
                  f"{fmt([r['spearman'] for r in cell], pct=False)} | {PAPER[(cell[0]['head'], split)]} |")
    md += probe_lines(probes)
    md += ["", "Goals (issue):", *[f"- {g}" for g in goals(rows)], "",
           "![held-out exact during training, every run](docs/parity_cell.png)", "",
           "Runs (the time limit of each run's last session, and how many runs trained at once in its middle, "
           "each on one thread of the two cores): "
           + ", ".join(f"`{r['run']}` ({r['max_minutes']:g} min, {runs_at_once(r, rows)} at once)" + _sessions(r)
                       for r in rows) + "."]
    plot(rows)
    write_fragment("parity_cell", "\n".join(md), {"runs": rows, "probes": probes, "steps": STEPS, "seeds": SEEDS})


def _values_after(flag: str) -> list[Path]:
    """The command-line arguments after `flag`, up to the next option."""
    rest = sys.argv[sys.argv.index(flag) + 1:]
    values = rest[:next((i for i, a in enumerate(rest) if a.startswith("--")), len(rest))]
    if not values:
        sys.exit(f"bench_parity_cell: {flag} needs run directories")
    return [Path(v) for v in values]


def main() -> None:
    if "--rewrite" in sys.argv:
        dirs = sorted(d for d in OUT.iterdir() if finished_run(d)) if OUT.exists() else []
        if not dirs:
            sys.exit(f"bench_parity_cell: no finished run in {OUT}")
    elif "--from-runs" in sys.argv:
        dirs = _values_after("--from-runs")
    else:
        dirs = [d for d in train_all() if finished_run(d)]
    probes = _values_after("--probes") if "--probes" in sys.argv else []
    render([row(d) for d in dirs], [probe_row(d) for d in probes])


if __name__ == "__main__":
    main()
