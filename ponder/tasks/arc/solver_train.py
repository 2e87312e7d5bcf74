"""Mode (c), one task: a fresh `RecursiveCompressor` trained on one task's demonstrations alone, for a
fixed wall-clock budget, then asked for two attempts per test input.

The solver sees a `Puzzle` -- the task's id, its demonstration pairs and its test *inputs*. A
`Puzzle` has no place for test outputs (`puzzle_of` drops them), so nothing the solver computes
can depend on them; scoring and learning curves against the test outputs happen afterwards, in
`ponder.tasks.arc.solve`, from what the solver recorded.

Objective (per iteration, in nats):

    beta * KL(latents) + E_{t~q}[reconstruction at recursion step t] + beta_halt * KL(q || prior)

q is the halting distribution the model emits over its recursion steps and the prior a truncated
geometric one. Reconstruction is the cross-entropy of the known grids under step t's colour
logits: in conditional mode the demonstration outputs (the inputs are read), in generative mode
every demonstration input and output and every test input.

Output shapes come from simple rules read off the demonstrations (same as the input, one constant
shape, or a fixed integer ratio per side), else the most common demonstration output shape.

Answers: every iteration after a warm-up, each test output is decoded (the q-weighted mixture of
the steps' colour probabilities, argmax per cell) and its score accumulated (log-sum-exp of
-kappa x mean cell uncertainty: a confidence-weighted vote over training iterations); the two best
are the attempts.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ponder.tasks.arc.data import ArcTask
from ponder.tasks.arc.solver_model import KEY_SETS, Geometry, RecursiveCompressor

__all__ = ["Puzzle", "puzzle_of", "SolverSettings", "EncodedTask", "encode_task", "predict_shapes", "TaskResult",
           "solve_puzzle", "cpu_setup", "warm_up", "build", "objective", "make_optimizer"]

Pair = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class Puzzle:
    """What the solver may see of an ARC task: demonstration pairs and test inputs, no test outputs."""

    id: str
    train: tuple[Pair, ...]
    test_inputs: tuple[np.ndarray, ...]


def puzzle_of(task: ArcTask) -> Puzzle:
    """The task without its test outputs."""
    return Puzzle(task.id, tuple(task.train), tuple(i for i, _ in task.test))


@dataclass
class SolverSettings:
    """Mode (c)'s settings; the defaults are the configuration measured in BENCHMARKS.md."""

    seconds: float = 120.0  # wall-clock budget of one task (encoding, training and decoding)
    max_iters: int = 20000
    n_steps: int = 4  # recursion steps (applications of the shared block)
    tied: bool = True  # one block for every step (False: n_steps distinct blocks)
    lr: float = 0.01  # Adam, betas (0.5, 0.9)
    beta: float = 0.1  # weight of the latents' KL (reconstruction has weight 1)
    beta_halt: float = 1.0
    halt_prior: float = 0.5  # geometric prior on the halting step
    adaptive: bool = True  # False: read out the last step only (no halting)
    snr0: float = 5.0  # initial log signal-to-noise ratio of the latents
    mu0: float = 1.0
    keys: str = "mid"  # solver_model.KEY_SETS
    diagonals: bool = True  # 8 directions (False: the 4 axis-parallel ones)
    conditional: bool = True  # read the input grids, generate the outputs (False: generate every grid)
    warmup: int = 100  # iterations before answers are collected
    kappa: float = 10.0
    seed: int = 0
    log_every: int = 50  # learning-curve points (with the answers of that moment)

    def to_dict(self) -> dict:
        return asdict(self)


def cpu_setup(threads: int = 1, flush_denormal: bool = True) -> None:
    """One torch thread per solver process, and subnormal floats flushed to zero. The flush is a guard
    (subnormals cost small recurrent models elsewhere in this package up to 5x); this model keeps its
    state layer-normalized, and measured with and without it, interleaved, it ran at the same speed
    (BENCHMARKS.md, mode c)."""
    torch.set_num_threads(threads)
    torch.set_flush_denormal(flush_denormal)


def warm_up() -> None:
    """Solve a 2x2 toy puzzle for two iterations, so that a process's one-time costs (lazy imports and
    kernel set-up on first use, a few seconds) are not charged to the first real task's budget."""
    a = np.array([[0, 1], [2, 0]], dtype=np.uint8)
    solve_puzzle(Puzzle("warm-up", ((a, a.T.copy()), (a.T.copy(), a)), (a,)),
                 SolverSettings(seconds=60.0, max_iters=2, warmup=0))


@dataclass
class EncodedTask:
    """A puzzle on one shared canvas of every example (demonstrations first, then the tests)."""

    colours: list[int]  # palette index -> ARC colour (index 0 is colour 0)
    n_train: int
    n_test: int
    height: int
    width: int
    targets: torch.Tensor  # (E, X, Y, 2) palette indices of inputs (0) and outputs (1); 0 where unknown
    known: torch.Tensor  # (E, X, Y, 2) 1 where a cell is known (in bounds and not a test output)
    out_shapes: list[tuple[int, int]]  # every example's output shape (tests: predicted)
    mask: torch.Tensor  # (E, X, Y) union of input and output bounds


def predict_shapes(train, test_inputs) -> list[tuple[int, int]] | None:
    """Test output shapes by the first rule that fits every demonstration, per side: equal to the
    input, constant, or input x a fixed ratio. None when no rule fits."""
    shapes = []
    for side in (0, 1):
        ins = [i.shape[side] for i, _ in train]
        outs = [o.shape[side] for _, o in train]
        if all(a == b for a, b in zip(ins, outs)):
            shapes.append([t.shape[side] for t in test_inputs])
        elif len(set(outs)) == 1:
            shapes.append([outs[0]] * len(test_inputs))
        else:
            ratios = {(o / i) for i, o in zip(ins, outs)}
            if len(ratios) != 1:
                return None
            r = ratios.pop()
            pred = [t.shape[side] * r for t in test_inputs]
            if any(abs(p - round(p)) > 1e-9 or p < 1 for p in pred):
                return None
            shapes.append([int(round(p)) for p in pred])
    return list(zip(shapes[0], shapes[1]))


def encode_task(puzzle: Puzzle) -> EncodedTask:
    """Palette, canvas and targets of a puzzle."""
    train, test_inputs = list(puzzle.train), list(puzzle.test_inputs)
    shapes = predict_shapes(train, test_inputs)
    if shapes is None:  # fall back: the most common demonstration output shape
        outs = [o.shape for _, o in train]
        shapes = [max(set(outs), key=outs.count)] * len(test_inputs)
    grids = [g for pair in train for g in pair] + test_inputs
    colours = sorted({0} | {int(c) for g in grids for c in np.unique(g)})
    lut = np.zeros(10, dtype=np.int64)
    lut[colours] = np.arange(len(colours))
    out_shapes = [o.shape for _, o in train] + shapes
    h = max([g.shape[0] for g in grids] + [s[0] for s in shapes])
    w = max([g.shape[1] for g in grids] + [s[1] for s in shapes])
    e = len(train) + len(test_inputs)
    targets = torch.zeros(e, h, w, 2, dtype=torch.long)
    known = torch.zeros(e, h, w, 2)
    mask = torch.zeros(e, h, w)
    ins = [i for i, _ in train] + test_inputs
    for j in range(e):
        gi = ins[j]
        targets[j, : gi.shape[0], : gi.shape[1], 0] = torch.from_numpy(lut[gi])
        known[j, : gi.shape[0], : gi.shape[1], 0] = 1
        mask[j, : gi.shape[0], : gi.shape[1]] = 1
        oh, ow = out_shapes[j]
        mask[j, :oh, :ow] = 1
        if j < len(train):
            go = train[j][1]
            targets[j, :oh, :ow, 1] = torch.from_numpy(lut[go])
            known[j, :oh, :ow, 1] = 1
    return EncodedTask(colours, len(train), len(test_inputs), h, w, targets, known, out_shapes, mask)


@dataclass
class TaskResult:
    """What the solver produced for one puzzle (JSON-ready through `to_dict` / `from_dict`)."""

    task: str
    attempts: list[list[np.ndarray]]  # per test input, up to 2 grids (best first)
    votes: list[list[int]]  # per attempt: training iterations that decoded it
    iters: int
    seconds: float
    demo_exact: bool  # the last iteration reconstructs every demonstration output exactly
    demo_exact_first: int | None  # first iteration with every demonstration output exact
    demo_cell_acc: float  # cell accuracy on the demonstration outputs at the last iteration
    expected_steps: float  # mean of the halting distribution at the end
    halt_q: list[float]
    kl: float
    recon: float
    history: list[dict] = field(default_factory=list)  # learning curve, with the top answers of that moment
    step_answers: list[list[np.ndarray]] = field(default_factory=list)  # per test: last answer of each step

    def to_dict(self) -> dict:
        d = asdict(self)
        d["attempts"] = [[g.tolist() for g in tries] for tries in self.attempts]
        d["step_answers"] = [[g.tolist() for g in steps] for steps in self.step_answers]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TaskResult":
        d = dict(d)
        d["attempts"] = [[np.array(g, dtype=np.uint8) for g in tries] for tries in d["attempts"]]
        d["step_answers"] = [[np.array(g, dtype=np.uint8) for g in steps] for steps in d["step_answers"]]
        return cls(**d)


def _halting(halt_logits: torch.Tensor, adaptive: bool) -> torch.Tensor:
    """PonderNet's halting distribution over the steps (the remainder on the last step)."""
    n = halt_logits.shape[0]
    if not adaptive:
        return F.one_hot(torch.tensor(n - 1), n).float()
    lam = torch.sigmoid(halt_logits)
    not_yet = torch.cumprod(torch.cat([lam.new_ones(1), 1 - lam[:-1]]), 0)
    q = lam * not_yet
    return torch.cat([q[:-1], not_yet[-1:] * (1 - lam[-1:]) + q[-1:]])


def _geometric(n: int, p: float) -> torch.Tensor:
    w = torch.tensor([p * (1 - p) ** t for t in range(n)])
    w[-1] = (1 - p) ** (n - 1)
    return w


def _conditioning(enc: EncodedTask) -> tuple[dict, torch.Tensor]:
    """Conditional mode: the given grids as the model reads them, and the cells to reconstruct
    (demonstration outputs only)."""
    planes = F.one_hot(enc.targets[..., 0], len(enc.colours)).permute(3, 0, 1, 2).float()
    in_mask = enc.known[..., 0].clone()
    out_mask = torch.zeros_like(in_mask)
    for j, (oh, ow) in enumerate(enc.out_shapes):
        out_mask[j, :oh, :ow] = 1
    shape = (1, -1, 1, 1, enc.height, enc.width)
    grid = {"planes": (planes[1:] * in_mask).unsqueeze(0).permute(0, 2, 1, 3, 4).unsqueeze(3),
            "background": (planes[0] * in_mask).view(shape), "in_mask": in_mask.view(shape),
            "out_mask": out_mask.view(shape)}
    known = enc.known.clone()
    known[..., 0] = 0  # inputs are given, not generated
    return grid, known


class _Ballot:
    """Answers of one test input accumulated over training iterations."""

    def __init__(self, kappa: float):
        self.kappa, self.score, self.count, self.grid = kappa, {}, {}, {}

    def add(self, cells: np.ndarray, uncertainty: float, palette: np.ndarray) -> None:
        key = cells.tobytes() + bytes(cells.shape)
        self.score[key] = float(np.logaddexp(self.score.get(key, -np.inf), -self.kappa * uncertainty))
        self.count[key] = self.count.get(key, 0) + 1
        self.grid.setdefault(key, palette[cells].astype(np.uint8))

    def top(self, k: int = 2) -> list[bytes]:
        return sorted(self.score, key=self.score.get, reverse=True)[:k]


def objective(model: RecursiveCompressor, grid: dict | None, known: torch.Tensor, targets: torch.Tensor,
              prior: torch.Tensor, s: SolverSettings):
    """One forward pass: (loss, halting distribution q, per step the colour probabilities
    (E, 1 + C, X, Y, 2) detached, KL of the latents, q-weighted reconstruction)."""
    logits, halt_logits, kl = model(grid=grid)
    q = _halting(halt_logits, s.adaptive)
    recon_t, probs_t = [], []
    for lg in logits:  # (2, E, C, X, Y) -> (E, 1 + C, X, Y, 2) with the background logit 0
        lg = lg.permute(1, 2, 3, 4, 0)
        logp = torch.log_softmax(torch.cat([torch.zeros_like(lg[:, :1]), lg], dim=1), dim=1)
        nll = -torch.gather(logp, 1, targets.unsqueeze(1)).squeeze(1)  # (E, X, Y, 2)
        recon_t.append((nll * known).sum())
        probs_t.append(logp.detach().exp())
    recon = (q * torch.stack(recon_t)).sum()
    loss = s.beta * kl + recon
    if s.adaptive:
        loss = loss + s.beta_halt * (q * (torch.log(q + 1e-9) - torch.log(prior))).sum()
    return loss, q, probs_t, kl, recon


def build(puzzle: Puzzle, s: SolverSettings):
    """(encoded task, fresh model, what it reads (conditional mode), cells to reconstruct, halting prior)."""
    torch.manual_seed(s.seed)
    enc = encode_task(puzzle)
    g = Geometry(enc.n_train + enc.n_test, max(len(enc.colours) - 1, 1), enc.height, enc.width, enc.mask,
                 diagonals=s.diagonals)
    model = RecursiveCompressor(g, n_steps=s.n_steps, snr0=s.snr0, mu0=s.mu0, tied=s.tied, keys=KEY_SETS[s.keys],
                                conditional=s.conditional)
    grid, known = _conditioning(enc) if s.conditional else (None, enc.known)
    return enc, model, grid, known, _geometric(s.n_steps, s.halt_prior)


def make_optimizer(model: RecursiveCompressor, s: SolverSettings) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=s.lr, betas=(0.5, 0.9))


def solve_puzzle(puzzle: Puzzle, s: SolverSettings) -> TaskResult:
    """Fit a fresh model to one puzzle within `s.seconds`; return up to two attempts per test input."""
    start = time.perf_counter()
    enc, model, grid, known, prior = build(puzzle, s)
    opt = make_optimizer(model, s)
    palette = np.array(enc.colours)
    ballots = [_Ballot(s.kappa) for _ in range(enc.n_test)]
    nt = enc.n_train
    demo_known = enc.known[:nt, ..., 1]
    steps = torch.arange(1, s.n_steps + 1, dtype=torch.float32)
    history, first_exact, it = [], None, 0

    def decode(pred: torch.Tensor, conf: torch.Tensor) -> None:
        for j, ballot in enumerate(ballots):
            oh, ow = enc.out_shapes[nt + j]
            ballot.add(pred[nt + j, :oh, :ow, 1].numpy(),
                       float((-torch.log(conf[nt + j, :oh, :ow, 1] + 1e-9)).mean()), palette)

    while it < s.max_iters and (it == 0 or time.perf_counter() - start < s.seconds):  # at least one iteration
        loss, q, probs_t, kl, recon = objective(model, grid, known, enc.targets, prior, s)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        it += 1
        with torch.no_grad():
            qd = q.detach()
            mix = sum(w * p for w, p in zip(qd, probs_t))  # (E, 1 + C, X, Y, 2)
            pred, conf = mix.argmax(dim=1), mix.amax(dim=1)
            right = ((pred[:nt, ..., 1] == enc.targets[:nt, ..., 1]).float() * demo_known).sum()
            exact = bool(right == demo_known.sum())
            if exact and first_exact is None:
                first_exact = it
            if it > s.warmup:
                decode(pred, conf)
            if it % s.log_every == 0 or it == 1:
                history.append({"it": it, "t": round(time.perf_counter() - start, 1), "kl": round(float(kl), 1),
                                "recon": round(float(recon), 2), "demo_exact": exact,
                                "demo_acc": round(float(right / demo_known.sum()), 4),
                                "E_steps": round(float((qd * steps).sum()), 2),
                                "top": [[b.grid[k].tolist() for k in b.top()] for b in ballots]})
    if not ballots[0].score:  # the budget ended within the warm-up: the last answer stands
        decode(pred, conf)
    attempts = [[b.grid[k] for k in b.top()] for b in ballots]
    votes = [[b.count[k] for k in b.top()] for b in ballots]
    step_answers = []
    for j in range(enc.n_test):
        oh, ow = enc.out_shapes[nt + j]
        step_answers.append([palette[p[nt + j, :, :oh, :ow, 1].argmax(0).numpy()].astype(np.uint8) for p in probs_t])
    return TaskResult(puzzle.id, attempts, votes, it, round(time.perf_counter() - start, 2), exact, first_exact,
                      float(right / demo_known.sum()), float((qd * steps).sum()), [round(float(x), 3) for x in qd],
                      float(kl.detach()), float(recon.detach()), history, step_answers)
