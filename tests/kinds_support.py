"""Tiny runs of every preset family, shared by the tests that look at each kind of run with every
command (test_every_command.py) and run the README's examples (test_readme_examples.py)."""
from __future__ import annotations

from pathlib import Path

from ponder.cli import main
from ponder.presets import get_config
from ponder.runs.config import apply_overrides
from ponder.runs.run import open_run

BASE = ["--train.steps=4", "--train.eval_every=2", "--train.checkpoint_every=2", "--train.log_every=1",
        "--train.progress=false", "--train.threads=1", "--train.tensorboard=off", "--eval.samples_drawn=2"]
SMALL_EVAL = ["--eval.batch_size=16", "--eval.train_samples=16", "--eval.during_training_samples=16"]
LM = ["--task.max_files=0", "--task.vocab_size=300", "--task.seq_len=16", "--model.vocab_size=300",
      "--model.max_len=16", "--model.d_model=16", "--model.n_heads=2", "--train.batch_size=4", "--train.warmup_steps=1",
      "--eval.max_samples=8", "--eval.batch_size=8", "--eval.train_samples=8", "--eval.during_training_samples=8"]
ARC = ["--task.max_tasks=2", "--task.views=2", "--model.d_model=16", "--model.n_heads=2", "--model.n_layers=1",
       "--train.batch_size=4", "--halt.max_steps=2", "--eval.batch_size=16", "--eval.train_samples=8",
       "--eval.during_training_samples=8"]
KINDS = {
    "sudoku": ("debug", []),
    "maze": ("maze9", ["--task.n_train=64", "--task.n_test=16", "--model.d_model=16", "--model.n_heads=2",
                       "--train.batch_size=8", "--halt.max_steps=3", *SMALL_EVAL]),
    "parity": ("parity16", ["--task.length=8", "--task.n_train=200", "--task.n_test=32", "--model.d_model=16",
                            "--train.batch_size=16", "--halt.max_steps=3", *SMALL_EVAL]),
    "cell": ("parity64-rnn", ["--task.length=8", "--task.n_train=200", "--task.n_test=32", "--model.d_model=16",
                              "--model.embed_dim=16", "--train.batch_size=16", "--halt.max_steps=4", *SMALL_EVAL]),
    "hybrid LM": ("lm-small-hybrid", [*LM, "--model.n_layers=2", "--model.attention_layers=1", "--model.dn_heads=2",
                                      "--model.dn_head_dim=8", "--model.chunk_size=8"]),
    "recursive LM": ("lm-small-recursive", [*LM, "--model.n_layers=1"]),
    "ARC demonstrations": ("arc-small-demos", ARC),
    "ARC embedding": ("arc-small-embedding", ARC),
}
ARC_KINDS = ("ARC demonstrations", "ARC embedding")
LM_KINDS = ("hybrid LM", "recursive LM")


def _corpus(path: Path) -> Path:
    path.write_text("\n".join(f"def f_{i}(x):\n    return x + {i % 7}\n" for i in range(400)))
    return path


def _overrides(kind: str, corpus: Path) -> list[str]:
    preset, extra = KINDS[kind]
    return [*BASE, *extra, *([f"--task.corpus={corpus}"] if kind in LM_KINDS else [])]


def train_every_kind(root: Path) -> dict[str, dict[str, Path]]:
    """{kind: {"finished": RUN_DIR, "half": RUN_DIR}}: a tiny trained run of each kind, and one
    interrupted before its first log line (its parts built and config saved, nothing logged)."""
    corpus = _corpus(root / "code.py")
    out = {}
    for kind, (preset, _) in KINDS.items():
        slug = kind.replace(" ", "-")
        finished, half = root / slug, root / f"{slug}-half"
        assert main(["train", preset, "--run-dir", str(finished), *_overrides(kind, corpus)]) == 0, kind
        run = open_run(apply_overrides(get_config(preset), _overrides(kind, corpus)), half)
        run.close()
        out[kind] = {"finished": finished, "half": half}
    out["corpus"] = corpus
    return out
