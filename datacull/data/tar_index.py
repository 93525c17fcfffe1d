"""An index of the samples in a webdataset tar shard, read from the tar headers only.

A sample is a run of consecutive members sharing a key (webdataset's rule: the member name up to
the first dot of its basename, directory part included). For each sample the index records every
member's data offset and size, so a member is read later by offset without scanning the tar again
and without holding image bytes in memory. Members named by absolute paths or with `..` parts are
refused; links, directories and webdataset meta files (`__name__`) are skipped; member data is
read only for the extensions asked for (e.g. `cls`), never unpickled.

`index_shards` keeps each shard's index on disk (see the cache section below), so only the first
open of a shard reads its tar headers, in parallel over shards when asked.
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import struct
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from datacull.errors import DatacullError
from datacull.logs import progress
from datacull.store import write_bytes_atomic

log = logging.getLogger(__name__)


@dataclass
class TarSample:
    """One sample of a shard: its key, {extension: (data offset, size)} and the small payloads read."""

    key: str
    members: dict[str, tuple[int, int]] = field(default_factory=dict)
    payloads: dict[str, bytes] = field(default_factory=dict)
    links: list[str] = field(default_factory=list)  # extensions of link members (never followed)


def check_member_name(shard: Path, name: str) -> None:
    """Refuse a member name that is absolute or climbs out of the archive with `..`."""
    if name.startswith("/") or ".." in name.replace("\\", "/").split("/"):
        raise DatacullError(f"shard {shard} has an unsafe member {name!r} (absolute path or '..'); "
                            "refusing to read it: rebuild the shard with relative member names")


def scan_shard(shard: Path, read: tuple[str, ...] = ("cls",)) -> list[TarSample]:
    """Samples of the uncompressed tar `shard` in order; extensions are lower-cased."""
    from webdataset.tariterators import base_plus_ext  # webdataset's own key rule (imports torch: lazily)

    samples: list[TarSample] = []
    try:
        with tarfile.open(shard, mode="r:") as tar:
            for member in tar:
                check_member_name(shard, member.name)
                if member.issym() or member.islnk():  # never followed; the sample keeps its key
                    key, ext = base_plus_ext(member.name)
                    if key is not None:
                        if not samples or samples[-1].key != key:
                            samples.append(TarSample(key))
                        samples[-1].links.append(ext.lower())
                    continue
                if not member.isreg():
                    continue
                if member.issparse():
                    raise DatacullError(f"shard {shard} member {member.name!r} is a sparse file; rebuild the shard")
                basename = member.name.rsplit("/", 1)[-1]
                if basename.startswith("__") and basename.endswith("__"):
                    continue
                key, ext = base_plus_ext(member.name)
                if key is None:
                    continue
                ext = ext.lower()
                if not samples or samples[-1].key != key:
                    samples.append(TarSample(key))
                sample = samples[-1]
                if ext in sample.members:
                    raise DatacullError(f"shard {shard} repeats member {member.name!r} for key {key!r}; "
                                        "each sample may hold one file per extension")
                sample.members[ext] = (member.offset_data, member.size)
                if ext in read:
                    handle = tar.extractfile(member)
                    sample.payloads[ext] = handle.read() if handle is not None else b""
    except tarfile.ReadError as exc:
        raise DatacullError(f"cannot read shard {shard} as an uncompressed tar ({exc}); "
                            "webdataset shards must be plain .tar files") from None
    except OSError as exc:
        raise DatacullError(f"cannot read shard {shard} ({exc})") from None
    return samples


def read_member(shard: Path, offset: int, size: int) -> bytes:
    """`size` bytes at `offset` of `shard`; EOFError if the shard is shorter (truncated), OSError if unreadable."""
    with open(shard, "rb") as handle:
        handle.seek(offset)
        data = handle.read(size)
    if len(data) != size:
        raise EOFError(f"{shard} ends after {len(data)} of {size} bytes at offset {offset}")
    return data


# ------------------------------------------------------------------------------ on-disk index cache
#
# Indexing reads every tar header of a shard (minutes for an ImageNet-sized set), so the result of
# indexing one shard is kept on disk, one file per shard, and reused while the shard is unchanged.
# A cached index is keyed by the shard's resolved path (the file name) and stamped with the shard's
# size and mtime_ns and the indexer's tag (its rules, e.g. the image extensions); any mismatch, a
# bad checksum or an unreadable file means the index is rebuilt from the tar headers, never trusted.
# Files are written atomically (datacull.store), so concurrent jobs at worst build the same file twice.

INDEX_MAGIC = b"DCTARIX1"
INDEX_VERSION = 1


@dataclass
class ShardIndex:
    """The indexed samples of one shard: key, image member (offset, size, extension id), label.

    `skipped` lists the keys of samples the indexer left out (e.g. no image member).
    """

    keys: list[str]
    offsets: np.ndarray  # int64 data offsets of the chosen member
    sizes: np.ndarray    # int64 member sizes
    exts: np.ndarray     # int8 extension ids (meaning defined by the indexer)
    labels: np.ndarray   # int64 labels
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.keys)


def shard_stamp(shard: Path) -> dict:
    """What identifies a shard's content for the cache: resolved path, size and mtime_ns."""
    resolved = Path(shard).resolve()
    stat = resolved.stat()
    return {"path": str(resolved), "size": int(stat.st_size), "mtime_ns": int(stat.st_mtime_ns)}


def index_cache_file(cache_dir: Path, stamp: dict) -> Path:
    """The cache file of the shard with `stamp`: named by a hash of its resolved path (plus its name)."""
    digest = hashlib.sha256(stamp["path"].encode()).hexdigest()[:20]
    return Path(cache_dir) / f"{Path(stamp['path']).stem[:40]}-{digest}.idx"


def _blob(strings: list[str]) -> bytes:
    return "\0".join(strings).encode("utf-8")


def _unblob(data: bytes, count: int) -> list[str]:
    if count == 0:
        return []
    strings = data.decode("utf-8").split("\0")
    if len(strings) != count:
        raise ValueError(f"{len(strings)} names for {count} entries")
    return strings


def save_index(path: Path, stamp: dict, tag: str, index: ShardIndex) -> bool:
    """Write `index` of the shard with `stamp` to `path` atomically; False (nothing written) if it cannot be encoded."""
    if any("\0" in key for key in [*index.keys, *index.skipped]):
        return False
    n = len(index)
    arrays = [np.ascontiguousarray(index.offsets, dtype="<i8"), np.ascontiguousarray(index.sizes, dtype="<i8"),
              np.ascontiguousarray(index.exts, dtype="i1"), np.ascontiguousarray(index.labels, dtype="<i8")]
    if any(len(a) != n for a in arrays):
        raise ValueError("ShardIndex arrays differ in length")
    keys, skipped = _blob(index.keys), _blob(index.skipped)
    payload = b"".join([a.tobytes() for a in arrays] + [keys, skipped])
    header = json.dumps({"version": INDEX_VERSION, "tag": tag, **stamp, "count": n, "keys_bytes": len(keys),
                         "skipped": len(index.skipped), "skipped_bytes": len(skipped),
                         "blake2b": hashlib.blake2b(payload, digest_size=16).hexdigest()}).encode()
    write_bytes_atomic(path, INDEX_MAGIC + struct.pack("<Q", len(header)) + header + payload)
    return True


def load_index(path: Path, stamp: dict, tag: str) -> ShardIndex | None:
    """The cached index at `path` if it exists, is intact and matches `stamp` and `tag`; else None."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return None
    try:
        if data[:8] != INDEX_MAGIC:
            raise ValueError("not a datacull tar index")
        (length,) = struct.unpack("<Q", data[8:16])
        header = json.loads(data[16: 16 + length])
        if header.get("version") != INDEX_VERSION or header.get("tag") != tag or \
                any(header.get(k) != v for k, v in stamp.items()):
            log.info("wds index %s is stale (the shard or the indexer changed): rebuilding it", path)
            return None
        payload = memoryview(data)[16 + length:]
        if hashlib.blake2b(payload, digest_size=16).hexdigest() != header["blake2b"]:
            raise ValueError("checksum mismatch")
        n, position, arrays = int(header["count"]), 0, []
        for dtype in ("<i8", "<i8", "i1", "<i8"):
            width = np.dtype(dtype).itemsize * n
            arrays.append(np.frombuffer(payload[position: position + width], dtype=dtype).astype(dtype[-2:]))
            position += width
        keys = _unblob(bytes(payload[position: position + header["keys_bytes"]]), n)
        position += header["keys_bytes"]
        skipped = _unblob(bytes(payload[position: position + header["skipped_bytes"]]), int(header["skipped"]))
        if position + header["skipped_bytes"] != len(payload):
            raise ValueError("trailing bytes")
    except (ValueError, KeyError, TypeError, struct.error, UnicodeDecodeError) as exc:
        log.warning("wds index %s is unreadable (%s): rebuilding it from the tar headers", path, exc)
        return None
    return ShardIndex(keys, *arrays, skipped=skipped)


def index_shards(shards: list[Path], build: Callable[[Path], ShardIndex], cache_dir: Path | None, tag: str,
                 workers: int = 0) -> list[ShardIndex]:
    """The index of every shard, in order: cached where valid, the others built from the tar headers.

    `build` must be a module-level function (it is sent to worker processes). With `workers` > 0
    the shards that need reading are indexed in that many processes; the result is the same.
    """
    start = time.perf_counter()
    results: list[ShardIndex | None] = [None] * len(shards)
    stamps: list[dict | None] = [None] * len(shards)
    todo = []
    for position, shard in enumerate(shards):
        if cache_dir is not None:
            try:  # the stamp is taken before the tar is read: a shard changed meanwhile is re-indexed next time
                stamps[position] = stamp = shard_stamp(shard)
            except OSError as exc:
                raise DatacullError(f"cannot read shard {shard} ({exc})") from None
            results[position] = load_index(index_cache_file(cache_dir, stamp), stamp, tag)
        if results[position] is None:
            todo.append(position)
    if todo:
        log.info("wds: reading the tar headers of %d of %d shards%s", len(todo), len(shards),
                 f" in {workers} processes" if workers > 0 and len(todo) > 1 else "")
        args = [(shards[p], build, cache_dir, tag, stamps[p]) for p in todo]
        if workers > 0 and len(todo) > 1:
            with concurrent.futures.ProcessPoolExecutor(max_workers=min(workers, len(todo))) as pool:
                built = list(pool.map(_build_and_save, args, chunksize=max(1, len(todo) // (8 * workers))))
        else:
            built = [_build_and_save(a) for a in progress(args, desc="index shards", unit="shard",
                                                           disable=len(args) < 4)]
        for position, index in zip(todo, built):
            results[position] = index
    log.info("wds: indexed %d shards (%d from the cache%s) in %.2f s", len(shards), len(shards) - len(todo),
             f" in {cache_dir}" if cache_dir is not None else ", disabled", time.perf_counter() - start)
    return results  # type: ignore[return-value]


def _build_and_save(args) -> ShardIndex:
    """Index one shard from its tar headers and, with a cache folder, save the index (a worker's task)."""
    shard, build, cache_dir, tag, stamp = args
    index = build(shard)
    if cache_dir is not None:
        try:  # an unwritable cache folder slows the next open, it does not fail this one
            save_index(index_cache_file(cache_dir, stamp), stamp, tag, index)
        except DatacullError as exc:
            log.warning("cannot cache the index of %s (%s)", shard, exc)
    return index
