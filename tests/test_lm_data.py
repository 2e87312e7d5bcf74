"""Corpora without download, the cached byte-level BPE tokenizer, and the n-gram baselines."""
from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from ponder.core.errors import PonderError
from ponder.tasks.lm.corpus import SPLITS, load_corpus, path_corpus, split_of, stdlib_corpus
from ponder.tasks.lm.tokenizer import EOS, encode_split, ngram_baselines, train_bpe


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PONDER_CACHE_DIR", str(tmp_path / "cache"))


def test_stdlib_corpus_split_by_file_deterministically():
    a, b = stdlib_corpus(max_files=120), stdlib_corpus(max_files=120)
    assert a.fingerprint() == b.fingerprint()
    names = {s: [d.name for d in a.splits[s]] for s in SPLITS}
    assert 100 <= sum(map(len, names.values())) + a.skipped <= 120  # empty files (package markers) are left out
    assert all(names[s] == sorted(names[s]) for s in SPLITS)
    assert not set(names["train"]) & (set(names["validation"]) | set(names["test"]))
    assert all(n.endswith(".py") and "site-packages" not in n for v in names.values() for n in v)
    for s in SPLITS:  # every document sits in the split its name hashes to
        assert all(split_of(n, 0.05, 0.05) == s for n in names[s])
    assert any("def " in d.text for d in a.splits["train"])


def test_split_of_fractions():
    counts = Counter(split_of(f"file{i}.py", 0.1, 0.2) for i in range(5000))
    assert abs(counts["validation"] / 5000 - 0.1) < 0.02 and abs(counts["test"] / 5000 - 0.2) < 0.02


def test_folder_corpus_skips_binary_and_hidden(tmp_path):
    root = tmp_path / "texts"
    root.mkdir()
    for i in range(40):
        (root / f"doc{i:02d}.txt").write_text(f"document {i}\n" * 5)
    (root / "blob.bin").write_bytes(b"\x00\x01\xff" * 10)
    (root / ".hidden").mkdir()
    (root / ".hidden" / "x.txt").write_text("secret")
    c = path_corpus(root)
    assert c.skipped == 1
    assert sorted(d.name for s in SPLITS for d in c.splits[s]) == [f"doc{i:02d}.txt" for i in range(40)]
    assert all(c.splits[s] for s in SPLITS)


def test_single_file_is_cut_by_position(tmp_path):
    text = "".join(f"line {i}\n" for i in range(100))
    path = tmp_path / "book.txt"
    path.write_text(text)
    c = load_corpus(str(path))
    assert "".join(c.splits[s][0].text for s in SPLITS) == text
    assert c.splits["train"][0].text.count("\n") == 90 and c.splits["test"][0].text.startswith("line 95")


def test_bad_corpus_paths(tmp_path):
    with pytest.raises(PonderError, match="does not exist"):
        path_corpus(tmp_path / "nope")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1") * 5)
    with pytest.raises(PonderError, match="not UTF-8"):
        path_corpus(tmp_path / "latin1.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PonderError, match="no UTF-8 text"):
        path_corpus(tmp_path / "empty")
    with pytest.raises(PonderError, match="fractions"):
        stdlib_corpus(max_files=5, val_frac=0.6, test_frac=0.5)


def small_corpus(tmp_path):
    root = tmp_path / "code"
    root.mkdir(exist_ok=True)
    words = ["alpha", "beta", "gamma", "delta", "return", "self", "value", "print"]
    rng = np.random.default_rng(0)
    for i in range(30):
        lines = [f"def f{i}_{j}(x):\n    return {' + '.join(rng.choice(words, 3))}\n" for j in range(20)]
        (root / f"m{i}.py").write_text("".join(lines))
    return path_corpus(root)


def test_bpe_trains_on_train_split_and_is_cached(tmp_path):
    corpus = small_corpus(tmp_path)
    tok = train_bpe(corpus, 300)
    assert tok.vocab_size == 300 and tok.token(tok.eos_id) == EOS
    text = "def f1(x):\n    return alpha + ünïcode ✓\n"
    assert tok.decode(tok.encode(text)) == text  # byte level: every string round-trips
    assert len(tok.encode("    return alpha")) < len("    return alpha".encode())  # merges were learned
    cached = list((tmp_path / "cache").glob("bpe-*.json"))
    assert len(cached) == 1
    assert train_bpe(corpus, 300).digest == tok.digest  # loaded from the cache
    assert train_bpe(corpus, 300, use_cache=False).digest == tok.digest  # training is deterministic
    cached[0].write_text("{damaged")
    assert train_bpe(corpus, 300).digest == tok.digest  # a damaged entry is rebuilt
    assert train_bpe(corpus, 280).digest != tok.digest
    ids = encode_split(tok, corpus, "validation")
    assert ids[-1] == tok.eos_id and int((ids == tok.eos_id).sum()) == len(corpus.splits["validation"])
    assert tok.decode(ids).replace(EOS, "") == "".join(corpus.texts("validation"))
    with pytest.raises(PonderError, match="258"):
        train_bpe(corpus, 100)


def test_ngram_baselines_match_direct_counts():
    rng = np.random.default_rng(0)
    v = 7
    train = rng.integers(0, 5, 400)  # tokens 5 and 6 never seen in training
    valid = np.concatenate([rng.integers(0, v, 60), [6, 6]])
    uni = Counter(train.tolist())
    big = Counter(zip(train[:-1].tolist(), train[1:].tolist()))
    ctx = Counter(train[:-1].tolist())
    nll_u = nll_b = 0.0
    for a, b in zip(valid[:-1].tolist(), valid[1:].tolist()):
        pu = (uni[b] + 1) / (len(train) + v)
        followers = len({y for (x, y) in big if x == a})
        pb = (big[(a, b)] + followers * pu) / (ctx[a] + followers) if ctx[a] else pu
        nll_u -= math.log(pu)
        nll_b -= math.log(pb)
    r = ngram_baselines(train, valid, v)
    n = len(valid) - 1
    assert r["unigram_ppl"] == pytest.approx(math.exp(nll_u / n))
    assert r["bigram_ppl"] == pytest.approx(math.exp(nll_b / n))
    periodic = np.tile(np.arange(5), 50)  # a bigram model predicts it almost surely, a unigram cannot
    r = ngram_baselines(periodic, periodic[:40], 5)
    assert r["bigram_ppl"] < 1.05 and r["unigram_ppl"] == pytest.approx(5.0, rel=0.01)
