"""The main job: embed -> score -> select -> export, then a short summary with figures."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from datacull import layout
from datacull.data.base import build_source
from datacull.logs import current_log_file
from datacull.report import class_balance, plot_examples, plot_selection
from datacull.stages.export import export
from datacull.stages.score import requested_metrics, score
from datacull.stages.select import resolve_policy, select
from datacull.store import ensure_dir

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict[str, Path]:
    """Curate the configured dataset end to end and report where everything is."""
    requested_metrics(cfg)  # bad metric names fail before any work
    ensure_dir(layout.experiment_dir(cfg))
    source = build_source(cfg.data)
    paths: dict[str, Path] = {}
    if not cfg.select.get("scores"):
        paths.update(score(cfg, source))
    cfg = resolve_policy(cfg)  # select.policy=auto: the pilot's choice (datacull/policies/auto.py)
    paths.update(select(cfg))
    paths.update(export(cfg))
    selection = pd.read_parquet(paths["selection"])
    metric = str(cfg.select.get("metric") or cfg.metrics[0])
    report = layout.selection_report_dir(cfg)
    paths["selection_png"] = plot_selection(selection, metric, report / "selection.png", source.class_names)
    paths["examples_png"] = plot_examples(source, selection, metric, report / "examples.png")
    _log_summary(cfg, selection, source.class_names, paths)
    return paths


def _log_summary(cfg: DictConfig, selection: pd.DataFrame, class_names, paths: dict[str, Path]) -> None:
    skipped = int((selection["rank"] < 0).sum())
    kept = int(selection["kept"].sum())
    lines = ["", "== datacull run: summary ==",
             f"data {cfg.data.name} ({cfg.data.split}): {len(selection)} examples; encoder {cfg.encoder.name}; "
             f"metrics {list(cfg.metrics)}",
             f"policy {cfg.select.policy}{' (class-balanced)' if cfg.select.class_balanced else ''}: "
             f"kept {kept}, pruned {len(selection) - kept - skipped}, skipped {skipped}"]
    balance = class_balance(selection, class_names)
    lines.append(balance.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    manifest = paths.get("manifest")
    if manifest and Path(manifest).exists():
        shards = json.loads(Path(manifest).read_text()).get("shards", [])
        lines.append(f"shards: {len(shards)} in {layout.shards_dir(cfg)}")
    lines += [f"{name:>13}: {paths[name]}" for name in ("scores", "selection", "manifest", "selection_png",
                                                           "examples_png") if name in paths]
    if current_log_file() is not None:
        lines.append(f"{'log':>13}: {current_log_file()}")
    log.info("\n".join(lines))
