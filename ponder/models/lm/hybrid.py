"""The hybrid baseline language model: Gated DeltaNet blocks with causal softmax attention at
chosen layer indices (e.g. layers 5 and 11 of 12, as in the Gated DeltaNet paper's hybrids).

Embedding -> n_layers pre-norm blocks (`layers.Block`) -> RMSNorm -> readout. Layer i mixes with
causal attention (RoPE) when i is in `attention_layers`, else with `GatedDeltaNet`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ponder.core.errors import PonderError
from ponder.core.settings import check, setting
from ponder.core.types import IGNORE
from ponder.models.attention import Rotary
from ponder.models.lm.deltanet import GatedDeltaNet
from ponder.models.lm.layers import (Block, CausalAttention, check_dims, init_lm_weights, linear_flops, param_count,
                                     score_flops)
from ponder.models.lm.recursive_lm import Inference
from ponder.models.sections import PlainSection


def parse_layers(text: str, n_layers: int, where: str = "model.attention_layers") -> tuple[int, ...]:
    """'5,11' -> (5, 11): distinct layer indices in 0..n_layers-1 ('' = none); else a PonderError."""
    if not text.strip():
        return ()
    try:
        idx = tuple(int(t) for t in text.split(","))
    except ValueError:
        raise PonderError(f"{where} must be comma-separated layer indices like '5,11', got {text!r}") from None
    bad = [i for i in idx if not 0 <= i < n_layers]
    if bad or len(set(idx)) != len(idx):
        raise PonderError(f"{where} must be distinct indices in 0..{n_layers - 1}, got {text!r}")
    return tuple(sorted(idx))


@dataclass(kw_only=True)
class HybridConfig(PlainSection):
    """Settings of the hybrid Gated DeltaNet + attention LM.

    Attributes:
        vocab_size: tokens; d_model: width; n_layers: blocks.
        attention_layers: comma-separated indices of the softmax-attention layers ('' = none).
        n_heads: attention heads; dn_heads, dn_head_dim: delta-rule heads and their key width.
        expand_v: delta-rule value width factor (d_v = expand_v * dn_head_dim).
        conv_size: short convolution width; chunk_size: delta-rule chunk length (training).
        mode: delta-rule form, "chunk" or "recurrent" (same values, different speed).
        expansion: SwiGLU factor; max_len: longest sequence (RoPE tables); rope_theta: RoPE base.
        eps: RMSNorm epsilon; init_std: std of the Linear and Embedding weights.
        backend: "torch" or "fla" (flash-linear-attention kernels, CUDA only).
    """

    kind: ClassVar[str] = "hybrid_lm"  # the config section `model`'s kind
    vocab_size: int = setting(512, ge=2)
    d_model: int = setting(64, ge=2)
    n_layers: int = setting(4, ge=1)
    attention_layers: str = "1,3"
    n_heads: int = setting(4, ge=1)
    dn_heads: int = setting(4, ge=1)
    dn_head_dim: int = setting(16, ge=1)
    expand_v: float = setting(1.0, gt=0)
    conv_size: int = setting(4, ge=1)
    chunk_size: int = setting(64, ge=1)
    mode: str = setting("chunk", choices=("chunk", "recurrent"))
    expansion: float = setting(4.0, gt=0)
    max_len: int = setting(1024, ge=1)
    rope_theta: float = setting(10000.0, gt=0)
    eps: float = setting(1e-6, gt=0)
    init_std: float = setting(0.02, gt=0)
    backend: str = setting("torch", choices=("torch", "fla"))

    def inactive(self) -> dict[str, str]:
        return {"chunk_size": "model.mode=recurrent runs token by token"} if self.mode == "recurrent" else {}

    def validate(self) -> None:
        check(self, "model")
        parse_layers(self.attention_layers, self.n_layers)
        check_dims(self.d_model, self.n_heads)
        if self.dn_head_dim * self.expand_v != int(self.dn_head_dim * self.expand_v):
            raise PonderError(f"model.expand_v * model.dn_head_dim must be whole, got {self.expand_v} * {self.dn_head_dim}")


class HybridLM(nn.Module):
    """Gated DeltaNet + attention language model.

    Args:
        cfg: `HybridConfig` (validated here).
    """

    def __init__(self, cfg: HybridConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.attention_layers = parse_layers(cfg.attention_layers, cfg.n_layers)
        self.rotary = Rotary(cfg.d_model // cfg.n_heads, cfg.max_len, cfg.rope_theta)
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        blocks = []
        for i in range(cfg.n_layers):
            if i in self.attention_layers:
                mixer: nn.Module = CausalAttention(cfg.d_model, cfg.n_heads, self.rotary)
            else:
                mixer = GatedDeltaNet(cfg.d_model, cfg.dn_heads, cfg.dn_head_dim, expand_v=cfg.expand_v,
                                      conv_size=cfg.conv_size, mode=cfg.mode, chunk_size=cfg.chunk_size,
                                      backend=cfg.backend)
            blocks.append(Block(mixer, cfg.d_model, cfg.expansion, cfg.eps))
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.RMSNorm(cfg.d_model, eps=cfg.eps)
        self.readout = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        init_lm_weights(self, cfg.init_std)

    def forward(self, tokens: Tensor) -> Tensor:
        """Args: tokens (b, n) int64, n <= max_len. Returns: (b, n, vocab) next-token logits."""
        if tokens.shape[1] > self.cfg.max_len:
            raise PonderError(f"sequence of {tokens.shape[1]} tokens is longer than model.max_len={self.cfg.max_len}")
        x = self.embed(tokens)  # (b, n, d)
        for block in self.blocks:
            x = block(x)
        return self.readout(self.norm(x))  # (b, n, v)

    def num_parameters(self) -> int:
        return param_count(self)

    token_objective = True  # trained by ponder.training.objectives.TokenObjective through `loss`
    max_steps = 1  # one pass per token: depth 1 everywhere

    def loss(self, tokens: Tensor, labels: Tensor, train_step: int = 0) -> tuple[Tensor, dict[str, float]]:
        """Mean next-token cross-entropy over the supervised tokens, and named figures.

        Args: tokens (b, n); labels (b, n), IGNORE where unsupervised; train_step (unused: no
        halting head, no schedule). Returns: (loss, {lm_loss, token_accuracy, mean_depth, halt_rate}).
        """
        logits = self(tokens)
        mask = labels != IGNORE
        if not mask.any():
            raise PonderError("the batch has no supervised tokens")
        loss = F.cross_entropy(logits[mask].float(), labels[mask])
        with torch.no_grad():
            acc = (logits[mask].argmax(-1) == labels[mask]).float().mean()
        # 0-dim tensors: the training loop reads every figure in its one host transfer
        return loss, {"lm_loss": loss.detach(), "token_accuracy": acc, "mean_depth": 1.0, "halt_rate": 0.0}

    @torch.no_grad()
    def infer(self, tokens: Tensor) -> Inference:
        """Inference in the recursive LM's terms: every token runs the stack once (depth 1)."""
        b, n = tokens.shape
        return Inference(self(tokens), torch.ones_like(tokens), b * n, b * n, b * n)

    def flops_per_token(self, n: int, depth: float = 1.0) -> float:
        """Forward matmul FLOPs per token at sequence length n: every Linear (projections, SwiGLU,
        readout), attention scores and the chunked delta rule (`depth` is always 1 here)."""
        rule = sum(b.mixer.rule_flops_per_token() for b in self.blocks if isinstance(b.mixer, GatedDeltaNet))
        return linear_flops(self) + score_flops(self, n) + rule

    def set_mode(self, mode: str) -> None:
        """Switch every delta-rule layer to "chunk" or "recurrent" (same weights, same values)."""
        for block in self.blocks:
            if isinstance(block.mixer, GatedDeltaNet):
                block.mixer.mode = mode

    def layer_kinds(self) -> list[str]:
        return ["attention" if i in self.attention_layers else "deltanet" for i in range(self.cfg.n_layers)]
