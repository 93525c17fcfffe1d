"""Artifact storage: atomic writes, config fingerprints and the work-directory layout.

Every stage writes through these helpers so that a killed run never leaves a half-written file
under its final name, and so that a stage can tell whether an existing output was made from the
same configuration (and skip the work) by comparing fingerprints.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import tempfile
import re
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from datacull.errors import DatacullError
from datacull.faults import kill_point

log = logging.getLogger(__name__)

FINGERPRINT_KEY = b"datacull.fingerprint"
CONFIG_KEY = b"datacull.config"


def to_plain(obj: Any) -> Any:
    """Turn OmegaConf nodes (also nested in dicts/lists) into plain Python containers."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(obj, (DictConfig, ListConfig)):
        return OmegaConf.to_container(obj, resolve=True)
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj


def without_defaults(section: dict, defaults: dict) -> dict:
    """`section` without the keys that sit at their value in `defaults`.

    For options added after results existed: at their neutral default they stay out of a
    fingerprint, so the cached results of configs that predate them keep their identity.
    """
    return {k: v for k, v in section.items() if not (k in defaults and v == defaults[k])}


def fingerprint(*parts: Any) -> str:
    """A short, stable sha256 hex digest of JSON-serialisable parts (config nodes allowed)."""
    payload = json.dumps([to_plain(p) for p in parts], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def ensure_dir(path: Path) -> Path:
    """Create `path` (and parents) and check it is writable, or raise one clear error."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatacullError(
            f"cannot create directory {path}: {exc.strerror}; set paths.work_dir to a writable folder"
        ) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise DatacullError(f"directory {path} is not writable; set paths.work_dir to a writable folder")
    return path


@contextlib.contextmanager
def atomic_path(final: Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `final`; on success fsync it and rename it onto `final`.

    On any exception the temporary file is removed and `final` is left untouched.
    """
    final = Path(final)
    ensure_dir(final.parent)
    remove_stale_temps(final.parent)
    fd, tmp_name = tempfile.mkstemp(prefix=_temp_prefix(final), suffix=suffix + ".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give artifacts the usual mode
        kill_point("write", final)
        os.replace(tmp, final)
        _fsync_dir(final.parent)
        kill_point("commit", final)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside `final`; on success fsync it and swap it in for `final`.

    On any exception (KeyboardInterrupt included) the temporary folder is removed and an existing
    `final` is left untouched. The old folder is moved aside first and deleted only after the rename.
    Files directly in the folder get the usual umask modes (mkstemp/mkdtemp make them owner-only).
    Two processes finishing together both succeed; the folder ends as one complete copy.
    """
    final = Path(final)
    ensure_dir(final.parent)
    remove_stale_temps(final.parent)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(final), suffix=".tmp", dir=final.parent))
    try:
        yield tmp
        umask = _umask()
        for child in tmp.iterdir():
            os.chmod(child, (0o777 if child.is_dir() else 0o666) & ~umask)
            _fsync_file(child)
        os.chmod(tmp, 0o777 & ~umask)
        _fsync_dir(tmp)
        kill_point("swap", final)
        _swap_in(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _swap_in(tmp: Path, final: Path, attempts: int = 1000) -> None:
    """Rename folder `tmp` onto `final`, moving an existing `final` aside first and deleting it after.

    Tolerates concurrent swappers: if another process moves `final` away first (FileNotFoundError)
    or puts its own folder there between our two renames (ENOTEMPTY/EEXIST), it simply retries.
    """
    for _ in range(attempts):
        old = final.parent / f"{_temp_prefix(final)}{uuid.uuid4().hex[:8]}.old"
        try:
            os.rename(final, old)
        except FileNotFoundError:
            pass
        try:
            os.rename(tmp, final)
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                shutil.rmtree(old, ignore_errors=True)  # a concurrent writer got in between: retry
                continue
            with contextlib.suppress(OSError):
                os.rename(old, final)  # put the previous folder back
            raise
        except BaseException:
            with contextlib.suppress(OSError):
                os.rename(old, final)
            raise
        _fsync_dir(final.parent)
        shutil.rmtree(old, ignore_errors=True)
        return
    raise OSError(errno.EBUSY, f"could not swap {tmp} into {final}: other writers kept replacing it")


_TEMP_NAME = re.compile(r"^\..+\.p(\d+)\.[^/]*\.(tmp|old)$")  # made by _temp_prefix
_LEGACY_TEMP = re.compile(r"^\..+\.(tmp|old)$")
_LEGACY_AGE_S = 3600.0


def _temp_prefix(final: Path) -> str:
    """Temporary names embed the writer's pid (`.NAME.p<pid>.`), so stale ones can be told apart."""
    return f".{final.name}.p{os.getpid()}."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(directory: Path) -> list[Path]:
    """Remove temporaries of atomic writes in `directory` left by killed processes; return them.

    A temporary (``.NAME.p<pid>.*.tmp`` file or folder, ``.NAME.p<pid>.*.old`` folder) is stale
    when its writer pid is dead; live writers' temporaries are never touched. Temporaries without a
    pid (older datacull versions) are removed once an hour old.
    """
    removed: list[Path] = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        if not entry.name.startswith("."):
            continue
        match = _TEMP_NAME.match(entry.name)
        if match:
            pid = int(match.group(1))
            if pid == os.getpid() or _pid_alive(pid):
                continue
        elif not _LEGACY_TEMP.match(entry.name):
            continue
        else:
            try:
                if now - entry.stat(follow_symlinks=False).st_mtime < _LEGACY_AGE_S:
                    continue
            except OSError:
                continue
        path = Path(entry.path)
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path)
            else:
                path.unlink()
        except FileNotFoundError:
            pass  # another process cleaned it first
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EBUSY):
                log.warning("could not remove stale temporary %s: %s", path, exc)
            continue
        removed.append(path)
    return removed


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    """Write `data` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_json_atomic(path: Path, obj: Any) -> Path:
    """Write `obj` as indented JSON to `path` atomically."""
    return write_bytes_atomic(path, (json.dumps(to_plain(obj), indent=2, sort_keys=True, default=str) + "\n").encode())


def write_parquet_atomic(path: Path, table: pa.Table | Any, fp: str | None = None, config: Any = None) -> Path:
    """Write a pandas DataFrame or arrow Table as parquet, atomically, with fingerprint/config metadata."""
    if not isinstance(table, pa.Table):
        table = pa.Table.from_pandas(table, preserve_index=False)
    meta = dict(table.schema.metadata or {})
    if fp is not None:
        meta[FINGERPRINT_KEY] = fp.encode()
    if config is not None:
        meta[CONFIG_KEY] = json.dumps(to_plain(config), sort_keys=True, default=str).encode()
    table = table.replace_schema_metadata(meta)
    with atomic_path(path, suffix=".parquet") as tmp:
        pq.write_table(table, tmp)
    return Path(path)


def parquet_fingerprint(path: Path) -> str | None:
    """The fingerprint stored in a parquet file's metadata, or None if absent/unreadable."""
    try:
        meta = pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowInvalid):
        return None
    value = meta.get(FINGERPRINT_KEY)
    return value.decode() if value else None


def parquet_config(path: Path) -> dict:
    """The config dict stored in a parquet file's metadata (empty if none)."""
    meta = pq.read_schema(path).metadata or {}
    raw = meta.get(CONFIG_KEY)
    return json.loads(raw) if raw else {}


def is_fresh(path: Path, fp: str) -> bool:
    """True when `path` exists and was written with fingerprint `fp` (so its stage can be skipped)."""
    return Path(path).exists() and parquet_fingerprint(path) == fp
