"""Analytic matmul FLOPs of one ACT step of a RecursiveReasoner (TRM / HRM).

Counts 2*m*n*k per matrix product: the q/k/v and output projections, the attention score and
value products, the SwiGLU projections (or the sequence-MLP mixer), the board convolution
(2*k*k per channel and position, with model.board_conv=k), and the readout. Elementwise
work (norms, rotary, activations, residuals), the embedding lookup and the halting head are not
counted. The backward pass is taken as 2x the differentiated forward (grad input + grad weight
per product); note that a flash-style attention backward also recomputes the scores, which this
count leaves out (FlopCounterMode counts attention backward as 2.5x its forward).
"""
from __future__ import annotations

from ponder.models.blocks import swiglu_hidden
from ponder.models.recursive import ModelConfig


def block_flops(cfg: ModelConfig, *, seq_len: int, batch_size: int) -> int:
    """Forward matmul FLOPs of one TransformerBlock on a (batch_size, seq_len, d) input."""
    b, n, d = batch_size, seq_len, cfg.d_model
    tokens = b * n
    if cfg.mixer == "attention":
        projections = 2 * tokens * d * (3 * d) + 2 * tokens * d * d  # qkv + out
        scores_values = 2 * (2 * b * n * n * d)  # q k^T and p v over all heads
        mixer = projections + scores_values
    else:
        hidden_t = swiglu_hidden(n, cfg.expansion)
        mixer = 6 * (b * d) * n * hidden_t  # gate_up (2 * hidden_t outputs) + down, per channel
    ffn = 6 * tokens * d * swiglu_hidden(d, cfg.expansion)
    local = 2 * tokens * d * cfg.board_conv ** 2
    return mixer + ffn + local


def step_flops(cfg: ModelConfig, *, seq_len: int, vocab_size: int, batch_size: int) -> dict[str, int]:
    """Matmul FLOPs of one ACT step (forward of all cycles plus backward of the graded part).

    Args:
        cfg: model configuration.
        seq_len: n positions.
        vocab_size: v.
        batch_size: b.
    Returns:
        dict with
            no_grad_forward: TRM's first T-1 cycles / all but HRM's last L and H updates;
            grad_forward: the differentiated net calls plus the readout;
            grad_backward: 2 * grad_forward;
            total: the sum of the three.
    """
    net = cfg.n_layers * block_flops(cfg, seq_len=seq_len, batch_size=batch_size)
    readout = 2 * batch_size * seq_len * cfg.d_model * vocab_size
    T, n = cfg.h_cycles, cfg.l_cycles
    if cfg.style == "trm":
        no_grad_calls, grad_calls = (T - 1) * (n + 1), n + 1
    else:
        no_grad_calls, grad_calls = T * (n + 1) - 2, 2  # both levels have the same size
    no_grad = no_grad_calls * net
    grad_forward = grad_calls * net + readout
    grad_backward = 2 * grad_forward
    return {
        "no_grad_forward": no_grad,
        "grad_forward": grad_forward,
        "grad_backward": grad_backward,
        "total": no_grad + grad_forward + grad_backward,
    }
