"""Training monitors (callbacks). Here: the halting-health monitor; see ponder.halting_health
for the verdicts it runs."""
from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import Optional

from tqdm import tqdm

from ponder.callbacks import MetricsLog
from ponder.checkpoint import atomic_write_text
from ponder.halting_health import HealthConfig, Verdict, check_health, format_health


class HaltingHealthMonitor:
    """Training callback: re-checks halting health after every evaluation and reports at the end.

    It reads the run's records from RUN_DIR/metrics.jsonl (the eval record is written before
    `on_eval_end` runs), prints one `tqdm.write` line when verdicts newly flag, and at
    `on_train_end` writes RUN_DIR/halting_health.md and halting_health.json. Its state (which
    verdicts are flagged, and the step each first flagged at) is saved in checkpoints.
    """

    def __init__(self, cfg: Optional[HealthConfig] = None, *, verbose: bool = True):
        self.cfg = cfg or HealthConfig()
        self.cfg.validate()
        self.verbose = verbose
        self.flagged: set[str] = set()
        self.first_flagged: dict[str, int] = {}
        self.last: list[Verdict] = []

    def _config_for(self, run: dict) -> HealthConfig:
        if self.cfg.max_steps is not None:
            return self.cfg
        m = getattr(getattr(run.get("config"), "halt", None), "max_steps", None)
        return replace(self.cfg, max_steps=m) if isinstance(m, int) else self.cfg

    def _check(self, run: dict) -> list[Verdict]:
        return check_health(MetricsLog(run["run_dir"]).records(), self._config_for(run))

    def on_eval_end(self, run: dict, record: dict) -> None:
        self.last = self._check(run)
        now = {v.name for v in self.last if v.flagged}
        new = [v for v in self.last if v.flagged and v.name not in self.flagged]
        step = record.get("step")
        for v in new:
            if isinstance(step, int):
                self.first_flagged.setdefault(v.name, step)
        if new and self.verbose:
            tqdm.write(f"halting health at step {step}: " + "; ".join(f"{v.name} FLAGGED: {v.reason}" for v in new))
        self.flagged = now

    def on_train_end(self, run: dict) -> None:
        self.last = self._check(run)
        self.flagged = {v.name for v in self.last if v.flagged}
        run_dir = Path(run["run_dir"])
        md = format_health(self.last)
        if self.first_flagged:
            md += "\nFirst flagged during training: " + ", ".join(
                f"{k} at step {s}" for k, s in sorted(self.first_flagged.items(), key=lambda kv: kv[1])) + "\n"
        atomic_write_text(run_dir / "halting_health.md", md)
        payload = {"verdicts": [asdict(v) for v in self.last], "first_flagged": dict(self.first_flagged),
                   "config": asdict(self._config_for(run))}
        atomic_write_text(run_dir / "halting_health.json", json.dumps(payload, indent=2) + "\n")

    def state_dict(self) -> dict:
        return {"flagged": sorted(self.flagged), "first_flagged": dict(self.first_flagged)}

    def load_state_dict(self, state: dict) -> None:
        self.flagged = set(state.get("flagged", []))
        self.first_flagged = {k: int(v) for k, v in state.get("first_flagged", {}).items()}
