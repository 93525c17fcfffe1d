"""Ensemble uncertainty, the score of ensemble active learning (Chitta, Alvarez, Haussmann, Farabet,
"Training data subset search with ensemble active learning", arXiv 1905.12737, 2019).

The ensemble is every combination of `metric.ensemble_uncertainty.runs` independently seeded runs
and their last `checkpoints` epochs (Chitta et al. ensemble both seeds and checkpoints). With
`predictions: checkpoints` (default) each member is the saved model of that epoch, evaluated in
eval mode on the unaugmented images (one inference pass per member); with `predictions: recorded`
the members are the predicted classes the trainer recorded in those epochs' training forward
passes (free, but only `variation_ratio` is possible). Measures, all high = uncertain = hard:

    variation_ratio  1 - (votes for the most voted class) / members
    entropy          H(mean_m p_m)                       predictive entropy (nats)
    bald             H(mean_m p_m) - mean_m H(p_m)       mutual information (Houlsby et al. 2011)
"""
from __future__ import annotations

import numpy as np
import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm

from datacull.errors import DatacullError
from datacull.metrics.context import ScoreContext
from datacull.metrics.registry import register_metric
from datacull.training.dynamics import recorded_runs, run_count
from datacull.training.trainer import load_epoch_model, predict_logits

MEASURES = ("variation_ratio", "entropy", "bald")


def variation_ratio(predictions: np.ndarray) -> np.ndarray:
    """1 - mode frequency of each column of a (members, N) array of predicted classes."""
    predictions = np.asarray(predictions)
    members = predictions.shape[0]
    mode_votes = np.max([(predictions == predictions[m]).sum(axis=0) for m in range(members)], axis=0)
    return 1.0 - mode_votes / members


def _entropy(probs: np.ndarray) -> np.ndarray:
    return -(probs * np.log(np.clip(probs, 1e-12, None))).sum(axis=-1)


def entropy_and_bald(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(predictive entropy, BALD mutual information) of (members, N, C) class probabilities."""
    probs = np.asarray(probs, dtype=np.float64)
    total = _entropy(probs.mean(axis=0))
    return total, total - _entropy(probs).mean(axis=0)


def _settings(ctx: ScoreContext, params: DictConfig) -> tuple[int, int, str, str]:
    runs = run_count(params, "ensemble_uncertainty")
    checkpoints = int(params.get("checkpoints", 3))
    measure = str(params.get("measure", "variation_ratio"))
    predictions = str(params.get("predictions", "checkpoints"))
    epochs = int(ctx.cfg.train.epochs)
    if measure not in MEASURES:
        raise DatacullError(f"metric.ensemble_uncertainty.measure must be one of {', '.join(MEASURES)}, got {measure!r}")
    if predictions not in ("checkpoints", "recorded"):
        raise DatacullError("metric.ensemble_uncertainty.predictions must be checkpoints or recorded, "
                            f"got {predictions!r}")
    if predictions == "recorded" and measure != "variation_ratio":
        raise DatacullError(f"metric.ensemble_uncertainty.measure={measure} needs probabilities; "
                            "use predictions=checkpoints (recorded predictions give only variation_ratio)")
    if not 1 <= checkpoints <= epochs:
        raise DatacullError(f"metric.ensemble_uncertainty.checkpoints must be in [1, train.epochs={epochs}], "
                            f"got {checkpoints}")
    keep = int(ctx.cfg.train.get("keep_epoch_weights", 3) or 1)
    if predictions == "checkpoints" and checkpoints > keep:
        raise DatacullError(f"metric.ensemble_uncertainty.checkpoints={checkpoints} but runs keep the weights of "
                            f"the last train.keep_epoch_weights={keep} epochs; raise train.keep_epoch_weights")
    if runs * checkpoints < 2:
        raise DatacullError("an ensemble needs at least 2 members: raise metric.ensemble_uncertainty.runs "
                            "or .checkpoints")
    return runs, checkpoints, measure, predictions


@register_metric("ensemble_uncertainty", "uncertainty (variation ratio / entropy / BALD) of an ensemble of "
                 "seeds x checkpoints", needs="training", requires_labels=True, citation="Chitta et al. 2019")
def ensemble_uncertainty(ctx: ScoreContext, params: DictConfig) -> np.ndarray:
    """The configured uncertainty measure of the seeds x last-checkpoints ensemble on each example."""
    ctx.require_labels("ensemble_uncertainty")
    runs, checkpoints, measure, predictions = _settings(ctx, params)
    results = recorded_runs(ctx, "ensemble_uncertainty", runs)
    epochs = int(ctx.cfg.train.epochs)
    last = range(epochs - checkpoints + 1, epochs + 1)
    if predictions == "recorded":
        votes = np.concatenate([np.asarray(r.recorder.field("pred", slice(last.start - 1, last.stop - 1)))
                                for r in results])
        return variation_ratio(votes)
    block = int(params.get("block_size", 65536))
    members = [(r.run_dir, epoch) for r in results for epoch in last]
    out = np.empty(len(ctx.indices), dtype=np.float64)
    models = [load_epoch_model(ctx.cfg, ctx.source, run_dir, epoch) for run_dir, epoch in members]
    for start in tqdm(range(0, len(ctx.indices), block), desc="ensemble", unit="block",
                      disable=len(ctx.indices) <= block):
        chunk = ctx.indices[start: start + block]
        logits = np.stack([predict_logits(model, ctx.source, chunk, ctx.cfg) for model in models])
        if measure == "variation_ratio":
            out[start: start + len(chunk)] = variation_ratio(logits.argmax(axis=2))
        else:
            probs = torch.softmax(torch.from_numpy(logits).double(), dim=2).numpy()
            total, bald = entropy_and_bald(probs)
            out[start: start + len(chunk)] = total if measure == "entropy" else bald
    return out
