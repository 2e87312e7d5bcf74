"""Gated DeltaNet: recurrent and chunked forms against each other and a step-by-step reference in
the paper's notation; the layer's modes and streaming step; hybrid stacks; the fla kernel on CUDA."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ponder.core.errors import PonderError
from ponder.models.lm.deltanet import (FLA_AVAILABLE, GatedDeltaNet, fla_inputs, gated_delta_rule_chunked,
                                       gated_delta_rule_recurrent)
from ponder.models.lm.hybrid import HybridConfig, HybridLM


def reference(q, k, v, g, beta, s0):
    """The paper's recurrence verbatim, in float64: S (d_v, d_k),
    S_t = α_t S_{t−1}(I − β_t k_t k_tᵀ) + β_t v_t k_tᵀ, o_t = S_t q_t / √d_k."""
    q, k, v, g, beta = (t.double() for t in (q, k, v, g, beta))
    b, h, n, dk = q.shape
    out = torch.zeros(b, h, n, v.shape[-1], dtype=torch.float64)
    state = s0.double().transpose(-1, -2).clone()  # (b, h, dv, dk)
    eye = torch.eye(dk, dtype=torch.float64)
    for bi in range(b):
        for hi in range(h):
            s = state[bi, hi]
            for t in range(n):
                kt, vt, a, bt = k[bi, hi, t], v[bi, hi, t], g[bi, hi, t].exp(), beta[bi, hi, t]
                s = a * s @ (eye - bt * torch.outer(kt, kt)) + bt * torch.outer(vt, kt)
                out[bi, hi, t] = s @ q[bi, hi, t] / dk ** 0.5
            state[bi, hi] = s
    return out, state.transpose(-1, -2)  # final state in the (d_k, d_v) layout


def inputs(b=2, h=3, n=29, dk=8, dv=12, seed=0, decay=2.0):
    gen = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(b, h, n, dk, generator=gen), dim=-1)
    k = F.normalize(torch.randn(b, h, n, dk, generator=gen), dim=-1)
    v = torch.randn(b, h, n, dv, generator=gen)
    g = -decay * torch.rand(b, h, n, generator=gen)
    beta = torch.rand(b, h, n, generator=gen)
    s0 = torch.randn(b, h, dk, dv, generator=gen)
    return q, k, v, g, beta, s0


def test_recurrent_and_chunked_match_reference():
    q, k, v, g, beta, s0 = inputs()
    ref_o, ref_s = reference(q, k, v, g, beta, s0)
    o, s = gated_delta_rule_recurrent(q, k, v, g, beta, initial_state=s0)
    assert ref_o.abs().max() > 0.1  # not a trivially small output
    torch.testing.assert_close(o.double(), ref_o, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(s.double(), ref_s, atol=2e-5, rtol=1e-5)
    for chunk in (1, 4, 7, 16, 64):  # dividing n or not, and longer than n
        oc, sc = gated_delta_rule_chunked(q, k, v, g, beta, chunk_size=chunk, initial_state=s0)
        torch.testing.assert_close(oc, o, atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(sc, s, atol=2e-5, rtol=1e-5)


def test_chunked_gradients_match_recurrent():
    leaves = [t.requires_grad_() for t in inputs(n=13, seed=1)]
    weights = torch.randn(2, 3, 13, 12)
    grads = []
    for rule, kw in ((gated_delta_rule_recurrent, {}), (gated_delta_rule_chunked, {"chunk_size": 5})):
        o, s = rule(*leaves[:5], initial_state=leaves[5], **kw)
        grads.append(torch.autograd.grad((o * weights).sum() + s.square().sum(), leaves))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=3e-5, rtol=1e-4)


def test_strong_decay_stays_finite():
    q, k, v, g, beta, s0 = inputs(decay=80.0)  # e^{-80 n}: a naive e^{Γ_i} / e^{Γ_j} would overflow
    o, s = gated_delta_rule_chunked(q, k, v, g, beta, chunk_size=16, initial_state=s0)
    o_ref, s_ref = gated_delta_rule_recurrent(q, k, v, g, beta, initial_state=s0)
    assert torch.isfinite(o).all() and torch.isfinite(s).all()
    torch.testing.assert_close(o, o_ref, atol=1e-5, rtol=1e-5)


def test_layer_modes_and_streaming_step_agree():
    torch.manual_seed(0)
    layer = GatedDeltaNet(24, 2, 8, expand_v=2, chunk_size=8)
    x = torch.randn(2, 19, 24)
    y_chunk, s_chunk = layer(x, return_state=True)
    layer.mode = "recurrent"
    y_rec, s_rec = layer(x, return_state=True)
    torch.testing.assert_close(y_chunk, y_rec, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s_chunk, s_rec, atol=1e-5, rtol=1e-5)
    cache, ys = layer.empty_cache(2), []
    for t in range(19):
        y, cache = layer.step(x[:, t], cache)
        ys.append(y)
    torch.testing.assert_close(torch.stack(ys, 1), y_rec, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cache.state, s_rec, atol=1e-5, rtol=1e-5)
    g, beta = layer.gates(x)
    assert (g <= 0).all() and ((beta > 0) & (beta < 1)).all()


def tiny_hybrid(**kw) -> HybridLM:
    torch.manual_seed(0)
    cfg = dict(vocab_size=40, d_model=32, n_layers=4, attention_layers="1,3", n_heads=4, dn_heads=2,
               dn_head_dim=8, chunk_size=8, max_len=64)
    return HybridLM(HybridConfig(**{**cfg, **kw}))


def test_hybrid_places_attention_and_is_causal():
    model = tiny_hybrid()
    assert model.layer_kinds() == ["deltanet", "attention", "deltanet", "attention"]
    x = torch.randint(0, 40, (2, 21))
    y = model(x)
    x2 = x.clone()
    x2[:, 12:] = (x2[:, 12:] + 7) % 40
    y2 = model(x2)
    assert torch.equal(y[:, :12], y2[:, :12])  # future tokens change nothing before them, bit for bit
    assert not torch.allclose(y[:, 12:], y2[:, 12:])
    model.set_mode("recurrent")
    torch.testing.assert_close(model(x), y, atol=1e-5, rtol=1e-5)
    assert tiny_hybrid(attention_layers="").layer_kinds() == ["deltanet"] * 4


@pytest.mark.parametrize("bad", ["4", "1,1", "a", "-1"])
def test_hybrid_refuses_bad_attention_layers(bad):
    with pytest.raises(PonderError, match="attention_layers"):
        tiny_hybrid(attention_layers=bad)


def test_hybrid_learns_a_periodic_sequence():
    model = tiny_hybrid(vocab_size=12, n_layers=2, attention_layers="1")
    seq = torch.arange(24).remainder(6).view(1, -1).repeat(4, 1)  # 0 1 2 3 4 5 0 1 ...
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = F.cross_entropy(model(seq[:, :-1]).flatten(0, 1), seq[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > 2.0 and losses[-1] < 0.2 * losses[0]


@pytest.mark.skipif(not (FLA_AVAILABLE and torch.cuda.is_available()),
                    reason="flash-linear-attention's kernels need the fla package and a CUDA device")
def test_fla_kernel_agrees_with_plain_pytorch():  # pragma: no cover - needs CUDA
    torch.manual_seed(0)
    layer = GatedDeltaNet(64, 4, 16, expand_v=2).cuda()
    x = torch.randn(2, 100, 64, device="cuda")
    y_torch, s_torch = layer(x, return_state=True)
    layer.backend = "fla"
    y_fla, s_fla = layer(x, return_state=True)
    torch.testing.assert_close(y_fla.float(), y_torch, atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(s_fla.float(), s_torch, atol=2e-3, rtol=2e-3)


def test_fla_gets_q_k_v_in_one_16_bit_dtype():
    """The fla kernel takes one non-fp32 dtype for q, k, v; under autocast the layer's own q and k
    come out of F.normalize in fp32 beside a bf16 v (before: the comparison could never run)."""
    layer = GatedDeltaNet(16, n_heads=2, head_dim=8)
    x = torch.randn(2, 5, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        q, k, v = layer._split(layer.conv(layer._project(x)))
        assert {t.dtype for t in fla_inputs(q, k, v)} == {torch.bfloat16}
    assert {t.dtype for t in fla_inputs(*(t.float() for t in (q, k, v)))} == {torch.bfloat16}
