"""Forgetting events (Toneva, Sordoni, des Combes, Trischler, Bengio, Gordon, "An empirical study
of example forgetting during deep neural network learning", ICLR 2019).

A forgetting event is a transition from correctly to incorrectly classified between two
consecutive presentations of an example (here: one presentation per epoch, classified in the
training forward pass as in the paper). An example that is never classified correctly gets the
maximum count, the number of presentations (epochs), as the reference code does
(github.com/mtoneva/example_forgetting). The count is averaged over `metric.forgetting.runs`
runs. Low = unforgettable = easy; high = hard.
"""
from __future__ import annotations

import numpy as np
from omegaconf import DictConfig

from datacull.metrics.context import ScoreContext
from datacull.metrics.registry import register_metric
from datacull.training.dynamics import recorded_runs, run_count


def forgetting_counts(correct: np.ndarray) -> np.ndarray:
    """Forgetting events per column of a (presentations, N) correctness matrix; never learned -> presentations."""
    correct = np.asarray(correct, dtype=bool)
    events = (correct[:-1] & ~correct[1:]).sum(axis=0).astype(np.float64)
    never_learned = ~correct.any(axis=0)
    events[never_learned] = correct.shape[0]
    return events


@register_metric("forgetting", "correct -> incorrect transitions during training (never learned = max)",
                 needs="training", requires_labels=True, citation="Toneva et al. 2019")
def forgetting(ctx: ScoreContext, params: DictConfig) -> np.ndarray:
    """Mean over runs of the number of forgetting events over all recorded epochs."""
    runs = recorded_runs(ctx, "forgetting", run_count(params, "forgetting"))
    return np.mean([forgetting_counts(r.recorder.field("correct")) for r in runs], axis=0)
