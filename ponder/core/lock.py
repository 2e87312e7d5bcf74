"""One writer per run directory: an advisory operating-system lock that dies with its process.

`DirectoryLock(dir, command).acquire()` takes an exclusive `flock` on DIR/.ponder.lock without
waiting. The lock belongs to the open file, so the kernel drops it when the process ends however
it ends (exit, Ctrl-C, `kill -9`, a machine restart); nothing has to clean up after a crash. The
file also holds who wrote last: pid, host, command and start time, so that

- a second writer is refused at once, in one line naming the process that holds the lock and
  what to do (wait for it, stop it, or read without writing);
- a lock left by a process that died is recognised (the file names a holder, but nobody holds
  the lock) and taken over, with a line saying so.

Readers (`ponder report`, `ponder health`, `ponder eval --no-write`) never take it. An advisory
lock is exact between processes of one machine; on a network file system it is only as good as
that file system's `flock`.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Callable

from ponder.core.errors import PonderError
from ponder.core.files import writing

LOCK_FILE = ".ponder.lock"
READERS = "ponder eval RUN_DIR --no-write, ponder report or ponder health"


def _holder_text(info: dict) -> str:
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["started"])) if "started" in info else "?"
    return f"pid {info.get('pid', '?')} on host {info.get('host', '?')} (`{info.get('command', '?')}`, since {since})"


class DirectoryLock:
    """An exclusive, non-blocking lock on a directory for one writing command.

    Args:
        directory: the run (or comparison) directory; created if missing.
        command: what this process is doing, shown to a second writer ("ponder train demo").
        notice: where the take-over line goes (default: stderr).
    """

    def __init__(self, directory: Path, command: str, *, notice: Callable[[str], None] | None = None):
        self.directory = Path(directory)
        self.path = self.directory / LOCK_FILE
        self.command = command
        self.notice = notice or (lambda line: print(line, file=sys.stderr))
        self.fd: int | None = None

    def _read_info(self, fd: int) -> dict:
        os.lseek(fd, 0, os.SEEK_SET)
        raw = b""
        while chunk := os.read(fd, 4096):
            raw += chunk
        try:
            info = json.loads(raw.decode()) if raw.strip() else {}
        except (UnicodeDecodeError, json.JSONDecodeError):
            info = {"pid": "?", "host": "?", "command": "unreadable lock file"}
        return info if isinstance(info, dict) else {}

    def acquire(self) -> "DirectoryLock":
        """Take the lock or raise a PonderError naming its holder. Returns self."""
        if self.fd is not None:
            return self
        with writing("the lock file", self.path):
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            info = self._read_info(fd)
            os.close(fd)
            raise PonderError(f"{self.directory} is being written by {_holder_text(info)}; wait for it to end or "
                              f"stop it (kill {info.get('pid', 'PID')}); to look at the run meanwhile use "
                              f"{READERS}") from None
        except OSError as e:
            os.close(fd)
            raise PonderError(f"cannot lock {self.path}: {e.strerror or e}") from None
        stale = self._read_info(fd)
        if stale:
            self.notice(f"ponder: {self.directory} was locked by {_holder_text(stale)}, which is no longer running; "
                        f"taking the lock over")
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command, "started": time.time()}
        try:
            with writing("the lock file", self.path):
                os.ftruncate(fd, 0)
                os.lseek(fd, 0, os.SEEK_SET)
                os.write(fd, (json.dumps(info) + "\n").encode())
        except PonderError:
            os.close(fd)
            raise
        self.fd = fd
        return self

    def release(self) -> None:
        """Clear the holder's record and drop the lock (a no-op when not held)."""
        if self.fd is None:
            return
        try:
            os.ftruncate(self.fd, 0)  # a clean end leaves no holder to report
        except OSError:
            pass
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "DirectoryLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()


def command_line() -> str:
    """This process's command, for the lock record ("ponder train demo --train.steps=10")."""
    args = sys.argv[1:]
    head = "ponder" if Path(sys.argv[0]).name in ("ponder", "__main__.py") else Path(sys.argv[0]).name
    return " ".join([head, *args])[:200]
