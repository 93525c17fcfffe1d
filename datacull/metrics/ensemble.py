"""Ensemble uncertainty, the score of ensemble active learning (Chitta, Alvarez, Haussmann, Farabet,
"Training data subset search with ensemble active learning", arXiv 1905.12737, 2019).

Chitta et al. score a pool of examples that the ensemble did not train on; members are seeds and
their late checkpoints. `metric.ensemble_uncertainty.pool` says which examples each member scores:

  out_of_fold (default): `runs` independent stratified k-fold splits of the scored examples into
      `folds` folds (seeded from `seed`); in each split, the model of fold f trains on the other
      folds (train=..., model=...) and scores only fold f, with each of its last `checkpoints`
      epochs' weights, in eval mode on the unaugmented images. So every example is scored by
      runs x checkpoints members, none of which trained on it. Cost: runs x folds trainings, each
      on (folds - 1)/folds of the data (own cached runs, not the shared ones), plus one inference
      pass over the data per (run, checkpoint).
  in_sample: members are the shared runs (seeds `run_seeds(cfg, runs)`, the EL2N/forgetting/AUM
      runs) and their last `checkpoints` epochs, scoring examples they all trained on. Cheap once
      those runs exist, but near-certain on most training examples (on digits the variation ratio
      was 0 for 97.5% of them), so it ranks poorly. With `predictions: checkpoints` each member is
      the saved model of that epoch evaluated in eval mode (one inference pass per member); with
      `predictions: recorded` the members are the classes the trainer recorded in those epochs'
      training forward passes (free, only `variation_ratio`).

Measures over the M members of an example, all high = uncertain = hard:

    variation_ratio  1 - (votes for the most voted class) / M
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
from datacull.training.dynamics import kfold_runs, recorded_runs, run_count
from datacull.training.trainer import load_epoch_model, predict_logits

MEASURES = ("variation_ratio", "entropy", "bald")
POOLS = ("out_of_fold", "in_sample")


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


def uncertainty(logits: np.ndarray, measure: str) -> np.ndarray:
    """The `measure` of (members, N, C) member logits, one value per example."""
    if measure == "variation_ratio":
        return variation_ratio(np.asarray(logits).argmax(axis=2))
    probs = torch.softmax(torch.from_numpy(np.asarray(logits)).double(), dim=2).numpy()
    total, bald = entropy_and_bald(probs)
    return total if measure == "entropy" else bald


def _settings(ctx: ScoreContext, params: DictConfig) -> tuple[int, int, str, str, str]:
    runs = run_count(params, "ensemble_uncertainty")
    checkpoints = int(params.get("checkpoints", 3))
    measure = str(params.get("measure", "variation_ratio"))
    predictions = str(params.get("predictions", "checkpoints"))
    pool = str(params.get("pool", "out_of_fold"))
    epochs = int(ctx.cfg.train.epochs)
    if pool not in POOLS:
        raise DatacullError(f"metric.ensemble_uncertainty.pool must be one of {', '.join(POOLS)}, got {pool!r}")
    if measure not in MEASURES:
        raise DatacullError(f"metric.ensemble_uncertainty.measure must be one of {', '.join(MEASURES)}, got {measure!r}")
    if predictions not in ("checkpoints", "recorded"):
        raise DatacullError("metric.ensemble_uncertainty.predictions must be checkpoints or recorded, "
                            f"got {predictions!r}")
    if predictions == "recorded" and pool != "in_sample":
        raise DatacullError("metric.ensemble_uncertainty.predictions=recorded exists only for pool=in_sample "
                            "(the trainer records predictions on the examples it trains on)")
    if predictions == "recorded" and measure != "variation_ratio":
        raise DatacullError(f"metric.ensemble_uncertainty.measure={measure} needs probabilities; "
                            "use predictions=checkpoints (recorded predictions give only variation_ratio)")
    if not 1 <= checkpoints <= epochs:
        raise DatacullError(f"metric.ensemble_uncertainty.checkpoints must be in [1, train.epochs={epochs}], "
                            f"got {checkpoints}")
    if runs * checkpoints < 2:
        raise DatacullError("an ensemble needs at least 2 members: raise metric.ensemble_uncertainty.runs "
                            "or .checkpoints")
    return runs, checkpoints, measure, predictions, pool


def _split_seed(base: int, repetition: int) -> int:
    return int(np.random.SeedSequence([base, repetition]).generate_state(1)[0] % (2**31 - 1))


def out_of_fold_members(ctx: ScoreContext, runs: int, folds: int, checkpoints: int) -> list[list[tuple[np.ndarray, list]]]:
    """Per repetition r < `runs`: [(held-out positions of fold f, [(run_dir, epoch) of its last checkpoints])].

    Trains the fold models that are not cached yet (each keeps its last `checkpoints` epochs' weights).
    """
    epochs = int(ctx.cfg.train.epochs)
    last = list(range(epochs - checkpoints + 1, epochs + 1))
    base = ctx.seed("ensemble_uncertainty")
    return [[(held, [(run.run_dir, e) for e in last])
             for _, _, held, run in kfold_runs(ctx, "ensemble_uncertainty", folds, _split_seed(base, r),
                                               prefix="ensemble", keep_epochs=last)]
            for r in range(runs)]


@register_metric("ensemble_uncertainty", "uncertainty (variation ratio / entropy / BALD) of an ensemble of "
                 "seeds x checkpoints that did not train on the example (k-fold)", needs="training",
                 requires_labels=True, citation="Chitta et al. 2019")
def ensemble_uncertainty(ctx: ScoreContext, params: DictConfig) -> np.ndarray:
    """The configured uncertainty measure of the ensemble on each example (out of fold by default)."""
    ctx.require_labels("ensemble_uncertainty")
    runs, checkpoints, measure, predictions, pool = _settings(ctx, params)
    epochs = int(ctx.cfg.train.epochs)
    last = range(epochs - checkpoints + 1, epochs + 1)
    block = int(params.get("block_size", 65536))
    if block < 1:
        raise DatacullError(f"metric.ensemble_uncertainty.block_size must be >= 1, got {block}")
    n = len(ctx.indices)
    if pool == "in_sample":
        results = recorded_runs(ctx, "ensemble_uncertainty", runs, keep_epochs=last)
        if predictions == "recorded":
            votes = np.concatenate([np.asarray(r.recorder.field("pred", slice(last.start - 1, last.stop - 1)))
                                    for r in results])
            return variation_ratio(votes)
        # every member scores every example: one group covering all positions
        groups = [[(np.arange(n), [(r.run_dir, e)])] for r in results for e in last]
    else:
        folds = int(params.get("folds", 2))
        groups = out_of_fold_members(ctx, runs, folds, checkpoints)
    # (member slot, positions it scores, (run_dir, epoch)); the folds of one split share slots
    slots, total_members = [], 0
    for group in groups:
        for held, members in group:
            slots += [(total_members + j, held, member) for j, member in enumerate(members)]
        total_members += len(group[0][1])
    models = {member: load_epoch_model(ctx.cfg, ctx.source, *member) for _, _, member in slots}
    out = np.empty(n, dtype=np.float64)
    for start in tqdm(range(0, n, block), desc="ensemble", unit="block", disable=n <= block):
        stop = min(start + block, n)
        logits = np.full((total_members, stop - start, ctx.num_classes), np.nan, dtype=np.float32)
        for slot, held, member in slots:
            positions = held[(held >= start) & (held < stop)]
            if len(positions):
                logits[slot, positions - start] = predict_logits(models[member], ctx.source,
                                                                 ctx.indices[positions], ctx.cfg)
        assert not np.isnan(logits).any()  # each example has one fold per repetition
        out[start:stop] = uncertainty(logits, measure)
    return out
