import pytest

from ponder.core.errors import PonderError
from ponder.presets import PRESETS, get_config
from ponder.runs.config import apply_overrides, from_dict, load_config, save_config, to_dict


def test_overrides_are_typed_by_default():
    cfg = apply_overrides(get_config("debug"), ["--train.lr=0.5", "--train.steps=7", "--train.progress=false",
                                                "--model.mixer=mlp", "--halt.max_steps=3"])
    assert cfg.train.lr == 0.5 and isinstance(cfg.train.lr, float)
    assert cfg.train.steps == 7 and cfg.train.progress is False
    assert cfg.model.mixer == "mlp" and cfg.halt.max_steps == 3


def test_overrides_do_not_mutate_the_original():
    base = get_config("debug")
    apply_overrides(base, ["--train.steps=3"])
    assert base.train.steps == get_config("debug").train.steps


@pytest.mark.parametrize("override, message", [
    ("--train.nope=1", "unknown key 'nope' in section 'train'; valid: seed, batch_size"),
    ("--bogus.lr=1", "unknown config section 'bogus'"),
    ("--train.steps=1.5", "--train.steps expects int"),
    ("--train.progress=maybe", "--train.progress expects bool"),
    ("--train.lr", "not of the form"),
    ("--task.name=maze", "fixed by the preset"),
])
def test_bad_overrides_name_the_problem(override, message):
    with pytest.raises(PonderError, match=message.replace("(", r"\(").replace(".", r"\.")):
        apply_overrides(get_config("debug"), [override])


@pytest.mark.parametrize("name", PRESETS.names())
def test_every_preset_round_trips_through_json(name, tmp_path):
    cfg = get_config(name)
    assert cfg.preset == name
    save_config(cfg, tmp_path / "c.json")
    assert load_config(tmp_path / "c.json") == cfg
    assert from_dict(to_dict(cfg)) == cfg


def test_unknown_preset_lists_valid_ones():
    with pytest.raises(PonderError, match="unknown preset 'nope'; valid: .*debug.*demo"):
        get_config("nope")


def test_corrupt_and_foreign_configs_are_errors(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(PonderError, match="corrupt"):
        load_config(tmp_path / "bad.json")
    data = to_dict(get_config("debug"))
    data["train"]["surprise"] = 1
    with pytest.raises(PonderError, match="unknown keys"):
        from_dict(data)


def _legacy(cfg_dict: dict, *, halt_kind: str, optimizer: str, estimator: str, **estimator_fields) -> dict:
    """A config in the layout saved before the estimator and optim sections existed: one
    HaltConfig with every head's settings, optimizer and estimator settings inside `train`."""
    old = {k: (dict(v) if isinstance(v, dict) else v) for k, v in cfg_dict.items()}
    for section in ("estimator", "optim", "halting_health"):
        old.pop(section)
    old["halt"] = {"_type": "HaltConfig", "kind": halt_kind, "max_steps": 5, "min_steps": 1, "explore_prob": 0.1,
                   "loss_weight": 0.5, "bias_init": -5.0, "pool": "mean", "act_tau": 0.02, "act_epsilon": 0.01,
                   "prior_lambda": 0.2, "kl_weight": 0.01, "eval_rule": "threshold", "threshold": 0.5,
                   "l1_weight": 0.0, "logit_bound": 0.0, "lr_scale": 1.0, "step_gate": False,
                   "penalty_warmup_steps": 0}
    old["train"] = {k: v for k, v in old["train"].items() if k != "target"}
    old["train"].update({"optimizer": optimizer, "beta1": 0.9, "beta2": 0.99, "weight_decay": 0.3,
                         "estimator": estimator, "estimator_k": 1, "estimator_tol": 1e-4, "estimator_max_iter": 50,
                         "estimator_solver": "fixed_point", **estimator_fields})
    return old


def test_configs_saved_before_the_sections_split_load_with_their_meaning():
    base = to_dict(get_config("debug"))
    cfg = from_dict(_legacy(base, halt_kind="act", optimizer="adam_atan2", estimator="trm"))
    assert cfg.halt.kind == "act" and cfg.halt.act_tau == 0.02 and cfg.halt.max_steps == 5
    assert not hasattr(cfg.halt, "loss_weight")  # a setting ACT never used is not carried over
    assert cfg.optim.kind == "adam_atan2" and (cfg.optim.a, cfg.optim.b) == (1.27, 1.0)  # the constant of the time
    assert (cfg.optim.beta2, cfg.optim.weight_decay) == (0.99, 0.3)
    assert cfg.estimator.name == "trm"
    cfg = from_dict(_legacy(base, halt_kind="q_halt", optimizer="adamw", estimator="implicit",
                            estimator_tol=1e-3, estimator_max_iter=7))
    assert cfg.estimator.name == "implicit" and (cfg.estimator.tol, cfg.estimator.max_iter) == (1e-3, 7)
    assert (cfg.estimator.adjoint_tol, cfg.estimator.adjoint_max_iter) == (1e-3, 7)  # both solves, as then
    assert cfg.optim.kind == "adamw" and cfg.halt.loss_weight == 0.5
    cfg = from_dict(_legacy(base, halt_kind="q_halt", optimizer="adamw", estimator="truncated", estimator_k=3))
    assert cfg.estimator.k == 3


def test_kind_switches_keep_shared_settings_and_refuse_foreign_ones():
    cfg = apply_overrides(get_config("debug"), ["--halt.max_steps=6", "--halt.kind=pondernet"])
    assert cfg.halt.kind == "pondernet" and cfg.halt.max_steps == 6  # kinds switch first
    with pytest.raises(PonderError, match="unknown key 'loss_weight' in section 'halt' \\(kind pondernet\\)"):
        apply_overrides(cfg, ["--halt.loss_weight=1"])
    with pytest.raises(PonderError, match="would do nothing"):
        apply_overrides(get_config("debug"), ["--model.adapter_scale=2"])
    with pytest.raises(PonderError, match="would do nothing"):
        apply_overrides(get_config("debug"), ["--health.ramp=halt_weight:0.1:0.5"])
    assert apply_overrides(get_config("debug"), ["--optim.kind=adam_atan2"]).optim.weight_decay == 0.1
