"""EL2N, forgetting, AUM and ensemble uncertainty: planted cases, hand computations, bad input."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from datacull.config import compose
from datacull.data.base import ArraySource, build_source
from datacull.errors import DatacullError
from datacull.metrics import get_metric
from datacull.metrics.context import ScoreContext
from datacull.metrics.ensemble import entropy_and_bald, variation_ratio
from datacull.metrics.forgetting import forgetting_counts

COPIES = 20


def planted_digits(tmp_path_factory):
    """Digits with 5% flipped labels, ~36 blends of two classes, and the easiest image of each class
    copied COPIES times; returns (ScoreContext, flipped, blends, duplicates)."""
    work = tmp_path_factory.mktemp("planted")
    cfg = compose(["data=digits", f"paths.work_dir={work}", "device=cpu", "model=resnet8", "model.width=8",
                   "train=cpu", "train.epochs=8", "train.batch_size=64", "metric.el2n.epoch=4",
                   "metric.ensemble_uncertainty.measure=entropy"])
    base = build_source(cfg.data)
    rng = np.random.default_rng(0)
    images, labels = base.images.copy(), base.labels.copy()
    n = len(labels)
    flipped = rng.choice(n, n // 20, replace=False)
    labels[flipped] = (labels[flipped] + rng.integers(1, 10, len(flipped))) % 10
    # easy by an independent judge: a linear classifier's most confident correct example per class
    flat = base.images.reshape(n, -1) / 255.0
    confidence = LogisticRegression(max_iter=2000).fit(flat, base.labels).predict_proba(flat)[np.arange(n), base.labels]
    confidence[flipped] = -1.0
    typical = np.array([np.flatnonzero(base.labels == c)[np.argmax(confidence[base.labels == c])] for c in range(10)])
    a, b = rng.choice(n, 40, replace=False), rng.choice(n, 40, replace=False)
    a, b = a[base.labels[a] != base.labels[b]], b[base.labels[a] != base.labels[b]]
    blend_images = ((images[a].astype(float) + images[b]) / 2).astype(np.uint8)
    images = np.concatenate([images, np.repeat(images[typical], COPIES, axis=0), blend_images])
    labels = np.concatenate([labels, np.repeat(labels[typical], COPIES), base.labels[a]])
    duplicates = np.concatenate([typical, n + np.arange(10 * COPIES)])
    blends = n + 10 * COPIES + np.arange(len(a))
    source = ArraySource("digits_planted", "train", images, labels, 10)
    ctx = ScoreContext(cfg=cfg, source=source, indices=np.arange(len(labels)))
    return ctx, flipped, blends, duplicates


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    ctx, flipped, blends, duplicates = planted_digits(tmp_path_factory)
    scores = {name: get_metric(name).obj(ctx, ctx.params(name))
              for name in ("el2n", "forgetting", "aum", "ensemble_uncertainty")}
    return ctx, flipped, blends, duplicates, scores


@pytest.mark.parametrize("name,min_flipped_top", [("el2n", 0.95), ("forgetting", 0.9), ("aum", 0.95)])
def test_flipped_labels_are_hardest_and_duplicates_easy(planted, name, min_flipped_top):
    ctx, flipped, blends, duplicates, scores = planted
    score = scores[name]
    assert score.shape == (len(ctx.indices),) and np.isfinite(score).all()
    hardest_decile = score >= np.quantile(score, 0.9)
    assert hardest_decile[flipped].mean() >= min_flipped_top
    assert (score[duplicates] <= np.median(score)).mean() >= 0.8
    assert score[duplicates].mean() < score.mean()


def test_ensemble_entropy_is_high_on_blends_and_low_on_duplicates(planted):
    ctx, flipped, blends, duplicates, scores = planted
    score = scores["ensemble_uncertainty"]
    assert (score >= 0).all() and (score <= np.log(10) + 1e-9).all()
    assert np.median(score[blends]) > np.quantile(score, 0.75)
    assert np.median(score[duplicates]) < np.median(score)


def test_metrics_share_the_runs_and_reuse_them(planted):
    ctx = planted[0]
    run_dirs = sorted(p.parent.name + "/" + p.name for p in ctx.runs_dir.glob("*/*-seed*"))
    assert len(run_dirs) == 2  # el2n, forgetting, aum and ensemble all used the same two runs
    again = get_metric("el2n").obj(ctx, ctx.params("el2n"))
    np.testing.assert_array_equal(again, planted[4]["el2n"])


def test_recorded_variation_ratio_and_bald_run_on_the_shared_runs(planted):
    ctx = planted[0]
    params = compose(["metric.ensemble_uncertainty.predictions=recorded",
                      "metric.ensemble_uncertainty.pool=in_sample"]).metric.ensemble_uncertainty
    recorded = get_metric("ensemble_uncertainty").obj(ctx, params)
    members = 2 * 3
    assert set(np.unique(np.round(recorded * members, 6))) <= set(range(members))
    bald = compose(["metric.ensemble_uncertainty.measure=bald",
                    "metric.ensemble_uncertainty.pool=in_sample"]).metric.ensemble_uncertainty
    assert (get_metric("ensemble_uncertainty").obj(ctx, bald) >= -1e-9).all()


# ---------------------------------------------------------------- hand computations

def test_forgetting_counts_match_a_direct_count():
    correct = np.array([
        [0, 1, 1, 0, 1, 0],
        [1, 1, 0, 0, 0, 1],
        [0, 1, 1, 0, 1, 1],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 1, 0],
    ], dtype=np.uint8)
    expected = []
    for column in correct.T:
        if not column.any():
            expected.append(len(column))  # never learned: the number of presentations
            continue
        expected.append(sum(1 for t in range(1, len(column)) if column[t - 1] == 1 and column[t] == 0))
    np.testing.assert_array_equal(forgetting_counts(correct), expected)
    np.testing.assert_array_equal(expected, [1, 0, 2, 5, 2, 1])


def test_variation_ratio_entropy_and_bald_by_hand():
    predictions = np.array([[0, 1, 2], [0, 1, 1], [0, 2, 1], [0, 1, 0]])
    np.testing.assert_allclose(variation_ratio(predictions), [0.0, 0.25, 0.5])
    agree = np.array([[[0.5, 0.5]], [[0.5, 0.5]]])  # members agree on an uncertain answer
    disagree = np.array([[[1.0, 0.0]], [[0.0, 1.0]]])  # confident members that disagree
    total, bald = entropy_and_bald(agree)
    assert total[0] == pytest.approx(np.log(2)) and bald[0] == pytest.approx(0.0, abs=1e-12)
    total, bald = entropy_and_bald(disagree)
    assert total[0] == pytest.approx(np.log(2)) and bald[0] == pytest.approx(np.log(2), abs=1e-6)


# ---------------------------------------------------------------- bad input

def toy_ctx(tmp_path, labels, *overrides):
    cfg = compose(["data=digits", f"paths.work_dir={tmp_path}", "device=cpu", "model.width=4",
                   "train.epochs=2", *overrides])
    source = ArraySource("toy", "train", np.zeros((len(labels), 8, 8, 1), np.uint8), np.asarray(labels), 3)
    return ScoreContext(cfg=cfg, source=source, indices=np.arange(len(labels)))


@pytest.mark.parametrize("name", ["el2n", "forgetting", "aum", "ensemble_uncertainty"])
def test_missing_or_out_of_range_labels_name_the_metric(tmp_path, name):
    for labels in ([0, 1, -1, 2], [0, 1, 5, 2]):
        ctx = toy_ctx(tmp_path, labels)
        with pytest.raises(DatacullError, match=f"metric '{name}' needs labels"):
            get_metric(name).obj(ctx, ctx.params(name))
    assert not any(ctx.runs_dir.glob("*/*"))  # failed before training anything


def test_epoch_beyond_the_run_is_an_error(tmp_path):
    for source in ("checkpoint", "recorded"):
        ctx = toy_ctx(tmp_path, [0, 1, 2, 0], "metric.el2n.epoch=3", f"metric.el2n.source={source}")
        with pytest.raises(DatacullError, match="epoch=3 is beyond the run: .*train.epochs=2"):
            get_metric("el2n").obj(ctx, ctx.params("el2n"))
    ctx = toy_ctx(tmp_path, [0, 1, 2, 0], "metric.el2n.epoch=0", "metric.el2n.source=recorded")
    with pytest.raises(DatacullError, match="epoch must be >= 1"):
        get_metric("el2n").obj(ctx, ctx.params("el2n"))
    ctx = toy_ctx(tmp_path, [0, 1, 2, 0], "metric.el2n.epoch=-1")
    with pytest.raises(DatacullError, match="epoch must be >= 0"):
        get_metric("el2n").obj(ctx, ctx.params("el2n"))
    ctx = toy_ctx(tmp_path, [0, 1, 2, 0], "metric.el2n.source=eval")
    with pytest.raises(DatacullError, match="source must be one of checkpoint, recorded"):
        get_metric("el2n").obj(ctx, ctx.params("el2n"))


ENS = "metric.ensemble_uncertainty."


@pytest.mark.parametrize("overrides,message", [
    ([ENS + "measure=margin"], "measure must be one of"),
    ([ENS + "checkpoints=5"], "checkpoints must be in"),
    ([ENS + "predictions=recorded", ENS + "measure=entropy", ENS + "pool=in_sample"], "needs probabilities"),
    ([ENS + "predictions=recorded"], "only for pool=in_sample"),
    ([ENS + "runs=0"], "runs must be >= 1"),
    ([ENS + "pool=oob"], "pool must be one of out_of_fold, in_sample"),
    ([ENS + "folds=2", ENS + "checkpoints=2"], "folds=2 exceeds the size of the smallest class"),
    ([ENS + "folds=1", ENS + "checkpoints=2"], "folds must be between 2"),
])
def test_bad_ensemble_settings(tmp_path, overrides, message):
    ctx = toy_ctx(tmp_path, [0, 1, 2, 0], *overrides)
    with pytest.raises(DatacullError, match=message):
        get_metric("ensemble_uncertainty").obj(ctx, ctx.params("ensemble_uncertainty"))
