"""Checkpoints: atomic writes, exact resume, clear errors for missing or corrupt files.

Layout of a run directory:

    RUN_DIR/config.json                      resolved config (also copied into each checkpoint)
    RUN_DIR/metrics.jsonl, metrics.csv       one record per log/eval event
    RUN_DIR/checkpoints/step-0000500/        model.safetensors, ema.safetensors, state.pt, config.json
    RUN_DIR/checkpoints/latest               name of the newest complete checkpoint

A checkpoint is written into a hidden temporary directory, fsynced, renamed into place, and only
then named in `latest` (itself replaced atomically). A crash or Ctrl-C at any moment therefore
leaves the previous checkpoint intact and `latest` pointing at a complete one.
Weights go to safetensors; optimizer, EMA-free training state, RNG states, data position and the
deep-supervision carry go to the `state.pt` sidecar.
"""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch
from safetensors.torch import load_file
from safetensors.torch import save as save_bytes
from torch import Tensor

from ponder.core.errors import PonderError
from ponder.core.files import WriteFailed, atomic_write_text, fsync_dir, write_file, writing

T = TypeVar("T")
CHECKPOINTS = "checkpoints"
LATEST = "latest"


def write_eval_report(out_dir: Path, report: dict, markdown: str) -> Path:
    """OUT/report.json and report.md (OUT is usually RUN_DIR/eval), each written atomically;
    returns OUT."""
    out_dir = Path(out_dir)
    with writing("the evaluation report", out_dir):
        out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "report.json", json.dumps(report, indent=1) + "\n", what="the evaluation report")
    atomic_write_text(out_dir / "report.md", markdown, what="the evaluation report")
    return out_dir


def _contiguous(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in tensors.items()}


def _safetensors_bytes(tensors: dict[str, Tensor]) -> bytes:
    return save_bytes({k: v.detach().contiguous().cpu() for k, v in tensors.items()})


def _torch_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Delete what an interrupted write left behind (hidden `.step-*` checkpoint folders and
    `.*.tmp` files of atomic writes). Only the run's one writer (it holds the run's lock) may call
    this: another writer's temporaries would be in use. Returns what was removed."""
    run_dir = Path(run_dir)
    found = [p for p in run_dir.glob(f"{CHECKPOINTS}/.step-*")]
    found += [p for d in (run_dir, run_dir / CHECKPOINTS, run_dir / "eval") for p in d.glob(".*.tmp")]
    for p in found:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return found


def save_checkpoint(run_dir: Path, step: int, *, model_state: dict[str, Tensor],
                    ema_state: dict[str, Tensor] | None, training_state: dict[str, Any],
                    config: dict, keep: int = 2) -> Path:
    """Write checkpoint `step` atomically and point `latest` at it; keep the newest `keep`.

    Every file is serialised in memory first, so a failed write (a full disk, a read-only file
    system) is an OSError of our own writes, reported as `WriteFailed` naming the checkpoint, and
    the temporary folder is removed: the previous checkpoint stays `latest`."""
    root = Path(run_dir) / CHECKPOINTS
    name = f"step-{step:07d}"
    final = root / name
    files = {"model.safetensors": _safetensors_bytes(model_state)}
    if ema_state is not None:
        files["ema.safetensors"] = _safetensors_bytes(ema_state)
    files["state.pt"] = _torch_bytes(training_state)
    files["config.json"] = (json.dumps(config, indent=2) + "\n").encode()
    with writing(f"checkpoint {name}", final):
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{name}."))
        try:
            for file_name, data in files.items():
                write_file(tmp / file_name, data)
            if final.exists():  # a re-run of the same step after a crash: replace it
                shutil.rmtree(final)
            os.replace(tmp, final)
            fsync_dir(root)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    atomic_write_text(root / LATEST, name + "\n", what=f"the checkpoint pointer {root / LATEST}")
    complete = _complete_checkpoints(root)
    for old in complete[:-keep] if keep > 0 else []:
        # renamed first, so a reader finds a checkpoint whole or not at all, never half deleted
        hidden = old.with_name(f".{old.name}.pruned")
        try:
            os.replace(old, hidden)
        except OSError:
            hidden = old
        shutil.rmtree(hidden, ignore_errors=True)
    return final


STEP_NAME = re.compile(r"step-\d{7}")


def _complete_checkpoints(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and STEP_NAME.fullmatch(p.name)) if root.is_dir() else []


def resolve_checkpoint(path: Path) -> Path:
    """A run directory (-> its latest checkpoint) or a checkpoint directory -> checkpoint dir."""
    path = Path(path)
    if not path.exists():
        raise PonderError(f"no such run or checkpoint: {path}")
    if not path.is_dir():
        raise PonderError(f"{path} is a file; give a run directory or a checkpoint directory")
    if STEP_NAME.fullmatch(path.name) or (path / "model.safetensors").exists():
        return path
    root = path / CHECKPOINTS
    latest = root / LATEST
    if latest.exists():
        try:
            name = latest.read_bytes().decode("utf-8").strip()
        except (UnicodeDecodeError, OSError):
            name = None
        if name is None or not STEP_NAME.fullmatch(name):
            found = _complete_checkpoints(root)
            hint = f"; the newest checkpoint there is {found[-1]}, give it directly" if found else ""
            raise PonderError(f"{latest} is corrupt (it should name a step-NNNNNNN checkpoint){hint}")
        ckpt = root / name
        if not ckpt.is_dir():
            raise PonderError(f"{latest} names {name!r}, which is missing")
        return ckpt
    found = _complete_checkpoints(root)
    hint = f" ({LATEST} is missing; the newest checkpoint there is {found[-1]}, give it directly)" if found else ""
    raise PonderError(f"{path} holds no checkpoint{hint}")


def stopped_by_write(e: WriteFailed, run_dir: Path, step: int | None, *, finished: bool = False) -> PonderError:
    """The one line a command ends with when a write of the run failed: what could not be
    written and why, the step, and the last intact checkpoint to continue from."""
    try:
        ckpt = resolve_checkpoint(Path(run_dir))
    except PonderError:
        ckpt = None
    if finished and ckpt is not None:
        then = f"training is complete ({ckpt}); make room, then write the evaluation with: ponder eval {run_dir}"
    elif ckpt is not None:
        then = (f"the last intact checkpoint is {ckpt} (step {int(ckpt.name.split('-')[1])}); make room, then "
                f"continue with: ponder train --resume {run_dir}")
    else:
        then = "no checkpoint was written yet; make room, then start the run again"
    return PonderError(f"{e}{'' if step is None else f' at step {step}'}; {then}")


def read_latest(path: Path, read: Callable[[Path], T], attempts: int = 5) -> tuple[Path, T]:
    """`read(checkpoint)` of a run's latest checkpoint (or of the checkpoint `path` names), for a
    reader that holds no lock: while a run trains, the checkpoint `latest` named a moment ago can
    be pruned under the reader (a run keeps only the newest few), so a read that fails because its
    checkpoint vanished starts again from the new `latest`. Returns (checkpoint, what was read)."""
    for attempt in range(attempts):
        try:
            ckpt = resolve_checkpoint(path)
        except PonderError:
            if attempt == attempts - 1:
                raise
            continue  # `latest` named a checkpoint that was pruned a moment later
        try:
            return ckpt, read(ckpt)
        except PonderError:
            if attempt == attempts - 1 or ckpt == Path(path) or _latest_or_none(path) == ckpt:
                raise  # damage, not a checkpoint pruned by the run's writer
    raise AssertionError("unreachable")


def _latest_or_none(path: Path) -> Path | None:
    try:
        return resolve_checkpoint(path)
    except PonderError:
        return None


def run_dir_of(ckpt: Path) -> Path:
    """The run directory a checkpoint directory belongs to."""
    ckpt = Path(ckpt)
    return ckpt.parent.parent if ckpt.parent.name == CHECKPOINTS else ckpt


def _unreadable(ckpt: Path, name: str, e: Exception) -> PonderError:
    if isinstance(e, FileNotFoundError):
        return PonderError(f"checkpoint {ckpt} is incomplete: missing {name}")
    reason = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
    return PonderError(f"checkpoint {ckpt}: {name} is corrupt or truncated ({reason})")


def read_weights(ckpt: Path, which: str = "model") -> dict[str, Tensor] | None:
    """The tensors of `which`.safetensors ("model" or "ema"); None when a run kept no EMA."""
    path = Path(ckpt) / f"{which}.safetensors"
    if which == "ema" and not path.exists():
        return None
    try:
        return load_file(str(path))
    except Exception as e:  # any failure to parse the file is the file's fault, reported in one line
        raise _unreadable(ckpt, path.name, e) from None


def read_training_state(ckpt: Path) -> dict[str, Any]:
    """The `state.pt` sidecar (optimizer, data position, carry, RNG, callbacks)."""
    path = Path(ckpt) / "state.pt"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and torch errors alike: the file is unreadable
        raise _unreadable(ckpt, path.name, e) from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise PonderError(f"checkpoint {ckpt}: state.pt is not a training state")
    return state


def read_config(ckpt: Path) -> dict:
    """The config dict saved in a checkpoint."""
    path = Path(ckpt) / "config.json"
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except Exception as e:
        raise _unreadable(ckpt, path.name, e) from None
    if not isinstance(data, dict):
        raise PonderError(f"checkpoint {ckpt}: config.json is not a config")
    return data


def load_checkpoint(ckpt: Path) -> dict[str, Any]:
    """Read a whole checkpoint directory: {"model", "ema" (or None), "state", "config"}."""
    return {"model": read_weights(ckpt, "model"), "ema": read_weights(ckpt, "ema"),
            "state": read_training_state(ckpt), "config": read_config(ckpt)}


def nonfinite_tensors(weights: dict[str, Tensor]) -> list[str]:
    """Names of the floating-point tensors holding NaN or inf."""
    return [k for k, v in weights.items() if v.dtype.is_floating_point and not torch.isfinite(v).all()]


def partial_load(model: torch.nn.Module, weights: dict[str, Tensor]) -> dict[str, list[str]]:
    """Load every tensor of `weights` whose name and shape match `model`; keep the rest as built.

    Returns a report: loaded, newly_initialised (in the model, not in the weights),
    shape_mismatched (same name, other shape: left as initialised), unexpected (in the weights
    only).
    """
    own = model.state_dict()
    report: dict[str, list[str]] = {"loaded": [], "newly_initialised": [], "shape_mismatched": [], "unexpected": []}
    matched = {}
    for name, tensor in weights.items():
        if name not in own:
            report["unexpected"].append(name)
        elif own[name].shape != tensor.shape:
            report["shape_mismatched"].append(f"{name}: {tuple(tensor.shape)} -> {tuple(own[name].shape)}")
        else:
            matched[name] = tensor
            report["loaded"].append(name)
    report["newly_initialised"] = [n for n in own if n not in weights]
    model.load_state_dict(matched, strict=False)
    return report


def format_load_report(report: dict[str, list[str]], source: Path) -> str:
    lines = [f"init-from {source}: loaded {len(report['loaded'])}, newly initialised "
             f"{len(report['newly_initialised'])}, shape-mismatched {len(report['shape_mismatched'])}, "
             f"unexpected {len(report['unexpected'])}"]
    for key in ("newly_initialised", "shape_mismatched", "unexpected"):
        for name in report[key]:
            lines.append(f"  {key}: {name}")
    return "\n".join(lines)
