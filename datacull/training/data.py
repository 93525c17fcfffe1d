"""Image batches for training and evaluation: uint8 (N, C, H, W) tensors from a DataSource.

Array-backed sources (Fashion-MNIST, digits, synthetic, and subsets of them) are sliced directly
(no per-image Python call); others go through `ExampleDataset` and a DataLoader with workers.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from datacull.data.base import ArraySource, DataSource, SubsetSource
from datacull.data.loader import ExampleDataset, conform


def input_geometry(model_cfg, source: DataSource) -> tuple[int, tuple[int, int]]:
    """(channels, (H, W)) the model sees: `model.in_channels` / `model.image_size`, else the data's own."""
    from datacull.errors import DatacullError

    shape = source.image_shape
    channels = model_cfg.get("in_channels") or (shape[2] if shape is not None else 3)
    side = model_cfg.get("image_size")
    if side:
        size = (int(side), int(side))
    elif shape is not None:
        size = (int(shape[0]), int(shape[1]))
    else:
        raise DatacullError(f"images of {source.name!r} differ in size; set model.image_size (e.g. 224)")
    return int(channels), size


def _array_view(source: DataSource, indices: np.ndarray) -> np.ndarray | None:
    """source images at `indices` as one (n, H, W, C) array when the source is array-backed."""
    if isinstance(source, ArraySource):
        return source.images[indices]
    if isinstance(source, SubsetSource):
        return _array_view(source.base, source.indices[indices])
    return None


def iter_images(source: DataSource, indices: np.ndarray, size: tuple[int, int], channels: int,
                batch_size: int, num_workers: int = 0, on_error: str = "skip",
                desc: str | None = None) -> Iterator[tuple[torch.Tensor, list[str]]]:
    """Yield (uint8 (n, C, H, W) tensor, per-image error strings) for `indices`, in order."""
    indices = np.asarray(indices, dtype=np.int64)
    shape = source.image_shape
    direct = shape is not None and tuple(shape) == (size[0], size[1], channels) and _array_view(source, indices[:1]) is not None
    bar = tqdm(total=len(indices), desc=desc, unit="img", disable=desc is None, leave=False)
    if direct:
        for start in range(0, len(indices), batch_size):
            block = _array_view(source, indices[start: start + batch_size])
            bar.update(len(block))
            yield torch.from_numpy(np.ascontiguousarray(block)).permute(0, 3, 1, 2), [""] * len(block)
    elif _array_view(source, indices[:1]) is not None and num_workers == 0:
        for start in range(0, len(indices), batch_size):
            block = _array_view(source, indices[start: start + batch_size])
            block = np.stack([conform(image, size, channels) for image in block])
            bar.update(len(block))
            yield torch.from_numpy(block).permute(0, 3, 1, 2), [""] * len(block)
    else:
        dataset = ExampleDataset(source, indices, size=size, channels=channels, on_error=on_error)
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, shuffle=False)
        for images, _, _, errors in loader:
            bar.update(len(images))
            yield images, list(errors)
    bar.close()


def load_images(source: DataSource, indices: np.ndarray, size: tuple[int, int], channels: int,
                num_workers: int = 0, on_error: str = "skip") -> tuple[torch.Tensor, int]:
    """All images at `indices` as one uint8 (n, C, H, W) tensor, and how many could not be decoded."""
    out = torch.empty((len(indices), channels, *size), dtype=torch.uint8)
    bad, start = 0, 0
    for block, errors in iter_images(source, indices, size, channels, 1024, num_workers, on_error,
                                     desc="load images" if len(indices) > 100_000 else None):
        out[start: start + len(block)] = block
        bad += sum(1 for e in errors if e)
        start += len(block)
    return out, bad


def channel_stats(images: torch.Tensor, limit: int = 10_000) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std (values in [0, 1]) of up to `limit` evenly spaced images."""
    pick = torch.from_numpy(np.linspace(0, len(images) - 1, min(limit, len(images))).round().astype(np.int64))
    sample = images[pick].double() / 255.0
    return sample.mean(dim=(0, 2, 3)).float(), sample.std(dim=(0, 2, 3)).float()
