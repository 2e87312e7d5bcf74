"""The lm-small pair compared with `ponder compare`: the hybrid Gated DeltaNet + attention
baseline against the recursive LM with per-token PonderNet halting, same data, tokenizer,
learning rate and seeds, at equal training FLOPs and at equal wall-clock time; validation
perplexity beside unigram and bigram baselines of the same tokenizer; the tokens the recursive
model thinks longest about; the correlation of a token's depth with its loss; the compute early
exit saved (measured applications); how the halting statistics moved during training.

    python -m benchmarks.bench_lm_compare [--seeds 3] [--hybrid-steps 400] [--seconds 150] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from benchmarks.common import ROOT, machine, matmul_gflops, write_fragment
from ponder.experiments.compare import compare, training_flops_per_step
from ponder.presets import get_config
from ponder.runs.run import build_model
from ponder.tasks import build_task
from ponder.training.callbacks import MetricsLog

A, B = "lm-small-hybrid", "lm-small-recursive"


def _ms(summary: dict, key: str, fmt: str = "{:.2f}") -> str:
    s = summary.get(key)
    if s is None:
        return "n/a"
    return (fmt + " ± " + fmt).format(s["mean"], s["std"]) if s["n"] > 1 else fmt.format(s["mean"])


def _halting_moves(result: dict) -> list[dict]:
    """First and last training record's halting figures of every recursive run."""
    rows = []
    for run in result["runs"][B]:
        train = [r for r in MetricsLog(Path(run["run_dir"])).records() if r.get("kind") == "train"]
        if train:
            first, last = train[0], train[-1]
            rows.append({"seed": run["seed"], **{f"{w}_{k}": r.get(k) for w, r in (("first", first), ("last", last))
                                                 for k in ("step", "mean_depth", "halt_rate", "halt_logit_mean",
                                                           "halt_logit_std", "kl")}})
    return rows


def _table(result: dict, title: str) -> list[str]:
    sa, sb = result["summary"][A], result["summary"][B]
    base = result["runs"][A][0]
    lines = [f"### {title}", "",
             "| model | steps | training FLOPs | train s | val perplexity | val loss | val accuracy | tokens/s "
             "| parameters | FLOPs/token (inference) | mean depth | halt rate | compute saved |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, s in ((A, sa), (B, sb)):
        lines.append(f"| {name} | {_ms(s, 'steps_trained', '{:.0f}')} | {_ms(s, 'training_flops', '{:.3g}')} | "
                     f"{_ms(s, 'train_seconds', '{:.0f}')} | {_ms(s, 'perplexity')} | {_ms(s, 'loss', '{:.3f}')} | "
                     f"{_ms(s, 'accuracy', '{:.3f}')} | {_ms(s, 'tokens_per_second', '{:.0f}')} | "
                     f"{_ms(s, 'parameters', '{:.0f}')} | {_ms(s, 'flops_per_token_inference', '{:.3g}')} | "
                     f"{_ms(s, 'mean_steps', '{:.2f}')} | {_ms(s, 'halt_rate', '{:.3f}')} | "
                     f"{_ms(s, 'compute_saved', '{:.3f}')} |")
    for name in ("unigram", "bigram (Witten-Bell)"):
        lines.append(f"| baseline: {name} | | | | {base['baseline_' + name]['perplexity']:.2f} | "
                     f"{base['baseline_' + name]['loss']:.3f} | {base['baseline_' + name]['accuracy']:.3f} "
                     "| | | | | | |")
    return lines


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--hybrid-steps", type=int, default=400, help="the FLOPs budget: the hybrid's training FLOPs "
                                                                 "of this many steps")
    ap.add_argument("--seconds", type=float, default=150.0, help="the wall-clock budget per run")
    ap.add_argument("--threads", type=int, default=1)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    ap.add_argument("--out", default=os.path.relpath(ROOT / "runs" / f"bench-lm-compare-{stamp}"))
    args = ap.parse_args(argv)
    if args.seeds < 1 or args.hybrid_steps < 1 or args.seconds <= 0 or args.threads < 1:
        ap.error("--seeds, --hybrid-steps, --threads must be >= 1 and --seconds > 0")
    out = Path(args.out)
    common = [f"--train.threads={args.threads}", "--train.progress=false"]
    load_before, rate_before = os.getloadavg(), matmul_gflops(args.threads)
    t0 = time.perf_counter()
    cfg_a = get_config(A)
    task = build_task(cfg_a.task)
    flops = training_flops_per_step(cfg_a, task, build_model(cfg_a, task)) * args.hybrid_steps
    equal_flops = compare(A, B, seeds=args.seeds, budget=f"flops:{flops:.6g}", out=out / "equal_flops",
                          overrides=common)
    # equal wall clock: a constant LR (no schedule tied to a step count) and a step cap never reached
    equal_time = compare(A, B, seeds=args.seeds, budget=f"seconds:{args.seconds:g}", out=out / "equal_time",
                         overrides=common + ["--train.schedule=constant", "--train.steps=1000000"])
    wall = time.perf_counter() - t0
    load_after, rate_after = os.getloadavg(), matmul_gflops(args.threads)
    for result in (equal_flops, equal_time):  # the baselines, once per run (the same held-out windows)
        for runs in result["runs"].values():
            for run in runs:
                rep = json.loads((Path(run["run_dir"]) / "eval" / "report.json").read_text())
                for name, b in rep["baselines"].items():
                    run["baseline_" + name] = b
                run["top_depth_tokens"] = rep["held_out"].get("top_depth_tokens")
                run["spearman_depth_loss"] = rep["held_out"].get("spearman_depth_loss")
    top = {}
    for run in equal_flops["runs"][B] + equal_time["runs"][B]:
        for t in run["top_depth_tokens"] or []:
            top.setdefault(t["token"], []).append(t["mean_depth"])
    corr = {k: [r["spearman_depth_loss"] for r in res["runs"][B] if r["spearman_depth_loss"] is not None]
            for k, res in (("equal FLOPs", equal_flops), ("equal wall clock", equal_time))}
    moves = {"equal FLOPs": _halting_moves(equal_flops), "equal wall clock": _halting_moves(equal_time)}
    seed0 = equal_flops["runs"][B][0]["top_depth_tokens"] or []
    md = ["## Language models: hybrid Gated DeltaNet baseline vs recursive LM (`ponder compare`)", "",
          f"`{A}` against `{B}`: the standard library's code (400 files), the same BPE tokenizer (1024 tokens), "
          f"64-token windows, batch 16, learning rate 2e-3, seeds 0..{args.seeds - 1}; mean ± standard deviation "
          f"over {args.seeds} seeds. Validation split, the first 256 windows ({256 * 64} tokens). Training FLOPs "
          "count 3x the forward matmul FLOPs (the recursive LM trains on all its cycles). "
          f"{args.threads} thread(s); the whole benchmark took {wall / 60:.1f} min. The machine was shared: load "
          f"average {load_before[0]:.1f} before and {load_after[0]:.1f} after; fp32 matmul rate "
          f"{rate_before:.1f} / {rate_after:.1f} GFLOP/s before / after, in the same run. {machine()}.", "",
          *_table(equal_flops, f"Equal training FLOPs ({flops:.3g}: the hybrid's {args.hybrid_steps} steps, "
                               "cosine schedule over each model's own steps)"), "",
          *_table(equal_time, f"Equal wall clock ({args.seconds:g} s of training per run, constant LR after warm-up; "
                              "evaluations during training count against the time)"), "",
          "### Depth", "",
          "Spearman correlation of a token's depth with its loss (validation, per seed): "
          + "; ".join(f"{k}: " + (", ".join(f"{c:.3f}" for c in v) or "n/a (constant depth)") for k, v in corr.items()),
          "", f"Tokens the recursive model predicts at the greatest mean depth (equal-FLOPs run, seed 0; "
              "at least 10 occurrences in the validation windows; the token shown is the one predicted):", "",
          "| token | count | mean depth | mean loss |", "|---|---|---|---|",
          *[f"| `{t['token']!r}` | {t['count']} | {t['mean_depth']:.2f} | {t['mean_loss']:.3f} |" for t in seed0], "",
          "Halting statistics at the first and last training log record (recursive LM): "
          + "; ".join(f"{k} seed {m['seed']}: mean depth {m['first_mean_depth']:.2f} -> {m['last_mean_depth']:.2f}, "
                      f"halt logit mean {m['first_halt_logit_mean']:.2f} -> {m['last_halt_logit_mean']:.2f}"
                      for k, rows in moves.items() for m in rows), ""]
    write_fragment("lm_compare", "\n".join(md), {
        "equal_flops": equal_flops, "equal_time": equal_time, "flops_budget": flops, "seconds_budget": args.seconds,
        "load_before": load_before, "load_after": load_after, "matmul_gflops": [rate_before, rate_after],
        "wall_seconds": wall, "threads": args.threads, "halting_moves": moves,
        "top_depth_tokens_union": {k: float(np.mean(v)) for k, v in top.items()}})
    print("\n".join(md))


if __name__ == "__main__":
    main()
