"""The metric registry: every pruning metric is a function registered by name.

    @register_metric("el2n", "error L2 norm early in training", needs="training",
                     requires_labels=True, citation="Paul et al. 2021")
    def el2n(ctx: ScoreContext, params: DictConfig) -> np.ndarray | dict[str, np.ndarray]: ...

A metric returns one DIFFICULTY value per example of `ctx.indices` (higher = harder / less
typical), or a dict of columns whose first entry is the metric itself (extra columns such as a
standard error are named `{metric}_{what}`).
"""
from __future__ import annotations

from datacull.registry import Entry, Registry

METRICS: Registry = Registry("metric", "metrics")


def register_metric(name: str, summary: str, *, needs: str, requires_labels: bool, citation: str):
    """Register a metric function under `name`. `needs` is one of: none, embeddings, training."""
    if needs not in ("none", "embeddings", "training"):
        raise ValueError(f"needs must be none, embeddings or training, not {needs!r}")
    return METRICS.register(name, summary, needs=needs, requires_labels=requires_labels, citation=citation)


def list_metrics() -> list[Entry]:
    """All registered metrics (importing the built-in metric modules first)."""
    import datacull.metrics  # noqa: F401

    return METRICS.entries()


def get_metric(name: str) -> Entry:
    """The registered metric `name`, or a DatacullError listing the valid names."""
    import datacull.metrics  # noqa: F401

    return METRICS.get(name)
