"""Memorization and influence (Feldman & Zhang 2020): estimators against direct loops, the shared
subset job (reuse when K grows), a planted mislabelled case, bad input and determinism."""
from __future__ import annotations

import os

import numpy as np

from planted import flipped_digits
import pytest

from datacull.errors import DatacullError
from datacull.metrics.context import ScoreContext
from datacull.metrics.memorization import MemorizationAccumulator, influence_scores
from datacull.training import subset_models

# examples in every subset or in none are expected with the few models of these tests
pytestmark = pytest.mark.filterwarnings("ignore:.*were in every subset model or in none:RuntimeWarning")


def direct_memorization(masks: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """mem(i) and its SE by a plain loop over examples."""
    k, n = masks.shape
    mem, se = np.full(n, np.nan), np.full(n, np.nan)
    for i in range(n):
        inside = [float(correct[m, i]) for m in range(k) if masks[m, i]]
        outside = [float(correct[m, i]) for m in range(k) if not masks[m, i]]
        if inside and outside:
            mem[i] = np.mean(inside) - np.mean(outside)
        if len(inside) >= 2 and len(outside) >= 2:
            se[i] = np.sqrt(np.var(inside, ddof=1) / len(inside) + np.var(outside, ddof=1) / len(outside))
    return mem, se


def direct_influence(masks: np.ndarray, test_correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """influence_max and influence_sum_abs by plain loops over (i, j)."""
    k, n = masks.shape
    best, total = np.full(n, np.nan), np.full(n, np.nan)
    for i in range(n):
        inside, outside = masks[:, i], ~masks[:, i]
        if not inside.any() or not outside.any():
            continue
        infl = [test_correct[inside, j].mean() - test_correct[outside, j].mean() for j in range(test_correct.shape[1])]
        best[i], total[i] = max(infl), sum(abs(v) for v in infl)
    return best, total


def test_memorization_estimator_matches_direct_loop(rng):
    masks = rng.random((12, 40)) < 0.7
    masks[:, 0] = True          # in every subset: no estimate
    masks[:, 1] = False         # in none
    masks[:, 2] = [True] + [False] * 11  # one model inside: mean defined, SE not
    correct = rng.random((12, 40)) < 0.6
    acc = MemorizationAccumulator(40)
    for m, c in zip(masks, correct):
        acc.add(m, c)
    mem, se = acc.result()
    want_mem, want_se = direct_memorization(masks, correct)
    np.testing.assert_allclose(mem, want_mem, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(se, want_se, rtol=1e-12, atol=1e-12)
    assert np.isnan(mem[:2]).all() and np.isfinite(mem[2]) and np.isnan(se[2])


def test_influence_matches_direct_loop_blockwise(rng):
    masks = rng.random((9, 23)) < 0.7
    masks[:, 5] = True
    test_correct = rng.random((9, 17)) < 0.5
    want_max, want_sum = direct_influence(masks, test_correct)
    for block in (4, 7, 1000):  # blocks smaller than, not dividing, and larger than the sizes
        best, total = influence_scores(masks, test_correct, block_size=block)
        np.testing.assert_allclose(best, want_max, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(total, want_sum, rtol=1e-6, atol=1e-6)
    assert np.isnan(best[5])


# --- the shared subset job and the registered metrics ---------------------------------------------
from omegaconf import OmegaConf  # noqa: E402

from datacull.data.base import ArraySource, build_source  # noqa: E402
from datacull.metrics.memorization import influence_max, influence_sum_abs, memorization  # noqa: E402

TINY = ("data.size=48", "data.test_size=20", "model.width=4", "train.epochs=1", "train.batch_size=16")


def tiny_ctx(make_cfg, *overrides):
    cfg = make_cfg(*TINY, *overrides)
    source = build_source(cfg.data)
    return ScoreContext(cfg, source, np.arange(len(source)))


def run_metric(fn, name, ctx, **changes):
    return fn(ctx, OmegaConf.merge(ctx.params(name), changes))


def stored(ctx, models):
    job = subset_models.SubsetJob.from_params(OmegaConf.merge(ctx.params("memorization"), {"models": models}),
                                              ctx.seed("subsets"))
    directory = subset_models.job_dir(ctx, job)
    return directory, {f: subset_models.stack_models(directory, models, f) for f in subset_models.FIELDS}


def test_job_files_estimators_and_reuse_when_k_grows(make_cfg, monkeypatch):
    ctx = tiny_ctx(make_cfg)
    calls = []
    real_train = subset_models.train_model
    monkeypatch.setattr(subset_models, "train_model", lambda *a, **k: calls.append(a[3]) or real_train(*a, **k))
    with pytest.warns(RuntimeWarning, match="raise metric.memorization.models"):
        run_metric(memorization, "memorization", ctx, models=2)
    assert len(calls) == 2
    directory, _ = stored(ctx, 2)
    mtimes = {k: os.stat(subset_models.model_path(directory, k)).st_mtime_ns for k in range(2)}
    result = run_metric(memorization, "memorization", ctx, models=5)
    assert len(calls) == 5, "raising K must train only the new models"
    assert {k: os.stat(subset_models.model_path(directory, k)).st_mtime_ns for k in range(2)} == mtimes
    # each file: exactly 70% of the examples, model k's mask derived from k; estimates from the files
    directory, arrays = stored(ctx, 5)
    assert (arrays["mask"].sum(axis=1) == round(0.7 * 48)).all()
    assert arrays["test_correct"].shape == (5, 20)
    for k in range(5):
        np.testing.assert_array_equal(arrays["mask"][k], subset_models.subset_mask(48, 0.7, ctx.seed("subsets"), k))
    want_mem, want_se = direct_memorization(arrays["mask"], arrays["train_correct"])
    np.testing.assert_allclose(result["memorization"], want_mem, atol=1e-12)
    np.testing.assert_allclose(result["memorization_se"], want_se, atol=1e-12)
    want_max, want_sum = direct_influence(arrays["mask"], arrays["test_correct"])
    np.testing.assert_allclose(run_metric(influence_max, "influence_max", ctx, models=5), want_max, atol=1e-6)
    np.testing.assert_allclose(run_metric(influence_sum_abs, "influence_sum_abs", ctx, models=5), want_sum, atol=1e-6)
    assert len(calls) == 5, "influence shares memorization's job (default config interpolates its settings)"
    # no pickles, only plain bool arrays
    with np.load(subset_models.model_path(directory, 0), allow_pickle=False) as data:
        assert sorted(data.files) == sorted(subset_models.FIELDS)


def test_same_seed_gives_identical_scores(make_cfg, tmp_path):
    first = run_metric(memorization, "memorization", tiny_ctx(make_cfg), models=3)
    again = run_metric(memorization, "memorization", tiny_ctx(make_cfg, f"paths.work_dir={tmp_path / 'other'}"),
                       models=3)
    for column in first:
        np.testing.assert_array_equal(first[column], again[column])


def test_bad_input(make_cfg):
    ctx = tiny_ctx(make_cfg)
    for name, fn in (("memorization", memorization), ("influence_max", influence_max),
                     ("influence_sum_abs", influence_sum_abs)):
        with pytest.raises(DatacullError, match=f"metric.{name}.models"):
            run_metric(fn, name, ctx, models=1)
    no_test = ScoreContext(OmegaConf.merge(ctx.cfg, {"data": {"test_split": None}}), ctx.source, ctx.indices)
    with pytest.raises(DatacullError, match="influence_max .*data.test_split"):
        run_metric(influence_max, "influence_max", no_test, models=3)
    with pytest.raises(DatacullError, match="subset_fraction"):
        run_metric(memorization, "memorization", ctx, subset_fraction=1.0)
    unlabeled = ArraySource("synthetic", "train", ctx.source.images, np.full(48, -1), ctx.num_classes)
    for name, fn in (("memorization", memorization), ("influence_max", influence_max)):
        with pytest.raises(DatacullError, match=name):
            run_metric(fn, name, ScoreContext(ctx.cfg, unlabeled, ctx.indices), models=3)




def test_planted_flipped_labels_are_the_most_memorized(make_cfg):
    ctx, flip = flipped_digits(make_cfg, 300, 0.03, "model.width=16", "train.epochs=8", "train.batch_size=32",
                               "train.augment=none", "metric.memorization.models=8")
    mem = memorization(ctx, ctx.params("memorization"))["memorization"]
    finite = np.isfinite(mem[flip])
    assert finite.mean() >= 0.7
    top_decile = mem[flip][finite] >= np.nanquantile(mem, 0.9)
    assert top_decile.mean() >= 0.8  # checked for seeds 0-3: 0.89-1.0
    assert np.nanmean(mem[flip]) > 0.5 > 0.1 > np.nanmean(np.delete(mem, flip))  # seeds 0-3: ~0.9 vs ~0.04


@pytest.mark.slow
def test_planted_flipped_labels_many_models(make_cfg):
    """More faithful (about 2 minutes): more models, longer training; mislabelled examples are memorized."""
    ctx, flip = flipped_digits(make_cfg, 600, 0.03, "model.width=16", "train.epochs=20", "train.batch_size=32",
                               "train.augment=none", "metric.memorization.models=16")
    result = memorization(ctx, ctx.params("memorization"))
    mem = result["memorization"]
    assert (mem[flip] >= np.nanquantile(mem, 0.9)).mean() >= 0.9
    assert np.nanmean(mem[flip]) > 0.5
    assert np.nanmedian(result["memorization_se"]) < 0.2
