"""Every `ponder` command the README shows is run, in a fast form: its own arguments, a tiny run
in place of each run directory it names, and overrides that shrink what it trains (fewer steps,
smaller data and model). Each must exit 0, or, where it needs what no test machine has (a
Kaggle submission file, the papers' data folders), refuse in one line saying so. A README line
this test cannot map fails it, so a new example cannot go untried."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from kinds_support import KINDS

from ponder.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
FAST = ["--train.steps=4", "--train.eval_every=2", "--train.checkpoint_every=2", "--train.log_every=1",
        "--train.progress=false", "--train.threads=1", "--train.tensorboard=off"]
PUZZLE = ["--task.n_train=64", "--task.n_test=16", "--eval.batch_size=16", "--eval.train_samples=16",
          "--eval.during_training_samples=16", "--train.batch_size=8"]
TINY = {  # preset -> overrides that make it train in seconds (each test kind's, where the README names its preset)
    "demo": PUZZLE,
    "sudoku-hard-cpu": [*PUZZLE, "--task.n_train=8", "--task.n_test=4", "--model.d_model=16", "--halt.max_steps=2"],
    **{preset: extra for preset, extra in KINDS.values()},
}
# lines that need what a test machine does not have: (a piece of the line, the one-line refusal expected)
REFUSALS = [("--train.device=cuda", "no CUDA device is available"), ("submission.json", "submission.json"),
            ("--task.source=DIR", "DIR")]  # first match wins
# lines tested elsewhere, with why
ELSEWHERE = {"torchrun": "tests/test_distributed.py starts torchrun itself"}
REPLACE = {"--seeds 3": "--seeds 1", "--budget flops:8e11": "--budget steps:2", "--steps 8": "--steps 2",
           "--estimator.max_iter=30": "--estimator.max_iter=5"}
VERDICTS = ("health",)  # commands whose exit status is a verdict on the run: 1 = a check failed


def readme_commands() -> list[str]:
    lines = []
    for block in re.findall(r"```sh\n(.*?)```", README, re.S):
        for line in block.splitlines():
            command = line.split("  #")[0].strip()
            if command and ("ponder" in command.split()[0] or command.startswith("torchrun")):
                lines.append(command)
    return lines


@pytest.fixture(scope="module")
def places(runs, tmp_path_factory) -> dict[str, Path]:
    """A tiny trained run for each run directory the README's examples name, by kind."""
    return {"root": tmp_path_factory.mktemp("readme"), "corpus": runs["corpus"], "demo": runs["sudoku"]["finished"],
            "arc": runs["ARC demonstrations"]["finished"], "lm": runs["recursive LM"]["finished"]}


def fast_form(command: str, places: dict[str, Path]) -> list[str] | None:
    """The README command as arguments of `ponder`, made fast; None for a line tested elsewhere."""
    if any(command.startswith(k) for k in ELSEWHERE):
        return None
    for old, new in REPLACE.items():
        command = command.replace(old, new)
    args = shlex.split(command)[1:]
    root = places["root"]
    demo = str(places["demo"])
    args = [demo if a in ("runs/demo-20261123-120000", "runs/a") else a for a in args]
    if "runs/b" in args:  # a second run beside the first: the ARC one
        args[args.index("runs/b")] = str(places["arc"])
    if "RUN_DIR" in args:
        args[args.index("RUN_DIR")] = str(places["arc"] if args[0] == "arc" else places["lm"])
    for flag in ("--out", "--json"):
        if flag in args:
            args[args.index(flag) + 1] = str(root / Path(args[args.index(flag) + 1]).name)
    if args[:2] == ["arc", "leakage"] and "--out" not in args:
        args += ["--out", str(root / "arc-leakage.md")]  # its default is the working directory
    if args[:2] == ["diagnose", "decisive"]:
        args += ["--train-steps", "2", "--steps", "3"]
    if args[:2] == ["diagnose", "gradients"]:
        args += ["--batch", "4", "--ref-steps", "4", "--max-iter", "4", "--ref-max-iter", "8", "--power-iters", "4",
                 "--rtrl-max-params", "10",
                 "--quiet"]
    if args[0] == "train" and "--resume" not in args:
        preset = args[1]
        if preset not in TINY and not any(piece in command for piece, _ in REFUSALS):
            raise AssertionError(f"README trains preset {preset!r}: give it a fast form in TINY")
        args += ["--run-dir", str(root / f"train-{len(list(root.iterdir()))}"), *FAST, *TINY.get(preset, [])]
        if preset.startswith("lm-"):
            args.append(f"--task.corpus={places['corpus']}")
    if args[0] == "compare":
        args += ["--out", str(root / "compare"), "--quiet", f"--task.corpus={places['corpus']}", "--task.max_files=0",
                 "--task.vocab_size=300", "--task.seq_len=16", "--model.vocab_size=300", "--model.max_len=16",
                 "--eval.max_samples=8", "--eval.train_samples=8", "--eval.during_training_samples=8",
                 "--train.threads=1", "--train.tensorboard=off"]
    if args[0] == "generate":
        args[args.index("--max-tokens") + 1] = "3"
    if args[:2] == ["arc", "solve"]:  # one task, a few seconds of training, written beside the test's runs
        args[args.index("--minutes-per-task") + 1] = "0.03"
        args += ["--tasks", "137f0df0", "--out", str(root / "arc-solve"), "--quiet"]
    if args[:2] == ["arc", "eval"]:
        args += ["--max-tasks", "1", "--ttft-batch", "2", "--quiet"]
        args[args.index("--ttft-seconds") + 1] = "0.5"
    if args[0] == "train" and "--resume" in args:
        args += ["--extend-steps", "2"]
    return args


def test_the_readme_shows_commands_to_try():
    assert len(readme_commands()) >= 20


@pytest.mark.parametrize("command", readme_commands())
def test_every_readme_command_runs_in_a_fast_form(command, places, capsys):
    args = fast_form(command, places)
    if args is None:
        pytest.skip(next(why for k, why in ELSEWHERE.items() if command.startswith(k)))
    code = main(args)
    err = capsys.readouterr().err
    refusal = next((needle for piece, needle in REFUSALS if piece in command), None)
    if refusal is None:
        assert code == 0 or (code == 1 and args[0] in VERDICTS), (args, err)
    else:
        lines = [line for line in err.splitlines() if line.startswith("ponder: error:")]
        assert code == 2 and len(lines) == 1 and refusal in lines[0], err
