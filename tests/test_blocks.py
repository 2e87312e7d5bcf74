"""Tests of the transformer pieces in ponder.models.blocks (small shapes, CPU)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ponder.models.attention import Attention, Rotary, split_heads
from ponder.models.blocks import CHUNK_BYTES, SWIGLU_MULTIPLE, ReasoningNet, SequenceMLP, SwiGLU, TransformerBlock, lecun_linear, rms_norm, rms_norm_, swiglu_hidden

B, N, D, HEADS = 3, 7, 16, 2


def make_block(mixer: str, seed: int = 0) -> TransformerBlock:
    torch.manual_seed(seed)
    if mixer == "attention":
        mix: torch.nn.Module = Attention(D, HEADS, Rotary(D // HEADS, N, 10000.0))
    else:
        mix = SequenceMLP(N, 4.0)
    return TransformerBlock(mix, D, 4.0, 1e-5)


def test_rms_norm_unit_rms_no_parameters() -> None:
    x = 5.0 * torch.randn(B, N, D) + 2.0
    y = rms_norm(x, 1e-6)
    assert torch.allclose(y.pow(2).mean(-1), torch.ones(B, N), atol=1e-4)
    assert torch.allclose(y, x / x.pow(2).mean(-1, keepdim=True).sqrt(), atol=1e-5)


@pytest.mark.parametrize(("width", "expansion", "hidden"), [(512, 4.0, 1408), (16, 4.0, 64), (81, 4.0, 256), (96, 2.0, 128)])
def test_swiglu_hidden_rounds_up(width: int, expansion: float, hidden: int) -> None:
    assert swiglu_hidden(width, expansion) == hidden
    assert hidden % SWIGLU_MULTIPLE == 0 and hidden >= expansion * width * 2 / 3


def test_swiglu_fused_matches_separate_projections() -> None:
    torch.manual_seed(0)
    mlp = SwiGLU(D, 4.0)
    h = mlp.hidden
    assert mlp.gate_up.weight.shape == (2 * h, D) and mlp.gate_up.bias is None and mlp.down.bias is None
    x = torch.randn(B, N, D)
    w_gate, w_up = mlp.gate_up.weight[:h], mlp.gate_up.weight[h:]
    expected = (F.silu(x @ w_gate.T) * (x @ w_up.T)) @ mlp.down.weight.T
    assert torch.allclose(mlp(x), expected, atol=1e-5)
    with torch.no_grad():  # in-place no-grad path gives the same numbers
        assert torch.allclose(mlp(x), expected, atol=1e-5)


def test_lecun_linear_init_scale() -> None:
    torch.manual_seed(0)
    layer = lecun_linear(256, 512)
    std = layer.weight.std().item()
    # truncation at 2 std shrinks the std by ~12%
    assert 0.8 / math.sqrt(256) < std < 1.0 / math.sqrt(256)
    assert layer.weight.abs().max() <= 2.0 / math.sqrt(256) + 1e-6


def rotated_qk(rot: Rotary, q: torch.Tensor, k: torch.Tensor, i: int, j: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """q placed at position i and k at j of a one-head (1, length, 3 * hd) projection, rotated."""
    hd = q.shape[0]
    qkv = torch.zeros(1, length, 3, hd)
    qkv[0, i, 0], qkv[0, j, 1] = q, k
    rq, rk, _ = split_heads(qkv.view(1, length, 3 * hd), 1, rot)  # (1, 1, length, hd) each
    return rq[0, 0, i], rk[0, 0, j]


def test_rotary_scores_depend_only_on_relative_position() -> None:
    torch.manual_seed(0)
    hd, length = 8, 32
    rot = Rotary(hd, length, 10000.0)
    q, k = torch.randn(hd), torch.randn(hd)

    def score(i: int, j: int) -> float:
        rq, rk = rotated_qk(rot, q, k, i, j, length)
        return float(rq @ rk)

    for i, j in [(0, 3), (5, 1), (2, 2)]:
        base = score(i, j)
        for shift in (1, 7, 20):
            assert score(i + shift, j + shift) == pytest.approx(base, abs=1e-4)
    assert abs(score(0, 3) - score(0, 4)) > 1e-3  # and they do depend on it
    assert not any(name in rot.state_dict() for name in ("cos", "sin"))  # buffers not persistent


def test_rotary_preserves_norm_and_position_zero() -> None:
    torch.manual_seed(0)
    rot = Rotary(8, N, 10000.0)
    q, k = torch.randn(8), torch.randn(8)
    rq, rk = rotated_qk(rot, q, k, 0, 5, N)
    assert torch.allclose(rq, q) and torch.allclose(rk.norm(), k.norm())
    assert not torch.allclose(rk, k)


@pytest.mark.parametrize("rope", [True, False])
def test_split_heads_layout_and_gradient(rope: bool) -> None:
    torch.manual_seed(0)
    rot = Rotary(4, N, 100.0).double() if rope else None
    qkv = torch.randn(2, N, 3 * 8, dtype=torch.float64, requires_grad=True)
    q, k, v = split_heads(qkv, 2, rot)
    assert q.shape == k.shape == v.shape == (2, 2, N, 4) and q.is_contiguous()
    assert torch.equal(v, qkv.detach().view(2, N, 3, 2, 4)[:, :, 2].transpose(1, 2))
    assert torch.autograd.gradcheck(lambda t: split_heads(t, 2, rot), (qkv,))


def test_rms_norm_matches_functional_values_and_gradient() -> None:
    x = (3.0 * torch.randn(B, N, D, dtype=torch.float64) + 1.0).requires_grad_()
    assert torch.allclose(rms_norm(x, 1e-5), F.rms_norm(x, (D,), eps=1e-5))
    assert torch.autograd.gradcheck(lambda t: rms_norm(t, 1e-5), (x,))
    with torch.no_grad():
        y = x.detach().clone()
        assert torch.allclose(rms_norm_(y, 1e-5), F.rms_norm(x, (D,), eps=1e-5))


def test_swiglu_gradient() -> None:
    torch.manual_seed(0)
    mlp = SwiGLU(D, 4.0).double()
    x = torch.randn(2, 3, D, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(mlp, (x,))


def test_attention_matches_reference_and_is_non_causal() -> None:
    torch.manual_seed(0)
    attn = Attention(D, HEADS, None)
    x = torch.randn(B, N, D)
    q, k, v = (x @ attn.qkv.weight.T).view(B, N, 3, HEADS, D // HEADS).permute(2, 0, 3, 1, 4)
    p = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D // HEADS), dim=-1)  # (b, h, n, n)
    expected = (p @ v).transpose(1, 2).reshape(B, N, D) @ attn.out.weight.T
    assert torch.allclose(attn(x), expected, atol=1e-5)
    x2 = x.clone()
    x2[:, -1] += 1.0
    assert not torch.allclose(attn(x2)[:, 0], attn(x)[:, 0])  # first position sees the last


def test_sequence_mlp_mixes_positions_not_channels() -> None:
    torch.manual_seed(0)
    mix = SequenceMLP(N, 4.0)
    x = torch.randn(B, N, D)
    out = mix(x)
    assert out.shape == (B, N, D)
    assert mix.mlp.gate_up.weight.shape == (2 * swiglu_hidden(N, 4.0), N)
    x2 = x.clone()
    x2[:, -1, 0] += 1.0
    changed = (mix(x2) - out).abs().amax(dim=0) > 0  # (n, d)
    assert changed[:, 0].all() and not changed[:, 1:].any()


@pytest.mark.parametrize("mixer", ["attention", "mlp"])
def test_post_norm_block_has_unit_rms_and_same_no_grad_path(mixer: str) -> None:
    block = make_block(mixer)
    h = 3.0 * torch.randn(B, N, D)
    out = block(h)
    assert out.shape == (B, N, D)
    assert torch.allclose(out.pow(2).mean(-1), torch.ones(B, N), atol=1e-3)
    with torch.no_grad():
        fast = block(h)
    assert torch.allclose(fast, out, atol=1e-5)


def test_reasoning_net_adds_injection_then_runs_blocks() -> None:
    blocks = [make_block("attention", seed=s) for s in range(2)]
    net = ReasoningNet(blocks)
    hidden, injection = torch.randn(B, N, D), torch.randn(B, N, D)
    assert torch.allclose(net(hidden, injection), blocks[1](blocks[0](hidden + injection)), atol=1e-6)


def test_reasoning_net_row_chunks_match_whole_batch() -> None:
    torch.manual_seed(0)
    net = ReasoningNet([make_block("attention", seed=s) for s in range(2)])
    hidden, injection = torch.randn(8, N, D), torch.randn(8, N, D, requires_grad=True)
    whole = net(hidden, injection)
    (g_whole,) = torch.autograd.grad(whole.square().sum(), injection)
    net.row_elements = CHUNK_BYTES // 4 // 3  # 3 rows per chunk -> chunks of 3, 3, 2
    chunked = net(hidden, injection)
    (g_chunked,) = torch.autograd.grad(chunked.square().sum(), injection)
    assert torch.allclose(chunked, whole, atol=1e-5) and torch.allclose(g_chunked, g_whole, atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(net(hidden, injection), whole, atol=1e-5)


def test_row_chunks_are_chosen_by_device(monkeypatch):
    """CPU: chunks under the glibc mmap threshold; a GPU runs TRM's batch 768 in one call (before:
    about 29 chunks per layer there) unless one intermediate would take 1/8 of its memory."""
    from types import SimpleNamespace

    from ponder.models.blocks import ACCELERATOR_CHUNK_SHARE, CHUNK_BYTES, chunk_rows

    row = 81 * 2 * 1408 * 4  # TRM size: n * 2h floats per row of the SwiGLU projection
    assert chunk_rows(768, row, torch.device("cpu")) == CHUNK_BYTES // row < 768
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(total_memory=80 * 2**30))
    assert chunk_rows(768, row, torch.device("cuda")) >= 768  # one call
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(total_memory=2**30))
    assert chunk_rows(768, row, torch.device("cuda")) == 2**30 // ACCELERATOR_CHUNK_SHARE // row < 768
    assert chunk_rows(768, row, torch.device("mps")) == 768
    assert chunk_rows(768, 0, torch.device("cpu")) == 768
