"""Memorization and influence estimates from models trained on random subsets.

Feldman & Zhang, "What neural networks memorize and why: discovering the long tail via influence
estimation", NeurIPS 2020. K models each train on a random 70% subset of the training set
(datacull.training.subset_models, one job shared by all three metrics; by default a balanced design
in which every example is in and out of some models once K >= 4). With m_ki = "i in model k's
subset" and c_ki / t_kj = "model k is correct on training example i / test example j":

    mem(i)     = mean_{k: m_ki} c_ki - mean_{k: not m_ki} c_ki
    infl(i, j) = mean_{k: m_ki} t_kj - mean_{k: not m_ki} t_kj
    influence_max(i) = max_j infl(i, j);   influence_sum_abs(i) = sum_j |infl(i, j)|

Memorization is reported with its standard error (`memorization_se`), the SE of a difference of two
independent means of 0/1 outcomes, sqrt(s_in^2 / n_in + s_out^2 / n_out) with sample variances
(ddof=1); it shrinks like 1/sqrt(K). The paper used thousands of models (2,000 on ImageNet at
70%); datacull's CPU default uses a few, which ranks examples coarsely. An example that is in every
subset or in none (possible with K below the design's block, or with `design: iid`) has no
estimate: its score is NaN and a warning says how many (raise K). With `eps` set (the reference
code, google-research/heldout-influence-estimation mnist_infl_mem.py, divides each masked sum by
max(count, 1e-10)) a mean over no models counts as 0 instead, so such an example gets
mem = (its in- or out-side mean) with the other side 0, never NaN.
High memorization = the label is only learned by seeing the example itself (atypical or
mislabelled) = hard; high influence = the example changes test predictions = hard.
"""
from __future__ import annotations

import warnings

import numpy as np
from omegaconf import DictConfig

from datacull.errors import DatacullError
from datacull.metrics.context import ScoreContext
from datacull.metrics.registry import register_metric
from datacull.training import subset_models

CITATION = "Feldman & Zhang 2020"


class MemorizationAccumulator:
    """Running per-example counts over subset models, so memory stays O(N) whatever K is."""

    def __init__(self, n: int):
        self.n_in = np.zeros(n, dtype=np.int64)
        self.correct_in = np.zeros(n, dtype=np.int64)
        self.n_out = np.zeros(n, dtype=np.int64)
        self.correct_out = np.zeros(n, dtype=np.int64)

    def add(self, mask: np.ndarray, correct: np.ndarray) -> None:
        """Add one model: its subset mask and its correctness on every example."""
        mask, correct = np.asarray(mask, dtype=bool), np.asarray(correct, dtype=bool)
        self.n_in += mask
        self.correct_in += mask & correct
        self.n_out += ~mask
        self.correct_out += ~mask & correct

    def result(self, eps: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(mem, standard error); NaN where an example was in no subset or in all (SE: fewer than 2).

        With `eps` (0 < eps <= 1) each mean is sum / max(count, eps), the reference's estimator: a
        side with no models then counts as 0 and mem is never NaN (the SE still is).
        """
        with np.errstate(divide="ignore", invalid="ignore"):
            p_in = self.correct_in / self.n_in
            p_out = self.correct_out / self.n_out
            # sample variance of a 0/1 mean's terms: n/(n-1) p(1-p); SE^2 = var/n = p(1-p)/(n-1)
            se = np.sqrt(p_in * (1 - p_in) / (self.n_in - 1) + p_out * (1 - p_out) / (self.n_out - 1))
            if eps is not None:
                p_in = self.correct_in / np.maximum(self.n_in, eps)
                p_out = self.correct_out / np.maximum(self.n_out, eps)
            mem = p_in - p_out
        if eps is None:
            mem[(self.n_in == 0) | (self.n_out == 0)] = np.nan
        se[(self.n_in < 2) | (self.n_out < 2)] = np.nan
        return mem.astype(np.float64), se.astype(np.float64)


def influence_scores(masks: np.ndarray, test_correct: np.ndarray, block_size: int = 2048,
                     eps: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(influence_max, influence_sum_abs) per training example from (K, N) masks and (K, N_test) correctness.

    infl(i, .) for a block of examples is one matrix product masks[:, block]^T @ test_correct
    divided by the subset counts, formed `block_size` x `block_size` at a time (bounded memory).
    NaN where an example was in no subset or in all; with `eps`, counts are max(count, eps) as in the
    reference code, so an empty side's mean is 0 and nothing is NaN.
    """
    masks = np.asarray(masks, dtype=bool)
    k, n = masks.shape
    correct = np.asarray(test_correct, dtype=np.float32)
    if correct.shape[0] != k or correct.shape[1] == 0:
        raise DatacullError(f"influence needs test-set correctness of every subset model, got shape {correct.shape}; "
                            "set data.test_split to a split with examples")
    total = correct.sum(axis=0, dtype=np.float64)
    n_in = masks.sum(axis=0).astype(np.float64)
    n_out = k - n_in
    estimable = (n_in > 0) & (n_out > 0)
    if eps is not None:  # an empty side: its sum of hits is 0, so 0 / eps = 0
        inv_in, inv_out = 1 / np.maximum(n_in, eps), 1 / np.maximum(n_out, eps)
        estimable = np.ones(n, dtype=bool)
    else:
        with np.errstate(divide="ignore"):
            inv_in, inv_out = np.where(estimable, 1 / n_in, 0), np.where(estimable, 1 / n_out, 0)
    best = np.full(n, -np.inf)
    sum_abs = np.zeros(n)
    for start in range(0, n, block_size):
        rows = slice(start, min(start + block_size, n))
        block = masks[:, rows].T.astype(np.float32)
        for jstart in range(0, correct.shape[1], block_size):
            cols = slice(jstart, jstart + block_size)
            hits_in = (block @ correct[:, cols]).astype(np.float64)  # counts, exact in float32
            infl = hits_in * inv_in[rows, None] - (total[None, cols] - hits_in) * inv_out[rows, None]
            best[rows] = np.maximum(best[rows], infl.max(axis=1))
            sum_abs[rows] += np.abs(infl).sum(axis=1)
    best[~estimable] = np.nan
    sum_abs[~estimable] = np.nan
    return best, sum_abs


def _warn_missing(metric: str, values: np.ndarray, job, one_sided: int) -> None:
    """Warn about examples without a two-sided estimate (NaN, or one-sided under `eps`)."""
    missing = int(np.isnan(values).sum())
    if missing == len(values):
        raise DatacullError(f"{metric}: with {job.models} subset models every example was in all subsets or in none; "
                            f"raise metric.{metric}.models")
    if job.design == "balanced":
        hint = (f"raise metric.{metric}.models (now {job.models}; the balanced design covers every example "
                f"from {job.block} models on)")
    else:
        hint = f"raise metric.{metric}.models (now {job.models}) or use metric.{metric}.design=balanced"
    if missing:
        warnings.warn(f"{metric}: {missing} of {len(values)} examples were in every subset model or in none, so "
                      f"their score is NaN; {hint}", RuntimeWarning, stacklevel=3)
    elif one_sided:
        warnings.warn(f"{metric}: {one_sided} of {len(values)} examples were in every subset model or in none; "
                      f"with eps their empty side counts as 0 (the reference estimator); {hint}",
                      RuntimeWarning, stacklevel=3)


def _eps(metric: str, params: DictConfig) -> float | None:
    value = params.get("eps")
    if value is None:
        return None
    if not 0 < float(value) <= 1:
        raise DatacullError(f"metric.{metric}.eps must be null or in (0, 1] (the reference uses 1e-10), got {value}")
    return float(value)


def _one_sided(masks_in: np.ndarray, models: int) -> int:
    return int(((masks_in == 0) | (masks_in == models)).sum())


def _job(ctx: ScoreContext, metric: str, params: DictConfig):
    ctx.require_labels(metric)
    job = subset_models.SubsetJob.from_params(params, ctx.seed("subsets"), metric)
    return job, subset_models.ensure_models(ctx, job)


@register_metric("memorization", "Feldman-Zhang memorization: accuracy on x_i when trained on it minus when not",
                 needs="training", requires_labels=True, citation=CITATION)
def memorization(ctx: ScoreContext, params: DictConfig) -> dict[str, np.ndarray]:
    """mem(i) from the shared subset job, with its standard error in `memorization_se`."""
    eps = _eps("memorization", params)
    job, directory = _job(ctx, "memorization", params)
    acc = MemorizationAccumulator(len(ctx.indices))
    for arrays in subset_models.iter_models(directory, job.models, ("mask", "train_correct")):
        acc.add(arrays["mask"], arrays["train_correct"])
    mem, se = acc.result(eps)
    _warn_missing("memorization", mem, job, _one_sided(acc.n_in, job.models))
    return {"memorization": mem, "memorization_se": se}


def _influence(ctx: ScoreContext, metric: str, params: DictConfig) -> tuple[np.ndarray, np.ndarray]:
    if ctx.cfg.data.get("test_split") is None:
        raise DatacullError(f"{metric} measures effects on test examples but data.test_split is null; "
                            "set data.test_split (e.g. test)")
    eps = _eps(metric, params)
    job, directory = _job(ctx, metric, params)
    masks = subset_models.stack_models(directory, job.models, "mask")
    correct = subset_models.stack_models(directory, job.models, "test_correct")
    best, sum_abs = influence_scores(masks, correct, int(params.get("block_size", 2048)), eps)
    _warn_missing(metric, best, job, _one_sided(masks.sum(axis=0), job.models))
    return best, sum_abs


@register_metric("influence_max", "Feldman-Zhang influence: largest effect of x_i on any test example's accuracy",
                 needs="training", requires_labels=True, citation=CITATION)
def influence_max(ctx: ScoreContext, params: DictConfig) -> np.ndarray:
    """max over test examples j of infl(i, j)."""
    return _influence(ctx, "influence_max", params)[0]


@register_metric("influence_sum_abs", "Feldman-Zhang influence: total |effect| of x_i on test accuracy",
                 needs="training", requires_labels=True, citation=CITATION)
def influence_sum_abs(ctx: ScoreContext, params: DictConfig) -> np.ndarray:
    """sum over test examples j of |infl(i, j)|."""
    return _influence(ctx, "influence_sum_abs", params)[1]
