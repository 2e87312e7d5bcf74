"""Host syncs in the training step: every read of a device value by the host (`.item()`,
`float(t)`, `bool(t)`, `.tolist()`, `.numpy()`, `nonzero`, a boolean-mask index) makes the host
wait for the device on a GPU. A CPU run counts them through patched tensor methods: the step now
reads once (tests fail before: 15-20 a step). The optimizer's own step counters are host tensors
on every device (torch keeps Adam's `step` on the CPU unless capturable), so its step is not
counted."""
import numpy as np
import pytest
import torch

from ponder.presets import get_config
from ponder.runs.config import apply_overrides
from ponder.runs.run import open_run
from ponder.training.loop import train_step
from ponder.training.transfer import fetch

READS = ("item", "tolist", "numpy", "nonzero", "__bool__", "__float__", "__int__", "__index__")


@pytest.fixture
def host_reads(monkeypatch):
    """Counts host reads of tensors while `counting[0]` is True."""
    counting, reads = [False], []

    def wrap(name, original):
        def counted(self, *args, **kwargs):
            if counting[0]:
                reads.append(name)
            return original(self, *args, **kwargs)
        return counted

    for name in READS:
        monkeypatch.setattr(torch.Tensor, name, wrap(name, getattr(torch.Tensor, name)))
    for name in ("__getitem__", "__setitem__"):
        original = getattr(torch.Tensor, name)

        def masked(self, index, *args, _original=original, _name=name):
            parts = index if isinstance(index, tuple) else (index,)
            if counting[0] and any(isinstance(p, torch.Tensor) and p.dtype == torch.bool for p in parts):
                reads.append(f"{_name}[mask]")
            return _original(self, index, *args)
        monkeypatch.setattr(torch.Tensor, name, masked)
    return counting, reads


@pytest.mark.parametrize("overrides", [[], ["--halt.kind=q_continue"], ["--halt.kind=act"],
                                       ["--halt.kind=pondernet"], ["--train.ema_decay=0.9"]])
def test_a_training_step_reads_the_device_once(tmp_path, host_reads, overrides):
    counting, reads = host_reads
    cfg = apply_overrides(get_config("debug"), ["--train.eval_every=0", "--train.checkpoint_every=0",
                                                "--train.tensorboard=off", "--train.log_every=3",
                                                "--health.attention_every=0", *overrides])
    run = open_run(cfg, tmp_path / "r")
    run.callbacks.call("on_train_start", run)
    step = run.optimizer.step

    def uncounted_step(*a, **k):
        counting[0] = False
        try:
            return step(*a, **k)
        finally:
            counting[0] = True
    run.optimizer.step = uncounted_step
    train_step(run)  # the first step fills the carry (the stream's batch is made on the host)
    per_step = []
    for _ in range(6):
        reads.clear()
        counting[0] = True
        train_step(run)
        counting[0] = False
        per_step.append(list(reads))
    assert all(r == ["numpy"] for r in per_step), per_step


def test_fetch_reads_scalars_masks_and_counts_in_one_copy():
    got = fetch({"a": torch.tensor(1.5), "flag": torch.tensor(True), "n": torch.tensor(3),
                 "mask": torch.tensor([True, False]), "steps": torch.tensor([2, 5]), "x": 7.0, "s": "k"})
    assert got["a"] == 1.5 and got["flag"] is True and got["n"] == 3 and isinstance(got["n"], int)
    assert got["mask"].dtype == bool and got["mask"].tolist() == [True, False]
    assert got["steps"].tolist() == [2, 5] and np.issubdtype(got["steps"].dtype, np.integer)
    assert got["x"] == 7.0 and got["s"] == "k"
