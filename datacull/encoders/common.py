"""Helpers shared by the encoders that fit state on the data: cache keys, locks, image loading."""
from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from filelock import FileLock

from datacull.data.base import CorruptExample, DataSource
from datacull.data.encoded import configured_size
from datacull.data.loader import ExampleDataset, make_loader
from datacull.errors import DatacullError
from datacull.layout import encoder_identity
from datacull.logs import progress
from datacull.store import ensure_dir, fingerprint

# encoder-config keys that change how embeddings are stored or computed, not the fitted state
_STATE_KEYS_IGNORED = {"dtype"}
_SIGNATURE_IMAGES = 16


def source_signature(source: DataSource) -> dict:
    """What identifies a source's examples: name, split, size, a hash of its keys and of a few images.

    `prepare` only sees the source (not the data config), so the hashes catch sources that share
    name/split/size but differ in content (e.g. synthetic data with another seed or noise level).
    """
    keys_hash = hashlib.sha256("\n".join(source.keys).encode()).hexdigest()[:16]
    pixels = hashlib.sha256()
    for index in np.linspace(0, len(source) - 1, num=min(_SIGNATURE_IMAGES, len(source)), dtype=np.int64):
        try:
            pixels.update(np.ascontiguousarray(source.load(int(index))).tobytes())
        except CorruptExample:
            pixels.update(b"corrupt")
    return {"name": source.name, "split": source.split, "size": len(source),
            "keys": keys_hash, "pixels": pixels.hexdigest()[:16]}


def state_fingerprint(encoder_cfg, seed: int, source: DataSource) -> str:
    """Cache key of an encoder's fitted state: its config (minus storage keys), the seed and the data."""
    identity = {k: v for k, v in encoder_identity(encoder_cfg).items() if k not in _STATE_KEYS_IGNORED}
    return fingerprint(identity, int(seed), source_signature(source))


@contextlib.contextmanager
def cache_lock(cache_dir: Path, name: str) -> Iterator[None]:
    """Hold an exclusive lock on `cache_dir/.{name}.lock` so that concurrent embed shards fit once.

    The first shard fits and writes the state; the others wait, then load it, so every shard
    embeds with the same state even where fitting is not bitwise reproducible (e.g. on GPU).
    `filelock.FileLock`: an OS lock (fcntl on POSIX, msvcrt on Windows), released if the holder dies.
    """
    ensure_dir(cache_dir)
    with FileLock(str(Path(cache_dir) / f".{name}.lock")):
        yield


def image_geometry(encoder_cfg, source: DataSource) -> tuple[tuple[int, int], int]:
    """(H, W) and channel count an encoder that works at the data's own resolution should use.

    `encoder.image_size` wins; otherwise the source's common image shape. Channels: `encoder.channels`
    if set, else the source's.
    """
    shape = source.image_shape
    size = configured_size(encoder_cfg.get("image_size"), "encoder.image_size")
    if size is None:
        if shape is None:
            raise DatacullError(
                f"images of {source.name!r} differ in size; set encoder.image_size=[H,W] (or data.image_size)"
            )
        size = (int(shape[0]), int(shape[1]))
    channels = encoder_cfg.get("channels") or (shape[2] if shape is not None else 3)
    if int(channels) not in (1, 3):
        raise DatacullError(f"encoder.channels must be 1 or 3, not {channels!r}")
    return size, int(channels)


def seeded_subset(n: int, limit: int | None, seed: int) -> np.ndarray:
    """Sorted positions of a seeded random subset of at most `limit` of `n` examples (all if None)."""
    if limit is None or int(limit) <= 0 or int(limit) >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=int(limit), replace=False))


def load_images(source: DataSource, indices: np.ndarray, size: tuple[int, int], channels: int,
                num_workers: int = 0, desc: str = "load images") -> torch.Tensor:
    """uint8 tensor (M, C, H, W) of the decodable images among `indices` (corrupt ones dropped)."""
    dataset = ExampleDataset(source, indices, size=size, channels=channels, on_error="skip")
    loader = make_loader(dataset, batch_size=512, num_workers=num_workers)
    out = torch.empty((len(indices), channels, *size), dtype=torch.uint8)
    keep = np.ones(len(indices), dtype=bool)
    position = 0
    for images, _, _, errors in progress(loader, desc=desc, unit="batch", leave=False):
        out[position: position + len(images)] = images
        keep[position: position + len(images)] = [not e for e in errors]
        position += len(images)
    if not keep.any():
        raise DatacullError(f"none of the {len(indices)} sampled images of {source.name!r} could be decoded")
    return out if keep.all() else out[torch.from_numpy(keep)]
