"""Two gloo processes inside a test (torch.multiprocessing), for the data-parallel tests.

Each worker joins a process group with a short timeout, so a rank left waiting on a collective
another rank never reaches fails the test instead of hanging it.
"""
import datetime
import os
import socket
import traceback
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ponder.core.errors import PonderError
from ponder.core.task import Split
from ponder.presets import get_config
from ponder.runs.config import apply_overrides
from ponder.runs.run import build_model, open_run
from ponder.tasks import build_task
from ponder.training.calibrate import calibrate
from ponder.training.carry import SampleStream
from ponder.training.distributed import SINGLE, Shard
from ponder.training.evaluate import evaluate_split
from ponder.training.loop import train_step
from ponder.training.objectives import DeepSupervision

TIMEOUT = datetime.timedelta(seconds=60)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, fn, args, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", rank=rank, world_size=world, timeout=TIMEOUT)
        results[rank] = fn(Shard(rank=rank, world=world), *args)
    except BaseException:  # noqa: BLE001  (reported to the test, which fails with it)
        results[rank] = "ERROR: " + traceback.format_exc()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def spawn(fn, *args, world: int = 2) -> list:
    """Run fn(shard, *args) in `world` processes; returns their results in rank order."""
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_worker, args=(world, free_port(), fn, args, results), nprocs=world, join=True)
        out = [results.get(r) for r in range(world)]
    for r in out:
        if isinstance(r, str) and r.startswith("ERROR"):
            raise AssertionError(r)
    return out


# ---------------------------------------------------------------------- workers


def numbered_split(n: int, seq: int = 16) -> Split:
    """Samples that carry their index in base 4 in their first five tokens (tokens 1..4)."""
    idx = np.arange(n)
    inputs = np.ones((n, seq), dtype=np.int64)
    for j in range(5):
        inputs[:, j] = idx // 4 ** j % 4 + 1
    return Split(inputs=inputs, labels=inputs.copy(), difficulty=idx.astype(np.float32))


def _sample_id(inputs: torch.Tensor) -> list[int]:
    return sum((inputs[:, j] - 1) * 4 ** j for j in range(5)).tolist()


def carry_samples(shard: Shard, steps: int, batch_size: int) -> dict:
    """Drive a deep-supervision carry for `steps` optimizer steps with scripted halting; return
    the ids of the samples this rank received, in order, and the objective's counters."""
    cfg = apply_overrides(get_config("debug"), [f"--train.batch_size={batch_size}"])
    task = build_task(cfg.task)
    torch.manual_seed(0)
    model = build_model(cfg, task)
    split = numbered_split(500)
    stream = SampleStream(split, seed=3, augment=None)
    obj = DeepSupervision(model, stream, task.metric, batch_size=batch_size, halt_cfg=cfg.halt, loss_kind="softmax",
                          device=torch.device("cpu"), seed=3, shard=shard)
    head = model.halting
    received = []
    orig_refill = obj.carry.refill

    def refill(*a, **k):
        before = torch.as_tensor(obj.carry.needs_sample.copy())  # the carry keeps its needs on the host
        n = orig_refill(*a, **k)
        received.extend(_sample_id(obj.carry.batch.inputs[before]))
        return n

    obj.carry.refill = refill
    head.decide = lambda out, st, memo: (st >= (obj.carry.batch.inputs[:, 0] % 3) + 1, memo)
    with torch.no_grad():
        for step in range(steps):
            obj.forward(step)
            obj.commit(True)
    expected = _sample_id(SampleStream(split, seed=3, augment=None).take(stream.delivered).inputs)
    return {"received": received, "counters": dict(obj.counters), "delivered": stream.delivered,
            "stream_order": expected}


def _halt_at(model, t_halt: int) -> None:
    """Make the model's head halt every sample at step `t_halt`."""
    orig = model.halting.decide
    model.halting.decide = lambda out, steps, memo: (steps >= t_halt, orig(out, steps, memo)[1])


def evaluate_scripted(shard: Shard, max_steps: int) -> dict:
    """Early-exit evaluation of the debug model in which rank 0's samples halt at step 1 and the
    other ranks' run to the cap (so the ranks run different numbers of steps)."""
    cfg = get_config("debug")
    task = build_task(cfg.task)
    torch.manual_seed(0)
    model = build_model(cfg, task)
    _halt_at(model, 1 if shard.rank == 0 else max_steps)
    return evaluate_split(model, task.test, task.metric, max_steps=max_steps, batch_size=16,
                          device=torch.device("cpu"), budgets=True, shard=shard)


def evaluate_halves(max_steps: int) -> tuple[dict, dict, int]:
    """One process: the first half of the split halting at step 1, the second at the cap."""
    cfg = get_config("debug")
    task = build_task(cfg.task)
    torch.manual_seed(0)
    model = build_model(cfg, task)
    n = len(task.test)
    half = -(-n // 2)
    _halt_at(model, 1)
    a = evaluate_split(model, task.test.slice(0, half), task.metric, max_steps=max_steps, batch_size=16,
                       device=torch.device("cpu"), shard=SINGLE)
    _halt_at(model, max_steps)
    b = evaluate_split(model, task.test.slice(half, n), task.metric, max_steps=max_steps, batch_size=16,
                       device=torch.device("cpu"), shard=SINGLE)
    return a, b, half


def train_weights(shard: Shard, overrides: list[str], steps: int, run_dir: str) -> dict:
    """Open a debug run (joined to this process group when spawned), take `steps` optimizer steps
    and return the weights and the last step's logged figures."""
    os.environ.update(WORLD_SIZE=str(shard.world), RANK=str(shard.rank), LOCAL_WORLD_SIZE=str(shard.world))

    cfg = apply_overrides(get_config("debug"), ["--train.tensorboard=off", *overrides])
    run = open_run(cfg, Path(run_dir))
    run.callbacks.call("on_train_start", run)
    for _ in range(steps):
        metrics = train_step(run)
    return {"weights": {k: v.clone() for k, v in run.model.state_dict().items()},
            "metrics": {k: v for k, v in metrics.items() if isinstance(v, float)}}


def calibration_records(shard: Shard) -> dict:
    """Calibrate a debug model with halt.threshold=auto on this rank, alone and then across the
    process group. Rank 1's halting bias is raised so that its untrained model halts early where
    rank 0's never halts: the ranks' own records differ."""
    cfg = apply_overrides(get_config("debug"), ["--halt.threshold=auto", "--train.tensorboard=off"])
    task = build_task(cfg.task)
    model = build_model(cfg, task)
    if shard.rank:
        with torch.no_grad():
            model.halting.probe.linear.bias.fill_(2.0)
    cpu = torch.device("cpu")
    own = calibrate(model, task, cfg, device=cpu)
    adopted = calibrate(model, task, cfg, device=cpu, shard=shard)
    return {"own": own, "adopted": adopted, "halts_at": model.halting.calibrated}


def open_locked_run(shard, run_dir):
    """open_run on a run directory another process holds: every rank refuses, none waits."""
    os.environ.update(WORLD_SIZE=str(shard.world), RANK=str(shard.rank), LOCAL_WORLD_SIZE=str(shard.world))
    cfg = apply_overrides(get_config("debug"), ["--train.batch_size=8", "--train.progress=false"])
    try:
        open_run(cfg, Path(run_dir))
    except PonderError as e:
        return str(e)
    return "opened"
