"""train.precision: the choice (CPU flags and probe, both answers of each), the refusal of emulated
bf16, what stays float32 under bf16 autocast (halting arithmetic bit for bit between training and
inference, the health monitor's attention statistics, the estimators' solves, the stablemax
loss), recording the choice in the run, resuming under another precision, and old configs.

bf16 cases run under CPU autocast on any CPU: where the machine has no native bf16, the flags
are patched so that the run is accepted (bf16 is then emulated: slow, but the same arithmetic)."""
import json

import pytest
import torch

import ponder.training.precision as precision
from ponder.core.errors import PonderError
from ponder.core.types import State
from ponder.presets import get_config
from ponder.runs.config import apply_overrides, from_dict, to_dict
from ponder.runs.run import open_run, train_run
from ponder.runs.trained import load_trained
from ponder.training.carry import batch_of
from ponder.training.estimator_hook import estimated_step
from ponder.training.evaluate import adaptive_inference
from ponder.training.loop import train, train_step
from ponder.training.objectives import stablemax_cross_entropy, task_loss
from ponder.training.precision import Choice, autocast, cpu_flags, resolve_precision

CPU = torch.device("cpu")
NATIVE = {"fpu", "avx512f", "avx512_bf16"}
PLAIN = {"fpu", "avx2"}


@pytest.fixture
def native_bf16(monkeypatch):
    """Let explicit bf16 through on any CPU (this machine's own flags may lack it)."""
    monkeypatch.setattr(precision, "cpu_flags", lambda path="/proc/cpuinfo": set(NATIVE))


def _cfg(*overrides):
    return apply_overrides(get_config("debug"), ["--train.eval_every=0", "--train.checkpoint_every=0",
                                                 "--train.tensorboard=off", *overrides])


# ----------------------------------------------------------------------------- the choice

def test_auto_on_a_cpu_needs_the_flags_and_a_probe_that_shows_a_gain():
    fast, slow = (lambda: (0.30, 0.10)), (lambda: (0.10, 0.12))
    assert resolve_precision("auto", CPU, flags=NATIVE, probe=fast).value == "bf16"
    assert resolve_precision("auto", CPU, flags=NATIVE, probe=slow).value == "fp32"
    asked = []
    choice = resolve_precision("auto", CPU, flags=PLAIN, probe=lambda: asked.append(1) or (1.0, 0.1))
    assert choice.value == "fp32" and "no native bf16" in choice.reason and not asked  # never probed
    # flags unknown (another OS): the probe alone decides
    assert resolve_precision("auto", CPU, flags=None, probe=fast).value == "bf16"
    assert resolve_precision("auto", CPU, flags=None, probe=slow).value == "fp32"
    assert resolve_precision("auto", CPU, flags=NATIVE, probe=None).value == "fp32"
    just_under = lambda: (precision.PROBE_GAIN * 0.1 * 0.99, 0.1)  # noqa: E731
    assert resolve_precision("auto", CPU, flags=NATIVE, probe=just_under).value == "fp32"


def test_explicit_precisions_and_other_devices():
    assert resolve_precision("fp32", CPU, flags=NATIVE) == Choice("fp32", "asked for")
    assert resolve_precision("bf16", CPU, flags=NATIVE).value == "bf16"
    with pytest.raises(PonderError, match="no native bf16.*tens of times slower"):
        resolve_precision("bf16", CPU, flags=PLAIN)
    assert resolve_precision("auto", torch.device("mps")).value == "fp32"
    with pytest.raises(PonderError, match="this run is on mps"):
        resolve_precision("bf16", torch.device("mps"))


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16\n\nprocessor\t: 1\n")
    assert cpu_flags(str(info)) == {"fpu", "sse2", "avx512f", "avx512_bf16"}
    assert cpu_flags(str(tmp_path / "missing")) is None
    assert precision.native_bf16({"amx_bf16", "avx512_bf16"}) == ["amx_bf16", "avx512_bf16"]


def test_explicit_bf16_on_a_cpu_without_it_is_refused_before_any_data(tmp_path, monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda path="/proc/cpuinfo": set(PLAIN))
    with pytest.raises(PonderError, match="train.precision=bf16: this CPU has no native bf16"):
        open_run(_cfg("--train.precision=bf16"), tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_the_probe_times_both_and_leaves_the_run_untouched(tmp_path):
    run = open_run(_cfg("--train.precision=fp32"), tmp_path / "r")
    batch = batch_of(run.task.train.slice(0, 8))
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    rng = torch.get_rng_state()
    t32, t16 = precision.probe_step(run.model, batch, CPU)()
    assert t32 > 0 and t16 > 0
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[k], v) for k, v in run.model.state_dict().items())
    assert all(p.grad is None for p in run.model.parameters())


def test_auto_is_resolved_printed_and_recorded_in_the_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda path="/proc/cpuinfo": set(PLAIN))
    run = open_run(_cfg("--train.precision=auto", "--train.compile=auto"), tmp_path / "r")
    assert run.cfg.train.precision == "fp32" and run.cfg.train.compile is False
    saved = json.loads((tmp_path / "r" / "config.json").read_text())["train"]
    assert saved["precision"] == "fp32" and saved["compile"] is False  # a resume uses what was chosen
    setup = json.loads((tmp_path / "r" / "setup.json").read_text())
    assert setup[0]["precision"] == {"value": "fp32", "reason": "the CPU has no native bf16 (no amx_bf16 or "
                                                                "avx512_bf16 flag)"}
    assert "precision fp32 (the CPU has no native bf16" in capsys.readouterr().out


def test_configs_saved_before_auto_load_as_fp32_without_compile():
    data = to_dict(get_config("debug"))
    del data["train"]["precision"], data["train"]["compile"]
    cfg = from_dict(data)
    assert cfg.train.precision == "fp32" and cfg.train.compile is False
    data["train"]["compile"] = True  # the boolean of earlier versions loads as it was
    assert from_dict(data).train.compile is True
    assert apply_overrides(get_config("debug"), ["--train.compile=auto"]).train.compile == "auto"
    assert apply_overrides(get_config("debug"), ["--train.compile=off"]).train.compile is False


# ----------------------------------------------------------------------------- what stays float32

@pytest.mark.parametrize("kind", ["act", "pondernet"])
def test_halting_decisions_of_training_and_inference_agree_bit_for_bit_under_bf16(tmp_path, native_bf16, kind):
    """Trajectory training's deployed rule (where each sample stops) on its own trajectory under
    bf16 autocast equals early-exit inference under the run's precision, and every halting
    quantity is float32 (before: bf16 halt logits, cum >= 0.99 decided at bf16 resolution)."""
    run = open_run(_cfg(f"--halt.kind={kind}", "--halt.max_steps=6", "--train.precision=bf16",
                        "--halt.bias_init=-1.0"), tmp_path / "r")
    stream_state = run.stream.state_dict()
    with autocast(CPU, "bf16"):
        run.objective.forward(0)
    trained_stops = run.objective._stop.clone()
    run.stream.load_state_dict(stream_state)
    batch = run.stream.take(run.cfg.train.batch_size)
    run.model.eval()
    with autocast(CPU, "bf16"):
        _, out = run.model.step(run.model.init_state(len(batch), CPU), run.model.prepare(batch))
        assert out.logits.dtype == torch.bfloat16  # the matmuls are bf16 ...
        assert out.halt_logits.dtype == torch.float32  # ... the halting logits are not
        memo = run.model.halting.start(len(batch), CPU)
        _, memo = run.model.halting.decide(out, torch.ones(len(batch), dtype=torch.long), memo)
        assert all(v.dtype in (torch.float32, torch.bool) for v in memo.values())
        _, steps = adaptive_inference(run.model, batch, max_steps=6)
    assert 1 < len(set(trained_stops.tolist())) or trained_stops.min() < 6  # the rule really halts early
    assert torch.equal(trained_stops, steps)


def test_health_monitor_reads_attention_under_bf16_with_q_continue(tmp_path, native_bf16):
    """q_continue's extra no-grad forward and two attention layers under bf16 (before: the
    attention statistics failed with "expected m1 and m2 to have the same dtype")."""
    cfg = _cfg("--halt.kind=q_continue", "--model.n_layers=2", "--train.precision=bf16", "--train.steps=4",
               "--train.log_every=2", "--health.attention_every=1")
    run = open_run(cfg, tmp_path / "r")
    train(run)
    health = [r for r in run.log.records() if r["kind"] == "health"]
    assert health and all(len(r["attention"]) == 2 for r in health)
    assert all(0 < a["max_attention"] <= 1 for r in health for a in r["attention"].values())


def test_estimators_solve_in_fp32_under_bf16_autocast(tmp_path):
    """The implicit estimator under the loop's bf16 region gives what it gives in fp32 (before:
    its solves ran in bf16, where a tolerance floored for fp32 is never met)."""
    cfg = _cfg("--estimator.kind=implicit", "--estimator.tol=1e-3", "--estimator.max_iter=30",
               "--train.precision=fp32")
    run = open_run(cfg, tmp_path / "r")
    model = run.model
    batch = run.stream.take(8)
    state = model.init_state(8, CPU)
    results = []
    for enabled in (False, True):
        ctx = model.prepare(batch)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
            new, out, extra, stats = estimated_step(model, State(state.y.clone(), state.z.clone()), ctx,
                                                    lambda lg: task_loss(lg, batch.labels, "softmax"), cfg.estimator)
        grads = torch.autograd.grad(extra, model.recursion_parameters(), allow_unused=True)
        results.append((new, stats, grads))
    (new32, stats32, g32), (new16, stats16, g16) = results
    assert new16.y.dtype == torch.float32
    assert torch.equal(new32.y, new16.y) and torch.equal(new32.z, new16.z)
    assert stats32 == stats16
    assert all(a is None and b is None or torch.equal(a, b) for a, b in zip(g32, g16))


def test_stablemax_loss_is_not_rounded_back_to_bf16():
    logits = torch.randn(2, 5, 7).bfloat16()
    labels = torch.randint(0, 7, (2, 5))
    assert stablemax_cross_entropy(logits, labels).dtype == torch.float32
    assert stablemax_cross_entropy(logits.float(), labels).dtype == torch.float32
    assert stablemax_cross_entropy(logits.double(), labels).dtype == torch.float64


# ----------------------------------------------------------------------------- runs

def test_a_run_resumes_under_another_precision_and_evaluates_in_its_own(tmp_path, native_bf16):
    run_dir = tmp_path / "r"
    train_run(_cfg("--train.precision=fp32", "--train.steps=4", "--train.checkpoint_every=2"), run_dir,
              final_eval=False)
    cfg = apply_overrides(from_dict(json.loads((run_dir / "config.json").read_text())),
                          ["--train.precision=bf16", "--train.steps=6"])
    run = open_run(cfg, run_dir, resume=True)
    assert run.step == 4 and run.cfg.train.precision == "bf16"
    run.callbacks.call("on_train_start", run)
    metrics = train_step(run)
    assert torch.isfinite(torch.tensor(metrics["loss"]))
    assert all(p.dtype == torch.float32 for p in run.model.parameters())
    assert all(v.dtype == torch.float32 for s in run.optimizer.state.values() for v in s.values()
               if isinstance(v, torch.Tensor) and v.is_floating_point() and v.dim() > 0)
    train(run)
    model, _, cfg, _ = load_trained(run_dir)
    assert cfg.train.precision == "bf16"  # evaluation reads the precision the run last trained with
    sessions = json.loads((run_dir / "setup.json").read_text())
    assert [s["precision"]["value"] for s in sessions] == ["fp32", "bf16"]
