"""`ponder arc ...` sub-commands: score a Kaggle-format submission, the baselines, the leakage report,
evaluate a trained run, solve tasks with a fresh model per task (mode c).

    ponder arc score SUBMISSION.json --split arc1-eval [--max-side N] [--allow-missing] [--strict] [--out F.json]
    ponder arc baselines [--split arc1-eval|...|all] [--max-side N] [--out F.json]
    ponder arc leakage [--out F.md]   (also writes F.json)
    ponder arc eval RUN_DIR [--split S] [--out DIR] [--ttft-seconds S] [--max-tasks N]
    ponder arc solve --split arc1-eval --small --minutes-per-task M [--jobs J] [--out DIR] [--tasks ID,ID]

Both scoring rules are printed side by side, with the data version. Every bad input is one line
`ponder: error: ...` (exit 2); a malformed task of a submission scores 0 and is listed as invalid.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable

from ponder.core.errors import PonderError
from ponder.core.files import atomic_write_text
from ponder.core.lock import DirectoryLock, command_line
from ponder.core.progress import silenced
from ponder.tasks.arc.baselines import score_baselines
from ponder.tasks.arc.data import DATA_VERSION, MAX_SIDE, SMALL_SIDE, SPLITS, load_split, small_tasks
from ponder.tasks.arc.evaluation import evaluate_arc, score_command, write_arc_eval
from ponder.tasks.arc.leakage import dumps, format_leakage, leakage_report
from ponder.tasks.arc.scoring import RULES, format_score_table, parse_submission, read_submission, score_attempts
from ponder.tasks.arc.solve import run_solve, score_rows, settings_with
from ponder.tasks.arc.solve import score_command as solve_score_command
from ponder.tasks.arc.task import ArcTaskData
from ponder.tasks.arc.ttft import TTFTSettings
from ponder.training.checkpoint import resolve_checkpoint, run_dir_of
from ponder.training.host import resolve_device, set_threads

LEAKAGE_DEFAULT = "arc-leakage.md"


def add_arc_parser(sub: "argparse._SubParsersAction", load_run: Callable) -> None:
    """The `arc` sub-commands. `load_run(path) -> (model, task, cfg, checkpoint dir)` loads a trained
    run (ponder.runs.trained.load_trained); the command line hands it in, so the wing never imports the
    run layer above it."""
    p = sub.add_parser("arc", help="ARC-AGI: score a submission, baselines, leakage report, evaluate a run, "
                                   "solve tasks from scratch (mode c)")
    arc = p.add_subparsers(dest="arc_command", required=True)
    s = arc.add_parser("score", help="score a Kaggle-format submission under both rules")
    s.add_argument("submission", nargs="?", help="SUBMISSION.json: {task_id: [{attempt_1: grid, attempt_2: grid}, ...]}")
    s.add_argument("--split", help=f"one of {', '.join(SPLITS)}")
    s.add_argument("--max-side", default=None, help="score only the tasks whose grids all fit N x N")
    s.add_argument("--allow-missing", action="store_true", help="tasks without predictions score 0 instead of an error")
    s.add_argument("--strict", action="store_true", help="an invalid task is an error instead of scoring 0")
    s.add_argument("--only-submitted", action="store_true",
                   help="score only the tasks the submission names (e.g. the file of `ponder arc eval --max-tasks`)")
    s.add_argument("--out", help="write the full report (per task) as JSON here")
    b = arc.add_parser("baselines", help="all-zeros, copy-input, most common colour, program search, local rule; "
                                          "both rules")
    b.add_argument("--split", default="all", help=f"one of {', '.join(SPLITS)} or all (default)")
    b.add_argument("--max-side", default=None, help="only the tasks whose grids all fit N x N")
    b.add_argument("--out", help="write the figures as JSON here")
    le = arc.add_parser("leakage", help="evaluation tasks found in other splits; what runs train on vs are scored on")
    le.add_argument("--out", default=LEAKAGE_DEFAULT, help=f"Markdown report path (default {LEAKAGE_DEFAULT}); "
                    "the JSON goes next to it")
    e = arc.add_parser("eval", help="score a trained ARC run by ARC's rules: votes over views, both rules, "
                       "adaptive halting vs always M steps, baselines, CSV, gallery, submission")
    e.add_argument("run_dir", nargs="?", help="RUN_DIR of an `arc` run (or one of its checkpoints)")
    e.add_argument("--split", default=None, help=f"one of {', '.join(SPLITS)} (default: the run's evaluation split)")
    e.add_argument("--out", default=None, help="output directory (default RUN_DIR/arc-eval/SPLIT)")
    e.add_argument("--max-tasks", default="0", help="only the first N tasks of the split (0 = all)")
    e.add_argument("--ttft-seconds", default=None,
                   help="demonstrations mode: also fine-tune a copy of the model on each task's demonstrations "
                        "(leave-one-out, augmented) for at most S seconds before predicting it")
    e.add_argument("--ttft-lr", default="1e-4", help="test-time fine-tuning learning rate (AdamW; default 1e-4)")
    e.add_argument("--ttft-batch", default="8", help="test-time fine-tuning batch size (default 8)")
    e.add_argument("--batch-size", default=None, help="inference batch size (default the run's eval.batch_size)")
    e.add_argument("--quiet", action="store_true", help="no progress bars")
    so = arc.add_parser("solve", help="mode (c): a fresh model per task, trained from scratch on its demonstrations "
                        "alone; submission, CSV, gallery, scores beside the baselines; resumable")
    so.add_argument("--split", help=f"one of {', '.join(SPLITS)}")
    so.add_argument("--small", action="store_true",
                    help=f"only the tasks whose grids all fit {SMALL_SIDE}x{SMALL_SIDE}")
    so.add_argument("--max-side", default=None, help="only the tasks whose grids all fit N x N")
    so.add_argument("--tasks", default=None, help="only these task ids (comma-separated) of the selection")
    so.add_argument("--minutes-per-task", default=None, help="wall-clock budget of each task, in minutes")
    so.add_argument("--jobs", default="1", help="tasks solved at once, each in its own process on one thread")
    so.add_argument("--seed", default="0", help="seed of every task's model (default 0)")
    so.add_argument("--out", default=None, help="output directory (default arc-solve-SPLIT); a rerun resumes it")
    so.add_argument("--quiet", action="store_true", help="no progress bar and no line per task")
    p.set_defaults(fn=run_arc, load_run=load_run)


def _split(value: str | None, allow_all: bool = False) -> list[str]:
    valid = SPLITS + (("all",) if allow_all else ())
    if value is None:
        raise PonderError(f"--split is required: one of {', '.join(valid)}")
    if value not in valid:
        raise PonderError(f"unknown ARC split {value!r}; valid: {', '.join(valid)}")
    return list(SPLITS) if value == "all" else [value]


def _max_side(value: str | None) -> int:
    if value is None:
        return MAX_SIDE
    try:
        n = int(value)
    except ValueError:
        raise PonderError(f"--max-side expects an integer 1..{MAX_SIDE}, got {value!r}") from None
    if not 1 <= n <= MAX_SIDE:
        raise PonderError(f"--max-side must be 1..{MAX_SIDE}, got {n}")
    return n


def _write(path: str, text: str) -> Path:
    out = Path(path)
    if out.is_dir():
        raise PonderError(f"--out {out} is a directory; name a file")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, text)
    except OSError as e:
        raise PonderError(f"cannot write {out}: {e.strerror or e}") from None
    return out


def _tasks(split: str, side: int):
    tasks = load_split(split)
    return tasks if side >= MAX_SIDE else small_tasks(tasks, side)


def _scope(split: str, side: int, n: int) -> str:
    return f"{split}, {n} tasks" + ("" if side >= MAX_SIDE else f" whose grids all fit {side}x{side}")


def _cmd_score(args) -> int:
    if not args.submission:
        raise PonderError("ponder arc score needs a SUBMISSION.json")
    split = _split(args.split)[0]
    side = _max_side(args.max_side)
    tasks = _tasks(split, side)
    obj = read_submission(Path(args.submission))
    if args.only_submitted and isinstance(obj, dict):
        tasks = tuple(t for t in tasks if t.id in obj)
        if not tasks:
            raise PonderError(f"{args.submission}: --only-submitted, but it names none of the "
                              f"{_scope(split, side, len(_tasks(split, side)))}")
    attempts = parse_submission(obj, tasks, split=split, allow_missing=args.allow_missing, source=args.submission,
                                known=load_split(split))
    invalid = {t: why for t, why in attempts.items() if isinstance(why, str)}
    if args.strict and invalid:
        task, why = next(iter(invalid.items()))
        raise PonderError(f"{args.submission}: task {task} is invalid: {why} ({len(invalid)} invalid task(s))")
    report = score_attempts(tasks, attempts, split=split, k=2)
    print(f"ARC submission {args.submission} on {_scope(split, side, len(tasks))} ({DATA_VERSION}); "
          f"two attempts per test input")
    print(format_score_table([("submission", report)]))
    for rule, text in RULES.items():
        print(f"- {rule}: {text}")
    bad = [t for t in report.tasks if t.invalid]
    if bad:
        print(f"{len(bad)} invalid task(s), scored 0:")
        for t in bad[:20]:
            print(f"  {t.task}: {t.invalid}")
        if len(bad) > 20:
            print(f"  ... and {len(bad) - 20} more (all listed in --out)")
    print(f"tasks solved (all test inputs, pass@2): {_ids(report.solved_ids(2))}")
    if args.out:
        print(f"wrote {_write(args.out, json.dumps(report.to_dict(), indent=1) + chr(10))}")
    return 0


def _ids(ids: list[str], k: int = 24) -> str:
    if not ids:
        return "none"
    more = f", ... ({len(ids) - k} more; --out lists all)" if len(ids) > k else ""
    return f"{len(ids)}: " + ", ".join(ids[:k]) + more


def baseline_reports(split: str, side: int = MAX_SIDE) -> dict:
    """Every baseline on one split (tasks fitting side x side), scored under both rules."""
    tasks = _tasks(split, side)
    return score_baselines(tasks, split)[0]


def _cmd_baselines(args) -> int:
    splits = _split(args.split, allow_all=True)
    side = _max_side(args.max_side)
    out = {"data_version": DATA_VERSION, "rules": RULES, "max_side": side, "splits": {}}
    print(f"ARC baselines ({DATA_VERSION}); two attempts per test input")
    for split in splits:
        reports = baseline_reports(split, side)
        n = len(next(iter(reports.values())).tasks)
        print(f"\n{_scope(split, side, n)}:")
        print(format_score_table(list(reports.items())))
        for name, r in reports.items():
            if r.solved_ids(2):
                print(f"{name} solves (all test inputs, pass@2): {_ids(r.solved_ids(2))}")
        out["splits"][split] = {name: {"summary": r.summary, "solved_all_tests_at_2": r.solved_ids(2),
                                       "n_tasks": len(r.tasks)} for name, r in reports.items()}
    if args.out:
        print(f"wrote {_write(args.out, json.dumps(out, indent=1) + chr(10))}")
    return 0


def _cmd_leakage(args) -> int:
    md = Path(args.out)
    if md.suffix == ".json":
        raise PonderError(f"--out names the Markdown report (the JSON goes next to it), got {md}")
    report = leakage_report()
    text = format_leakage(report)
    print(text, end="")
    _write(str(md), text)
    js = _write(str(md.with_suffix(".json")), dumps(report))
    print(f"wrote {md} and {js}")
    return 0


def _number(flag: str, value: str | None, kind, lo: float):
    try:
        x = kind(value)
    except (TypeError, ValueError):
        raise PonderError(f"{flag} expects {'an integer' if kind is int else 'a number'}, got {value!r}") from None
    if not x >= lo:
        raise PonderError(f"{flag} must be >= {lo:g}, got {value}")
    return x


def _cmd_eval(args) -> int:
    if not args.run_dir:
        raise PonderError("ponder arc eval needs a RUN_DIR")
    max_tasks = _number("--max-tasks", args.max_tasks, int, 0)
    ttft = None
    if args.ttft_seconds is not None:
        ttft = TTFTSettings(seconds=_number("--ttft-seconds", args.ttft_seconds, float, 0),
                            lr=_number("--ttft-lr", args.ttft_lr, float, 1e-12),
                            batch_size=_number("--ttft-batch", args.ttft_batch, int, 1))
    batch = None if args.batch_size is None else _number("--batch-size", args.batch_size, int, 1)
    if args.split is not None:
        _split(args.split)
    run_dir = Path(args.run_dir)
    if run_dir.is_dir() and not (run_dir / "config.json").exists() and not (run_dir / "checkpoints").exists() \
            and not (run_dir / "model.safetensors").exists():
        raise PonderError(f"{run_dir} is not a run directory (no config.json, no checkpoints/)")
    lock = None
    if args.out is None or _inside(Path(args.out), run_dir_of(resolve_checkpoint(run_dir))):
        lock = DirectoryLock(run_dir_of(resolve_checkpoint(run_dir)), command_line()).acquire()  # writes into the run
    try:
        with silenced(args.quiet):
            return _eval_run(args, run_dir, max_tasks, ttft, batch)
    finally:
        if lock is not None:
            lock.release()


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


def _eval_run(args, run_dir: Path, max_tasks: int, ttft, batch) -> int:
    model, task, cfg, ckpt = args.load_run(run_dir)
    if not isinstance(task, ArcTaskData):
        raise PonderError(f"{run_dir} is not an ARC run (its task is {cfg.task.name!r}); ponder arc eval scores "
                          f"runs of the arc task")
    split = args.split or f"{cfg.task.dataset}-eval"
    device = resolve_device(cfg.train.device)
    set_threads(cfg.train.threads)
    result = evaluate_arc(model.to(device), cfg, split, metric=task.metric, device=device, run=str(ckpt),
                          max_tasks=max_tasks, ttft=ttft, batch_size=batch)
    out = Path(args.out) if args.out else (ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt) \
        / "arc-eval" / split
    if out.exists() and not out.is_dir():
        raise PonderError(f"--out {out} is a file; name a directory")
    paths = write_arc_eval(result, out)
    info = result.info
    print(f"ARC evaluation of {ckpt} on {_scope(split, cfg.task.max_side, info['n_tasks'])} ({result.label}; "
          f"{DATA_VERSION}); {info['n_samples']} samples, two attempts per test input voted over views")
    print(format_score_table([(f"{a.name} [{result.label}]", a.report) for a in result.answers]
                             + [(f"baseline: {n}", r) for n, r in result.baselines.items()]))
    for a in result.answers:
        print(f"- {a.name}: {a.predictions.seconds:.2f} s ({info['seconds_per_task'][a.name]:.3f} s per task), "
              f"mean steps {info['mean_steps'][a.name]:.2f}; solved (pass@2, all test inputs): "
              f"{_ids(a.report.solved_ids(2))}")
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    print(f"check: {score_command(result, paths['submission'])}")
    return 0


def _cmd_solve(args) -> int:
    split = _split(args.split)[0]
    if args.minutes_per_task is None:
        raise PonderError("ponder arc solve needs --minutes-per-task M (the budget of each task)")
    minutes = _number("--minutes-per-task", args.minutes_per_task, float, 0)
    if not 0 < minutes <= 24 * 60:
        raise PonderError(f"--minutes-per-task must be > 0 and at most a day, got {args.minutes_per_task}")
    jobs = _number("--jobs", args.jobs, int, 1)
    seed = _number("--seed", args.seed, int, 0)
    if args.small and args.max_side is not None:
        raise PonderError(f"--small means --max-side {SMALL_SIDE}; give one of them")
    side = SMALL_SIDE if args.small else _max_side(args.max_side)
    selection = _tasks(split, side)
    if args.tasks is not None:
        wanted = [t.strip() for t in args.tasks.split(",") if t.strip()]
        if not wanted:
            raise PonderError("--tasks names no task id")
        ids = {t.id for t in selection}
        unknown = [t for t in wanted if t not in ids]
        if unknown:
            raise PonderError(f"--tasks: {unknown[0]!r} is not one of the {_scope(split, side, len(selection))}")
        selection = tuple(t for t in selection if t.id in set(wanted))
    out = Path(args.out or f"arc-solve-{split}")
    if out.exists() and not out.is_dir():
        raise PonderError(f"--out {out} is a file; name a directory")
    settings = settings_with(minutes * 60, seed=seed)
    log = (lambda _line: None) if args.quiet else (lambda line: print(line, flush=True))
    with silenced(args.quiet):
        log(f"ARC mode (c) on {_scope(split, side, len(selection))} ({DATA_VERSION}): {minutes:g} min per task, "
            f"{jobs} at a time, one thread each; writing {out}")
        run, paths = run_solve(selection, settings, out, split=split, max_side=side, jobs=jobs,
                               all_tasks=args.tasks is None, log=log)
    print(format_score_table(score_rows(run)))
    print(f"tasks solved by the model (all test inputs, pass@2): {_ids(run.report.solved_ids(2))}")
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    print(f"check: {solve_score_command(run, paths['submission'], args.tasks is None)}")
    return 0


def run_arc(args: argparse.Namespace, extra: list[str]) -> int:
    if extra:
        raise PonderError(f"ponder arc {args.arc_command} takes no overrides, got {' '.join(extra)}")
    return {"score": _cmd_score, "baselines": _cmd_baselines, "leakage": _cmd_leakage,
            "eval": _cmd_eval, "solve": _cmd_solve}[args.arc_command](args)
