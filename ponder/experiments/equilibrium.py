"""The decisive experiment: does the equilibrium gradient drive a fixed-point model toward rho = 1?

REFERENCE section 3: BPTT through the deployed T steps differentiates L(z_T), the exact implicit
(equilibrium) gradient differentiates L(z*). Only the former pays for slow convergence, so only
it "defends" contraction. Here one small fixed-point model

    z <- tanh(W z + U x + b),   prediction V z + c,   z_0 = 0,   z, b in R^d, x in R^{d_in}

is trained from the SAME starting weights with
    (a) "bptt": BPTT through the deployed T steps;
    (b) "implicit": the exact equilibrium gradient (tight forward solve, tight GMRES adjoint);
    (c) "implicit+homeostat": (b) plus the contraction homeostat on the deployed trajectory,
on a synthetic regression task generated locally: targets are the standardised readout of the
equilibrium of a random teacher of the same form whose recurrent matrix is a scaled orthogonal
matrix (scale `teacher_scale`, close to 1: the teacher's equilibrium takes many steps to reach).
Every `record_every` steps, on the held-out split: the loss at the deployed T, the loss at the
solved equilibrium, the finite-T residual |f(z_T) - z_T| (absolute and relative to |f(z_T)|) and
the spectral radius of df/dz at z_T by the growth-rate power iteration (ponder.dynamics).
"""
from __future__ import annotations

import copy
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm import tqdm

from ponder.core.errors import PonderError
from ponder.core.files import atomic_write_text, save_figure
from ponder.dynamics import contraction_homeostat, fixed_point_residual, spectral_radius
from ponder.estimators import BPTT, Implicit, solve_fixed_point

METHODS = ("bptt", "implicit", "implicit+homeostat")


@dataclass(kw_only=True)
class DecisiveConfig:
    """Settings of the decisive experiment (defaults: about a minute per seed on one core).

    Attributes:
        d, d_in, d_out: state, input and target sizes.
        deployed_steps: T, steps run at deployment (and differentiated by BPTT).
        teacher_scale: the teacher's recurrent matrix is this times a random orthogonal matrix.
        teacher_input_scale: std of the teacher's input weights.
        init_scale: the student's W starts with entries N(0, init_scale^2 / d) (rho(W) ~ init_scale).
        n_train, n_val: synthetic samples (inputs N(0, I)).
        batch_size, train_steps, lr: Adam on minibatches.
        record_every: K, steps between held-out measurements.
        solver, solve_tol, solve_max_iter: forward equilibrium solve ("fixed_point" or "anderson";
            relative residual; cap).
        adjoint_tol, adjoint_max_iter: GMRES adjoint solve.
        homeostat_weight, homeostat_rho: penalty weight * relu(mean log growth - log(homeostat_rho)).
        rho_iters: power iterations of the spectral-radius estimate.
        data_seed: seeds the teacher and the data (the same for every model seed).
    """

    d: int = 32
    d_in: int = 8
    d_out: int = 4
    deployed_steps: int = 8
    teacher_scale: float = 0.99
    teacher_input_scale: float = 0.6
    init_scale: float = 1.0
    n_train: int = 1024
    n_val: int = 256
    batch_size: int = 128
    train_steps: int = 300
    lr: float = 6e-3
    record_every: int = 25
    solver: str = "fixed_point"
    solve_tol: float = 1e-6
    solve_max_iter: int = 300
    adjoint_tol: float = 1e-8
    adjoint_max_iter: int = 100
    homeostat_weight: float = 1.0
    homeostat_rho: float = 0.8
    rho_iters: int = 60
    data_seed: int = 123

    def validate(self) -> None:
        for name in ("d", "d_in", "d_out", "deployed_steps", "n_train", "n_val", "batch_size", "train_steps",
                     "record_every", "solve_max_iter", "adjoint_max_iter", "rho_iters"):
            if getattr(self, name) < 1:
                raise PonderError(f"decisive {name} must be >= 1, got {getattr(self, name)}")
        for name in ("teacher_scale", "init_scale", "lr", "solve_tol", "adjoint_tol", "homeostat_rho"):
            if not getattr(self, name) > 0:
                raise PonderError(f"decisive {name} must be > 0, got {getattr(self, name)}")


class FixedPointNet(nn.Module):
    """z <- tanh(W z + U x + b), readout V z + c. `step(z (b, d), x (b, d_in)) -> (b, d)`.

    The experiment runs in float64 so that the "tight" solves (relative residuals down to 1e-8)
    are reachable; the generator draws in float32 and the weights are converted.
    """

    def __init__(self, d: int, d_in: int, d_out: int, *, init_scale: float, generator: torch.Generator):
        super().__init__()
        self.W = nn.Parameter(torch.randn(d, d, generator=generator) * init_scale / math.sqrt(d))
        self.U = nn.Parameter(torch.randn(d, d_in, generator=generator) / math.sqrt(d_in))
        self.b = nn.Parameter(torch.zeros(d))
        self.V = nn.Parameter(torch.randn(d_out, d, generator=generator) / math.sqrt(d))
        self.c = nn.Parameter(torch.zeros(d_out))
        self.double()

    def step(self, z: Tensor, x: Tensor) -> Tensor:
        return torch.tanh(z @ self.W.T + x @ self.U.T + self.b)

    def readout(self, z: Tensor) -> Tensor:
        return z @ self.V.T + self.c

    def rollout(self, x: Tensor, steps: int) -> list[Tensor]:
        """States z_0 = 0, z_1, ..., z_steps (each (b, d))."""
        zs = [x.new_zeros(x.shape[0], self.W.shape[0])]
        for _ in range(steps):
            zs.append(self.step(zs[-1], x))
        return zs


def make_task(cfg: DecisiveConfig) -> dict[str, Tensor]:
    """Teacher equilibrium targets: x_train (n, d_in), y_train (n, d_out), x_val, y_val (standardised)."""
    g = torch.Generator().manual_seed(cfg.data_seed)
    q, r = torch.linalg.qr(torch.randn(cfg.d, cfg.d, generator=g))
    W = cfg.teacher_scale * q * torch.sign(torch.diagonal(r))  # scaled orthogonal: |W|_2 = teacher_scale
    U = torch.randn(cfg.d, cfg.d_in, generator=g) * cfg.teacher_input_scale
    b = torch.randn(cfg.d, generator=g) * 0.1
    V = torch.randn(cfg.d_out, cfg.d, generator=g) / math.sqrt(cfg.d)
    x = torch.randn(cfg.n_train + cfg.n_val, cfg.d_in, generator=g)
    W, U, b, V, x = W.double(), U.double(), b.double(), V.double(), x.double()
    res = solve_fixed_point(lambda z: torch.tanh(z @ W.T + x @ U.T + b), x.new_zeros(len(x), cfg.d),
                            max_iter=5000, tol=1e-9, method="fixed_point")  # a contraction: converges
    y = res.z @ V.T
    y = (y - y.mean(0)) / y.std(0)
    n = cfg.n_train
    x, y = x.double(), y.double()
    return {"x_train": x[:n], "y_train": y[:n], "x_val": x[n:], "y_val": y[n:],
            "teacher_residual_max": float(res.rel_residual.max())}


def measure(model: FixedPointNet, x: Tensor, y: Tensor, cfg: DecisiveConfig, seed: int) -> dict[str, float]:
    """Held-out figures at the deployed T and at the solved equilibrium."""
    with torch.no_grad():
        zT = model.rollout(x, cfg.deployed_steps)[-1]
        loss_T = torch.mean((model.readout(zT) - y) ** 2).item()
        eq = solve_fixed_point(lambda z: model.step(z, x), zT, max_iter=cfg.solve_max_iter, tol=cfg.solve_tol,
                               method=cfg.solver)
        loss_eq = torch.mean((model.readout(eq.z) - y) ** 2).item()
    res = fixed_point_residual(model.step, zT, x)
    rho = spectral_radius(model.step, zT, x, iters=cfg.rho_iters, generator=torch.Generator().manual_seed(seed))
    return {"val_loss_T": loss_T, "val_loss_eq": loss_eq, "residual_T": res.abs.mean().item(),
            "rel_residual_T": res.rel.mean().item(), "rho_T": rho.rho.mean().item(),
            "rho_T_max": rho.rho.max().item(), "eq_solve_rel_residual_max": eq.rel_residual.max().item()}


def _estimator(method: str, cfg: DecisiveConfig):
    if method == "bptt":
        return BPTT()
    return Implicit(solver=cfg.solver, tol=cfg.solve_tol, max_iter=cfg.solve_max_iter, adjoint="gmres",
                    adjoint_tol=cfg.adjoint_tol, adjoint_max_iter=cfg.adjoint_max_iter)


def train_one(method: str, init: FixedPointNet, data: dict[str, Tensor], cfg: DecisiveConfig, seed: int,
              progress: tqdm | None = None) -> list[dict[str, float]]:
    """Train a copy of `init` with `method`; the held-out record every `record_every` steps."""
    if method not in METHODS:
        raise PonderError(f"decisive method {method!r} unknown; valid: {', '.join(METHODS)}")
    model = copy.deepcopy(init)
    params = list(model.parameters())
    opt = torch.optim.Adam(params, lr=cfg.lr)
    est = _estimator(method, cfg)
    gen = torch.Generator().manual_seed(seed + 1)  # the same minibatch order for every method
    history = []
    for step in range(cfg.train_steps + 1):
        if step % cfg.record_every == 0 or step == cfg.train_steps:
            history.append({"step": step, **measure(model, data["x_val"], data["y_val"], cfg, seed)})
        if step == cfg.train_steps:
            break
        idx = torch.randint(0, len(data["x_train"]), (cfg.batch_size,), generator=gen)
        x, y = data["x_train"][idx], data["y_train"][idx]
        roll = est.estimate(model.step, x.new_zeros(len(x), cfg.d), x, lambda z: torch.mean((model.readout(z) - y) ** 2),
                            steps=cfg.deployed_steps, params=params)
        grads = list(roll.grads)
        if method == "implicit+homeostat":
            with torch.no_grad():
                states = model.rollout(x, cfg.deployed_steps)
            pen = contraction_homeostat(model.step, states, x, target=math.log(cfg.homeostat_rho),
                                        weight=cfg.homeostat_weight, generator=gen)
            extra = torch.autograd.grad(pen, params, allow_unused=True)
            grads = [g if e is None else g + e for g, e in zip(grads, extra)]
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()
        if progress is not None:
            progress.update(1)
    return history


def run_decisive(cfg: DecisiveConfig, seeds: list[int], *, progress: bool = True) -> dict:
    """Every method from the same starting weights, for each seed. Returns a JSON-able result."""
    cfg.validate()
    data = make_task(cfg)
    runs = []
    bar = tqdm(total=len(seeds) * len(METHODS) * cfg.train_steps, desc="decisive", unit="step",
               disable=not progress, dynamic_ncols=True)
    for seed in seeds:
        init = FixedPointNet(cfg.d, cfg.d_in, cfg.d_out, init_scale=cfg.init_scale,
                             generator=torch.Generator().manual_seed(seed))
        for method in METHODS:
            bar.set_postfix(seed=seed, method=method)
            runs.append({"seed": seed, "method": method, "history": train_one(method, init, data, cfg, seed, bar)})
    bar.close()
    return {"config": asdict(cfg), "seeds": list(seeds), "teacher_residual_max": data["teacher_residual_max"],
            "runs": runs, "summary": summarize(runs)}


def summarize(runs: list[dict]) -> dict:
    """Per method: mean over seeds of the first and last records; per seed: which method ends with
    the largest rho; and how often each equilibrium method ends with a larger rho than BPTT."""
    out: dict = {"methods": {}, "rho_above_bptt": {}}
    by_seed: dict[int, dict[str, dict]] = {}
    for r in runs:
        by_seed.setdefault(r["seed"], {})[r["method"]] = r["history"]
    for method in METHODS:
        hs = [h[method] for h in by_seed.values() if method in h]
        if not hs:
            continue
        keys = [k for k in hs[0][-1] if k != "step"]
        out["methods"][method] = {
            "first": {k: sum(h[0][k] for h in hs) / len(hs) for k in keys},
            "last": {k: sum(h[-1][k] for h in hs) / len(hs) for k in keys},
            "max_rho_T": sum(max(rec["rho_T"] for rec in h) for h in hs) / len(hs),
            "max_rho_T_per_seed": [max(rec["rho_T"] for rec in h) for h in hs],
            "last_loss_T_per_seed": [h[-1]["val_loss_T"] for h in hs],
        }
    for method in METHODS[1:]:
        pairs = [(h[method][-1]["rho_T"], h["bptt"][-1]["rho_T"]) for h in by_seed.values() if method in h and "bptt" in h]
        out["rho_above_bptt"][method] = {"seeds": len(pairs), "count": sum(a > b for a, b in pairs)}
    return out


def verdict(summary: dict) -> str:
    """One paragraph, from the measured numbers: which method ends closest to rho = 1."""
    methods = summary["methods"]
    last = {m: v["last"]["rho_T"] for m, v in methods.items()}
    first = {m: v["first"]["rho_T"] for m, v in methods.items()}
    order = sorted(last, key=lambda m: -last[m])
    top, low = order[0], order[-1]
    parts = ["Mean spectral radius at z_T, start -> end of training: "
             + "; ".join(f"{m} {first[m]:.3f} -> {last[m]:.3f}" for m in order) + "."]
    if last[top] - last[low] < 0.02:
        parts.append("The methods end within 0.02 of each other: no method drifts toward rho = 1 more than the others here.")
    else:
        parts.append(f"{top} ends closest to rho = 1 (1 - rho = {1 - last[top]:.3f}), {low} furthest "
                     f"(1 - rho = {1 - last[low]:.3f}).")
    for m, c in summary["rho_above_bptt"].items():
        parts.append(f"{m} ends with a larger rho than BPTT in {c['count']} of {c['seeds']} seeds.")
    peaks = {m: v["max_rho_T_per_seed"] for m, v in methods.items()}
    parts.append("Largest rho reached during training, per seed: " + "; ".join(
        f"{m} {', '.join(f'{r:.3f}' for r in p)}" for m, p in peaks.items()) + ".")
    near = {m: sum(r >= 0.99 for r in p) for m, p in peaks.items()}
    if any(near.values()):
        parts.append("Runs that reached rho >= 0.99: " + ", ".join(f"{m} {k} of {len(peaks[m])}"
                                                                  for m, k in near.items()) + ".")
    best = min(methods, key=lambda m: methods[m]["last"]["val_loss_T"])
    parts.append(f"Lowest held-out loss at the deployed T: {best} ({methods[best]['last']['val_loss_T']:.4f}).")
    return " ".join(parts)


def plot(result: dict, path) -> None:
    """Validation loss at T, finite-T residual and rho at z_T against training step (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("val_loss_T", "held-out loss at deployed T", True), ("rel_residual_T", "|f(z_T) - z_T| / |f(z_T)|", True),
              ("rho_T", "spectral radius at z_T (growth rate)", False))
    colors = dict(zip(METHODS, ("tab:blue", "tab:red", "tab:green")))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, (key, title, log) in zip(axes, panels):
        for i, r in enumerate(result["runs"]):
            steps = [h["step"] for h in r["history"]]
            ax.plot(steps, [h[key] for h in r["history"]], color=colors[r["method"]], alpha=0.8,
                    label=r["method"] if r["seed"] == result["seeds"][0] else None)
        if key == "rho_T":
            ax.axhline(1.0, color="black", lw=0.8, ls="--")
        ax.set_yscale("log" if log else "linear")
        ax.set_title(title)
        ax.set_xlabel("training step")
    axes[0].legend()
    cfg = result["config"]
    fig.suptitle(f"fixed-point model d={cfg['d']}, deployed T={cfg['deployed_steps']}, "
                 f"{len(result['seeds'])} seeds (one line each)")
    fig.tight_layout()
    save_figure(fig, path, "the decisive experiment's plot", dpi=110)
    plt.close(fig)


def report_markdown(result: dict, png_name: str = "decisive.png") -> str:
    cfg, summary = result["config"], result["summary"]
    rows = ["| method | held-out loss at T | loss at equilibrium | rel. residual at z_T | rho at z_T (mean / max over samples) | max rho during training |",
            "|---|---|---|---|---|---|"]
    for m, v in summary["methods"].items():
        last = v["last"]
        rows.append(f"| {m} | {last['val_loss_T']:.4f} | {last['val_loss_eq']:.4f} | {last['rel_residual_T']:.2e} | "
                    f"{last['rho_T']:.3f} / {last['rho_T_max']:.3f} | {v['max_rho_T']:.3f} |")
    return "\n".join([
        f"Fixed-point model z <- tanh(Wz + Ux + b), d={cfg['d']}, deployed T={cfg['deployed_steps']}, student "
        f"init scale {cfg['init_scale']}; teacher: scaled-orthogonal recurrent matrix (scale {cfg['teacher_scale']}), "
        f"{cfg['n_train']} training / {cfg['n_val']} held-out samples; {cfg['train_steps']} Adam steps "
        f"(lr {cfg['lr']}, batch {cfg['batch_size']}), measured every {cfg['record_every']} steps; seeds "
        f"{', '.join(map(str, result['seeds']))}. Equilibrium gradient: forward solve ({cfg['solver']}) to relative residual "
        f"{cfg['solve_tol']:g} (cap {cfg['solve_max_iter']}), GMRES adjoint to {cfg['adjoint_tol']:g}. Homeostat: "
        f"weight {cfg['homeostat_weight']} * relu(mean log growth along the deployed trajectory - log {cfg['homeostat_rho']}).",
        "", "End of training, mean over seeds:", "", *rows, "", verdict(summary), "",
        f"![decisive experiment]({png_name})"])


def write_report(result: dict, out_dir) -> dict:
    """report.md, report.json and decisive.png in out_dir; returns their paths."""

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot(result, out / "decisive.png")
    atomic_write_text(out / "report.md", "# Decisive experiment: equilibrium gradient vs BPTT\n\n"
                      + report_markdown(result) + "\n", what="the decisive experiment's report")
    atomic_write_text(out / "report.json", json.dumps(result, indent=1), what="the decisive experiment's report")
    return {"md": out / "report.md", "json": out / "report.json", "png": out / "decisive.png"}
