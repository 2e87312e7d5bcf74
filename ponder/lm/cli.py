"""`ponder compare PRESET_A PRESET_B` and `ponder generate RUN_DIR --prompt TEXT`."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


from ponder.compare import compare
from ponder.errors import PonderError
from ponder.lm.generate import format_depths, generate, load_lm
from ponder.train import set_threads


def _cmd_compare(args, extra) -> int:
    result = compare(args.preset_a, args.preset_b, seeds=args.seeds, budget=args.budget, resume=args.resume,
                     extend_steps=args.extend_steps, out=Path(args.out) if args.out else None, overrides=extra,
                     quiet=args.quiet)
    out = Path(args.out) if args.out else Path("runs") / f"compare-{args.preset_a}-vs-{args.preset_b}"
    print((out / "compare.md").read_text(), end="")
    print(f"wrote {out / 'compare.json'}, compare.md, compare.png, halting.png", file=sys.stderr)
    return 0 if result else 1


def _cmd_generate(args, extra) -> int:
    if extra:
        raise PonderError("`ponder generate` takes no --section.key overrides")
    model, tokenizer, cfg = load_lm(Path(args.run_dir))
    set_threads(cfg.train.threads)
    g = generate(model, tokenizer, args.prompt, max_tokens=args.max_tokens, temperature=args.temperature,
                 top_k=args.top_k, top_p=args.top_p, seed=args.seed, max_len=cfg.model.max_len)
    print(g.text)
    if args.show_depth:
        print(format_depths(g))
    return 0


def add_lm_parsers(sub: "argparse._SubParsersAction") -> None:
    """The `compare` and `generate` sub-commands."""
    p = sub.add_parser("compare", help="train two presets on the same task, seeds and budget; compare them")
    p.add_argument("preset_a")
    p.add_argument("preset_b")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 for each preset (default 3)")
    p.add_argument("--budget", help="the same budget for both: steps:N, tokens:N, flops:N (training) or seconds:N")
    p.add_argument("--resume", action="store_true", help="continue unfinished runs in --out, skip finished ones")
    p.add_argument("--extend-steps", type=int, metavar="K", help="train every run of --out K more steps")
    p.add_argument("--out", help="directory of the runs and results (default runs/compare-A-vs-B)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(fn=_cmd_compare)
    p = sub.add_parser("generate", help="sample text from a trained language-model run")
    p.add_argument("run_dir", help="RUN_DIR (latest checkpoint), a checkpoint directory or RUN_DIR/best")
    p.add_argument("--prompt", default="", help="text to continue (default: start of a document)")
    p.add_argument("--max-tokens", type=int, default=100)
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens (0 = all)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus: the smallest set with this much mass")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--show-depth", action="store_true", help="list each generated token with its depth")
    p.set_defaults(fn=_cmd_generate)
