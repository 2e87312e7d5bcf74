"""`ponder diagnose gradients`: the memory measurement, the comparison on a problem with a known
answer, and the command line."""
import json

import pytest
import torch

from ponder.cli import main
from ponder.estimators import BPTT, Truncated
from ponder.experiments.diagnose import diagnose_problem, format_table, peak_torch_bytes


def test_peak_torch_bytes_sees_a_known_allocation_and_its_release():
    def hold():
        a = torch.empty(1 << 20)  # 4 MiB, alive at the end
        b = torch.empty(1 << 19)  # 2 MiB, freed before the 1 MiB below is made
        del b
        c = torch.empty(1 << 18)
        return a, c

    _, peak = peak_torch_bytes(hold)
    assert peak == (1 << 22) + (1 << 21)  # 4 + 2 MiB live at once, never 7


def test_bptt_memory_grows_per_step_by_the_saved_activation():
    """tanh(z W) keeps one (b, d) output per step for the backward pass."""
    W = torch.randn(64, 64, requires_grad=True) * 0.1
    W = W.detach().requires_grad_(True)
    z0 = torch.zeros(32, 64)

    def peak(T):
        return peak_torch_bytes(lambda: BPTT().estimate(lambda z, x: torch.tanh(z @ W + x), z0, z0, lambda z: z.sum(),
                                                        steps=T, params=[W]))[1]

    per_step = (peak(40) - peak(8)) / 32
    assert per_step == pytest.approx(32 * 64 * 4, rel=0.05)
    p1, p2 = (peak_torch_bytes(lambda T=T: Truncated(k=1).estimate(lambda z, x: torch.tanh(z @ W + x), z0, z0,
                                                                   lambda z: z.sum(), steps=T, params=[W]))[1]
              for T in (8, 40))
    assert p1 == p2  # truncated-1 keeps one step whatever T


def test_linear_contraction_agrees_with_the_exact_implicit_gradient():
    """z <- A z + x with |A| < 1 and L = 1/2 |z - t|^2: BPTT over a long horizon and the tight
    implicit solve both give dL/dA at z* = (I - A)^-1 x, i.e. (I - A)^-T (z* - t) z*^T."""
    torch.manual_seed(0)
    d = 6
    A0 = torch.randn(d, d)
    A = (0.5 * A0 / torch.linalg.matrix_norm(A0, 2)).requires_grad_(True)
    x, t = torch.randn(4, d), torch.randn(4, d)
    step = lambda z, x: z @ A.T + x  # noqa: E731
    loss = lambda z: 0.5 * ((z - t) ** 2).sum()  # noqa: E731
    diag = diagnose_problem(step, torch.zeros(4, d), x, loss, [A], ["A"], steps=3, ref_steps=80,
                            estimators={"bptt": BPTT(), "truncated k=1": Truncated(k=1)})
    rows = {r["estimator"]: r for r in diag.rows}
    ref = rows["reference: bptt (T=80)"]["implicit_tight"]
    assert ref["cosine"] == pytest.approx(1.0, abs=1e-5) and ref["norm_ratio"] == pytest.approx(1.0, abs=1e-4)
    assert rows["bptt"]["bptt_long"]["cosine"] < 0.999  # 3 steps are far from z*: a different gradient
    assert rows["truncated k=1"]["bptt_long"]["per_tensor"]["A"]["cosine"] == rows["truncated k=1"]["bptt_long"]["cosine"]
    # exact gradient by hand
    with torch.no_grad():
        I = torch.eye(d)
        zs = torch.linalg.solve(I - A, x.T).T
        lam = torch.linalg.solve((I - A).T, (zs - t).T).T
        exact = lam.T @ zs
    from ponder.estimators import Implicit

    g = Implicit(solver="fixed_point", tol=1e-7, max_iter=200, adjoint="gmres", adjoint_tol=1e-7).estimate(
        step, torch.zeros(4, d), x, loss, steps=3, params=[A]).grads[0]
    assert torch.allclose(g, exact, rtol=1e-4, atol=1e-5)
    assert diag.state["rho_z_star"] == pytest.approx(float(torch.linalg.eigvals(A.detach()).abs().max()), abs=0.03)
    assert diag.state["residual_rel_z_star"] < 1e-5 < diag.state["residual_rel_z_T"]
    assert "truncated k=1" in format_table({"source": "linear", **diag.as_dict()})


def test_cli_diagnose_gradients_on_a_preset(tmp_path, capsys):
    out = tmp_path / "d.json"
    assert main(["diagnose", "gradients", "debug", "--steps", "2", "--ref-steps", "4", "--batch", "4", "--max-iter", "5", "--ref-max-iter", "10",
                 "--rtrl-max-params", "1000", "--json", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "cos(BPTT)" in text and "spectral radius" in text
    result = json.loads(out.read_text())
    names = {r["name"] for r in result["rows"]}
    assert {"bptt", "truncated", "phantom", "implicit", "forward_gradient", "rtrl"} <= names
    by_name = {r["name"]: r for r in result["rows"]}
    assert "skipped" not in by_name["forward_gradient"]  # attention under forward mode: plain ops
    assert "skipped" in by_name["rtrl"]  # above --rtrl-max-params
    for r in result["rows"]:
        if "skipped" not in r:
            assert r["peak_bytes"] > 0 and r["seconds"] > 0 and -1.0001 <= r["bptt_long"]["cosine"] <= 1.0001
    assert result["rows"][0]["bptt_long"]["cosine"] == pytest.approx(1.0)


@pytest.mark.parametrize("argv,message", [
    (["diagnose", "gradients", "nopreset"], "neither a run directory nor a preset"),
    (["diagnose", "gradients", "runs/missing-run"], "no such run directory"),
    (["diagnose", "gradients", "debug", "--batch", "0"], "--batch must be >= 1"),
])
def test_cli_diagnose_errors_are_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ponder: error:") and message in err[0]
