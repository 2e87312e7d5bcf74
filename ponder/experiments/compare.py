"""`ponder compare PRESET_A PRESET_B`: two presets trained on the same task with the same seeds
and the same budget, evaluated by the task's own evaluation, summarized over seeds.

- Both presets must define the same task section (same data; for language models the same
  corpus, tokenizer and windows), or the command refuses in one line.
- Seeds 0..N-1: run k of each preset has `train.seed = k`, so both see the same sample stream
  order for a seed (the stream is seeded by `train.seed`).
- The budget is the same for both: `steps:N` (optimizer steps), `tokens:N` (N / (batch · seq_len)
  steps, rounded up), `flops:N` (training FLOPs: N / (3 · forward FLOPs per token · batch · seq_len)
  steps, forward FLOPs as the model counts them, `flops_per_token`; language models only) or
  `seconds:N` (`train.max_minutes`, the preset's steps as a cap). Without one each preset keeps its
  own `train.steps`.
- Every run writes `OUT/PRESET/seed_K/` (a normal run directory: `ponder eval`, `ponder report` and
  `ponder generate` work on it) and keeps its best weights (the best held-out headline figure of
  any evaluation during training) in `seed_K/best/`, a checkpoint directory `ponder eval` reads.
- `--resume` continues unfinished runs in place and skips finished ones; `--extend-steps K` trains
  every finished run K more steps (its schedule stretched to the new end) and evaluates again.
- `OUT/compare.json`: per preset, per seed the final evaluation's figures, parameters, training
  wall time and the last training record's halting figures; mean and standard deviation over
  seeds of every numeric figure. `OUT/compare.md` a table; `OUT/compare.png` the held-out headline
  over steps and over wall time; `OUT/halting.png` the halting figures over steps.
"""
from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.torch import save as save_bytes

from ponder.core.errors import PonderError
from ponder.core.files import atomic_write_text, save_figure, write_file, writing
from ponder.core.lock import LOCK_FILE, DirectoryLock, command_line
from ponder.core.metrics import figure_formats, lower_is_better
from ponder.presets import get_config
from ponder.runs.config import Config, apply_overrides, to_dict
from ponder.runs.run import build_model, train_run
from ponder.tasks import build_task
from ponder.training.callbacks import MetricsLog
from ponder.training.checkpoint import read_training_state, resolve_checkpoint

BUDGET = re.compile(r"(steps|tokens|flops|seconds):([0-9.eE+]+)")
HALT_FIGURES = ("mean_depth", "halt_rate", "halted_mean_steps", "halt_logit_mean", "halt_logit_std", "halt_prob_mean",
                "ponder_cost", "expected_steps", "kl", "q_halt_acc", "q_halt_loss", "q_continue_loss")


class BestWeights:
    """Training callback: after every evaluation whose held-out headline figure beats the best so
    far, write the evaluated weights to RUN_DIR/best/ (model.safetensors, the EMA's when the run
    keeps one, config.json, best.json with the step and figure). Its best value is resumed."""

    def __init__(self, headline: str, lower: bool = False):
        self.headline, self.lower, self.best = headline, lower, None

    def _better(self, value: float) -> bool:
        if value is None or not math.isfinite(value):
            return False
        if self.best is None:
            return True
        return value < self.best if self.lower else value > self.best

    def on_eval_end(self, run, record: dict) -> None:
        value = record.get(f"test_{self.headline}")
        if not run.shard.main or not self._better(value):
            return
        self.best = value
        out = Path(run.run_dir) / "best"
        tmp = out.with_name(".best.tmp")
        files = {"model.safetensors": save_bytes({k: v.detach().contiguous().cpu()
                                                   for k, v in run.model.state_dict().items()})}
        if run.ema is not None:
            files["ema.safetensors"] = save_bytes({k: v.detach().contiguous().cpu()
                                                    for k, v in run.ema.state_dict().items()})
        files["config.json"] = (json.dumps(run.config_dict, indent=2) + "\n").encode()
        files["best.json"] = (json.dumps({"step": record["step"], self.headline: value}) + "\n").encode()
        with writing("the best weights", out):
            try:
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir(parents=True)
                for name, data in files.items():
                    write_file(tmp / name, data)
                shutil.rmtree(out, ignore_errors=True)
                tmp.replace(out)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)

    def state_dict(self) -> dict:
        return {"best": self.best}

    def load_state_dict(self, s: dict) -> None:
        self.best = s.get("best")


def parse_budget(text: str | None) -> tuple[str, float] | None:
    if text is None:
        return None
    m = BUDGET.fullmatch(text.strip())
    try:
        value = float(m.group(2)) if m else math.nan
    except ValueError:
        value = math.nan
    if not m or not math.isfinite(value) or value <= 0:
        raise PonderError(f"--budget must be steps:N, tokens:N, flops:N or seconds:N with N > 0, got {text!r}")
    return m.group(1), value


def apply_budget(cfg: Config, budget: tuple[str, float] | None, task, model) -> Config:
    """`cfg` with the budget turned into its own steps (or time limit)."""
    if budget is None:
        return cfg
    kind, value = budget
    per_step_tokens = cfg.train.batch_size * task.seq_len
    if kind == "steps":
        cfg.train.steps = max(1, int(value))
    elif kind == "tokens":
        cfg.train.steps = max(1, math.ceil(value / per_step_tokens))
    elif kind == "flops":
        if not hasattr(model, "flops_per_token"):
            raise PonderError(f"--budget flops: preset {cfg.preset!r}'s model does not count its FLOPs "
                              f"(language models do); use steps, tokens or seconds")
        forward = model.flops_per_token(task.seq_len, getattr(model, "max_steps", 1))
        cfg.train.steps = max(1, math.ceil(value / (3 * forward * per_step_tokens)))
    else:
        cfg.train.max_minutes = value / 60
    return cfg


def training_flops_per_step(cfg: Config, task, model) -> float | None:
    """3 x forward FLOPs per token (all cycles) x tokens per step; None if the model does not count."""
    if not hasattr(model, "flops_per_token"):
        return None
    return 3 * model.flops_per_token(task.seq_len, getattr(model, "max_steps", 1)) * cfg.train.batch_size * task.seq_len


def _numbers(d: dict, prefix: str = "") -> dict[str, float]:
    return {prefix + k: float(v) for k, v in d.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}


def _run_figures(run_dir: Path, report: dict, params: int, flops_step: float | None) -> dict:
    records = MetricsLog(run_dir).records()
    train = [r for r in records if r.get("kind") == "train"]
    held = report.get("held_out", {})
    figures = {**_numbers(held), "parameters": float(params)}
    for key in ("flops_per_token_inference", "flops_per_token_train_forward"):
        if key in report:
            figures[key] = float(report[key])
    steps = read_training_state(resolve_checkpoint(run_dir))["step"]
    figures["steps_trained"] = float(steps)
    if flops_step is not None:
        figures["training_flops"] = flops_step * steps
    timed = [r for r in records if r.get("kind") == "eval" and isinstance(r.get("time_since_start"), (int, float))]
    if timed:  # the loop's wall time (this session's) up to its last evaluation: the end of training
        figures["train_seconds"] = float(timed[-1]["time_since_start"])
    if train:
        last = train[-1]
        figures.update({f"last_train_{k}": float(last[k]) for k in HALT_FIGURES
                        if isinstance(last.get(k), (int, float))})
    best = run_dir / "best" / "best.json"
    if best.exists():
        figures.update(_numbers(json.loads(best.read_text()), "best_"))
    return figures


def _summary(per_seed: list[dict]) -> dict[str, dict[str, float]]:
    keys = sorted(set().union(*per_seed)) if per_seed else []
    out = {}
    for k in keys:
        vals = np.array([s[k] for s in per_seed if k in s], dtype=np.float64)
        out[k] = {"mean": float(vals.mean()), "std": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0,
                  "n": int(len(vals))}
    return out


def compare(preset_a: str, preset_b: str, *, seeds: int = 3, budget: str | None = None, resume: bool = False,
            extend_steps: int | None = None, out: Path | None = None, overrides: list[str] | None = None,
            quiet: bool = True) -> dict:
    """Train and evaluate both presets over `seeds` seeds (module docstring); returns compare.json."""
    if seeds < 1:
        raise PonderError(f"--seeds must be >= 1, got {seeds}")
    if preset_a == preset_b:
        raise PonderError("compare two different presets")
    if extend_steps is not None and extend_steps < 1:
        raise PonderError(f"--extend-steps must be >= 1, got {extend_steps}")
    parsed = parse_budget(budget)
    out = Path(out) if out is not None else Path("runs") / f"compare-{preset_a}-vs-{preset_b}"
    if not (resume or extend_steps) and out.exists() and any(p.name != LOCK_FILE for p in out.iterdir()):
        raise PonderError(f"{out} already holds a comparison; continue it with --resume or choose another --out")
    if extend_steps and not out.exists():
        raise PonderError(f"--extend-steps continues a comparison, and {out} holds none")
    with DirectoryLock(out, command_line()):  # one writer of the comparison (each run also locks its own folder)
        return _compare(preset_a, preset_b, out, seeds=seeds, budget=budget, parsed=parsed, resume=resume,
                        extend_steps=extend_steps, overrides=overrides, quiet=quiet)


def _compare(preset_a: str, preset_b: str, out: Path, *, seeds: int, budget: str | None, parsed, resume: bool,
             extend_steps: int | None, overrides: list[str] | None, quiet: bool) -> dict[str, Any]:
    cfgs = {name: apply_overrides(get_config(name), overrides or []) for name in (preset_a, preset_b)}
    tasks = [to_dict(c)["task"] for c in cfgs.values()]
    if tasks[0] != tasks[1]:
        diff = sorted(k for k in set(tasks[0]) | set(tasks[1]) if tasks[0].get(k) != tasks[1].get(k))
        raise PonderError(f"presets {preset_a!r} and {preset_b!r} train on different data (task.{', task.'.join(diff)} "
                          f"differ); compare needs the same task")
    task = build_task(cfgs[preset_a].task)
    result: dict[str, Any] = {"presets": [preset_a, preset_b], "seeds": seeds, "budget": budget,
                              "task": tasks[0], "runs": {}, "summary": {}}
    for name, base in cfgs.items():
        model = build_model(base, task)
        params = sum(p.numel() for p in model.parameters())
        per_seed = []
        for seed in range(seeds):
            cfg = apply_overrides(base, [f"--train.seed={seed}"])
            cfg = apply_budget(cfg, parsed, task, model)
            run_dir = out / name / f"seed_{seed}"
            report = _train_one(cfg, run_dir, headline=task.metric.columns[0],
                                lower=task.metric.columns[0] in lower_is_better(task.metric), resume=resume,
                                extend_steps=extend_steps, quiet=quiet)
            figures = _run_figures(run_dir, report, params, training_flops_per_step(cfg, task, model))
            per_seed.append(figures)
            result["runs"].setdefault(name, []).append({"seed": seed, "run_dir": str(run_dir), **figures})
        result["summary"][name] = _summary(per_seed)
    result["headline"] = task.metric.columns[0]
    result["lower_is_better"] = sorted(lower_is_better(task.metric))
    result["formats"] = figure_formats(task.metric)
    result["eval_sizes"] = {"in_training": cfgs[preset_a].eval.during_training_samples,
                            "final": cfgs[preset_a].eval.max_samples or len(task.test)}
    atomic_write_text(out / "compare.json", json.dumps(result, indent=1) + "\n", what="the comparison")
    atomic_write_text(out / "compare.md", format_compare(result), what="the comparison")
    plot_compare(result, out)
    return result


def _train_one(cfg: Config, run_dir: Path, *, headline: str, lower: bool, resume: bool, extend_steps: int | None,
               quiet: bool) -> dict:
    """Train (or continue, or extend) one run and return its final evaluation report."""
    done = None
    if (run_dir / "checkpoints").exists():
        done = read_training_state(resolve_checkpoint(run_dir))["step"]
    if extend_steps:
        if done is None:
            raise PonderError(f"--extend-steps: {run_dir} holds no run to extend")
        cfg.train.steps = done + extend_steps  # the LR schedule stretches to the new end
    elif done is not None and done >= cfg.train.steps and (run_dir / "eval" / "report.json").exists():
        return json.loads((run_dir / "eval" / "report.json").read_text())  # finished: nothing to do
    elif done is not None and not resume:
        raise PonderError(f"{run_dir} already holds a run; continue it with --resume")
    if quiet:
        cfg.train.progress = False
    return train_run(cfg, run_dir, resume=done is not None, callbacks=[BestWeights(headline, lower)])


def format_compare(r: dict) -> str:
    a, b = r["presets"]
    sa, sb = r["summary"][a], r["summary"][b]
    keys = sorted(set(sa) | set(sb))

    def cell(s: dict | None) -> str:
        if s is None:
            return "n/a"
        return f"{s['mean']:.4g} ± {s['std']:.2g}" if s["n"] > 1 else f"{s['mean']:.4g}"

    lines = [f"## compare {a} vs {b}: {r['seeds']} seed(s), budget {r['budget'] or 'each preset its own steps'}", "",
             f"Mean ± standard deviation over seeds (the held-out split; headline {r['headline']}).",
             *([f"`best_*`: the best in-training evaluation ({r['eval_sizes']['in_training']} held-out samples, "
                f"the weights kept in RUN_DIR/best/); the other held-out figures: the final evaluation of the "
                f"last weights ({r['eval_sizes']['final']} held-out samples)."] if "eval_sizes" in r else []), "",
             f"| figure | {a} | {b} |", "|---|---|---|"]
    lines += [f"| {k} | {cell(sa.get(k))} | {cell(sb.get(k))} |" for k in keys]
    return "\n".join(lines) + "\n"


def plot_compare(r: dict, out: Path) -> None:
    """compare.png: held-out headline against steps and wall time per run; halting.png: the
    halting figures of the training records against steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    head = r["headline"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    fig2, axes2 = plt.subplots(1, 3, figsize=(13, 3.6))
    for color, name in zip(("C0", "C1"), r["presets"]):
        for i, run in enumerate(r["runs"][name]):
            records = MetricsLog(Path(run["run_dir"])).records()
            evals = [e for e in records if e.get("kind") == "eval" and e.get(f"test_{head}") is not None]
            train = [e for e in records if e.get("kind") == "train"]
            label = name if i == 0 else None
            style = "-o" if len(evals) < 30 else "-"  # a short budget's few evaluations stay visible
            axes[0].plot([e["step"] for e in evals], [e[f"test_{head}"] for e in evals], style, color=color,
                         alpha=0.8, markersize=4, label=label)
            axes[1].plot([e.get("time_since_start", 0) for e in evals], [e[f"test_{head}"] for e in evals], style,
                         color=color, alpha=0.8, markersize=4, label=label)
            for ax, key in zip(axes2, ("halted_mean_steps", "halt_logit_mean", "halt_logit_std")):
                pts = [(e["step"], e[key]) for e in train if isinstance(e.get(key), (int, float))]
                if pts:
                    ax.plot(*zip(*pts), "-o" if len(pts) < 30 else "-", color=color, alpha=0.8, markersize=3,
                            label=label)
                ax.set_title(key)
                ax.set_xlabel("step")
    for ax, xl in zip(axes, ("optimizer step", "wall time (s)")):
        ax.set_xlabel(xl)
        ax.set_ylabel(f"held-out {head} (in-training evaluations)")
        if head in r.get("lower_is_better", []):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes2[0].legend(fontsize=8)
    for f, name in ((fig, "compare.png"), (fig2, "halting.png")):
        f.tight_layout()
        save_figure(f, out / name, f"the comparison plot {name}", dpi=100)
        plt.close(f)
