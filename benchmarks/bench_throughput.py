"""Throughput of one training step (one ACT step with its T cycles, backward, optimizer step)
against the fp32 matmul rate measured in the same run, for the TRM-size config and the demo
config; where the demo config's time goes (profile); torch.compile where it pays."""
from __future__ import annotations

import statistics
import time

import torch

from benchmarks.common import matmul_gflops, write_fragment
from ponder.core.types import Batch
from ponder.models.flops import step_flops
from ponder.models.halting import Segment
from ponder.presets import get_config
from ponder.runs.config import apply_overrides
from ponder.runs.run import build_model
from ponder.training.objectives import per_sample_task_loss
from ponder.training.optim import AdamWSettings, build_optimizer

THREADS = 2


class _Task:
    def __init__(self, vocab_size: int, seq_len: int):
        self.vocab_size, self.seq_len = vocab_size, seq_len
        self.num_puzzle_ids = self.context_len = 0


def make_step(cfg, vocab: int, seq: int, batch: int, compiled: bool = False):
    torch.manual_seed(0)
    model = build_model(cfg, _Task(vocab, seq))
    opt = build_optimizer(model, AdamWSettings(), lr=1e-4)
    inputs = torch.randint(1, vocab, (batch, seq))
    labels = torch.randint(1, vocab, (batch, seq))
    data = Batch(inputs, labels, torch.zeros(batch))
    state = model.init_state(batch, "cpu")
    step_fn = torch.compile(model.step) if compiled else model.step
    head = model.halting
    task_loss = lambda lg, la: per_sample_task_loss(lg, la, "softmax")  # noqa: E731

    def run():
        _, out = step_fn(state, model.prepare(data))
        correct = (out.logits.argmax(-1) == labels).all(1)
        loss, _ = head.loss(Segment([out], torch.ones(batch, dtype=torch.long), labels, task_loss, [correct]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return run


def time_step(run, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def profile_top(run, rows: int = 8) -> list[tuple[str, float]]:
    from torch.profiler import profile

    run()
    with profile() as prof:
        for _ in range(3):
            run()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    return [(e.key, 100 * e.self_cpu_time_total / total) for e in events[:rows]]


def measure(name: str, cfg, vocab: int, seq: int, batch: int, repeats: int, rate: float) -> dict:
    flops = step_flops(cfg.model, seq_len=seq, vocab_size=vocab, batch_size=batch)
    seconds = time_step(make_step(cfg, vocab, seq, batch), repeats)
    achieved = flops["total"] / seconds / 1e9
    return {"name": name, "seconds": seconds, "samples_per_s": batch / seconds, "flops": flops,
            "gflops": achieved, "fraction": achieved / rate, "batch": batch, "seq": seq}


def main() -> None:
    torch.set_num_threads(THREADS)
    rate_before = matmul_gflops()
    trm = apply_overrides(get_config("trm-sudoku9"), [])
    demo = get_config("demo")
    results = [measure("TRM size (d=512, 2 layers, 8 heads, T=3, n=6, attention), 9x9 Sudoku, batch 64",
                       trm, 11, 81, 64, repeats=3, rate=rate_before),
               measure(f"demo (d={demo.model.d_model}, {demo.model.mixer} mixer, T={demo.model.h_cycles}, "
                       f"n={demo.model.l_cycles}), 6x6 Sudoku, batch {demo.train.batch_size}",
                       demo, 8, 36, demo.train.batch_size, repeats=15, rate=rate_before)]
    rate_after = matmul_gflops()
    rate = statistics.median([rate_before, rate_after])
    for r in results:  # fractions against the median of the two matmul measurements
        r["fraction"] = r["gflops"] / rate
    top = profile_top(make_step(demo, 8, 36, demo.train.batch_size))
    compiled = {}
    try:
        t_eager = time_step(make_step(demo, 8, 36, demo.train.batch_size), 15)
        t_comp = time_step(make_step(demo, 8, 36, demo.train.batch_size, compiled=True), 15, warmup=3)
        compiled = {"eager": t_eager, "compiled": t_comp, "speedup": t_eager / t_comp}
    except Exception as e:  # compile needs a working C++ toolchain; report, do not fail the benchmark
        compiled = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"}

    md = ["## Training-step throughput against the matmul rate", "",
          f"fp32 1024x1024 matmul rate, {THREADS} threads: {rate_before:.1f} GFLOP/s before and "
          f"{rate_after:.1f} after the step timings (median {rate:.1f} used below). One training step = "
          "one ACT step (T cycles: the first T-1 without gradient), loss, backward and an AdamW step; "
          "median over repeats. FLOPs are matmul FLOPs counted analytically (`ponder/models/flops.py`), "
          "backward as 2x the differentiated forward.", "",
          "| config | step time | samples/s | GFLOP no-grad fwd | GFLOP grad fwd+bwd | achieved GFLOP/s | fraction of matmul rate |",
          "|---|---|---|---|---|---|---|"]
    for r in results:
        f = r["flops"]
        md.append(f"| {r['name']} | {r['seconds'] * 1000:.0f} ms | {r['samples_per_s']:.0f} | "
                  f"{f['no_grad_forward'] / 1e9:.1f} | {(f['grad_forward'] + f['grad_backward']) / 1e9:.1f} | "
                  f"{r['gflops']:.1f} | **{100 * r['fraction']:.0f}%** |")
    md += ["", "Where the demo config's step time goes (torch profiler, self CPU time):", "",
           "| op | share |", "|---|---|"] + [f"| `{k}` | {v:.1f}% |" for k, v in top]
    if "error" in compiled:
        md += ["", f"`torch.compile` of the step on this CPU: failed ({compiled['error']})."]
    else:
        md += ["", f"`torch.compile(model.step)` on the demo config: {compiled['eager'] * 1000:.0f} ms eager vs "
               f"{compiled['compiled'] * 1000:.0f} ms compiled ({compiled['speedup']:.2f}x)."]
    write_fragment("throughput", "\n".join(md), {"matmul_gflops": [rate_before, rate_after], "results": results,
                                                 "profile_demo": top, "compile": compiled})


if __name__ == "__main__":
    main()
