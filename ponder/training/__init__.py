"""Training: everything one run's optimizer steps need, given built parts.

The loop (`loop`: `TrainConfig`, `Run`, `train_step`, `train`), what one optimizer step computes
(`objectives`, with the deep-supervision `carry` and the estimators' hook `estimator_hook`), the
update rules (`optim`), callbacks and the metrics log, checkpoints, data-parallel shards
(`distributed`), early-exit evaluation (`evaluate`) and threshold calibration (`calibrate`), the
TensorBoard mirror. May import `core`, `models`, `estimators` and `dynamics`; it knows tasks only
through the task protocol of `ponder.core.task`.
"""
