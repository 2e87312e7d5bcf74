"""`ponder diagnose gradients PRESET|RUN_DIR`: every applicable gradient estimator on one batch.

The recursion of one ACT step (ponder.training.estimator_hook: one estimator step = one full outer cycle,
loss = task loss of the readout of the final answer state) is differentiated by each estimator
from the same fresh state, on one batch of held-out data. Each gradient (over the recursion's
parameters) is compared with two references: BPTT through a long horizon (`ref_steps` cycles)
and the tight implicit solve (the equilibrium gradient). The state is described by the
fixed-point residual and the spectral radius (growth rate) of the cycle map at z_T and z*.

Peak memory: CPU tensors are invisible to tracemalloc, so `peak_torch_bytes` replays the
allocation events of PyTorch's CPU allocator recorded by torch.profiler (profile_memory=True)
and reports the largest number of live bytes above the level at the start of the call.
"""
from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch._C._profiler import _EventType
from torch.profiler import ProfilerActivity, profile
from tqdm import tqdm

from ponder.core.errors import PonderError
from ponder.core.files import atomic_write_text
from ponder.dynamics import compare_gradients, fixed_point_residual, spectral_radius
from ponder.estimators import BPTT, ESTIMATORS, Implicit, Phantom, Truncated
from ponder.models.lm import LM_KINDS
from ponder.presets import PRESETS, get_config
from ponder.runs.config import apply_overrides
from ponder.runs.run import build_model
from ponder.runs.trained import load_trained
from ponder.tasks import build_task
from ponder.training.carry import batch_of
from ponder.training.estimator_hook import recursion_problem
from ponder.training.host import resolve_device, set_threads
from ponder.training.objectives import task_loss

MEMORY_METHOD = ("peak live bytes of the PyTorch CPU allocator during the call, from torch.profiler "
                 "allocation events (profile_memory=True), above the level at its start")


@contextlib.contextmanager
def _native_stderr_silenced():
    """The profiler's native library logs its start and stop to the process's stderr (file
    descriptor 2, below Python's sys.stderr); send those lines to /dev/null while it runs."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def peak_torch_bytes(fn: Callable[[], Any]) -> tuple[Any, int]:
    """Run fn once under torch.profiler; return (its result, peak live bytes allocated by torch)."""
    with _native_stderr_silenced(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    events, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        e = stack.pop()
        if e.tag == _EventType.Allocation:
            events.append((e.start_time_ns, e.extra_fields.alloc_size))
        stack.extend(e.children)
    live = peak = 0
    for _, size in sorted(events):
        live += size
        peak = max(peak, live)
    return result, peak


def timed(fn: Callable[[], Any], repeats: int) -> tuple[Any, float]:
    """(last result, median seconds over `repeats` calls)."""
    times, result = [], None
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return result, statistics.median(times)


def default_estimators(steps: int, *, tol: float = 1e-4, max_iter: int = 50,
                       rtrl_max_params: int = 20000) -> dict[str, Any]:
    """The estimators that apply to a recursion with a generic step (no energy), by label. The
    implicit ones solve forward and adjoint to relative residual `tol` in at most `max_iter`
    iterations each; exact RTRL runs only up to `rtrl_max_params` parameters (its traces hold
    parameters x state numbers: 2.5 GB and 40 s for the 4x4 debug model)."""
    ests: dict[str, Any] = {f"bptt (T={steps})": BPTT(), "truncated k=1": Truncated(k=1)}
    if steps > 2:
        ests[f"truncated k={steps // 2}"] = Truncated(k=steps // 2)
    ests["phantom k=5 lam=0.5"] = Phantom(k=5, lam=0.5)
    ests["implicit, fixed-point adjoint"] = Implicit(
        solver="fixed_point", tol=tol, max_iter=max_iter, adjoint="fixed_point", adjoint_tol=tol, adjoint_max_iter=max_iter)
    ests["implicit, GMRES adjoint"] = Implicit(
        solver="fixed_point", tol=tol, max_iter=max_iter, adjoint="gmres", adjoint_tol=tol, adjoint_max_iter=max_iter)
    if "forward_gradient" in ESTIMATORS:
        ests["forward_gradient"] = ESTIMATORS.get("forward_gradient")()
    if "rtrl" in ESTIMATORS:
        ests["rtrl"] = ESTIMATORS.get("rtrl")(max_params=rtrl_max_params)
    return ests


@dataclass
class Diagnosis:
    """What `diagnose_gradients` returns (JSON-able via `as_dict`)."""

    steps: int
    ref_steps: int
    batch: int
    rows: list[dict] = field(default_factory=list)
    state: dict[str, float] = field(default_factory=dict)
    references: dict[str, dict] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"steps": self.steps, "ref_steps": self.ref_steps, "batch": self.batch, "memory_method": MEMORY_METHOD,
                "rows": self.rows, "state": self.state, "references": self.references}


def diagnose_problem(step_fn, z0, x, loss_fn, params, names: list[str], *, steps: int, ref_steps: int,
                     estimators: dict[str, Any] | None = None, repeats: int = 1, ref_tol: float = 1e-6,
                     ref_max_iter: int = 200, power_iters: int = 200, seed: int = 0,
                     progress: bool = False) -> Diagnosis:
    """Every estimator on one problem of the estimator protocol, against the two references.

    Args:
        step_fn, z0, x, loss_fn, params: as for `estimate` (params[i] named names[i]; extra
            params beyond len(names), e.g. an input leaf, are differentiated but not compared).
        steps: T, the deployed steps every estimator uses.
        ref_steps: horizon of the BPTT reference.
        estimators: label -> estimator (default `default_estimators(steps)`).
        repeats: timing repeats (median reported).
        ref_tol, ref_max_iter: the tight implicit reference (forward and GMRES adjoint).
    """
    estimators = estimators if estimators is not None else default_estimators(steps)
    refs = {"bptt_long": (BPTT(), ref_steps),
            "implicit_tight": (Implicit(solver="fixed_point", tol=ref_tol, max_iter=ref_max_iter, adjoint="gmres",
                                        adjoint_tol=ref_tol, adjoint_max_iter=ref_max_iter), steps)}
    n = len(names)
    diag = Diagnosis(steps=steps, ref_steps=ref_steps, batch=int(z0.shape[0]))
    ref_grads = {}
    for key, (est, T) in refs.items():
        roll = est.estimate(step_fn, z0, x, loss_fn, steps=T, params=params)
        ref_grads[key] = roll.grads[:n]
        diag.references[key] = {"steps": T, "loss": roll.loss.item(), **roll.stats}
    items = [(f"reference: bptt (T={ref_steps})", refs["bptt_long"][0], ref_steps),
             ("reference: implicit tight", refs["implicit_tight"][0], steps),
             *[(label, est, steps) for label, est in estimators.items()]]
    for label, est, T in tqdm(items, desc="estimators", disable=not progress, dynamic_ncols=True):
        def call(est=est, T=T):
            return est.estimate(step_fn, z0, x, loss_fn, steps=T, params=params)

        try:
            roll, seconds = timed(call, repeats)
        except PonderError as e:  # NotApplicable (e.g. forward mode through ops without forward AD), rtrl's size cap
            diag.rows.append({"estimator": label, "name": getattr(est, "name", label), "steps": T,
                              "skipped": str(e).splitlines()[0][:200]})
            continue
        _, peak = peak_torch_bytes(call)
        row: dict[str, Any] = {"estimator": label, "name": getattr(est, "name", label), "steps": T,
                               "loss": roll.loss.item(), "seconds": seconds, "peak_bytes": peak}
        for key, ref in ref_grads.items():
            cmp = compare_gradients(roll.grads[:n], ref, names)
            row[key] = {"cosine": cmp.cosine, "norm_ratio": cmp.norm_ratio, "sign_agreement": cmp.sign_agreement,
                        "per_tensor": {k: vars(v) for k, v in cmp.per_tensor.items()}}
        row["stats"] = dict(roll.stats)
        diag.rows.append(row)
    with torch.no_grad():
        zT = z0
        for _ in range(steps):
            zT = step_fn(zT, x)
    tight = refs["implicit_tight"][0].estimate(step_fn, z0, x, loss_fn, steps=steps, params=params)
    gen = torch.Generator().manual_seed(seed)
    for tag, z in (("z_T", zT), ("z_star", tight.state)):
        res = fixed_point_residual(step_fn, z, x)
        # up to power_iters (200) power iterations, stopping once every sample's estimate is stable
        # to 1% (tests/test_dynamics.py: within 1% on the conformance maps, normal and non-normal)
        rho = spectral_radius(step_fn, z, x, iters=power_iters, burn_in=min(10, power_iters // 2), tol=1e-2,
                              generator=gen)
        diag.state.update({f"residual_abs_{tag}": res.abs.mean().item(), f"residual_rel_{tag}": res.rel.mean().item(),
                           f"rho_{tag}": rho.rho.mean().item(), f"rho_max_{tag}": rho.rho.max().item(),
                           f"rho_iters_{tag}": rho.iters, f"rho_rel_change_{tag}": rho.rel_change.max().item(),
                           f"rho_converged_{tag}": int(rho.converged.sum())})
    return diag


def load_model_and_batch(source: str, batch: int, overrides: list[str] | None = None):
    """(model, held-out Batch, config, description) from a preset name or a run directory."""
    if Path(source).exists():
        model, task, cfg, ckpt = load_trained(source, overrides)  # on cfg.train.device
        what = f"trained run {source} ({ckpt.name})"
    elif source in PRESETS:
        cfg = apply_overrides(get_config(source), overrides or [])
        task = build_task(cfg.task)
        torch.manual_seed(cfg.train.seed)
        model = build_model(cfg, task).to(resolve_device(cfg.train.device))
        what = f"preset {source} at initialisation (seed {cfg.train.seed})"
    elif "/" in source or source.startswith("."):
        raise PonderError(f"no such run directory: {source}")
    else:
        raise PonderError(f"{source!r} is neither a run directory nor a preset; presets: {', '.join(PRESETS.names())}")
    if batch < 1:
        raise PonderError(f"--batch must be >= 1, got {batch}")
    device = next(model.parameters()).device
    return model, batch_of(task.test.slice(0, batch)).to(device), cfg, what


def diagnose_gradients(source: str, *, steps: int | None = None, ref_steps: int | None = None, batch: int = 32,
                       repeats: int = 1, max_iter: int = 50, ref_max_iter: int = 200,
                       rtrl_max_params: int = 20000, power_iters: int = 200, overrides: list[str] | None = None,
                       progress: bool = True) -> dict:
    """`ponder diagnose gradients`: the model of a preset or run, one held-out batch, every estimator."""
    model, b, cfg, what = load_model_and_batch(source, batch, overrides)
    if cfg.kind("model") in LM_KINDS:  # a causal stack over tokens: no recursion state to iterate
        raise PonderError(f"{what} is a language model (model.kind={cfg.kind('model')}); diagnose gradients applies to "
                          f"the recursive reasoner and the recurrent cell (model.kind=recursive or cell)")
    set_threads(cfg.train.threads)
    T = steps if steps is not None else cfg.model.h_cycles
    if T < 1:
        raise PonderError(f"--steps must be >= 1, got {T}")
    ref = ref_steps if ref_steps is not None else max(16, 4 * T)
    if ref < 1 or max_iter < 1 or ref_max_iter < 1 or repeats < 1 or power_iters < 2:
        raise PonderError("--ref-steps, --max-iter, --ref-max-iter and --repeats must be >= 1, --power-iters >= 2")
    model.eval()
    prob = recursion_problem(model, model.init_state(len(b)), model.prepare(b),
                             lambda logits: task_loss(logits, b.labels, cfg.train.loss))
    named = [(n, p) for n, p in model.named_parameters() if any(p is q for q in model.recursion_parameters())]
    diag = diagnose_problem(prob.step_fn, prob.z0, prob.leaf, prob.loss_fn, prob.params,
                            [n for n, _ in named], steps=T, ref_steps=ref, repeats=repeats, progress=progress,
                            estimators=default_estimators(T, max_iter=max_iter, rtrl_max_params=rtrl_max_params), ref_max_iter=ref_max_iter,
                            power_iters=power_iters)
    return {"source": what, "style": getattr(cfg.model, "style", cfg.kind("model")), "cycle": model.cycle_description(),
            **diag.as_dict()}


def format_table(result: dict) -> str:
    """The terminal table of `diagnose_gradients`."""
    head = (f"{result.get('source', '')}: T={result['steps']} cycles, batch {result['batch']}; references: BPTT over "
            f"{result['ref_steps']} cycles and the tight implicit solve")
    cols = f"{'estimator':<34} {'cos(BPTT)':>9} {'|g|/|ref|':>9} {'sign':>5} {'cos(impl)':>9} {'|g|/|impl|':>10} " \
           f"{'time':>8} {'peak MB':>8}"
    lines = [head, cols, "-" * len(cols)]
    for r in result["rows"]:
        if "skipped" in r:
            lines.append(f"{r['estimator'][:34]:<34} not applicable: {r['skipped'][:90]}")
            continue
        a, i = r["bptt_long"], r["implicit_tight"]
        lines.append(f"{r['estimator'][:34]:<34} {a['cosine']:>9.3f} {a['norm_ratio']:>9.3f} {a['sign_agreement']:>5.2f} "
                     f"{i['cosine']:>9.3f} {i['norm_ratio']:>10.3f} {r['seconds'] * 1e3:>6.0f}ms "
                     f"{r['peak_bytes'] / 2**20:>8.1f}")
    s = result["state"]
    lines.append(f"state: residual |f(z)-z|/|f(z)| {s['residual_rel_z_T']:.2e} at z_T, {s['residual_rel_z_star']:.2e} at "
                 f"z*; spectral radius (growth rate, mean/max over samples) {s['rho_z_T']:.3f}/{s['rho_max_z_T']:.3f} "
                 f"at z_T, {s['rho_z_star']:.3f}/{s['rho_max_z_star']:.3f} at z*")
    for tag, where in (("z_T", "z_T"), ("z_star", "z*")):
        if f"rho_iters_{tag}" not in s:
            continue
        done, b = s[f"rho_converged_{tag}"], result["batch"]
        lines.append(f"spectral radius at {where}: converged for {done}/{b} samples after {s[f'rho_iters_{tag}']} power "
                     f"iterations (largest relative change across windows {s[f'rho_rel_change_{tag}']:.1%})"
                     + ("" if done == b else "; NOT converged for the rest: treat their values as rough"))
    lines.append(f"peak memory: {MEMORY_METHOD}")
    return "\n".join(lines)


def write_json(result: dict, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(path), json.dumps(result, indent=1), what="the diagnosis")
