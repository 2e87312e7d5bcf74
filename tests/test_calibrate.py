"""`halt.threshold=auto` (ponder.training.calibrate): the setting, the choice rule on a hand-computed case,
the calibration slice (training samples only), and end to end on the debug preset."""
import contextlib
import io
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ponder.cli import main
from ponder.core.errors import PonderError
from ponder.core.types import StepOutput
from ponder.models.halting import build_halting, halt_config
from ponder.presets import get_config
from ponder.runs.config import apply_overrides, from_dict, to_dict
from ponder.runs.run import build_model, open_run, train_run
from ponder.runs.trained import load_trained
from ponder.tasks import build_task
from ponder.training.calibrate import GRID, calibrate, calibrate_traces, choose
from ponder.training.evaluate import evaluate_split

FAST = ["--train.steps=6", "--train.log_every=3", "--train.eval_every=3", "--train.checkpoint_every=6",
        "--eval.train_samples=16", "--eval.during_training_samples=16", "--eval.samples_drawn=0"]


def debug(*overrides):
    return apply_overrides(get_config("debug"), list(overrides))


# ----------------------------------------------------------------------------- settings


def test_auto_is_accepted_and_bad_values_are_refused_in_one_line():
    for kind in ("q_halt", "pondernet"):
        cfg = debug(f"--halt.kind={kind}", "--halt.threshold=auto", "--halt.auto_margin=0.02",
                    "--halt.calibration_samples=64")
        assert (cfg.halt.threshold, cfg.halt.auto_margin, cfg.halt.calibration_samples) == ("auto", 0.02, 64)
        assert debug(f"--halt.kind={kind}", "--halt.threshold=0.9").halt.threshold == 0.9
        again = from_dict(json.loads(json.dumps(to_dict(cfg))))  # a config with auto round-trips through JSON
        assert to_dict(again) == to_dict(cfg) and again.halt.threshold == "auto"
        for value in ("autox", "abc", "1.5", "-0.1", "nan", "AUTO"):
            with pytest.raises(PonderError) as e:
                debug(f"--halt.kind={kind}", f"--halt.threshold={value}")
            assert "\n" not in str(e.value) and "halt.threshold" in str(e.value)
        for value in ("autox", 1.5, -0.1, [1], True):  # from a config file
            data = to_dict(cfg)
            data["halt"]["threshold"] = value
            with pytest.raises(PonderError) as e:
                from_dict(json.loads(json.dumps(data)))
            assert "\n" not in str(e.value) and "halt.threshold" in str(e.value)
        for setting in ("--halt.auto_margin=0.02", "--halt.calibration_samples=64"):  # nothing to do without auto
            with pytest.raises(PonderError, match="would do nothing: halt.threshold is 0.5, not 'auto'"):
                debug(f"--halt.kind={kind}", setting)
    with pytest.raises(PonderError, match="eval_rule=sample"):
        debug("--halt.kind=pondernet", "--halt.eval_rule=sample", "--halt.threshold=auto")
    with pytest.raises(PonderError, match="unknown key 'threshold'"):
        debug("--halt.kind=q_continue", "--halt.threshold=auto")


# ----------------------------------------------------------------------------- the choice rule

# a hand-computed case for Q-halt (M=4): per sample, sigmoid(q) at each step and whether that
# step's answer is right. Q-halt halts at the first step whose probability exceeds the threshold.
PROBS = [[0.58, 0.97, 0.9992, 0.9995],  # right from step 2
         [0.92, 0.5, 0.5, 0.5],  # right from step 1
         [0.3, 0.3, 0.3, 0.3],  # right at step 4 only
         [0.96, 0.2, 0.2, 0.2]]  # over-confident at step 1, right from step 3
SOLVED = [[0, 1, 1, 1], [1, 1, 1, 1], [0, 0, 0, 1], [0, 0, 1, 1]]


def _hand(threshold):
    """(solved fraction, mean steps) of the Q-halt rule on PROBS, computed by hand."""
    stops = [next((t for t, p in enumerate(row, 1) if p > threshold), 4) for row in PROBS]
    return float(np.mean([SOLVED[i][s - 1] for i, s in enumerate(stops)])), float(np.mean(stops))


def _traces(probs, solved, split_at=2):
    """The traced halting outputs of `probs` in two batches (as a rollout writes them)."""
    logits = torch.tensor([[math.log(p / (1 - p)) for p in row] for row in probs])
    solved = torch.tensor(solved, dtype=torch.bool)
    out = []
    for rows in (slice(0, split_at), slice(split_at, None)):
        outs = [StepOutput(torch.empty(0), logits[rows, t].contiguous()) for t in range(logits.shape[1])]
        out.append((outs, solved[rows]))
    return out


def test_the_choice_is_the_lowest_threshold_within_the_margin_of_always_m_steps():
    head = build_halting(halt_config("q_halt", max_steps=4, threshold="auto"), 8)
    traces = _traces(PROBS, SOLVED)
    # by hand: 0.5 -> 2 of 4 right; 0.6..0.95 -> 3 of 4; from 0.98 on every sample runs on to a right answer
    assert [_hand(t)[0] for t in (0.5, 0.6, 0.95, 0.98, 1.0)] == [0.5, 0.75, 0.75, 1.0, 1.0]
    for margin, want in ((0.01, 0.98), (0.0, 0.98), (0.25, 0.6), (0.5, 0.5)):
        r = calibrate_traces(head, traces, max_steps=4, margin=margin)
        assert r["threshold"] == want, (margin, r)
        assert r["solved_at_max"] == 1.0
        assert [(c["solved"], c["mean_steps"]) for c in r["candidates"]] == [_hand(t) for t in GRID]
        assert (r["solved_at_choice"], r["mean_steps_at_choice"]) == _hand(want)
    assert head.calibrated is None  # the replay leaves the head as it found it
    # a sample over-confident beyond every threshold below 1: margin 0 keeps always-M (1.0)
    worse = _traces([*PROBS, [0.9999, 0.9999, 0.9999, 0.9999]], [*SOLVED, [0, 0, 0, 1]])
    assert calibrate_traces(head, worse, max_steps=4, margin=0.0)["threshold"] == 1.0
    assert calibrate_traces(head, worse, max_steps=4, margin=0.2)["threshold"] == 0.98  # 4 of 5 right
    # the rule alone: lowest within the margin; none (1.0 not a candidate) -> 1.0
    cands = [{"threshold": 0.5, "solved": 0.7}, {"threshold": 0.9, "solved": 0.79}, {"threshold": 0.95, "solved": 0.8}]
    assert choose(cands, 0.8, 0.01) == 0.9 and choose(cands, 0.8, 0.0) == 0.95 and choose(cands, 0.8, 0.1) == 0.5
    assert choose(cands, 0.85, 0.0) == 1.0


def test_auto_halts_at_half_in_training_at_the_calibrated_value_in_evaluation():
    for kind in ("q_halt", "pondernet"):
        head = build_halting(halt_config(kind, max_steps=4, threshold="auto"), 8)
        out = StepOutput(torch.empty(0), torch.full((1,), math.log(0.7 / 0.3)))  # lambda / p = 0.7
        steps = torch.ones(1, dtype=torch.long)
        head.train()
        assert head.decide(out, steps, head.start(1, torch.device("cpu")))[0].item()  # 0.5: halts
        head.eval()
        with pytest.raises(PonderError, match="before its threshold was calibrated"):
            head.decide(out, steps, head.start(1, torch.device("cpu")))
        head.calibrated = 0.9
        assert not head.decide(out, steps, head.start(1, torch.device("cpu")))[0].item()
        head.calibrated = 0.6
        assert head.decide(out, steps, head.start(1, torch.device("cpu")))[0].item()


# ----------------------------------------------------------------------------- the slice


def test_calibration_runs_on_the_last_training_samples_never_the_test_split():
    cfg = debug("--halt.threshold=auto", "--halt.calibration_samples=50", "--eval.batch_size=16")
    task = build_task(cfg.task)
    model = build_model(cfg, task)
    seen = []
    prepare = model.prepare
    model.prepare = lambda batch: (seen.append(batch.inputs.clone()), prepare(batch))[1]
    record = calibrate(model, task, cfg, device=torch.device("cpu"))
    inputs = torch.cat(seen).numpy()
    n = len(task.train)
    assert np.array_equal(inputs, task.train.inputs[n - 50:])  # the last 50 training samples, in order
    test_rows = {r.tobytes() for r in task.test.inputs}
    assert not any(r.tobytes() in test_rows for r in inputs)
    assert (record["split"], record["rows"], record["samples"]) == ("train", [n - 50, n], 50)
    assert record["held_out"] and "held out of training" in record["source"]
    assert model.halting.calibrated == record["threshold"] and model.halting.calibration is record
    assert calibrate(model, task, debug(), device=torch.device("cpu")) is None  # a fixed threshold: nothing
    per_token = SimpleNamespace(name="text", metric=SimpleNamespace(evaluate_split=None), train=task.train)
    per_token.metric.evaluate_split = lambda *a, **k: {}  # a task that answers per token (language models)
    with pytest.raises(PonderError, match="halt.threshold=auto is calibrated per sample"):
        calibrate(model, per_token, cfg, device=torch.device("cpu"))


# ----------------------------------------------------------------------------- end to end


def _cli(args):
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        rc = main(args)
    return rc, err.getvalue()


def test_train_with_auto_writes_the_record_and_evaluates_with_it(tmp_path):
    run = tmp_path / "auto"
    rc, err = _cli(["train", "debug", "--run-dir", str(run), "--halt.threshold=auto", *FAST])
    assert rc == 0, err[-500:]
    report = json.loads((run / "eval" / "report.json").read_text())
    record = report["halt_calibration"]
    assert record["samples"] == 50 and record["margin"] == 0.01 and record["threshold"] in GRID  # a quarter of 200
    assert record["held_out"] and record["rows"] == [150, 200]
    assert "halt.threshold=auto chose" in (run / "eval" / "report.md").read_text()
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "eval"]
    assert evals and all(r["halt_threshold"] in GRID for r in evals)
    # the evaluation halted as the chosen fixed threshold does on the same weights
    model, task, cfg, _ = load_trained(run, [f"--halt.threshold={record['threshold']}"])
    fixed = evaluate_split(model, task.test, task.metric, max_steps=4, batch_size=64, device=torch.device("cpu"),
                           budgets=False)
    assert fixed["steps_histogram"] == report["held_out"]["steps_histogram"]
    assert fixed["exact"] == report["held_out"]["exact"] and fixed["cell"] == report["held_out"]["cell"]
    # the report page names the threshold the evaluation used
    rc, err = _cli(["report", str(run), "--samples", "0"])
    assert rc == 0, err[-500:]
    assert f'data-key="halt.threshold" data-value="&quot;auto: {record["threshold"]:g}&quot;"' in \
        (run / "report.html").read_text()


def test_eval_with_auto_on_a_run_trained_with_a_fixed_threshold(tmp_path):
    run = tmp_path / "fixed"
    # bias +5: sigmoid = 0.993, so thresholds up to 0.98 halt every sample at step 1, 0.999 and up never
    train_run(debug("--halt.bias_init=5", *FAST), run)
    rc, err = _cli(["eval", str(run), "--halt.threshold=auto", "--halt.calibration_samples=40"])
    assert rc == 0, err[-500:]
    written = run / "eval" / "halt.threshold=auto+halt.calibration_samples=40" / "report.json"  # beside the run's own
    record = json.loads(written.read_text())["halt_calibration"]
    assert json.loads(written.read_text())["evaluation"]["overrides"] == ["--halt.threshold=auto",
                                                                           "--halt.calibration_samples=40"]
    assert "halt_calibration" not in json.loads((run / "eval" / "report.json").read_text())
    assert record["samples"] == 40 and not record["held_out"]  # the run trained on the slice: said so
    assert "seen in training" in record["source"]
    by_t = {c["threshold"]: c["mean_steps"] for c in record["candidates"]}
    assert by_t[0.5] == by_t[0.98] == 1.0 and by_t[0.999] == by_t[1.0] == 4.0
    # evaluation reads the calibrated value: set it by hand, the early exit follows
    model, task, cfg, _ = load_trained(run, ["--halt.threshold=auto"])
    for value, steps in ((0.5, 1.0), (0.999, 4.0)):
        model.halting.calibrated = value
        r = evaluate_split(model, task.test, task.metric, max_steps=4, batch_size=64, device=torch.device("cpu"),
                           budgets=False)
        assert r["mean_steps"] == steps


def test_pondernet_with_auto(tmp_path):
    run = tmp_path / "pondernet"
    report = train_run(debug("--halt.kind=pondernet", "--halt.threshold=auto", "--halt.calibration_samples=32", *FAST),
                       run)
    record = report["halt_calibration"]
    assert record["samples"] == 32 and record["threshold"] in GRID
    assert json.loads((run / "eval" / "report.json").read_text())["halt_calibration"] == record
    assert (run / "config.json").read_text().count('"threshold": "auto"') == 1


def test_a_run_with_auto_never_trains_on_its_calibration_slice(tmp_path):
    """The sample stream of an auto run reads the training split without the slice; a fixed
    threshold reads all of it; resuming across the two is refused; too big a slice is refused."""
    cfg = debug("--halt.threshold=auto", "--halt.calibration_samples=40")
    run = open_run(cfg, tmp_path / "auto")
    n = len(run.task.train)
    slice_rows = {r.tobytes() for r in run.task.train.inputs[n - 40:]}
    drawn = run.stream.take(400).inputs.numpy()  # more than the 160 rows left: every one of them
    assert len(run.stream.split) == n - 40
    assert np.array_equal(run.stream.split.inputs, run.task.train.inputs[:n - 40])  # the slice is the rest
    assert not any(r.tobytes() in slice_rows for r in drawn)
    fixed = open_run(debug(), tmp_path / "fixed")
    assert len(fixed.stream.split) == n
    train_run(debug("--train.steps=2", "--train.checkpoint_every=2"), tmp_path / "r", final_eval=False)
    with pytest.raises(PonderError, match="cannot be resumed with halt.threshold=auto"):
        open_run(debug("--train.steps=2", "--train.checkpoint_every=2", "--halt.threshold=auto"), tmp_path / "r",
                 resume=True)
    big = open_run(debug("--halt.threshold=auto", f"--halt.calibration_samples={n}"), tmp_path / "big")
    assert len(big.stream.split) == n - n // 4  # at most a quarter of the split is kept out


def test_auto_is_refused_up_front_for_the_per_token_recursive_lm():
    with pytest.raises(PonderError, match="halt.threshold=auto does not apply to model.kind=recursive_lm"):
        apply_overrides(get_config("lm-small-recursive"), ["--halt.threshold=auto"])
