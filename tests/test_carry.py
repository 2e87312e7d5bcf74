import numpy as np
import torch

from ponder.core.task import Split, token_augment
from ponder.presets import get_config
from ponder.runs.run import build_model
from ponder.training.carry import Carry, SampleStream


def _split(n=10, seq=4):
    x = np.arange(n * seq, dtype=np.int64).reshape(n, seq)
    return Split(x, x + 1000, np.arange(n, dtype=np.float32))


def test_stream_visits_every_sample_once_per_epoch_and_resumes_exactly():
    s = SampleStream(_split(), seed=3, augment=None)
    first = torch.cat([s.take(3).difficulty for _ in range(3)] + [s.take(1).difficulty])
    assert sorted(first.tolist()) == list(range(10))  # one epoch = a permutation
    state = s.state_dict()
    more = s.take(7).difficulty
    t = SampleStream(_split(), seed=3, augment=None)
    t.load_state_dict(state)
    assert torch.equal(t.take(7).difficulty, more)
    assert state["delivered"] == 10


def test_stream_augmentation_is_seeded_by_position():
    def aug(inputs, labels, rng):
        shift = rng.integers(0, 100, size=(len(inputs), 1))
        return inputs + shift, labels + shift

    a = SampleStream(_split(), seed=1, augment=token_augment(aug))
    b = SampleStream(_split(), seed=1, augment=token_augment(aug))
    assert torch.equal(a.take(5).inputs, b.take(5).inputs)
    batch = a.take(4)
    assert torch.equal(batch.labels - batch.inputs, torch.full_like(batch.inputs, 1000))


def test_carry_refills_only_finished_slots():
    cfg = get_config("debug")

    class Task:
        vocab_size, seq_len, num_puzzle_ids, context_len, grid_shape = 8, 4, 0, 0, (2, 2)

    model = build_model(cfg, Task)
    stream = SampleStream(_split(), seed=0, augment=None)
    carry = Carry(model, batch_size=4, device=torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    assert carry.refill(model, stream, max_steps=4, explore_prob=0.5, generator=gen) == 4
    carry.state.y.add_(1.0)  # pretend the slots have advanced
    carry.steps += 2
    before = carry.batch.inputs.clone()
    carry.needs_sample[:] = torch.tensor([False, True, False, False])
    assert carry.refill(model, stream, max_steps=4, explore_prob=0.5, generator=gen) == 1
    assert torch.equal(carry.batch.inputs[[0, 2, 3]], before[[0, 2, 3]])
    assert not torch.equal(carry.batch.inputs[1], before[1])
    assert carry.steps.tolist() == [2, 0, 2, 2]
    fresh = model.init_state(1, "cpu")
    assert torch.equal(carry.state.y[1], fresh.y[0]) and not torch.equal(carry.state.y[0], fresh.y[0])
    assert set(carry.min_steps.tolist()) <= {0, 2, 3, 4}
