"""benchmarks/gpu_smoke.py without a GPU: its CPU mode trains every preset family for two steps
through the same code a GPU run takes (before: the first step of every preset crashed, as the
health monitors' on_train_start was never called, and the cell and language-model presets crashed
counting FLOPs); FLOPs are counted from what the objective ran; the card table tells SXM, PCIe
and NVL apart."""
import pytest

from benchmarks import gpu_smoke


def test_cpu_mode_runs_every_family(capsys):
    assert gpu_smoke.main(["--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split() for line in lines[2:] if line.split() and line.split()[0] in
            gpu_smoke.FAMILIES}
    assert set(rows) == set(gpu_smoke.FAMILIES)
    assert all(float(r[2]) > 0 and float(r[5]) > 0 for r in rows.values())  # step ms, GFLOP per step


def test_flops_are_counted_from_what_the_objective_ran():
    """A trajectory objective (PonderNet: M steps from fresh) runs M ACT steps per optimizer step,
    deep supervision (Q-halt) one: the count says so (the analytic count of one ACT step made a
    trajectory preset's TFLOP/s M times too low)."""
    def flops(*overrides):
        return gpu_smoke.measure("parity64", device="cpu", steps=1, warmup=1, compiled=False, small=True,
                                 overrides=overrides)["flops"]

    m = 6  # after the CPU mode's own max_steps=2
    trajectory = flops("--halt.kind=pondernet", f"--halt.max_steps={m}")
    deep = flops("--halt.kind=q_halt", f"--halt.max_steps={m}")
    assert 0.8 * m < trajectory / deep < 1.2 * m


@pytest.mark.parametrize("name,label,peak", [
    ("NVIDIA H100 80GB HBM3", "H100 SXM", 989.4), ("NVIDIA H100 PCIe", "H100 PCIe", 756.5),
    ("NVIDIA H100 NVL", "H100 NVL", 835.5), ("NVIDIA H200", "H200 SXM", 989.4), ("NVIDIA H200 NVL", "H200 NVL", 835.5),
    ("NVIDIA A100-SXM4-80GB", "A100 SXM", 312.0), ("NVIDIA A100 80GB PCIe", "A100 PCIe", 312.0),
    ("NVIDIA L4", "L4", 121.0), ("NVIDIA L40S", "L40S", 362.1), ("NVIDIA A10", "A10", 125.0)])
def test_the_card_table_tells_the_forms_apart(name, label, peak):
    assert gpu_smoke.card(name) == (label, peak)


def test_an_unknown_card_asks_for_its_peak():
    assert gpu_smoke.card("Some Future GPU") == ("Some Future GPU", None)
    assert gpu_smoke.card("Some Future GPU", 500.0) == ("Some Future GPU", 500.0)
