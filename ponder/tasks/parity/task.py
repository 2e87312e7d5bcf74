"""Parity task (PonderNet, Banino et al. 2021): the parity of the +1 entries of a sparse vector.

A sample is a vector of `length` L entries, k of them set to +1 or -1 (random signs at random
positions), the rest 0; its label is the parity of the number of +1 entries (even or odd).
Splits:
- "interpolation": k ~ U{1..L} for train and test alike;
- "extrapolation": train k ~ U{1..L//2}, test k ~ U{L//2+1..L} (PonderNet's harder setting:
  the test vectors have more non-zeros than any training vector). With `train_signs=uniform_plus`
  (a departure from the paper) the training vectors' number of +1 entries is drawn uniformly
  from 0..k instead of each sign at even odds; the held-out vectors are unchanged.

Every vector occurs at most once in the whole data set: i.i.d. draws are de-duplicated by
their bytes, which is sampling without replacement (so when a small k class has few distinct
vectors, e.g. the 2L vectors with k = 1, it holds fewer samples than the other classes).
In the interpolation split the distinct vectors are drawn as one pool, shuffled and partitioned,
so test and train follow the same distribution and never share a vector; in the extrapolation
split they differ in k and cannot share one. When the space of distinct vectors is small (or the
request is a large part of it) the vectors are enumerated and drawn without replacement with
the same weights (exponential keys), so every request that the counts allow is met.

Tokens: PAD=0, entry 0 -> 1, +1 -> 2, -1 -> 3; label tokens even=4, odd=5; vocab_size = 6.
The sequence is the L entries (seq_len = L, grid_shape = (1, L)); labels are IGNORE everywhere
except position 0, which holds the parity token, so *exact* means "the parity is right".
Difficulty is k, the number of non-zeros. No augmentation. With `curriculum` on, training starts
on the vectors with at most `curriculum_start` non-zeros and admits more as the training exact
match reaches `curriculum_threshold` (ponder.core.task.Curriculum); the held-out split is
always the whole range.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from itertools import combinations

import numpy as np

from ponder.core.cache import cached_arrays
from ponder.core.errors import PonderError
from ponder.core.render import UNKNOWN, grid_body, panels_svg, sample_arrays, wrong_cells
from ponder.core.settings import check, setting
from ponder.core.task import Curriculum, Split, TaskData, most_frequent_label
from ponder.core.types import IGNORE

__all__ = ["ParityConfig", "build_parity", "count_vectors", "k_range", "to_tokens", "parity_labels", "parity_baselines",
           "render_parity"]

VERSION = 1
PAD, ZERO, PLUS, MINUS, EVEN, ODD = range(6)
VOCAB_SIZE = 6
SPLITS = ("interpolation", "extrapolation")
TRAIN_SIGNS = ("random", "uniform_plus")
ENUMERATE_LIMIT = 1 << 18  # enumerate the distinct vectors when there are at most this many


@dataclass(kw_only=True)
class ParityConfig:
    """Parity data set of vectors of `length` entries (PonderNet used 64; 96 for extrapolation)."""

    name: str = setting("parity", choices=("parity",))
    length: int = setting(16, ge=2)
    split: str = setting("interpolation", choices=SPLITS)  # see the module docstring
    n_train: int = setting(20000, ge=0)
    n_test: int = setting(1000, ge=1)
    seed: int = setting(0, ge=0)
    # a curriculum over the number of non-zeros k: train on k <= limit, the limit starting at
    # curriculum_start and multiplied by curriculum_factor (at least + 1, up to the top of the
    # training range) whenever the logged training exact match reaches curriculum_threshold
    curriculum: bool = False
    curriculum_start: int = setting(2, ge=1)
    curriculum_factor: float = setting(1.25, gt=1)
    curriculum_threshold: float = setting(0.95, gt=0, le=1)
    # the signs of the extrapolation split's training vectors: "random" (the paper: each non-zero
    # is +1 or -1 at even odds, so a vector of k non-zeros holds about k/2 +1 entries) or
    # "uniform_plus" (the number of +1 entries drawn uniformly from 0..k, so training reaches
    # counts of +1 up to the top of its range); the held-out vectors keep random signs
    train_signs: str = setting("random", choices=TRAIN_SIGNS)

    def inactive(self) -> dict[str, str]:
        if self.curriculum:
            return {}
        why = "task.curriculum=false"
        return {"curriculum_start": why, "curriculum_factor": why, "curriculum_threshold": why}

    def validate(self) -> None:
        _validate(self)


def k_range(length: int, split: str, part: str) -> tuple[int, int]:
    """Inclusive range (lo, hi) of the number of non-zeros for `part` ("train" | "test")."""
    if split == "interpolation":
        return 1, length
    half = length // 2
    return (1, half) if part == "train" else (half + 1, length)


def count_vectors(length: int, lo: int, hi: int) -> int:
    """Exact number of distinct vectors with lo..hi non-zeros: sum_k C(L, k) 2^k."""
    return sum(math.comb(length, k) << k for k in range(lo, hi + 1))


def _validate(cfg: ParityConfig) -> None:
    check(cfg, "task")
    L = cfg.length
    top = k_range(L, cfg.split, "train")[1]
    if cfg.curriculum and cfg.curriculum_start > top:
        raise PonderError(f"task.curriculum_start={cfg.curriculum_start} is above the training range's largest "
                          f"number of non-zeros ({top})")
    if cfg.split == "interpolation":
        if cfg.train_signs != "random":
            raise PonderError(f"task.train_signs={cfg.train_signs} applies to the extrapolation split's training "
                              "vectors; the interpolation split draws training and held-out vectors from one pool")
        total = count_vectors(L, 1, L)
        if cfg.n_train + cfg.n_test > total:
            raise PonderError(f"parity length {L} has only {total} distinct vectors with 1..{L} non-zeros, "
                              f"but n_train + n_test = {cfg.n_train + cfg.n_test}")
        return
    for part, n in (("train", cfg.n_train), ("test", cfg.n_test)):
        lo, hi = k_range(L, cfg.split, part)
        total = count_vectors(L, lo, hi)
        if n > total:
            raise PonderError(f"parity length {L} has only {total} distinct vectors with {lo}..{hi} non-zeros "
                              f"(extrapolation {part} split), but n_{part} = {n}")


# ----------------------------------------------------------------------------- generation


def _draw(rng: np.random.Generator, m: int, length: int, lo: int, hi: int, signs: str = "random") -> np.ndarray:
    """m i.i.d. vectors (m, L) int8 in {-1, 0, +1}: k ~ U{lo..hi} at random positions; each
    sign random, or ("uniform_plus") the number p of +1 entries ~ U{0..k} at random among them."""
    k = rng.integers(lo, hi + 1, size=m)
    ranks = rng.random((m, length)).argsort(axis=1).argsort(axis=1)  # a random permutation per row
    if signs == "uniform_plus":
        p = rng.integers(0, k + 1)  # +1 at the p lowest ranks, -1 at the next k - p
        return np.where(ranks < p[:, None], 1, np.where(ranks < k[:, None], -1, 0)).astype(np.int8)
    signs = rng.integers(0, 2, size=(m, length), dtype=np.int8) * 2 - 1
    return np.where(ranks < k[:, None], signs, 0).astype(np.int8)


def _row_keys(values: np.ndarray) -> np.ndarray:
    """One opaque bytes key per row (for de-duplication)."""
    v = np.ascontiguousarray(values)
    return v.view(np.dtype((np.void, v.shape[1]))).ravel()


def _first_unique(values: np.ndarray) -> np.ndarray:
    """Rows of `values` without repeats, each kept at its first occurrence, in order."""
    _, first = np.unique(_row_keys(values), return_index=True)
    return values[np.sort(first)]


def _enumerate(length: int, lo: int, hi: int) -> np.ndarray:
    """Every vector with lo..hi non-zeros, (count, L) int8."""
    blocks = []
    for k in range(lo, hi + 1):
        pos = np.array(list(combinations(range(length), k)), dtype=np.int64)  # (C, k)
        bits = (np.arange(1 << k)[:, None] >> np.arange(k)[None, :]) & 1  # (2^k, k)
        signs = (bits * 2 - 1).astype(np.int8)
        block = np.zeros((len(pos), 1 << k, length), dtype=np.int8)
        rows = np.arange(len(pos))[:, None, None]
        cols = np.arange(1 << k)[None, :, None]
        block[rows, cols, pos[:, None, :]] = signs[None, :, :]
        blocks.append(block.reshape(-1, length))
    return np.concatenate(blocks)


def _sample_distinct(rng: np.random.Generator, n: int, length: int, lo: int, hi: int,
                     signs: str = "random") -> np.ndarray:
    """n distinct vectors drawn without replacement from the k ~ U{lo..hi} distribution (with the
    signs `_draw` names)."""
    total = count_vectors(length, lo, hi)
    assert n <= total, (n, total)
    if n == 0:
        return np.zeros((0, length), dtype=np.int8)
    if total <= ENUMERATE_LIMIT or 4 * n >= total:
        every = _enumerate(length, lo, hi)
        # a vector with k non-zeros is drawn with probability 1 / (n_k C(L, k) 2^k): exponential keys
        # divided by the weights, smallest first, are weighted draws without replacement
        k = np.count_nonzero(every, axis=1)
        if signs == "uniform_plus":  # 1 / (n_k C(L, k) (k + 1) C(k, p)), p the number of +1 entries
            plus = np.count_nonzero(every == 1, axis=1)
            size = np.array([[float(math.comb(length, a) * (a + 1) * math.comb(a, b)) for b in range(length + 1)]
                             for a in range(length + 1)])
            weight = size[k, plus]
        else:
            weight = np.array([float(math.comb(length, a) << a) for a in range(length + 1)])[k]
        keys = rng.exponential(size=len(every)) * weight
        return every[np.argsort(keys, kind="stable")[:n]]
    pool = np.zeros((0, length), dtype=np.int8)
    fresh_rate = 1.0
    for _ in range(10_000):
        missing = n - len(pool)
        m = min(int(1.1 * missing / fresh_rate) + 256, 1 << 22)
        before = len(pool)
        pool = _first_unique(np.concatenate([pool, _draw(rng, m, length, lo, hi, signs)]))
        if len(pool) >= n:
            return pool[:n]
        fresh_rate = max((len(pool) - before) / m, 1e-3)
    raise PonderError(f"could not draw {n} distinct parity vectors of length {length} with {lo}..{hi} non-zeros")


def _generate(cfg: ParityConfig) -> dict[str, np.ndarray]:
    """Vectors of both splits as int8 values in {-1, 0, +1} (see `build_parity`)."""
    L = cfg.length
    rng_pool, rng_train, rng_test = (np.random.default_rng(s) for s in np.random.SeedSequence(cfg.seed).spawn(3))
    if cfg.split == "interpolation":
        pool = _sample_distinct(rng_pool, cfg.n_train + cfg.n_test, L, 1, L)
        pool = pool[rng_pool.permutation(len(pool))]  # a random partition: same distribution in both splits
        test, train = pool[:cfg.n_test], pool[cfg.n_test:]
    else:
        train = _sample_distinct(rng_train, cfg.n_train, L, *k_range(L, cfg.split, "train"), cfg.train_signs)
        test = _sample_distinct(rng_test, cfg.n_test, L, *k_range(L, cfg.split, "test"))
        train, test = train[rng_train.permutation(len(train))], test[rng_test.permutation(len(test))]
    return {"train_values": train, "test_values": test}


# ----------------------------------------------------------------------------- tokens


def to_tokens(values: np.ndarray) -> np.ndarray:
    """(N, L) values in {-1, 0, +1} -> (N, L) int64 input tokens (0 -> 1, +1 -> 2, -1 -> 3)."""
    v = np.asarray(values)
    return np.select([v == 1, v == -1], [PLUS, MINUS], ZERO).astype(np.int64)


def parity_labels(values: np.ndarray) -> np.ndarray:
    """(N, L) values -> (N, L) int64 labels: the parity token (even=4, odd=5) at 0, IGNORE elsewhere."""
    v = np.asarray(values)
    labels = np.full(v.shape, IGNORE, dtype=np.int64)
    labels[:, 0] = EVEN + (np.count_nonzero(v == 1, axis=1) % 2)
    return labels


def build_parity(cfg: ParityConfig) -> TaskData:
    """Build (or load from the cache) the parity task of `cfg`.

    Returns:
        TaskData with inputs/labels (n_*, L) int64 tokens and difficulty (n_*,) float32 = k.
    """
    _validate(cfg)
    params = {k: v for k, v in asdict(cfg).items() if k != "name" and not k.startswith("curriculum")}
    arrays = cached_arrays("parity", VERSION, params, lambda: _generate(cfg))

    def split(prefix: str) -> Split:
        values = arrays[f"{prefix}_values"]
        return Split(to_tokens(values), parity_labels(values),
                     np.count_nonzero(values, axis=1).astype(np.float32))

    return TaskData(
        name="parity",
        vocab_size=VOCAB_SIZE,
        seq_len=cfg.length,
        grid_shape=(1, cfg.length),
        train=split("train"),
        test=split("test"),
        augment=None,
        difficulty_name="non-zeros",
        baselines=parity_baselines,
        render=render_parity,
        curriculum=Curriculum(start=cfg.curriculum_start, top=k_range(cfg.length, cfg.split, "train")[1],
                              factor=cfg.curriculum_factor, threshold=cfg.curriculum_threshold)
        if cfg.curriculum else None,
    )




# ----------------------------------------------------------------------------- baselines and picture


def parity_baselines(split: Split, train: Split) -> dict[str, dict[str, float]]:
    """Constant predictors on `split`: the training split's majority parity, and the majority
    parity of `split` itself (the best any constant answer can do there)."""
    labels = split.labels[:, 0]
    held_out = float(max(np.mean(labels == EVEN), np.mean(labels == ODD))) if len(labels) else float("nan")
    return {"most frequent label": most_frequent_label(split, train),
            "majority class of this split": {"exact": held_out, "cell": held_out}}


FILL = {PAD: "#f4f4f4", ZERO: "#ffffff", PLUS: "#1f77b4", MINUS: "#ff7f0e", EVEN: "#c7e9c0", ODD: "#fdd0a2"}


def render_parity(inputs, labels, preds, *, title: str | None = None, cell_px: int = 16) -> str:
    """Input vector / target parity / predicted parity of one sample as one SVG (ponder.core.render).

    The input is a 1 x length strip (+1 blue "+", -1 orange "\u2212", 0 white); target and
    prediction are single lettered cells read at the supervised position (position 0).
    """
    x, y, p = sample_arrays(inputs, labels, preds)
    sup, wrong = wrong_cells(y, p)
    where = np.flatnonzero(sup)
    if len(where) == 0:
        raise ValueError("parity labels have no supervised position (all IGNORE)")
    pos = int(where[0])
    names = {EVEN: "even", ODD: "odd"}
    box = dict(rows=1, cols=1, cell_px=max(2 * cell_px, 44),
               fill=lambda t: FILL.get(t, UNKNOWN), text=lambda t: names.get(t, f"?{t}"))
    panels = [
        grid_body(x, title="input", rows=1, cols=len(x), cell_px=cell_px,
                  fill=lambda t: FILL.get(t, UNKNOWN) if t <= MINUS else UNKNOWN,
                  text={PLUS: "+", MINUS: "\u2212"}, ink=lambda _: "#ffffff"),
        grid_body([y[pos]], title="target", **box),
        grid_body([p[pos]], title="prediction", marks=[bool(wrong[pos])], **box),
    ]
    k, plus = int(np.isin(x, (PLUS, MINUS)).sum()), int((x == PLUS).sum())
    right = not wrong.any()
    caption = (f"exact: {'yes' if right else 'no'}, parity {'right' if right else 'wrong'} "
               f"(target {names.get(int(y[pos]), '?')}, predicted {names.get(int(p[pos]), '?')}); "
               f"{k} non-zeros, {plus} of them +1")
    return panels_svg(panels, caption, title)
