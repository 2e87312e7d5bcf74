"""`ponder generate RUN_DIR --prompt TEXT`: sample text from a trained language-model run.

The run's own tokenizer (RUN_DIR/tokenizer.json, copied there when the run started) and its
latest checkpoint (the EMA weights when the run kept an EMA and `eval.use_ema`) are loaded; the
corpus and the data cache are not needed. Each new token is sampled from the logits of the last
position of the window so far (at most `model.max_len` tokens, the oldest dropped), computed with
the model's early-exit inference, so the recursive LM's depth for that token is the depth it
used; `show_depth` reports it. Sampling: temperature (0 = greedy), top-k, top-p (nucleus),
seeded.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer

from ponder.core.errors import PonderError
from ponder.tasks.lm.tokenizer import BPETokenizer
from ponder.training.checkpoint import run_dir_of

TOKENIZER_FILE = "tokenizer.json"


@dataclass
class Generated:
    """The prompt, the generated tokens (ids, texts, depths) and the whole text."""

    prompt: str
    ids: list[int]
    pieces: list[str]
    depths: list[int]
    max_depth: int

    @property
    def text(self) -> str:
        return self.prompt + "".join(self.pieces)


def load_tokenizer(run_dir: Path) -> BPETokenizer:
    path = Path(run_dir) / TOKENIZER_FILE
    if not path.exists():
        raise PonderError(f"{run_dir} has no {TOKENIZER_FILE} (not a language-model run?)")
    try:
        return BPETokenizer(Tokenizer.from_file(str(path)))
    except PonderError:
        raise
    except Exception as e:  # tokenizers raises plain Exceptions on a damaged file
        raise PonderError(f"{path} is corrupt ({str(e).splitlines()[0][:100] if str(e) else type(e).__name__})") from None


def sample_next(logits: torch.Tensor, *, temperature: float, top_k: int, top_p: float,
                generator: torch.Generator) -> int:
    """One token id from (V,) logits: greedy at temperature 0, else softmax(logits / T) restricted
    to the top_k most likely (0 = all) and to the smallest set whose mass reaches top_p (1 = all)."""
    if temperature == 0:
        return int(logits.argmax())
    logits = logits.float() / temperature
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, -1)
    if top_p < 1:
        sorted_p, order = probs.sort(descending=True)
        keep = sorted_p.cumsum(0) - sorted_p < top_p  # the most likely token is always kept
        mask = torch.zeros_like(probs, dtype=torch.bool)
        mask[order[keep]] = True
        probs = torch.where(mask, probs, torch.zeros_like(probs))
        probs = probs / probs.sum()
    return int(torch.multinomial(probs, 1, generator=generator))


def check_options(max_tokens: int, temperature: float, top_k: int, top_p: float) -> None:
    if max_tokens < 1:
        raise PonderError(f"--max-tokens must be >= 1, got {max_tokens}")
    if not temperature >= 0 or temperature == float("inf"):
        raise PonderError(f"--temperature must be a finite number >= 0, got {temperature}")
    if top_k < 0:
        raise PonderError(f"--top-k must be >= 0 (0 = off), got {top_k}")
    if not 0 < top_p <= 1:
        raise PonderError(f"--top-p must be in (0, 1], got {top_p}")


def run_tokenizer(ckpt: Path) -> BPETokenizer:
    """The tokenizer of the run that holds checkpoint `ckpt` (a compare run's best/ too: its
    tokenizer is the run's)."""
    run_dir = run_dir_of(ckpt)
    if not (run_dir / TOKENIZER_FILE).exists() and (run_dir.parent / TOKENIZER_FILE).exists():
        run_dir = run_dir.parent  # RUN_DIR/best/
    return load_tokenizer(run_dir)


@torch.no_grad()
def generate(model, tokenizer: BPETokenizer, prompt: str, *, max_tokens: int = 100, temperature: float = 1.0,
             top_k: int = 0, top_p: float = 1.0, seed: int = 0, max_len: int) -> Generated:
    """Sample `max_tokens` tokens after `prompt` (an empty prompt starts after <|endoftext|>)."""
    check_options(max_tokens, temperature, top_k, top_p)
    ids = tokenizer.encode(prompt) if prompt else [tokenizer.eos_id]
    gen = torch.Generator().manual_seed(seed)
    out = Generated(prompt, [], [], [], int(getattr(model, "max_steps", 1)))
    device = next(model.parameters()).device
    for _ in range(max_tokens):
        window = torch.tensor([ids[-max_len:]], dtype=torch.long, device=device)
        inf = model.infer(window)
        # sampled on the CPU generator: the same text for a seed on every device
        nxt = sample_next(inf.logits[0, -1].float().cpu(), temperature=temperature, top_k=top_k, top_p=top_p,
                          generator=gen)
        out.ids.append(nxt)
        out.pieces.append(tokenizer.token(nxt))
        out.depths.append(int(inf.depth[0, -1]))
        ids.append(nxt)
    return out


def format_depths(g: Generated) -> str:
    """One line per generated token: its depth (cycles run to predict it) and its text."""
    lines = [f"depth of each generated token (1..{g.max_depth}):"]
    lines += [f"{d:>3}  {p!r}" for d, p in zip(g.depths, g.pieces)]
    if g.depths:
        lines.append(f"mean depth {sum(g.depths) / len(g.depths):.2f} over {len(g.depths)} tokens")
    return "\n".join(lines)
