"""Planted-case helpers shared by the metric tests."""
import numpy as np

from datacull.data.base import ArraySource, build_source
from datacull.metrics.context import ScoreContext


def flipped_digits(make_cfg, n: int, fraction: float, *overrides):
    """A ScoreContext on the first `n` digits with `fraction` of the labels changed to another class."""
    cfg = make_cfg("data=digits", f"data.limit={n}", *overrides)
    base = build_source(cfg.data)
    rng = np.random.default_rng(0)
    labels = base.labels.copy()
    flip = rng.choice(n, size=int(round(fraction * n)), replace=False)
    labels[flip] = (labels[flip] + rng.integers(1, 10, len(flip))) % 10
    images = np.stack([base.load(i) for i in range(n)])
    return ScoreContext(cfg, ArraySource("digits", "train", images, labels, 10), np.arange(n)), flip
