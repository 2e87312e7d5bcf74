"""One process against two (torchrun, gloo) on the CPU, and the HTML report of the demo run.

1. The demo preset for `--steps` optimizer steps, alternately as one process (all cores) and as
   two torchrun processes (one core each), `--repeats` times: the metric records and final
   weights of the two are compared (they should agree to float rounding), and the median
   training time per step (from the runs' own logs) is compared within the same run, beside the
   fp32 matmul rate and the load of the machine.
2. `ponder report` on the demo run (a fresh `ponder train demo` to its target, unless
   `--demo-run` names one): the median time to write the page, and a screenshot of its top in
   headless chromium for the README (docs/report.png), when chromium and selenium are present.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from benchmarks.common import RESULTS, ROOT, matmul_gflops, write_fragment
from ponder.presets import get_config
from ponder.runs.config import apply_overrides
from ponder.runs.run import open_run
from ponder.training.loop import train_step

PY = sys.executable


def _train(run_dir: Path, nproc: int, steps: int) -> float:
    args = ["-m", "ponder", "train", "demo", "--run-dir", str(run_dir), f"--train.steps={steps}",
            "--train.target=0", "--train.progress=false", "--train.eval_every=100", f"--train.log_every=10"]
    cmd = [PY, *args] if nproc == 1 else [PY, "-m", "torch.distributed.run", "--standalone",
                                           f"--nproc-per-node={nproc}", *args]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return time.perf_counter() - t0


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _step_seconds(run_dir: Path) -> float:
    return statistics.median(r["time_sec_per_step"] for r in _records(run_dir) if r["kind"] == "train")


def _compare(a: Path, b: Path, steps: int) -> dict:
    ra, rb = _records(a), _records(b)
    worst_rel, worst_key = 0.0, None
    for x, y in zip(ra, rb):
        if x["kind"] not in ("train", "eval"):
            continue
        for k, v in x.items():
            if k.startswith("time") or not isinstance(v, float) or not isinstance(y.get(k), float):
                continue
            rel = abs(v - y[k]) / max(abs(v), 1e-8)
            if rel > worst_rel:
                worst_rel, worst_key = rel, k
    wa = load_file(a / "checkpoints" / f"step-{steps:07d}" / "model.safetensors")
    wb = load_file(b / "checkpoints" / f"step-{steps:07d}" / "model.safetensors")
    ea = json.loads((a / "eval" / "report.json").read_text())["held_out"]
    eb = json.loads((b / "eval" / "report.json").read_text())["held_out"]
    return {"same_records": [(r["step"], r["kind"]) for r in ra] == [(r["step"], r["kind"]) for r in rb],
            "max_rel_diff": worst_rel, "max_rel_key": worst_key,
            "max_weight_diff": max((wa[k] - wb[k]).abs().max().item() for k in wa),
            "exact_one": ea["exact"], "exact_two": eb["exact"], "steps_equal": ea["steps"] == eb["steps"]}


def sensitivity(steps: int = 4, eps: float = 1e-7) -> dict[str, float]:
    """One process, this preset: the largest weight difference after `steps` optimizer steps
    between a run and the same run whose initial weights were scaled by (1 + eps * noise), for
    the preset's sequence-MLP mixer and for an attention mixer. It says how much the training
    itself amplifies a rounding-sized difference, whatever causes it."""
    out = {}
    for mixer in ("mlp", "attention"):
        weights = []
        for e in (0.0, eps):
            with tempfile.TemporaryDirectory() as tmp:
                cfg = apply_overrides(get_config("demo"), ["--train.tensorboard=off", "--train.threads=1",
                                                           "--train.progress=false", f"--model.mixer={mixer}"])
                run = open_run(cfg, Path(tmp) / "run")
                run.callbacks.call("on_train_start", run)
                with torch.no_grad():
                    gen = torch.Generator().manual_seed(1)
                    for p in run.model.parameters():
                        p.mul_(1 + e * torch.randn(p.shape, generator=gen))
                for _ in range(steps):
                    train_step(run)
                weights.append({k: v.clone() for k, v in run.model.state_dict().items()})
        out[mixer] = max((weights[0][k] - weights[1][k]).abs().max().item() for k in weights[0])
    return {"steps": steps, "eps": eps, **out}


def agreement(cmp: dict, sens: dict | None) -> str:
    """What the equality figures say, in words chosen by the figures."""
    if cmp["max_weight_diff"] < 1e-5:
        return ("The two processes sum their halves of each gradient in another order than one process sums the "
                "whole batch; everything else is the same arithmetic, so the runs agree to float rounding.")
    text = ("**The runs part by more than float rounding on this preset**, while on the debug preset (attention "
            "mixer) two processes match one to float rounding (tests/test_distributed.py checks it at every run "
            "of the suite).")
    if sens:
        text += (f" The training of this preset amplifies any rounding-sized difference: in ONE process, scaling "
                 f"the initial weights by (1 + {sens['eps']:.0e} x noise) leaves the weights "
                 f"{sens['mlp']:.1e} apart after {sens['steps']} optimizer steps with its sequence-MLP mixer, "
                 f"against {sens['attention']:.1e} with an attention mixer. Two processes only change the order "
                 "in which each gradient is summed, so they land as far apart as two single-process runs with a "
                 "perturbation of that size would: equivalent runs, not identical ones.")
    return text


def _screenshot(page: Path, out: Path) -> bool:
    sys.path.insert(0, str(ROOT / "tests"))
    from browser_support import open_browser, why_no_browser

    if why_no_browser():
        return False
    import matplotlib.image as mpimg

    driver = open_browser(1100, 1500)
    try:
        driver.get(page.resolve().as_uri())
        driver.save_screenshot(str(out))
    finally:
        driver.quit()
    mpimg.imsave(out, mpimg.imread(out)[:1500])
    return True


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--demo-run", help="an existing demo run to write the report of")
    ap.add_argument("--rerender", action="store_true", help="rewrite the section from the saved figures")
    ap.add_argument("--sensitivity-only", action="store_true",
                    help="measure only the amplification of a perturbation; keep the other saved figures")
    args = ap.parse_args(argv)
    if args.rerender or args.sensitivity_only:
        saved = json.loads((RESULTS / "scale_out.json").read_text())
        if args.sensitivity_only:
            saved["sensitivity"] = sensitivity()
        render(saved)
        return
    rate = matmul_gflops(threads=os.cpu_count())
    load_before = os.getloadavg()[0]
    times: dict[int, list[float]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as tmp:
        dirs = {}
        for rep in range(args.repeats):
            for nproc in (1, 2):
                d = Path(tmp) / f"p{nproc}-{rep}"
                _train(d, nproc, args.steps)
                times[nproc].append(_step_seconds(d))
                dirs[nproc] = d
        cmp = _compare(dirs[1], dirs[2], args.steps)
        demo = Path(args.demo_run) if args.demo_run else Path(tmp) / "demo"
        if not args.demo_run:
            subprocess.run([PY, "-m", "ponder", "train", "demo", "--run-dir", str(demo), "--train.progress=false"],
                           check=True, capture_output=True, text=True)
        report_times = []
        for _ in range(3):
            t0 = time.perf_counter()
            subprocess.run([PY, "-m", "ponder", "report", str(demo)], check=True, capture_output=True, text=True)
            report_times.append(time.perf_counter() - t0)
        page = demo / "report.html"
        size_kb = page.stat().st_size / 1024
        shot = ROOT / "docs" / "report.png"
        shot.parent.mkdir(exist_ok=True)
        shot_ok = _screenshot(page, shot)
        demo_steps = max(r["step"] for r in _records(demo))
    load_after = os.getloadavg()[0]
    render({"steps": args.steps, "repeats": args.repeats, "matmul_gflops": rate, "load_before": load_before,
            "load_after": load_after, "step_seconds": times, "compare": cmp, "report_seconds": report_times,
            "report_kib": size_kb, "screenshot": shot_ok, "demo_steps": demo_steps, "sensitivity": sensitivity()})


def render(d: dict) -> None:
    """Write the section (and its figures) from the measured figures."""
    cmp, times = d["compare"], {int(k): v for k, v in d["step_seconds"].items()}
    one, two = statistics.median(times[1]), statistics.median(times[2])
    md = [
        "## Scale out and look in: one process against two, and the HTML report", "",
        f"The demo preset for {d['steps']} optimizer steps (global batch 64), as one process on all cores "
        f"and as two `torchrun` processes (gloo, one core each, 32 samples each), alternated {d['repeats']} "
        f"times (`benchmarks/bench_scale_out.py`). fp32 matmul rate in the same run: {d['matmul_gflops']:.0f} "
        f"GFLOP/s; load average {d['load_before']:.1f} before, {d['load_after']:.1f} after (2 cores; above 2 "
        "means other work shared the machine).", "",
        "| | one process | two processes |", "|---|---|---|",
        f"| median training time per step (medians of each run's logged windows) | {1e3 * one:.0f} ms | "
        f"{1e3 * two:.0f} ms ({one / two:.2f}x the speed of one) |",
        f"| held-out exact after {d['steps']} steps | {100 * cmp['exact_one']:.1f}% | {100 * cmp['exact_two']:.1f}% |",
        "", "Equality of the two (same seed, same global batch):", "",
        f"- same metric records (steps and kinds): {'yes' if cmp['same_records'] else 'NO'}; largest relative "
        f"difference of any logged training or evaluation figure: {cmp['max_rel_diff']:.1e} ({cmp['max_rel_key']});",
        f"- largest absolute difference of any weight after {d['steps']} steps: {cmp['max_weight_diff']:.1e};",
        f"- steps used per held-out sample in the final evaluation identical: {'yes' if cmp['steps_equal'] else 'no'}.",
        "", agreement(cmp, d.get("sensitivity")), "", "On 2 cores two processes of one thread each do the work of one process of two "
        "threads, with one all-reduce of the gradients per step on top.", "",
        f"`ponder report` on the demo run ({d['demo_steps']} steps; the page holds the curves, the budget plot, the "
        f"heatmap, the health tables and six drawn samples): median {statistics.median(d['report_seconds']):.1f} s "
        f"over 3 writes (including Python and torch start-up and loading the model), {d['report_kib']:.0f} KiB of "
        "self-contained HTML." + (" Its top, in headless chromium: `docs/report.png` (shown in the README)."
                                  if d["screenshot"] else " (No browser here: no screenshot taken.)"),
    ]
    write_fragment("scale_out", "\n".join(md), d)
    print("\n".join(md))

if __name__ == "__main__":
    main()
