"""The shared, recorded training runs that the training-dynamics metrics read.

EL2N, forgetting, AUM and ensemble uncertainty ask for runs with seeds `run_seeds(cfg, runs)` on
all scored examples, through `cached_run`, so asking for several of them trains each run once.
"""
from __future__ import annotations

import numpy as np
from omegaconf import DictConfig

from datacull.errors import DatacullError
from datacull.training.trainer import TrainResult, cached_run, run_seeds


def run_count(params: DictConfig, metric: str, default: int = 2) -> int:
    """`metric.<name>.runs`, checked to be a positive integer."""
    runs = int(params.get("runs", default))
    if runs < 1:
        raise DatacullError(f"metric.{metric}.runs must be >= 1, got {runs}")
    return runs


def recorded_runs(ctx, metric: str, runs: int) -> list[TrainResult]:
    """The first `runs` shared runs on `ctx.indices`, trained (with records) if not cached yet.

    Labels are checked first so a metric fails before any training when they are unusable.
    """
    ctx.require_labels(metric)
    results = []
    for seed in run_seeds(ctx.cfg, runs):
        result = cached_run(ctx, seed, record=True)
        if not np.array_equal(result.train_indices, ctx.indices):  # pragma: no cover - guarded by the fingerprint
            raise RuntimeError(f"run {result.run_dir} was trained on other examples")
        results.append(result)
    return results


def check_epoch(epoch: int, total: int, metric: str) -> int:
    """A 1-based epoch in [1, total], or an error naming the metric."""
    if epoch < 1:
        raise DatacullError(f"metric.{metric}.epoch must be >= 1 (1 = the first epoch), got {epoch}")
    if epoch > total:
        raise DatacullError(
            f"metric.{metric}.epoch={epoch} is beyond the run: training lasts train.epochs={total}; "
            f"lower the epoch or raise train.epochs"
        )
    return epoch
