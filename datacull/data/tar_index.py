"""An index of the samples in a webdataset tar shard, read from the tar headers only.

A sample is a run of consecutive members sharing a key (webdataset's rule: the member name up to
the first dot of its basename, directory part included). For each sample the index records every
member's data offset and size, so a member is read later by offset without scanning the tar again
and without holding image bytes in memory. Members named by absolute paths or with `..` parts are
refused; links, directories and webdataset meta files (`__name__`) are skipped; member data is
read only for the extensions asked for (e.g. `cls`), never unpickled.
"""
from __future__ import annotations

import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from datacull.errors import DatacullError


@dataclass
class TarSample:
    """One sample of a shard: its key, {extension: (data offset, size)} and the small payloads read."""

    key: str
    members: dict[str, tuple[int, int]] = field(default_factory=dict)
    payloads: dict[str, bytes] = field(default_factory=dict)


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
