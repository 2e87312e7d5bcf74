"""Board-aware local mixing: a depthwise convolution over the task's grid (`model.board_conv`)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class BoardConv(nn.Module):
    """Local mixing over the task's 2D grid: x + depthwise_conv(x), each channel convolved with its
    own k x k kernel over the (rows, cols) board the n positions lay out (zero padding at the
    edges). The kernels start at zero, so a model with the board convolution starts as the same
    model without it (and draws the same initial weights from the same seed).

    The positions are read as a channels-last (b, d, rows, cols) view, with no copy in or out.

    Args:
        channels: d, the last axis of the input.
        grid_shape: (rows, cols) with rows * cols == n.
        kernel: k, odd.
    """

    def __init__(self, channels: int, grid_shape: tuple[int, int], kernel: int):
        super().__init__()
        self.rows, self.cols = grid_shape
        self.weight = nn.Parameter(torch.zeros(channels, 1, kernel, kernel))

    def forward(self, x: Tensor) -> Tensor:
        """Args: x (b, n, d). Returns: (b, n, d)."""
        b, n, d = x.shape
        board = x.reshape(b, self.rows, self.cols, d).permute(0, 3, 1, 2)  # (b, d, rows, cols), channels-last
        mixed = F.conv2d(board, self.weight, padding=self.weight.shape[-1] // 2, groups=d)
        return x + mixed.permute(0, 2, 3, 1).reshape(b, n, d)  # (b, n, d)
