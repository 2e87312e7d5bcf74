"""The stability controller's LR policy on scripted events (no training): a backoff is an absolute
LR limit given back over clean windows, a divergence rolls back to the last good snapshot and
remembers a safe LR, and the state survives a resume."""
from types import SimpleNamespace

import pytest
import torch

from ponder.core.errors import PonderError
from ponder.health.config import TrainingHealthConfig
from ponder.health.controller import StabilityController
from ponder.health.events import StepEvent
from ponder.health.monitors import HealthMonitor


class _Log:
    def __init__(self):
        self.records = []

    def write(self, record):
        self.records.append(record)


class _Shard:
    main, rank = True, 0

    @staticmethod
    def broadcast(x):
        return x


class _Objective:
    def commit(self, keep):
        pass


class _Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(3))
        self.head = torch.nn.Parameter(torch.zeros(1))

    def knobs(self):
        return {}


class _Monitor:
    """Stands in for the HealthMonitor: hands the controller scripted events."""

    max_norm = 3.0

    def __init__(self):
        self.queue = []
        self.acc_ema, self.acc_best, self.loss_ema, self.acc_steps = 0.2, 0.7, 1.5, 50

    def take_events(self):
        out, self.queue = self.queue, []
        return out

    restart_running_means = HealthMonitor.restart_running_means


class _Run:
    def __init__(self, run_dir):
        self.run_dir, self.log, self.shard, self.ema = run_dir, _Log(), _Shard(), None
        self.cfg = SimpleNamespace(halt=SimpleNamespace(max_steps=4))
        self.model, self.objective = _Model(), _Objective()
        self.optimizer = torch.optim.SGD([{"params": [self.model.w], "lr_scale": 1.0},
                                          {"params": [self.model.head], "lr_scale": 0.1}], lr=1.0)


def _drive(tmp_path, schedule, events, steps, **cfg):
    """Runs `steps` steps: the loop's scheduled LR (schedule(step) x lr_scale), the controller's
    step start, a recorded applied LR, the scripted events of that step, the controller's step end.
    Before each step the weight w is set to the step index, so a rollback's target is visible."""
    c = TrainingHealthConfig(controller=True, window=5, **cfg)
    mon = _Monitor()
    ctrl = StabilityController(c, mon)
    run = _Run(tmp_path)
    ctrl.on_train_start(run)
    lrs, cleared = {}, set()
    for step in range(steps):
        for g in run.optimizer.param_groups:
            g["lr"] = schedule(step) * g["lr_scale"]
        ctrl.on_step_start(run, step)
        lrs[step + 1] = (run.optimizer.param_groups[0]["lr"], run.optimizer.param_groups[1]["lr"])
        if mon.acc_ema is None:
            cleared.add(step + 1)
        mon.acc_ema = 0.5  # what the monitor's step end would do
        with torch.no_grad():
            run.model.w.fill_(step + 1)
        mon.queue.append(events.get(step + 1, StepEvent(step=step + 1)))
        ctrl.on_step_end(run, {"step": step + 1})
    actions = [r for r in run.log.records if r["kind"] == "action"]
    mon.cleared = cleared
    return ctrl, run, mon, lrs, actions


def test_a_backoff_is_given_back_over_clean_windows_and_ends_on_the_schedule(tmp_path):
    ev = {12: StepEvent(step=12, explosion=50.0)}
    ctrl, run, _, lrs, actions = _drive(tmp_path, lambda s: 0.01, ev, 60)
    assert lrs[15] == (0.01, 0.001)
    # window ending at step 15 backs off: LR 0.005 from step 16; cooldown 2 windows (20, 25: no give-back;
    # the window of 20 counts the cooldown down to 1, 25 to 0 and gives back)
    assert lrs[16][0] == pytest.approx(0.005) and lrs[16][1] == pytest.approx(0.0005)
    assert lrs[21][0] == pytest.approx(0.005)
    k = 2 ** 0.25  # restore_windows=4: four clean windows undo one backoff of 0.5
    for i, step in enumerate((26, 31, 36)):
        assert lrs[step][0] == pytest.approx(0.005 * k ** (i + 1))
    assert lrs[41] == (0.01, 0.001)  # the fourth clean window lifts the limit: back on the schedule
    assert ctrl.lr_limit is None and ctrl.lr_safe is None
    kinds = [(a["step"], a["action"]) for a in actions]
    assert kinds.count((15, "lr_backoff")) == 1 and sum(k == "lr_restore" for _, k in kinds) == 4
    assert "back on its schedule" in actions[-1]["reason"]
    assert all(lrs[s] == (0.01, 0.001) for s in range(41, 61))


def test_the_limit_is_an_lr_not_a_multiplier_so_a_decaying_schedule_is_followed(tmp_path):
    sched = lambda s: 0.01 if s < 15 else 0.004  # noqa: E731  (decays below the limit after the backoff)
    ev = {12: StepEvent(step=12, explosion=50.0)}
    ctrl, _, _, lrs, _ = _drive(tmp_path, sched, ev, 20)
    assert ctrl.lr_limit == pytest.approx(0.005)
    assert lrs[16][0] == pytest.approx(0.004)  # the schedule is below the limit: not 0.5 x 0.004
    sched2 = lambda s: 0.01 if s < 15 else 0.008  # noqa: E731
    _, _, _, lrs2, _ = _drive(tmp_path / "b", sched2, ev, 20)
    assert lrs2[16][0] == pytest.approx(0.005)


def test_a_divergence_rolls_back_and_the_lr_stays_below_the_level_that_failed(tmp_path):
    # steps 1-20 clean (snapshots after each window; the last one at step 20), then the accuracy
    # EMA falls 30 points below its best for two windows (21-30): a divergence
    drop = {s: StepEvent(step=s, acc_drop=(0.4, 0.7)) for s in range(21, 31)}
    ctrl, run, mon, lrs, actions = _drive(tmp_path, lambda s: 0.01, drop, 80, rollback_drop=0.15, rollback_lr=0.5)
    kinds = [(a["step"], a["action"]) for a in actions]
    assert kinds[:2] == [(25, "lr_backoff"), (25, "pause")]  # first window: a soft backoff
    rollback = next(a for a in actions if a["action"] == "rollback")
    assert rollback["step"] == 30 and rollback["detail"]["to_step"] == 20
    assert "accuracy EMA 0.400 is 0.300 below its best 0.700" in rollback["reason"]
    # the weights are the snapshot's (w was step 20's), set back before step 31 fills it again
    assert run.model.w.detach().tolist() == [80.0] * 3  # (overwritten by the scripted loop since)
    # the safe level: half the highest LR used since the good snapshot (0.01), not half the backed-off 0.005
    assert rollback["detail"]["lr_safe"] == pytest.approx(0.005)
    assert ctrl.lr_safe == pytest.approx(0.005)
    assert all(lrs[s][0] == pytest.approx(0.005) for s in range(31, 81))  # never given back above it
    assert lrs[31][1] == pytest.approx(0.0005)  # a group's lr_scale is kept
    # the running means restart once the carry has refilled: cleared at the start of halt.max_steps = 4 steps
    assert mon.cleared == {31, 32, 33, 34}
    assert mon.acc_best == 0.7  # the best stays: the restored weights reached it
    assert not any(a["action"] == "lr_restore" and a["step"] > 30 for a in actions)


def test_the_rollback_restores_the_snapshot_weights(tmp_path):
    drop = {s: StepEvent(step=s, acc_drop=(0.4, 0.7)) for s in range(21, 31)}
    seen = {}

    class _Spy(StabilityController):
        def _rollback(self, step, causes, reason):
            done = super()._rollback(step, causes, reason)
            seen[step] = self.run.model.w.detach().clone()
            return done

    c = TrainingHealthConfig(controller=True, window=5)
    mon = _Monitor()
    ctrl = _Spy(c, mon)
    run = _Run(tmp_path)
    ctrl.on_train_start(run)
    for step in range(30):
        for g in run.optimizer.param_groups:
            g["lr"] = 0.01 * g["lr_scale"]
        ctrl.on_step_start(run, step)
        with torch.no_grad():
            run.model.w.fill_(step + 1)
        mon.queue.append(drop.get(step + 1, StepEvent(step=step + 1)))
        ctrl.on_step_end(run, {"step": step + 1})
    assert seen[30].tolist() == [20.0] * 3
    assert sorted(p.name for p in (tmp_path / "health").glob("*.pt")) == ["good-step-0000015.pt",
                                                                         "good-step-0000020.pt"]


def test_a_small_drop_only_backs_off_and_rollback_drop_zero_never_rolls_back(tmp_path):
    small = {s: StepEvent(step=s, acc_drop=(0.6, 0.7)) for s in range(21, 41)}  # 10 points: below 0.15
    _, _, _, _, actions = _drive(tmp_path, lambda s: 0.01, small, 45)
    assert not any(a["action"] == "rollback" for a in actions)
    assert any(a["action"] == "lr_backoff" for a in actions)
    big = {s: StepEvent(step=s, acc_drop=(0.1, 0.7)) for s in range(21, 41)}
    _, _, _, _, actions = _drive(tmp_path / "off", lambda s: 0.01, big, 45, rollback_drop=0.0)
    assert not any(a["action"] == "rollback" for a in actions)


def test_lr_state_resumes_and_an_old_multiplier_state_is_refused(tmp_path):
    drop = {s: StepEvent(step=s, acc_drop=(0.4, 0.7)) for s in range(21, 31)}
    ctrl, *_ = _drive(tmp_path, lambda s: 0.01, drop, 32, rollback_lr=0.5)
    state = ctrl.state_dict()
    fresh = StabilityController(TrainingHealthConfig(controller=True, window=5), _Monitor())
    fresh.load_state_dict(state)
    assert (fresh.lr_limit, fresh.lr_safe, fresh.peak_lr) == (ctrl.lr_limit, ctrl.lr_safe, ctrl.peak_lr)
    assert ctrl.lr_safe == pytest.approx(0.005) and ctrl.peak_lr == pytest.approx(0.005)  # steps 31-32
    old = {k: v for k, v in state.items() if k not in ("lr_limit", "lr_safe", "peak_lr")}
    fresh.load_state_dict({**old, "lr_mult": 1.0})  # nothing was held down: loads
    assert fresh.lr_limit is None and fresh.lr_safe is None
    with pytest.raises(PonderError, match="LR multiplier"):
        fresh.load_state_dict({**old, "lr_mult": 0.25})


def test_trouble_at_the_safe_level_lowers_it(tmp_path):
    ev = {s: StepEvent(step=s, acc_drop=(0.4, 0.7)) for s in range(21, 31)}  # divergence: rollback at 30
    ev.update({s: StepEvent(step=s, acc_drop=(0.62, 0.7)) for s in range(41, 46)})  # 8 points: a backoff at 45
    ev.update({s: StepEvent(step=s, acc_drop=(0.3, 0.7)) for s in range(61, 71)})  # backoff at 65, rollback at 70
    ctrl, _, _, lrs, actions = _drive(tmp_path, lambda s: 0.01, ev, 80, rollback_lr=0.5)
    rollbacks = [a for a in actions if a["action"] == "rollback"]
    assert [(a["step"], a["detail"]["to_step"]) for a in rollbacks] == [(30, 20), (70, 60)]
    backoffs = [(a["step"], a["detail"]["lr_safe"]) for a in actions if a["action"] == "lr_backoff"]
    assert backoffs[1:] == [(45, pytest.approx(0.0025)), (65, pytest.approx(0.00125))]
    assert all(lrs[s][0] == pytest.approx(0.005) for s in range(31, 46))
    assert all(lrs[s][0] == pytest.approx(0.0025) for s in range(46, 66))  # never given back above it
    assert all(lrs[s][0] == pytest.approx(0.00125) for s in range(66, 71))
    # the second rollback: the LR that failed is the safe level 0.00125 (below the 0.0025 used since the
    # snapshot at 60), halved
    assert rollbacks[1]["detail"]["lr_safe"] == pytest.approx(0.000625) and ctrl.lr_safe == pytest.approx(0.000625)
    assert all(lrs[s][0] == pytest.approx(0.000625) for s in range(71, 81))


def test_no_snapshot_is_taken_before_the_accuracy_is_judged_again_after_a_rollback(tmp_path):
    # windows 35-45 after the rollback at 30 are quiet only because the accuracy is not judged yet
    # (refill 4 + EMA warm-up 10 + a window of 5 = 19 steps): a second divergence at 41-50 must
    # go back to the snapshot of step 20 again, not to one taken at 35 or 40
    ev = {s: StepEvent(step=s, acc_drop=(0.4, 0.7)) for s in [*range(21, 31), *range(41, 51)]}
    _, _, _, lrs, actions = _drive(tmp_path, lambda s: 0.01, ev, 60, rollback_lr=0.5)
    rollbacks = [(a["step"], a["detail"]["to_step"]) for a in actions if a["action"] == "rollback"]
    assert rollbacks == [(30, 20), (50, 20)]
    # the backoff at 45 lowered the safe level 0.005 to 0.0025, which failed too: the rollback halves it
    assert lrs[51][0] == pytest.approx(0.00125)
    # windows 55 and 60 are quiet but still within the 19 settling steps after the rollback at 50
    assert sorted(p.name for p in (tmp_path / "health").glob("*.pt")) == ["good-step-0000015.pt",
                                                                         "good-step-0000020.pt"]


def test_a_shrinking_drop_is_a_recovery_and_backs_off_nothing(tmp_path):
    # the fall below the best: 10 points (21-25), then 8, 6 (recovering), then 9 (worse again)
    falls = {25: 0.10, 30: 0.08, 35: 0.06, 40: 0.09}
    ev = {s: StepEvent(step=s, acc_drop=(0.7 - falls[w], 0.7)) for w in falls for s in range(w - 4, w + 1)}
    _, _, _, lrs, actions = _drive(tmp_path, lambda s: 0.01, ev, 45, cooldown_windows=0)
    backoffs = [a["step"] for a in actions if a["action"] == "lr_backoff"]
    assert backoffs == [25, 40]  # not at 30 or 35, where the fall shrank
    assert "recovering: 0.100 below at the last window" in next(a["reason"] for a in actions if a["step"] == 30)
    assert all(lrs[s][0] == pytest.approx(0.005) for s in range(26, 41))  # no give-back: no clean window
    assert lrs[41][0] == pytest.approx(0.0025)


def test_a_critical_adapter_norm_backs_off_only_when_it_is_higher_than_one_answered(tmp_path):
    norms = {15: 10.0, 25: 9.5, 35: 12.0}  # critical level: 3 x max_norm 3 = 9
    ev = {s: StepEvent(step=s, norm_level="critical", norm_max=norms[w]) for w in norms for s in range(w - 4, w + 1)}
    _, _, _, lrs, actions = _drive(tmp_path, lambda s: 0.01, ev, 40, cooldown_windows=0)
    assert [a["step"] for a in actions if a["action"] == "lr_backoff"] == [15, 35]  # 9.5 < 10: not at 25
    assert lrs[16][0] == pytest.approx(0.005) and lrs[36][0] == pytest.approx(0.5 * lrs[35][0])
