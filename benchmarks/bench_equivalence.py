"""Did the restructuring of the core change any number? Three checks, written as one section:

1. The debug preset, trained now, against the metrics measured before the restructuring
   (tests/golden/debug_preset.json, also pinned by tests/test_train.py): the largest difference
   of every logged figure.
2. Short runs of twelve configurations (every halting head, both styles, adapter with logit
   clamp, two gradient estimators, the mlp mixer with an EMA, the controller, mazes, parity):
   the SHA-256 of their final weights against the hashes the code before the restructuring gave
   on this machine (benchmarks/golden_weights.json).
3. Optionally (`--parity OLD_RUN NEW_RUN`): two finished runs of the same parity preset and
   seed, one trained by the code before the restructuring and one by today's, compared record by
   record (a trajectory-trained head, where the embedding's gradient is now summed once per
   trajectory instead of once per step, so the weights may differ in the last bits).
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import RESULTS, ROOT, write_fragment
from ponder.presets import get_config
from ponder.runs.config import apply_overrides
from ponder.runs.run import train_run
from ponder.training.checkpoint import read_weights, resolve_checkpoint


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def golden_check() -> dict:
    golden = json.loads((ROOT / "tests" / "golden" / "debug_preset.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        report = train_run(get_config("debug"), Path(tmp) / "run")
        recs = _records(Path(tmp) / "run")
    now = {"train": [r for r in recs if r["kind"] == "train"], "eval": [r for r in recs if r["kind"] == "eval"]}
    worst, count = 0.0, 0
    for kind in ("train", "eval"):
        for want, got in zip(golden[kind], now[kind]):
            for key, value in want.items():
                worst = max(worst, abs(got[key] - value))
                count += 1
    for key, value in golden["final_report"].items():
        values = value if isinstance(value, list) else [value]
        got = report["held_out"][key]
        for v, g in zip(values, got if isinstance(got, list) else [got]):
            worst = max(worst, abs(g - v))
            count += 1
    return {"figures": count, "max_abs_diff": worst}


def weights_sha256(run_dir: Path) -> str:
    ckpt = resolve_checkpoint(run_dir)
    h = hashlib.sha256()
    for which in ("model", "ema"):
        tensors = read_weights(ckpt, which)
        for k in sorted(tensors or {}):
            h.update(k.encode())
            h.update(tensors[k].numpy().tobytes())
    return h.hexdigest()


def weights_check() -> dict:
    golden = json.loads((ROOT / "benchmarks" / "golden_weights.json").read_text())
    torch.set_num_threads(1)
    out = {}
    for name, v in golden["variants"].items():
        cfg = apply_overrides(get_config(v["preset"]), [*v["overrides"], "--train.threads=1", "--train.progress=false"])
        with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
            train_run(cfg, Path(tmp) / "run")
            out[name] = weights_sha256(Path(tmp) / "run") == v["weights_sha256"]
    return out


def parity_check(old: Path, new: Path) -> dict:
    a = [r for r in _records(old) if r["kind"] == "eval"]
    b = [r for r in _records(new) if r["kind"] == "eval"]
    rows = [{"step": x["step"], "old": x["test_exact"], "new": y["test_exact"], "old_steps": x["test_mean_steps"],
             "new_steps": y["test_mean_steps"]} for x, y in zip(a, b)]
    cfg = json.loads((new / "config.json").read_text())
    return {"preset": cfg["preset"], "seed": cfg["train"]["seed"], "head": cfg["halt"]["kind"], "rows": rows,
            "final_old": json.loads((old / "eval" / "report.json").read_text())["held_out"]["exact"],
            "final_new": json.loads((new / "eval" / "report.json").read_text())["held_out"]["exact"]}


def main() -> None:
    given = [Path(a) for a in sys.argv[sys.argv.index("--parity") + 1:][:2]] if "--parity" in sys.argv else []
    if "--parity" in sys.argv and (len(given) != 2 or not all((d / "eval" / "report.json").exists() for d in given)):
        sys.exit("bench_equivalence: --parity needs two finished run directories (before, after)")
    g = golden_check()
    w = weights_check()
    same = [k for k, ok in w.items() if ok]
    differ = [k for k, ok in w.items() if not ok]
    md = ["## The restructured core against the numbers before it", "",
          f"Debug preset, trained now, against the metrics measured before the restructuring "
          f"(`tests/golden/debug_preset.json`): {g['figures']} figures (every train and eval record and the final "
          f"held-out report), largest absolute difference **{g['max_abs_diff']:.2g}**.", "",
          f"Final weights of short runs, against the hashes the code before the restructuring gave on this machine "
          f"(`benchmarks/golden_weights.json`): **{len(same)} of {len(w)} bit-identical** ({', '.join(same)})"
          + (f"; different: {', '.join(differ)}." if differ else ".")]
    data: dict = {"golden": g, "weights": w}
    saved = RESULTS / "equivalence.json"
    p = None
    if "--parity" in sys.argv:
        p = parity_check(*given)
        p["measured"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    elif saved.exists():  # keep the last comparison (it needs a checkout of the old code to redo)
        p = json.loads(saved.read_text()).get("parity")
    if p is not None:
        data["parity"] = p
        md += ["", f"`{p['preset']}` (head {p['head']}, seed {p['seed']}) trained for {p['rows'][-1]['step']} steps by "
                   f"the code before and after (measured {p.get('measured', 'with this section')}): held-out exact at "
                   "each evaluation (mean steps in brackets).", "",
               "| step | before | after |", "|---|---|---|",
               *[f"| {r['step']} | {100 * r['old']:.1f}% ({r['old_steps']:.2f}) | {100 * r['new']:.1f}% "
                 f"({r['new_steps']:.2f}) |" for r in p["rows"]], "",
               f"Final held-out exact: {100 * p['final_old']:.1f}% before, {100 * p['final_new']:.1f}% after: "
               + ("identical at every evaluation." if all(r["old"] == r["new"] for r in p["rows"]) else
                  "the runs part ways; the parity figures above are one draw of that spread, not a changed result.")]
    write_fragment("equivalence", "\n".join(md), data)


if __name__ == "__main__":
    main()
