import pytest
import torch

from ponder.core.errors import PonderError
from ponder.core.files import atomic_write_text
from ponder.training.checkpoint import load_checkpoint, resolve_checkpoint, run_dir_of, save_checkpoint


def _save(run, step, keep=2):
    return save_checkpoint(run, step, model_state={"w": torch.full((2, 2), float(step))}, ema_state=None,
                           training_state={"step": step, "rng": torch.get_rng_state()}, config={"x": 1}, keep=keep)


def test_round_trip_and_latest_pointer(tmp_path):
    for s in (1, 2, 3):
        _save(tmp_path, s)
    ckpt = resolve_checkpoint(tmp_path)
    assert ckpt.name == "step-0000003" and run_dir_of(ckpt) == tmp_path
    data = load_checkpoint(ckpt)
    assert torch.equal(data["model"]["w"], torch.full((2, 2), 3.0))
    assert data["state"]["step"] == 3 and data["ema"] is None and data["config"] == {"x": 1}
    kept = sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.is_dir())
    assert kept == ["step-0000002", "step-0000003"]  # older pruned, no temporary leftovers


@pytest.mark.parametrize("victim", ["model.safetensors", "state.pt"])
def test_truncated_checkpoint_is_a_clear_error(tmp_path, victim):
    ckpt = _save(tmp_path, 5)
    data = (ckpt / victim).read_bytes()
    (ckpt / victim).write_bytes(data[: len(data) // 2])
    with pytest.raises(PonderError, match="corrupt or truncated"):
        load_checkpoint(ckpt)


def test_missing_paths_are_clear_errors(tmp_path):
    with pytest.raises(PonderError, match="no such run"):
        resolve_checkpoint(tmp_path / "nowhere")
    with pytest.raises(PonderError, match="holds no checkpoint"):
        resolve_checkpoint(tmp_path)
    ckpt = _save(tmp_path, 1)
    (ckpt / "state.pt").unlink()
    with pytest.raises(PonderError, match="incomplete: missing state.pt"):
        load_checkpoint(ckpt)


def test_atomic_write_replaces_whole_file(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "one")
    atomic_write_text(tmp_path / "a.txt", "two")
    assert (tmp_path / "a.txt").read_text() == "two"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]
