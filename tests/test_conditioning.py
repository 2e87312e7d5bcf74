"""Per-sample conditioning of the task protocol: puzzle identifiers and context tokens travel with
every split, stream, carry and batch, and the model uses them (a learned per-puzzle embedding;
pooled context tokens), so a task whose answer depends on them can be learned."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ponder.core.errors import PonderError
from ponder.core.metrics import ExactMatch
from ponder.core.task import Split
from ponder.models.halting import build_halting, halt_config
from ponder.models.recursive import ModelConfig, RecursiveReasoner
from ponder.training.carry import Carry, SampleStream, batch_of
from ponder.training.objectives import DeepSupervision
from ponder.training.optim import AdamWSettings, build_optimizer

IDS, N, V = 4, 8, 5


def shifted(n: int, seed: int) -> Split:
    """Tokens 1..4; the label of each is the token shifted by the sample's puzzle id (mod 4): the
    same input has a different answer in every puzzle."""
    rng = np.random.default_rng(seed)
    pid = rng.integers(0, IDS, n)
    x = rng.integers(1, 5, (n, N))
    y = (x - 1 + pid[:, None]) % 4 + 1
    ctx = np.stack([np.full(3, p + 1) for p in pid])  # the same information as context tokens
    return Split(x.astype(np.int64), y.astype(np.int64), np.zeros(n, np.float32), pid.astype(np.int64),
                 ctx.astype(np.int64))


def model_for(conditioning: str, seed: int = 0) -> RecursiveReasoner:
    torch.manual_seed(seed)
    cfg = ModelConfig(d_model=16, n_heads=2, n_layers=1, h_cycles=1, l_cycles=1, conditioning=conditioning,
                      readout_init_scale=1.0)
    head = build_halting(halt_config(max_steps=1), 16)
    return RecursiveReasoner(cfg, vocab_size=V, seq_len=N, halting=head, num_puzzle_ids=IDS, context_len=3)


def trained_cell_accuracy(conditioning: str, steps: int = 150) -> float:
    model = model_for(conditioning)
    objective = DeepSupervision(model, SampleStream(shifted(2000, 0), seed=0, augment=None), ExactMatch(),
                                batch_size=32, halt_cfg=model.halting.cfg, loss_kind="softmax",
                                device=torch.device("cpu"), seed=0)
    opt = build_optimizer(model, AdamWSettings(weight_decay=0.0), lr=3e-3)
    for step in range(steps):
        loss, _ = objective.forward(step)
        opt.zero_grad()
        loss.backward()
        opt.step()
        objective.commit(True)
    test = batch_of(shifted(500, 1))
    with torch.no_grad():
        model.eval()
        _, out = model.step(model.init_state(len(test)), model.prepare(test))
    return ExactMatch().summarize_batch(ExactMatch().score(out.logits, test.labels))["cell"]


def test_a_puzzle_embedding_learns_what_the_inputs_cannot_tell():
    with_ids = trained_cell_accuracy("puzzle")
    without = trained_cell_accuracy("none")
    assert with_ids > 0.95, with_ids
    assert without < 0.45, without  # one shift is right for a quarter of the puzzles


def test_context_tokens_condition_the_model():
    learned = trained_cell_accuracy("context")
    assert learned > 0.95, learned


def test_conditioning_reaches_the_output_and_gets_a_gradient():
    model = model_for("context")
    batch = batch_of(shifted(6, 2))
    _, out = model.step(model.init_state(6), model.prepare(batch))
    other = batch_of(shifted(6, 2))
    other.context = (other.context % 4) + 1  # other context, same inputs
    _, out2 = model.step(model.init_state(6), model.prepare(other))
    assert not torch.allclose(out.logits, out2.logits)
    out.logits.square().sum().backward()
    assert model.embed.weight.grad.abs().sum() > 0
    ids = model_for("puzzle")
    _, o = ids.step(ids.init_state(6), ids.prepare(batch))
    o.logits.square().sum().backward()
    rows = ids.puzzle_embedding.weight.grad.abs().sum(1)
    assert (rows[np.unique(batch.puzzle_id.numpy())] > 0).all()  # the rows of the batch's puzzles


def test_missing_conditioning_is_a_one_line_error():
    with pytest.raises(PonderError, match="needs a task with puzzle identifiers"):
        RecursiveReasoner(ModelConfig(d_model=8, n_heads=2, conditioning="puzzle"), vocab_size=V, seq_len=N,
                          halting=build_halting(halt_config(), 8))
    model = model_for("puzzle")
    batch = batch_of(shifted(2, 0))
    batch.puzzle_id = None
    with pytest.raises(PonderError, match="carries no puzzle_id"):
        model.prepare(batch)


def test_stream_and_carry_keep_each_samples_conditioning():
    split = shifted(50, 3)
    stream = SampleStream(split, seed=0, augment=None)
    model = model_for("puzzle")
    carry = Carry(model, 8, torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    carry.refill(model, stream, max_steps=2, explore_prob=0.0, generator=gen)
    carry.needs_sample[[1, 5]] = True
    carry.refill(model, stream, max_steps=2, explore_prob=0.0, generator=gen)
    b = carry.batch
    # every slot's conditioning matches its own sample's answer rule
    assert torch.equal((b.inputs - 1 + b.puzzle_id[:, None]) % 4 + 1, b.labels)
    assert torch.equal(b.context[:, 0] - 1, b.puzzle_id)
    again = Carry(model, 8, torch.device("cpu"))
    again.load_state_dict(carry.state_dict())
    assert torch.equal(again.batch.puzzle_id, b.puzzle_id) and torch.equal(again.batch.context, b.context)
