"""Published puzzle files read from the user's disk: Sudoku-Extreme and Maze-Hard CSVs.

Both reference data sets (HRM's, used by TRM) ship as `train.csv` / `test.csv` with the header
`source,question,answer,rating`, one puzzle per row:

- Sudoku-Extreme (`sapientinc/sudoku-extreme`): `question` is 81 characters, `.` for a blank and
  `1`-`9` for a given; `answer` is the 81 digits of the solution; `rating` is a number (the
  published difficulty).
- Maze-Hard (`sapientinc/maze-30x30-hard-1k`): `question` and `answer` are 900 characters of a
  30x30 grid in the charset `# SGo` (wall, open, start, goal, path); the answer marks a shortest
  path from S to G with `o`. Open cells are spaces, so fields are never stripped.

ponder never downloads: `--task.source=DIR` names a folder holding both files, and
`--task.source=hf` (or `hf:OWNER/NAME`) finds the data set in the Hugging Face hub cache
(`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`), reading only.

Every row is checked: the column count, the length and characters of both fields, and that the
answer keeps the givens and the rules (a valid Sudoku grid; a path of open cells joining S to G
that is a shortest one). A fault is one PonderError line naming the file, the line and the
fault; the task is cached only after every check has passed (`ponder.core.cache`), under a key
that includes the files' SHA-256, so an edited file is read again.
"""
from __future__ import annotations

import csv
import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ponder.core.cache import cached_arrays
from ponder.core.errors import PonderError

HEADER = ["source", "question", "answer", "rating"]
FILES = ("train.csv", "test.csv")
CHUNK = 32768  # rows checked together (vectorised)


@dataclass(frozen=True)
class Format:
    """One published file format.

    Attributes:
        name: for messages; repo: its Hugging Face data set; side: grid side (length side**2).
        question, answer: character -> token of each field (other characters are refused).
        check: (path, lines, questions, answers) -> difficulty per row, raising PonderError on
            the first row that breaks the rules.
    """

    name: str
    repo: str
    side: int
    question: dict[str, int]
    answer: dict[str, int]
    check: Callable[[Path, np.ndarray, np.ndarray, np.ndarray], np.ndarray]
    hint: str = ""  # added to a wrong-length message
    offline: str = ""  # the overrides that generate puzzles of this kind instead

    def table(self, field: str) -> np.ndarray:
        out = np.zeros(256, dtype=np.uint8)  # 0: not allowed
        for ch, tok in (self.question if field == "question" else self.answer).items():
            out[ord(ch)] = tok
        return out


@dataclass
class Rows:
    """Rows read from one file (tokens already mapped).

    Attributes:
        questions, answers: (k, side*side) uint8 tokens; ratings: (k,) float64 `rating` column;
        difficulty: (k,) float32 from the format's check; lines: (k,) line numbers in the file.
    """

    questions: np.ndarray
    answers: np.ndarray
    ratings: np.ndarray
    difficulty: np.ndarray
    lines: np.ndarray


# ----------------------------------------------------------------------------- where the files are


def hub_dirs() -> list[Path]:
    """The Hugging Face hub cache folders to look in, in the order huggingface_hub uses them."""
    if os.environ.get("HF_HUB_CACHE"):
        return [Path(os.environ["HF_HUB_CACHE"]).expanduser()]
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface"
    return [Path(home).expanduser() / "hub"]


def cached_dataset(repo: str) -> Optional[Path]:
    """The snapshot folder of data set `repo` holding both FILES in the hub cache, or None.

    The revision `refs/main` points to is preferred, else the newest complete snapshot.
    """
    for hub in hub_dirs():
        base = hub / ("datasets--" + repo.replace("/", "--"))
        snaps = base / "snapshots"
        if not snaps.is_dir():
            continue
        complete = [d for d in snaps.iterdir() if all((d / f).is_file() for f in FILES)]
        ref = base / "refs" / "main"
        main = ref.read_text().strip() if ref.is_file() else None
        for d in sorted(complete, key=lambda d: (d.name != main, -d.stat().st_mtime)):
            return d
    return None


def resolve(source: str, fmt: Format) -> Path:
    """The folder holding FILES for `--task.source` (a folder, `hf` or `hf:OWNER/NAME`)."""
    if source == "hf" or source.startswith("hf:"):
        repo = source[3:] or fmt.repo
        found = cached_dataset(repo)
        if found is None:
            where = ", ".join(str(d) for d in hub_dirs())
            raise PonderError(f"task.source={source}: data set {repo} with {' and '.join(FILES)} is not in the "
                              f"Hugging Face cache ({where}); ponder never downloads: fetch it once with "
                              f"`huggingface-cli download --repo-type dataset {repo}` or pass --task.source=FOLDER"
                              + (f"; or generate hard puzzles offline with {fmt.offline}" if fmt.offline else ""))
        return found
    folder = Path(source).expanduser()
    if not folder.is_dir():
        raise PonderError(f"task.source={source}: no such folder (expected a folder with {' and '.join(FILES)} "
                          f"of {fmt.name}, or 'hf' to use the Hugging Face cache)")
    missing = [f for f in FILES if not (folder / f).is_file()]
    if missing:
        raise PonderError(f"task.source={source}: the folder has no {' and no '.join(missing)} ({fmt.name} ships "
                          f"{' and '.join(FILES)})")
    return folder


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file's content."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------- reading


def read_splits(kind: str, version: int, source: str, fmt: Format, *, n_train: int, n_test: int, seed: int,
                min_rating: float = 0.0, min_difficulty: float = 0.0, difficulty: str = "rating") -> dict[str, np.ndarray]:
    """Both splits of a task from the published files, as `cached_arrays` keys them.

    Args:
        kind, version: the cache entry's kind and version; source: `--task.source` (see `resolve`).
        n_train: training rows sampled (seeded, uniform; 0 = none); n_test: test rows (0 = all).
        min_rating: keep rows whose `rating` is at least this (0 = no filter).
        min_difficulty: keep rows whose difficulty (the format's check) is at least this.
        difficulty: what the splits' difficulty is: the "rating" column or the format's "check".
    Returns:
        {"train_inputs", "train_labels", "train_difficulty", "test_..."}: uint8 tokens, float32.
        Nothing is cached unless both files pass every check.
    """
    folder = resolve(source, fmt)
    paths = {f: folder / f for f in FILES}
    params = {"sha256": {f: sha256(p) for f, p in paths.items()}, "n_train": n_train, "n_test": n_test,
              "min_rating": min_rating, "min_difficulty": min_difficulty, "seed": seed, "difficulty": difficulty}

    def read() -> dict[str, np.ndarray]:
        out = {}
        for prefix, keep in (("train", n_train), ("test", n_test or None)):
            rows = read_rows(paths[f"{prefix}.csv"], fmt, keep=keep, seed=seed + (prefix == "test"),
                             min_rating=min_rating if min_rating > 0 else -math.inf,
                             accept=(lambda d: d >= min_difficulty) if min_difficulty > 0 else None)
            out.update({f"{prefix}_inputs": rows.questions, f"{prefix}_labels": rows.answers,
                        f"{prefix}_difficulty": (rows.ratings if difficulty == "rating" else rows.difficulty
                                                 ).astype(np.float32)})
        return out

    return cached_arrays(kind, version, params, read)


def read_rows(path: Path, fmt: Format, *, keep: Optional[int] = None, seed: int = 0, min_rating: float = -math.inf,
              accept: Callable[[np.ndarray], np.ndarray] | None = None) -> Rows:
    """Read and check every row of one file; keep a seeded uniform sample of `keep` rows (None = all).

    Args:
        min_rating: rows whose `rating` is below this are skipped (after being checked).
        accept: optional (difficulty,) -> bool mask of further rows to keep (e.g. a minimum path length).
    Returns:
        the kept rows in file order. Sampling gives every row passing the filters a random key
        from `seed` and keeps the `keep` smallest, so it reads the file once in bounded memory.
    Raises:
        PonderError: one line naming the file, the line and the fault; or too few rows.
    """
    n = fmt.side * fmt.side
    tables = fmt.table("question"), fmt.table("answer")
    rng = np.random.default_rng(seed)
    kept: list[Rows] = []
    keys = np.empty(0)
    total = passing = 0
    try:
        f = open(path, newline="", encoding="utf-8")
    except OSError as e:
        raise PonderError(f"{path}: cannot read ({e.strerror})") from None
    with f:
        reader = csv.reader(f)
        try:
            header = next(reader, None)
            if header != HEADER:
                raise PonderError(f"{path} line 1: header must be {','.join(HEADER)}, got "
                                  f"{','.join(header) if header else 'an empty file'}")
            chunk: list[tuple[int, str, str, str]] = []
            for row in reader:
                line = reader.line_num
                if len(row) != 4:
                    raise PonderError(f"{path} line {line}: expected 4 columns ({','.join(HEADER)}), got {len(row)}")
                for name, value in (("question", row[1]), ("answer", row[2])):
                    if len(value) != n:
                        raise PonderError(f"{path} line {line}: {name} has {len(value)} characters, "
                                          f"{fmt.name} needs {n} ({fmt.side}x{fmt.side}){fmt.hint}")
                chunk.append((line, row[1], row[2], row[3]))
                if len(chunk) == CHUNK:
                    kept, keys, passing = _take(path, fmt, chunk, tables, rng, keep, min_rating, accept, kept, keys, passing)
                    total += len(chunk)
                    chunk = []
            if chunk:
                kept, keys, passing = _take(path, fmt, chunk, tables, rng, keep, min_rating, accept, kept, keys, passing)
                total += len(chunk)
        except UnicodeDecodeError as e:
            raise PonderError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        except csv.Error as e:
            raise PonderError(f"{path} line {reader.line_num}: malformed CSV ({e})") from None
    if keep is not None and passing < keep:
        raise PonderError(f"{path} has {passing} usable rows (of {total}), fewer than the {keep} asked for")
    if not kept:
        return Rows(np.zeros((0, n), np.uint8), np.zeros((0, n), np.uint8), np.zeros(0), np.zeros(0, np.float32),
                    np.zeros(0, np.int64))
    out = Rows(*(np.concatenate([getattr(r, k) for r in kept]) for k in Rows.__dataclass_fields__))
    order = np.argsort(out.lines, kind="stable")
    return Rows(*(getattr(out, k)[order] for k in Rows.__dataclass_fields__))


def _take(path, fmt: Format, chunk, tables, rng, keep, min_rating, accept, kept, keys, passing):
    """Check one chunk of rows, filter it and merge it into the sample kept so far."""
    lines = np.array([c[0] for c in chunk], dtype=np.int64)
    q = _tokens(path, lines, [c[1] for c in chunk], tables[0], "question")
    a = _tokens(path, lines, [c[2] for c in chunk], tables[1], "answer")
    ratings = np.empty(len(chunk))
    for i, c in enumerate(chunk):
        try:
            ratings[i] = float(c[3])
        except ValueError:
            ratings[i] = math.nan
        if not math.isfinite(ratings[i]):
            raise PonderError(f"{path} line {c[0]}: rating {c[3]!r} is not a finite number")
    difficulty = fmt.check(path, lines, q, a).astype(np.float32)
    mask = ratings >= min_rating
    if accept is not None:
        mask &= accept(difficulty)
    rows = Rows(q[mask], a[mask], ratings[mask], difficulty[mask], lines[mask])
    passing += int(mask.sum())
    if keep is None:
        return kept + [rows], keys, passing
    if keep == 0:
        return [], keys, passing
    new_keys = rng.random(len(chunk))[mask]  # a key per checked row, so the draw depends on the file only
    pool = kept + [rows]
    all_keys = np.concatenate([keys, new_keys])
    if len(all_keys) <= keep:
        return pool, all_keys, passing
    best = np.argpartition(all_keys, keep - 1)[:keep]
    merged = Rows(*(np.concatenate([getattr(r, k) for r in pool])[best] for k in Rows.__dataclass_fields__))
    return [merged], all_keys[best], passing


def _tokens(path: Path, lines: np.ndarray, fields: list[str], table: np.ndarray, name: str) -> np.ndarray:
    """(k, n) tokens of equal-length ASCII strings, refusing a character outside the table."""
    try:
        raw = np.frombuffer("".join(fields).encode("ascii"), dtype=np.uint8).reshape(len(fields), -1)
    except UnicodeEncodeError:
        raw = None
    if raw is not None:
        tok = table[raw]
        bad = np.argwhere(tok == 0)
        if not len(bad):
            return tok
        i, j = bad[0]
    else:
        i, j = next((i, j) for i, s in enumerate(fields) for j, ch in enumerate(s) if ord(ch) > 127)
    allowed = "".join(chr(c) for c in np.flatnonzero(table))
    raise PonderError(f"{path} line {lines[i]}: {name} has {fields[i][j]!r} at position {j + 1}; "
                      f"allowed: {allowed!r}")
