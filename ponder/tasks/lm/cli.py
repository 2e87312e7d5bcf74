"""`ponder generate RUN_DIR --prompt TEXT`: the language-modelling wing's verb.

The run is loaded by the run layer (`ponder.runs`), whose loader the command line hands to
`add_generate_parser`; the wing reads the run's tokenizer and samples.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

from ponder.core.errors import PonderError
from ponder.tasks.lm.generate import format_depths, generate, run_tokenizer
from ponder.training.host import set_threads


def _cmd_generate(args, extra) -> int:
    if extra:
        raise PonderError("`ponder generate` takes no --section.key overrides")
    model, cfg, ckpt = args.load_lm(Path(args.run_dir))
    tokenizer = run_tokenizer(ckpt)
    set_threads(cfg.train.threads)
    g = generate(model, tokenizer, args.prompt, max_tokens=args.max_tokens, temperature=args.temperature,
                 top_k=args.top_k, top_p=args.top_p, seed=args.seed, max_len=cfg.model.max_len)
    print(g.text)
    if args.show_depth:
        print(format_depths(g))
    return 0


def add_generate_parser(sub: "argparse._SubParsersAction", load_lm: Callable) -> None:
    """The `generate` sub-command. `load_lm(path) -> (model, cfg, checkpoint dir)` loads a trained
    language-model run (ponder.runs.trained.load_trained_lm)."""
    p = sub.add_parser("generate", help="sample text from a trained language-model run")
    p.add_argument("run_dir", help="RUN_DIR (latest checkpoint), a checkpoint directory or RUN_DIR/best")
    p.add_argument("--prompt", default="", help="text to continue (default: start of a document)")
    p.add_argument("--max-tokens", type=int, default=100)
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens (0 = all)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus: the smallest set with this much mass")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--show-depth", action="store_true", help="list each generated token with its depth")
    p.set_defaults(fn=_cmd_generate, load_lm=load_lm)
