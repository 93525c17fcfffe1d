"""AUM, area under the margin (Pleiss, Zhang, Elenberg, Weinberger, "Identifying mislabeled data
using the area under the margin ranking", NeurIPS 2020).

    margin_t(x, y) = z_y(x) - max_{k != y} z_k(x)        (logits z at epoch t)
    AUM(x, y)      = mean over epochs t of margin_t(x, y)

computed on LOGITS as in the paper (some code uses probabilities), from the margins the trainer's
recorder took in each epoch's training forward pass, averaged over `metric.aum.runs` runs.
Low / negative AUM = hard or mislabelled, so the column is DIFFICULTY = -AUM.
"""
from __future__ import annotations

import numpy as np
from omegaconf import DictConfig

from datacull.metrics.context import ScoreContext
from datacull.metrics.registry import register_metric
from datacull.training.dynamics import recorded_runs, run_count


@register_metric("aum", "minus the area under the logit margin over training (low AUM = hard)",
                 needs="training", requires_labels=True, citation="Pleiss et al. 2020")
def aum(ctx: ScoreContext, params: DictConfig) -> np.ndarray:
    """-AUM: minus the mean over epochs (and runs) of the recorded logit margin."""
    runs = recorded_runs(ctx, "aum", run_count(params, "aum"))
    return -np.mean([np.asarray(r.recorder.field("margin"), dtype=np.float64).mean(axis=0) for r in runs], axis=0)
