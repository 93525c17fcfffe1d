"""Shared fixtures: composed configs on tiny data in a temporary work dir."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from datacull.config import compose

torch.set_num_threads(1)


@pytest.fixture
def make_cfg(tmp_path):
    """compose(...) with synthetic data, the pixels encoder and a temporary work dir, plus overrides."""

    def _make(*overrides: str):
        base = ["data=synthetic", "encoder=pixels", f"paths.work_dir={tmp_path / 'work'}", "metric.ssp.k=4",
                "device=cpu"]
        return compose([*base, *overrides])

    return _make


@pytest.fixture
def rng():
    return np.random.default_rng(0)
