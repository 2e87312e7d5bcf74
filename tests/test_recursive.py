"""Tests of RecursiveReasoner (TRM / HRM ACT step) and the analytic FLOP count (small, CPU)."""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from ponder.core.errors import PonderError
from ponder.core.types import Batch
from ponder.models import ModelConfig, RecursiveReasoner
from ponder.models.flops import step_flops

B, N, V, D = 4, 6, 11, 16
COMBOS = list(itertools.product(["trm", "hrm"], ["attention", "mlp"], ["rope", "learned", "none"]))


class MeanHalting(nn.Module):
    """Halting head without matmuls (keeps FLOP counts to the model): (mean_n y) . w + c."""

    def __init__(self, d: int):
        super().__init__()
        self.w = nn.Parameter(0.1 * torch.randn(d))
        self.c = nn.Parameter(torch.zeros(()))

    def logits(self, y: Tensor) -> tuple[Tensor, dict]:
        return (y.mean(1) * self.w).sum(-1) + self.c, {}  # (b,)

    def knobs(self) -> dict:
        return {}


def make_model(seed: int = 0, **overrides: object) -> RecursiveReasoner:
    torch.manual_seed(seed)
    cfg = ModelConfig(**{"d_model": D, "n_heads": 2, "n_layers": 2, "h_cycles": 2, "l_cycles": 2, **overrides})
    return RecursiveReasoner(cfg, vocab_size=V, seq_len=N, halting=MeanHalting(D))


def tokens(b: int = B, seed: int = 1) -> Tensor:
    return torch.randint(0, V, (b, N), generator=torch.Generator().manual_seed(seed))


def prep(model: RecursiveReasoner, inputs: Tensor):
    """The model's StepContext for a batch of `inputs` (no conditioning)."""
    return model.prepare(Batch(inputs, inputs, torch.zeros(len(inputs))))


def nets(model: RecursiveReasoner) -> list[nn.Module]:
    return [model.net] if model.cfg.style == "trm" else [model.l_net, model.h_net]


@pytest.mark.parametrize(("style", "mixer", "positions"), COMBOS)
def test_step_shapes_dtypes_and_detached_state(style: str, mixer: str, positions: str) -> None:
    model = make_model(style=style, mixer=mixer, positions=positions)
    state = model.init_state(B, "cpu")
    assert state.y.shape == state.z.shape == (B, N, D)
    new, out = model.step(state, prep(model, tokens()))
    assert out.logits.shape == (B, N, V) and out.logits.dtype == torch.float32
    assert out.halt_logits.shape == (B,) and out.halt_logits.dtype == torch.float32
    assert new.y.shape == new.z.shape == (B, N, D)
    assert not new.y.requires_grad and not new.z.requires_grad
    assert out.logits.requires_grad and out.halt_logits.requires_grad
    assert torch.isfinite(out.logits).all()


@pytest.mark.parametrize(("style", "mixer", "positions"), COMBOS)
def test_gradients_reach_every_trained_part(style: str, mixer: str, positions: str) -> None:
    model = make_model(style=style, mixer=mixer, positions=positions)
    _, out = model.step(model.init_state(B), prep(model, tokens()))
    (F.cross_entropy(out.logits.flatten(0, 1), tokens().flatten()) + out.halt_logits.pow(2).mean()).backward()
    parts = [model.embed, model.readout, model.halting, *nets(model)]
    if positions == "learned":
        assert model.pos is not None and model.pos.grad is not None and model.pos.grad.abs().sum() > 0
    for part in parts:
        for name, p in part.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient for {name}"


@pytest.mark.parametrize(("style", "grad_calls"), [("trm", {"net": 3}), ("hrm", {"l_net": 1, "h_net": 1})])
def test_only_the_last_cycle_builds_a_graph(style: str, grad_calls: dict[str, int]) -> None:
    model = make_model(style=style, h_cycles=3, l_cycles=2)
    calls: dict[str, list[bool]] = {}
    for name in grad_calls:
        getattr(model, name).register_forward_hook(
            lambda mod, args, out, name=name: calls.setdefault(name, []).append(out.requires_grad)
        )
    model.step(model.init_state(B), prep(model, tokens()))
    if style == "trm":
        assert len(calls["net"]) == 3 * (2 + 1)  # T * (n + 1)
    else:
        assert len(calls["l_net"]) == 3 * 2 and len(calls["h_net"]) == 3  # T * n and T
    for name, n_grad in grad_calls.items():
        assert sum(calls[name]) == n_grad
        assert calls[name][-n_grad:] == [True] * n_grad  # the differentiated calls come last


def test_trm_t1_equals_one_manual_cycle() -> None:
    model = make_model(h_cycles=1, l_cycles=3)
    state, inputs = model.init_state(B), tokens()
    new, out = model.step(state, prep(model, inputs))
    x = model.embed_inputs(inputs)
    y, z = state.y, state.z
    for _ in range(3):
        z = model.net(z, y + x)
    y = model.net(y, z)
    assert torch.allclose(new.y, y, atol=1e-6) and torch.allclose(new.z, z, atol=1e-6)
    assert torch.allclose(out.logits, model.readout(y), atol=1e-6)
    assert model.y_init.grad is None
    out.logits.sum().backward()  # with T=1 the learned init vectors are trained too
    assert model.y_init.grad is not None and model.z_init.grad is not None


@pytest.mark.parametrize("style", ["trm", "hrm"])
def test_t_cycles_equal_t_single_cycle_steps(style: str) -> None:
    """T cycles in one step give the values of T one-cycle steps (no-grad and grad paths agree)."""
    model = make_model(style=style, h_cycles=3, l_cycles=2)
    single = make_model(style=style, h_cycles=1, l_cycles=2)
    single.load_state_dict(model.state_dict())
    state, inputs = model.init_state(B), tokens()
    new, out = model.step(state, prep(model, inputs))
    ref = state
    for _ in range(3):
        ref, ref_out = single.step(ref, prep(single, inputs))
    assert torch.allclose(new.y, ref.y, atol=1e-5) and torch.allclose(new.z, ref.z, atol=1e-5)
    assert torch.allclose(out.logits, ref_out.logits, atol=1e-5)
    assert torch.allclose(out.halt_logits, ref_out.halt_logits, atol=1e-5)


def test_reset_state_changes_only_masked_rows() -> None:
    model = make_model()
    state, _ = model.step(model.init_state(B), prep(model, tokens()))
    mask = torch.tensor([True, False, True, False])
    reset = model.reset_state(state, mask)
    fresh = model.init_state(B)
    assert torch.equal(reset.y[mask], fresh.y[mask]) and torch.equal(reset.z[mask], fresh.z[mask])
    assert torch.equal(reset.y[~mask], state.y[~mask]) and torch.equal(reset.z[~mask], state.z[~mask])
    assert not torch.equal(state.y[mask], fresh.y[mask])


@pytest.mark.parametrize("style", ["trm", "hrm"])
def test_deterministic_given_seed(style: str) -> None:
    outs = []
    for _ in range(2):
        model = make_model(seed=3, style=style)
        state, out = model.step(model.init_state(B), prep(model, tokens()))
        outs.append((state.y, out.logits, out.halt_logits))
    for a, b in zip(*outs):
        assert torch.equal(a, b)
    other = make_model(seed=4, style=style)
    assert not torch.equal(other.step(other.init_state(B), prep(other, tokens()))[1].logits, outs[0][1])


@pytest.mark.parametrize(("style", "mixer"), list(itertools.product(["trm", "hrm"], ["attention", "mlp"])))
def test_rows_are_independent(style: str, mixer: str) -> None:
    """A batched step equals per-sample steps concatenated (needed for early-exit inference)."""
    model = make_model(style=style, mixer=mixer)
    state, inputs = model.init_state(B), tokens()
    state, _ = model.step(state, prep(model, inputs))  # a non-trivial carry
    new, out = model.step(state, prep(model, inputs))
    for i in range(B):
        row_state, row_out = model.step(state.index(slice(i, i + 1)), prep(model, inputs[i : i + 1]))
        assert torch.allclose(row_state.y, new.y[i : i + 1], atol=1e-5)
        assert torch.allclose(row_state.z, new.z[i : i + 1], atol=1e-5)
        assert torch.allclose(row_out.logits, out.logits[i : i + 1], atol=1e-5)
        assert torch.allclose(row_out.halt_logits, out.halt_logits[i : i + 1], atol=1e-5)


@pytest.mark.parametrize(
    "overrides",
    [
        {"style": "urm"},
        {"mixer": "conv"},
        {"positions": "alibi"},
        {"d_model": 18, "n_heads": 4},
        {"h_cycles": 0},
        {"l_cycles": -1},
        {"n_layers": 0},
        {"expansion": 0.0},
        {"readout_init_scale": 0.0},
        {"d_model": 12, "n_heads": 4},  # odd head size with rope
    ],
)
def test_bad_config_raises_ponder_error(overrides: dict[str, object]) -> None:
    with pytest.raises(PonderError) as err:
        make_model(**overrides)
    assert "\n" not in str(err.value)
    if "style" in overrides:
        assert "trm, hrm" in str(err.value)


def test_readout_init_scale_sets_the_readout_std() -> None:
    torch.manual_seed(0)
    small, lecun = make_model(d_model=256), make_model(d_model=256, readout_init_scale=1.0)
    # truncated at 2 std, the std of the samples is about 0.88 of the nominal one
    assert small.readout.weight.std().item() == pytest.approx(0.88 * 0.1 / 16, rel=0.05)
    assert lecun.readout.weight.std().item() == pytest.approx(0.88 / 16, rel=0.05)


def _cpu_sdpa(q: torch.Size, k: torch.Size, v: torch.Size, *args: object, out_shape: object = None, **kw: object) -> int:
    return sdpa_flop_count(q, k, v)


def _cpu_sdpa_backward(g: torch.Size, q: torch.Size, k: torch.Size, v: torch.Size, *args: object, out_shape: object = None, **kw: object) -> int:
    return sdpa_backward_flop_count(g, q, k, v)


def count_step(model: RecursiveReasoner, *, backward: bool) -> int:
    """Matmul FLOPs of one ACT step as counted by FlopCounterMode (CPU flash attention added)."""
    aten = torch.ops.aten
    mapping = {
        aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward,
    }
    state, inputs = model.init_state(B), tokens()
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        _, out = model.step(state, prep(model, inputs))
        if backward:
            (out.logits.square().mean() + out.halt_logits.mean()).backward()
    return counter.get_total_flops()


@pytest.mark.parametrize(("style", "mixer"), list(itertools.product(["trm", "hrm"], ["attention", "mlp"])))
def test_flops_match_flop_counter(style: str, mixer: str) -> None:
    model = make_model(style=style, mixer=mixer, h_cycles=3, l_cycles=2)
    analytic = step_flops(model.cfg, seq_len=N, vocab_size=V, batch_size=B)
    assert analytic["grad_backward"] == 2 * analytic["grad_forward"]
    assert analytic["total"] == sum(analytic[k] for k in ("no_grad_forward", "grad_forward", "grad_backward"))
    forward = count_step(model, backward=False)
    assert forward == analytic["no_grad_forward"] + analytic["grad_forward"]
    total = count_step(model, backward=True)
    if mixer == "mlp":
        assert total == analytic["total"]
    else:  # the counter charges flash-attention backward 2.5x its forward (score recompute), we 2x
        assert analytic["total"] < total < 1.03 * analytic["total"]
