"""`pixels`: PCA of raw pixels, the cheap baseline encoder (no training, no weights).

Pixels are scaled to [0, 1] and flattened (C*H*W); scikit-learn's PCA is fitted on a seeded random
sample of at most `encoder.fit_samples` images, and an image's embedding is its projection on the
first `encoder.dim` principal components (divided by their standard deviations if `whiten`).
The mean, components and explained variances are cached as an `.npz` (no pickles).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from sklearn.decomposition import PCA

from datacull.data.base import DataSource
from datacull.encoders.base import Encoder, register_encoder
from datacull.encoders.common import cache_lock, image_geometry, load_images, seeded_subset, state_fingerprint
from datacull.errors import DatacullError
from datacull.store import atomic_path


@register_encoder("pixels", "PCA of raw pixels (cheap baseline, no training)")
class PixelPCAEncoder(Encoder):
    """Projection of [0, 1]-scaled flattened pixels on their top principal components."""

    def __init__(self, encoder_cfg, seed: int):
        self.cfg = encoder_cfg
        self.seed = int(seed)
        self.requested_dim = int(encoder_cfg.get("dim", 64))
        self.fit_samples = encoder_cfg.get("fit_samples", 20000)
        self.whiten = bool(encoder_cfg.get("whiten", False))
        if self.requested_dim < 1:
            raise DatacullError(f"encoder.dim must be >= 1, got {self.requested_dim}")
        self.mean: torch.Tensor | None = None
        self.components: torch.Tensor | None = None  # (dim, C*H*W), scaled by 1/std when whitening
        self.cache_path: Path | None = None
        self.fitted = False  # True when the last prepare() fitted rather than loaded

    @property
    def dim(self) -> int:
        if self.components is None:
            raise RuntimeError("PixelPCAEncoder.dim is known after prepare()")
        return int(self.components.shape[0])

    def prepare(self, source: DataSource, cache_dir: Path, device: torch.device) -> None:
        """Load the PCA basis for `source` from `cache_dir`, fitting and caching it first if absent."""
        self.input_size, self.input_channels = image_geometry(self.cfg, source)
        tag = f"pixels-{state_fingerprint(self.cfg, self.seed, source)}"
        self.cache_path = Path(cache_dir) / f"{tag}.npz"
        self.fitted = False
        with cache_lock(cache_dir, tag):
            if not self.cache_path.exists():
                self._fit_and_save(source)
                self.fitted = True
        with np.load(self.cache_path, allow_pickle=False) as state:
            mean, components, variance = state["mean"], state["components"], state["explained_variance"]
        if self.whiten:
            components = components / np.sqrt(np.maximum(variance, 1e-12))[:, None]
        self.mean = torch.from_numpy(mean.astype(np.float32)).to(device)
        self.components = torch.from_numpy(components.astype(np.float32)).to(device)

    def _fit_and_save(self, source: DataSource) -> None:
        indices = seeded_subset(len(source), self.fit_samples, self.seed)
        images = load_images(source, indices, self.input_size, self.input_channels,
                             int(self.cfg.get("num_workers", 0)), desc="pixels: load PCA sample")
        rows = images.reshape(len(images), -1).numpy().astype(np.float32) / 255.0
        n_components = min(self.requested_dim, rows.shape[0], rows.shape[1])
        pca = PCA(n_components=n_components, random_state=self.seed).fit(rows)
        with atomic_path(self.cache_path, suffix=".npz") as tmp:
            with open(tmp, "wb") as handle:
                np.savez(handle, mean=pca.mean_.astype(np.float32), components=pca.components_.astype(np.float32),
                         explained_variance=pca.explained_variance_.astype(np.float32))

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(N, dim) float32 projections of a uint8 (N, C, H, W) batch."""
        if self.components is None:
            raise RuntimeError("call prepare() before encode()")
        rows = images.reshape(len(images), -1).to(torch.float32) / 255.0
        return (rows - self.mean) @ self.components.T
