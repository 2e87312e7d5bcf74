"""`ponder compare PRESET_A PRESET_B` and `ponder generate RUN_DIR --prompt TEXT`."""
from __future__ import annotations

import argparse


def add_lm_parsers(sub: "argparse._SubParsersAction") -> None:
    """Filled in by the language-model module."""
