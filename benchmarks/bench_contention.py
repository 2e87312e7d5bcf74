"""Step time of the demo preset on a busy machine: torch threads x OpenMP wait policy, idle and
with one competing CPU-bound process (a single-threaded Python busy loop).

Each wait policy runs in its own process (OpenMP reads OMP_WAIT_POLICY when torch loads); inside
it, thread counts and competitor on/off are interleaved within every repeat, so slow drifts of
the machine hit all conditions alike. A phase = 1 discarded step, then timed optimizer steps
(`ponder.training.loop.train_step`, the loop's own body) for at least `--seconds`. The fp32 matmul rate
of the same process is measured at every repeat, and the CPU used by OTHER processes during each
phase (from /proc/stat, minus this process and its competitor) is recorded, so a phase that
shared the machine with someone else's job is visible in the table.
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

POLICIES = {"default": {}, "passive": {"OMP_WAIT_POLICY": "PASSIVE"}}
COMPETITOR = "print('ready', flush=True)\nwhile True: pass"
HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpu(pid: int | None) -> tuple[float, float, float, float]:
    """(wall, machine busy CPU-s, this process's CPU-s, competitor's CPU-s)."""
    f = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    comp = 0.0
    if pid is not None:
        st = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        comp = (int(st[11]) + int(st[12])) / HZ
    return time.perf_counter(), (f[0] + f[1] + f[2] + f[5] + f[6]) / HZ, time.process_time(), comp


def measure(args) -> None:
    """Child process: time the conditions under this process's wait policy; one JSON line each."""
    import torch

    from benchmarks.common import matmul_gflops
    from ponder.presets import get_config
    from ponder.runs.config import apply_overrides
    from ponder.runs.run import open_run
    from ponder.training.loop import train_step

    cfg = apply_overrides(get_config("demo"), ["--train.progress=false", "--health.monitors=false",
                                               "--train.threads=1"])
    with tempfile.TemporaryDirectory() as tmp:
        run = open_run(cfg, Path(tmp) / "run")
        run.model.train()
        for _ in range(10):  # warm-up: allocator, thread pool, the first fast-changing steps
            train_step(run)
        for rep in range(args.repeats):
            rate = {t: matmul_gflops(t) for t in (1, 2)}
            for threads in (1, 2):
                torch.set_num_threads(threads)
                for competitor in (False, True):
                    proc = subprocess.Popen([sys.executable, "-c", COMPETITOR], stdout=subprocess.PIPE) \
                        if competitor else None
                    if proc is not None:
                        proc.stdout.readline()
                        time.sleep(0.3)
                    try:
                        train_step(run)  # discarded
                        a, times = _cpu(proc and proc.pid), []
                        t0 = time.perf_counter()
                        while len(times) < 3 or time.perf_counter() - t0 < args.seconds:
                            t = time.perf_counter()
                            train_step(run)
                            times.append(time.perf_counter() - t)
                        b = _cpu(proc and proc.pid)
                    finally:
                        if proc is not None:
                            proc.kill()
                            proc.wait()
                    foreign = max(0.0, (b[1] - a[1]) - (b[2] - a[2]) - (b[3] - a[3])) / (b[0] - a[0])
                    print(json.dumps({"policy": args.policy, "rep": rep, "threads": threads, "competitor": competitor,
                                      "step_s": statistics.median(times), "steps": len(times),
                                      "foreign_cpu": foreign, "loadavg": os.getloadavg()[0],
                                      "gflops_1t": rate[1], "gflops_2t": rate[2]}), flush=True)


def run_all(repeats: int, seconds: float) -> list[dict]:
    """One child process per (repeat, policy), the policies alternating, so a drift of the shared
    machine's speed falls on both."""
    rows = []
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "GOMP_"))}
    for rep in range(repeats):
        for policy, env in POLICIES.items():
            out = subprocess.run([sys.executable, "-m", "benchmarks.bench_contention", "--child", "--policy", policy,
                                  "--repeats", "1", "--seconds", str(seconds)],
                                 env={**clean, **env}, capture_output=True, text=True, check=True,
                                 cwd=Path(__file__).resolve().parents[1])
            rows += [{**json.loads(line), "rep": rep} for line in out.stdout.splitlines() if line.startswith("{")]
    return rows


def table(rows: list[dict]) -> tuple[str, dict]:
    def cell(policy, threads, competitor):
        sel = [r for r in rows if (r["policy"], r["threads"], r["competitor"]) == (policy, threads, competitor)]
        return statistics.median(r["step_s"] for r in sel), min(r["step_s"] for r in sel), max(r["step_s"] for r in sel)

    lines = ["| threads | OpenMP wait policy | idle: step time | with one competitor: step time | slowdown |",
             "|---|---|---|---|---|"]
    figures = {}
    for threads in (1, 2):
        for policy in POLICIES:
            idle, busy = cell(policy, threads, False), cell(policy, threads, True)
            figures[f"{threads}_{policy}"] = {"idle_s": idle[0], "busy_s": busy[0], "slowdown": busy[0] / idle[0]}
            lines.append(f"| {threads} | {policy.upper() if policy != 'default' else 'default (active spin)'} | "
                         f"{1e3 * idle[0]:.0f} ms ({1e3 * idle[1]:.0f}-{1e3 * idle[2]:.0f}) | "
                         f"{1e3 * busy[0]:.0f} ms ({1e3 * busy[1]:.0f}-{1e3 * busy[2]:.0f}) | "
                         f"**{busy[0] / idle[0]:.1f}x** |")
    return "\n".join(lines), figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--policy", default="default", help=argparse.SUPPRESS)
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=6.0)
    args = ap.parse_args()
    if args.child:
        measure(args)
        return
    from benchmarks.common import write_fragment
    from ponder.training.host import auto_threads

    t0 = time.perf_counter()
    rows = run_all(args.repeats, args.seconds)
    md_table, figures = table(rows)
    rate1 = statistics.median(r["gflops_1t"] for r in rows)
    rate2 = statistics.median(r["gflops_2t"] for r in rows)
    foreign = max(r["foreign_cpu"] for r in rows)
    loads = [r["loadavg"] for r in rows]
    chosen = auto_threads()
    md = ["## Busy machines: threads, wait policy and one competing process", "",
          f"Demo preset training step (`ponder.training.loop.train_step`: forward, backward, AdamW, EMA), median over "
          f"{args.repeats} repeats of >= {args.seconds:g} s each (min-max in brackets); each repeat is one process per "
          f"wait policy, the policies alternating, and thread counts and competitor on/off interleave inside it. "
          f"Competitor: one "
          f"single-threaded Python busy loop. Same-run fp32 1024x1024 matmul rate: {rate1:.0f} GFLOP/s on 1 thread, "
          f"{rate2:.0f} on 2 (medians); load average {min(loads):.1f}-{max(loads):.1f}; CPU used by other processes "
          f"during a phase at most {foreign:.2f} cores. Whole benchmark {(time.perf_counter() - t0) / 60:.1f} min.", "",
          md_table, "",
          f"ponder's choice (`train.threads=0`): {chosen} thread(s) on this {os.cpu_count()}-core machine (one per "
          f"core) with `OMP_WAIT_POLICY=PASSIVE` unless the user set a policy: one competitor slowed it by "
          f"{figures[f'{min(chosen, 2)}_passive']['slowdown']:.1f}x, where threads that spin while waiting "
          f"(PyTorch's default) were slowed by {figures[f'{min(chosen, 2)}_default']['slowdown']:.1f}x; idle, passive "
          f"waiting cost {figures[f'{min(chosen, 2)}_passive']['idle_s'] / figures[f'{min(chosen, 2)}_default']['idle_s'] - 1:+.0%} "
          f"per step against spinning, and one thread took "
          f"{figures['1_passive']['idle_s'] / figures[f'{min(chosen, 2)}_passive']['idle_s']:.1f}x as long as "
          f"{min(chosen, 2)}."]
    write_fragment("contention", "\n".join(md), {"rows": rows, "figures": figures, "threads_chosen": chosen})


if __name__ == "__main__":
    main()
