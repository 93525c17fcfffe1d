"""EL2N from the weights after epoch e (the data_diet protocol), checked against a hand computation;
the shared runs keep the weights the metrics ask for; source=recorded still gives the recorded value."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from datacull.data.base import build_source
from datacull.metrics.context import ScoreContext
from datacull.metrics.el2n import el2n
from datacull.training.data import input_geometry
from datacull.training.dynamics import shared_keep_epochs
from datacull.training.models import build_model
from datacull.training.trainer import cached_run, run_seeds, train_model, weights_path


def tiny_ctx(make_cfg, *overrides):
    cfg = make_cfg("data.size=40", "model.width=4", "train.epochs=3", "train.batch_size=16",
                   "train.keep_epoch_weights=1", *overrides)
    source = build_source(cfg.data)
    return ScoreContext(cfg, source, np.arange(len(source)))


def run_metric(ctx, **changes):
    return el2n(ctx, OmegaConf.merge(ctx.params("el2n"), changes))


def el2n_by_hand(ctx, weights_file) -> np.ndarray:
    """Load the saved weights into a fresh model, eval mode, unaugmented images, softmax, ||p - onehot||."""
    channels, size = input_geometry(ctx.cfg.model, ctx.source)
    model = build_model(ctx.cfg.model, ctx.num_classes, channels, size[0])
    model.load_state_dict(torch.load(weights_file, map_location="cpu", weights_only=True))
    model.eval()
    images = np.stack([ctx.source.load(i) for i in ctx.indices])
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    with torch.no_grad():
        p = torch.softmax(model(x).double(), dim=1).numpy()
    onehot = np.eye(ctx.num_classes)[ctx.labels]
    return np.sqrt(((p - onehot) ** 2).sum(axis=1))


def test_checkpoint_el2n_equals_the_saved_weights_scored_by_hand(make_cfg):
    ctx = tiny_ctx(make_cfg, "metric.el2n.runs=2", "metric.el2n.epoch=1")
    seeds = run_seeds(ctx.cfg, 2)
    # a run trained before anyone asked for epoch 1 dropped its weights (keep_epoch_weights=1) ...
    first = cached_run(ctx, seeds[0])
    assert not weights_path(first.run_dir, 1).exists()
    scores = run_metric(ctx)
    # ... so it was trained again, keeping them, and run.json says which epochs are kept
    runs = [cached_run(ctx, s) for s in seeds]
    for run in runs:
        assert weights_path(run.run_dir, 1).exists() and not weights_path(run.run_dir, 2).exists()
        assert json.loads((run.run_dir / "run.json").read_text())["keep_epochs"] == [1]
    want = np.mean([el2n_by_hand(ctx, weights_path(r.run_dir, 1)) for r in runs], axis=0)
    assert scores.shape == (40,)
    np.testing.assert_allclose(scores, want, rtol=1e-5, atol=1e-6)
    # the same call again reuses the runs (no retraining)
    mtimes = [weights_path(r.run_dir, 1).stat().st_mtime_ns for r in runs]
    np.testing.assert_array_equal(run_metric(ctx), scores)
    assert [weights_path(r.run_dir, 1).stat().st_mtime_ns for r in runs] == mtimes


def test_epoch_zero_scores_the_inits_without_training(make_cfg):
    ctx = tiny_ctx(make_cfg, "metric.el2n.runs=2", "metric.el2n.epoch=0")
    scores = run_metric(ctx)
    assert not list(ctx.runs_dir.glob("*/*-seed*"))  # nothing trained
    want = []
    for seed in run_seeds(ctx.cfg, 2):  # the trainer's epoch-0 weights of the same seeds
        run = train_model(ctx.cfg, ctx.source, ctx.indices, seed, ctx.runs_dir / f"init-{seed}", record=False, epochs=0)
        want.append(el2n_by_hand(ctx, weights_path(run.run_dir, 0)))
    np.testing.assert_allclose(scores, np.mean(want, axis=0), rtol=1e-5, atol=1e-6)
    # at init every prediction is near uniform: EL2N near sqrt((1 - 1/C)^2 + (C - 1)/C^2)
    assert np.abs(scores - np.sqrt(1 - 1 / ctx.num_classes)).max() < 0.2


def test_recorded_source_reads_the_training_pass(make_cfg):
    ctx = tiny_ctx(make_cfg, "metric.el2n.runs=2", "metric.el2n.epoch=2", "metric.el2n.source=recorded")
    scores = run_metric(ctx)
    recorded = [np.load(cached_run(ctx, s).run_dir / "record" / "el2n.npy")[1] for s in run_seeds(ctx.cfg, 2)]
    np.testing.assert_allclose(scores, np.mean(recorded, axis=0), rtol=1e-6)
    checkpoint = run_metric(ctx, source="checkpoint")
    assert not np.allclose(checkpoint, scores)  # eval mode on clean inputs is a different quantity


def test_shared_runs_keep_every_epoch_the_metric_settings_ask_for(make_cfg):
    cfg = make_cfg("train.epochs=10", "metric.el2n.epoch=4", "metric.grand.epoch=3", "metric.grand_last_layer.epoch=0",
                   "metric.ensemble_uncertainty.checkpoints=2")
    assert shared_keep_epochs(cfg) == {3, 4}
    cfg = make_cfg("train.epochs=10", "metric.el2n.source=recorded", "metric.ensemble_uncertainty.pool=in_sample",
                   "metric.ensemble_uncertainty.checkpoints=2")
    assert shared_keep_epochs(cfg) == {9, 10}


@pytest.mark.parametrize("epoch", [1, 2])
def test_train_model_keeps_the_requested_epochs(make_cfg, tmp_path, epoch):
    ctx = tiny_ctx(make_cfg)
    run = train_model(ctx.cfg, ctx.source, ctx.indices, 5, tmp_path / "run", record=False, keep_epochs=[epoch, 7])
    kept = sorted(int(p.stem[-4:]) for p in run.run_dir.glob("weights-epoch*.pt"))
    assert kept == [0, epoch, 3]  # init, the requested epoch, the last keep_epoch_weights=1 (7 > epochs ignored)
