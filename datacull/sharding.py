"""Sharded scoring: fit once on a sample of every embedding shard, score each shard as its own job, merge.

For data that outgrows one machine, the score stage runs in three steps (`score.step`):

1. `centroids` (one job): reads every embedding shard once (which rows are usable: the embed
   error column and a NaN/inf check; supervised prototypes: the class sums), trains SSP's
   spherical k-means on a sample of k * max_points_per_centroid usable rows drawn across all
   shards (the same sample, seed and code as unsharded scoring), and writes
   `{experiment}/score-parts/centroids.npz` atomically.
2. `assign` (one job per embedding shard, `shard.index=I shard.count=N`, any Hydra launcher):
   nearest centroid / class prototype for the rows of embedding shard I only, into
   `score-parts/part-{I:05d}-of-{N:05d}.parquet`. It never opens the data source: keys, labels
   and row indices come from the shard's embeddings table. SSP's assignment blocks follow the
   same global grid of `metric.ssp.block_size` rows as unsharded scoring (a shard reads up to
   one block of its neighbours' rows), so every row gets bit-identical scores.
3. `merge` (one job): checks that every shard 0..N-1 is present exactly once and made with the
   current config, and streams the parts into `scores.parquet` (memory: one part at a time),
   identical to what `datacull score` computes in one process. `datacull score` without
   `score.step` merges by itself when parts are present.

`score.step=auto` (default) is `assign` when `shard.count` > 1, `merge` when score parts exist,
else unsharded scoring. Only the embedding metrics `ssp` and `supervised_prototypes` can be
sharded; training-dynamics metrics raise an error. See docs/scaling.md for the plan at 1e9 images.
"""
from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from omegaconf import DictConfig

from datacull import layout
from datacull.errors import DatacullError
from datacull.rows import StackedRows
from datacull.store import (CONFIG_KEY, FINGERPRINT_KEY, atomic_path, ensure_dir, fingerprint, parquet_config,
                            parquet_fingerprint, to_plain)

log = logging.getLogger(__name__)

STEPS = ("auto", "centroids", "assign", "merge")
SHARDABLE = ("ssp", "supervised_prototypes")
_PART = re.compile(r"part-(\d+)-of-(\d+)$")


def parts_dir(cfg: DictConfig) -> Path:
    """Folder of the sharded-scoring artifacts of the experiment (centroids.npz, part-*.parquet)."""
    return layout.experiment_dir(cfg) / "score-parts"


def centroids_path(cfg: DictConfig) -> Path:
    """The file the `centroids` step writes."""
    return parts_dir(cfg) / "centroids.npz"


def part_path(cfg: DictConfig, index: int, count: int) -> Path:
    """The score part of embedding shard `index` of `count`."""
    return parts_dir(cfg) / f"part-{index:05d}-of-{count:05d}.parquet"


def score_step(cfg: DictConfig, score_fp: str) -> str | None:
    """The sharded step `score.step` asks for (`auto` resolved), or None for unsharded scoring.

    `auto` is `assign` when shard.count > 1, `merge` when score parts made with the current settings
    (`score_fp`) exist, else None; parts made with other settings are then left alone.
    """
    node = cfg.get("score")
    step = str(node.get("step", "auto") if node is not None else "auto")
    if step not in STEPS:
        raise DatacullError(f"score.step={step!r} is not one of {', '.join(STEPS)} (see docs/scaling.md)")
    if step != "auto":
        return step
    if int(cfg.shard.count) > 1:
        return "assign"
    for path in sorted(parts_dir(cfg).glob("part-*.parquet")):
        match = _PART.match(path.stem)
        if match and parquet_fingerprint(path) == _fitted_fp(score_fp, int(match.group(2))):
            return "merge"
    return None


def run_sharded_step(cfg: DictConfig, step: str, entries: list, score_fp: str) -> dict[str, Path]:
    """Run one step of sharded scoring for the metrics `entries` (score stage hook)."""
    unsupported = [e.name for e in entries if e.name not in SHARDABLE]
    if unsupported:
        raise DatacullError(f"sharded scoring (score.step={step}, shard.count={int(cfg.shard.count)}) supports only "
                            f"the embedding metrics {', '.join(SHARDABLE)}, not {', '.join(unsupported)}; score "
                            f"those in one process: datacull score metrics=[{','.join(unsupported)}] shard.count=1")
    if step == "centroids":
        return {"centroids": fit_centroids(cfg, entries, score_fp)}
    if step == "assign":
        index, count = int(cfg.shard.index), int(cfg.shard.count)
        if not 0 <= index < count:
            raise DatacullError(f"shard.index must be in [0, shard.count); got index={index}, count={count}")
        return {"part": assign_shard(cfg, entries, score_fp, index, count)}
    return {"scores": merge_parts(cfg, entries, score_fp)}


# ------------------------------------------------------------------------------ embedding shards

@dataclass
class EmbeddingShard:
    """One embedding shard of the embed stage: its key table file and memory-mapped rows."""

    index: int
    table: Path
    rows: np.ndarray


def embedding_shards(cfg: DictConfig, count: int | None = None) -> list[EmbeddingShard]:
    """Every embedding shard of the configured data + encoder, checked to form one complete set.

    Raises one clear error when there are none, when shards are missing, when `count` (the
    requested shard.count) differs from the shard count they were made with, or when their
    embedding widths or dtypes differ.
    """
    out_dir = layout.embeddings_dir(cfg)
    tables = sorted(out_dir.glob("[0-9][0-9][0-9][0-9][0-9].parquet")) if out_dir.exists() else []
    if not tables:
        raise DatacullError(f"no embeddings in {out_dir}; run `datacull embed shard.index=I shard.count=N` for each "
                            "shard first, with the same data/encoder settings")
    made_with = {}
    for path in tables:
        try:
            made_with[int(path.stem)] = int(parquet_config(path)["shard"]["count"])
        except (OSError, ValueError, KeyError, TypeError, pa.ArrowInvalid) as exc:
            raise DatacullError(f"cannot read the embeddings table {path} ({exc}); delete {out_dir} and embed again") \
                from None
    counts = sorted(set(made_with.values()))
    if len(counts) != 1:
        raise DatacullError(f"{out_dir} mixes embeddings made with shard.count values {counts}; delete the folder "
                            "and embed again with one shard.count")
    found = counts[0]
    if count is not None and count != found:
        raise DatacullError(f"shard.count={count} does not match the embeddings in {out_dir}, which were made with "
                            f"shard.count={found}; score with shard.count={found} (one scoring job per embedding shard)")
    missing = sorted(set(range(found)) - set(made_with))
    extra = sorted(set(made_with) - set(range(found)))
    if missing or extra:
        raise DatacullError(f"embeddings incomplete in {out_dir}: shards {missing[:10]} of {found} are missing"
                            + (f", shards {extra[:10]} are out of range" if extra else "")
                            + f"; run `datacull embed shard.index=I shard.count={found}` for each missing I")
    shards = []
    for path in tables:
        try:
            rows = np.load(path.with_suffix(".npy"), mmap_mode="r")
        except (OSError, ValueError, EOFError) as exc:
            raise DatacullError(f"cannot read {path.with_suffix('.npy')} ({exc}); delete {out_dir} and embed again") \
                from None
        shards.append(EmbeddingShard(int(path.stem), path, rows))
    check_uniform_shards([s.table.with_suffix(".npy") for s in shards], [s.rows for s in shards])
    return shards


def check_uniform_shards(paths: list[Path], arrays: list[np.ndarray]) -> None:
    """One clear error when embedding shards differ in width or dtype (they cannot be scored together)."""
    kinds: dict[tuple, list[str]] = {}
    for path, rows in zip(paths, arrays):
        width = rows.shape[1] if rows.ndim == 2 else None
        kinds.setdefault((width, str(rows.dtype)), []).append(Path(path).name)
    if len(kinds) > 1:
        described = "; ".join(f"dim {w} {d}: {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}"
                              for (w, d), names in kinds.items())
        raise DatacullError(f"the embedding shards in {Path(paths[0]).parent} differ in dim or dtype ({described}); "
                            "they were made with different encoder settings: delete the folder and embed again")


def stacked(shards: list[EmbeddingShard]):
    """All shards' rows as one read-only view (no copy)."""
    return shards[0].rows if len(shards) == 1 else StackedRows([s.rows for s in shards])


class ValidRows:
    """The usable rows of `rows` (all rows except the sorted global row numbers `invalid`), read lazily.

    Valid position v maps to global row v + #{j: invalid[j] - j <= v}. Supports len, shape, dtype,
    slices and integer arrays like an array, so the k-means and prototype code reads it in blocks;
    `window(lo, hi)` is the sub-view of valid positions [lo, hi).
    """

    def __init__(self, rows, invalid: np.ndarray, lo: int = 0, hi: int | None = None):
        self.rows, self.invalid = rows, np.asarray(invalid, dtype=np.int64)
        self._adjusted = self.invalid - np.arange(len(self.invalid))
        self.lo = lo
        self.hi = len(rows) - len(self.invalid) if hi is None else hi
        self.dtype = rows.dtype

    def __len__(self) -> int:
        return self.hi - self.lo

    @property
    def shape(self) -> tuple[int, int]:
        return len(self), int(self.rows.shape[1])

    def window(self, lo: int, hi: int) -> "ValidRows":
        """The valid positions [lo, hi) of this view."""
        return ValidRows(self.rows, self.invalid, self.lo + lo, self.lo + hi)

    def global_rows(self, positions: np.ndarray) -> np.ndarray:
        """Global row numbers of valid positions (relative to this view)."""
        positions = np.asarray(positions, dtype=np.int64) + self.lo
        return positions + np.searchsorted(self._adjusted, positions, side="right")

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out.astype(dtype) if dtype is not None else out

    def __getitem__(self, item) -> np.ndarray:
        positions = np.arange(*item.indices(len(self))) if isinstance(item, slice) else np.asarray(item)
        if positions.size and (positions.min() < 0 or positions.max() >= len(self)):
            raise IndexError("row index out of range")
        rows = self.global_rows(positions)
        if not len(self.invalid) and isinstance(item, slice) and item.step in (None, 1) and len(rows):
            return np.asarray(self.rows[int(rows[0]): int(rows[-1]) + 1])  # contiguous: one slice read
        return np.asarray(self.rows[rows])


# ------------------------------------------------------------------------------------ centroids

def _fitted_fp(score_fp: str, count: int) -> str:
    return fingerprint("sharded-score", score_fp, count)


def fit_centroids(cfg: DictConfig, entries: list, score_fp: str) -> Path:
    """Step 1: usable rows of every shard, SSP centroids and class prototypes, into centroids.npz."""
    from datacull.metrics.context import ScoreContext
    from datacull.metrics.prototypes import class_prototypes, fit_ssp_centroids
    from datacull.stages.score import embedding_errors

    start, cpu = time.perf_counter(), time.process_time()
    count = int(cfg.shard.count) if int(cfg.shard.count) > 1 else None
    shards = embedding_shards(cfg, count)
    count = len(shards)
    out = centroids_path(cfg)
    fp = _fitted_fp(score_fp, count)
    ensure_dir(out.parent)
    names = [e.name for e in entries]
    invalid, labels, valid_counts = [], [], []
    offset = 0
    for shard in shards:
        table = pd.read_parquet(shard.table, columns=["key", "label", "error"])
        if len(table) != len(shard.rows):
            raise DatacullError(f"{shard.table} has {len(table)} keys for {len(shard.rows)} embedding rows; "
                                "delete the embeddings folder and embed again")
        ok = embedding_errors(shard.rows, table, shard.table.parent) == ""
        invalid.append(offset + np.flatnonzero(~ok))
        valid_counts.append(int(ok.sum()))
        if "supervised_prototypes" in names:
            labels.append(table["label"].to_numpy(np.int64)[ok])
        offset += len(table)
    invalid = np.concatenate(invalid)
    rows = ValidRows(stacked(shards), invalid)
    log.info("score: %d of %d embedding rows in %d shards are usable", len(rows), offset, count)
    ctx = ScoreContext(cfg=cfg, source=None, indices=np.empty(0, dtype=np.int64))  # seeds and params only
    needs_classes = "supervised_prototypes" in names or \
        str(ctx.params("ssp").get("k", "auto")).strip().lower() == "auto" and "ssp" in names
    num_classes = _num_classes(cfg) if needs_classes else 0
    arrays = {"fingerprint": np.array(fp), "count": np.array(count), "num_classes": np.array(num_classes),
              "shard_rows": np.array([len(s.rows) for s in shards], dtype=np.int64),
              "valid_counts": np.array(valid_counts, dtype=np.int64), "invalid": invalid}
    if "ssp" in names:
        k, centroids, _ = fit_ssp_centroids(rows, ctx.params("ssp"), num_classes, ctx.seed("ssp"), str(cfg.device))
        arrays.update(ssp_k=np.array(k), ssp_centroids=centroids)
        log.info("score: SSP k-means (k=%d) trained on a sample of the usable rows of all %d shards", k, count)
    if "supervised_prototypes" in names:
        from datacull.data.base import check_labels

        labels = np.concatenate(labels)
        check_labels(labels, num_classes, "metric 'supervised_prototypes'")
        block = int(ctx.params("supervised_prototypes").get("block_size", 65536))
        arrays["prototypes"] = class_prototypes(rows, labels, num_classes, block)
    arrays["seconds"] = np.array([time.perf_counter() - start, time.process_time() - cpu])
    with atomic_path(out, suffix=".npz") as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)
    log.info("score: wrote %s; next: one job per shard, e.g. `datacull score -m shard.index='range(0,%d)' "
             "shard.count=%d`", out, count, count)
    return out


def _num_classes(cfg: DictConfig) -> int:
    """The data source's number of classes (what unsharded scoring uses for k=auto and class prototypes)."""
    from datacull.data.base import build_source

    return int(build_source(cfg.data).num_classes)


def load_fitted(cfg: DictConfig, score_fp: str, count: int) -> dict:
    """The arrays of centroids.npz, or one clear error if it is missing or was made with another config."""
    path = centroids_path(cfg)
    how = f"run `datacull score score.step=centroids shard.count={count}` (same settings) first"
    if not path.exists():
        raise DatacullError(f"no centroids for sharded scoring in {path}; {how}")
    try:
        with np.load(path, allow_pickle=False) as data:
            fitted = {name: data[name] for name in data.files}
    except (OSError, ValueError, EOFError) as exc:
        raise DatacullError(f"cannot read {path} ({exc}); {how}") from None
    if str(fitted.get("fingerprint")) != _fitted_fp(score_fp, count):
        raise DatacullError(f"{path} was made with other settings (metrics, metric.*, data, encoder, seed or "
                            f"shard.count); {how}")
    return fitted


# --------------------------------------------------------------------------------------- assign

def aligned_window(lo: int, hi: int, n: int, block: int) -> tuple[int, int]:
    """[lo, hi) widened to multiples of `block` (clipped to n): the blocks unsharded scoring reads."""
    return (lo // block) * block, min(-(-hi // block) * block, n)


def assign_shard(cfg: DictConfig, entries: list, score_fp: str, index: int, count: int) -> Path:
    """Step 2: the scores of embedding shard `index` of `count`, into its part file."""
    from datacull.kmeans import use_faiss_gpu
    from datacull.metrics.context import ScoreContext
    from datacull.metrics.prototypes import prototype_distances, ssp_columns
    from datacull.stages.score import embedding_errors, full_column, scores_frame

    start, cpu = time.perf_counter(), time.process_time()
    shards = embedding_shards(cfg, count)
    fitted = load_fitted(cfg, score_fp, count)
    if fitted["shard_rows"].tolist() != [len(s.rows) for s in shards]:
        raise DatacullError(f"the embeddings changed since {centroids_path(cfg)} was made; run the centroids step "
                            f"again: datacull score score.step=centroids shard.count={count}")
    shard = shards[index]
    table = pd.read_parquet(shard.table, columns=["key", "label", "index", "error"])
    errors = embedding_errors(shard.rows, table, shard.table.parent)
    ok = errors == ""
    first_row = int(fitted["shard_rows"][:index].sum())
    invalid = fitted["invalid"]
    mine = invalid[(invalid >= first_row) & (invalid < first_row + len(table))] - first_row
    if not np.array_equal(mine, np.flatnonzero(~ok)):
        raise DatacullError(f"the usable rows of embeddings shard {index} differ from those {centroids_path(cfg)} "
                            f"was made with; run the centroids step again: datacull score score.step=centroids "
                            f"shard.count={count}")
    rows = ValidRows(stacked(shards), invalid)
    lo = int(fitted["valid_counts"][:index].sum())
    hi = lo + int(fitted["valid_counts"][index])
    ctx = ScoreContext(cfg=cfg, source=None, indices=np.empty(0, dtype=np.int64))
    kept = np.flatnonzero(ok)
    columns: dict[str, np.ndarray] = {}
    for entry in entries:
        params = ctx.params(entry.name)
        if entry.name == "ssp":
            a, b = aligned_window(lo, hi, len(rows), int(params.get("block_size", 65536)))
            gpu = use_faiss_gpu(params.get("gpu", "auto"), str(cfg.device))
            result = ssp_columns(rows.window(a, b), fitted["ssp_centroids"], int(fitted["ssp_k"]), params, gpu)
            result = {name: values[lo - a: hi - a] for name, values in result.items()}
        else:  # supervised_prototypes: row-wise, so the shard's own rows suffice
            labels = table["label"].to_numpy(np.int64)[kept]
            block = int(params.get("block_size", 65536))
            result = {entry.name: prototype_distances(rows.window(lo, hi), labels, fitted["prototypes"], block)}
        for column, values in result.items():
            columns[column] = full_column(np.asarray(values), kept, len(table))
    reasons = np.where(ok, "", np.array(["skipped: " + str(e) for e in errors], dtype=object))
    frame = scores_frame(table["key"].tolist(), table["index"].to_numpy(), table["label"].to_numpy(),
                         reasons, columns)
    out = part_path(cfg, index, count)
    config = {"shard": {"index": index, "count": count}, "rows": len(table), "first_row": first_row,
              "total_rows": int(fitted["shard_rows"].sum()),
              "seconds": [time.perf_counter() - start, time.process_time() - cpu]}
    from datacull.store import write_parquet_atomic

    write_parquet_atomic(out, frame, fp=_fitted_fp(score_fp, count), config=config)
    log.info("score: shard %d/%d: wrote %d rows to %s", index, count, len(table), out)
    return out


# ---------------------------------------------------------------------------------------- merge

def merge_parts(cfg: DictConfig, entries: list, score_fp: str) -> Path:
    """Step 3: check every shard is present exactly once, then stream the parts into scores.parquet."""
    folder = parts_dir(cfg)
    files = sorted(folder.glob("part-*.parquet")) if folder.exists() else []
    if not files:
        raise DatacullError(f"no score parts in {folder}; run `datacull score score.step=centroids shard.count=N`, "
                            "then `datacull score -m shard.index='range(0,N)' shard.count=N`")
    parts, foreign = [], []
    for path in files:
        try:
            config, fp = parquet_config(path), parquet_fingerprint(path)
            parts.append((path, int(config["shard"]["index"]), int(config["shard"]["count"]), fp, config))
        except (OSError, ValueError, KeyError, TypeError, pa.ArrowInvalid):
            foreign.append(path.name)
    if foreign:
        raise DatacullError(f"unreadable score parts in {folder}: {', '.join(foreign[:5])}; delete them and run "
                            "their shards again")
    counts = sorted({count for _, _, count, _, _ in parts})
    wanted = int(cfg.shard.count)
    if len(counts) != 1 or (wanted > 1 and counts != [wanted]):
        raise DatacullError(f"the score parts in {folder} were made with shard.count {counts}"
                            + (f", not the requested {wanted}" if wanted > 1 else "")
                            + "; delete the parts of the other shard count and merge again")
    count = counts[0]
    stale = [path.name for path, _, _, fp, _ in parts if fp != _fitted_fp(score_fp, count)]
    if stale:
        raise DatacullError(f"score parts {', '.join(stale[:5])} in {folder} were made with other settings; run "
                            f"those shards again (datacull score shard.index=I shard.count={count}) with the current ones")
    by_index: dict[int, list[str]] = {}
    for path, index, _, _, _ in parts:
        by_index.setdefault(index, []).append(path.name)
    missing = sorted(set(range(count)) - set(by_index))
    duplicate = {i: names for i, names in sorted(by_index.items()) if len(names) > 1}
    out_of_range = sorted(i for i in by_index if not 0 <= i < count)
    if missing or duplicate or out_of_range:
        problems = []
        if missing:
            problems.append(f"missing shards {missing[:20]}{' ...' if len(missing) > 20 else ''}")
        if duplicate:
            problems.append("duplicate shards " + "; ".join(f"{i}: {', '.join(n)}" for i, n in duplicate.items()))
        if out_of_range:
            problems.append(f"shards out of range {out_of_range}")
        raise DatacullError(f"cannot merge the {count} score parts in {folder}: {', '.join(problems)}; run "
                            f"`datacull score shard.index=I shard.count={count}` for each missing shard and delete "
                            "extra copies")
    out = layout.scores_path(cfg)
    ordered = sorted(parts, key=lambda part: part[1])
    total = int(ordered[0][4].get("total_rows", -1))
    seconds = sum((np.asarray(part[4].get("seconds", [0, 0]), dtype=float) for part in ordered), np.zeros(2))
    if centroids_path(cfg).exists():
        with np.load(centroids_path(cfg), allow_pickle=False) as data:
            seconds += data["seconds"] if "seconds" in data.files else 0
    with atomic_path(out, suffix=".parquet") as tmp:
        writer, schema, position = None, None, 0
        try:
            for path, index, _, _, config in ordered:
                table = pq.read_table(path)
                rows = table.column("index").to_numpy()
                if len(rows) != int(config["rows"]) or not np.array_equal(rows, np.arange(position, position + len(rows))):
                    raise DatacullError(f"score part {path.name} holds rows {rows[:1]}..{rows[-1:]} but shard {index} "
                                        f"should start at row {position}; run it again")
                position += len(rows)
                if writer is None:
                    schema = table.schema.with_metadata(_merged_metadata(table.schema, cfg, entries, score_fp,
                                                                         count, seconds))
                    writer = pq.ParquetWriter(tmp, schema)
                writer.write_table(table.replace_schema_metadata(schema.metadata).cast(schema))
        finally:
            if writer is not None:
                writer.close()
        if total >= 0 and position != total:
            raise DatacullError(f"the score parts hold {position} rows, the embeddings {total}; run the shards again")
    log.info("score: merged %d parts (%d rows) into %s", count, position, out)
    return out


def _merged_metadata(schema: pa.Schema, cfg, entries, score_fp, count, seconds) -> dict:
    """Schema metadata of the merged table: the score fingerprint and the score stage's config record."""
    meta = dict(schema.metadata or {})
    meta[FINGERPRINT_KEY] = score_fp.encode()
    config = {"metrics": [e.name for e in entries],
              "metric": {e.name: to_plain(cfg.metric.get(e.name)) for e in entries},
              "data": to_plain(cfg.data), "seed": int(cfg.seed),
              "cost": {e.name: {"wall_seconds": float(seconds[0]) / len(entries),
                                "cpu_seconds": float(seconds[1]) / len(entries), "device": str(cfg.device)}
                       for e in entries},
              "sharded": {"count": count, "cost": "wall/cpu seconds of the centroids job and every shard job, "
                                                  "summed and split equally between the metrics"}}
    meta[CONFIG_KEY] = json.dumps(config, sort_keys=True, default=str).encode()
    return meta
