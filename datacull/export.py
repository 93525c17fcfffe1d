"""Write the kept examples of a selection as reproducible webdataset shards, a wids index and a manifest.

Layout of an export folder (`layout.shards_dir`):

    {name}-000000.tar, {name}-000001.tar, ...   `maxcount` samples each, kept examples by source index
    {name}.wids.json                            shard index for `wids.ShardListDataset` (relative urls)
    manifest.json                               counts, reasons, per-class counts, config, shard hashes

A sample is `{key}.{ext}` (the original bytes when the source has them, else a deterministic PNG),
`{key}.cls` (the label as text) and `{key}.json` (key, index, label, score, rank, all metric scores).
Shards are written with webdataset's `TarWriter` with a fixed member mtime, so the same config gives
byte-identical tars. The whole folder is written beside the final one and renamed into place only when
complete: a failed export leaves neither a partial folder nor litter, and keeps a previous export.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from webdataset import TarWriter

from datacull.data.base import UNKNOWN_LABEL, CorruptExample, DataSource, skip_reason
from datacull.data.encoded import check_decodes
from datacull.errors import DatacullError
from datacull.logs import progress as progress_bar
from datacull.store import atomic_directory, parquet_config, parquet_fingerprint, write_json_atomic

SELECTION_COLUMNS = ("key", "index", "label", "score", "rank", "kept", "reason")
# scores-table columns that are not metric values
SCORE_META_COLUMNS = {"key", "index", "label", "skip_reason"}
# wids reads the 100-byte ustar name field only (no prefix field, no pax records)
MAX_MEMBER_NAME_BYTES = 100
IMAGE_FORMATS = {"png": ("PNG", "png"), "jpg": ("JPEG", "jpg"), "jpeg": ("JPEG", "jpg"), "webp": ("WEBP", "webp")}
WIDS_SUFFIX = ".wids.json"
MANIFEST_NAME = "manifest.json"


# ----------------------------------------------------------------------------------------- inputs

def read_selection(path: Path) -> tuple[pd.DataFrame, str]:
    """The selection table at `path` and its fingerprint; one clear error if it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise DatacullError(f"no selection at {path}; run `datacull select` first")
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for damaged files
        raise DatacullError(f"cannot read the selection {path} ({exc}); run `datacull select` again") from None
    missing = [c for c in SELECTION_COLUMNS if c not in frame.columns]
    if missing:
        raise DatacullError(f"the selection {path} lacks columns {missing}; run `datacull select` again")
    return frame, parquet_fingerprint(path) or sha256_file(path)


def check_selection_matches(selection: pd.DataFrame, source: DataSource) -> None:
    """Raise one clear error unless the selection lists every source key once, at its source index and label."""
    keys = pd.Index(selection["key"].astype(str))
    if keys.has_duplicates:
        dupes = list(keys[keys.duplicated()][:3])
        raise DatacullError(f"the selection lists {int(keys.duplicated().sum())} keys twice (first: {dupes}); "
                            "re-run `datacull select`")
    source_keys = pd.Index(source.keys)
    extra, missing = keys.difference(source_keys, sort=False), source_keys.difference(keys, sort=False)
    if len(extra) or len(missing):
        raise DatacullError(
            f"the selection ({len(keys)} keys) does not match the data source ({len(source_keys)} keys): "
            f"{len(extra)} selected keys not in the source (first: {list(extra[:3])}), {len(missing)} source keys "
            f"not in the selection (first: {list(missing[:3])}); re-run `datacull select` for this data config")
    position = source_keys.get_indexer(keys)
    moved = np.flatnonzero(position != selection["index"].to_numpy())
    relabeled = np.flatnonzero(source.labels[position] != selection["label"].to_numpy())
    if len(moved) or len(relabeled):
        bad = keys[np.union1d(moved, relabeled)[:3]]
        raise DatacullError(
            f"the selection disagrees with the data source on {len(moved)} indices and {len(relabeled)} labels "
            f"(first keys: {list(bad)}); the data changed since `datacull select` ran: re-run it")


def metric_columns(scores_path: Path, selection_path: Path) -> pd.DataFrame | None:
    """Per-key metric scores from the scores table, only when the selection was made from that very table."""
    scores_path = Path(scores_path)
    if not scores_path.is_file():
        return None
    made_from = parquet_config(selection_path).get("scores_fingerprint")
    if not made_from or made_from != parquet_fingerprint(scores_path):
        return None
    frame = pd.read_parquet(scores_path)
    columns = [c for c in frame.columns if c not in SCORE_META_COLUMNS]
    return frame.set_index(frame["key"].astype(str))[columns]


# --------------------------------------------------------------------------------------- samples

def encode_image(image: np.ndarray, image_format: str = "png") -> tuple[bytes, str]:
    """Encode a uint8 (H, W, C) array with PIL (deterministic for a given Pillow); returns (bytes, ext)."""
    from PIL import Image

    if image_format.lower() not in IMAGE_FORMATS:
        raise DatacullError(f"export.image_format={image_format!r} is not one of {sorted(IMAGE_FORMATS)}")
    pil_format, ext = IMAGE_FORMATS[image_format.lower()]
    array = np.ascontiguousarray(image, dtype=np.uint8)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    buffer = io.BytesIO()
    options = {"quality": 95} if pil_format in ("JPEG", "WEBP") else {}
    Image.fromarray(array).save(buffer, format=pil_format, **options)
    return buffer.getvalue(), ext


def _plain_number(value: Any) -> Any:
    """A JSON-safe Python scalar: NaN/inf become None, numpy scalars become int/float."""
    if isinstance(value, (np.integer, int)) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    return value if value is None or isinstance(value, str) else str(value)


def check_member_name(name: str) -> None:
    """Reject tar member names that are absolute, climb with '..', or do not fit wids' 100-byte name field."""
    parts = name.split("/")
    if name.startswith("/") or ".." in parts or "" in parts:
        raise DatacullError(f"refusing to write tar member {name!r}: absolute or '..' paths are not allowed")
    if len(name.encode("utf-8")) > MAX_MEMBER_NAME_BYTES:
        raise DatacullError(f"tar member name {name!r} is longer than {MAX_MEMBER_NAME_BYTES} bytes, which wids "
                            "cannot read; use shorter example keys")


def make_sample(key: str, image: tuple[bytes, str], label: int, info: dict) -> dict:
    """A webdataset sample dict: image bytes under their extension, `cls` (unless unlabelled) and `json`."""
    data, ext = image
    ext = ext.lower().lstrip(".")
    if not ext or ext in ("cls", "json"):
        raise DatacullError(f"example {key!r} has image extension {ext!r}; expected an image type such as jpg")
    sample = {"__key__": key, ext: bytes(data),
              "json": json.dumps(info, sort_keys=True, allow_nan=False).encode()}
    if label != UNKNOWN_LABEL:
        sample["cls"] = str(int(label)).encode()
    for member in sample:
        if member != "__key__":
            check_member_name(f"{key}.{member}")
    return sample


# ----------------------------------------------------------------------------------------- shards

def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_shard_name(name: str) -> str:
    """Validate `export.name` as a file-name prefix."""
    name = str(name)
    if not name or "/" in name or "\\" in name or name.startswith(".") or "%" in name:
        raise DatacullError(f"export.name={name!r} must be a plain file-name prefix (no '/', '%' or leading '.')")
    return name


class _HashingFile:
    """A binary file that hashes (sha256) everything written to it, so a shard is never read back."""

    def __init__(self, path: Path):
        self._file = open(path, "wb")
        self.name = self._file.name
        self.digest = hashlib.sha256()

    def write(self, data) -> int:
        self.digest.update(data)
        return self._file.write(data)

    def flush(self) -> None:
        self._file.flush()

    def fileno(self) -> int:
        return self._file.fileno()

    def close(self) -> None:
        self._file.close()


@dataclass
class ShardSequence:
    """Writes samples into `{name}-{shard:06d}.tar` files of `maxcount` samples with webdataset's TarWriter.

    Each finished shard is fsynced and recorded as {"url", "nsamples", "filesize", "sha256"} (hashed
    while written). Files are opened here (not by the writer) so they can be fsynced; only full or final
    shards exist, never empties.
    """

    directory: Path
    name: str
    maxcount: int
    mtime: int | None
    shards: list[dict] = field(default_factory=list)
    _file: Any = None
    _writer: Any = None
    _count: int = 0

    def write(self, sample: dict) -> None:
        """Append one sample, starting a new shard when the current one is full."""
        if self._writer is None or self._count >= self.maxcount:
            self._finish()
            path = self.directory / f"{self.name}-{len(self.shards):06d}.tar"
            self._file = _HashingFile(path)
            self._writer = TarWriter(self._file, encoder=False, mtime=self.mtime)
            self._count = 0
        self._writer.write(sample)
        self._count += 1

    def _finish(self) -> None:
        if self._writer is None:
            return
        self._writer.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        path = Path(self._file.name)
        self.shards.append({"url": path.name, "nsamples": self._count, "filesize": path.stat().st_size,
                            "sha256": self._file.digest.hexdigest()})
        self._writer = self._file = None

    def close(self) -> list[dict]:
        """Finish the last shard and return the shard records."""
        self._finish()
        return self.shards

    def abort(self) -> None:
        """Close open handles without recording anything (the folder is about to be deleted)."""
        with contextlib.suppress(Exception):
            if self._writer is not None:
                self._writer.close()
        with contextlib.suppress(Exception):
            if self._file is not None:
                self._file.close()
        self._writer = self._file = None


def wids_index(shards: list[dict], name: str) -> dict:
    """The `wids.ShardListDataset` descriptor; shard urls are file names, resolved beside the JSON file."""
    return {"__kind__": "wids-shard-index-v1", "wids_version": 1, "name": name,
            "shardlist": [{"url": s["url"], "nsamples": s["nsamples"], "filesize": s["filesize"]} for s in shards]}


# ----------------------------------------------------------------------------------------- export

def _reason_group(reason: str) -> str:
    """'skipped: corrupt image: <details>' -> 'skipped: corrupt image' (details stay per example)."""
    return ":".join(reason.split(":")[:2]).strip()


def per_class_counts(labels: np.ndarray, kept_labels: np.ndarray, class_names: list[str] | None) -> list[dict]:
    """Rows {label, name, before, after} for every label present before pruning."""
    before, after = Counter(labels.tolist()), Counter(kept_labels.tolist())
    rows = []
    for label in sorted(before):
        row = {"label": int(label), "before": before[label], "after": after.get(label, 0)}
        if class_names and 0 <= label < len(class_names):
            row["name"] = class_names[label]
        rows.append(row)
    return rows


def export_selection(source: DataSource, selection_path: Path, out_dir: Path, *, name: str, maxcount: int,
                     mtime: int | None, image_format: str, on_error: str, fingerprint: str, config: dict,
                     scores_path: Path | None = None, progress: bool = True) -> dict[str, Path]:
    """Export the kept rows of the selection at `selection_path` from `source` into `out_dir`, atomically.

    Returns {"shards_dir", "manifest", "wids_index"}. `on_error` ("skip" | "fail") decides what a
    CorruptExample met while exporting does: the example is recorded as skipped, or one error is raised.
    """
    name = check_shard_name(name)
    if int(maxcount) < 1:
        raise DatacullError(f"export.maxcount must be at least 1 (got {maxcount})")
    if on_error not in ("skip", "fail"):
        raise DatacullError(f"data.on_error={on_error!r} must be 'skip' or 'fail'")
    if str(image_format).lower() not in IMAGE_FORMATS:
        raise DatacullError(f"export.image_format={image_format!r} is not one of {sorted(IMAGE_FORMATS)}")
    selection, selection_fp = read_selection(selection_path)
    check_selection_matches(selection, source)
    selection = selection.sort_values("index", kind="stable").reset_index(drop=True)
    keys = selection["key"].astype(str).to_numpy(dtype=object)
    indices, labels = selection["index"].to_numpy(np.int64), selection["label"].to_numpy(np.int64)
    ranks, scores = selection["rank"].to_numpy(np.int64), selection["score"].to_numpy(np.float64)
    reasons = selection["reason"].astype(str).to_numpy(dtype=object)
    kept = selection["kept"].to_numpy(dtype=bool)
    if not kept.any():
        raise DatacullError(f"the selection {selection_path} keeps no examples; nothing to export "
                            "(check select.fraction / select.count)")
    metrics = metric_columns(scores_path, selection_path) if scores_path else None
    metric_values = None
    if metrics is not None:
        aligned = metrics.reindex(pd.Index(keys))
        metric_values = {column: aligned[column].to_numpy() for column in aligned.columns}
        has_metrics = pd.Index(keys).isin(metrics.index)
    class_names = source.class_names

    exported = np.zeros(len(selection), dtype=bool)
    corrupt = np.zeros(len(selection), dtype=bool)
    with atomic_directory(out_dir) as tmp:
        shards = ShardSequence(tmp, name, int(maxcount), None if mtime is None else int(mtime))
        try:
            for row in progress_bar(np.flatnonzero(kept), desc="export", unit="example", disable=not progress):
                key, index, label = keys[row], int(indices[row]), int(labels[row])
                try:
                    image = source.raw(index)  # the input's encoded bytes, shipped as they are (no re-encode)
                    if image is None:
                        image = encode_image(source.load(index), image_format)
                    else:  # decoded once, so no undecodable bytes are shipped
                        check_decodes(image[0], source.describe(index))
                except CorruptExample as exc:
                    if on_error == "fail":
                        raise DatacullError(f"example {key} (index {index}) is corrupt: {exc}; "
                                            "set data.on_error=skip to skip it") from None
                    reasons[row] = f"skipped: {skip_reason(exc)}"
                    corrupt[row] = True
                    continue
                info = {"key": key, "index": index, "label": label, "rank": int(ranks[row]),
                        "score": _plain_number(scores[row]), "reason": reasons[row]}
                if class_names and 0 <= label < len(class_names):
                    info["class_name"] = class_names[label]
                if metric_values is not None and has_metrics[row]:
                    info["metrics"] = {c: _plain_number(v[row]) for c, v in metric_values.items()}
                shards.write(make_sample(key, image, label, info))
                exported[row] = True
            records = shards.close()
        except BaseException:
            shards.abort()
            raise
        if not records:
            raise DatacullError("every kept example was corrupt; nothing to export")
        index_path = write_json_atomic(tmp / f"{name}{WIDS_SUFFIX}", wids_index(records, name))
        skipped = (~kept & ((ranks < 0) | np.array([r.startswith("skipped") for r in reasons], dtype=bool))) | corrupt
        manifest = _manifest(keys, labels, reasons, exported, skipped, class_names, records, index_path.name,
                             selection_fp, fingerprint, config)
        write_json_atomic(tmp / MANIFEST_NAME, manifest)
    out_dir = Path(out_dir)
    return {"shards_dir": out_dir, "manifest": out_dir / MANIFEST_NAME, "wids_index": out_dir / index_path.name}


def _manifest(keys, labels, reasons, exported, skipped, class_names, records, index_name, selection_fp, fp,
              config) -> dict:
    """The export manifest; asserts that kept + pruned + skipped accounts for every input key."""
    n = len(keys)
    pruned = ~exported & ~skipped
    n_kept, n_pruned, n_skipped = int(exported.sum()), int(pruned.sum()), int(skipped.sum())
    assert not (exported & skipped).any(), "an example is both exported and skipped"
    assert n_kept + n_pruned + n_skipped == n, f"kept {n_kept} + pruned {n_pruned} + skipped {n_skipped} != {n}"
    assert n_kept == sum(r["nsamples"] for r in records), "shard sample counts disagree with the kept count"
    return {
        "fingerprint": fp,
        "selection_fingerprint": selection_fp,
        "counts": {"input": n, "kept": n_kept, "pruned": n_pruned, "skipped": n_skipped,
                   "kept + pruned + skipped == input": n_kept + n_pruned + n_skipped == n},
        "reasons": dict(sorted(Counter(_reason_group(r) for r in reasons).items())),
        "skipped": [{"key": k, "reason": r} for k, r in zip(keys[skipped], reasons[skipped])],
        "per_class": per_class_counts(labels, labels[exported], class_names),
        "shards": records,
        "wids_index": index_name,
        "config": config,
    }


def existing_export(out_dir: Path, fp: str) -> dict[str, Path] | None:
    """The paths of a complete export in `out_dir` made with fingerprint `fp`, else None."""
    manifest_path = Path(out_dir) / MANIFEST_NAME
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("fingerprint") != fp:
        return None
    for shard in manifest.get("shards", []):
        path = Path(out_dir) / shard["url"]
        if not path.is_file() or path.stat().st_size != shard.get("filesize"):
            return None
    index_path = Path(out_dir) / str(manifest.get("wids_index", ""))
    if not index_path.is_file():
        return None
    return {"shards_dir": Path(out_dir), "manifest": manifest_path, "wids_index": index_path}
