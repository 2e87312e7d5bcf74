"""The board convolution (model.board_conv): local mixing over the task's grid inside every block."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from ponder.core.errors import PonderError
from ponder.core.types import Batch
from ponder.models import ModelConfig, RecursiveReasoner
from ponder.models.board import BoardConv
from ponder.models.flops import step_flops
from tests.test_recursive import MeanHalting

B, ROWS, COLS, V, D = 3, 4, 5, 7, 8
N = ROWS * COLS


def make_model(board_conv: int, seed: int = 0, **overrides: object) -> RecursiveReasoner:
    torch.manual_seed(seed)
    cfg = ModelConfig(d_model=D, n_heads=2, n_layers=2, h_cycles=2, l_cycles=1, board_conv=board_conv, **overrides)
    return RecursiveReasoner(cfg, vocab_size=V, seq_len=N, halting=MeanHalting(D), grid_shape=(ROWS, COLS))


def step(model: RecursiveReasoner, inputs: torch.Tensor):
    return model.step(model.init_state(len(inputs)), model.prepare(Batch(inputs, inputs, torch.zeros(len(inputs)))))


def reference(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x + the depthwise convolution written out cell by cell (zero outside the board)."""
    k = weight.shape[-1]
    board = x.view(len(x), ROWS, COLS, -1)
    out = board.clone()
    for r in range(ROWS):
        for c in range(COLS):
            for i in range(k):
                for j in range(k):
                    rr, cc = r + i - k // 2, c + j - k // 2
                    if 0 <= rr < ROWS and 0 <= cc < COLS:
                        out[:, r, c] += board[:, rr, cc] * weight[:, 0, i, j]
    return out.view_as(x)


@pytest.mark.parametrize("kernel", [1, 3, 5])
def test_board_conv_is_the_written_out_depthwise_convolution(kernel: int) -> None:
    conv = BoardConv(D, (ROWS, COLS), kernel)
    with torch.no_grad():
        conv.weight.normal_()
    x = torch.randn(B, N, D)
    torch.testing.assert_close(conv(x), reference(x, conv.weight))


def test_board_conv_mixes_only_the_neighbourhood() -> None:
    conv = BoardConv(D, (ROWS, COLS), 3)
    with torch.no_grad():
        conv.weight.fill_(1.0)
    x = torch.zeros(1, N, D)
    x[0, 2 * COLS + 2] = 1.0  # one cell in the middle of the board
    touched = conv(x)[0].abs().sum(-1).view(ROWS, COLS) > 0
    expected = torch.zeros(ROWS, COLS, dtype=torch.bool)
    expected[1:4, 1:4] = True
    assert torch.equal(touched, expected)


def test_a_fresh_board_conv_leaves_the_model_unchanged() -> None:
    """Zero kernels at start: same initial weights from the same seed, same step outputs."""
    inputs = torch.randint(0, V, (B, N), generator=torch.Generator().manual_seed(1))
    plain, local = make_model(0), make_model(3)
    extra = set(local.state_dict()) - set(plain.state_dict())
    assert extra and all(name.endswith("local.weight") for name in extra)
    for name, value in plain.state_dict().items():
        assert torch.equal(value, local.state_dict()[name]), name
    (_, a), (_, b) = step(plain, inputs), step(local, inputs)
    torch.testing.assert_close(a.logits, b.logits)


def test_the_board_conv_learns() -> None:
    model = make_model(3)
    inputs = torch.randint(0, V, (B, N), generator=torch.Generator().manual_seed(2))
    _, out = step(model, inputs)
    F.cross_entropy(out.logits.flatten(0, 1), inputs.flatten()).backward()
    grads = [m.weight.grad for m in model.modules() if isinstance(m, BoardConv)]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_board_conv_runs_under_bf16_autocast_with_a_float32_stream() -> None:
    model = make_model(3)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, BoardConv):
                m.weight.normal_()
    inputs = torch.randint(0, V, (B, N), generator=torch.Generator().manual_seed(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        state, out = step(model, inputs)
    assert state.y.dtype == torch.float32 and torch.isfinite(out.logits).all()


def test_flops_count_the_board_conv() -> None:
    model = make_model(3, mixer="mlp")
    analytic = step_flops(model.cfg, seq_len=N, vocab_size=V, batch_size=B)
    assert analytic["total"] > step_flops(make_model(0, mixer="mlp").cfg, seq_len=N, vocab_size=V,
                                          batch_size=B)["total"]
    inputs = torch.randint(0, V, (B, N), generator=torch.Generator().manual_seed(4))
    with FlopCounterMode(display=False) as counter:  # forward only: the counter charges a grouped
        step(model, inputs)                          # convolution's backward as if ungrouped
    assert counter.get_total_flops() == analytic["no_grad_forward"] + analytic["grad_forward"]


@pytest.mark.parametrize(("board_conv", "grid", "message"), [
    (2, (ROWS, COLS), "odd kernel size"),
    (3, None, "needs the task's grid"),
    (3, (ROWS, COLS + 1), "needs the task's grid"),
])
def test_bad_board_conv_settings_are_refused(board_conv: int, grid, message: str) -> None:
    cfg = ModelConfig(d_model=D, n_heads=2, board_conv=board_conv)
    with pytest.raises(PonderError, match=message):
        RecursiveReasoner(cfg, vocab_size=V, seq_len=N, halting=MeanHalting(D), grid_shape=grid)
