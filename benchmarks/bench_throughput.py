"""Throughput of one training step (one ACT step with its T cycles, backward, optimizer step)
against the matmul rate of the same precision measured in the same run: the TRM-size step in
fp32 and, where the CPU has native bf16, under bf16; the same step run through TRM's own model
code when a folder holding it is given (`--trm-dir`); the demo config and where its time goes.

TRM's code (SamsungSAILMontreal/TinyRecursiveModels) is on no package registry and nothing here
downloads it: `--trm-dir DIR` names a folder holding its `models/` package (`common.py`,
`layers.py`, `losses.py`, `sparse_embedding.py`, `recursive_reasoning/trm.py` and empty
`__init__.py` files; it needs `pydantic` and `einops`). Without it the TRM rows are skipped with
the reason. On the CPU its loss needs two patches, made in memory: `softmax_cross_entropy`
rejects the `valid_mask` keyword its `ACTLossHead` passes, and flattens the logits with `.view`,
which fails on the non-contiguous logits an fp32 run gives it. TRM's step runs its own way
(`forward_dtype`: bf16 activations throughout, float32 norms); ponder's under autocast
(`train.precision=bf16`). Both step the same batch with AdamW; FLOPs are counted as each step
runs (TRM's feed-forward is 1536 wide at d=512 where ponder's is 1408, so its step holds more
matrix work: the table shows both counts).
"""
from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.common import counted_flops, matmul_gflops, write_fragment
from ponder.core.types import Batch
from ponder.models.halting import Segment
from ponder.models.recursive import ModelConfig
from ponder.presets import get_config
from ponder.runs.run import build_model
from ponder.training.objectives import per_sample_task_loss
from ponder.training.optim import AdamWSettings, build_optimizer
from ponder.training.precision import autocast, cpu_flags, native_bf16

THREADS = 2
TRM_SIZE = dict(d_model=512, n_heads=8, n_layers=2, mixer="attention", positions="rope", h_cycles=3, l_cycles=6)
VOCAB, SEQ, BATCH = 11, 81, 64  # 9x9 Sudoku tokens, TRM's batch per step here


class _Task:
    def __init__(self, vocab_size: int, seq_len: int):
        self.vocab_size, self.seq_len = vocab_size, seq_len
        self.num_puzzle_ids = self.context_len = 0
        self.grid_shape = (1, seq_len)


def _data(vocab: int, seq: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randint(1, vocab, (batch, seq), generator=g), torch.randint(1, vocab, (batch, seq), generator=g)


def make_step(cfg, vocab: int, seq: int, batch: int, precision: str = "fp32", compiled: bool = False):
    """ponder's training step of `cfg`'s model on a fixed random batch: one ACT step under the
    precision's autocast region, the halting head's loss, backward, AdamW."""
    torch.manual_seed(0)
    model = build_model(cfg, _Task(vocab, seq))
    opt = build_optimizer(model, AdamWSettings(), lr=1e-4)
    inputs, labels = _data(vocab, seq, batch)
    data = Batch(inputs, labels, torch.zeros(batch))
    state = model.init_state(batch, "cpu")
    step_fn = torch.compile(model.step) if compiled else model.step
    head = model.halting
    task_loss = lambda lg, la: per_sample_task_loss(lg, la, "softmax")  # noqa: E731
    device = torch.device("cpu")

    def run():
        with autocast(device, precision):  # one region per step, as the loop's
            _, out = step_fn(state, model.prepare(data))
            correct = (out.logits.argmax(-1) == labels).all(1)
            loss, _ = head.loss(Segment([out], torch.ones(batch, dtype=torch.long), labels, task_loss, [correct]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return run


def trm_step(trm_dir: Path, precision: str, vocab: int, seq: int, batch: int):
    """The TRM-size step through TRM's own code in `trm_dir` (see the module docstring): its
    ACT wrapper and loss head, one call per optimizer step (as its training loop), AdamW.
    Raises ImportError (with the reason) when the code or its dependencies cannot be had."""
    if not (trm_dir / "models" / "recursive_reasoning" / "trm.py").exists():
        raise ImportError(f"{trm_dir} holds no models/recursive_reasoning/trm.py")
    if str(trm_dir) not in sys.path:
        sys.path.append(str(trm_dir))
    losses = importlib.import_module("models.losses")
    trm = importlib.import_module("models.recursive_reasoning.trm")

    def softmax_cross_entropy(logits, labels, ignore_index: int = -100, valid_mask=None):  # the two patches
        del valid_mask  # labels equal to ignore_index are the mask already
        flat = logits.to(torch.float32).reshape(-1, logits.shape[-1])
        return F.cross_entropy(flat, labels.to(torch.long).reshape(-1),
                               ignore_index=ignore_index, reduction="none").view(labels.shape)

    losses.softmax_cross_entropy = softmax_cross_entropy
    torch.manual_seed(0)
    config = dict(batch_size=batch, seq_len=seq, puzzle_emb_ndim=0, puzzle_emb_len=0, num_puzzle_identifiers=1,
                  vocab_size=vocab, H_cycles=TRM_SIZE["h_cycles"], L_cycles=TRM_SIZE["l_cycles"], H_layers=0,
                  L_layers=TRM_SIZE["n_layers"], hidden_size=TRM_SIZE["d_model"], expansion=4.0,
                  num_heads=TRM_SIZE["n_heads"], pos_encodings="rope", halt_max_steps=16, halt_exploration_prob=0.1,
                  forward_dtype="bfloat16" if precision == "bf16" else "float32")
    model = losses.ACTLossHead(trm.TinyRecursiveReasoningModel_ACTV1(config), "softmax_cross_entropy")
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    inputs, labels = _data(vocab, seq, batch)
    data = {"inputs": inputs, "labels": labels, "puzzle_identifiers": torch.zeros(batch, dtype=torch.int32)}
    carry = [model.initial_carry(data)]

    def run():
        carry[0], loss, _, _, _ = model(return_keys=[], carry=carry[0], batch=data)
        opt.zero_grad(set_to_none=True)
        (loss / batch).backward()
        opt.step()

    return run


def time_step(run, repeats: int, warmup: int = 1) -> float:
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


def measure(code: str, precision: str, run, repeats: int) -> dict:
    """Median step seconds and the matrix FLOPs the step ran (counted on one more step)."""
    return _row(code, precision, run, time_step(run, repeats))


def measure_pair(precision: str, ours, theirs, repeats: int) -> list[dict]:
    """ponder's step and TRM's, timed in alternation (one step of each per round, after a warm-up
    of each), so that a change of the machine's load falls on both alike."""
    for run in (ours, theirs):
        run()
    times: dict[str, list[float]] = {"ponder": [], "TRM": []}
    for _ in range(repeats):
        for code, run in (("ponder", ours), ("TRM", theirs)):
            t0 = time.perf_counter()
            run()
            times[code].append(time.perf_counter() - t0)
    return [_row(code, precision, run, statistics.median(times[code]))
            for code, run in (("ponder", ours), ("TRM", theirs))]


def _row(code: str, precision: str, run, seconds: float) -> dict:
    flops = counted_flops(run)
    return {"code": code, "precision": precision, "seconds": seconds, "flops": flops, "gflops": flops / seconds / 1e9}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trm-dir", type=Path, default=None,
                        help="a folder holding TRM's models/ package (TinyRecursiveModels); without it the TRM rows "
                             "are skipped")
    parser.add_argument("--threads", type=int, default=THREADS)
    parser.add_argument("--repeats", type=int, default=3, help="timed TRM-size steps per row (after one warm-up)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    flags = cpu_flags()
    native = native_bf16(flags) or []
    precisions = ["fp32", "bf16"] if native else ["fp32"]
    rates = {p: [matmul_gflops(dtype=torch.float32 if p == "fp32" else torch.bfloat16)] for p in precisions}
    cfg = get_config("trm-sudoku9")
    cfg.model = ModelConfig(**TRM_SIZE)
    trm_skip = None if args.trm_dir else "no --trm-dir given (TRM's code is on no package registry)"
    rows = []
    for precision in precisions:
        ours = make_step(cfg, VOCAB, SEQ, BATCH, precision)
        if trm_skip is None:
            try:
                theirs = trm_step(args.trm_dir.resolve(), precision, VOCAB, SEQ, BATCH)
            except ImportError as e:
                trm_skip = f"TRM's code could not be imported from {args.trm_dir}: {e}"
            else:
                rows += measure_pair(precision, ours, theirs, args.repeats)
                continue
        rows.append(measure("ponder", precision, ours, args.repeats))
    demo = get_config("demo")
    demo_vocab, demo_seq = 8, 36
    demo_run = make_step(demo, demo_vocab, demo_seq, demo.train.batch_size)
    demo_row = measure("ponder", "fp32", demo_run, repeats=15)
    for p in precisions:
        rates[p].append(matmul_gflops(dtype=torch.float32 if p == "fp32" else torch.bfloat16))
    rate = {p: statistics.median(v) for p, v in rates.items()}
    for r in [*rows, demo_row]:
        r["fraction"] = r["gflops"] / rate[r["precision"]]
    by = {(r["code"], r["precision"]): r for r in rows}
    for r in rows:
        if r["code"] == "TRM":
            r["ponder_speedup"] = r["seconds"] / by[("ponder", r["precision"])]["seconds"]
    top = profile_top(demo_run)

    flag_text = ", ".join(native) if native else "none (no amx_bf16 or avx512_bf16: bf16 would be emulated)"
    md = ["## Training-step throughput against the matmul rate", "",
          f"`python -m benchmarks.bench_throughput --threads {args.threads}"
          + (" --trm-dir DIR`" if args.trm_dir else "`") + f", {args.threads} thread(s). Native bf16 flags of this "
          f"CPU: {flag_text}. Same-run 1024x1024 matmul rate: "
          + "; ".join(f"{p} {v[0]:.0f} GFLOP/s before and {v[1]:.0f} after the step timings (median {rate[p]:.0f})"
                      for p, v in rates.items()) + ". "
          "One training step = one ACT step (T cycles: the first T-1 without gradient), loss, backward and an "
          f"AdamW step on a batch of {BATCH} 9x9 Sudoku inputs; median of {args.repeats} after a warm-up "
          "(ponder's and TRM's steps of one precision timed in alternation). FLOPs are "
          "the matrix FLOPs each step really ran (counted as it runs); \"of matmul\" is the achieved rate over the "
          "same-run matmul rate of that precision.", "",
          f"TRM size: d={TRM_SIZE['d_model']}, {TRM_SIZE['n_layers']} layers, {TRM_SIZE['n_heads']} heads, "
          f"T={TRM_SIZE['h_cycles']}, n={TRM_SIZE['l_cycles']}, attention with RoPE, {SEQ} tokens.", "",
          "| code | precision | step time | GFLOP per step | achieved GFLOP/s | of same-run matmul | TRM's time over ponder's |",
          "|---|---|---|---|---|---|---|"]
    for r in rows:
        speed = f"**{r['ponder_speedup']:.2f}x**" if "ponder_speedup" in r else ""
        md.append(f"| {r['code']} | {r['precision']} | {r['seconds'] * 1000:.0f} ms | {r['flops'] / 1e9:.0f} | "
                  f"{r['gflops']:.1f} | **{100 * r['fraction']:.0f}%** | {speed} |")
    if trm_skip:
        md += ["", f"TRM's own code: skipped ({trm_skip})."]
    else:
        md += ["", "TRM rows: TRM's model and loss head (`models/recursive_reasoning/trm.py`, `models/losses.py`) "
               "with its config for this size (hidden 512, L_layers 2, H_layers 0, 8 heads, expansion 4, H_cycles 3, "
               "L_cycles 6, rope, puzzle_emb_ndim 0, halt_max_steps 16), `forward_dtype` float32 or bfloat16, the "
               "two CPU patches of its loss (module docstring), AdamW. Their feed-forward is 1536 wide where ponder's "
               "is 1408: the FLOP column shows the difference, the last column compares times of the same step."]
    md += ["", f"Demo config (d={demo.model.d_model}, {demo.model.mixer} mixer, T={demo.model.h_cycles}, "
               f"n={demo.model.l_cycles}, 6x6 Sudoku, batch {demo.train.batch_size}, fp32): "
               f"{demo_row['seconds'] * 1000:.0f} ms per step, {demo_row['gflops']:.1f} GFLOP/s, "
               f"{100 * demo_row['fraction']:.0f}% of the fp32 matmul rate. Where its time goes (torch profiler, "
               "self CPU time):", "",
           "| op | share |", "|---|---|"] + [f"| `{k}` | {v:.1f}% |" for k, v in top]
    write_fragment("throughput", "\n".join(md), {"threads": args.threads, "native_bf16": native,
                                                 "matmul_gflops": rates, "rows": rows, "trm_skipped": trm_skip,
                                                 "demo": demo_row, "profile_demo": top})


if __name__ == "__main__":
    main()
