"""DDD (Meding et al. 2022): out-of-fold errors of a diverse ensemble, checked against scikit-learn's
cross_val_predict, a planted mislabelled case, bad input and determinism."""
from __future__ import annotations

import numpy as np

import planted
import pytest
from omegaconf import OmegaConf
from sklearn.model_selection import StratifiedKFold, cross_val_predict

from datacull.data.base import ArraySource
from datacull.errors import DatacullError
from datacull.metrics.context import ScoreContext
from datacull.metrics.ddd import ddd, out_of_fold_errors, pixel_features, sklearn_member

FAST = ("model.width=4", "train.batch_size=32", "metric.ddd.net_epochs=2", "metric.ddd.random_forest.n_estimators=20")


def flipped_digits(make_cfg, n: int, fraction: float, *overrides):
    """Flipped-label digits with the fast DDD settings."""
    return planted.flipped_digits(make_cfg, n, fraction, *FAST, *overrides)


def run_metric(ctx, **changes):
    return ddd(ctx, OmegaConf.merge(ctx.params("ddd"), changes))


def test_planted_flipped_labels_score_near_one(make_cfg):
    ctx, flip = flipped_digits(make_cfg, 300, 0.04)
    scores = ddd(ctx, ctx.params("ddd"))
    assert scores.shape == (300,) and set(np.unique(scores)) <= {0, 0.25, 0.5, 0.75, 1.0}
    assert scores[flip].mean() >= 0.9
    assert np.delete(scores, flip).mean() <= 0.3
    assert (scores[flip] >= np.quantile(scores, 0.9)).all()


def test_members_are_out_of_fold_and_score_is_their_mean(make_cfg):
    ctx, _ = flipped_digits(make_cfg, 200, 0.0, "metric.ddd.folds=4", "metric.ddd.net_epochs=8")
    params = ctx.params("ddd")
    errors = out_of_fold_errors(ctx, params)
    assert list(errors) == ["net", "logistic_regression", "knn", "random_forest"]
    np.testing.assert_array_equal(ddd(ctx, params), np.mean(np.stack(list(errors.values())), axis=0))
    # the pixel members against scikit-learn's own cross-validated predictions on the same folds
    pixels = np.stack([ctx.source.load(i) for i in ctx.indices]).reshape(200, -1) / 255.0
    np.testing.assert_allclose(pixel_features(ctx, None), pixels, atol=1e-7)
    folds = StratifiedKFold(n_splits=4, shuffle=True, random_state=ctx.seed("ddd"))
    for name in ("logistic_regression", "knn"):
        predicted = cross_val_predict(sklearn_member(name, params, 0), pixels, ctx.labels, cv=folds)
        np.testing.assert_array_equal(errors[name], predicted != ctx.labels)
    # the net member learned something: far fewer errors than chance (90%)
    assert errors["net"].mean() < 0.5


def test_bad_input(make_cfg):
    ctx, _ = flipped_digits(make_cfg, 100, 0.0)
    unlabeled = ArraySource("digits", "train", ctx.source.images, np.full(100, -1), 10)
    with pytest.raises(DatacullError, match="ddd"):
        ddd(ScoreContext(ctx.cfg, unlabeled, ctx.indices), ctx.params("ddd"))
    with pytest.raises(DatacullError, match="valid members"):
        run_metric(ctx, members=["knn", "transformer"])
    with pytest.raises(DatacullError, match="members is empty"):
        run_metric(ctx, members=[])
    with pytest.raises(DatacullError, match="folds"):
        run_metric(ctx, folds=1)
    with pytest.raises(DatacullError, match="smallest class"):
        run_metric(ctx, folds=50)


def test_same_seed_gives_identical_scores(make_cfg, tmp_path):
    first, _ = flipped_digits(make_cfg, 120, 0.05)
    again, _ = flipped_digits(make_cfg, 120, 0.05, f"paths.work_dir={tmp_path / 'other'}")
    other, _ = flipped_digits(make_cfg, 120, 0.05, "seed=3")
    a = run_metric(first)
    np.testing.assert_array_equal(a, run_metric(again))
    assert not np.array_equal(a, run_metric(other))
