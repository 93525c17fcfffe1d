"""The grid of a scaling / metric-comparison sweep: metrics x policies x fractions x sizes x seeds.

Each job is one `datacull train` (select + train + evaluate + result row) with a handful of
`select.*` keys set. The unpruned point (fraction 1.0) does not depend on the metric or policy, so
it is one job per (size, seed, class_balanced), shared by every curve (Sorscher et al. 2022, Fig. 3).
"""
from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig

from datacull.errors import DatacullError
from datacull.metrics.registry import get_metric
from datacull.select import POLICIES


@dataclass(frozen=True)
class SweepJob:
    """One training run of the grid."""

    metric: str
    policy: str
    fraction: float
    size: int | float | None
    seed: int
    class_balanced: bool

    def overrides(self) -> dict:
        """The config keys this job sets (on a copy of the sweep's config)."""
        return {"select.metric": self.metric, "select.policy": self.policy, "select.fraction": self.fraction,
                "select.count": None, "select.subset_size": self.size, "select.seed": self.seed,
                "select.class_balanced": self.class_balanced}

    def describe(self) -> str:
        """Short label for logs and progress bars."""
        what = "unpruned" if self.fraction == 1.0 else f"{self.metric}/{self.policy} f={self.fraction:g}"
        return f"{what} n={self.size if self.size is not None else 'all'} seed={self.seed}"


def _as_list(node, key: str) -> list:
    if node is None:
        raise DatacullError(f"sweep.{key} is empty; give a list, e.g. sweep.{key}=[...]")
    values = list(node) if not isinstance(node, (str, int, float, bool)) else [node]
    if not values:
        raise DatacullError(f"sweep.{key} is empty; give a list, e.g. sweep.{key}=[...]")
    return values


def sweep_metrics(cfg: DictConfig) -> list[str]:
    """The metrics of the grid (`sweep.metrics`, else the top-level `metrics`), each checked to exist."""
    node = cfg.sweep.get("metrics")
    names = [str(m) for m in _as_list(node if node is not None else cfg.metrics, "metrics")]
    for name in names:
        get_metric(name)
    if len(set(names)) != len(names):
        raise DatacullError(f"sweep.metrics lists a metric twice: {names}")
    return names


def expand_grid(cfg: DictConfig, n_examples: int | None = None) -> list[SweepJob]:
    """Validate `cfg.sweep` and list its jobs: seeds outermost, then sizes (small first), so partial
    results of a killed sweep are whole curves at the smaller sizes."""
    sw = cfg.sweep
    metrics = sweep_metrics(cfg)
    policies = [str(p) for p in _as_list(sw.get("policies"), "policies")]
    for policy in policies:
        POLICIES.get(policy)
    fractions = sorted({float(f) for f in _as_list(sw.get("fractions"), "fractions")}, reverse=True)
    bad = [f for f in fractions if not 0 < f <= 1]
    if bad:
        raise DatacullError(f"sweep.fractions must lie in (0, 1], got {bad}")
    sizes = _as_list(sw.get("sizes", [None]), "sizes")
    for size in sizes:
        if size is not None and (isinstance(size, bool) or not isinstance(size, (int, float)) or size <= 0
                                 or (isinstance(size, float) and size > 1)
                                 or (n_examples is not None and isinstance(size, int) and size > n_examples)):
            raise DatacullError(f"sweep.sizes entries must be counts <= {n_examples or 'the data size'}, "
                                f"fractions in (0, 1] or null (all), got {size!r}")
    sizes = sorted(sizes, key=lambda s: float("inf") if s is None else (s * (n_examples or 1) if isinstance(s, float) else s))
    seeds = [int(s) for s in _as_list(sw.get("seeds"), "seeds")]
    balanced = [bool(b) for b in _as_list(sw.get("class_balanced", [False]), "class_balanced")]
    jobs: list[SweepJob] = []
    for seed in seeds:
        for size in sizes:
            for cb in balanced:
                for fraction in fractions:
                    if fraction == 1.0:
                        jobs.append(SweepJob(metrics[0], "random", 1.0, size, seed, cb))
                        continue
                    for metric in metrics:
                        for policy in policies:
                            jobs.append(SweepJob(metric, policy, fraction, size, seed, cb))
    return jobs
