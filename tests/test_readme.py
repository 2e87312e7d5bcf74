"""The README's promises, in spirit: two set-up commands first, the CLI it shows works, and the
files it lists exist."""
import re
import subprocess
from pathlib import Path

from ponder.presets import DEFAULT_PRESET

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_starts_with_the_two_setup_commands():
    first_block = README.split("```")[1]
    commands = [line.split("#")[0].strip() for line in first_block.splitlines()[1:] if line.strip()]
    assert commands == ["make demo", "make test"]


def test_makefile_targets_match_the_readme():
    make = (ROOT / "Makefile").read_text()
    assert re.search(rf"^demo:.*\n\t.*ponder train {DEFAULT_PRESET}", make, re.M)
    assert re.search(r"^test:.*\n\t.*pytest", make, re.M)
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    out = subprocess.run(["make", "-n", "demo", "test"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_files_to_read_first_exist():
    listed = re.findall(r"^\d\. `([^`]+)`", README, re.M)
    assert len(listed) == 5
    assert all((ROOT / f).exists() for f in listed)


MEASURED = re.compile(r"\b\d+\.\d+\s?%|\b\d+(\.\d+)?\s?(ms|min|GFLOP/s)\b|\b\d+\.\d+\s?s\b|\b\d+\.\d+x\b")


def _outside_generated_blocks(text: str) -> str:
    """The text without the blocks a benchmark script writes (<!-- name --> ... <!-- /name -->)."""
    return re.sub(r"<!-- ([\w-]+) -->.*?<!-- /\1 -->", "", text, flags=re.S)


def test_no_hand_typed_measurements_in_readme_and_design():
    """Figures that are measurements (a decimal percentage, a time, a matmul rate, a speed-up) live
    only in blocks that `make bench` writes, or in BENCHMARKS.md."""
    for name in ("README.md", "DESIGN.md"):
        text = _outside_generated_blocks((ROOT / name).read_text())
        found = [m.group(0) for m in MEASURED.finditer(text)]
        assert found == [], f"{name}: {found}"


def test_the_measurement_finder_finds_measurements():
    assert [m.group(0) for m in MEASURED.finditer("took 3.4 min, 99.6% exact, 116 ms, 202 GFLOP/s, 0.96x")] == \
        ["3.4 min", "99.6%", "116 ms", "202 GFLOP/s", "0.96x"]
    assert _outside_generated_blocks("a <!-- x -->\n99.6%\n<!-- /x --> b") == "a  b"
