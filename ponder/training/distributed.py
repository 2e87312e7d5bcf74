"""Data parallelism across processes started by `torchrun` (gloo on the CPU, NCCL on CUDA).

One `Shard` object stands for "this process among W". With W = 1 every method is the identity,
so there is one code path: the training loop, the carry, the objectives and evaluation always
go through a Shard.

How a step stays equal to one process at the same global batch B:

- Every rank keeps the GLOBAL bookkeeping: the sample stream, the exploration generator and the
  sample counters are the same on every rank (same seed, same calls). Rank r owns the slots
  [r * B / W, (r + 1) * B / W) of the deep-supervision carry, and computes only those.
- Refill: the ranks gather which slots need a sample, every rank draws the same k samples from the
  stream, and each keeps the ones for its own slots; no sample is dropped or seen twice.
- Gradients: each rank's loss is the mean over its B / W samples; the gradients are averaged
  across ranks in one all-reduce of a flat buffer (with the "loss was not finite" flag in it), so
  every rank clips and steps identically and the weights stay equal without a broadcast.
  `DistributedDataParallel` is not used: ponder drives the model through its parts (prepare,
  cycle, step, several calls per backward, estimator hooks), which that wrapper's single-forward
  contract does not fit; the one all-reduce per step is the same traffic as one DDP bucket.
- Collectives happen only at points every rank reaches in the same order: refill and commit of a
  step, the gradient average, the stop flags, log steps, evaluations and checkpoints. Halting's
  variable step counts only ever change loops that contain no collective (early-exit inference
  runs on each rank's shard and is gathered afterwards).
- Checkpoints are written by rank 0 alone and hold the global carry, so a run resumes at
  another world size (B must divide by the new W).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterable

import torch
import torch.distributed as dist
from torch import Tensor

from ponder.core.errors import PonderError


@dataclass(frozen=True)
class Shard:
    """This process's place among `world` data-parallel processes (rank 0 writes files)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def local_size(self, total: int, what: str = "train.batch_size") -> int:
        """This rank's share of a global batch of `total` (which must divide by the world size)."""
        if total % self.world:
            raise PonderError(f"{what}={total} does not divide among {self.world} processes")
        return total // self.world

    def rows(self, total: int) -> slice:
        """The rows of a global batch of `total` that this rank owns."""
        b = self.local_size(total)
        return slice(self.rank * b, (self.rank + 1) * b)

    def split_rows(self, n: int) -> slice:
        """This rank's contiguous part of n items when n need not divide (evaluation)."""
        per = -(-n // self.world)
        return slice(min(n, self.rank * per), min(n, (self.rank + 1) * per))

    # ------------------------------------------------------------------ collectives

    def gather_cat(self, t: Tensor) -> Tensor:
        """Concatenate equal-shaped tensors of every rank along dim 0, in rank order."""
        if not self.active:
            return t
        src = t.to(self._device()).contiguous()  # host-side bookkeeping (the carry's needs) goes through the device
        parts = [torch.empty_like(src) for _ in range(self.world)]
        dist.all_gather(parts, src)
        return torch.cat(parts, 0).to(t.device)

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's `obj` (picklable), in rank order."""
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank."""
        if not self.active:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def any_flags(self, flags: Iterable[bool]) -> list[bool]:
        """For each flag: is it set on any rank?"""
        flags = [bool(f) for f in flags]
        if not self.active:
            return flags
        t = torch.tensor(flags, dtype=torch.float64, device=self._device())
        dist.all_reduce(t)
        return [bool(v > 0) for v in t.tolist()]

    def mean_metrics(self, metrics: dict[str, Any], n: int) -> dict[str, Any]:
        """Per-rank figures of `n` samples each -> the global batch's: numbers are averaged (equal
        shards: the global mean), a spread `X_std` beside its `X_mean` is pooled into the
        global batch's sample standard deviation, and booleans are or-ed."""
        if not self.active:
            return metrics
        keys = [k for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        flags = [k for k, v in metrics.items() if isinstance(v, bool)]
        spreads = [k for k in keys if k.endswith("_std") and k[:-4] + "_mean" in keys]
        # second moment of each spread's quantity on this rank: population variance + mean^2
        second = [metrics[k] ** 2 * (n - 1) / n + metrics[k[:-4] + "_mean"] ** 2 for k in spreads]
        t = torch.tensor([float(metrics[k]) for k in keys] + [float(metrics[k]) for k in flags] + second,
                         dtype=torch.float64, device=self._device())
        dist.all_reduce(t)
        t /= self.world
        out = dict(metrics)
        for i, k in enumerate(keys):
            out[k] = t[i].item()
        for j, k in enumerate(flags):
            out[k] = bool(t[len(keys) + j] > 0)
        total = n * self.world
        for j, k in enumerate(spreads):
            var = max(0.0, t[len(keys) + len(flags) + j].item() - out[k[:-4] + "_mean"] ** 2)
            out[k] = (var * total / max(1, total - 1)) ** 0.5
        return out

    def average_gradients(self, params: list[torch.nn.Parameter], bad: Tensor) -> Tensor:
        """Average the gradients of `params` over ranks in place, in one all-reduce that also
        carries this rank's `bad` flag (0-dim bool on the device: a non-finite loss, whose rank
        contributes no gradient). Returns whether any rank was bad, on the device (no host read:
        the loop refuses such a step with its one host transfer). A parameter gets a gradient when
        any rank has one."""
        if not self.active:
            return bad
        dev = params[0].device
        bad = bad.to(dev)
        has = torch.tensor([0.0 if p.grad is None else 1.0 for p in params], dtype=torch.float64, device=dev)
        flat = torch.cat([torch.zeros(p.numel(), dtype=torch.float32, device=dev) if p.grad is None else
                          torch.where(bad, 0.0, p.grad.detach().reshape(-1).float()) for p in params])
        head = torch.cat([bad.double().view(1), has])
        dist.all_reduce(head)
        dist.all_reduce(flat)
        flat /= self.world  # a bad step's average is refused by the loop
        offset = 0
        for p, h in zip(params, head[1:].tolist()):
            n = p.numel()
            if h > 0:
                g = flat[offset:offset + n].view_as(p).to(p.dtype)
                if p.grad is None:
                    p.grad = g.clone()
                else:
                    p.grad.copy_(g)
            offset += n
        return head[0] > 0

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def _device(self) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


SINGLE = Shard()


def launched_world() -> int:
    """The world size torchrun announced to this process (1 when not launched by torchrun)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise PonderError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a number") from None


def join(device: torch.device) -> tuple[Shard, torch.device]:
    """This process's Shard (joining torchrun's process group when there is one) and its device:
    with CUDA under torchrun, the GPU of its local rank."""
    world = launched_world()
    if world <= 1:
        return SINGLE, device
    if not dist.is_available():
        raise PonderError("this PyTorch build has no torch.distributed; run a single process")
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "mps":
            raise PonderError("multi-process training runs on cpu or cuda, not mps")
        if device.type == "cuda":
            local = int(os.environ.get("LOCAL_RANK", "0"))
            if local >= torch.cuda.device_count():
                raise PonderError(f"LOCAL_RANK={local} but only {torch.cuda.device_count()} CUDA devices")
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend)
    if device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    return Shard(rank=dist.get_rank(), world=dist.get_world_size()), device


def leave() -> None:
    """Leave the process group (at the end of a multi-process run)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def local_world() -> int:
    """Processes torchrun started on this machine (1 when not under torchrun)."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1
