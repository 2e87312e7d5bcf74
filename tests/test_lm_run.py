"""Language models through the run layer: model kinds and their refusals, the `lm` task's windows
and metric, `ponder train` / `eval` / `generate` for both LM kinds, exact resume, `ponder compare`
on two tiny presets, and bad input refused in one line."""
from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from ponder.cli import main
from ponder.core.errors import PonderError
from ponder.experiments.compare import compare
from ponder.models.lm.hybrid import HybridLM
from ponder.models.lm.recursive_lm import RecursiveLM
from ponder.models.recursive import RecursiveReasoner
from ponder.presets import PRESETS, Preset, get_config
from ponder.runs.config import apply_overrides, from_dict, to_dict
from ponder.runs.run import build_model, train_run
from ponder.tasks import build_task
from ponder.tasks.lm import tokenizer as lm_tokenizer
from ponder.tasks.lm.generate import sample_next
from ponder.tasks.lm.task import NextToken, ngram_figures

TINY = ["--task.max_files=0", "--task.vocab_size=300", "--task.seq_len=16", "--model.vocab_size=300",
        "--model.max_len=16", "--model.d_model=16", "--model.n_heads=2", "--train.batch_size=4", "--train.steps=5",
        "--train.warmup_steps=1", "--train.log_every=1", "--train.eval_every=5", "--train.checkpoint_every=5",
        "--train.threads=1", "--train.progress=false", "--eval.batch_size=8", "--eval.max_samples=8",
        "--eval.train_samples=8", "--eval.during_training_samples=8", "--eval.samples_drawn=1"]
KIND_TINY = {"lm-small-hybrid": ["--model.n_layers=2", "--model.attention_layers=1", "--model.dn_heads=2",
                                 "--model.dn_head_dim=8", "--model.chunk_size=8"],
             "lm-small-recursive": ["--model.n_layers=1"]}


def _write_corpus(path: Path) -> Path:
    """A deterministic Python-like text (about 25 KB): no dependence on this machine's files."""
    rng = random.Random(0)
    names = ["alpha", "beta", "gamma", "delta", "value", "count", "items", "result", "index", "total"]
    lines = []
    for i in range(500):
        a, b = rng.choice(names), rng.choice(names)
        lines += [f"def {a}_{i % 17}({b}):", f"    return {b} + {rng.randint(0, 99)}  # {a}", ""]
    path.write_text("\n".join(lines))
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return _write_corpus(tmp_path_factory.mktemp("corpus") / "code.py")


def _lm_cfg(preset: str, corpus: Path, *extra: str):
    return apply_overrides(get_config(preset), [f"--task.corpus={corpus}", *TINY, *KIND_TINY[preset], *extra])


def test_model_kinds_dispatch_migrate_and_refuse(corpus):
    debug = get_config("debug")
    assert debug.kind("model") == "recursive" and to_dict(debug)["model"]["kind"] == "recursive"
    old = to_dict(debug)
    del old["model"]["kind"]  # saved before model kinds: migrates to the recursive reasoner
    assert from_dict(old).kind("model") == "recursive"
    bad = to_dict(debug)
    bad["model"]["kind"] = "hybrid_lm"
    with pytest.raises(PonderError, match="says kind 'hybrid_lm' but holds a ModelConfig"):
        from_dict(bad)
    hybrid, recursive = _lm_cfg("lm-small-hybrid", corpus), _lm_cfg("lm-small-recursive", corpus)
    assert isinstance(build_model(hybrid, None), HybridLM) and isinstance(build_model(recursive, None), RecursiveLM)
    assert isinstance(build_model(debug, build_task(debug.task)), RecursiveReasoner)
    assert from_dict(to_dict(recursive)) == recursive
    refusals = [
        (debug, ["--model.kind=recursive_lm"], "model.kind=recursive_lm is a language model; task 'sudoku' is not text"),
        (recursive, ["--model.kind=recursive"], "task 'lm' needs a language model"),
        (hybrid, ["--halt.kind=act"], "a non-default halt section does not apply to model.kind=hybrid_lm"),
        (hybrid, ["--halt.max_steps=3"], "a non-default halt section does not apply"),
        (recursive, ["--halt.pool=first"], "halt.pool=first does not apply to model.kind=recursive_lm"),
        (recursive, ["--halt.min_steps=2"], "halt.min_steps=2 does not apply"),
        (recursive, ["--halt.kind=q_halt", "--halt.explore_prob=0.5"], "halt.explore_prob=0.5 does not apply"),
        (recursive, ["--halt.kind=q_halt", "--estimator.kind=truncated"], "estimator.kind=truncated does not apply"),
        (recursive, ["--train.loss=stablemax"], "train.loss=stablemax does not apply"),
        (recursive, ["--train.target=0.5"], "train.target=0.5 does not apply"),
        (hybrid, ["--health.controller=true"], "health.controller=true does not apply"),
        (recursive, ["--model.vocab_size=301"], "model.vocab_size=301 must equal task.vocab_size=300"),
        (recursive, ["--task.seq_len=32"], "model.max_len=16 is shorter than task.seq_len=32"),
        (hybrid, ["--task.max_files=3"], "task.max_files=3 would do nothing"),
        (hybrid, ["--model.mode=recurrent", "--model.chunk_size=4"], "model.chunk_size=4 would do nothing"),
    ]
    for cfg, overrides, message in refusals:
        with pytest.raises(PonderError, match=message.replace("(", r"\(").replace(")", r"\)")):
            apply_overrides(cfg, overrides)


def test_lm_task_windows_labels_metric_and_baselines(corpus):
    cfg = _lm_cfg("lm-small-hybrid", corpus)
    task = build_task(cfg.task)
    n = 16
    ids = task.ids["train"].astype(np.int64)
    w = len(task.train)
    assert w == (len(ids) - 1) // n and task.train.inputs.shape == (w, n)
    assert np.array_equal(task.train.inputs.reshape(-1), ids[:w * n])  # consecutive, non-overlapping
    assert np.array_equal(task.train.labels.reshape(-1), ids[1:w * n + 1])  # the next token everywhere
    assert task.ids["train"].max() < task.tokenizer.vocab_size <= task.vocab_size == 300
    assert len(task.test) == (len(task.ids["validation"]) - 1) // n  # the held-out split is validation
    eos = task.tokenizer.eos_id
    assert task.ids["validation"][-1] == eos and (task.ids["train"] == eos).sum() == 1  # one document, cut
    # the metric against a direct computation
    torch.manual_seed(0)
    logits, labels = torch.randn(3, n, 300), torch.as_tensor(task.test.labels[:3])
    metric = NextToken()
    summary = metric.summarize({k: v.numpy() for k, v in metric.score(logits, labels).items()})
    ce = F.cross_entropy(logits.reshape(-1, 300), labels.reshape(-1)).item()
    assert summary["loss"] == pytest.approx(ce, rel=1e-5) and summary["perplexity"] == pytest.approx(math.exp(ce), rel=1e-5)
    assert summary["accuracy"] == pytest.approx((logits.argmax(-1) == labels).float().mean().item())
    assert not metric.correct(metric.score(logits, labels)).any()
    # the baselines predict the held-out stream's next tokens; bigram accuracy by a dictionary
    b = task.baselines(task.test, task.train)
    stream = task.ids["validation"][:len(task.test) * n + 1].astype(np.int64)
    direct = lm_tokenizer.ngram_baselines(task.ids["train"], stream, 300)
    assert b["bigram (Witten-Bell)"]["perplexity"] == pytest.approx(direct["bigram_ppl"])
    pairs: dict[int, dict[int, int]] = {}
    for x, y in zip(ids[:-1], ids[1:]):
        pairs.setdefault(int(x), {}).setdefault(int(y), 0)
        pairs[int(x)][int(y)] += 1
    top = int(np.bincount(ids).argmax())
    guess = [max(sorted(pairs[int(x)]), key=lambda t: pairs[int(x)][t]) if int(x) in pairs else top for x in stream[:-1]]
    assert b["bigram (Witten-Bell)"]["accuracy"] == pytest.approx(float(np.mean(np.array(guess) == stream[1:])))
    assert b["unigram"]["accuracy"] == pytest.approx(float(np.mean(stream[1:] == top)))
    assert ngram_figures(ids, stream, 300) == b


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory) -> dict[str, Path]:
    """One 5-step run of each LM kind through `ponder train` (preset plus overrides)."""
    root = tmp_path_factory.mktemp("lm-runs")
    runs = {}
    for preset in ("lm-small-hybrid", "lm-small-recursive"):
        run = root / preset
        args = ["train", preset, "--run-dir", str(run), f"--task.corpus={corpus}", *TINY, *KIND_TINY[preset]]
        assert main(args) == 0
        runs[preset] = run
    return runs


@pytest.mark.parametrize("preset", ["lm-small-hybrid", "lm-small-recursive"])
def test_train_eval_each_kind_end_to_end(trained, preset, capsys):
    run = trained[preset]
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5]
    assert all(k in r for r in train for k in ("loss", "mean_depth", "halt_rate", "token_accuracy"))
    assert [r["samples_taken"] for r in train] == [4, 8, 12, 16, 20]
    ev = [r for r in records if r["kind"] == "eval"][-1]
    assert ev["test_perplexity"] == pytest.approx(math.exp(ev["test_loss"]))
    assert (run / "tokenizer.json").exists() and (run / "eval" / "samples.html").exists()
    report = json.loads((run / "eval" / "report.json").read_text())
    h = report["held_out"]
    m = h["max_steps"]
    assert h["tokens"] == 8 * 16 and sum(h["steps_histogram"]) == h["tokens"]
    # token-cycle applications counted by the model equal the depths, summed independently
    assert h["applications"] == sum((i + 1) * c for i, c in enumerate(h["steps_histogram"]))
    assert h["full_applications"] == h["tokens"] * m
    assert h["compute_saved"] == pytest.approx(1 - h["applications"] / h["full_applications"])
    # capped at M cycles every token answers at its own depth: the early-exit figure (PonderNet's
    # answer is the readout of the halting cycle; the hybrid has one budget)
    assert len(h["perplexity_by_budget"]) == m and h["perplexity_by_budget"][-1] == pytest.approx(h["perplexity"], rel=1e-4)
    assert report["parameters"] == sum(v.numel() for v in load_file(str(sorted((run / "checkpoints").glob("step-*"))[-1]
                                                                      / "model.safetensors")).values())
    if preset == "lm-small-recursive":
        assert m == 3 and "halt_logit_mean" in train[-1] and "kl" in train[-1]
        assert len({r["halt_logit_mean"] for r in train}) > 1  # the halting head's logits move
        assert report["flops_per_token_train_forward"] == pytest.approx(3 * report["flops_per_token_inference"]
                                                                        / h["mean_steps"])
    else:
        assert m == 1 and h["halt_rate"] is None and h["compute_saved"] == 0
    capsys.readouterr()
    assert main(["eval", str(run)]) == 0  # the task-owned evaluation through `ponder eval`
    assert "baseline: bigram (Witten-Bell)" in capsys.readouterr().out


def test_generate_shows_depth_and_is_seeded(trained, capsys):
    run = trained["lm-small-recursive"]
    args = ["generate", str(run), "--prompt", "def alpha", "--max-tokens", "6", "--show-depth", "--seed", "3",
            "--top-k", "20", "--top-p", "0.9"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert main(args) == 0
    assert capsys.readouterr().out == first  # the same seed samples the same text
    assert first.startswith("def alpha")
    lines = first.split("depth of each generated token (1..3):\n")[1].strip().splitlines()
    assert len(lines) == 7 and lines[-1].startswith("mean depth")
    assert all(1 <= int(x.split()[0]) <= 3 for x in lines[:6])
    g = torch.Generator().manual_seed(0)
    logits = torch.tensor([0.0, 3.0, 1.0, 2.9])
    assert sample_next(logits, temperature=0, top_k=0, top_p=1, generator=g) == 1
    assert {sample_next(logits, temperature=1, top_k=1, top_p=1, generator=g) for _ in range(20)} == {1}
    assert {sample_next(logits, temperature=1, top_k=0, top_p=0.5, generator=g) for _ in range(40)} <= {1, 3}


def test_lm_resume_is_exact(corpus, tmp_path):
    over = ["--train.schedule=constant", "--train.checkpoint_every=3", "--train.eval_every=3", "--train.steps=6"]
    cfg = _lm_cfg("lm-small-recursive", corpus, *over)
    train_run(cfg, tmp_path / "a", final_eval=False)
    train_run(_lm_cfg("lm-small-recursive", corpus, *over[:-1], "--train.steps=3"), tmp_path / "b", final_eval=False)
    train_run(cfg, tmp_path / "b", resume=True, final_eval=False)
    wa = load_file(str(tmp_path / "a" / "checkpoints" / "step-0000006" / "model.safetensors"))
    wb = load_file(str(tmp_path / "b" / "checkpoints" / "step-0000006" / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    ra = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    rb = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    strip = lambda rs: [{k: v for k, v in r.items() if "time" not in k and "sec" not in k and k != "tokens_per_second"}  # noqa: E731
                        for r in rs if r["kind"] in ("train", "eval")]
    assert strip(ra) == strip(rb)


def _debug_variant():
    cfg = get_config("debug")
    cfg.halt = apply_overrides(cfg, ["--halt.kind=act"]).halt
    return cfg


def _named(cfg, name):
    cfg.preset = name
    return cfg


@pytest.fixture
def debug_act_preset(monkeypatch):
    """A second tiny preset on the debug preset's task, registered only while a test runs."""
    monkeypatch.setitem(PRESETS._entries, "debug-act-test",
                        Preset(lambda: _named(_debug_variant(), "debug-act-test"), "test only", "~10 s"))


def test_compare_two_tiny_presets_resume_and_extend(tmp_path, capsys, debug_act_preset):
    out = tmp_path / "cmp"
    over = ["--train.eval_every=2", "--train.checkpoint_every=2", "--train.log_every=2", "--eval.max_samples=16",
            "--eval.train_samples=16", "--eval.during_training_samples=16", "--eval.samples_drawn=0"]
    r = compare("debug", "debug-act-test", seeds=2, budget="steps:4", out=out, overrides=over)
    for name in ("debug", "debug-act-test"):
        runs = r["runs"][name]
        assert [x["steps_trained"] for x in runs] == [4, 4]
        exact = [x["exact"] for x in runs]
        s = r["summary"][name]["exact"]
        assert s["mean"] == pytest.approx(np.mean(exact)) and s["std"] == pytest.approx(np.std(exact, ddof=1))
        for x in runs:
            best = json.loads((Path(x["run_dir"]) / "best" / "best.json").read_text())
            evals = [json.loads(line) for line in (Path(x["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
            assert best["exact"] == max(e["test_exact"] for e in evals if e["kind"] == "eval")
        cfgs = [json.loads((Path(x["run_dir"]) / "config.json").read_text())["train"]["seed"] for x in runs]
        assert cfgs == [0, 1]
    for f in ("compare.json", "compare.md", "compare.png", "halting.png"):
        assert (out / f).stat().st_size > 0
    assert main(["eval", str(out / "debug" / "seed_0" / "best")]) == 0  # best weights are a checkpoint
    before = (out / "debug" / "seed_1" / "metrics.jsonl").read_text()
    compare("debug", "debug-act-test", seeds=2, budget="steps:4", out=out, overrides=over, resume=True)
    assert (out / "debug" / "seed_1" / "metrics.jsonl").read_text() == before  # finished runs are kept
    r = compare("debug", "debug-act-test", seeds=2, budget="steps:4", out=out, overrides=over, extend_steps=2)
    assert [x["steps_trained"] for x in r["runs"]["debug"]] == [6, 6]
    with pytest.raises(PonderError, match="already holds a comparison"):
        compare("debug", "debug-act-test", seeds=1, out=out)


def test_bad_input_is_one_line(trained, corpus, tmp_path, capsys, debug_act_preset):
    cases = [
        (["generate", str(tmp_path / "nope"), "--prompt", "x"], "no such run or checkpoint"),
        (["generate", str(trained["lm-small-hybrid"]), "--top-p", "0"], "--top-p must be in (0, 1]"),
        (["generate", str(trained["lm-small-hybrid"]), "--max-tokens", "0"], "--max-tokens must be >= 1"),
        (["compare", "debug", "demo", "--out", str(tmp_path / "c1")], "train on different data"),
        (["compare", "debug", "debug", "--out", str(tmp_path / "c2")], "compare two different presets"),
        (["compare", "debug", "debug-act-test", "--budget", "tokens:abc", "--out", str(tmp_path / "c3")],
         "--budget must be steps:N"),
        (["compare", "debug", "debug-act-test", "--budget", "flops:1e9", "--out", str(tmp_path / "c4")],
         "does not count its FLOPs"),
        (["train", "lm-small-hybrid", "--run-dir", str(tmp_path / "t"), "--task.corpus=" + str(tmp_path / "missing"),
          "--task.max_files=0"], "corpus path"),
    ]
    for args, message in cases:
        assert main(args) == 2, args
        err = capsys.readouterr().err.strip().split("\n")
        assert err[-1].split("\r")[-1].startswith("ponder: error:") and message in err[-1], (args, err)
        # before it: only `ponder train`'s run directory line, or a data generator's progress bar
        assert all(line.startswith("run directory:") or "\r" in line for line in err[:-1]), err
    run = tmp_path / "debug-run"
    assert main(["train", "debug", "--run-dir", str(run), "--train.steps=2", "--train.eval_every=0",
                 "--train.checkpoint_every=2"]) == 0
    capsys.readouterr()
    assert main(["generate", str(run)]) == 2
    assert "model.kind=recursive, not a language model" in capsys.readouterr().err
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for f in trained["lm-small-hybrid"].iterdir():
        if f.is_file():
            (damaged / f.name).write_bytes(f.read_bytes())
    (damaged / "checkpoints").symlink_to(trained["lm-small-hybrid"] / "checkpoints")
    (damaged / "tokenizer.json").write_text("{not json")
    assert main(["generate", str(damaged)]) == 2
    err = capsys.readouterr().err.strip()
    assert "tokenizer.json is corrupt" in err and "\n" not in err
