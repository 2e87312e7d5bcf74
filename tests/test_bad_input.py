"""Every bad input is refused in one line: a fuzz over a real run directory (every file truncated,
overwritten with random bytes, deleted, or swapped for the same file of a run of another model
size, under every command that takes a run) and over the config (every setting of every section
and kind set to a wrong type, an out-of-range value and a non-finite one).

A command either works (the file it was given is not one it reads, or the damage is one it is
built to survive, like a last log line cut short by a crash) or prints exactly one
`ponder: error:` line and exits 2, and never a traceback. Which files each command must refuse
is listed in NEEDS, so a command that silently worked around a damaged file it reads fails here.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import random
import shutil
import traceback
from pathlib import Path

import pytest
import torch
from conftest import SUMMARY

from ponder.cli import main
from ponder.core.errors import PonderError
from ponder.core.settings import bad_values, bounds_of, field_types
from ponder.models.halting import HALT_SETTINGS
from ponder.presets import get_config
from ponder.runs.config import SECTIONS, apply_overrides, from_dict, to_dict
from ponder.tasks import TASKS
from ponder.training.estimator_hook import ESTIMATOR_SETTINGS
from ponder.training.optim import OPTIMIZERS

TRAIN = ["--train.steps=10", "--train.checkpoint_every=10", "--train.eval_every=10", "--train.ema_decay=0.9",
         "--eval.max_samples=8", "--eval.train_samples=8", "--eval.during_training_samples=8",
         "--eval.samples_drawn=2", "--train.progress=false"]
CKPT = "checkpoints/step-0000010"
CORRUPTIONS = ("truncate", "random bytes", "delete", "other model size")
COMMANDS = ("health", "eval", "diagnose", "init-from", "resume")
READ_DAMAGE = {"truncate", "random bytes", "delete"}
WEIGHTS_AND_CONFIG = {f"{CKPT}/config.json", f"{CKPT}/ema.safetensors"}
# file -> corruptions each command must refuse (any other case must simply work)
NEEDS: dict[str, dict[str, set[str]]] = {
    "health": {"config.json": READ_DAMAGE, "metrics.jsonl": {"random bytes", "delete"}},
    "eval": {"checkpoints/latest": READ_DAMAGE, **{f: set(CORRUPTIONS) for f in WEIGHTS_AND_CONFIG}},
    "init-from": {"checkpoints/latest": READ_DAMAGE, f"{CKPT}/config.json": READ_DAMAGE,
                  f"{CKPT}/ema.safetensors": READ_DAMAGE},  # other sizes load partly, with a report
    "resume": {"config.json": set(CORRUPTIONS), "checkpoints/latest": READ_DAMAGE, "metrics.jsonl": {"random bytes"},
               **{f"{CKPT}/{f}": set(CORRUPTIONS) for f in ("config.json", "model.safetensors", "ema.safetensors",
                                                            "state.pt")}},
}
NEEDS["diagnose"] = NEEDS["eval"]  # it loads a run exactly as eval does


def run_cli(args: list[str]) -> tuple[int, str]:
    """(exit status, stderr) of `ponder ARGS` run in this process; an exception escaping main is
    a traceback the user would have seen, and fails the test with it."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            rc = main(args)
    except BaseException:  # noqa: BLE001 - anything escaping main is the defect under test
        pytest.fail(f"traceback from `ponder {' '.join(args)}`:\n{traceback.format_exc()}")
    return rc, err.getvalue()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for name, width in (("base", 32), ("other", 48)):
        rc, err = run_cli(["train", "debug", "--run-dir", str(root / name), f"--model.d_model={width}", *TRAIN])
        assert rc == 0, err
    return root


def command(name: str, run: Path) -> list[str]:
    return {"health": ["health", str(run)], "eval": ["eval", str(run)],
            "diagnose": ["diagnose", "gradients", str(run), "--steps", "1", "--ref-steps", "2", "--batch", "2",
                         "--max-iter", "2", "--ref-max-iter", "2", "--rtrl-max-params", "1", "--quiet"],
            "init-from": ["train", "debug", "--init-from", str(run), "--run-dir", str(run.parent / "new"),
                          "--train.steps=1", "--train.eval_every=0", "--eval.max_samples=8", "--eval.train_samples=8",
                          "--eval.samples_drawn=0", "--train.progress=false"],
            "resume": ["train", "--resume", str(run)]}[name]


def corrupt(path: Path, how: str, other: Path, seed: int) -> None:
    if how == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "random bytes":
        path.write_bytes(random.Random(seed).randbytes(max(64, path.stat().st_size)))
    elif how == "delete":
        path.unlink()
    else:
        shutil.copyfile(other, path)


@pytest.fixture(scope="module")
def tally():
    seen = {"cases": 0, "refused": 0, "worked": 0, "not_rerun": 0, "files": set()}
    yield seen
    SUMMARY.append(f"run-directory fuzz: {len(seen['files'])} files x {len(CORRUPTIONS)} corruptions x {len(COMMANDS)} "
          f"commands = {seen['cases']} cases: {seen['refused']} refused in one line, {seen['worked']} worked "
          f"({seen['not_rerun']} of them diagnose on a file it does not read, not rerun), 0 tracebacks")


def test_the_run_directory_has_the_files_the_table_names(runs):
    files = {p.relative_to(runs / "base").as_posix() for p in (runs / "base").rglob("*") if p.is_file()}
    named = {f for table in NEEDS.values() for f in table}
    assert named <= files
    assert {"metrics.csv", "health.md", "eval/report.json"} <= files  # outputs: no command reads them


@pytest.mark.parametrize("how", CORRUPTIONS)
def test_every_damaged_file_is_refused_in_one_line_or_harmless(runs, how, tmp_path, tally):
    base, other = runs / "base", runs / "other"
    files = sorted(p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file())
    for i, rel in enumerate(files):
        if how == "other model size" and not (other / rel).exists():
            continue  # a file named after its own run (TensorBoard's event file): the other run has none
        case = tmp_path / f"{i}" / "run"
        shutil.copytree(base, case)
        corrupt(case / rel, how, other / rel, seed=i)
        tally["files"].add(rel)
        for name in COMMANDS:
            must_refuse = how in NEEDS[name].get(rel, set())
            if name == "diagnose" and not must_refuse:
                tally["cases"] += 1  # loads as eval does; its working run is tested in tests/test_diagnose.py
                tally["worked"] += 1
                tally["not_rerun"] += 1
                continue
            rc, err = run_cli(command(name, case))
            errors = [line for line in err.splitlines() if line.startswith("ponder: error:")]
            where = f"`ponder {name}` with {rel} ({how})"
            assert "Traceback" not in err, where
            tally["cases"] += 1
            if must_refuse:
                assert rc == 2 and len(errors) == 1, f"{where} should be refused in one line: rc {rc}, {err[-400:]}"
                tally["refused"] += 1
            else:
                assert rc in (0, 1) and not errors, f"{where} should work: rc {rc}, {err[-400:]}"
                tally["worked"] += 1


def test_non_finite_weights_are_refused_by_eval_resume_and_init_from(runs, tmp_path):
    from safetensors.torch import load_file, save_file

    case = tmp_path / "run"
    shutil.copytree(runs / "base", case)
    for name in ("model", "ema"):
        path = case / CKPT / f"{name}.safetensors"
        weights = load_file(str(path))
        save_file({k: torch.full_like(v, math.nan) for k, v in weights.items()}, str(path))
    for cmd in ("eval", "resume", "init-from"):
        rc, err = run_cli(command(cmd, case))
        assert rc == 2 and "non-finite weights" in err.splitlines()[-1], (cmd, err[-300:])


# ----------------------------------------------------------------------------- config fuzz


def _kind_configs():
    """One valid config of every section kind (halting heads, estimators, optimizers, tasks)."""
    base = get_config("debug")
    out = [("debug", base)]
    for section, registry in (("halt", HALT_SETTINGS), ("estimator", ESTIMATOR_SETTINGS), ("optim", OPTIMIZERS)):
        for kind in registry.names():
            if section == "estimator" and kind.startswith("ep_"):
                continue  # refused for the reasoner as a whole (tested in test_estimator_training)
            out.append((f"{section}.kind={kind}", apply_overrides(base, [f"--{section}.kind={kind}"])))
    presets = {"maze": "maze9", "parity": "parity16"}
    out += [(f"task {t}", get_config(presets[t])) for t in TASKS.names() if t in presets]
    return out


def _cases():
    """(config label, section, setting, what, bad value) for every setting of every section
    dataclass, each dataclass taken once (in the first config that has it)."""
    seen: set[type] = set()
    for label, cfg in _kind_configs():
        for section in SECTIONS:
            obj = getattr(cfg, section)
            if type(obj) in seen:
                continue
            seen.add(type(obj))
            for f in dataclasses.fields(obj):
                if f.init:
                    for what, value in bad_values(type(obj), f.name):
                        yield label, section, f.name, what, value


CASES = list(_cases())


def test_every_numeric_setting_declares_its_range():
    for label, cfg in _kind_configs():
        for section in SECTIONS:
            obj = getattr(cfg, section)
            for f in dataclasses.fields(obj):
                tp = field_types(type(obj))[f.name]
                if tp in (int, float, int | None, float | None) and f.name != "seed":
                    b = bounds_of(f)
                    assert any(x is not None for x in (b.ge, b.gt, b.le, b.lt, b.choices)), f"{section}.{f.name}"


def test_every_setting_refuses_bad_values_in_the_config_file_and_on_the_command_line():
    refused = {"file": 0, "command line": 0}
    settings = set()
    configs = dict(_kind_configs())
    for label, cfg, section, name, what, value in ((c[0], configs[c[0]], *c[1:]) for c in CASES):
        settings.add((label, section, name))
        data = to_dict(cfg)
        data[section] = {**data[section], name: value}
        with pytest.raises(PonderError) as e:
            from_dict(json.loads(json.dumps(data)))
        assert "\n" not in str(e.value), (label, section, name, value)
        refused["file"] += 1
        if isinstance(value, list) or (section == "task" and name == "name"):
            continue  # no command-line spelling (a list), or fixed by the preset
        with pytest.raises(PonderError) as e:
            apply_overrides(cfg, [f"--{section}.{name}={value}"])
        assert "\n" not in str(e.value), (label, section, name, value)
        refused["command line"] += 1
    classes = {(c[0], c[1]) for c in CASES}
    SUMMARY.append(f"config fuzz: {len(settings)} settings of {len(classes)} section dataclasses x (wrong type, out of range, "
          f"non-finite) = {len(CASES)} bad values; refused in one line: {refused['file']} from a config file, "
          f"{refused['command line']} from the command line")
    assert refused["file"] == len(CASES) and len(settings) > 150


def test_a_config_file_of_the_wrong_shape_is_refused(tmp_path):
    from ponder.runs.config import load_config

    for text in ("[]", "{}", '{"task": 3}', "nan", '{"preset": 1}'):
        (tmp_path / "c.json").write_text(text)
        with pytest.raises(PonderError):
            load_config(tmp_path / "c.json")
