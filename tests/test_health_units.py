"""Pieces of training health on problems with known answers: the soft clamp, the HyperLoRA
adapter's norm, clamp and regulariser, attention statistics, the ramp, and config errors."""
import math

import pytest
import torch

from ponder.core.errors import PonderError
from ponder.health.config import TrainingHealthConfig, parse_ramp
from ponder.health.controller import ramp_value
from ponder.health.monitors import attention_stats
from ponder.models.adapters import HyperLoRA, soft_clamp
from ponder.models.attention import Attention
from ponder.presets import get_config
from ponder.runs.config import apply_overrides, from_dict, to_dict
from ponder.runs.run import build_model
from ponder.tasks import build_task
from ponder.training.carry import batch_of


def test_soft_clamp_is_identity_then_smoothly_bounded():
    t, m = 50.0, 100.0
    x = torch.linspace(-300, 300, 6001, dtype=torch.float64, requires_grad=True)
    y = soft_clamp(x, t, m)
    inside = x.abs() <= t
    assert torch.equal(y[inside], x[inside])
    assert 99.9 < y.abs().max() < m
    assert soft_clamp(torch.tensor([-1e9, 1e9]), t, m).abs().max() <= m
    (g,) = torch.autograd.grad(y.sum(), x)
    assert g.min() > 0 and g.max() <= 1.0  # monotone, never steeper than the identity
    # continuous value and slope at t: one-sided derivative just beyond t is ~1
    eps = torch.tensor([t + 1e-6], dtype=torch.float64, requires_grad=True)
    (slope,) = torch.autograd.grad(soft_clamp(eps, t, m).sum(), eps)
    assert slope.item() == pytest.approx(1.0, abs=1e-6)
    assert soft_clamp(torch.tensor([t + 1e-9]), t, m).item() == pytest.approx(t)


def test_hyperlora_norm_is_the_frobenius_norm_and_the_clamp_holds():
    torch.manual_seed(0)
    a = HyperLoRA(8, 5, 3, max_norm=2.0, target_norm=1.0, reg_weight=0.1)
    with torch.no_grad():
        a.to_u.weight.normal_()
    c = torch.randn(6, 5) * torch.tensor([0.01, 0.1, 1, 3, 10, 30]).view(6, 1)
    f = a.factors(c)
    u = a.to_u(c).view(6, 8, 3)
    v = a.to_v(c).view(6, 8, 3)
    full = torch.linalg.matrix_norm(u @ v.transpose(1, 2))  # (6,) explicit ||U V^T||_F
    assert torch.allclose(f.norms, full.detach(), rtol=1e-4)
    clamped = torch.linalg.matrix_norm(f.u @ f.v.transpose(1, 2))
    assert (clamped <= 2.0 + 1e-4).all()
    assert f.hit_rate == pytest.approx(float((full > 2.0).float().mean()))
    h = torch.randn(6, 4, 8)
    expected = torch.einsum("bnd,bed->bne", h, f.u @ f.v.transpose(1, 2))  # dW_i h per position
    assert torch.allclose(a.delta(h, f), expected, atol=1e-5)
    assert f.reg.item() == pytest.approx(0.1 * ((full - 1.0) ** 2).mean().item(), rel=1e-4)
    f.reg.backward()
    assert a.to_u.weight.grad.abs().sum() > 0
    with torch.no_grad():
        assert a.factors(c).reg is None  # no regulariser without gradient (inference)


def test_adapter_starts_as_the_identity_and_learns(tmp_path):
    cfg = get_config("debug")
    task = build_task(cfg.task)
    torch.manual_seed(0)
    plain = build_model(cfg, task)
    torch.manual_seed(0)
    with_adapter = build_model(apply_overrides(cfg, ["--model.adapter_rank=4"]), task)
    with_adapter.load_state_dict(plain.state_dict(), strict=False)
    batch = batch_of(task.train.slice(0, 4))
    s0, s1 = plain.init_state(4), with_adapter.init_state(4)
    _, o0 = plain.step(s0, plain.prepare(batch))
    ctx = with_adapter.prepare(batch)
    _, o1 = with_adapter.step(s1, ctx)
    assert torch.allclose(o0.logits, o1.logits, atol=1e-6)  # dW = 0 at init
    loss = o1.logits.square().mean() + ctx.aux_loss
    loss.backward()
    assert with_adapter.adapter.to_u.weight.grad.abs().sum() > 0


def test_attention_stats_know_uniform_and_peaked_attention():
    torch.manual_seed(0)
    attn = Attention(16, 2)
    x = torch.randn(3, 10, 16)
    with torch.no_grad():
        attn.qkv.weight[:16].zero_()  # q = 0: every score equal
    maxp, ent = attention_stats(attn, x)
    assert maxp == pytest.approx(0.1) and ent == pytest.approx(math.log(10), rel=1e-5)
    with torch.no_grad():
        attn.qkv.weight[:32] = torch.eye(16).repeat(2, 1) * 30  # q = k = 30x: each token attends to itself
    maxp, ent = attention_stats(attn, torch.nn.functional.normalize(torch.randn(3, 10, 16), dim=-1) * 4)
    assert maxp > 0.99 and ent < 0.05


def test_ramp_linear_and_cosine():
    assert ramp_value(0, 0.1, 0.5, 40, "linear") == pytest.approx(0.1)
    assert ramp_value(20, 0.1, 0.5, 40, "linear") == pytest.approx(0.3)
    assert ramp_value(20, 0.1, 0.5, 40, "cosine") == pytest.approx(0.3)
    assert ramp_value(10, 0.0, 1.0, 40, "cosine") == pytest.approx(0.5 * (1 - math.cos(math.pi / 4)))
    assert ramp_value(99, 0.1, 0.5, 40, "linear") == 0.5


@pytest.mark.parametrize("text, message", [("halt_weight=0.5", "not knob:base:target"),
                                           ("lr:0:1", "knob 'lr' unknown")])
def test_bad_ramp_is_a_one_line_error(text, message):
    with pytest.raises(PonderError, match=message):
        parse_ramp(text)


def test_health_config_errors_and_old_configs_load():
    with pytest.raises(PonderError, match="ramp_shape"):
        TrainingHealthConfig(ramp_shape="step").validate()
    with pytest.raises(PonderError, match="lr_backoff"):
        TrainingHealthConfig(lr_backoff=2.0).validate()
    with pytest.raises(PonderError, match="logit_clamp"):
        apply_overrides(get_config("debug"), ["--model.logit_clamp=120"]).model.validate()
    data = to_dict(get_config("debug"))
    del data["health"]  # saved before the section existed
    assert from_dict(data).health == TrainingHealthConfig()


def test_adapter_run_with_ema_evaluates_and_resumes(tmp_path):
    """The EMA evaluation deep-copies the model: the adapter and the monitors' hooks must allow it."""
    from ponder.runs.run import train_run

    cfg = apply_overrides(get_config("debug"), ["--model.adapter_rank=4", "--train.ema_decay=0.9", "--train.steps=10",
                                                "--model.logit_clamp=2", "--model.logit_clamp_max=4"])
    train_run(cfg, tmp_path, final_eval=False)
    cfg.train.steps = 20
    train_run(cfg, tmp_path, resume=True, final_eval=False)
    text = (tmp_path / "health.md").read_text()
    assert "soft clamp t=2, m=4" in text and "adapter delta norm under limits" in text


def test_a_run_saved_before_the_new_keys_resumes(tmp_path):
    """Configs written before the adapter/clamp keys and the health section existed still resume."""
    import json

    from ponder.cli import main
    from ponder.training.checkpoint import resolve_checkpoint

    run = tmp_path / "run"
    assert main(["train", "debug", "--run-dir", str(run), "--train.steps=10"]) == 0
    for path in (run / "config.json", resolve_checkpoint(run) / "config.json"):
        data = json.loads(path.read_text())
        del data["health"]
        data["model"] = {k: v for k, v in data["model"].items() if not k.startswith(("adapter_", "logit_clamp"))}
        path.write_text(json.dumps(data))
    assert main(["train", "--resume", str(run), "--train.steps=20"]) == 0
