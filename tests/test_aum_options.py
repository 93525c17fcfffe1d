"""AUM options (Pleiss et al. 2020; asappresearch/aum): the epoch window and the threshold-sample
procedure (AUM_WTR), checked against the recorded margins and the reference's flagging rule."""
from __future__ import annotations

import numpy as np
import planted
import pytest
import torch
from omegaconf import OmegaConf

from datacull.errors import DatacullError
from datacull.metrics.aum import aum, threshold_sets, wtr_threshold
from datacull.training.trainer import cached_run, run_seeds

FAST = ("model.width=4", "train.epochs=3", "train.batch_size=32")


def run_metric(ctx, **changes):
    return aum(ctx, OmegaConf.merge(ctx.params("aum"), changes))


def test_epoch_window_averages_the_recorded_margins_of_those_epochs(make_cfg):
    ctx, _ = planted.flipped_digits(make_cfg, 120, 0.0, *FAST, "metric.aum.runs=2")
    margins = [np.load(cached_run(ctx, s).run_dir / "record" / "margin.npy").astype(np.float64)
               for s in run_seeds(ctx.cfg, 2)]
    assert margins[0].shape == (3, 120)
    np.testing.assert_allclose(run_metric(ctx), -np.mean([m.mean(axis=0) for m in margins], axis=0), rtol=1e-6)
    np.testing.assert_allclose(run_metric(ctx, epochs=[2, 3]), -np.mean([m[1:].mean(axis=0) for m in margins], axis=0),
                               rtol=1e-6)
    np.testing.assert_allclose(run_metric(ctx, epochs=[2, None]), run_metric(ctx, epochs=[2, 3]))
    np.testing.assert_allclose(run_metric(ctx, epochs=[1, 1]), -np.mean([m[0] for m in margins], axis=0), rtol=1e-6)
    for bad in ([0, 2], [3, 2], [1, 4], [1], "all"):
        with pytest.raises(DatacullError, match="metric.aum.epochs"):
            run_metric(ctx, epochs=bad)


def test_threshold_is_the_references_aum_wtr_rule(rng):
    for m in (1, 7, 100, 163, 1000):
        fake = np.round(rng.normal(size=m), 1)  # rounded: ties among the threshold samples
        values = np.concatenate([np.round(rng.normal(size=500), 1), fake])
        threshold = wtr_threshold(fake, 99)
        # the reference: flagged when more than 1% of the threshold samples have a larger AUM
        reference = (values[:, None] < fake[None, :]).mean(axis=1) > 0.01
        np.testing.assert_array_equal(values < threshold, reference)
        assert threshold in fake


def test_threshold_sets_are_disjoint_slices_of_n_over_c_plus_1(rng):
    sets = threshold_sets(1000, 10, 3, seed=4)
    assert [len(s) for s in sets] == [90, 90, 90]
    assert len(np.unique(np.concatenate(sets))) == 270
    order = np.random.default_rng(4).permutation(1000)
    np.testing.assert_array_equal(sets[1], np.sort(order[90:180]))
    with pytest.raises(DatacullError, match="at least 11 examples"):
        threshold_sets(10, 10, 2, seed=0)


def test_threshold_samples_train_an_extra_class_and_flag_below_the_threshold(make_cfg):
    ctx, _ = planted.flipped_digits(make_cfg, 220, 0.0, *FAST)
    out = run_metric(ctx, threshold_samples=True, threshold_runs=2)
    assert set(out) == {"aum", "aum_flagged", "aum_threshold"}
    n, classes = 220, 10
    size = n // (classes + 1)
    order = np.random.default_rng(ctx.seed("aum")).permutation(n)
    total, count, flagged, thresholds = np.zeros(n), np.zeros(n), np.zeros(n, bool), np.zeros(n)
    for k in range(2):
        fake = order[k * size: (k + 1) * size]
        (run_dir,) = ctx.runs_dir.glob(f"*/aum-threshold{k}-seed*")
        # the model has C + 1 outputs and the fake examples were trained as class C
        weights = torch.load(run_dir / "weights-epoch0003.pt", weights_only=True)
        assert weights["classifier.weight"].shape[0] == classes + 1
        margin = np.load(run_dir / "record" / "margin.npy").astype(np.float64).mean(axis=0)
        real = np.setdiff1d(np.arange(n), fake)
        reference = (margin[real, None] < margin[None, fake]).mean(axis=1) > 0.01
        total[real] += margin[real]
        count[real] += 1
        flagged[real] |= reference
        thresholds[real] += np.sort(margin[fake])[::-1][int(0.01 * size)]
    assert (count >= 1).all() and (count == 1).sum() == 2 * size
    np.testing.assert_allclose(out["aum"], -total / count, rtol=1e-6)
    np.testing.assert_array_equal(out["aum_flagged"], flagged.astype(np.int64))
    np.testing.assert_allclose(out["aum_threshold"], -thresholds / count, rtol=1e-6)


def test_bad_threshold_settings(make_cfg):
    ctx, _ = planted.flipped_digits(make_cfg, 60, 0.0, *FAST)
    with pytest.raises(DatacullError, match="threshold_runs must be in"):
        run_metric(ctx, threshold_samples=True, threshold_runs=1)
    with pytest.raises(DatacullError, match="threshold_percentile"):
        run_metric(ctx, threshold_samples=True, threshold_percentile=100)
    assert not list(ctx.runs_dir.glob("*/*"))  # nothing trained


@pytest.mark.slow
def test_threshold_samples_flag_the_planted_flipped_labels(make_cfg):
    ctx, flip = planted.flipped_digits(make_cfg, 1000, 0.05, "model.width=8", "train.epochs=8", "train.batch_size=32")
    out = run_metric(ctx, threshold_samples=True)
    flagged = out["aum_flagged"].astype(bool)
    assert flagged[flip].mean() >= 0.8  # recall of the flipped labels
    assert np.isin(np.flatnonzero(flagged), flip).mean() >= 0.5  # precision
