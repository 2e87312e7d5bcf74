"""Training health: monitors, the stability controller, fault injection and the health report.

- `config.TrainingHealthConfig`: the `health` config section (thresholds and policy).
- `monitors.HealthMonitor`: cheap per-step monitors (a callback), figures in metrics.jsonl.
- `controller.StabilityController`: acts on them with stated reasons (`Action`s).
- `report.write_health_report`: RUN_DIR/health.md and health.json (`ponder health RUN_DIR`).
- `faults`: fault injectors used by the scenario tests.
"""
from __future__ import annotations

from ponder.health.config import TrainingHealthConfig


def build_health_callbacks(cfg) -> list:
    """The monitors (if `cfg.health.monitors` or the controller is on) and the controller."""
    from ponder.health.controller import StabilityController
    from ponder.health.monitors import HealthMonitor

    hc: TrainingHealthConfig = cfg.health
    hc.validate()
    if not (hc.monitors or hc.controller):
        return []
    monitor = HealthMonitor(hc, log_every=cfg.train.log_every, grad_clip=cfg.train.grad_clip)
    return [monitor, StabilityController(hc, monitor)] if hc.controller else [monitor]


__all__ = ["TrainingHealthConfig", "build_health_callbacks"]
