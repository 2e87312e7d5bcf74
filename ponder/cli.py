"""Command line: `ponder train | eval | health | report | diagnose | compare | generate | arc | presets`.

Every user error (unknown preset or key, wrong type, missing or corrupt file, impossible task)
prints one line `ponder: error: ...` and exits with status 2; never a traceback.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from ponder.core.errors import PonderError
from ponder.core.progress import silenced
from ponder.experiments.compare import compare
from ponder.experiments.diagnose import diagnose_gradients, format_table, write_json
from ponder.experiments.equilibrium import DecisiveConfig, report_markdown, run_decisive, write_report
from ponder.presets import DEFAULT_PRESET, PRESETS, get_config
from ponder.reports.page import write_page
from ponder.runs.config import apply_overrides, load_config
from ponder.runs.run import check_resumable, open_run, train_run
from ponder.runs.trained import evaluate_checkpoint, health_report, load_trained, load_trained_lm
from ponder.tasks.arc.cli import add_arc_parser
from ponder.tasks.lm.cli import add_generate_parser
from ponder.training.checkpoint import read_training_state, resolve_checkpoint


def _cmd_presets(args, extra) -> int:
    names = PRESETS.names()
    wn = max(len(n) for n in names)
    wt = max(len(PRESETS.get(n).expected_time) for n in names)
    for name in names:
        p = PRESETS.get(name)
        mark = " (default)" if name == DEFAULT_PRESET else ""
        print(f"{name:<{wn}}  {p.expected_time:>{wt}}  {p.summary}{mark}")
    return 0


def _cmd_train(args, extra) -> int:
    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "config.json").exists():
            raise PonderError(f"{run_dir} is not a run directory (no config.json)")
        if args.init_from:
            raise PonderError("--init-from starts a new run; it cannot be combined with --resume")
        cfg = load_config(run_dir / "config.json")
        if args.preset and args.preset != cfg.preset:
            raise PonderError(f"{run_dir} is a run of preset {cfg.preset!r}, not {args.preset!r}")
        cfg = apply_overrides(cfg, extra)
        if args.extend_steps is not None and args.extend_steps < 1:
            raise PonderError(f"--extend-steps must be >= 1, got {args.extend_steps}")
        if not (run_dir / "checkpoints").exists():  # stopped before its first checkpoint: nothing to continue
            if args.extend_steps is not None:
                raise PonderError(f"{run_dir} holds no checkpoint to extend; continue it with --resume {run_dir}")
            print(f"{run_dir} holds no checkpoint yet (the run stopped before its first): starting it from step 0",
                  file=sys.stderr)
            train_run(cfg, run_dir)
            return 0
        check_resumable(cfg, run_dir)
        done = read_training_state(resolve_checkpoint(run_dir))["step"]
        if args.extend_steps is not None:
            cfg.train.steps = done + args.extend_steps  # the LR schedule stretches to the new end
        elif done >= cfg.train.steps:
            if (run_dir / "eval" / "report.json").exists():
                open_run(cfg, run_dir, resume=True).close()  # every file of the run checked, as a resume would
                print(f"{run_dir} is finished (step {done} of {cfg.train.steps}): nothing to train; "
                      f"--extend-steps K trains K more steps", file=sys.stderr)
                return 0
            print(f"{run_dir} finished training (step {done}) without its final evaluation: writing it",
                  file=sys.stderr)
    else:
        if args.extend_steps is not None:
            raise PonderError("--extend-steps continues a run: use it with --resume RUN_DIR")
        if not args.preset:
            args.preset = DEFAULT_PRESET
            print(f"no preset named: training the default preset {DEFAULT_PRESET} (see `ponder presets`)",
                  file=sys.stderr)
        if args.init_from and not Path(args.init_from).exists():
            raise PonderError(f"--init-from: no such run or checkpoint: {args.init_from}")
        cfg = apply_overrides(get_config(args.preset), extra)
        run_dir = Path(args.run_dir) if args.run_dir else Path("runs") / f"{args.preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    print(f"run directory: {run_dir}", file=sys.stderr)
    train_run(cfg, run_dir, resume=bool(args.resume), init_from=Path(args.init_from) if args.init_from else None)
    return 0


def _cmd_eval(args, extra) -> int:
    if args.no_write and args.name is not None:
        raise PonderError("--name names the folder an evaluation writes; --no-write writes none")
    evaluate_checkpoint(args.path, extra, split=args.split, write=not args.no_write, name=args.name,
                        change_head=args.change_head, quiet=args.quiet)
    return 0


def _cmd_diagnose(args, extra) -> int:
    if args.what == "gradients":
        if not args.source:
            raise PonderError("`ponder diagnose gradients` needs a PRESET or RUN_DIR")
        result = diagnose_gradients(args.source, steps=args.steps, ref_steps=args.ref_steps, batch=args.batch,
                                    repeats=args.repeats, max_iter=args.max_iter, ref_max_iter=args.ref_max_iter,
                                    rtrl_max_params=args.rtrl_max_params, power_iters=args.power_iters,
                                    overrides=extra, progress=not args.quiet)
        print(format_table(result))
        if args.json:
            write_json(result, args.json)
        return 0
    if args.source:
        raise PonderError("`ponder diagnose decisive` takes no PRESET or RUN_DIR")
    if extra:
        raise PonderError("`ponder diagnose decisive` takes no --section.key overrides")
    if args.seeds < 1:
        raise PonderError(f"--seeds must be >= 1, got {args.seeds}")
    torch.set_num_threads(args.threads)
    cfg = DecisiveConfig()
    if args.train_steps is not None:
        cfg.train_steps = args.train_steps
    if args.steps is not None:
        cfg.deployed_steps = args.steps
    result = run_decisive(cfg, list(range(args.seeds)), progress=not args.quiet)
    paths = write_report(result, args.out)
    print(report_markdown(result))
    print(f"wrote {paths['md']}, {paths['json']}, {paths['png']}", file=sys.stderr)
    return 0


def _cmd_compare(args, extra) -> int:
    result = compare(args.preset_a, args.preset_b, seeds=args.seeds, budget=args.budget, resume=args.resume,
                     extend_steps=args.extend_steps, out=Path(args.out) if args.out else None, overrides=extra,
                     quiet=args.quiet)
    out = Path(args.out) if args.out else Path("runs") / f"compare-{args.preset_a}-vs-{args.preset_b}"
    print((out / "compare.md").read_text(), end="")
    print(f"wrote {out / 'compare.json'}, compare.md, compare.png, halting.png", file=sys.stderr)
    return 0 if result else 1


def _cmd_health(args, extra) -> int:
    if extra:
        raise PonderError("`ponder health` takes no overrides")
    payload = health_report(Path(args.run_dir))
    print((Path(args.run_dir) / "health.md").read_text(), end="")
    return 0 if payload["passed"] else 1


def _cmd_report(args, extra) -> int:
    if extra:
        raise PonderError("`ponder report` takes no overrides")
    t0 = time.perf_counter()
    with silenced(args.quiet):
        out = write_page([Path(d) for d in args.run_dirs], Path(args.out) if args.out else None, samples=args.samples)
    print(f"wrote {out} in {time.perf_counter() - t0:.1f} s")
    return 0


OVERRIDES_HELP = ("overrides: any config setting as --section.key=value (sections: task, model, halt, estimator,\n"
                  "optim, train, eval, health, halting_health), typed by the setting; an unknown key or a bad\n"
                  "value is refused in one line naming the valid ones.\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ponder", description="Recursive reasoning models with learned halting.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train a preset (overrides: --section.key=value)", epilog=OVERRIDES_HELP
                       + "\nexamples:\n  ponder train demo --train.steps=3000 --halt.max_steps=12\n"
                       "  ponder train --resume runs/demo-20261123-120000 --extend-steps 1000",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("preset", nargs="?", help=f"preset name (see `ponder presets`; default {DEFAULT_PRESET})")
    p.add_argument("--run-dir", help="where to write the run (default runs/PRESET-TIME)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR exactly")
    p.add_argument("--extend-steps", type=int, metavar="N", help="with --resume: N more optimizer steps")
    p.add_argument("--init-from", metavar="RUN_DIR", help="start a new run from the matching weights of a run")
    p.set_defaults(fn=_cmd_train)
    p = sub.add_parser("eval", help="evaluate a run or checkpoint on held-out data (overrides: --section.key=value)",
                       epilog=OVERRIDES_HELP + "\nThe run's own evaluation (held-out split, no overrides) goes to "
                       "RUN_DIR/eval/; one with overrides or\nanother split goes beside it, to RUN_DIR/eval/NAME/, and "
                       "its report records the split,\nthe overrides, the halting head and threshold.\n"
                       "examples:\n  ponder eval runs/demo-20261123-120000\n"
                       "  ponder eval runs/demo-20261123-120000 --halt.threshold=0.95    # -> eval/halt.threshold=0.95/\n"
                       "  ponder eval runs/demo-20261123-120000 --split train --no-write",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path", help="RUN_DIR (latest checkpoint) or a checkpoint directory")
    p.add_argument("--split", choices=("test", "train"), default="test",
                   help="test: the held-out split (default); train: the training split")
    p.add_argument("--no-write", action="store_true",
                   help="print the report only: write nothing into the run (works while the run trains)")
    p.add_argument("--name", help="the folder under RUN_DIR/eval/ to write (default: from the overrides and split; "
                                  "'' writes over the run's own evaluation)")
    p.add_argument("--change-head", action="store_true",
                   help="allow --halt.kind to evaluate the trained weights under another halting head")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(fn=_cmd_eval)
    p = sub.add_parser("diagnose", help="gradient estimators on one batch; the decisive fixed-point experiment")
    p.add_argument("what", choices=("gradients", "decisive"))
    p.add_argument("source", nargs="?", help="gradients: PRESET or RUN_DIR")
    p.add_argument("--steps", type=int, help="gradients: cycles T (default the model's); decisive: deployed T")
    p.add_argument("--ref-steps", type=int, help="gradients: horizon of the BPTT reference (default max(16, 4T))")
    p.add_argument("--batch", type=int, default=32, help="gradients: held-out samples in the batch")
    p.add_argument("--repeats", type=int, default=1, help="gradients: timing repeats (median)")
    p.add_argument("--max-iter", type=int, default=50, help="gradients: implicit solver iterations (forward, adjoint)")
    p.add_argument("--ref-max-iter", type=int, default=200, help="gradients: iterations of the tight implicit reference")
    p.add_argument("--rtrl-max-params", type=int, default=20000,
                   help="gradients: exact RTRL only up to this many parameters (its memory is parameters x state)")
    p.add_argument("--power-iters", type=int, default=200,
                   help="gradients: at most this many power iterations per spectral radius (default 200)")
    p.add_argument("--json", metavar="PATH", help="gradients: also write the table as JSON")
    p.add_argument("--seeds", type=int, default=3, help="decisive: seeds 0..N-1")
    p.add_argument("--train-steps", type=int, help="decisive: training steps per run")
    p.add_argument("--threads", type=int, default=1, help="decisive: torch threads")
    p.add_argument("--out", default="runs/decisive", help="decisive: report directory")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(fn=_cmd_diagnose)
    p = sub.add_parser("health", help="health report of a run: training checks, halting verdicts, controller actions")
    p.add_argument("run_dir", help="RUN_DIR (writes RUN_DIR/health.md and health.json; exit 1 when a check fails)")
    p.set_defaults(fn=_cmd_health)
    p = sub.add_parser("report", help="one self-contained HTML page of one run, or several side by side")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", help="the HTML file (default RUN_DIR/report.html; several runs: ponder-report.html)")
    p.add_argument("--samples", type=int, default=6, help="held-out samples drawn per run (0 = none)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(fn=_cmd_report)
    add_arc_parser(sub, load_trained)
    p = sub.add_parser("compare", help="train two presets on the same task, seeds and budget; compare them")
    p.add_argument("preset_a")
    p.add_argument("preset_b")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 for each preset (default 3)")
    p.add_argument("--budget", help="the same budget for both: steps:N, tokens:N, flops:N (training) or seconds:N")
    p.add_argument("--resume", action="store_true", help="continue unfinished runs in --out, skip finished ones")
    p.add_argument("--extend-steps", type=int, metavar="K", help="train every run of --out K more steps")
    p.add_argument("--out", help="directory of the runs and results (default runs/compare-A-vs-B)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(fn=_cmd_compare)
    add_generate_parser(sub, load_trained_lm)
    p = sub.add_parser("presets", help="list presets: task, model size, expected time")
    p.set_defaults(fn=_cmd_presets)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    bad = [a for a in extra if not a.startswith("--") or "=" not in a]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)} (overrides look like --section.key=value)")
    if extra and args.command == "presets":
        parser.error("`ponder presets` takes no overrides")
    try:
        return args.fn(args, extra)
    except PonderError as e:
        print(f"ponder: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ponder: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
