"""train.compile: the recursion's hot path compiles without graph breaks, one graph per grad mode and
autocast dtype whatever the batch sizes; several models in one process each keep their graphs (no
silent fall-back to eager at the recompile limit); a deep copy (the EMA evaluation) runs its own
weights; and the "auto" rule. Graphs are counted with TorchDynamo's counters and the eager
backend, so nothing here needs a compiler toolchain."""
import copy

import pytest
import torch
from torch._dynamo.utils import counters

import ponder.training.compiling as compiling
from ponder.core.errors import PonderError
from ponder.core.types import Batch
from ponder.models.blocks import ReasoningNet
from ponder.models.halting import build_halting, halt_config
from ponder.models.recursive import ModelConfig, RecursiveReasoner
from ponder.presets import get_config
from ponder.runs.config import apply_overrides
from ponder.runs.run import build_model, open_run
from ponder.training.compiling import compile_model, resolve_compile
from ponder.training.loop import train, train_step

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _fresh_dynamo(monkeypatch):
    monkeypatch.setattr(compiling, "BACKEND", "eager")
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def _reasoner(style="trm", mixer="attention", d=32, n=16):
    cfg = ModelConfig(style=style, d_model=d, n_heads=2, n_layers=2, mixer=mixer, h_cycles=2, l_cycles=2)
    return RecursiveReasoner(cfg, vocab_size=6, seq_len=n, halting=build_halting(halt_config(max_steps=4), d))


def _steps(model, sizes=(8, 5, 3), n=16, dtypes=(None,)):
    """A training-like step (the recursion with its gradient, then backward) and an inference
    step (no grad) at each batch size, under each autocast dtype."""
    for dtype in dtypes:
        for b in sizes:
            x = torch.randint(0, 6, (b, n))
            batch = Batch(x, x, torch.zeros(b))
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None):
                state, out = model.step(model.init_state(b), model.prepare(batch))
                out.logits.float().sum().backward()
                with torch.no_grad():
                    model.step(state, model.prepare(batch))


@pytest.mark.parametrize("style,mixer", [("trm", "attention"), ("trm", "mlp"), ("hrm", "attention")])
def test_hot_path_has_no_graph_break_and_one_graph_per_grad_mode_and_dtype(style, mixer):
    model = _reasoner(style, mixer)
    assert compile_model(model) == len(model.networks())
    _steps(model, dtypes=(None, torch.bfloat16))
    assert dict(counters["graph_break"]) == {}
    # every net shares its structure's graphs (HRM's two levels have one structure): grad x dtype
    assert counters["stats"]["unique_graphs"] == 4


def test_several_models_in_one_process_each_get_their_graphs():
    """Before: one code object for every net, so the third model passed TorchDynamo's recompile
    limit (8) and ran eager while it was reported compiled."""
    for d in (16, 24, 32, 40):
        model = _reasoner(d=d)
        compile_model(model)
        before = counters["stats"]["unique_graphs"]
        _steps(model, sizes=(4, 3))
        assert counters["stats"]["unique_graphs"] - before == 2, f"d={d} ran without its own graphs"


def test_a_deep_copy_of_a_compiled_model_runs_its_own_weights():
    """The EMA evaluation deep-copies the model and loads the average into the copy; the copy must
    not call the original's compiled function (as a module compiled with nn.Module.compile did)."""
    model = _reasoner()
    compile_model(model)
    shadow = copy.deepcopy(model)
    with torch.no_grad():
        for p in shadow.parameters():
            p.mul_(0.5)
    x = torch.randint(0, 6, (4, 16))
    batch = Batch(x, x, torch.zeros(4))
    with torch.no_grad():
        got = shadow.step(shadow.init_state(4), shadow.prepare(batch))[1].logits
        eager = copy.deepcopy(shadow)
        for net in eager.networks():
            net.compile_backend = None
        want = eager.step(eager.init_state(4), eager.prepare(batch))[1].logits
        original = model.step(model.init_state(4), model.prepare(batch))[1].logits
    assert torch.allclose(got, want, atol=1e-6) and not torch.allclose(got, original, atol=1e-3)


def test_a_compiled_run_trains_evaluates_and_keeps_its_checkpoint_names(tmp_path):
    cfg = apply_overrides(get_config("debug"), ["--train.compile=true", "--train.steps=4", "--train.eval_every=4",
                                                "--train.checkpoint_every=0", "--train.tensorboard=off"])
    run = open_run(cfg, tmp_path / "r")
    assert all(isinstance(n, ReasoningNet) and n.compile_backend == "eager" for n in run.model.networks())
    train(run)
    assert dict(counters["graph_break"]) == {}
    assert counters["stats"]["unique_graphs"] == 2  # training's grad mode and the no-grad cycles + evaluation
    fresh = build_model(cfg, run.task)
    assert set(run.model.state_dict()) == set(fresh.state_dict())


# ----------------------------------------------------------------------------- the auto rule

def test_auto_turns_compile_on_only_where_a_measurement_says_it_pays(monkeypatch):
    model = _reasoner()
    key = ("cpu", "recursive-attention")
    timer = lambda: 0.1  # noqa: E731  (an eager step of 100 ms)
    monkeypatch.setattr(compiling, "MEASURED", {})
    assert resolve_compile("auto", model, CPU, steps=10**6, step_seconds=timer).value == "off"  # never measured
    monkeypatch.setattr(compiling, "MEASURED", {key: (0.9, 20.0)})
    assert resolve_compile("auto", model, CPU, steps=10**6, step_seconds=timer).value == "off"  # slower
    monkeypatch.setattr(compiling, "MEASURED", {key: (1.25, 20.0)})
    # saves 0.1 * (1 - 1/1.25) = 20 ms a step: 1000 steps save 20 s, not more than the 20 s it costs
    assert resolve_compile("auto", model, CPU, steps=1000, step_seconds=timer).value == "off"
    on = resolve_compile("auto", model, CPU, steps=2000, step_seconds=timer)
    assert on.value == "on" and "would save 40 s" in on.reason
    assert resolve_compile(True, model, CPU, steps=1, step_seconds=timer).value == "on"
    assert resolve_compile(False, model, CPU, steps=10**9, step_seconds=timer).value == "off"


def test_models_without_a_recursion_refuse_compile():
    with pytest.raises(PonderError, match="no recursion to compile"):
        resolve_compile(True, torch.nn.Linear(2, 2), CPU, steps=1, step_seconds=lambda: 1.0)
    assert resolve_compile("auto", torch.nn.Linear(2, 2), CPU, steps=1, step_seconds=lambda: 1.0).value == "off"


# ----------------------------------------------------------------------------- the recurrent cell

def _cell_config(compile_, cell="rnn", extra=()):
    return apply_overrides(get_config("parity64-rnn"), [
        "--task.length=12", "--task.n_train=256", "--task.n_test=32", "--train.batch_size=16",
        f"--model.cell={cell}", f"--train.compile={compile_}", "--train.eval_every=0", "--train.checkpoint_every=0",
        "--train.tensorboard=off", "--train.progress=false", "--train.log_every=2", *extra])


def _cell_run(tmp_path, name, compile_, cell="rnn"):
    run = open_run(_cell_config(compile_, cell), tmp_path / name)
    run.callbacks.call("on_train_start", run)
    return run


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_the_cell_trajectory_compiles_to_one_graph_and_trains_as_the_eager_one(tmp_path, cell):
    """`train.compile=true` on a recurrent cell compiles its whole unrolled trajectory (forward and
    backward) as one graph, without breaks; with the eager backend the arithmetic is the same op
    for op, so the weights after several steps are bit-identical to an uncompiled run's."""
    eager, compiled = _cell_run(tmp_path, "eager", "false", cell), _cell_run(tmp_path, "compiled", "true", cell)
    assert compiled.model.compile_backend == "eager" and eager.model.compile_backend is None
    assert compiling.family(compiled.model) == f"cell-{cell}"
    for _ in range(5):
        a, b = train_step(eager), train_step(compiled)
        assert a["loss"] == b["loss"]
    assert dict(counters["graph_break"]) == {}
    assert counters["stats"]["unique_graphs"] == 1
    for (name, p), q in zip(eager.model.named_parameters(), compiled.model.parameters()):
        assert torch.equal(p, q), name


def test_a_compiled_cell_trains_evaluates_and_resumes(tmp_path):
    """Evaluation (early exit, eager: its batch shrinks as samples halt) runs beside the compiled
    trajectory without a graph break; a resumed run compiles its trajectory again."""
    run = open_run(_cell_config("true", extra=["--train.steps=4", "--train.eval_every=4"]), tmp_path / "r")
    assert train(run) == "done"
    assert dict(counters["graph_break"]) == {} and counters["stats"]["unique_graphs"] == 1
    assert copy.deepcopy(run.model).compile_backend == "eager"  # the EMA copy keeps the backend's name only
    run.close()
    again = open_run(_cell_config("true", extra=["--train.steps=6"]), tmp_path / "r", resume=True)
    assert again.step == 4 and again.model.compile_backend == "eager"
    assert train(again) == "done" and again.step == 6
    again.close()
