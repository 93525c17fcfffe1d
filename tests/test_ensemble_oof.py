"""Out-of-fold ensemble uncertainty (Chitta et al. 2019): every example is scored only by members that
did not train on it; the measures are recomputed by hand from the saved member weights."""
from __future__ import annotations

from collections import Counter

import numpy as np
import planted
import pytest
import torch
from omegaconf import OmegaConf
from sklearn.model_selection import StratifiedKFold

from datacull.data.base import ArraySource
from datacull.metrics.context import ScoreContext
from datacull.metrics.ensemble import _split_seed, ensemble_uncertainty, uncertainty
from datacull.training.data import input_geometry
from datacull.training.dynamics import kfold_dir, kfold_runs
from datacull.training.models import build_model

FAST = ("model.width=4", "train.epochs=3", "train.batch_size=32")


def run_metric(ctx, **changes):
    return ensemble_uncertainty(ctx, OmegaConf.merge(ctx.params("ensemble_uncertainty"), changes))


def measures_by_hand(member_probs: list[np.ndarray]) -> dict[str, float]:
    """Variation ratio, predictive entropy and BALD of one example from its members' probabilities."""
    votes = Counter(int(np.argmax(p)) for p in member_probs)
    mean = np.mean(member_probs, axis=0)
    entropy = -sum(q * np.log(q) for q in mean if q > 0)
    member_entropy = np.mean([-sum(q * np.log(q) for q in p if q > 0) for p in member_probs])
    return {"variation_ratio": 1 - max(votes.values()) / len(member_probs), "entropy": entropy,
            "bald": entropy - member_entropy}


def probs_by_hand(ctx, weights_file, positions) -> np.ndarray:
    channels, size = input_geometry(ctx.cfg.model, ctx.source)
    model = build_model(ctx.cfg.model, ctx.num_classes, channels, size[0])
    model.load_state_dict(torch.load(weights_file, map_location="cpu", weights_only=True))
    images = np.stack([ctx.source.load(i) for i in ctx.indices[positions]])
    with torch.no_grad():
        logits = model.eval()(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0)
    return torch.softmax(logits.double(), dim=1).numpy()


def test_uncertainty_of_member_logits_matches_a_loop(rng):
    logits = rng.normal(scale=3.0, size=(5, 40, 4)).astype(np.float32)
    logits[:, :10] = logits[:1, :10]  # members that agree exactly
    probs = np.exp(logits) / np.exp(logits).sum(axis=2, keepdims=True)
    for measure in ("variation_ratio", "entropy", "bald"):
        want = [measures_by_hand(list(probs[:, i].astype(np.float64)))[measure] for i in range(40)]
        np.testing.assert_allclose(uncertainty(logits, measure), want, rtol=1e-5, atol=1e-9)
    assert (uncertainty(logits, "bald")[:10] < 1e-9).all() and (uncertainty(logits, "variation_ratio")[:10] == 0).all()


def test_out_of_fold_members_never_trained_on_the_example_and_match_a_hand_computation(make_cfg):
    ctx, _ = planted.flipped_digits(make_cfg, 150, 0.0, *FAST, "metric.ensemble_uncertainty.runs=2",
                                    "metric.ensemble_uncertainty.folds=3", "metric.ensemble_uncertainty.checkpoints=2",
                                    "metric.ensemble_uncertainty.block_size=40", "train.keep_epoch_weights=1")
    scores = {m: run_metric(ctx, measure=m) for m in ("variation_ratio", "entropy", "bald")}
    members: list[list[np.ndarray]] = [[] for _ in range(150)]
    for r in range(2):
        seed = _split_seed(ctx.seed("ensemble_uncertainty"), r)
        splits = StratifiedKFold(n_splits=3, shuffle=True, random_state=seed).split(np.zeros(150), ctx.labels)
        runs = list(kfold_runs(ctx, "ensemble_uncertainty", 3, seed, prefix="ensemble"))  # cached: loads
        for (train_pos, held), (fold, _, held_again, run) in zip(splits, runs):
            np.testing.assert_array_equal(held, held_again)
            assert not np.isin(ctx.indices[held], run.train_indices).any()  # out of fold
            assert run.run_dir == kfold_dir(ctx, "ensemble", 3, seed, None) / f"fold{fold}"
            for epoch in (2, 3):  # the last 2 epochs were kept although keep_epoch_weights=1
                probs = probs_by_hand(ctx, run.run_dir / f"weights-epoch{epoch:04d}.pt", held)
                for position, p in zip(held, probs):
                    members[position].append(p)
    assert all(len(m) == 4 for m in members)  # runs x checkpoints members per example
    for measure, score in scores.items():
        want = [measures_by_hand(m)[measure] for m in members]
        np.testing.assert_allclose(score, want, rtol=1e-4, atol=1e-6)


def blended_digits(make_cfg, n: int, blends: int, *overrides):
    """Digits with 5% flipped labels plus `blends` images averaged from two digits of different classes."""
    ctx, flip = planted.flipped_digits(make_cfg, n, 0.05, *overrides)
    rng = np.random.default_rng(1)
    images, labels = ctx.source.images, ctx.source.labels
    a, b = rng.choice(n, 3 * blends), rng.choice(n, 3 * blends)
    keep = labels[a] != labels[b]
    a, b = a[keep][:blends], b[keep][:blends]
    mixed = ((images[a].astype(float) + images[b]) / 2).astype(np.uint8)
    source = ArraySource("digits_blends", "train", np.concatenate([images, mixed]),
                         np.concatenate([labels, labels[a]]), 10)
    return ScoreContext(ctx.cfg, source, np.arange(n + len(a))), flip, n + np.arange(len(a))


def test_planted_ambiguous_images_are_uncertain_out_of_fold(make_cfg):
    ctx, flip, blends = blended_digits(make_cfg, 600, 40, "model.width=8", "train.epochs=6", "train.batch_size=32",
                                       "metric.ensemble_uncertainty.measure=entropy")
    score = run_metric(ctx)
    percentile = (np.argsort(np.argsort(score)) + 0.5) / len(score)
    assert np.median(percentile[blends]) > 0.75
    # the measures do not read the label: a clean image with a wrong label is scored by models that
    # never saw that label, so out of fold it is no more uncertain than the typical example
    assert np.median(percentile[flip]) < 0.75


@pytest.mark.parametrize("pool", ["out_of_fold", "in_sample"])
def test_each_pool_trains_only_its_own_runs(make_cfg, pool):
    ctx, _ = planted.flipped_digits(make_cfg, 60, 0.0, *FAST, "metric.ensemble_uncertainty.checkpoints=2")
    assert run_metric(ctx, pool=pool).shape == (60,)
    shared = list(ctx.runs_dir.glob("*/full-seed*"))
    folds = list(ctx.runs_dir.glob("ensemble-*/fold*"))
    assert (len(shared), len(folds)) == ((0, 4) if pool == "out_of_fold" else (2, 0))
