"""The decisive experiment (ponder.experiments.equilibrium) on a tiny configuration: same starting
weights for every method, the measurements it reports, and the report files."""
import json

import pytest
import torch

from ponder.cli import main
from ponder.core.errors import PonderError
from ponder.experiments.equilibrium import (METHODS, DecisiveConfig, FixedPointNet, make_task, measure, run_decisive,
                                            summarize, train_one, verdict, write_report)

TINY = dict(d=8, d_in=3, d_out=2, n_train=64, n_val=32, batch_size=32, train_steps=6, record_every=3, rho_iters=30,
            solve_max_iter=200)


def test_task_is_the_teachers_equilibrium_and_standardised():
    cfg = DecisiveConfig(**TINY)
    data = make_task(cfg)
    assert data["x_train"].shape == (64, 3) and data["y_val"].shape == (32, 2)
    y = torch.cat([data["y_train"], data["y_val"]])
    assert torch.allclose(y.mean(0), torch.zeros(2, dtype=y.dtype), atol=1e-9)
    assert torch.allclose(y.std(0), torch.ones(2, dtype=y.dtype))
    assert data["teacher_residual_max"] < 1e-8
    assert torch.equal(make_task(cfg)["x_val"], data["x_val"])  # deterministic


def test_measure_on_a_linear_regime_model_matches_closed_forms():
    """With tiny weights tanh is nearly linear: rho at z_T ~ rho(W), and after many steps the
    deployed loss equals the equilibrium loss."""
    cfg = DecisiveConfig(**{**TINY, "deployed_steps": 60})
    data = make_task(cfg)
    model = FixedPointNet(8, 3, 2, init_scale=0.5, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.U.mul_(1e-3)
    m = measure(model, data["x_val"], data["y_val"], cfg, seed=0)
    rho_w = torch.linalg.eigvals(model.W.detach()).abs().max().item()
    assert m["rho_T"] == pytest.approx(rho_w, rel=0.05)
    assert m["val_loss_T"] == pytest.approx(m["val_loss_eq"], rel=1e-6)
    assert m["rel_residual_T"] < 1e-6


def test_methods_start_from_the_same_weights_and_agree_when_converged():
    """A contractive start and a long deployed horizon: z_T = z*, so BPTT and the equilibrium
    gradient are the same gradient and the two trainings stay together."""
    cfg = DecisiveConfig(**{**TINY, "init_scale": 0.3, "deployed_steps": 40})
    data = make_task(cfg)
    init = FixedPointNet(8, 3, 2, init_scale=0.3, generator=torch.Generator().manual_seed(1))
    a = train_one("bptt", init, data, cfg, seed=1)
    b = train_one("implicit", init, data, cfg, seed=1)
    assert a[0] == b[0]  # identical starting weights, identical first measurement
    assert [r["step"] for r in a] == [0, 3, 6]
    assert a[-1]["val_loss_T"] == pytest.approx(b[-1]["val_loss_T"], rel=1e-3)
    assert a[-1]["val_loss_T"] < a[0]["val_loss_T"]
    with pytest.raises(PonderError, match="unknown"):
        train_one("nope", init, data, cfg, seed=1)


def test_homeostat_pushes_rho_down_against_plain_implicit():
    cfg = DecisiveConfig(**{**TINY, "init_scale": 1.5, "homeostat_weight": 10.0, "homeostat_rho": 0.3, "lr": 3e-2,
                            "train_steps": 10, "record_every": 10})
    data = make_task(cfg)
    init = FixedPointNet(8, 3, 2, init_scale=1.5, generator=torch.Generator().manual_seed(2))
    plain = train_one("implicit", init, data, cfg, seed=2)
    held = train_one("implicit+homeostat", init, data, cfg, seed=2)
    assert held[-1]["rho_T"] < 0.5 * plain[-1]["rho_T"]  # measured 0.15 vs 0.75


def test_report_files_and_verdict(tmp_path):
    result = run_decisive(DecisiveConfig(**TINY), [0, 1], progress=False)
    assert [(r["seed"], r["method"]) for r in result["runs"]] == [(s, m) for s in (0, 1) for m in METHODS]
    s = result["summary"]
    assert set(s["methods"]) == set(METHODS) and s["rho_above_bptt"]["implicit"]["seeds"] == 2
    text = verdict(s)
    for m in METHODS:
        assert f"{m} {s['methods'][m]['first']['rho_T']:.3f} -> {s['methods'][m]['last']['rho_T']:.3f}" in text
    paths = write_report(result, tmp_path)
    assert paths["png"].stat().st_size > 10_000
    assert json.loads(paths["json"].read_text())["seeds"] == [0, 1]
    assert "![decisive experiment](decisive.png)" in paths["md"].read_text()


def test_verdict_reads_the_numbers():
    def runs(rho_end):
        return [{"seed": 0, "method": m, "history": [{"step": 0, "rho_T": 0.5, "val_loss_T": 1.0},
                                                      {"step": 1, "rho_T": r, "val_loss_T": r}]}
                for m, r in zip(METHODS, rho_end)]

    text = verdict(summarize(runs([0.7, 0.995, 0.6])))
    assert "implicit ends closest to rho = 1" in text
    assert "reached rho >= 0.99: bptt 0 of 1, implicit 1 of 1" in text
    assert "Lowest held-out loss at the deployed T: implicit+homeostat (0.6000)" in text
    assert "no method drifts" in verdict(summarize(runs([0.7, 0.71, 0.7])))
    assert summarize(runs([0.7, 0.95, 0.6]))["methods"]["bptt"]["max_rho_T"] == 0.7


def test_cli_decisive_rejects_bad_input(capsys):
    assert main(["diagnose", "decisive", "--seeds", "0"]) == 2
    assert main(["diagnose", "decisive", "debug"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("ponder: error:") for line in err)


def test_cli_decisive_writes_the_report(tmp_path, capsys):
    assert main(["diagnose", "decisive", "--seeds", "1", "--train-steps", "2", "--steps", "3", "--out", str(tmp_path),
                 "--quiet"]) == 0
    assert "deployed T=3" in capsys.readouterr().out
    assert json.loads((tmp_path / "report.json").read_text())["config"]["train_steps"] == 2
    assert (tmp_path / "decisive.png").exists()
