"""A run directory nothing can corrupt, tried with real faults: two real processes racing on one
run, a child killed with SIGKILL while it holds the lock, a real full file system (a small tmpfs,
where the machine lets the test mount one) and a fault-injecting writer with the same error, a
read-only file system, SIGTERM / SIGINT / SIGKILL at every point of a checkpoint write, and a
reader that loads a run while it is being trained. Each checks the refusal line, the exit code,
the files left and the log's steps (a log whose steps repeat counts as data lost)."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
from run_support import records as _records

import ponder.training.checkpoint as checkpoint
from ponder.cli import main
from ponder.core.errors import PonderError
from ponder.core.lock import LOCK_FILE, DirectoryLock
from ponder.presets import get_config
from ponder.runs.config import apply_overrides
from ponder.runs.run import train_run
from ponder.runs.trained import load_trained
from ponder.training.checkpoint import load_checkpoint, resolve_checkpoint

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["--train.steps=20", "--train.checkpoint_every=5", "--train.eval_every=10", "--eval.max_samples=16",
          "--train.progress=false", "--train.log_every=1"]


def _cli(*args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-m", "ponder", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(p: subprocess.Popen, timeout: float = 240) -> tuple[int, str]:
    _, err = p.communicate(timeout=timeout)
    return p.returncode, err


def _error_lines(stderr: str) -> list[str]:
    """The lines of stderr that are not the run-directory notice or a take-over notice."""
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith("run directory:")
            and "taking the lock over" not in line]


def _steps(run_dir: Path, kind: str = "train") -> list[int]:
    return [r["step"] for r in _records(run_dir) if r["kind"] == kind]


def _assert_each_step_once(run_dir: Path, last: int) -> None:
    steps = _steps(run_dir)
    assert steps == list(range(1, last + 1)), steps


def _temporaries(run_dir: Path) -> list[Path]:
    return [p for p in run_dir.rglob(".*") if p.name != LOCK_FILE]


def _cfg(*overrides: str):
    return apply_overrides(get_config("debug"), [*COMMON, *overrides])


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    """The debug run of `_cfg()`, trained without a fault: what every faulty run must end equal to."""
    run_dir = tmp_path_factory.mktemp("full") / "run"
    train_run(_cfg(), run_dir, final_eval=False)
    return run_dir


# ----------------------------------------------------------------------------- the lock itself

def test_a_second_lock_is_refused_naming_the_holder(tmp_path):
    first = DirectoryLock(tmp_path / "run", "ponder train demo").acquire()
    holder = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        from ponder.core.lock import DirectoryLock
        from ponder.core.errors import PonderError
        try:
            DirectoryLock({str(tmp_path / 'run')!r}, "ponder eval").acquire()
        except PonderError as e:
            print(e)
            sys.exit(2)
        """)], env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=60)
    assert holder.returncode == 2
    line = holder.stdout.strip()
    assert f"pid {os.getpid()} on host {socket.gethostname()}" in line and "ponder train demo" in line
    assert "--no-write" in line and "\n" not in line
    first.release()
    assert (tmp_path / "run" / LOCK_FILE).read_text() == ""  # a clean end leaves no holder behind
    DirectoryLock(tmp_path / "run", "again").acquire().release()


def test_a_lock_whose_holder_died_is_taken_over_with_a_line(tmp_path):
    lines: list[str] = []
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / LOCK_FILE).write_text(json.dumps({"pid": 999999, "host": "gone", "command": "ponder train x",
                                                          "started": 0}))
    with DirectoryLock(tmp_path / "run", "ponder train --resume", notice=lines.append):
        pass
    assert len(lines) == 1 and "pid 999999 on host gone" in lines[0] and "taking the lock over" in lines[0]


# ----------------------------------------------------------------------------- two writers, a killed writer

def test_two_processes_racing_on_one_run_directory(tmp_path):
    """Both start the same fresh run at once: one trains, the other is refused at once in one line;
    the same for two `--resume` at once. The log holds every step once."""
    run_dir = tmp_path / "run"
    procs = [_cli("train", "debug", "--run-dir", str(run_dir), *COMMON) for _ in range(2)]
    results = [_finish(p) for p in procs]
    assert sorted(code for code, _ in results) == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    lines = _error_lines(refused)
    assert len(lines) == 1 and lines[0].startswith("ponder: error: ") and "is being written by pid" in lines[0]
    assert "Traceback" not in refused
    _assert_each_step_once(run_dir, 20)
    procs = [_cli("train", "--resume", str(run_dir), "--extend-steps", "10") for _ in range(2)]
    results = [_finish(p) for p in procs]
    assert sorted(code for code, _ in results) == [0, 2], results
    assert "is being written by pid" in next(err for code, err in results if code == 2)
    _assert_each_step_once(run_dir, 30)


def test_a_writer_killed_while_holding_the_lock_is_taken_over(tmp_path):
    run_dir = tmp_path / "run"
    victim = _cli("train", "debug", "--run-dir", str(run_dir), *COMMON, "--train.steps=400")
    latest = run_dir / "checkpoints" / "latest"
    deadline = time.time() + 240
    while time.time() < deadline and victim.poll() is None and not latest.exists():
        time.sleep(0.02)
    assert victim.poll() is None, "the victim ended before its first checkpoint"
    assert str(victim.pid) in (run_dir / LOCK_FILE).read_text()
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    code, err = _finish(_cli("train", "--resume", str(run_dir), "--train.steps=30"))
    assert code == 0, err
    assert f"locked by pid {victim.pid}" in err and "no longer running; taking the lock over" in err
    _assert_each_step_once(run_dir, 30)
    assert _temporaries(run_dir) == []


def test_eval_that_writes_is_refused_while_training_and_no_write_reads_a_whole_checkpoint(tmp_path):
    """A reader loads a run again and again while it trains with a checkpoint every step and keeps
    only the newest one (the hardest case: the checkpoint just named is pruned a step later)."""
    run_dir = tmp_path / "run"
    trainer = _cli("train", "debug", "--run-dir", str(run_dir), *COMMON, "--train.steps=150",
                   "--train.checkpoint_every=1", "--train.keep_checkpoints=1", "--train.eval_every=0")
    deadline = time.time() + 240
    while time.time() < deadline and not (run_dir / "checkpoints" / "latest").exists():
        time.sleep(0.02)
    steps_read = []
    refused = None
    while trainer.poll() is None and time.time() < deadline:
        model, task, cfg, ckpt = load_trained(run_dir)
        steps_read.append(int(ckpt.name.split("-")[1]))
        if refused is None:
            refused = _finish(_cli("eval", str(run_dir)), timeout=120)
    code, err = _finish(trainer)
    assert code == 0, err
    assert len(steps_read) >= 3 and steps_read == sorted(steps_read)
    if refused is not None and refused[0] != 0:  # the trainer was still running when eval started
        assert refused[0] == 2 and "is being written by pid" in refused[1] and "--no-write" in refused[1]
    assert main(["eval", str(run_dir), "--no-write"]) == 0
    assert not (run_dir / "eval").exists() or refused is not None


# ----------------------------------------------------------------------------- full disk, read-only

@contextlib.contextmanager
def small_tmpfs(size: str):
    """A real tmpfs of `size` mounted on a fresh folder (root only); skips where it cannot be had."""
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root on Linux")
    mnt = Path(tempfile.mkdtemp(prefix="ponder-tmpfs-"))
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        mnt.rmdir()
        pytest.skip("this machine does not allow mounting a tmpfs")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
        with contextlib.suppress(OSError):
            mnt.rmdir()


def test_a_real_full_disk_is_one_line_and_the_run_resumes_exactly(tmp_path, uninterrupted):
    with small_tmpfs("600k") as mnt:
        run_dir = mnt / "run"
        code, err = _finish(_cli("train", "debug", "--run-dir", str(run_dir), *COMMON))
        lines = _error_lines(err)
        assert code == 2 and len(lines) == 1, err
        line = lines[0]
        assert line.startswith("ponder: error: could not write ") and "no space left on device" in line
        assert " at step " in line and ("last intact checkpoint is" in line or "no checkpoint was written" in line)
        assert _temporaries(run_dir) == []
        if "last intact checkpoint is" in line:
            load_checkpoint(resolve_checkpoint(run_dir))  # whole and loadable
        subprocess.run(["mount", "-o", "remount,size=64m", str(mnt)], check=True)
        code, err = _finish(_cli("train", "--resume", str(run_dir)) if (run_dir / "checkpoints").exists() else
                            _cli("train", "debug", "--run-dir", str(run_dir), *COMMON))
        assert code == 0, err
        assert _records(run_dir) == _records(uninterrupted)


def test_a_read_only_file_system_is_one_line_for_every_writer_and_readers_still_work(tmp_path):
    with small_tmpfs("64m") as mnt:
        run_dir = mnt / "run"
        train_run(_cfg(), run_dir)
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        for args in (["train", "--resume", str(run_dir), "--extend-steps", "5"], ["eval", str(run_dir)]):
            code, err = _finish(_cli(*args))
            lines = _error_lines(err)
            assert code == 2 and len(lines) == 1 and "read-only file system" in lines[0], (args, err)
        code, err = _finish(_cli("eval", str(run_dir), "--no-write"))
        assert code == 0, err


class FullDiskAt:
    """Fault injection with the full disk's own error: the k-th call of a writer raises ENOSPC."""

    def __init__(self, k: int):
        self.k, self.calls = k, 0

    def __call__(self, real):
        def write(*args, **kw):
            self.calls += 1
            if self.calls == self.k:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(*args, **kw)
        return write


@pytest.mark.parametrize("where", ["checkpoint", "metrics log"])
def test_an_injected_full_disk_is_one_line_and_the_run_resumes_exactly(tmp_path, monkeypatch, capsys, where,
                                                                        uninterrupted):
    import ponder.core.files as files
    run_dir = tmp_path / "run"
    fault = FullDiskAt(5 if where == "checkpoint" else 12)  # 5: the state.pt of checkpoint 10
    if where == "checkpoint":
        monkeypatch.setattr(checkpoint, "write_file", fault(files.write_file))
    else:
        monkeypatch.setattr(files.os, "write", fault(os.write))
    code = main(["train", "debug", "--run-dir", str(run_dir), *COMMON])
    err = capsys.readouterr().err
    lines = _error_lines(err)
    assert code == 2 and len(lines) == 1, err
    assert "no space left on device at step" in lines[0] and "last intact checkpoint is" in lines[0]
    assert _temporaries(run_dir) == []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        json.loads(line)  # no half line left by the failed append
    monkeypatch.undo()
    assert main(["train", "--resume", str(run_dir)]) == 0
    assert _records(run_dir) == _records(uninterrupted)


# ----------------------------------------------------------------------------- signals inside a checkpoint write

WRITE_POINTS = ["model.safetensors", "ema.safetensors", "state.pt", "config.json", "rename", "latest", "prune"]


class SignalAt:
    """Sends `signals` to this process when the checkpoint of step `step` reaches `point`."""

    def __init__(self, monkeypatch, step: int, point: str, signals: list[int]):
        self.step, self.point, self.signals, self.current, self.fired = step, point, signals, None, False
        real_save, real_write = checkpoint.save_checkpoint, checkpoint.write_file
        real_replace, real_atomic, real_rmtree = checkpoint.os.replace, checkpoint.atomic_write_text, \
            checkpoint.shutil.rmtree

        def save(run_dir, step, **kw):
            self.current = step
            try:
                return real_save(run_dir, step, **kw)
            finally:
                self.current = None

        def hook(name, real):
            def wrapped(*args, **kw):
                if not self.fired and self.current == self.step and (
                        name == self.point or (name == "write" and Path(args[0]).name == self.point)):
                    self.fired = True
                    for sig in self.signals:
                        os.kill(os.getpid(), sig)
                return real(*args, **kw)
            return wrapped

        monkeypatch.setattr(checkpoint, "save_checkpoint", save)
        monkeypatch.setattr(checkpoint, "write_file", hook("write", real_write))
        monkeypatch.setattr(checkpoint.os, "replace", hook("rename", real_replace))
        monkeypatch.setattr(checkpoint, "atomic_write_text", hook("latest", real_atomic))
        monkeypatch.setattr(checkpoint.shutil, "rmtree", hook("prune", real_rmtree))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("point", WRITE_POINTS)
def test_a_signal_at_any_point_of_a_checkpoint_write_leaves_a_whole_latest(tmp_path, monkeypatch, point, sig,
                                                                            uninterrupted):
    """Two signals (the second would stop at once) arrive inside the write of checkpoint 15: the
    write still finishes, `latest` names a whole checkpoint, and resuming ends equal to the
    uninterrupted run."""
    import ponder.training.loop as loop
    monkeypatch.setattr(loop, "save_checkpoint", checkpoint.save_checkpoint)  # the loop's own name
    SignalAt(monkeypatch, 15, point, [sig, sig])
    monkeypatch.setattr(loop, "save_checkpoint", checkpoint.save_checkpoint)
    run_dir = tmp_path / "run"
    with pytest.raises((KeyboardInterrupt, PonderError)):
        train_run(_cfg("--train.ema_decay=0.9"), run_dir, final_eval=False)
    monkeypatch.undo()
    ckpt = resolve_checkpoint(run_dir)
    load_checkpoint(ckpt)
    assert ckpt.name in ("step-0000010", "step-0000015")
    train_run(_cfg("--train.ema_decay=0.9"), run_dir, resume=True, final_eval=False)
    steps = _steps(run_dir)
    assert steps == sorted(set(steps)) == list(range(1, 21))


@pytest.mark.parametrize("point", ["state.pt", "latest"])
def test_sigkill_inside_a_checkpoint_write_leaves_a_whole_latest_and_no_temporaries(tmp_path, point, uninterrupted):
    run_dir = tmp_path / "run"
    child = textwrap.dedent(f"""
        import os, signal, sys
        from pathlib import Path
        sys.path.insert(0, {str(ROOT / 'tests')!r})
        import pytest
        from test_run_dir_safety import SignalAt, COMMON
        import ponder.training.checkpoint as checkpoint, ponder.training.loop as loop
        mp = pytest.MonkeyPatch()
        SignalAt(mp, 15, {point!r}, [signal.SIGKILL])
        mp.setattr(loop, "save_checkpoint", checkpoint.save_checkpoint)
        from ponder.cli import main
        main(["train", "debug", "--run-dir", {str(run_dir)!r}, *COMMON])
        """)
    p = subprocess.run([sys.executable, "-c", child], env=dict(os.environ, PYTHONPATH=str(ROOT)),
                       capture_output=True, text=True, timeout=240)
    assert p.returncode == -signal.SIGKILL, p.stderr
    load_checkpoint(resolve_checkpoint(run_dir))
    train_run(_cfg(), run_dir, resume=True, final_eval=False)
    assert _temporaries(run_dir) == []
    assert _records(run_dir) == _records(uninterrupted)


def test_every_writing_command_refuses_a_locked_run_and_readers_do_not_wait(tmp_path, capsys, uninterrupted):
    from ponder.experiments.compare import compare
    with DirectoryLock(uninterrupted, "ponder train debug"):
        assert main(["eval", str(uninterrupted)]) == 2
        assert "is being written by pid" in capsys.readouterr().err
        assert main(["eval", str(uninterrupted), "--no-write"]) == 0
        assert main(["health", str(uninterrupted)]) in (0, 1)  # a reader: its verdict, not a refusal
        assert "is being written" not in capsys.readouterr().err
    with DirectoryLock(tmp_path / "cmp", "ponder compare debug debug"):
        with pytest.raises(PonderError, match="is being written by pid"):
            compare("debug", "demo", seeds=1, out=tmp_path / "cmp", quiet=True)
