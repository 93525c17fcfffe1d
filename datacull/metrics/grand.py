"""GraNd, the gradient-norm score (Paul, Ganguli, Dziugaite, "Deep learning on a data diet: finding
important examples early in training", NeurIPS 2021).

    grand(x, y)            = E_w || grad_w CE(f_w(x), y) ||_2          over ALL parameters w
    grand_last_layer(x, y) = E_w || p - onehot(y) || * sqrt(||h||^2 + 1)

with the expectation taken over `metric.<name>.runs` independent initialisations, at
initialisation (`epoch: 0`, the paper's GraNd-at-init) or after `epoch` epochs of the shared
training runs (the same runs as EL2N/forgetting/AUM, seeds `run_seeds(cfg, runs)`, which keep
that epoch's weights: see datacull/training/dynamics.py). The paper averages 10 inits.

`grand` is exact: per-example gradients with torch.func (vmap over grad, `chunk_size` examples at
a time), BatchNorm in eval mode (running statistics; vmap cannot update them, and the paper's
per-example gradient must not depend on the rest of the batch). `grand_last_layer` is the cheaper
closed form of the gradient w.r.t. the classifier only (h = penultimate features; the +1 is the
bias), a known approximation, named apart. Init models take the trainer's input normalisation
(per-channel mean/std of the scored images). High = large gradient = hard.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from omegaconf import DictConfig

from datacull.encoders.base import resolve_device
from datacull.errors import DatacullError
from datacull.metrics.context import ScoreContext
from datacull.metrics.registry import register_metric
from datacull.training.data import input_geometry, iter_images
from datacull.training.dynamics import epoch_models, init_model
from datacull.training.per_example import last_layer_grad_norms, per_example_grad_norms
from datacull.training.trainer import to_input

CITATION = "Paul, Ganguli, Dziugaite 2021"


__all__ = ["grand", "grand_last_layer", "init_model", "mean_over_models", "scoring_models"]


def scoring_models(ctx: ScoreContext, metric: str, params: DictConfig, device: torch.device):
    """Yield the `runs` models to score with: fresh inits (epoch 0) or the shared runs after `epoch`."""
    runs, epoch = int(params.get("runs", 2)), int(params.get("epoch", 0))
    if runs < 1:
        raise DatacullError(f"metric.{metric}.runs must be >= 1, got {runs}")
    if epoch < 0 or epoch > int(ctx.cfg.train.epochs):
        raise DatacullError(f"metric.{metric}.epoch must be in [0, train.epochs={ctx.cfg.train.epochs}] "
                            f"(0 = at initialisation), got {epoch}")
    yield from epoch_models(ctx, metric, runs, epoch, device)


def mean_over_models(ctx: ScoreContext, metric: str, params: DictConfig,
                     norms_fn: Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]) -> np.ndarray:
    """Average over the scoring models of `norms_fn(model, x, y)` on every scored example, batch by batch."""
    labels = ctx.require_labels(metric)
    device = resolve_device(str(ctx.cfg.get("device", "auto")))
    channels, size = input_geometry(ctx.cfg.model, ctx.source)
    batch_size = int(params.get("batch_size", 256))
    if batch_size < 1:
        raise DatacullError(f"metric.{metric}.batch_size must be >= 1, got {batch_size}")
    total = np.zeros(len(ctx.indices), dtype=np.float64)
    count = 0
    for model in scoring_models(ctx, metric, params, device):
        start = 0
        for images, _ in iter_images(ctx.source, ctx.indices, size, channels, batch_size,
                                     int(ctx.cfg.data.get("num_workers", 0) or 0),
                                     str(ctx.cfg.data.get("on_error", "skip")), desc=f"{metric} run {count + 1}"):
            y = torch.from_numpy(labels[start: start + len(images)]).to(device)
            total[start: start + len(images)] += norms_fn(model, to_input(images, device), y).double().cpu().numpy()
            start += len(images)
        count += 1
    return total / count


@register_metric("grand", "GraNd: exact per-example gradient norm (torch.func), at init or early, averaged over runs",
                 needs="training", requires_labels=True, citation=CITATION)
def grand(ctx: ScoreContext, params: DictConfig) -> np.ndarray:
    """Mean over runs of the exact ||grad_w loss|| over all parameters."""
    chunk = params.get("chunk_size", 64)
    chunk = None if chunk is None else int(chunk)
    if chunk is not None and chunk < 1:
        raise DatacullError(f"metric.grand.chunk_size must be >= 1 (or null for the whole batch), got {chunk}")
    return mean_over_models(ctx, "grand", params,
                            lambda model, x, y: per_example_grad_norms(model, x, y, chunk_size=chunk))


@register_metric("grand_last_layer", "GraNd closed form on the last layer only: ||p - y|| sqrt(||h||^2 + 1)",
                 needs="training", requires_labels=True, citation=CITATION)
def grand_last_layer(ctx: ScoreContext, params: DictConfig) -> np.ndarray:
    """Mean over runs of the last-layer gradient norm (closed form)."""
    return mean_over_models(ctx, "grand_last_layer", params, last_layer_grad_norms)
