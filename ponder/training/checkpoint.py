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

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from ponder.core.errors import PonderError

CHECKPOINTS = "checkpoints"
LATEST = "latest"


def _fsync_dir(path: Path) -> None:
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


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so readers see either the old or the new file, never a part."""
    path = Path(path)
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
    _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_eval_report(run_dir: Path, report: dict, markdown: str) -> Path:
    """RUN_DIR/eval/report.json and report.md, each written atomically; returns RUN_DIR/eval."""
    out_dir = Path(run_dir) / "eval"
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "report.json", json.dumps(report, indent=1) + "\n")
    atomic_write_text(out_dir / "report.md", markdown)
    return out_dir


def _contiguous(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in tensors.items()}


def save_checkpoint(run_dir: Path, step: int, *, model_state: dict[str, Tensor],
                    ema_state: dict[str, Tensor] | None, training_state: dict[str, Any],
                    config: dict, keep: int = 2) -> Path:
    """Write checkpoint `step` atomically and point `latest` at it; keep the newest `keep`."""
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:07d}"
    final = root / name
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{name}."))
    try:
        save_file(_contiguous(model_state), str(tmp / "model.safetensors"))
        if ema_state is not None:
            save_file(_contiguous(ema_state), str(tmp / "ema.safetensors"))
        torch.save(training_state, tmp / "state.pt")
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if final.exists():  # a re-run of the same step after a crash: replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    atomic_write_text(root / LATEST, name + "\n")
    complete = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-"))
    for old in complete[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
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
