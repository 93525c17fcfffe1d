"""Memorization and influence (Feldman & Zhang 2020): estimators against direct loops and a
hand-computed design, the subset designs, the shared subset job (reuse when K grows), a planted
mislabelled case, bad input and determinism."""
from __future__ import annotations

import os
import warnings

import numpy as np
from omegaconf import OmegaConf

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


# --- a small exhaustive design computed by hand ----------------------------------------------------
# 4 models x 6 training examples (+ examples 6: in every model, 7: in none), 2 test examples
HAND_MASKS = np.array([[1, 1, 0, 1, 0, 1, 1, 0],
                       [1, 0, 1, 1, 1, 0, 1, 0],
                       [0, 1, 1, 0, 1, 1, 1, 0],
                       [1, 1, 1, 0, 0, 1, 1, 0]], dtype=bool)
HAND_CORRECT = np.array([[1, 1, 0, 1, 0, 1, 1, 0],
                         [1, 0, 1, 0, 1, 1, 0, 0],
                         [0, 1, 1, 0, 1, 0, 1, 1],
                         [1, 0, 1, 1, 0, 1, 1, 1]], dtype=bool)
HAND_TEST = np.array([[1, 0], [1, 1], [0, 1], [1, 0]], dtype=bool)
# by hand, e.g. example 1: in models {0, 2, 3} correct 1, 1, 0 -> 2/3; out {1} correct 0 -> mem 2/3;
# example 3: in {0, 1}: 1, 0; out {2, 3}: 0, 1 -> mem 0, SE sqrt(0.5/2 + 0.5/2)
HAND_MEM = [1, 2 / 3, 1, 0, 1, -1 / 3]
HAND_SE = [np.nan, np.nan, np.nan, np.sqrt(0.5), 0.0, np.nan]
# infl(i, j) = mean_in t_j - mean_out t_j; e.g. example 0: j0 1 - 0 = 1, j1 1/3 - 1 = -2/3
HAND_INFL_MAX = [1, -1 / 3, 2 / 3, 0.5, 1, -1 / 3]
HAND_INFL_SUM = [5 / 3, 1, 1, 0.5, 1.5, 1]
# eps variant (the reference's sums / max(count, 1e-10)): example 6 (always in) and 7 (never in)
HAND_EPS_MEM = [0.75, -0.5]            # correct 1,0,1,1 -> 0.75 - 0; 0 - mean(0,0,1,1)
HAND_EPS_INFL_MAX = [0.75, -0.5]       # test means over all models: 0.75, 0.5
HAND_EPS_INFL_SUM = [1.25, 1.25]


def test_estimators_match_a_design_computed_by_hand():
    acc = MemorizationAccumulator(8)
    for m, c in zip(HAND_MASKS, HAND_CORRECT):
        acc.add(m, c)
    mem, se = acc.result()
    np.testing.assert_allclose(mem[:6], HAND_MEM, atol=1e-12)
    np.testing.assert_allclose(se[:6], HAND_SE, atol=1e-12)
    assert np.isnan(mem[6:]).all()
    best, total = influence_scores(HAND_MASKS, HAND_TEST, block_size=3)
    np.testing.assert_allclose(best[:6], HAND_INFL_MAX, atol=1e-6)
    np.testing.assert_allclose(total[:6], HAND_INFL_SUM, atol=1e-6)
    assert np.isnan(best[6:]).all() and np.isnan(total[6:]).all()
    # the reference's epsilon variant: identical where both sides have models, 0 for an empty side
    mem_eps, se_eps = acc.result(eps=1e-10)
    np.testing.assert_allclose(mem_eps, HAND_MEM + HAND_EPS_MEM, atol=1e-12)
    np.testing.assert_allclose(se_eps, se, atol=1e-12)
    best, total = influence_scores(HAND_MASKS, HAND_TEST, block_size=3, eps=1e-10)
    np.testing.assert_allclose(best, HAND_INFL_MAX + HAND_EPS_INFL_MAX, atol=1e-6)
    np.testing.assert_allclose(total, HAND_INFL_SUM + HAND_EPS_INFL_SUM, atol=1e-6)


# --- subset designs -------------------------------------------------------------------------------
def job_of(**changes):
    params = OmegaConf.create({"models": 8, "subset_fraction": 0.7, "epochs": None, "design": "balanced",
                               "block": "auto", **changes})
    return subset_models.SubsetJob.from_params(params, seed=5)


@pytest.mark.parametrize("fraction,block", [(0.7, 4), (0.5, 2), (0.9, 10), (0.3, 4), (0.75, 4)])
def test_balanced_design_covers_every_example_once_k_reaches_the_block(fraction, block):
    job = job_of(subset_fraction=fraction, models=3 * block)
    assert job.block == block == subset_models.min_block(fraction)
    n = 3000
    masks = np.stack([subset_models.design_mask(job, n, k) for k in range(3 * block)])
    for k in range(block, 3 * block + 1):  # every K >= block, including partial last blocks
        inside = masks[:k].sum(axis=0)
        assert inside.min() >= 1 and (k - inside).min() >= 1, k
    per_block = masks[:block].sum(axis=0)  # floor or ceil of f*B models of a block hold each example
    assert set(np.unique(per_block)) <= {np.floor(fraction * block + 1e-9), np.ceil(fraction * block - 1e-9)}
    # each model: every example with probability f, independently (binomial subset sizes)
    sd = np.sqrt(n * fraction * (1 - fraction))
    assert (np.abs(masks.sum(axis=1) - fraction * n) < 4.5 * sd).all()
    assert abs(masks.mean() - fraction) < 4.5 * sd / n / np.sqrt(len(masks))
    # independence between examples within a model: pair co-inclusion rate ~ f^2
    both = (masks[:, :-1] & masks[:, 1:]).mean()
    assert abs(both - fraction ** 2) < 0.02


def test_iid_design_is_the_old_sampling_and_leaves_gaps():
    job = job_of(design="iid")
    assert job.block == 0
    masks = np.stack([subset_models.design_mask(job, 2000, k) for k in range(8)])
    for k in range(8):
        np.testing.assert_array_equal(masks[k], subset_models.subset_mask(2000, 0.7, 5, k))
    assert (masks.sum(axis=1) == 1400).all()
    inside = masks.sum(axis=0)
    assert ((inside == 0) | (inside == 8)).any()  # 0.7^8 + 0.3^8 = 5.8% of examples uncovered


def test_design_settings_are_validated():
    with pytest.raises(DatacullError, match="design must be one of"):
        job_of(design="stratified")
    with pytest.raises(DatacullError, match="block >= 4"):
        job_of(block=3)
    assert job_of(block=10).block == 10


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
        run_metric(memorization, "memorization", ctx, models=2)  # half a block: some examples uncovered
    assert len(calls) == 2
    directory, _ = stored(ctx, 2)
    mtimes = {k: os.stat(subset_models.model_path(directory, k)).st_mtime_ns for k in range(2)}
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # K >= 4 (the block): every example covered
        result = run_metric(memorization, "memorization", ctx, models=5)
    assert len(calls) == 5, "raising K must train only the new models"
    assert {k: os.stat(subset_models.model_path(directory, k)).st_mtime_ns for k in range(2)} == mtimes
    assert np.isfinite(result["memorization"]).all()
    # each file: model k's mask from the balanced design; estimates from the files
    directory, arrays = stored(ctx, 5)
    assert arrays["test_correct"].shape == (5, 20)
    job = subset_models.SubsetJob.from_params(ctx.params("memorization"), ctx.seed("subsets"))
    for k in range(5):
        np.testing.assert_array_equal(arrays["mask"][k], subset_models.design_mask(job, 48, k))
    inside = arrays["mask"].sum(axis=0)
    assert inside.min() >= 1 and (5 - inside).min() >= 1
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
    with pytest.raises(DatacullError, match="metric.memorization.eps"):
        run_metric(memorization, "memorization", ctx, models=3, eps=2.0)
    with pytest.raises(DatacullError, match="metric.influence_max.design"):
        run_metric(influence_max, "influence_max", ctx, design="random")
    unlabeled = ArraySource("synthetic", "train", ctx.source.images, np.full(48, -1), ctx.num_classes)
    for name, fn in (("memorization", memorization), ("influence_max", influence_max)):
        with pytest.raises(DatacullError, match=name):
            run_metric(fn, name, ScoreContext(ctx.cfg, unlabeled, ctx.indices), models=3)




def test_planted_flipped_labels_are_the_most_memorized(make_cfg):
    ctx, flip = flipped_digits(make_cfg, 300, 0.03, "model.width=16", "train.epochs=8", "train.batch_size=32",
                               "train.augment=none", "metric.memorization.models=8")
    mem = memorization(ctx, ctx.params("memorization"))["memorization"]
    assert np.isfinite(mem).all()  # the balanced design: every example in and out of some of the 8 models
    top_decile = mem[flip] >= np.quantile(mem, 0.9)
    assert top_decile.mean() >= 0.8  # checked for seeds 0-3: 0.89-1.0
    assert mem[flip].mean() > 0.5 > 0.1 > np.delete(mem, flip).mean()  # seeds 0-3: 0.73-0.92 vs ~0.04


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
