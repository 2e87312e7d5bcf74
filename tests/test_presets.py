"""Presets: every one builds a valid config, and DESIGN.md's table of optimizer constants is true."""
import re
from pathlib import Path

import pytest

from ponder.presets import PRESETS, get_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", PRESETS.names())
def test_every_preset_is_a_valid_config(name):
    cfg = get_config(name)
    cfg.validate()
    assert cfg.preset == name


def _design_rows() -> dict[str, dict]:
    text = (ROOT / "DESIGN.md").read_text().split("## Optimizer constants of the presets", 1)[1]
    rows = {}
    for line in text.splitlines()[3:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        for name in (n.strip() for n in cells[0].split(",")):
            rows[name] = {"kind": cells[1], "betas": cells[2], "wd": cells[3], "other": cells[4], "lr": cells[5]}
    return rows


def test_design_table_of_optimizer_constants_matches_the_presets():
    rows = _design_rows()
    for name in PRESETS.names():
        row = rows.get(name) or next(r for k, r in rows.items() if k.endswith("*") and name.startswith(k[:-1]))
        o = get_config(name).optim
        assert row["kind"] == o.kind, name
        assert row["betas"] == f"{o.beta1:g}, {o.beta2:g}", name
        assert float(row["wd"]) == o.weight_decay, name
        if o.kind == "adam_atan2":
            assert re.match(rf"a = {o.a:g}, b = {o.b:g}\b", row["other"]), name
        else:
            assert float(row["other"].split()[1]) == o.eps, name
        if row["lr"] != "preset's own":
            assert float(row["lr"]) == get_config(name).train.lr, name
