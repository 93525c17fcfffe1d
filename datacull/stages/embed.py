"""The embed stage: one float row per example from the configured encoder, sharded by config.

Writes `embeddings/{shard:05d}.npy` (float16/float32, row-aligned) and `{shard:05d}.parquet`
(key, label, index, error) for shard `shard.index` of `shard.count`; a shard whose parquet exists
with the same fingerprint is skipped, so a re-run only does what is missing.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig

from datacull import layout
from datacull.data.base import DataSource, build_source
from datacull.data.encoded import configured_size
from datacull.data.loader import ExampleDataset, make_loader
from datacull.encoders.base import build_encoder, resolve_device
from datacull.errors import DatacullError
from datacull.logs import progress
from datacull.rows import StackedRows
from datacull.store import atomic_path, ensure_dir, fingerprint, is_fresh, parquet_config, write_parquet_atomic

_DTYPES = {"float16": np.float16, "float32": np.float32}

log = logging.getLogger(__name__)


def shard_rows(n: int, index: int, count: int) -> np.ndarray:
    """The example positions of shard `index` of `count` (contiguous, sizes differing by at most 1)."""
    if count < 1 or not 0 <= index < count:
        raise DatacullError(f"shard.index must be in [0, shard.count); got index={index}, count={count}")
    return np.array_split(np.arange(n), count)[index]


def embed(cfg: DictConfig, source: DataSource | None = None) -> dict[str, Path]:
    """Embed shard `cfg.shard.index` of `cfg.shard.count` of the data source; return its file paths."""
    dtype_name = str(cfg.encoder.get("dtype", "float32"))
    if dtype_name not in _DTYPES:
        raise DatacullError(f"encoder.dtype must be float16 or float32, not {dtype_name!r}")
    out_dir = ensure_dir(layout.embeddings_dir(cfg))
    index, count = int(cfg.shard.index), int(cfg.shard.count)
    npy_path, table_path = out_dir / f"{index:05d}.npy", out_dir / f"{index:05d}.parquet"
    fp = fingerprint(layout.data_identity(cfg.data), layout.encoder_identity(cfg.encoder), cfg.seed, index, count)
    if is_fresh(table_path, fp) and npy_path.exists():
        log.info("embed: shard %d/%d is up to date in %s", index, count, out_dir)
        return {"embeddings": npy_path, "keys": table_path}

    source = source or build_source(cfg.data)
    rows = shard_rows(len(source), index, count)
    device = resolve_device(str(cfg.device))
    encoder = build_encoder(cfg.encoder, int(cfg.seed))
    encoder.prepare(source, ensure_dir(layout.encoder_cache_dir(cfg)), device)
    dataset = ExampleDataset(source, rows, size=encoder.input_size or configured_size(cfg.data.get("image_size")),
                             channels=encoder.input_channels, on_error=str(cfg.data.get("on_error", "skip")))
    loader = make_loader(dataset, int(cfg.encoder.get("batch_size", 256)), int(cfg.encoder.get("num_workers", 0)),
                         pin_memory=device.type == "cuda")
    vectors = np.empty((len(rows), encoder.dim), dtype=_DTYPES[dtype_name])
    errors = [""] * len(rows)
    position = 0
    with torch.inference_mode():
        for images, _, _, batch_errors in progress(loader, desc=f"embed {cfg.encoder.name} shard {index}/{count}",
                                                   unit="batch", leave=False):
            out = encoder.encode(images.to(device, non_blocking=True)).float().cpu().numpy()
            vectors[position: position + len(out)] = out
            errors[position: position + len(out)] = list(batch_errors)
            position += len(out)
    ok = np.array([not e for e in errors])
    if not np.isfinite(vectors[ok].astype(np.float32)).all():
        bad = int((~np.isfinite(vectors[ok].astype(np.float32)).all(axis=1)).sum())
        raise DatacullError(f"encoder {cfg.encoder.name!r} produced NaN/inf embeddings for {bad} examples; "
                            "check the encoder weights and input normalisation (or use encoder.dtype=float32)")
    vectors[~ok] = np.nan
    with atomic_path(npy_path, suffix=".npy") as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, vectors)
    keys = source.keys
    table = pd.DataFrame({"key": [keys[i] for i in rows], "label": source.labels[rows].astype(np.int64),
                          "index": rows.astype(np.int64), "error": errors})
    write_parquet_atomic(table_path, table, fp=fp, config={"data": cfg.data, "encoder": cfg.encoder,
                                                            "shard": cfg.shard, "dim": encoder.dim})
    skipped = int((~ok).sum())
    log.info("embed: wrote %d x %d %s embeddings to %s%s", len(rows), encoder.dim, dtype_name, npy_path,
             f" ({skipped} skipped: undecodable)" if skipped else "")
    return {"embeddings": npy_path, "keys": table_path}


def load_embeddings(cfg: DictConfig) -> tuple[np.ndarray | StackedRows, pd.DataFrame]:
    """All embedding shards of the configured data + encoder: (memory-mapped rows, key table).

    Raises one clear error if shards are missing (naming them and the command that makes them).
    """
    out_dir = layout.embeddings_dir(cfg)
    tables = sorted(out_dir.glob("[0-9][0-9][0-9][0-9][0-9].parquet")) if out_dir.exists() else []
    if not tables:
        raise DatacullError(f"no embeddings in {out_dir}; run `datacull embed` with the same data/encoder settings")
    frames, arrays, counts = [], [], set()
    for table_path in tables:
        try:
            frame = pd.read_parquet(table_path)
            counts.add(int(parquet_config(table_path)["shard"]["count"]))
            array = np.load(table_path.with_suffix(".npy"), mmap_mode="r")
        except (OSError, ValueError, KeyError, TypeError, EOFError) as exc:  # truncated / foreign files
            raise DatacullError(f"cannot read the embeddings shard {table_path.with_suffix('.*')} ({exc}); "
                                f"delete {out_dir} and run `datacull embed` again") from None
        if array.ndim != 2 or len(array) != len(frame):
            raise DatacullError(f"the embeddings shard {table_path.with_suffix('.npy')} has shape {array.shape} for "
                                f"{len(frame)} keys; delete {out_dir} and run `datacull embed` again")
        frames.append(frame)
        arrays.append(array)
    if len(counts) != 1:
        raise DatacullError(f"{out_dir} mixes embeddings made with different shard.count values {sorted(counts)}; "
                            "delete the folder and embed again")
    count = counts.pop()
    if len(tables) != count:
        present = {int(p.stem) for p in tables}
        missing = sorted(set(range(count)) - present)
        raise DatacullError(f"embeddings incomplete: shards {missing[:10]} of {count} are missing in {out_dir}; "
                            f"run `datacull embed shard.index=I shard.count={count}` for each")
    from datacull.sharding import check_uniform_shards

    check_uniform_shards([p.with_suffix(".npy") for p in tables], arrays)  # one error for mixed dims / dtypes
    table = pd.concat(frames, ignore_index=True)
    return (StackedRows(arrays) if len(arrays) > 1 else arrays[0]), table
