"""Evaluation of a language model on windows of tokens: next-token loss, perplexity and accuracy
with early exit, the depth every token ran, and what early exit saved (measured).

Both LM kinds answer `infer(tokens) -> Inference` (ponder.models.lm.recursive_lm): the recursive LM with
per-token early exit, the hybrid with depth 1 everywhere. `evaluate_tokens` runs it over a split
and reports the figures `ponder.training.loop` logs for every task (mean steps = mean depth per token,
halting shares, steps histogram) together with the LM's own: tokens per second, token-cycle
applications run against the full M per token (compute saved), and the Spearman correlation of a
token's depth with its loss. With a tokenizer it also lists the tokens the model thinks longest
about (highest mean depth). `write_lm_report` is the task-owned `ponder eval` report.
"""
from __future__ import annotations

import html
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ponder.core.files import atomic_write_text
from ponder.core.metrics import figure_formats, lower_is_better
from ponder.core.progress import bar
from ponder.core.render import samples_html
from ponder.core.stats import spearman_or_none
from ponder.core.task import Split
from ponder.core.types import IGNORE
from ponder.training.checkpoint import write_eval_report
from ponder.training.distributed import SINGLE, Shard
from ponder.training.evaluate import describe_evaluation

TOP_TOKENS = 20
MIN_COUNT = 10  # a token enters the depth ranking only with this many occurrences


def _gather(shard: Shard, part: dict[str, Any]) -> dict[str, Any]:
    if not shard.active:
        return part
    parts = [p for p in shard.gather_objects(part) if p]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {}


@torch.no_grad()
def token_arrays(model, split: Split, *, batch_size: int, device: torch.device, shard: Shard = SINGLE,
                 budgets: bool = False) -> dict:
    """Per supervised token of `split` (this rank's part, gathered): nll, correct, depth, label id;
    plus seconds, applications and full (token-cycle applications run / without early exit).

    budgets: also nll_t and correct_t per depth budget t = 1..M: the answer each token has after
    min(t, its depth) cycles (a halted token keeps its state, so this is the readout of cycle t on
    the training path, `trajectory`); a depth-1 model's budget 1 is its answer."""
    was_training = model.training
    model.eval()
    rows = shard.split_rows(len(split))
    mine = split.slice(rows.start, rows.stop)
    m = int(getattr(model, "max_steps", 1))
    keys = ["nll", "correct", "depth", "label"] + ([f"{k}_{t}" for t in range(1, m + 1) for k in ("nll", "correct")]
                                                   if budgets else [])
    parts: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    applications = full = 0
    t0 = time.perf_counter()
    for lo in bar(range(0, len(mine), batch_size), desc="tokens", unit="batch"):
        part = mine.slice(lo, lo + batch_size)
        inputs, labels = torch.as_tensor(part.inputs, device=device), torch.as_tensor(part.labels, device=device)
        inf = model.infer(inputs)
        mask = labels != IGNORE
        logits, labels = inf.logits[mask].float(), labels[mask]
        parts["nll"].append(F.cross_entropy(logits, labels, reduction="none").cpu().numpy())
        parts["correct"].append((logits.argmax(-1) == labels).cpu().numpy())
        parts["depth"].append(inf.depth[mask].cpu().numpy().astype(np.int16))
        parts["label"].append(labels.cpu().numpy().astype(np.int32))
        applications += inf.applications
        full += inf.full
        if budgets:  # (not timed: a second pass)
            t1 = time.perf_counter()
            outs = model.trajectory(inputs).outs if hasattr(model, "trajectory") else None
            for t in range(1, m + 1):
                lg = logits if outs is None else outs[t - 1].logits.view(*inputs.shape, -1)[mask].float()
                parts[f"nll_{t}"].append(F.cross_entropy(lg, labels, reduction="none").cpu().numpy())
                parts[f"correct_{t}"].append((lg.argmax(-1) == labels).cpu().numpy())
            t0 += time.perf_counter() - t1
    seconds = time.perf_counter() - t0
    model.train(was_training)
    local = {k: np.concatenate(v) if v else np.zeros(0) for k, v in parts.items()}
    out = _gather(shard, local)
    counts = shard.gather_objects((applications, full, seconds)) if shard.active else [(applications, full, seconds)]
    out["applications"] = sum(c[0] for c in counts)
    out["full"] = sum(c[1] for c in counts)
    out["seconds"] = max(c[2] for c in counts)
    return out


def summarize_tokens(a: dict, max_steps: int, n_windows: int) -> dict:
    """The figures of `token_arrays` (see `evaluate_tokens`)."""
    nll, correct, depth = a["nll"].astype(np.float64), a["correct"].astype(bool), a["depth"].astype(np.int64)
    tokens = len(nll)
    loss = float(nll.mean()) if tokens else float("nan")
    early = depth < max_steps
    by_budget = {}
    if "nll_1" in a and tokens:
        losses = [float(a[f"nll_{t}"].astype(np.float64).mean()) for t in range(1, max_steps + 1)]
        by_budget = {"perplexity_by_budget": [math.exp(x) for x in losses], "loss_by_budget": losses,
                     "accuracy_by_budget": [float(a[f"correct_{t}"].mean()) for t in range(1, max_steps + 1)]}
    return {
        **by_budget,
        "n": n_windows,
        "tokens": tokens,
        "perplexity": math.exp(loss) if math.isfinite(loss) else float("nan"),
        "loss": loss,
        "accuracy": float(correct.mean()) if tokens else float("nan"),
        "mean_steps": float(depth.mean()) if tokens else float("nan"),
        "max_steps": max_steps,
        "steps_histogram": np.bincount(depth - 1, minlength=max_steps).tolist() if tokens else [0] * max_steps,
        "spearman_steps_difficulty": None,  # windows of text carry no difficulty
        "halt_first_frac": float((depth == 1).mean()) if tokens else float("nan"),
        "halt_max_frac": float((depth == max_steps).mean()) if tokens else float("nan"),
        "halt_rate": float(early.mean()) if tokens and max_steps > 1 else None,
        "wrong_halt_frac": float((~correct[early]).mean()) if early.any() else None,
        "spearman_depth_loss": spearman_or_none(depth, nll) if max_steps > 1 else None,
        "loss_by_depth": {int(d): float(nll[depth == d].mean()) for d in np.unique(depth)},
        "seconds_adaptive": float(a["seconds"]),
        "tokens_per_second": tokens / a["seconds"] if a["seconds"] > 0 else None,
        "applications": int(a["applications"]),
        "full_applications": int(a["full"]),
        "compute_saved": 1.0 - a["applications"] / a["full"] if a["full"] else None,
    }


def top_depth_tokens(a: dict, tokenizer, k: int = TOP_TOKENS, min_count: int = MIN_COUNT) -> list[dict]:
    """The `k` target tokens with the highest mean depth among those seen `min_count` times:
    the depth at which the model predicted them (text, id, count, mean depth, mean loss)."""
    label, depth, nll = a["label"].astype(np.int64), a["depth"].astype(np.float64), a["nll"].astype(np.float64)
    if not len(label):
        return []
    size = int(label.max()) + 1
    count = np.bincount(label, minlength=size)
    mean_depth = np.bincount(label, weights=depth, minlength=size) / np.maximum(count, 1)
    mean_loss = np.bincount(label, weights=nll, minlength=size) / np.maximum(count, 1)
    ids = [i for i in np.argsort(-mean_depth, kind="stable") if count[i] >= min_count][:k]
    return [{"token": tokenizer.token(int(i)) if tokenizer is not None else str(int(i)), "id": int(i),
             "count": int(count[i]), "mean_depth": float(mean_depth[i]), "mean_loss": float(mean_loss[i])}
            for i in ids]


def evaluate_tokens(model, split: Split, *, batch_size: int, device: torch.device, shard: Shard = SINGLE,
                    tokenizer=None, budgets: bool = False, **_ignored) -> dict:
    """Early-exit evaluation of an LM on `split` (the task-owned `evaluate_split`).

    Returns: n (windows), tokens, perplexity, loss (nats per token), accuracy (argmax = next
    token), mean_steps (mean depth per token), max_steps, steps_histogram (tokens per depth),
    halt_first_frac, halt_max_frac, halt_rate (share halting before M; None for depth-1 models),
    wrong_halt_frac (of tokens halted before M, the share predicted wrong), spearman_depth_loss,
    loss_by_depth, seconds_adaptive, tokens_per_second, applications / full_applications
    (token-cycle applications run / without early exit), compute_saved, and with a tokenizer
    top_depth_tokens. `spearman_steps_difficulty` is None (text has no difficulty). With budgets:
    perplexity_by_budget, loss_by_budget, accuracy_by_budget over depth caps 1..M (`token_arrays`).
    `_ignored`: the evaluator's options that do not apply here (max_steps: the model's own M).
    """
    a = token_arrays(model, split, batch_size=batch_size, device=device, shard=shard, budgets=budgets)
    report = summarize_tokens(a, int(getattr(model, "max_steps", 1)), len(split))
    if tokenizer is not None:
        report["top_depth_tokens"] = top_depth_tokens(a, tokenizer)
    return report


def depth_sample_figures(model, split: Split, k: int, device: torch.device, *, tokenizer) -> list[str]:
    """The first `k` windows of `split` as text, each token shaded by the depth the model ran
    to predict the token after it (darker = deeper), with the depth in its tooltip; a caption
    first. The LM task's `sample_figures`."""
    sub = split.slice(0, k)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        inf = model.infer(torch.as_tensor(sub.inputs, device=device))
    model.train(was_training)
    m = int(getattr(model, "max_steps", 1))
    figures = []
    for row, depth in zip(sub.inputs, inf.depth.cpu().numpy()):
        spans = []
        for tok, d in zip(row, depth):
            shade = 0.1 + 0.8 * (d - 1) / max(1, m - 1) if m > 1 else 0.0
            spans.append(f'<span title="depth {int(d)}" style="background:rgba(200,60,20,{shade:.2f})">'
                         f"{html.escape(tokenizer.token(int(tok)))}</span>")
        figures.append('<pre style="white-space:pre-wrap;font-size:12px">' + "".join(spans) + "</pre>")
    return [f"<p>Tokens shaded by depth, 1 (clear) to {m} (dark).</p>", *figures]


def format_lm_report(r: dict) -> str:
    """Markdown of an LM report: the model beside the n-gram baselines, depth and compute."""
    h, t = r["held_out"], r["train"]
    lines = [f"## {r['preset'] or r['task']}: {r['model_kind']}, {r['parameters']:,} parameters, "
             f"{h['tokens']:,} held-out tokens ({r['held_out_split']})", "",
             *([describe_evaluation(r["evaluation"]), ""] if r.get("evaluation") else []),
             "| model / baseline | perplexity | loss (nats/token) | accuracy | train perplexity |", "|---|---|---|---|---|",
             f"| model | {h['perplexity']:.2f} | {h['loss']:.4f} | {100 * h['accuracy']:.1f}% | {t['perplexity']:.2f} |"]
    for name, b in r["baselines"].items():
        lines.append(f"| baseline: {name} | {b['perplexity']:.2f} | {b['loss']:.4f} | {100 * b['accuracy']:.1f}% | |")
    m = h["max_steps"]
    lines += ["", f"Mean depth per token {h['mean_steps']:.3f} of {m}; token-cycle applications run "
              f"{h['applications']:,} of {h['full_applications']:,} (compute saved by early exit: "
              f"{100 * (h['compute_saved'] or 0):.1f}%); {h['tokens_per_second']:.0f} tokens/s.",
              f"Forward FLOPs per token: {r['flops_per_token_inference']:.3g} at inference, "
              f"{r['flops_per_token_train_forward']:.3g} in training (forward, all cycles)."]
    if m > 1:
        corr = h["spearman_depth_loss"]
        lines += ["", "| depth | " + " | ".join(str(i + 1) for i in range(m)) + " |", "|---" * (m + 1) + "|",
                  "| tokens | " + " | ".join(str(c) for c in h["steps_histogram"]) + " |",
                  "| perplexity, depth capped here | " + " | ".join(f"{x:.2f}" for x in h["perplexity_by_budget"]) + " |",
                  "| mean loss | " + " | ".join(f"{h['loss_by_depth'].get(i + 1, float('nan')):.3f}"
                                               for i in range(m)) + " |", "",
                  "Spearman correlation of a token's depth with its loss: "
                  + ("n/a" if corr is None else f"{corr:.3f}")]
        top = h.get("top_depth_tokens") or []
        if top:
            lines += ["", f"Tokens predicted at the greatest mean depth (at least {MIN_COUNT} occurrences):", "",
                      "| token | count | mean depth | mean loss |", "|---|---|---|---|",
                      *[f"| `{x['token']!r}` | {x['count']} | {x['mean_depth']:.2f} | {x['mean_loss']:.3f} |"
                        for x in top]]
    return "\n".join(lines) + "\n"


def write_lm_report(model, task, cfg, run_dir: Path, *, device: torch.device, split: str = "test",
                    quiet: bool = False, shard: Shard = SINGLE, out: Path | None, about: dict | None = None) -> dict:
    """`ponder eval` of a language model: the held-out split (validation; `split="train"`: the
    training windows), a training subset, the n-gram baselines, parameters and FLOPs per token;
    writes OUT/report.json, report.md and samples.html (tokens shaded by depth; OUT is usually
    RUN_DIR/eval, None writes nothing)."""
    ec = cfg.eval
    held_out = task.test if split == "test" else task.train
    if 0 < ec.max_samples < len(held_out):
        held_out = held_out.subset(np.arange(ec.max_samples))
    rng = np.random.default_rng(0)
    k = min(ec.train_samples, len(task.train)) if ec.train_samples > 0 else len(task.train)
    train_sub = task.train.subset(np.sort(rng.choice(len(task.train), k, replace=False)))
    h = evaluate_tokens(model, held_out, batch_size=ec.batch_size, device=device, shard=shard, tokenizer=task.tokenizer,
                        budgets=True)
    t = evaluate_tokens(model, train_sub, batch_size=ec.batch_size, device=device, shard=shard)
    n = task.seq_len
    m = int(getattr(model, "max_steps", 1))
    report = {
        "preset": cfg.preset, "task": task.name, "split": split, "evaluation": about,
        "held_out_split": "validation" if split == "test" else "train", "columns": list(task.metric.columns),
        "formats": figure_formats(task.metric), "lower_is_better": sorted(lower_is_better(task.metric)),
        "model_kind": cfg.kind("model"), "parameters": model.num_parameters(),
        "flops_per_token_inference": model.flops_per_token(n, h["mean_steps"]),
        "flops_per_token_train_forward": model.flops_per_token(n, m),
        "held_out": h, "train": t, "baselines": task.baselines(held_out, task.train),
    }
    if not shard.main:
        return report
    text = format_lm_report(report)
    if out is not None:
        write_eval_report(out, report, text)
    if out is not None and ec.samples_drawn > 0:
        figures = depth_sample_figures(model, held_out, ec.samples_drawn, device, tokenizer=task.tokenizer)
        atomic_write_text(out / "samples.html", samples_html(figures, f"{cfg.preset or task.name}: held-out windows "
                                                                      f"by depth"), what="the sample pictures")
    if not quiet:
        print(text)
    return report
