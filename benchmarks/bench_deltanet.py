"""Gated DeltaNet on CPU: the chunked (WY/UT) form against the recurrent form over sequence length,
and the inference memory of recurrent decoding (a fixed-size state) against an attention KV cache.

Usage: python -m benchmarks.bench_deltanet [--threads 1] [--repeats 5] [--quick]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from benchmarks.common import matmul_gflops, write_fragment
from ponder.experiments.diagnose import peak_torch_bytes
from ponder.models.attention import Rotary
from ponder.models.lm.deltanet import GatedDeltaNet, gated_delta_rule_chunked, gated_delta_rule_recurrent
from ponder.models.lm.layers import CausalAttention

B, H, DK, DV, CHUNK = 1, 4, 64, 64, 64  # one sequence, 4 heads of 64: a d=256 layer
D_MODEL = 256


def rule_inputs(n: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(B, H, n, DK, generator=gen), dim=-1)
    k = F.normalize(torch.randn(B, H, n, DK, generator=gen), dim=-1)
    v = torch.randn(B, H, n, DV, generator=gen)
    g = -0.1 * torch.rand(B, H, n, generator=gen)
    beta = torch.rand(B, H, n, generator=gen)
    return q, k, v, g, beta


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def chunked_flops(n: int) -> float:
    """Matmul FLOPs of the chunked form (padded to whole chunks): per chunk of c tokens the
    products βK·Kᵀ, Q·Kᵀ (2c²d_k each), the triangular solve (c²(d_v + d_k)), scores·U (2c²d_v)
    and the three state products W·S, Q·S, Kᵀ·U (2c·d_k·d_v each)."""
    c = CHUNK
    chunks = -(-n // c)
    per_chunk = 4 * c * c * DK + c * c * (DV + DK) + 2 * c * c * DV + 6 * c * DK * DV
    return B * H * chunks * per_chunk


def timing_rows(lengths: list[int], repeats: int) -> list[dict]:
    rows = []
    with torch.no_grad():
        for n in lengths:
            args = rule_inputs(n)
            t_rec = median_seconds(lambda: gated_delta_rule_recurrent(*args), repeats)
            t_chunk = median_seconds(lambda: gated_delta_rule_chunked(*args, chunk_size=CHUNK), repeats)
            o_rec, s_rec = gated_delta_rule_recurrent(*args)
            o_chunk, s_chunk = gated_delta_rule_chunked(*args, chunk_size=CHUNK)
            rows.append({"n": n, "recurrent_s": t_rec, "chunked_s": t_chunk, "speedup": t_rec / t_chunk,
                         "chunked_gflops": chunked_flops(n) / t_chunk / 1e9,
                         "max_abs_diff_out": (o_rec - o_chunk).abs().max().item(),
                         "max_abs_diff_state": (s_rec - s_chunk).abs().max().item()})
            print(rows[-1], flush=True)
    return rows


def decode_deltanet(layer: GatedDeltaNet, xs: torch.Tensor) -> None:
    cache = layer.empty_cache(1)
    for t in range(xs.shape[0]):
        _, cache = layer.step(xs[t:t + 1], cache)


def decode_attention(attn: CausalAttention, xs: torch.Tensor) -> None:
    keys, values = [], []
    for t in range(xs.shape[0]):
        q, k, v = attn.project(xs[t:t + 1].unsqueeze(0), torch.tensor([t]))
        keys.append(k)
        values.append(v)
        attn.attend(q, torch.cat(keys, 2), torch.cat(values, 2), torch.tensor([[t]]))


def memory_rows(lengths: list[int]) -> list[dict]:
    torch.manual_seed(0)
    layer = GatedDeltaNet(D_MODEL, H, DK, chunk_size=CHUNK)
    attn = CausalAttention(D_MODEL, H, Rotary(D_MODEL // H, max(lengths), 10000.0))
    rows = []
    with torch.no_grad():
        for n in lengths:
            xs = torch.randn(n, D_MODEL)
            _, dn = peak_torch_bytes(lambda: decode_deltanet(layer, xs))
            _, at = peak_torch_bytes(lambda: decode_attention(attn, xs))
            _, full = peak_torch_bytes(lambda: layer(xs.unsqueeze(0)))
            rows.append({"n": n, "recurrent_decode_bytes": dn, "attention_decode_bytes": at,
                         "chunked_prefill_bytes": full})
            print(rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark; argv None (as `make bench` calls it) means the defaults."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="short lengths only (a smoke run)")
    args = parser.parse_args([] if argv is None else argv)
    torch.set_num_threads(args.threads)
    lengths = [128, 512] if args.quick else [128, 256, 512, 1024, 2048, 4096]
    mem_lengths = [64, 256] if args.quick else [256, 1024, 4096]
    load_before = os.getloadavg()[0]
    rate_before = matmul_gflops()
    timing = timing_rows(lengths, args.repeats)
    rate_after = matmul_gflops()
    memory = memory_rows(mem_lengths)
    rate = statistics.median([rate_before, rate_after])
    load_after = os.getloadavg()[0]
    md = ["## Gated DeltaNet on CPU (`ponder.models.lm.deltanet`)", "",
          f"The gated delta rule alone, forward, {H} heads with d_k = d_v = {DK}, one sequence, chunk {CHUNK}, "
          f"{args.threads} thread(s); median of {args.repeats} runs after a warm-up. The fp32 1024² matmul "
          f"rate measured in the same run (before and after the timings) was {rate_before:.0f} and "
          f"{rate_after:.0f} GFLOP/s; the chunked form's matmul FLOPs per second are shown as a share of "
          "their median. The last columns are the largest differences between the two forms' outputs and "
          "final states (float32). The machine's 1-minute load average was "
          f"{load_before:.1f} before and {load_after:.1f} after (other processes share the cores, so single "
          "timings jump; the matmul rate shows how fast the machine was meanwhile).", "",
          "| tokens | recurrent | chunked | chunked speed-up | chunked GFLOP/s (share of matmul rate) "
          "| max diff output / state |",
          "|---:|---:|---:|---:|---:|---|"]
    md += [f"| {r['n']} | {1e3 * r['recurrent_s']:.1f} ms | {1e3 * r['chunked_s']:.1f} ms | "
           f"{r['speedup']:.1f}x | {r['chunked_gflops']:.1f} ({100 * r['chunked_gflops'] / rate:.0f}%) | "
           f"{r['max_abs_diff_out']:.1e} / {r['max_abs_diff_state']:.1e} |" for r in timing]
    md += ["", f"Inference memory against sequence length (d_model {D_MODEL}, no gradient): peak bytes "
           "allocated by PyTorch while running, read from torch.profiler's allocator events. Recurrent "
           "decoding feeds one token at a time through `GatedDeltaNet.step`, whose cache is the conv window "
           "and the (h, d_k, d_v) state; attention decoding keeps a growing key/value cache; chunked prefill "
           "runs the whole sequence at once.", "",
           "| tokens | recurrent decode | attention decode (KV cache) | chunked prefill |", "|---:|---:|---:|---:|"]
    md += [f"| {r['n']} | {r['recurrent_decode_bytes'] / 1024:.0f} KiB | {r['attention_decode_bytes'] / 1024:.0f} KiB "
           f"| {r['chunked_prefill_bytes'] / 1024:.0f} KiB |" for r in memory]
    write_fragment("deltanet", "\n".join(md), {"threads": args.threads, "repeats": args.repeats,
                                               "matmul_gflops": [rate_before, rate_after], "timing": timing,
                                               "memory": memory, "load_average": [load_before, load_after], "heads": H, "d_k": DK, "d_v": DV,
                                               "chunk": CHUNK, "d_model": D_MODEL})


if __name__ == "__main__":
    main(sys.argv[1:])
