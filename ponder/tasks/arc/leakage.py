"""Leakage between ARC splits, matched by content (never by id alone).

Two kinds of overlap are measured:

- **across data sets**: which evaluation tasks of one set appear in another split (e.g. ARC-1's
  evaluation tasks in ARC-2's training set), matched five ways: the same task id; identical content
  (every grid); a test pair (input and output) that occurs as any pair of the other split; and both
  of the last two *up to augmentation* (a dihedral transform and a permutation of colours 1-9);
- **within a run**: what a run of the `arc` task trains on against what it is scored on -- the
  scored test pairs (and test inputs) that occur among its training pairs, exactly or up to
  augmentation, and whether it trains on the scored tasks' demonstrations (the embedding mode does:
  "trained on evaluation demonstrations").

Canonical form up to augmentation: for each of the 8 dihedral transforms, relabel colours 1-9 in
order of first appearance (row-major, grid after grid); the smallest encoding over the 8 is the key.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from ponder.tasks.arc.augment import N_DIHEDRAL, dihedral, grid_hash
from ponder.tasks.arc.data import DATA_VERSION, SPLITS, ArcTask, load_split, small_tasks

__all__ = ["canonical_key", "pair_key", "cross_split_overlap", "run_overlap", "leakage_report", "format_leakage"]

Pair = tuple[np.ndarray, np.ndarray]


def _relabel(grids: Sequence[np.ndarray]) -> bytes:
    """Grids (shapes included) with colours 1-9 renamed in order of first appearance, 0 kept."""
    flat = np.concatenate([g.ravel() for g in grids])
    nz = flat[flat > 0]
    _, first = np.unique(nz, return_index=True)
    order = nz[np.sort(first)]
    table = np.zeros(10, dtype=np.uint8)
    table[order] = np.arange(1, order.size + 1, dtype=np.uint8)
    shapes = np.array([s for g in grids for s in g.shape], dtype=np.int64).tobytes()
    return shapes + table[flat].tobytes()


def canonical_key(grids: Sequence[np.ndarray]) -> bytes:
    """A key equal for two grid sequences related by one dihedral transform and one colour permutation
    (1-9, 0 fixed) applied to every grid."""
    best = min(_relabel([dihedral(g, k) for g in grids]) for k in range(N_DIHEDRAL))
    return hashlib.blake2b(best, digest_size=16).digest()


_MEMO: dict[tuple[int, str], tuple[object, bytes]] = {}


def _memo(obj: object, kind: str, make) -> bytes:
    """Keys of a loaded task or pair, computed once (the object is kept alive with its key)."""
    key = (id(obj), kind)
    hit = _MEMO.get(key)
    if hit is None or hit[0] is not obj:
        hit = _MEMO[key] = (obj, make())
    return hit[1]


def pair_key(pair: Pair) -> bytes:
    return grid_hash(pair[0]) + grid_hash(pair[1])


def pair_canonical(pair: Pair) -> bytes:
    return _memo(pair, "pair", lambda: canonical_key(pair))


def _task_content(task: ArcTask) -> bytes:
    """Every grid; the demonstrations as a set (ARC-2 reorders some ARC-1 demonstrations)."""
    return b"".join(sorted(pair_key(p) for p in task.train)) + b"|" + b"".join(pair_key(p) for p in task.test)


def _task_canonical(task: ArcTask) -> bytes:
    """Up to augmentation, demonstrations as a set: the test grids, then the demonstrations sorted by
    their own canonical keys (which augmentation leaves alone; ties, demonstrations equal up to
    augmentation, are ordered by content, so an identical task always matches)."""
    def make() -> bytes:
        demos = sorted(task.train, key=lambda p: (pair_canonical(p), pair_key(p)))
        return canonical_key([g for p in (*task.test, *demos) for g in p])
    return _memo(task, "task", make)


@dataclass
class _Index:
    ids: set
    content: dict
    canon: dict
    pairs: dict
    pairs_canon: dict

    @classmethod
    def of(cls, tasks: Iterable[ArcTask], up_to_augmentation: bool = True) -> "_Index":
        idx = cls(set(), {}, {}, {}, {})
        for t in tasks:
            idx.ids.add(t.id)
            idx.content.setdefault(_task_content(t), t.id)
            if up_to_augmentation:
                idx.canon.setdefault(_task_canonical(t), t.id)
            for p in t.pairs:
                idx.pairs.setdefault(pair_key(p), t.id)
                if up_to_augmentation:
                    idx.pairs_canon.setdefault(pair_canonical(p), t.id)
        return idx


def cross_split_overlap(scored: Sequence[ArcTask], other: Sequence[ArcTask], up_to_augmentation: bool = True) -> dict:
    """How many tasks of `scored` occur in `other`, matched five ways (ids of the matches listed;
    without `up_to_augmentation`, only the three exact ways)."""
    idx = _Index.of(other, up_to_augmentation)
    out = {"n": len(scored), "same_id": [t.id for t in scored if t.id in idx.ids],
           "identical": [t.id for t in scored if _task_content(t) in idx.content],
           "test_pair_in_other": [t.id for t in scored if any(pair_key(p) in idx.pairs for p in t.test)]}
    if up_to_augmentation:
        out["identical_up_to_augmentation"] = [t.id for t in scored if _task_canonical(t) in idx.canon]
        out["test_pair_in_other_up_to_augmentation"] = [t.id for t in scored
                                                        if any(pair_canonical(p) in idx.pairs_canon for p in t.test)]
    return out


def run_overlap(train_pairs: Sequence[Pair], scored: Sequence[ArcTask]) -> dict:
    """Scored test pairs / test inputs that occur among the pairs a run trains on (exactly, or up to
    augmentation for pairs). Returns counts and the ids of the tasks concerned."""
    exact = {pair_key(p) for p in train_pairs}
    canon = {pair_canonical(p) for p in train_pairs}
    inputs = {grid_hash(p[0]) for p in train_pairs}
    tests = [(t.id, p) for t in scored for p in t.test]
    hit = sorted({tid for tid, p in tests if pair_key(p) in exact})
    hit_canon = sorted({tid for tid, p in tests if pair_canonical(p) in canon})
    hit_in = sorted({tid for tid, p in tests if grid_hash(p[0]) in inputs})
    return {"scored_tasks": len(scored), "scored_test_inputs": len(tests), "train_pairs": len(train_pairs),
            "test_pair_trained_on": hit, "test_pair_trained_on_up_to_augmentation": hit_canon,
            "test_input_among_training_inputs": hit_in}


def run_data(dataset: str, conditioning: str, max_side: int) -> tuple[list[Pair], list[ArcTask], bool]:
    """(pairs a run of the `arc` task trains on, tasks it is scored on, whether it trains on the
    scored tasks' demonstrations), for data set "arc1"/"arc2", conditioning "embedding" (TRM: every
    pair of the training tasks plus the evaluation tasks' demonstrations) or "demonstrations" (every
    pair of the training tasks only), tasks whose grids fit max_side."""
    train = small_tasks(load_split(f"{dataset}-train"), max_side)
    scored = list(small_tasks(load_split(f"{dataset}-eval"), max_side))
    pairs = [p for t in train for p in t.pairs]
    on_eval_demos = conditioning == "embedding"
    if on_eval_demos:
        pairs += [p for t in scored for p in t.train]
    return pairs, scored, on_eval_demos


def leakage_report(run_settings: Sequence[tuple[str, str, int]] = (
        ("arc1", "embedding", 30), ("arc1", "demonstrations", 30), ("arc1", "embedding", 10),
        ("arc1", "demonstrations", 10), ("arc2", "embedding", 30), ("arc2", "demonstrations", 30))) -> dict:
    """The whole report: every evaluation split against every other split, and the run overlaps of
    `run_settings` (dataset, conditioning, max_side)."""
    cross = []
    for ev in ("arc1-eval", "arc2-eval"):
        for other in SPLITS:
            if other != ev:
                cross.append({"scored": ev, "other": other, **cross_split_overlap(load_split(ev), load_split(other))})
    runs = []
    for dataset, cond, side in run_settings:
        pairs, scored, on_eval = run_data(dataset, cond, side)
        runs.append({"dataset": dataset, "conditioning": cond, "max_side": side,
                     "trained_on_evaluation_demonstrations": on_eval, **run_overlap(pairs, scored)})
    return {"data_version": DATA_VERSION, "cross_split": cross, "runs": runs}


def _ids(ids: list[str], k: int = 6) -> str:
    return ", ".join(ids[:k]) + (f", ... ({len(ids) - k} more)" if len(ids) > k else "") if ids else "none"


def format_leakage(r: dict) -> str:
    lines = [f"# ARC leakage report ({r['data_version']})", "",
             "Evaluation tasks of one split found in another, matched by content. Columns: same id; identical "
             "task (every grid); some test pair (input and output) occurs as a pair of the other split; the "
             "same two up to augmentation (dihedral x permutation of colours 1-9).", "",
             "| evaluation split | other split | tasks | same id | identical | test pair in other | "
             "identical up to aug. | test pair in other up to aug. |", "|---|---|---|---|---|---|---|---|"]
    for c in r["cross_split"]:
        lines.append(f"| {c['scored']} | {c['other']} | {c['n']} | {len(c['same_id'])} | {len(c['identical'])} | "
                     f"{len(c['test_pair_in_other'])} | {len(c['identical_up_to_augmentation'])} | "
                     f"{len(c['test_pair_in_other_up_to_augmentation'])} |")
    lines += ["", "What a run of the `arc` task trains on against what it is scored on (evaluation tasks whose "
              "grids all fit max side; a scored test pair or test input found among the training pairs).", "",
              "| data set | conditioning | max side | scored tasks | training pairs | trains on evaluation "
              "demonstrations | test pair trained on | ... up to aug. | test input among training inputs |",
              "|---|---|---|---|---|---|---|---|---|"]
    for u in r["runs"]:
        lines.append(f"| {u['dataset']} | {u['conditioning']} | {u['max_side']} | {u['scored_tasks']} | "
                     f"{u['train_pairs']} | {'yes' if u['trained_on_evaluation_demonstrations'] else 'no'} | "
                     f"{len(u['test_pair_trained_on'])} | {len(u['test_pair_trained_on_up_to_augmentation'])} | "
                     f"{len(u['test_input_among_training_inputs'])} |")
    lines += ["", "Task ids:", ""]
    for c in r["cross_split"]:
        if c["identical_up_to_augmentation"] or c["test_pair_in_other_up_to_augmentation"]:
            lines.append(f"- {c['scored']} in {c['other']}: identical: {_ids(c['identical'])}; test pair up to "
                         f"augmentation: {_ids(c['test_pair_in_other_up_to_augmentation'])}")
    for u in r["runs"]:
        for key in ("test_pair_trained_on_up_to_augmentation", "test_input_among_training_inputs"):
            if u[key]:
                lines.append(f"- run {u['dataset']}/{u['conditioning']}/side {u['max_side']}: "
                             f"{key.replace('_', ' ')}: {_ids(u[key])}")
    return "\n".join(lines) + "\n"


def dumps(r: dict) -> str:
    return json.dumps(r, indent=1) + "\n"
