"""What a metric gets to work with: the examples, their labels, embeddings on demand, the config."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from omegaconf import DictConfig, OmegaConf

from datacull import layout
from datacull.data.base import DataSource, build_source, check_labels


@dataclass
class ScoreContext:
    """The examples to score (`indices` into `source`, skipping undecodable ones) and shared inputs.

    `embeddings()` returns the rows of the configured encoder's embeddings aligned with `indices`
    (computed by the embed stage on first use). Training-dynamics metrics cache their runs under
    `runs_dir` so metrics computed from the same runs share them.
    """

    cfg: DictConfig
    source: DataSource
    indices: np.ndarray
    embeddings_loader: Callable[[], np.ndarray] | None = None
    _embeddings: np.ndarray | None = field(default=None, repr=False)
    _test_source: DataSource | None = field(default=None, repr=False)

    @property
    def labels(self) -> np.ndarray:
        """Labels of the scored examples."""
        return self.source.labels[self.indices]

    @property
    def keys(self) -> list[str]:
        """Keys of the scored examples."""
        all_keys = self.source.keys
        return [all_keys[i] for i in self.indices]

    @property
    def num_classes(self) -> int:
        return int(self.source.num_classes)

    @property
    def runs_dir(self) -> Path:
        return layout.runs_dir(self.cfg)

    def embeddings(self) -> np.ndarray:
        """float32 (len(indices), D) embeddings of the scored examples."""
        if self._embeddings is None:
            if self.embeddings_loader is None:
                raise RuntimeError("this ScoreContext was built without embeddings")
            self._embeddings = self.embeddings_loader()
        return self._embeddings

    def params(self, metric: str) -> DictConfig:
        """The metric's own config node `metric.<name>` (empty if the config has none)."""
        node = self.cfg.get("metric", {}).get(metric)
        return node if node is not None else OmegaConf.create({})

    def seed(self, metric: str) -> int:
        """A seed in [0, 2**31) derived from the global `seed` and the metric name (stable across runs)."""
        return int(np.random.SeedSequence([int(self.cfg.seed), *metric.encode()]).generate_state(1)[0] % (2**31 - 1))

    def require_labels(self, metric: str) -> np.ndarray:
        """The labels, or one clear error naming `metric` if they are missing or out of range."""
        check_labels(self.labels, self.num_classes, f"metric {metric!r}")
        return self.labels

    def test_source(self) -> DataSource:
        """The held-out split of the same dataset (`data.test_split`), opened once."""
        if self._test_source is None:
            self._test_source = build_source(self.cfg.data, self.cfg.data.get("test_split", "test"))
        return self._test_source
