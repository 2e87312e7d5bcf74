import os

import pytest
import torch
from kinds_support import train_every_kind

torch.set_num_threads(1)  # deterministic, and leaves a core free on small machines


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path_factory, monkeypatch):
    """Generated data sets go to one cache per test session, never the user's cache."""
    if "PONDER_CACHE_DIR" not in os.environ or os.environ.get("PONDER_TEST_SHARED_CACHE") != "1":
        monkeypatch.setenv("PONDER_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "ponder-cache"))


@pytest.fixture(scope="session")
def runs(tmp_path_factory) -> dict:
    """{kind: {"finished": RUN_DIR, "half": RUN_DIR}} for every preset family (tests/kinds_support.py),
    and "corpus": the text file the language models train on. Trained once per session."""
    return train_every_kind(tmp_path_factory.mktemp("kinds"))


# Lines a test wants in the run's output even when it passes (e.g. the fuzz tests' counts):
# append to SUMMARY; they are printed in pytest's terminal summary.
SUMMARY: list[str] = []


def pytest_terminal_summary(terminalreporter):
    if SUMMARY:
        terminalreporter.section("counts")
        for line in SUMMARY:
            terminalreporter.write_line(line)
