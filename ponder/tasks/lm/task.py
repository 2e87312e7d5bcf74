"""Task `lm`: next-token prediction on windows of a text corpus (language models).

The corpus is the Python standard library's source (`--task.corpus=stdlib`) or any text file or
folder (`--task.corpus=PATH`), split by document into train / validation / test
(ponder.tasks.lm.corpus). A byte-level BPE tokenizer is trained on the training split (cached by
content hash, ponder.tasks.lm.tokenizer) and copied into every run directory (`tokenizer.json`), so a
trained run generates text without the corpus or the cache.

Samples are non-overlapping windows of `seq_len` tokens of each split's token stream (documents
joined by <|endoftext|>): inputs ids[i·n : (i+1)·n], labels ids[i·n+1 : (i+1)·n+1], so every
position is supervised with the next token. The held-out split is **validation** (`TaskData.test`
holds its windows); the test split is not used by training or evaluation (kept for a final
report). Difficulty is 0 everywhere (text has none).

The metric `NextToken` reports perplexity (headline), loss (nats per token) and accuracy (argmax
= next token). No window is ever "solved", so `correct` is False everywhere. The task owns its
evaluation (per-token early exit, depth, compute saved: ponder.tasks.lm.evaluate): `NextToken` carries
`evaluate_split` and the task data `evaluate_run`, which ponder.training.evaluate and ponder.runs.report call
instead of their per-sample puzzle evaluation. Baselines: unigram and Witten-Bell bigram models
of the same tokenizer, counted on the training split.
"""
from __future__ import annotations

import html
import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

import ponder.tasks.lm.evaluate as lm_evaluate
import ponder.tasks.lm.tokenizer as lm_tokenizer
from ponder.core.errors import PonderError
from ponder.core.files import atomic_write_text
from ponder.core.metrics import FRACTION, NUMBER
from ponder.core.settings import check, setting
from ponder.core.task import Split, TaskData
from ponder.core.types import IGNORE
from ponder.tasks.lm.corpus import load_corpus

TOKENIZER_FILE = "tokenizer.json"


@dataclass(kw_only=True)
class LMTaskConfig:
    """Windows of a tokenized corpus (module docstring).

    Attributes:
        corpus: "stdlib" (the standard library's .py files) or a path to a text file or folder.
        max_files: stdlib only: keep this many files, chosen by a hash of their names (0 = all).
        vocab_size: BPE vocabulary (256 bytes + <|endoftext|> + merges); the model's vocabulary.
        seq_len: tokens per window.
        val_frac, test_frac: shares of documents in validation and test.
    """

    name: str = setting("lm", choices=("lm",))
    corpus: str = "stdlib"
    max_files: int = setting(0, ge=0)
    vocab_size: int = setting(4096, ge=258)
    seq_len: int = setting(256, ge=2)
    val_frac: float = setting(0.05, gt=0, lt=1)
    test_frac: float = setting(0.05, gt=0, lt=1)

    def inactive(self) -> dict[str, str]:
        return {} if self.corpus == "stdlib" else {"max_files": "it samples the stdlib corpus only"}

    def validate(self) -> None:
        check(self, "task")
        if not self.corpus.strip():
            raise PonderError("task.corpus must be stdlib or a path to a text file or folder")
        if self.val_frac + self.test_frac >= 1:
            raise PonderError(f"task.val_frac + task.test_frac must be < 1, got {self.val_frac} + {self.test_frac}")


class NextToken:
    """Next-token loss, perplexity and accuracy, summed per window (the token-weighted means of a
    split are exact, not means of window means)."""

    columns = ("perplexity", "loss", "accuracy")
    formats = {"perplexity": NUMBER, "loss": NUMBER, "accuracy": FRACTION}
    lower_is_better = ("perplexity", "loss")

    def __init__(self, tokenizer=None):
        self.tokenizer = tokenizer

    def score(self, logits: Tensor, labels: Tensor) -> dict[str, Tensor]:
        mask = labels != IGNORE
        nll = F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=IGNORE, reduction="none")
        hit = (logits.argmax(-1) == labels) & mask
        return {"nll": (nll * mask).sum(1), "tokens": mask.sum(1), "hits": hit.sum(1)}

    def correct(self, scores: dict[str, Tensor]) -> Tensor:
        return torch.zeros_like(scores["tokens"], dtype=torch.bool)  # a window of text is never "solved"

    @staticmethod
    def _figures(nll: float, tokens: float, hits: float) -> dict[str, float]:
        loss = nll / tokens if tokens else float("nan")
        return {"perplexity": math.exp(loss) if tokens else float("nan"), "loss": loss,
                "accuracy": hits / tokens if tokens else float("nan")}

    def summarize(self, scores: dict[str, np.ndarray]) -> dict[str, float]:
        return self._figures(*(float(np.sum(scores[k])) for k in ("nll", "tokens", "hits")))

    def summarize_batch(self, scores: dict[str, Tensor]) -> dict[str, float]:
        return self._figures(*(scores[k].sum().item() for k in ("nll", "tokens", "hits")))

    def evaluate_split(self, model, split: Split, **kw: Any) -> dict:
        """The task-owned evaluation (ponder.tasks.lm.evaluate.evaluate_tokens)."""
        return lm_evaluate.evaluate_tokens(model, split, **kw)


@dataclass
class LMTaskData(TaskData):
    """TaskData of a text corpus, with its tokenizer and the token streams of each split."""

    tokenizer: Any = None
    ids: dict | None = None  # "train", "validation" -> (N,) token ids
    corpus_name: str = ""

    def save_assets(self, run_dir: Path) -> None:
        """Copy the tokenizer into the run directory (RUN_DIR/tokenizer.json)."""
        atomic_write_text(Path(run_dir) / TOKENIZER_FILE, self.tokenizer.tokenizer.to_str(), what="the tokenizer")



def windows(ids: np.ndarray, n: int) -> Split:
    """Non-overlapping windows of n tokens: inputs ids[i·n:(i+1)·n], labels shifted by one."""
    count = (len(ids) - 1) // n
    if count < 1:
        raise PonderError(f"a split of {len(ids)} tokens holds no window of task.seq_len={n} tokens plus the next")
    ids = ids[:count * n + 1].astype(np.int64)
    return Split(inputs=ids[:-1].reshape(count, n), labels=ids[1:].reshape(count, n),
                 difficulty=np.zeros(count, dtype=np.float32))


def ngram_figures(train_ids: np.ndarray, valid_ids: np.ndarray, vocab_size: int) -> dict[str, dict[str, float]]:
    """Unigram and bigram baselines on the next tokens of `valid_ids`: perplexity and loss from
    `ngram_baselines`; accuracy of their argmax (the most frequent token; the most frequent
    follower of the previous token, else the most frequent token)."""
    b = lm_tokenizer.ngram_baselines(train_ids, valid_ids, vocab_size)
    train, valid = train_ids.astype(np.int64), valid_ids.astype(np.int64)
    top = int(np.bincount(train, minlength=vocab_size).argmax())
    pairs = train[:-1] * vocab_size + train[1:]
    keys, counts = np.unique(pairs, return_counts=True)
    order = np.lexsort((-counts, keys // vocab_size))  # by previous token, most frequent follower first
    prev, nxt = keys[order] // vocab_size, keys[order] % vocab_size
    first = np.unique(prev, return_index=True)[1]
    follower = np.full(vocab_size, top, dtype=np.int64)
    follower[prev[first]] = nxt[first]
    target = valid[1:]
    return {"unigram": {"perplexity": b["unigram_ppl"], "loss": b["unigram_nll"],
                        "accuracy": float((target == top).mean())},
            "bigram (Witten-Bell)": {"perplexity": b["bigram_ppl"], "loss": b["bigram_nll"],
                                     "accuracy": float((follower[valid[:-1]] == target).mean())}}


def render_tokens(inputs: np.ndarray, labels: np.ndarray, preds: np.ndarray, *, tokenizer, shown: int = 16) -> str:
    """The last `shown` positions of a window as an SVG table: the text so far, the next token and
    the model's prediction (green when right, red when wrong)."""
    n = len(inputs)
    rows = range(max(0, n - shown), n)
    text = lambda ids: html.escape(tokenizer.decode([int(i) for i in ids]).replace("\n", "\u21b5"))  # noqa: E731
    line_h, width = 18, 760
    parts = [f'<text x="8" y="14" font-size="12" font-weight="bold">context (last 40 tokens) | next token | '
             f'predicted</text>']
    for k, i in enumerate(rows):
        y = 14 + line_h * (k + 1)
        ok = labels[i] == preds[i]
        context = text(inputs[max(0, i - 39):i + 1])[-60:]
        parts.append(f'<text x="8" y="{y}" font-size="11" font-family="monospace">{context}</text>')
        parts.append(f'<text x="520" y="{y}" font-size="11" font-family="monospace">{text([labels[i]])}</text>')
        parts.append(f'<text x="640" y="{y}" font-size="11" font-family="monospace" '
                     f'fill="{"#176117" if ok else "#b00020"}">{text([preds[i]])}</text>')
    height = 14 + line_h * (len(rows) + 1)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" font-family="sans-serif">\n'
            f'<rect class="background" width="{width}" height="{height}" fill="#ffffff"/>\n'
            + "\n".join(parts) + "\n</svg>")


def build_lm(cfg: LMTaskConfig) -> LMTaskData:
    cfg.validate()
    corpus = load_corpus(cfg.corpus, max_files=cfg.max_files, val_frac=cfg.val_frac, test_frac=cfg.test_frac)
    tok = lm_tokenizer.train_bpe(corpus, cfg.vocab_size)
    if tok.vocab_size > cfg.vocab_size:
        raise PonderError(f"the tokenizer has {tok.vocab_size} tokens, more than task.vocab_size={cfg.vocab_size}")
    ids = {s: lm_tokenizer.encode_split(tok, corpus, s) for s in ("train", "validation")}
    train, held_out = windows(ids["train"], cfg.seq_len), windows(ids["validation"], cfg.seq_len)

    def baselines(split: Split, _train: Split) -> dict[str, dict[str, float]]:
        # the windows' inputs and the last label: the token stream they cover (exactly, for
        # consecutive windows), so the baselines predict the tokens the model predicts
        stream = np.concatenate([split.inputs.reshape(-1), split.labels[-1:, -1]])
        return ngram_figures(ids["train"], stream, cfg.vocab_size)

    return LMTaskData(name="lm", vocab_size=cfg.vocab_size, seq_len=cfg.seq_len, grid_shape=(1, cfg.seq_len),
                      train=train, test=held_out, difficulty_name="none (text)", metric=NextToken(tok),
                      baselines=baselines, tokenizer=tok, ids=ids, corpus_name=corpus.name,
                      render=partial(render_tokens, tokenizer=tok),
                      sample_figures=partial(lm_evaluate.depth_sample_figures, tokenizer=tok))
