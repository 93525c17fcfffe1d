"""GraNd (Paul et al. 2021): exact per-example gradient norms against a per-example autograd loop,
the last-layer closed form against autograd on the classifier, the registered metrics, bad input
and determinism."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from datacull.training.per_example import (last_layer_grad_norms, per_example_grad_norms,
                                           per_example_grad_norms_loop)


class TinyNet(nn.Module):
    """Conv + BatchNorm + linear head, with the penultimate/classifier interface of datacull models."""

    def __init__(self, classes: int = 4):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.classifier = nn.Linear(24, classes)

    def penultimate(self, x):
        return self.features(x)

    def forward(self, x):
        return self.classifier(self.penultimate(x))


@pytest.fixture
def tiny_batch():
    torch.manual_seed(0)
    model = TinyNet()
    # non-trivial running statistics, so eval-mode BatchNorm is not the identity
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, 1, 8, 8) * 2 + 1)
    return model, torch.randn(20, 1, 8, 8), torch.randint(0, 4, (20,))


@pytest.mark.parametrize("chunk_size", [None, 1, 7])
def test_exact_grand_matches_per_example_backward_loop(tiny_batch, chunk_size):
    model, x, y = tiny_batch
    fast = per_example_grad_norms(model, x, y, chunk_size=chunk_size)
    slow = per_example_grad_norms_loop(model, x, y)
    rel = ((fast - slow).abs() / slow).max().item()
    assert rel < 1e-4
    assert model.training, "the caller's training flag must be restored"


def test_last_layer_closed_form_equals_formula_and_autograd(tiny_batch):
    model, x, y = tiny_batch
    norms = last_layer_grad_norms(model, x, y)
    model.eval()
    with torch.no_grad():
        h = model.penultimate(x)
        p = torch.softmax(model.classifier(h), 1)
    formula = (p - F.one_hot(y, 4)).norm(dim=1) * torch.sqrt((h ** 2).sum(1) + 1)
    assert torch.equal(norms, formula)
    for i in range(len(x)):
        loss = F.cross_entropy(model(x[i: i + 1]), y[i: i + 1])
        gw, gb = torch.autograd.grad(loss, [model.classifier.weight, model.classifier.bias])
        true = torch.sqrt((gw ** 2).sum() + (gb ** 2).sum())
        assert abs(true.item() - norms[i].item()) <= 1e-5 * true.item()
    # the last layer is only part of the gradient: the exact norm is at least as large
    assert (per_example_grad_norms(model, x, y) >= norms * (1 - 1e-5)).all()


# --- the registered metrics on datacull's own models ---------------------------------------------
from datacull.data.base import ArraySource, build_source  # noqa: E402
from datacull.errors import DatacullError  # noqa: E402
from datacull.metrics.context import ScoreContext  # noqa: E402
from datacull.metrics.grand import grand, grand_last_layer, init_model  # noqa: E402
from datacull.training.trainer import cached_run, load_epoch_model, run_seeds, train_model, weights_path  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402


def tiny_ctx(make_cfg, *overrides):
    cfg = make_cfg("data.size=40", "model.width=4", "train.epochs=2", "train.batch_size=16", *overrides)
    source = build_source(cfg.data)
    return ScoreContext(cfg, source, np.arange(len(source)))


def run_metric(fn, name, ctx, **changes):
    return fn(ctx, OmegaConf.merge(ctx.params(name), changes))


def all_inputs(ctx):
    images = np.stack([ctx.source.load(i) for i in ctx.indices])
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0, torch.from_numpy(ctx.labels)


def test_grand_metric_equals_loop_over_the_shared_inits(make_cfg):
    ctx = tiny_ctx(make_cfg, "metric.grand.runs=2", "metric.grand.chunk_size=5", "metric.grand.batch_size=16")
    scores = grand(ctx, ctx.params("grand"))
    x, y = all_inputs(ctx)
    want = np.mean([per_example_grad_norms_loop(init_model(ctx, s, torch.device("cpu")), x, y).numpy()
                    for s in run_seeds(ctx.cfg, 2)], axis=0)
    assert scores.shape == (40,)
    np.testing.assert_allclose(scores, want, rtol=1e-4)
    # the init models are exactly those the trainer starts the shared runs from
    seed = run_seeds(ctx.cfg, 1)[0]
    run = train_model(ctx.cfg, ctx.source, ctx.indices, seed, ctx.runs_dir / "init-check", record=False, epochs=0)
    saved = torch.load(weights_path(run.run_dir, 0), weights_only=True)
    for name, value in init_model(ctx, seed, torch.device("cpu")).state_dict().items():
        assert torch.equal(value, saved[name]), name


def test_grand_last_layer_metric_equals_closed_form(make_cfg):
    ctx = tiny_ctx(make_cfg, "metric.grand_last_layer.runs=3")
    scores = grand_last_layer(ctx, ctx.params("grand_last_layer"))
    x, y = all_inputs(ctx)
    want = []
    for seed in run_seeds(ctx.cfg, 3):
        model = init_model(ctx, seed, torch.device("cpu"))
        with torch.no_grad():
            h = model.penultimate(x)
            p = torch.softmax(model.classifier(h), 1)
        want.append(((p - F.one_hot(y, ctx.num_classes)).norm(dim=1) * torch.sqrt((h ** 2).sum(1) + 1)).numpy())
    np.testing.assert_allclose(scores, np.mean(want, axis=0), rtol=1e-6)


def test_grand_after_training_uses_the_shared_runs_epoch_weights(make_cfg):
    ctx = tiny_ctx(make_cfg, "metric.grand.runs=1", "metric.grand.epoch=2")
    scores = grand(ctx, ctx.params("grand"))
    run = cached_run(ctx, run_seeds(ctx.cfg, 1)[0])
    x, y = all_inputs(ctx)
    want = per_example_grad_norms_loop(load_epoch_model(ctx.cfg, ctx.source, run.run_dir, 2), x, y).numpy()
    np.testing.assert_allclose(scores, want, rtol=1e-4)
    with pytest.raises(DatacullError, match="metric.grand.epoch"):
        run_metric(grand, "grand", ctx, epoch=3)


def test_grand_bad_input(make_cfg):
    ctx = tiny_ctx(make_cfg)
    unlabeled = ArraySource("synthetic", "train", ctx.source.images, np.full(40, -1), ctx.num_classes)
    bad = ScoreContext(ctx.cfg, unlabeled, ctx.indices)
    for name, fn in (("grand", grand), ("grand_last_layer", grand_last_layer)):
        with pytest.raises(DatacullError, match=name):
            fn(bad, ctx.params(name))
    with pytest.raises(DatacullError, match="runs"):
        run_metric(grand, "grand", ctx, runs=0)
    with pytest.raises(DatacullError, match="chunk_size"):
        run_metric(grand, "grand", ctx, chunk_size=0)


def test_grand_is_deterministic(make_cfg):
    first = run_metric(grand, "grand", tiny_ctx(make_cfg), runs=1)
    again = run_metric(grand, "grand", tiny_ctx(make_cfg), runs=1)
    other = run_metric(grand, "grand", tiny_ctx(make_cfg, "seed=1"), runs=1)
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)
