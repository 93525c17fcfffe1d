"""The score stage: every configured metric, one DIFFICULTY column each, into scores.parquet.

Columns: key, index, label, skip_reason, then per metric `{name}` (higher = harder) and any
extra columns it reports (`{name}_se`, `ssp_cluster`, ...). Examples that cannot be decoded (or
whose stored embedding holds NaN/inf) are kept as rows with NaN scores and their skip_reason, so no
key is lost and no metric sees them.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig
from tqdm.auto import tqdm

from datacull import layout
from datacull.data.base import DataSource, build_source
from datacull.encoders.base import resolve_device
from datacull.errors import DatacullError
from datacull.metrics.context import ScoreContext
from datacull.metrics.prototypes import ssp_identity
from datacull.metrics.registry import get_metric
from datacull.rows import finite_rows
from datacull.sharding import run_sharded_step, score_step
from datacull.store import ensure_dir, fingerprint, is_fresh, to_plain, write_parquet_atomic

log = logging.getLogger(__name__)


def requested_metrics(cfg: DictConfig) -> list:
    """Registry entries of `cfg.metrics` (a list or a single name), validated."""
    names = cfg.metrics if not isinstance(cfg.metrics, str) else [cfg.metrics]
    if len(names) == 0:
        raise DatacullError("metrics is empty; pass e.g. metrics=[ssp] (see `datacull metrics`)")
    if len(set(names)) != len(names):
        raise DatacullError(f"metrics lists a metric twice: {list(names)}")
    return [get_metric(str(name)) for name in names]


def metric_identity(cfg: DictConfig, name: str) -> dict | None:
    """The metric's settings as they enter the score fingerprint (see `ssp_identity`)."""
    params = to_plain(cfg.metric.get(name))
    return ssp_identity(params) if name == "ssp" and isinstance(params, dict) else params


def score_fingerprint(cfg: DictConfig, entries: list) -> str:
    """Fingerprint of everything the scores depend on."""
    needs = {e.info["needs"] for e in entries}
    return fingerprint(
        layout.data_identity(cfg.data), cfg.seed, [e.name for e in entries],
        {e.name: metric_identity(cfg, e.name) for e in entries},
        layout.encoder_identity(cfg.encoder) if "embeddings" in needs else None,
        [to_plain(cfg.model), to_plain(cfg.train)] if "training" in needs else None,
    )


def _embedding_inputs(cfg: DictConfig, source: DataSource) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(embedding rows, valid mask, skip reasons) aligned with the source order; embeds if needed."""
    from datacull.stages.embed import embed, load_embeddings

    try:
        rows, table = load_embeddings(cfg)
    except DatacullError:
        if int(cfg.shard.count) != 1:
            raise
        embed(cfg, source)
        rows, table = load_embeddings(cfg)
    keys = source.keys
    if len(table) != len(keys) or not (table["index"].to_numpy() == np.arange(len(keys))).all() \
            or table["key"].tolist() != keys:
        raise DatacullError(
            f"the embeddings in {layout.embeddings_dir(cfg)} ({len(table)} rows) do not match the dataset "
            f"({len(keys)} keys); delete that folder and run `datacull embed` again"
        )
    errors = embedding_errors(rows, table, layout.embeddings_dir(cfg))
    return rows, errors == "", errors


def embedding_errors(rows, table: pd.DataFrame, folder: Path) -> np.ndarray:
    """Per row of an embeddings table: "" where the embedding is usable, else why not (embed error or NaN/inf)."""
    errors = table["error"].fillna("").to_numpy(dtype=object)
    bad = (errors == "") & ~finite_rows(rows)
    if bad.any():
        log.warning(f"score: {int(bad.sum())} stored embeddings hold NaN/inf (first key: "
                    f"{table['key'].iloc[int(np.argmax(bad))]}); those examples are skipped (re-embed: delete {folder})")
        errors = errors.copy()
        errors[bad] = "non-finite embedding (NaN/inf)"
    return errors


def full_column(values: np.ndarray, indices: np.ndarray, n: int) -> np.ndarray:
    """A metric's column for all `n` rows: `values` at `indices`, NaN (floats) or -1 (integers) elsewhere."""
    full = np.full(n, np.nan if values.dtype.kind == "f" else -1, dtype=values.dtype)
    full[indices] = values
    return full


def scores_frame(keys, index: np.ndarray, labels: np.ndarray, reasons: np.ndarray, columns: dict) -> pd.DataFrame:
    """The scores table: key, index, label, skip_reason, then the metric columns."""
    return pd.DataFrame({"key": keys, "index": np.asarray(index, dtype=np.int64),
                         "label": np.asarray(labels).astype(np.int64), "skip_reason": reasons.astype(str), **columns})


def check_before_work(cfg: DictConfig, entries: list, source: DataSource) -> None:
    """Settings that can be checked against the data size before any embedding or training (e.g. SSP's k)."""
    if any(e.name == "ssp" for e in entries):
        from datacull.metrics.prototypes import resolve_ssp_k

        node = cfg.metric.get("ssp")
        resolve_ssp_k(node.get("k", "auto") if node is not None else "auto", int(source.num_classes), len(source))


def score(cfg: DictConfig, source: DataSource | None = None) -> dict[str, Path]:
    """Compute `cfg.metrics` for every example of the data source into `scores.parquet`."""
    entries = requested_metrics(cfg)
    out = layout.scores_path(cfg)
    fp = score_fingerprint(cfg, entries)
    step = score_step(cfg, fp)  # sharded scoring (datacull.sharding): centroids / assign / merge, or None
    if step in ("centroids", "assign"):
        return run_sharded_step(cfg, step, entries, fp)
    if is_fresh(out, fp):
        log.info(f"score: {out} is up to date")
        return {"scores": out}
    if step == "merge":
        return run_sharded_step(cfg, step, entries, fp)
    ensure_dir(layout.experiment_dir(cfg))  # fail early (one clear error) if the work dir is not writable
    source = source or build_source(cfg.data)
    n = len(source)
    check_before_work(cfg, entries, source)
    reasons = np.full(n, "", dtype=object)
    loader = None
    if any(e.info["needs"] == "embeddings" for e in entries):
        rows, valid, errors = _embedding_inputs(cfg, source)
        reasons[~valid] = ["skipped: " + e for e in errors[~valid]]
        kept_rows = np.flatnonzero(valid)
        loader = (lambda: rows) if valid.all() else (lambda: np.asarray(rows[kept_rows], dtype=np.float32))
    else:
        from datacull.stages.select import decode_errors

        reasons = decode_errors(cfg, source).astype(object)  # undecodable images are skipped, not scored
        valid = reasons == ""
    indices = np.flatnonzero(valid)
    ctx = ScoreContext(cfg=cfg, source=source, indices=indices, embeddings_loader=loader)
    columns: dict[str, np.ndarray] = {}
    cost: dict[str, dict] = {}
    for entry in tqdm(entries, desc="score", unit="metric", disable=len(entries) < 2):
        wall, cpu = time.perf_counter(), time.process_time()
        result = entry.obj(ctx, ctx.params(entry.name))
        # training runs shared with an earlier metric are loaded, not retrained: their cost is counted once
        cost[entry.name] = {"wall_seconds": time.perf_counter() - wall, "cpu_seconds": time.process_time() - cpu,
                            "device": str(resolve_device(str(cfg.get("device", "auto"))))}
        result = result if isinstance(result, dict) else {entry.name: result}
        if entry.name not in result:
            raise RuntimeError(f"metric {entry.name} returned columns {list(result)} without its own column")
        for column, values in result.items():
            values = np.asarray(values)
            if values.shape != (len(indices),):
                raise RuntimeError(f"metric {entry.name} returned {values.shape} for {len(indices)} examples")
            columns[column] = full_column(values, indices, n)
        log.info(f"score: {entry.name} done ({_describe(columns[entry.name][indices])})")
    frame = scores_frame(source.keys, np.arange(n), source.labels, reasons, columns)
    config = {"metrics": [e.name for e in entries],
              "metric": {e.name: to_plain(cfg.metric.get(e.name)) for e in entries},
              "data": to_plain(cfg.data), "seed": int(cfg.seed), "cost": cost}
    write_parquet_atomic(out, frame, fp=fp, config=config)
    log.info(f"score: wrote {n} rows x {len(columns)} columns to {out}")
    return {"scores": out}


def _describe(values: np.ndarray) -> str:
    finite = values[np.isfinite(values)]
    if len(finite) == 0:
        return "no finite values"
    return f"min {finite.min():.4g}, median {np.median(finite):.4g}, max {finite.max():.4g}"
