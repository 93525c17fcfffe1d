"""A tiny synthetic dataset for tests and smoke runs: Gaussian blobs drawn as images.

Each class has a fixed random template image; an example is its class template plus pixel noise
scaled by `data.noise`, so class structure is real and difficulty varies with the noise draw.
"""
from __future__ import annotations

import numpy as np

from datacull.data.base import ArraySource, register_source


@register_source("synthetic", "random class templates plus noise (tiny, for tests)")
def synthetic(data_cfg, split: str) -> ArraySource:
    """Generate `data.size` (train) or `data.test_size` (test) images of `data.image_size` pixels."""
    num_classes = int(data_cfg.get("num_classes", 4))
    side = int(data_cfg.get("image_size") or 16)
    channels = int(data_cfg.get("channels", 1))
    n = int(data_cfg.get("size", 256) if split == "train" else data_cfg.get("test_size", 128))
    seed = int(data_cfg.get("seed", 0))
    templates = np.random.default_rng(seed).uniform(0, 255, size=(num_classes, side, side, channels))
    rng = np.random.default_rng([seed, 1 if split == "train" else 2])
    labels = np.arange(n) % num_classes
    rng.shuffle(labels)
    noise = rng.normal(0, float(data_cfg.get("noise", 40.0)), size=(n, side, side, channels))
    images = np.clip(templates[labels] + noise, 0, 255).astype(np.uint8)
    return ArraySource("synthetic", split, images, labels, num_classes)
