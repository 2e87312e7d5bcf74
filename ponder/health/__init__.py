"""The health wing: everything that watches a run and acts on what it sees.

- `config`: the sections `health` (training health: monitors and controller) and
  `halting_health` (thresholds of the halting verdicts).
- `events`: typed records that travel monitor -> controller -> report (StepEvent, Action).
- `halting`: verdicts on a learned halting head (drift, collapse, input-agnostic, Q
  miscalibration) and `HaltingMonitor`, the callback that runs them after each evaluation.
- `monitors.HealthMonitor`: cheap per-step training monitors (a callback).
- `controller.StabilityController`: acts on the monitors' events through knobs the model declares.
- `report`: the one health report of a run (RUN_DIR/health.md and health.json, `ponder health`).
- `faults`: fault injectors used by the scenario tests.
"""
from __future__ import annotations

from ponder.health.config import HaltingHealthConfig, TrainingHealthConfig
from ponder.health.controller import StabilityController
from ponder.health.halting import HaltingMonitor
from ponder.health.monitors import HealthMonitor


def build_health_callbacks(cfg) -> list:
    """The run's health callbacks from its Config: the halting monitor (always), the training
    monitors (when `health.monitors` or the controller is on) and the controller."""
    hc: TrainingHealthConfig = cfg.health
    hc.validate()
    callbacks: list = [HaltingMonitor(cfg.halting_health, max_steps=cfg.halt.max_steps)]
    if hc.monitors or hc.controller:
        monitor = HealthMonitor(hc, log_every=cfg.train.log_every, grad_clip=cfg.train.grad_clip)
        callbacks.append(monitor)
        if hc.controller:
            callbacks.append(StabilityController(hc, monitor))
    return callbacks


__all__ = ["HaltingHealthConfig", "TrainingHealthConfig", "build_health_callbacks"]
