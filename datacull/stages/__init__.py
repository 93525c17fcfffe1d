"""Stage entry points: each is a plain function `stage(cfg) -> dict[str, Path]`.

Stages read the artifacts their config names, write their own atomically and skip work whose
output exists with the same config fingerprint. They never know how they were launched.
"""
from __future__ import annotations

import importlib
from typing import Callable

# stage name -> (module, function, one-line summary)
STAGES: dict[str, tuple[str, str, str]] = {
    "run": ("datacull.stages.run", "run", "embed -> score -> select -> export -> summary (the main job)"),
    "embed": ("datacull.stages.embed", "embed", "embed the data source with the configured encoder"),
    "score": ("datacull.stages.score", "score", "compute the configured pruning metrics into scores.parquet"),
    "select": ("datacull.stages.select", "select", "rank by a metric and keep a fraction by a policy"),
    "export": ("datacull.stages.export", "export", "write the kept examples as webdataset shards + manifest"),
    "train": ("datacull.stages.train", "train", "train on a selection's kept examples, evaluate, write a result row"),
    "sweep": ("datacull.stages.sweep", "sweep", "scaling / metric-comparison grid: score once, train every point, report"),
    "report": ("datacull.stages.report", "report", "scaling curves + metric comparison report (index.html, report.md, PNGs)"),
    "theory": ("datacull.stages.theory", "theory", "perceptron theory of data pruning (Figure 1 of Sorscher et al.)"),
    "verify": ("datacull.stages.verify", "verify", "recount shards, manifest, selection and results; exit 2 listing problems"),
}


def get_stage(name: str) -> Callable:
    """The stage function registered under `name` (imported on first use)."""
    module, function, _ = STAGES[name]
    return getattr(importlib.import_module(module), function)
