"""Text corpora that need no download, split by document into train / validation / test.

- `stdlib`: the Python standard library's own source files (`sysconfig.get_paths()["stdlib"]`,
  site-packages excluded), present wherever Python is: about 1,800 files, 30 MB of code.
- a path: one text file, or every UTF-8 text file under a folder.

A document goes to a split by a hash of its name (relative path), so the assignment is
deterministic, independent of the machine's file order, and a document never changes split when
others are added or removed. A single named file (or a folder whose hash split leaves a split
empty) is cut by position instead: the first (1 − val − test) of its lines train, then validation,
then test (documents of under 3 lines then go to train whole). Files that are not UTF-8 text are skipped (and counted); a named file that is not text,
a missing path and an empty corpus are one-line `PonderError`s.
"""
from __future__ import annotations

import hashlib
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

from ponder.core.errors import PonderError

SPLITS = ("train", "validation", "test")
SKIP_PARTS = {"site-packages", "dist-packages", "__pycache__", ".git"}


@dataclass(frozen=True)
class Document:
    """One text: its name (relative path, or path#part for a file cut by position) and content."""

    name: str
    text: str


@dataclass
class Corpus:
    """Documents by split.

    Attributes:
        name: "stdlib" or the path given.
        splits: "train", "validation", "test" -> documents, in name order.
        skipped: files left out because they are not UTF-8 text.
    """

    name: str
    splits: dict[str, list[Document]]
    skipped: int = 0
    _fingerprint: str = field(default="", repr=False)

    def texts(self, split: str) -> list[str]:
        return [d.text for d in self.splits[split]]

    def chars(self, split: str) -> int:
        return sum(len(d.text) for d in self.splits[split])

    def fingerprint(self) -> str:
        """SHA-256 (20 hex) of every split's document names and texts: the corpus's content hash."""
        if not self._fingerprint:
            h = hashlib.sha256()
            for split in SPLITS:
                for doc in self.splits[split]:
                    for part in (split, doc.name, doc.text):
                        data = part.encode("utf-8", "surrogatepass")
                        h.update(len(data).to_bytes(8, "little") + data)
            self._fingerprint = h.hexdigest()[:20]
        return self._fingerprint


def split_of(name: str, val_frac: float, test_frac: float) -> str:
    """The split of document `name`: a uniform number from its SHA-256 against the fractions."""
    u = int.from_bytes(hashlib.sha256(name.encode("utf-8", "surrogatepass")).digest()[:8], "big") / 2**64
    return "test" if u < test_frac else "validation" if u < test_frac + val_frac else "train"


def _check_fracs(val_frac: float, test_frac: float) -> None:
    if not (0 < val_frac < 1 and 0 < test_frac < 1 and val_frac + test_frac < 1):
        raise PonderError(f"validation and test fractions must be in (0, 1) with sum < 1, got {val_frac}, {test_frac}")


def _read_text(path: Path) -> str | None:
    """The file as UTF-8 text, or None when it is binary or not UTF-8."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise PonderError(f"cannot read {path}: {e.strerror or e}") from None
    if b"\x00" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _by_position(doc: Document, val_frac: float, test_frac: float) -> dict[str, list[Document]]:
    """Cut one document at line boundaries: train, then validation, then test."""
    lines = doc.text.splitlines(keepends=True)
    if len(lines) < 3:
        raise PonderError(f"{doc.name} has {len(lines)} line(s); at least 3 are needed to split it")
    a = max(1, min(len(lines) - 2, round(len(lines) * (1 - val_frac - test_frac))))
    b = max(a + 1, min(len(lines) - 1, round(len(lines) * (1 - test_frac))))
    parts = {"train": lines[:a], "validation": lines[a:b], "test": lines[b:]}
    return {s: [Document(f"{doc.name}#{s}", "".join(p))] for s, p in parts.items()}


def _assemble(name: str, docs: list[Document], skipped: int, val_frac: float, test_frac: float) -> Corpus:
    docs = [d for d in docs if d.text]
    if not docs:
        raise PonderError(f"corpus {name} has no UTF-8 text ({skipped} file(s) skipped)")
    splits: dict[str, list[Document]] = {s: [] for s in SPLITS}
    for d in sorted(docs, key=lambda d: d.name):
        splits[split_of(d.name, val_frac, test_frac)].append(d)
    if any(not v for v in splits.values()):  # too few documents for a split by file: cut each one
        splits = {s: [] for s in SPLITS}
        for d in sorted(docs, key=lambda d: d.name):
            if d.text.count("\n") < 3:  # too short to cut: all of it trains
                splits["train"].append(d)
                continue
            for s, part in _by_position(d, val_frac, test_frac).items():
                splits[s] += part
        if any(not v for v in splits.values()):
            raise PonderError(f"corpus {name} is too small to split into train, validation and test")
    return Corpus(name, splits, skipped)


def stdlib_corpus(max_files: int = 0, val_frac: float = 0.05, test_frac: float = 0.05) -> Corpus:
    """The standard library's .py sources (module docstring).

    Args:
        max_files: keep this many files, chosen by a hash of their names (0 = all).
        val_frac, test_frac: expected shares of files in validation and test.
    """
    _check_fracs(val_frac, test_frac)
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [p for p in root.rglob("*.py") if not SKIP_PARTS & set(p.relative_to(root).parts)]
    if max_files:
        # a salted hash: the unsalted one decides the split, so the smallest would all be test files
        files = sorted(files, key=lambda p: hashlib.sha256(b"select:" + p.relative_to(root).as_posix().encode()).digest())
        files = files[:max_files]
    docs, skipped = [], 0
    for p in files:
        text = _read_text(p)
        if text is None:
            skipped += 1
        else:
            docs.append(Document(p.relative_to(root).as_posix(), text))
    return _assemble("stdlib", docs, skipped, val_frac, test_frac)


def path_corpus(path: str | Path, val_frac: float = 0.05, test_frac: float = 0.05) -> Corpus:
    """One text file, or every UTF-8 text file under a folder (hidden and package folders skipped)."""
    _check_fracs(val_frac, test_frac)
    root = Path(path).expanduser()
    if not root.exists():
        raise PonderError(f"corpus path {path} does not exist")
    if root.is_file():
        text = _read_text(root)
        if text is None:
            raise PonderError(f"corpus file {path} is not UTF-8 text")
        if not text:
            raise PonderError(f"corpus file {path} is empty")
        doc = Document(root.name, text)
        return Corpus(str(path), _by_position(doc, val_frac, test_frac))
    docs, skipped = [], 0
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if not p.is_file() or SKIP_PARTS & set(rel.parts) or any(s.startswith(".") for s in rel.parts):
            continue
        text = _read_text(p)
        if text is None:
            skipped += 1
        else:
            docs.append(Document(rel.as_posix(), text))
    return _assemble(str(path), docs, skipped, val_frac, test_frac)


def load_corpus(spec: str, *, max_files: int = 0, val_frac: float = 0.05, test_frac: float = 0.05) -> Corpus:
    """"stdlib" or a path (file or folder) -> `Corpus`. max_files applies to stdlib only."""
    if spec == "stdlib":
        return stdlib_corpus(max_files, val_frac, test_frac)
    if max_files:
        raise PonderError("max_files applies to the stdlib corpus only")
    return path_corpus(spec, val_frac, test_frac)
