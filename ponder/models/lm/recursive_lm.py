"""A causal recursive language model with per-token halting.

One shared stack of pre-norm causal-attention blocks is applied in cycles to the hidden states
(Universal Transformer, Dehghani et al. arXiv 1807.03819; looped LMs), with the token embedding
injected at every cycle as in TRM:

    h^0 = 0;   h^c_i = stack(h^{c-1} + e)_i  for tokens i still running,   h^c_i = h^{c-1}_i  once halted.

After every cycle each token's readout RMSNorm(h^c_i) gives its next-token logits and, through any
`HaltingHead` of `ponder.models.halting` (Q-halt, Q-continue, ACT, PonderNet), its halt logit.

**Per-token halting through the per-sample protocol.** The heads decide per sample: `logits` pools
a (b, n, d) state to (b,), `decide`/`answer` keep a batch-first memo. Here every token is one
"sample" with a single position: the states are reshaped to (b·n, 1, d), so the pooled state is
the token's own, the memo is per token, and `loss` gets a `Segment` of the supervised tokens with
(T, 1) labels, a per-token cross-entropy as task loss and per-token correctness (argmax = next
token) as the Q heads' target. Nothing in the heads changes; see `token_outputs`.

**Halted tokens keep their state, in training too.** A token that halts at cycle N keeps h^N. The
tokens still running attend to it through the keys and values it had in its last running cycle
(per layer, a cache updated only at running tokens), so a halted token needs no further
computation. Training runs all M cycles for every token (the trajectory heads need M outputs) but
merges with the same masks, so the hidden states, the halting depths and the answers of training
and of early-exit inference agree (tested). The head's `decide` runs in training exactly as at
inference: the depth that shapes the context in training is the depth used at inference.

**Causality at every depth.** A token's state at cycle c depends only on tokens <= i: attention
is causal, a halting decision reads the token's own state, and the key cache holds only a
token's own past keys (tested by perturbing future tokens: earlier outputs are bit-identical).

**Early exit** (`infer`): each cycle gathers only the running tokens (rows padded to the most
running in one sequence) and runs the stack on them, queries against the full key cache; the
count of token-cycle applications actually run is returned, not assumed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ponder.core.errors import PonderError
from ponder.core.settings import check, setting
from ponder.core.types import IGNORE, StepOutput
from ponder.models.attention import Rotary
from ponder.models.halting import HaltSettings, Memo, Segment, build_halting
from ponder.models.lm.layers import (Block, CausalAttention, check_dims, init_lm_weights, linear_flops, param_count,
                                     score_flops)
from ponder.models.sections import PlainSection

KVCache = list[tuple[Tensor, Tensor]]  # per layer: keys, values (b, h, n, hd) of each token's last running cycle


@dataclass(kw_only=True)
class RecursiveLMConfig(PlainSection):
    """Settings of the recursive LM (the number of cycles M is the halting head's `max_steps`).

    Attributes:
        vocab_size: tokens; d_model: width; n_layers: blocks in the shared stack; n_heads: heads.
        expansion: SwiGLU factor; max_len: longest sequence; rope_theta: RoPE base.
        eps: RMSNorm epsilon; init_std: std of the Linear and Embedding weights.
    """

    kind: ClassVar[str] = "recursive_lm"  # the config section `model`'s kind
    vocab_size: int = setting(512, ge=2)
    d_model: int = setting(64, ge=2)
    n_layers: int = setting(2, ge=1)
    n_heads: int = setting(4, ge=1)
    expansion: float = setting(4.0, gt=0)
    max_len: int = setting(1024, ge=1)
    rope_theta: float = setting(10000.0, gt=0)
    eps: float = setting(1e-6, gt=0)
    init_std: float = setting(0.02, gt=0)

    def validate(self) -> None:
        check(self, "model")
        check_dims(self.d_model, self.n_heads)


@dataclass
class Trajectory:
    """All M cycles of a batch (training path).

    Attributes:
        outs: per cycle, the token outputs (b·n, 1, v) logits and (b·n,) halt logits (with grad).
        depth: (b, n) cycle at which each token halted (1..M).
        answer: (b, n, v) the logits each token answers with at its halting cycle (no grad).
        states: per cycle, the (b, n, d) hidden states (with grad).
    """

    outs: list[StepOutput]
    depth: Tensor
    answer: Tensor
    states: list[Tensor] = field(default_factory=list)


@dataclass
class Inference:
    """Early-exit inference of a batch.

    Attributes:
        logits: (b, n, v) each token's answer at its halting cycle.
        depth: (b, n) cycles each token ran.
        applications: token-cycle applications of the stack actually run (running tokens only).
        rows_run: rows the stack processed including the padding of ragged rows.
        full: b·n·M, the applications without early exit.
    """

    logits: Tensor
    depth: Tensor
    applications: int
    rows_run: int
    full: int

    @property
    def saved(self) -> float:
        """Share of token-cycle applications early exit did not run."""
        return 1.0 - self.applications / self.full


def token_outputs(out: StepOutput, rows: Tensor) -> StepOutput:
    """The per-token outputs `rows` (an index or bool mask over the b·n tokens)."""
    return StepOutput(out.logits[rows], out.halt_logits[rows], {k: v[rows] for k, v in out.aux.items()})


def token_task_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """(T, 1, v) logits and (T, 1) labels -> (T,) cross-entropy (the heads' per-"sample" task loss)."""
    return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), reduction="none")


class RecursiveLM(nn.Module):
    """The recursive LM (module docstring).

    Args:
        cfg: `RecursiveLMConfig`; halt: the halting head's settings (`max_steps` = cycles M).
    """

    def __init__(self, cfg: RecursiveLMConfig, halt: HaltSettings):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.max_steps = halt.max_steps
        self.rotary = Rotary(cfg.d_model // cfg.n_heads, cfg.max_len, cfg.rope_theta)
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList([Block(CausalAttention(cfg.d_model, cfg.n_heads, self.rotary), cfg.d_model,
                                           cfg.expansion, cfg.eps) for _ in range(cfg.n_layers)])
        self.norm = nn.RMSNorm(cfg.d_model, eps=cfg.eps)
        self.readout = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        init_lm_weights(self, cfg.init_std)
        self.halting = build_halting(halt, cfg.d_model)  # after the init: the probe keeps its own (zero weight, bias_init)

    def num_parameters(self) -> int:
        return param_count(self)

    token_objective = True  # trained by ponder.training.objectives.TokenObjective through `loss`

    def flops_per_token(self, n: int, depth: float) -> float:
        """Forward matmul FLOPs per token at sequence length n when the token runs `depth` cycles:
        each cycle runs the stack (projections, scores, SwiGLU), the readout and the halting probe.
        Training runs all M cycles (depth = M); early exit runs the measured mean depth."""
        per_cycle = linear_flops(self.blocks) + score_flops(self.blocks, n) + linear_flops(self.readout) \
            + linear_flops(self.halting)
        return depth * per_cycle

    def _check(self, tokens: Tensor) -> None:
        if tokens.dim() != 2 or tokens.shape[1] > self.cfg.max_len:
            raise PonderError(f"tokens must be (batch, n <= model.max_len={self.cfg.max_len}), got {tuple(tokens.shape)}")

    def output(self, h: Tensor) -> StepOutput:
        """(T, d) token states -> StepOutput with (T, 1, v) logits and (T,) halt logits."""
        y = self.norm(h).unsqueeze(1)  # (T, 1, d): one "sample" of one position per token
        halt_logits, aux = self.halting.logits(y)
        return StepOutput(self.readout(y), halt_logits, aux)

    # -- training path: every token computed, merged by the running masks --------------------------
    def trajectory(self, tokens: Tensor) -> Trajectory:
        """Run all M cycles with gradient; halted tokens keep their state and their keys.

        Args: tokens (b, n). Returns: `Trajectory`.
        """
        self._check(tokens)
        b, n = tokens.shape
        e = self.embed(tokens)  # (b, n, d)
        h = torch.zeros_like(e)
        positions = torch.arange(n, device=tokens.device)
        running = torch.ones(b, n, dtype=torch.bool, device=tokens.device)
        depth = torch.full((b, n), self.max_steps, dtype=torch.long, device=tokens.device)
        answer: Tensor | None = None
        cache: KVCache = []
        memo = self.halting.start(b * n, tokens.device)
        outs, states = [], []
        for c in range(1, self.max_steps + 1):
            x = h + e
            kv_mask = running.view(b, 1, n, 1)
            for i, block in enumerate(self.blocks):
                q, k, v = block.mixer.project(block.norm1(x), positions)  # (b, h, n, hd)
                if c > 1:  # halted tokens keep the keys of their last running cycle
                    k, v = torch.where(kv_mask, k, cache[i][0]), torch.where(kv_mask, v, cache[i][1])
                if c == 1:
                    cache.append((k, v))
                else:
                    cache[i] = (k, v)
                x = x + block.mixer.attend(q, k, v)
                x = x + block.mlp(block.norm2(x))
            h = torch.where(running.unsqueeze(-1), x, h)  # (b, n, d)
            out = self.output(h.reshape(b * n, -1))
            with torch.no_grad():  # the decision is not differentiated (the head's loss is)
                halt, memo = self.halting.decide(out, torch.full((b * n,), c, device=tokens.device), memo)
                now = halt.view(b, n) & running
                ans = self.halting.answer(out, memo).view(b, n, -1)
                answer = ans.detach().clone() if answer is None else torch.where(now.unsqueeze(-1), ans, answer)
                depth = torch.where(now, c, depth)
                running = running & ~now
            outs.append(out)
            states.append(h)
        return Trajectory(outs, depth, answer, states)

    def loss(self, tokens: Tensor, labels: Tensor, train_step: int = 0) -> tuple[Tensor, dict[str, float]]:
        """The halting head's whole objective over the supervised tokens, and named figures.

        Args:
            tokens: (b, n) inputs; labels: (b, n) next tokens, IGNORE where unsupervised.
            train_step: the optimizer step (the head's penalty warm-up).
        Returns:
            (scalar loss, stats: the head's figures plus mean_depth, halt_rate (share halted
            before M), halt_logit_mean/std, token_accuracy at the halting depth).
        """
        tr = self.trajectory(tokens)
        flat = labels.reshape(-1)
        rows = (flat != IGNORE).nonzero().squeeze(1)  # (T,) supervised tokens
        if rows.numel() == 0:
            raise PonderError("the batch has no supervised tokens")
        outs = [token_outputs(o, rows) for o in tr.outs]
        targets = flat[rows].unsqueeze(1)  # (T, 1)
        correct = [o.logits.argmax(-1).squeeze(1) == targets.squeeze(1) for o in outs]
        next_out = None
        if self.halting.needs_next_step:  # after M every token has halted: its next state is its own
            last = outs[-1]
            next_out = StepOutput(last.logits.detach(), last.halt_logits.detach(),
                                  {k: v.detach() for k, v in last.aux.items()})
        segment = Segment(outs=outs, steps=torch.ones_like(rows), labels=targets, task_loss=token_task_loss,
                          correct=correct, train_step=train_step, next_out=next_out)
        loss, stats = self.halting.loss(segment)
        with torch.no_grad():
            depth = tr.depth.reshape(-1)[rows].float()
            halt_logits = torch.stack([o.halt_logits for o in outs])  # (M, T)
            # 0-dim tensors: the training loop reads every figure in its one host transfer
            stats.update(mean_depth=depth.mean(), halt_rate=(depth < self.max_steps).float().mean(),
                         halt_logit_mean=halt_logits.mean(), halt_logit_std=halt_logits.std(),
                         token_accuracy=(tr.answer.reshape(-1, tr.answer.shape[-1])[rows].argmax(-1)
                                         == targets.squeeze(1)).float().mean())
        return loss, stats

    # -- inference: only running tokens are computed ------------------------------------------------
    @torch.no_grad()
    def infer(self, tokens: Tensor) -> Inference:
        """Early-exit inference: each cycle runs the stack on the running tokens only.

        Args: tokens (b, n). Returns: `Inference` (answers, depths, applications counted).
        """
        self._check(tokens)
        b, n = tokens.shape
        dev = tokens.device
        e = self.embed(tokens)  # (b, n, d)
        h = torch.zeros_like(e)
        running = torch.ones(b, n, dtype=torch.bool, device=dev)
        depth = torch.full((b, n), self.max_steps, dtype=torch.long, device=dev)
        logits = e.new_zeros(b * n, self.cfg.vocab_size)
        heads, hd = self.cfg.n_heads, self.cfg.d_model // self.cfg.n_heads
        cache = [(e.new_zeros(b, heads, n, hd), e.new_zeros(b, heads, n, hd)) for _ in self.blocks]
        memo: Memo = self.halting.start(b * n, dev)
        applications = rows_run = 0
        for c in range(1, self.max_steps + 1):
            counts = running.sum(1)  # (b,)
            seqs = (counts > 0).nonzero().squeeze(1)  # (b',) sequences with a running token
            if seqs.numel() == 0:
                break
            width = int(counts.max())
            # running positions first, in position order (stable sort), then padding
            order = torch.sort((~running[seqs]).to(torch.int8), dim=1, stable=True).indices[:, :width]  # (b', m)
            valid = torch.arange(width, device=dev) < counts[seqs, None]  # (b', m)
            pos = torch.where(valid, order, 0)
            x = (h + e)[seqs.unsqueeze(1), pos]  # (b', m, d)
            vb, vj = valid.nonzero(as_tuple=True)
            sb, sp = seqs[vb], pos[vb, vj]  # batch row and position of each running token
            for i, block in enumerate(self.blocks):
                q, k, v = block.mixer.project(block.norm1(x), pos)  # (b', h, m, hd)
                keys, values = cache[i]
                keys[sb, :, sp], values[sb, :, sp] = k[vb, :, vj], v[vb, :, vj]
                x = x + block.mixer.attend(q, keys[seqs], values[seqs], pos)
                x = x + block.mlp(block.norm2(x))
            h[sb, sp] = x[vb, vj]
            applications += int(vb.numel())
            rows_run += x.shape[0] * x.shape[1]
            tok = sb * n + sp  # (R,) flat indices of the running tokens
            out = self.output(h[sb, sp])
            halt, sub = self.halting.decide(out, torch.full_like(tok, c), {k: t[tok] for k, t in memo.items()})
            for key, t in sub.items():  # write the running tokens' memo back into the full one
                if key not in memo:
                    memo[key] = t.new_zeros((b * n, *t.shape[1:]))
                memo[key][tok] = t
            ans = self.halting.answer(out, sub).squeeze(1)  # (R, v)
            logits[tok[halt]] = ans[halt].to(logits.dtype)
            depth[sb[halt], sp[halt]] = c
            running[sb[halt], sp[halt]] = False
        return Inference(logits.view(b, n, -1), depth, applications, rows_run, b * n * self.max_steps)
