"""Encoders: pixels PCA against an independent SVD, SimCLR's loss against a direct implementation,
cache reuse and determinism, timm weights (random, local checkpoint, missing -> clear error)."""
from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from datacull.data.base import ArraySource
from datacull.encoders.augment import AugmentConfig, simclr_view
from datacull.encoders.base import build_encoder
from datacull.encoders.simclr import nt_xent_loss
from datacull.errors import DatacullError

CPU = torch.device("cpu")


def blobs(n=96, side=12, channels=1, classes=3, seed=0, name="blobs"):
    """Class templates plus noise, as an in-memory source."""
    rng = np.random.default_rng(seed)
    templates = rng.uniform(0, 255, size=(classes, side, side, channels))
    labels = np.arange(n) % classes
    images = np.clip(templates[labels] + rng.normal(0, 30, size=(n, side, side, channels)), 0, 255).astype(np.uint8)
    return ArraySource(name, "train", images, labels, classes)


def encoder_cfg(**values):
    return OmegaConf.create(values)


def embed(encoder, source):
    batch = torch.from_numpy(np.stack([source.load(i) for i in range(len(source))])).permute(0, 3, 1, 2)
    return encoder.encode(batch.contiguous()).numpy()


# ---------------------------------------------------------------- pixels


def test_pixels_pca_matches_numpy_svd(tmp_path):
    source = blobs(n=80, side=6)
    encoder = build_encoder(encoder_cfg(name="pixels", dim=5, fit_samples=None, whiten=False), seed=0)
    encoder.prepare(source, tmp_path, CPU)
    got = embed(encoder, source)

    rows = source.images.reshape(len(source), -1).astype(np.float64) / 255.0
    centred = rows - rows.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    expected = centred @ vt[:5].T
    assert got.shape == (80, 5) and encoder.dim == 5
    signs = np.sign((got * expected).sum(axis=0))  # principal axes are defined up to sign
    np.testing.assert_allclose(got * signs, expected, atol=1e-4)


def test_pixels_whiten_gives_unit_variance_and_dim_is_capped(tmp_path):
    source = blobs(n=40, side=4)
    encoder = build_encoder(encoder_cfg(name="pixels", dim=1000, fit_samples=None, whiten=True), seed=0)
    encoder.prepare(source, tmp_path, CPU)
    got = embed(encoder, source)
    assert encoder.dim == 16  # 4x4 pixels < 40 images < 1000 asked
    np.testing.assert_allclose(got.var(axis=0, ddof=1)[:10], 1.0, rtol=1e-3)


def test_pixels_cache_is_reused_and_keyed_by_data(tmp_path):
    cfg = encoder_cfg(name="pixels", dim=4, fit_samples=50)
    first = build_encoder(cfg, seed=1)
    first.prepare(blobs(), tmp_path, CPU)
    assert first.fitted and first.cache_path.exists()
    mtime = first.cache_path.stat().st_mtime_ns
    second = build_encoder(cfg, seed=1)
    second.prepare(blobs(), tmp_path, CPU)
    assert not second.fitted and second.cache_path == first.cache_path
    assert second.cache_path.stat().st_mtime_ns == mtime
    np.testing.assert_array_equal(embed(first, blobs()), embed(second, blobs()))
    other = build_encoder(cfg, seed=1)
    other.prepare(blobs(seed=5), tmp_path, CPU)  # same name/split/size, other pixels: another fit
    assert other.fitted and other.cache_path != first.cache_path
    assert len(list(tmp_path.glob("pixels-*.npz"))) == 2


def test_pixels_sample_is_seeded(tmp_path):
    cfg = encoder_cfg(name="pixels", dim=3, fit_samples=30)
    a, b, c = (build_encoder(cfg, seed=s) for s in (7, 7, 8))
    for encoder, folder in ((a, "a"), (b, "b"), (c, "c")):
        encoder.prepare(blobs(), tmp_path / folder, CPU)
    np.testing.assert_array_equal(embed(a, blobs()), embed(b, blobs()))
    assert not np.allclose(np.abs(embed(a, blobs())), np.abs(embed(c, blobs())))


# ---------------------------------------------------------------- simclr


def nt_xent_reference(z1, z2, temperature):
    """Chen et al. 2020, Algorithm 1, written out with loops over the 2N views."""
    views = [*z1, *z2]
    n = len(z1)

    def sim(u, v):
        return float(u @ v) / (float(u.norm()) * float(v.norm()))

    def ell(i, j):
        denominator = sum(math.exp(sim(views[i], views[k]) / temperature) for k in range(2 * n) if k != i)
        return -math.log(math.exp(sim(views[i], views[j]) / temperature) / denominator)

    return sum(ell(k, k + n) + ell(k + n, k) for k in range(n)) / (2 * n)


def test_nt_xent_matches_reference():
    generator = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(5, 7, generator=generator, dtype=torch.float64), torch.randn(5, 7, generator=generator,
                                                                                      dtype=torch.float64)
    for temperature in (0.1, 0.5):
        assert float(nt_xent_loss(z1, z2, temperature)) == pytest.approx(nt_xent_reference(z1, z2, temperature),
                                                                         rel=1e-9)
    assert float(nt_xent_loss(z1, z1.clone(), 0.1)) < float(nt_xent_loss(z1, z2, 0.1))  # identical views: easy


def test_augment_views_are_seeded_in_range_and_varied():
    images = torch.rand(6, 3, 10, 10)
    a = simclr_view(images, AugmentConfig(), torch.Generator().manual_seed(3))
    b = simclr_view(images, AugmentConfig(), torch.Generator().manual_seed(3))
    c = simclr_view(images, AugmentConfig(), torch.Generator().manual_seed(4))
    assert a.shape == images.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1
    # full-area crop, no flip, no jitter is the identity
    identity = AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, grayscale_p=0.0)
    torch.testing.assert_close(simclr_view(images, identity, torch.Generator().manual_seed(0)), images,
                               atol=1e-5, rtol=0)


SIMCLR = dict(name="simclr", dim=8, width=4, proj_dim=8, epochs=1, train_samples=64, train_batch_size=32,
              lr=0.01, temperature=0.5)


def test_simclr_trains_caches_and_is_deterministic(tmp_path):
    source = blobs(n=90, side=12)
    first = build_encoder(encoder_cfg(**SIMCLR), seed=0)
    first.prepare(source, tmp_path / "a", CPU)
    assert first.trained and len(first.losses) == 1 and math.isfinite(first.losses[0])
    out = embed(first, source)
    assert out.shape == (90, 8) and out.dtype == np.float32 and np.isfinite(out).all()
    mtime = first.cache_path.stat().st_mtime_ns

    again = build_encoder(encoder_cfg(**SIMCLR), seed=0)
    again.prepare(source, tmp_path / "a", CPU)
    assert not again.trained and again.cache_path.stat().st_mtime_ns == mtime
    np.testing.assert_array_equal(embed(again, source), out)

    fresh = build_encoder(encoder_cfg(**SIMCLR), seed=0)  # retrained from scratch elsewhere: same weights
    fresh.prepare(source, tmp_path / "b", CPU)
    assert fresh.trained
    np.testing.assert_array_equal(embed(fresh, source), out)

    other_seed = build_encoder(encoder_cfg(**SIMCLR), seed=1)
    other_seed.prepare(source, tmp_path / "a", CPU)
    assert other_seed.trained and not np.allclose(embed(other_seed, source), out)


def test_simclr_training_lowers_the_loss(tmp_path):
    source = blobs(n=128, side=12)
    cfg = encoder_cfg(**{**SIMCLR, "epochs": 6, "train_samples": None})
    encoder = build_encoder(cfg, seed=0)
    encoder.prepare(source, tmp_path, CPU)
    assert encoder.losses[-1] < encoder.losses[0]


def test_simclr_rgb_and_resize(tmp_path):
    source = blobs(n=40, side=10, channels=3)
    encoder = build_encoder(encoder_cfg(**{**SIMCLR, "image_size": 8, "train_batch_size": 16}), seed=0)
    encoder.prepare(source, tmp_path, CPU)
    assert encoder.input_size == (8, 8) and encoder.input_channels == 3
    assert encoder.encode(torch.zeros(2, 3, 8, 8, dtype=torch.uint8)).shape == (2, 8)


def test_simclr_rejects_bad_settings(tmp_path):
    with pytest.raises(DatacullError, match="temperature"):
        build_encoder(encoder_cfg(**{**SIMCLR, "temperature": 0}), seed=0)
    with pytest.raises(DatacullError, match="crop_scale"):
        build_encoder(encoder_cfg(**{**SIMCLR, "crop_scale": [0.5, 0.2]}), seed=0)


# ---------------------------------------------------------------- registry / configs


def test_unknown_encoder_lists_valid_names():
    with pytest.raises(DatacullError, match="pixels.*simclr.*timm"):
        build_encoder(encoder_cfg(name="pixelz"), seed=0)


@pytest.mark.parametrize("option", ["pixels", "simclr", "timm", "dino_vits16"])
def test_config_files_compose(option, tmp_path):
    from datacull.config import compose

    cfg = compose([f"encoder={option}", "data=synthetic", f"paths.work_dir={tmp_path}"])
    assert cfg.encoder.name in ("pixels", "simclr", "timm") and cfg.encoder.dtype in ("float16", "float32")
    assert {"batch_size", "num_workers"} <= set(cfg.encoder)


def test_embed_stage_shards_share_one_simclr_training(tmp_path):
    from datacull import layout
    from datacull.config import compose
    from datacull.stages.embed import embed as embed_stage
    from datacull.stages.embed import load_embeddings

    base = ["data=synthetic", "data.size=64", "encoder=simclr", f"paths.work_dir={tmp_path}", "device=cpu",
            "shard.count=2", *[f"encoder.{k}={v}" for k, v in SIMCLR.items() if k != "name"]]
    for index in (1, 0):
        cfg = compose([*base, f"shard.index={index}"])
        embed_stage(cfg)
    rows, table = load_embeddings(cfg)
    assert np.asarray(rows).shape == (64, 8) and len(table) == 64 and np.isfinite(np.asarray(rows)).all()
    assert len(list(layout.encoder_cache_dir(cfg).glob("simclr-*.pt"))) == 1


# ---------------------------------------------------------------- timm


def timm_cfg(**values):
    return encoder_cfg(**{"name": "timm", "model_name": "test_resnet", "pretrained": False, "image_size": 32,
                          **values})


def test_timm_random_init_features(tmp_path):
    import timm

    encoder = build_encoder(timm_cfg(), seed=0)
    encoder.prepare(blobs(n=4, side=20), tmp_path, CPU)
    model = timm.create_model("test_resnet", num_classes=0)
    assert encoder.dim == model.num_features and encoder.input_size == (32, 32) and encoder.input_channels == 3
    out = encoder.encode(torch.randint(0, 256, (3, 1, 32, 32), dtype=torch.uint8))  # grayscale -> 3 channels
    assert out.shape == (3, model.num_features) and torch.isfinite(out).all()


def test_timm_local_checkpoint_really_loads(tmp_path):
    import timm

    torch.manual_seed(123)
    model = timm.create_model("test_resnet").eval()  # a "trained" model with a classifier, as checkpoints are
    checkpoint = tmp_path / "weights.pth"
    torch.save(model.state_dict(), checkpoint)
    encoder = build_encoder(timm_cfg(pretrained=True, checkpoint=str(checkpoint)), seed=0)
    encoder.prepare(blobs(n=4, side=20), tmp_path, CPU)

    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    x = (images.float() / 255 - 0.5) / 0.5  # test_resnet's pretrained mean/std
    with torch.no_grad():
        expected = model.forward_head(model.forward_features(x), pre_logits=True)
    torch.testing.assert_close(encoder.encode(images), expected, rtol=1e-5, atol=1e-5)


def test_timm_checkpoint_prefix_and_mismatch(tmp_path):
    import timm

    model = timm.create_model("test_resnet")
    checkpoint = tmp_path / "moco.pth"
    torch.save({"state_dict": {f"module.encoder_q.{k}": v for k, v in model.state_dict().items()}, "epoch": 3},
               checkpoint)
    with pytest.raises(DatacullError, match="random init"):  # keys do not match: refuse, never silently random
        build_encoder(timm_cfg(checkpoint=str(checkpoint)), seed=0).prepare(blobs(n=4), tmp_path, CPU)
    encoder = build_encoder(timm_cfg(checkpoint=str(checkpoint), checkpoint_prefix="module.encoder_q."), seed=0)
    encoder.prepare(blobs(n=4), tmp_path, CPU)
    assert encoder.dim == model.num_features
    with pytest.raises(DatacullError, match="does not exist"):
        build_encoder(timm_cfg(checkpoint=str(tmp_path / "nope.pth")), seed=0).prepare(blobs(n=4), tmp_path, CPU)


def test_timm_pretrained_without_weights_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(DatacullError, match="encoder.checkpoint=.*encoder.pretrained=false"):
        build_encoder(timm_cfg(pretrained=True), seed=0).prepare(blobs(n=4), tmp_path, CPU)


def test_timm_unknown_model_name(tmp_path):
    with pytest.raises(DatacullError, match="unknown timm model.*test_resnet"):
        build_encoder(timm_cfg(model_name="test_resnett"), seed=0).prepare(blobs(n=4), tmp_path, CPU)


@pytest.mark.skipif(not os.path.isdir("/usr/share/datasets/fashion-mnist"), reason="Fashion-MNIST not installed")
def test_default_simclr_beats_chance_on_fashion_mnist(tmp_path):
    from datacull.config import compose
    from datacull.data.base import SubsetSource, build_source

    cfg = compose(["data=fashion_mnist", "encoder=simclr", "encoder.epochs=1", "encoder.train_samples=5000"])
    source = SubsetSource(build_source(cfg.data), np.arange(3000))
    encoder = build_encoder(cfg.encoder, 0)
    encoder.prepare(source, tmp_path, CPU)
    rows = embed(encoder, source)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    similarity = rows @ rows.T
    np.fill_diagonal(similarity, -np.inf)
    nearest = similarity.argmax(axis=1)
    assert (source.labels[nearest] == source.labels).mean() > 0.6
