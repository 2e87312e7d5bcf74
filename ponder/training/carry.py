"""Deep supervision's carry and the sample stream that feeds it.

TRM/HRM keep a batch of B "slots" across optimizer steps: each slot holds one sample and its
latent state; a slot whose sample halted takes a fresh sample before the next step. In the
reference code every slot receives the loader's next batch row and non-halted slots discard it,
so most loader samples are never seen. Here the loader is a stream and only halted slots draw
from it, so every delivered sample is supervised; the counters prove it.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ponder.core.task import Augment, Split
from ponder.core.types import Batch, State
from ponder.training.distributed import SINGLE, Shard


class SampleStream:
    """Endless, seeded, resumable stream of training samples.

    Each epoch is a fresh permutation (seeded by (seed, epoch)); augmentation of the k-th
    delivered sample is seeded by (seed, k), so the stream's whole state is three integers, and
    the difficulty limit of a curriculum (`set_limit`: only samples of difficulty <= limit are
    drawn; a new limit starts a new epoch over the samples it admits).
    """

    def __init__(self, split: Split, *, seed: int, augment: Augment | None, limit: float | None = None):
        self.split, self.seed, self.augment = split, seed, augment
        self.epoch, self.pos, self.delivered = 0, 0, 0
        self.limit = None if limit is None else float(limit)
        self._perm = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch])
        if self.limit is None:
            return rng.permutation(len(self.split))
        admitted = np.flatnonzero(np.asarray(self.split.difficulty) <= self.limit)
        if len(admitted) == 0:
            raise ValueError(f"no training sample has difficulty <= {self.limit:g}")
        return admitted[rng.permutation(len(admitted))]

    def set_limit(self, limit: float) -> None:
        """Draw only samples of difficulty <= `limit` from now on (from a fresh epoch)."""
        self.limit = float(limit)
        self.epoch, self.pos = self.epoch + 1, 0
        self._perm = self._permutation(self.epoch)

    def take(self, k: int) -> Batch:
        """The next k samples (crossing epoch boundaries as needed)."""
        idx = []
        while len(idx) < k:
            if self.pos == len(self._perm):
                self.epoch, self.pos = self.epoch + 1, 0
                self._perm = self._permutation(self.epoch)
            take = min(k - len(idx), len(self._perm) - self.pos)
            idx.extend(self._perm[self.pos:self.pos + take])
            self.pos += take
        sub = self.split.subset(np.asarray(idx, dtype=np.int64))
        if self.augment is not None and k > 0:
            sub = self.augment(sub, np.random.default_rng([self.seed, 1, self.delivered]))
        self.delivered += k
        return batch_of(sub)

    def state_dict(self) -> dict:
        out = {"epoch": self.epoch, "pos": self.pos, "delivered": self.delivered}
        return out if self.limit is None else {**out, "limit": self.limit}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.pos, self.delivered = state["epoch"], state["pos"], state["delivered"]
        self.limit = state.get("limit", self.limit)
        self._perm = self._permutation(self.epoch)


def batch_of(split: Split) -> Batch:
    """The samples of a split (numpy) as a Batch of tensors on the CPU (whatever the default
    device; the caller moves them to the model's)."""
    def cpu(a):
        return None if a is None else torch.as_tensor(a, device="cpu")

    return Batch(cpu(split.inputs), cpu(split.labels), cpu(split.difficulty), cpu(split.puzzle_id), cpu(split.context))


class Carry:
    """B slots of samples in flight (with their conditioning), their latent state, steps taken
    and exploration floor. The slots' batch starts empty and is allocated at the first refill.

    Across W processes (ponder.training.distributed) each rank holds its B / W slots, while the stream and
    the exploration draws stay global: every rank draws the same samples for the slots that need
    one anywhere and keeps those of its own slots, so the W ranks together hold exactly the
    carry of one process. `state_dict` gathers the global carry; `load_state_dict` takes this
    rank's rows of it, whatever the world size that saved it.
    """

    def __init__(self, model, batch_size: int, device: torch.device, shard: Shard = SINGLE):
        self.device, self.shard, self.global_size = device, shard, batch_size
        local = shard.local_size(batch_size)
        self.batch: Batch | None = None
        self.state: State = model.init_state(local, device)
        self.steps = torch.zeros(local, dtype=torch.long, device=device)
        self.min_steps = torch.zeros(local, dtype=torch.long, device=device)
        # on the host (numpy): the stream draws for these slots, so deciding which slots draw needs
        # no read from the device (the loop fetches the halted slots with the step's figures)
        self.needs_sample = np.ones(local, dtype=bool)

    def refill(self, model, stream: SampleStream, *, max_steps: int, explore_prob: float,
               generator: torch.Generator) -> int:
        """Give every finished slot a fresh sample and fresh latents. Returns how many slots of
        the global carry (all ranks) took one."""
        needs = self.needs_sample
        if self.shard.active:
            needs = self.shard.gather_cat(torch.as_tensor(needs, device="cpu")).numpy()
        needed = np.flatnonzero(needs)  # global slot indices
        k = len(needed)
        if k == 0:
            return 0
        fresh = stream.take(k)
        # TRM's exploration: with probability p a slot must run at least U{2..M} steps
        # drawn on the CPU generator, whatever the device: the same draws on CPU and GPU, every rank
        explore = torch.rand(k, generator=generator, device="cpu") < explore_prob
        floor = torch.randint(2, max(3, max_steps + 1), (k,), generator=generator, device="cpu")
        lo = self.shard.rank * len(self.steps)
        mine = np.flatnonzero((needed >= lo) & (needed < lo + len(self.steps)))  # positions among the k
        if len(mine) == 0:
            return k
        host_slots = needed[mine] - lo
        slots = torch.as_tensor(host_slots, device=self.device)
        mine_t = torch.as_tensor(mine, device="cpu")  # the stream's batch and draws are on the CPU
        fresh = fresh.index(mine_t).to(self.device)
        if self.batch is None:  # first fill: every slot is empty, the stream's batch is the carry's
            self.batch = fresh
        else:
            for name in ("inputs", "labels", "difficulty", "puzzle_id", "context"):
                new = getattr(fresh, name)
                if new is not None:
                    getattr(self.batch, name)[slots] = new.to(getattr(self.batch, name).dtype)
        self.state = model.reset_state(self.state, torch.as_tensor(self.needs_sample, device=self.device))
        self.steps[slots] = 0
        self.min_steps[slots] = torch.where(explore, floor, torch.zeros_like(floor))[mine_t].to(self.device)
        self.needs_sample[host_slots] = False
        return k

    def state_dict(self) -> dict[str, Tensor]:
        """The global carry (every rank's slots, in rank order); a collective under W > 1."""
        b = self.batch
        batch = {} if b is None else {k: getattr(b, k) for k in ("inputs", "labels", "difficulty", "puzzle_id",
                                                                    "context") if getattr(b, k) is not None}
        local = {**batch, "y": self.state.y, "z": self.state.z, "steps": self.steps, "min_steps": self.min_steps,
                 "needs_sample": torch.as_tensor(self.needs_sample, device="cpu")}
        if self.shard.active and b is not None:
            return {k: self.shard.gather_cat(v) for k, v in local.items()}
        if self.shard.active:  # before the first refill no rank has a batch
            return {k: self.shard.gather_cat(v) for k, v in local.items() if k not in batch}
        return local

    def load_state_dict(self, s: dict[str, Tensor]) -> None:
        d = self.device
        if s["y"].shape[0] != self.global_size or s["y"].shape[1:] != self.state.y.shape[1:] \
                or s["z"].shape[1:] != self.state.z.shape[1:]:
            raise ValueError(f"the saved carry has shape {tuple(s['y'].shape)}, this run's is "
                             f"{(self.global_size, *self.state.y.shape[1:])}")
        rows = self.shard.rows(self.global_size)
        s = {k: v[rows] for k, v in s.items()}
        self.batch = None if "inputs" not in s else Batch(
            s["inputs"].to(d), s["labels"].to(d), s["difficulty"].to(d),
            *(s[k].to(d) if k in s else None for k in ("puzzle_id", "context")))
        self.state = State(s["y"].to(d), s["z"].to(d))
        self.steps, self.min_steps = s["steps"].to(d), s["min_steps"].to(d)
        self.needs_sample = s["needs_sample"].cpu().numpy().astype(bool)
