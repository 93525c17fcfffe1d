"""EL2N, the error L2 norm early in training (Paul, Ganguli, Dziugaite, "Deep learning on a data
diet: finding important examples early in training", NeurIPS 2021).

    el2n(x, y) = || softmax(f_w(x)) - onehot(y) ||_2

averaged over `metric.el2n.runs` independently initialised runs (the paper: 10 runs, epoch ~20 of
200 on CIFAR-10). Two sources for f_w, `metric.el2n.source`:

  checkpoint (default, the reference protocol of mansheej/data_diet): w = the weights saved after
      `metric.el2n.epoch` epochs of each shared run (0 = at initialisation: no training at all,
      the same inits as GraNd), evaluated in eval mode (BatchNorm running statistics) on the
      un-augmented training images by `predict_logits`. Cost: the shared runs (which keep that
      epoch's weights, see datacull/training/dynamics.py) plus one inference pass over the scored
      examples per run.
  recorded: the value the trainer's recorder took in the training forward pass of epoch
      `metric.el2n.epoch` (1-based; train-mode BatchNorm, augmented input, weights moving during
      the epoch; see datacull/training/recorder.py). Free once the shared runs exist, but a
      different quantity: it ranks examples differently and agrees less between seeds.

High = hard.
"""
from __future__ import annotations

import numpy as np
import torch
from omegaconf import DictConfig

from datacull.encoders.base import resolve_device
from datacull.errors import DatacullError
from datacull.metrics.context import ScoreContext
from datacull.metrics.registry import register_metric
from datacull.training.dynamics import check_epoch, epoch_models, recorded_runs, run_count
from datacull.training.trainer import predict_logits

SOURCES = ("checkpoint", "recorded")


def el2n_from_logits(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """|| softmax(logits) - onehot(labels) ||_2 per row, in float64."""
    probs = torch.softmax(torch.from_numpy(np.asarray(logits, dtype=np.float64)), dim=1).numpy()
    probs[np.arange(len(labels)), labels] -= 1.0
    return np.linalg.norm(probs, axis=1)


@register_metric("el2n", "error L2 norm ||softmax - onehot|| early in training, averaged over runs",
                 needs="training", requires_labels=True, citation="Paul, Ganguli, Dziugaite 2021")
def el2n(ctx: ScoreContext, params: DictConfig) -> np.ndarray:
    """Mean over runs of the EL2N of the weights after `metric.el2n.epoch` epochs (or the recorded value)."""
    labels = ctx.require_labels("el2n")
    source = str(params.get("source", "checkpoint"))
    if source not in SOURCES:
        raise DatacullError(f"metric.el2n.source must be one of {', '.join(SOURCES)}, got {source!r}")
    runs = run_count(params, "el2n")
    total = int(ctx.cfg.train.epochs)
    if source == "recorded":
        epoch = check_epoch(int(params.get("epoch", 2)), total, "el2n")
        results = recorded_runs(ctx, "el2n", runs)
        return np.mean([np.asarray(r.recorder.field("el2n", epoch - 1), dtype=np.float64) for r in results], axis=0)
    epoch = check_epoch(int(params.get("epoch", 2)), total, "el2n", allow_init=True)
    device = resolve_device(str(ctx.cfg.get("device", "auto")))
    scores = [el2n_from_logits(predict_logits(model, ctx.source, ctx.indices, ctx.cfg), labels)
              for model in epoch_models(ctx, "el2n", runs, epoch, device)]
    return np.mean(scores, axis=0)
