"""The recursive LM: per-token halting with every head, frozen halted tokens, causality at every
depth, train/inference agreement, measured early exit, and the halting loss reaching the head."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ponder.core.errors import PonderError
from ponder.core.types import IGNORE
from ponder.models.halting import HALTING, halt_config
from ponder.models.lm.recursive_lm import RecursiveLM, RecursiveLMConfig

KINDS = sorted(HALTING.names())
V, M = 30, 4


def model(kind: str, seed: int = 0, spread: float = 2.0) -> RecursiveLM:
    """A tiny model whose halting probe is random, so tokens halt at different depths."""
    torch.manual_seed(seed)
    m = RecursiveLM(RecursiveLMConfig(vocab_size=V, d_model=32, n_layers=2, n_heads=4, max_len=32),
                    halt_config(kind, max_steps=M, bias_init=0.0))
    with torch.no_grad():
        m.halting.probe.linear.weight.normal_(0.0, spread)
    return m


def tokens(seed: int = 1, b: int = 3, n: int = 16) -> torch.Tensor:
    return torch.randint(0, V, (b, n), generator=torch.Generator().manual_seed(seed))


def test_every_registered_head_is_covered():
    assert set(KINDS) >= {"act", "pondernet", "q_halt", "q_continue"}


@pytest.mark.parametrize("kind", KINDS)
def test_early_exit_matches_training_path_and_counts_compute(kind):
    m = model(kind)
    x = tokens()
    tr = m.trajectory(x)
    inf = m.infer(x)
    depths = tr.depth.unique()
    assert len(depths) >= 2, "the test needs tokens halting at different depths"
    assert torch.equal(inf.depth, tr.depth)
    torch.testing.assert_close(inf.logits, tr.answer, atol=1e-5, rtol=1e-5)
    # applications actually run = the sum of the tokens' depths, counted independently
    assert inf.applications == int(tr.depth.sum())
    assert inf.full == x.numel() * M and inf.rows_run >= inf.applications
    assert inf.saved == pytest.approx(1 - tr.depth.float().mean().item() / M)


@pytest.mark.parametrize("kind", ["act", "q_halt"])
def test_halted_tokens_keep_their_state(kind):
    m = model(kind)
    tr = m.trajectory(tokens())
    for c in range(2, M + 1):
        halted = tr.depth < c  # halted before cycle c
        assert torch.equal(tr.states[c - 1][halted], tr.states[c - 2][halted])
        assert not torch.equal(tr.states[c - 1][~halted], tr.states[c - 2][~halted]) or not (~halted).any()


@pytest.mark.parametrize("kind", ["act", "pondernet", "q_halt"])
def test_causal_at_every_depth(kind):
    m = model(kind)
    x = tokens(n=20)
    x2 = x.clone()
    x2[:, 11:] = (x2[:, 11:] + 5) % V
    a, b = m.trajectory(x), m.trajectory(x2)
    for c in range(M):
        assert torch.equal(a.states[c][:, :11], b.states[c][:, :11])
        assert torch.equal(a.outs[c].halt_logits.view(3, 20)[:, :11], b.outs[c].halt_logits.view(3, 20)[:, :11])
    assert not torch.equal(a.states[0][:, 11:], b.states[0][:, 11:])
    assert torch.equal(a.depth[:, :11], b.depth[:, :11])
    ia, ib = m.infer(x), m.infer(x2)
    assert torch.equal(ia.depth[:, :11], ib.depth[:, :11])
    torch.testing.assert_close(ia.logits[:, :11], ib.logits[:, :11], atol=1e-6, rtol=0)


def test_q_halt_loss_equals_independent_computation():
    m = model("q_halt")
    x = tokens()
    labels = tokens(seed=2)
    labels[:, :3] = IGNORE
    loss, stats = m.loss(x, labels)
    tr = m.trajectory(x)
    keep = labels.reshape(-1) != IGNORE
    y = labels.reshape(-1)[keep]
    terms = []
    for out in tr.outs:  # mean over cycles of CE + 0.5 * BCE(q, argmax right), over supervised tokens
        logits = out.logits[:, 0][keep]
        q = out.halt_logits[keep]
        right = (logits.argmax(-1) == y).float()
        terms.append(F.cross_entropy(logits, y) + 0.5 * F.binary_cross_entropy_with_logits(q, right))
    torch.testing.assert_close(loss, torch.stack(terms).mean())
    assert stats["mean_depth"] == pytest.approx(tr.depth.reshape(-1)[keep].float().mean().item())


@pytest.mark.parametrize("kind", KINDS)
def test_halting_loss_reaches_the_head_and_halting_moves(kind):
    m = model(kind, spread=0.0)  # the default deep start: zero probe weight
    torch.nn.init.constant_(m.halting.probe.linear.bias, -2.0)
    x, labels = tokens(b=4), tokens(seed=3, b=4)
    loss, _ = m.loss(x, labels)
    loss.backward()
    w = m.halting.probe.linear.weight.grad
    assert w is not None and torch.isfinite(w).all() and w.abs().sum() > 0
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    before = m.halting.probe.linear.bias.detach().clone()
    first = None
    for step in range(5):
        opt.zero_grad()
        loss, stats = m.loss(x, labels, train_step=step)
        loss.backward()
        opt.step()
        first = first or stats
    assert not torch.equal(m.halting.probe.linear.bias.detach(), before)
    _, last = m.loss(x, labels)
    assert last["halt_logit_mean"] != first["halt_logit_mean"]


def test_refuses_bad_input():
    m = model("q_halt")
    with pytest.raises(PonderError, match="max_len"):
        m.infer(torch.zeros(1, 40, dtype=torch.long))
    with pytest.raises(PonderError, match="supervised"):
        m.loss(tokens(), torch.full((3, 16), IGNORE))
