"""The export stage: the kept examples of the selection as webdataset shards + wids index + manifest.

The writing itself lives in `datacull.export`; this stage resolves paths and config, skips work when
an export with the same fingerprint (selection fingerprint + export config + data) is complete.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from omegaconf import DictConfig

from datacull import layout
from datacull.data.base import DataSource, build_source
from datacull.errors import DatacullError
from datacull.export import existing_export, export_selection, sha256_file
from datacull.stages.select import resolve_policy
from datacull.store import fingerprint, parquet_fingerprint, to_plain

EXPORT_FORMAT_VERSION = 1

log = logging.getLogger(__name__)


def export_fingerprint(cfg: DictConfig, selection_fp: str) -> str:
    """Fingerprint of everything the shards depend on."""
    return fingerprint("export", EXPORT_FORMAT_VERSION, selection_fp, to_plain(cfg.export),
                       layout.data_identity(cfg.data))


def export(cfg: DictConfig, source: DataSource | None = None) -> dict[str, Path]:
    """Write the selection's kept examples to `layout.shards_dir(cfg)`; returns shards_dir, manifest, wids_index."""
    cfg = resolve_policy(cfg)  # select.policy=auto: the pilot's choice (datacull/policies/auto.py)
    selection_path = layout.selection_path(cfg)
    if not selection_path.is_file():
        raise DatacullError(f"no selection at {selection_path}; run `datacull select` first")
    fp = export_fingerprint(cfg, parquet_fingerprint(selection_path) or sha256_file(selection_path))
    out_dir = layout.shards_dir(cfg)
    done = existing_export(out_dir, fp)
    if done:
        log.info("export: %s is up to date", out_dir)
        return done
    source = source or build_source(cfg.data)
    paths = export_selection(
        source, selection_path, out_dir, name=str(cfg.export.name), maxcount=int(cfg.export.maxcount),
        mtime=cfg.export.get("mtime"), image_format=str(cfg.export.get("image_format", "png")),
        on_error=str(cfg.data.get("on_error", "skip")), fingerprint=fp, config=to_plain(cfg),
        scores_path=layout.scores_path(cfg))
    manifest = json.loads(paths["manifest"].read_text())
    counts = manifest["counts"]
    log.info("export: %d kept in %d shards, %d pruned, %d skipped -> %s", counts["kept"], len(manifest["shards"]),
             counts["pruned"], counts["skipped"], out_dir)
    return paths
