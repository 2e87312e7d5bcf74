"""Writing files so that a reader never sees half of one, and a failed write is one line.

- `atomic_write_bytes` / `atomic_write_text`: a temporary file beside the target, fsynced, then
  renamed over it; readers see the old file or the new one, and a failed or interrupted write
  leaves no temporary file behind.
- `append_text`: an append that, when it fails, cuts the file back to its old length, so a full
  disk never leaves half a line in an append-only log.
- `writing(what, path)`: turns an operating-system error (no space left, a read-only file
  system, permission denied, ...) into `WriteFailed`, a `PonderError` naming what could not be
  written and why, so a command ends in one line instead of a traceback.
"""
from __future__ import annotations

import contextlib
import io
import os
import tempfile
from pathlib import Path
from typing import Iterator

from ponder.core.errors import PonderError


class WriteFailed(PonderError):
    """A file could not be written. `what` says what the file is (a checkpoint, the metrics log,
    ...), `path` where, `reason` the operating system's words."""

    def __init__(self, what: str, path: Path | str, reason: str):
        self.what, self.path, self.reason = what, Path(path), reason
        super().__init__(f"could not write {what} ({path}): {reason}")


def os_reason(e: OSError) -> str:
    """The operating system's reason for an error, in lower case ("no space left on device")."""
    text = e.strerror or str(e) or type(e).__name__
    return text[0].lower() + text[1:]


@contextlib.contextmanager
def writing(what: str, path: Path | str) -> Iterator[None]:
    """Within the block, an OSError becomes `WriteFailed(what, path, reason)`."""
    try:
        yield
    except WriteFailed:
        raise
    except OSError as e:
        raise WriteFailed(what, path, os_reason(e)) from None


def fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable (best effort: some file systems refuse directory fsync)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_file(path: Path, data: bytes) -> None:
    """Write and fsync a new file (the caller makes it visible atomically, e.g. by a rename)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_bytes(path: Path, data: bytes, what: str = "file") -> None:
    """Write `data` to `path` so readers see either the old or the new file, never a part."""
    path = Path(path)
    with writing(what, path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str, what: str = "file") -> None:
    atomic_write_bytes(path, text.encode(), what)


def append_text(path: Path, text: str, what: str = "file") -> None:
    """Append `text` to `path`; if the write fails the file is cut back to its old length first."""
    path = Path(path)
    with writing(what, path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            data = memoryview(text.encode())
            try:
                while data:
                    data = data[os.write(fd, data):]
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size)  # shrinking a file needs no free space
                raise
        finally:
            os.close(fd)


def save_figure(fig, path: Path, what: str = "a figure", **savefig_kw) -> None:
    """A matplotlib figure written atomically (rendered in memory first, in the file's format)."""
    buf = io.BytesIO()
    fig.savefig(buf, format=Path(path).suffix.lstrip(".") or "png", **savefig_kw)
    atomic_write_bytes(path, buf.getvalue(), what)
