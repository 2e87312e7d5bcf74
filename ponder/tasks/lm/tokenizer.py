"""A byte-level BPE tokenizer trained on a corpus's training split, cached by content hash, and the
n-gram baselines of the same tokenizer.

The tokenizer is GPT-2's scheme built with the `tokenizers` library: bytes mapped to printable
characters (so every string encodes, nothing is unknown), GPT-2's pre-tokenising regex, BPE merges
learned from the training split only, and one special token `<|endoftext|>` that ends every
document. It is saved as `bpe-KEY.json` in ponder's data cache (`ponder.core.cache.cache_dir()`),
KEY a hash of the corpus's content (`Corpus.fingerprint`) and the settings, so it is trained once
per corpus; a damaged cache file is rebuilt. Token ids of a split are cached the same way.

Baselines (validation perplexity of the next token, the same tokens a model predicts): unigram with
add-one smoothing, and bigram with Witten-Bell interpolation to that unigram,
P(b | a) = (c(a, b) + T(a) P_uni(b)) / (c(a) + T(a)), T(a) the number of distinct tokens seen after
a (parameter-free, so nothing is tuned on the validation split).
"""
from __future__ import annotations

import hashlib
import math
import os
import tempfile

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from ponder.core.cache import cache_dir, cached_arrays, content_key
from ponder.core.errors import PonderError
from ponder.tasks.lm.corpus import Corpus

EOS = "<|endoftext|>"
VERSION = 1


class BPETokenizer:
    """A trained byte-level BPE tokenizer.

    Args:
        tokenizer: the `tokenizers.Tokenizer`.
    """

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        eos = tokenizer.token_to_id(EOS)
        if eos is None:
            raise PonderError(f"tokenizer has no {EOS} token")
        self.eos_id = eos
        self.vocab_size = tokenizer.get_vocab_size()
        self.digest = hashlib.sha256(tokenizer.to_str().encode()).hexdigest()[:20]

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids

    def decode(self, ids) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)

    def token(self, i: int) -> str:
        """The text of token i (bytes decoded; invalid UTF-8 pieces shown with U+FFFD)."""
        return self.decode([i])

    def encode_documents(self, texts: list[str]) -> np.ndarray:
        """Texts -> one (N,) id array, each document followed by <|endoftext|>."""
        dtype = np.uint16 if self.vocab_size <= 2**16 else np.int32
        parts = [np.asarray(e.ids + [self.eos_id], dtype=dtype) for e in self.tokenizer.encode_batch(texts)]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)


def _new_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def train_bpe(corpus: Corpus, vocab_size: int, *, min_frequency: int = 2, use_cache: bool = True) -> BPETokenizer:
    """Train (or load from the cache) a byte-level BPE tokenizer on the corpus's training split.

    Args:
        corpus: the corpus (only its "train" split is read).
        vocab_size: target size including the 256 byte symbols and <|endoftext|> (>= 258).
        min_frequency: a pair merges only if it occurs at least this often.
        use_cache: read and write the cache file.
    """
    if vocab_size < 258:
        raise PonderError(f"vocab_size must be >= 258 (256 bytes + <|endoftext|> + one merge), got {vocab_size}")
    params = {"corpus": corpus.fingerprint(), "vocab_size": vocab_size, "min_frequency": min_frequency}
    path = cache_dir() / f"bpe-{content_key('bpe', VERSION, params)}.json"
    if use_cache and path.exists():
        try:
            return BPETokenizer(Tokenizer.from_file(str(path)))
        except Exception:  # a damaged cache entry (tokenizers raises plain Exceptions): rebuild it
            path.unlink(missing_ok=True)
    tok = _new_tokenizer()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    texts = corpus.texts("train")
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    if use_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".json.tmp")
        os.close(fd)
        try:
            tok.save(tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return BPETokenizer(tok)


def encode_split(tok: BPETokenizer, corpus: Corpus, split: str) -> np.ndarray:
    """Token ids of one split (documents joined by <|endoftext|>), cached by content hash."""
    params = {"corpus": corpus.fingerprint(), "tokenizer": tok.digest, "split": split}
    return cached_arrays("lm-tokens", VERSION, params, lambda: {"ids": tok.encode_documents(corpus.texts(split))})["ids"]


def ngram_baselines(train: np.ndarray, valid: np.ndarray, vocab_size: int) -> dict[str, float]:
    """Validation perplexity of the next token (positions 1.. of `valid`) under unigram (add-one)
    and Witten-Bell bigram models counted on `train` (module docstring).

    Returns: {"unigram_ppl", "bigram_ppl", "unigram_nll", "bigram_nll"} (nll in nats per token).
    """
    if len(train) < 2 or len(valid) < 2:
        raise PonderError("n-gram baselines need at least 2 tokens in train and validation")
    train, valid = train.astype(np.int64), valid.astype(np.int64)
    uni = (np.bincount(train, minlength=vocab_size) + 1.0) / (len(train) + vocab_size)  # (V,)
    keys = train[:-1] * vocab_size + train[1:]
    pairs, counts = np.unique(keys, return_counts=True)
    context = np.bincount(train[:-1], minlength=vocab_size).astype(np.float64)  # c(a)
    followers = np.bincount(pairs // vocab_size, minlength=vocab_size).astype(np.float64)  # T(a)
    a, b = valid[:-1], valid[1:]
    vk = a * vocab_size + b
    at = np.searchsorted(pairs, vk).clip(max=len(pairs) - 1)
    c_ab = np.where(pairs[at] == vk, counts[at], 0).astype(np.float64)
    denom = context[a] + followers[a]
    p_bi = np.where(denom > 0, (c_ab + followers[a] * uni[b]) / np.maximum(denom, 1), uni[b])
    uni_nll = float(-np.log(uni[b]).mean())
    bi_nll = float(-np.log(p_bi).mean())
    return {"unigram_ppl": math.exp(uni_nll), "bigram_ppl": math.exp(bi_nll), "unigram_nll": uni_nll,
            "bigram_nll": bi_nll}
