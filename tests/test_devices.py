"""Device hygiene without a GPU: every tensor the code makes must be made where the model is.

With `torch.set_default_device("meta")` while the model and data live on the CPU, a tensor made
without an explicit device lands on the meta device and the first op that mixes it with a real
tensor fails, as a CPU tensor beside a CUDA model would. The test trains, evaluates, calibrates
(halt.threshold=auto), diagnoses and reports a few steps that way."""
import pytest
import torch

from ponder.experiments.diagnose import diagnose_gradients
from ponder.health import faults
from ponder.presets import get_config
from ponder.reports.page import build_page
from ponder.runs.config import apply_overrides
from ponder.runs.run import build_model, open_run, train_run
from ponder.runs.trained import evaluate_checkpoint
from ponder.tasks import build_task


@pytest.fixture
def meta_default():
    torch.set_default_device("meta")
    try:
        yield
    finally:
        torch.set_default_device(None)


@pytest.mark.parametrize("head", ["q_halt", "act", "pondernet"])
def test_train_evaluate_calibrate_diagnose_report_create_nothing_off_the_model_device(tmp_path, meta_default, head):
    overrides = [f"--halt.kind={head}", "--train.steps=4", "--train.eval_every=2", "--train.checkpoint_every=2",
                 "--train.log_every=2", "--train.ema_decay=0.9", "--train.tensorboard=off",
                 "--health.attention_every=1", "--eval.train_samples=16", "--eval.during_training_samples=16"]
    if head != "act":
        overrides += ["--halt.threshold=auto", "--halt.calibration_samples=16"]
    cfg = apply_overrides(get_config("debug"), overrides)
    run_dir = tmp_path / "run"
    report = train_run(cfg, run_dir)
    assert report["held_out"]["n"] == 64
    evaluate_checkpoint(run_dir, [])
    if head == "q_halt":
        result = diagnose_gradients(str(run_dir), batch=4, max_iter=3, ref_max_iter=3, ref_steps=3, progress=False,
                                    rtrl_max_params=1)
        assert result["rows"]
    assert "<html" in build_page([run_dir], samples=2)


def test_fault_injectors_draw_on_the_cpu_and_write_where_the_weights_are():
    """A CPU generator cannot draw into another device's memory (before: `normal_(generator=...)`
    on the weights, and a host read of their maximum); the meta device stands for a GPU here."""
    cfg = apply_overrides(get_config("debug"), ["--model.adapter_rank=2"])
    model = build_model(cfg, build_task(cfg.task)).to("meta")
    faults.ExplodeAdapter([1]).inject(model)
    faults.ScrambleReadout([1]).inject(model)
    assert model.adapter.to_u.weight.device.type == "meta"


def test_the_device_rng_is_checkpointed_and_restored(tmp_path, monkeypatch):
    """PonderNet's eval_rule=sample draws on the device's generator: a GPU run resumes exactly only if
    its state is in the checkpoint. torch.cuda's two calls are stood in for (no GPU here)."""
    run = open_run(apply_overrides(get_config("debug"), ["--train.tensorboard=off"]), tmp_path / "r")
    assert run.training_state()["device_rng"] is None  # a CPU run: torch's global generator covers it
    saved, restored = torch.arange(8, dtype=torch.uint8), []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device=None: saved.clone())
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device=None: restored.append((state, device)))
    run.device = torch.device("cuda", 1)
    state = run.training_state()
    assert torch.equal(state["device_rng"], saved)
    run.load_training_state(state)
    assert len(restored) == 1 and torch.equal(restored[0][0], saved) and restored[0][1] == torch.device("cuda", 1)
