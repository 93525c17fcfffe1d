"""scikit-learn's bundled digits (UCI optical digits): 1,797 8x8 grayscale images, 10 classes.

There is no official split; a fixed, stratified 80/20 train/test split (seed 0) is used.
"""
from __future__ import annotations

import numpy as np

from datacull.data.base import ArraySource, register_source


@register_source("digits", "scikit-learn digits 8x8 grayscale, 10 classes (bundled, tiny)")
def digits(data_cfg, split: str) -> ArraySource:
    """Open the digits `split` ("train" or "test"), pixel values rescaled from 0-16 to 0-255."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = np.clip(bunch.images * (255.0 / 16.0), 0, 255).round().astype(np.uint8)
    index = np.arange(len(images))
    train_idx, test_idx = train_test_split(index, test_size=0.2, random_state=0, stratify=bunch.target)
    chosen = np.sort(train_idx if split == "train" else test_idx)
    return ArraySource("digits", split, images[chosen], bunch.target[chosen], 10,
                       [str(d) for d in range(10)])
