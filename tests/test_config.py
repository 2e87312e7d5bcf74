import pytest

from ponder.config import apply_overrides, from_dict, load_config, save_config, to_dict
from ponder.errors import PonderError
from ponder.presets import PRESETS, get_config


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
