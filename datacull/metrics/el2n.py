"""EL2N, the error L2 norm early in training (Paul, Ganguli, Dziugaite, "Deep learning on a data
diet: finding important examples early in training", NeurIPS 2021).

    el2n(x, y) = || softmax(f(x)) - onehot(y) ||_2

read at epoch `metric.el2n.epoch` (1-based) of `metric.el2n.runs` independently initialised runs
and averaged over them (the paper: 10 runs, epoch ~20 of 200 on CIFAR-10). The value is the one
the trainer's recorder took from that epoch's training forward pass (train mode, augmented
input; see datacull/training/recorder.py), so it costs nothing beyond the shared runs. High = hard.
"""
from __future__ import annotations

import numpy as np
from omegaconf import DictConfig

from datacull.metrics.context import ScoreContext
from datacull.metrics.registry import register_metric
from datacull.training.dynamics import check_epoch, recorded_runs, run_count


@register_metric("el2n", "error L2 norm ||softmax - onehot|| early in training, averaged over runs",
                 needs="training", requires_labels=True, citation="Paul, Ganguli, Dziugaite 2021")
def el2n(ctx: ScoreContext, params: DictConfig) -> np.ndarray:
    """Mean over runs of the recorded EL2N at epoch `metric.el2n.epoch`."""
    ctx.require_labels("el2n")
    epoch = check_epoch(int(params.get("epoch", 2)), int(ctx.cfg.train.epochs), "el2n")
    runs = recorded_runs(ctx, "el2n", run_count(params, "el2n"))
    return np.mean([np.asarray(r.recorder.field("el2n", epoch - 1), dtype=np.float64) for r in runs], axis=0)
