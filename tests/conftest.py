import os

import pytest
import torch

torch.set_num_threads(1)  # deterministic, and leaves a core free on small machines


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path_factory, monkeypatch):
    """Generated data sets go to one cache per test session, never the user's cache."""
    if "PONDER_CACHE_DIR" not in os.environ or os.environ.get("PONDER_TEST_SHARED_CACHE") != "1":
        monkeypatch.setenv("PONDER_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "ponder-cache"))


# Lines a test wants in the run's output even when it passes (e.g. the fuzz tests' counts):
# append to SUMMARY; they are printed in pytest's terminal summary.
SUMMARY: list[str] = []


def pytest_terminal_summary(terminalreporter):
    if SUMMARY:
        terminalreporter.section("counts")
        for line in SUMMARY:
            terminalreporter.write_line(line)
