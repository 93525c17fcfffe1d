"""Batches of images from a DataSource for torch: fixed size, fixed channels, corrupt ones flagged."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image

from datacull.data.base import CorruptExample, DataSource, skip_reason
from datacull.errors import DatacullError


def conform(image: np.ndarray, size: tuple[int, int] | None, channels: int | None) -> np.ndarray:
    """Resize a uint8 (H, W, C) image to `size` (H, W) and convert it to `channels` (1 or 3)."""
    if channels is not None and image.shape[2] != channels:
        if channels == 1:
            image = np.array(Image.fromarray(image[..., :3]).convert("L"))[..., None]
        elif image.shape[2] == 1:
            image = np.repeat(image, channels, axis=2)
        else:
            image = image[..., :channels]
    if size is not None and tuple(image.shape[:2]) != tuple(size):
        mode_image = Image.fromarray(image[..., 0] if image.shape[2] == 1 else image)
        resized = np.array(mode_image.resize((size[1], size[0]), Image.BILINEAR))
        image = resized[..., None] if resized.ndim == 2 else resized
    return np.ascontiguousarray(image)


class ExampleDataset(torch.utils.data.Dataset):
    """(image uint8 CxHxW, label, index, error) for `indices` of `source`.

    With `on_error="skip"` an undecodable image yields a zero image and its error text (so the
    caller records it as skipped); with `"fail"` it raises one DatacullError naming the key.
    """

    def __init__(self, source: DataSource, indices: Sequence[int] | None = None,
                 size: tuple[int, int] | None = None, channels: int | None = None, on_error: str = "skip"):
        if on_error not in ("skip", "fail"):
            raise DatacullError(f"data.on_error must be 'skip' or 'fail', not {on_error!r}")
        self.source = source
        self.indices = np.arange(len(source)) if indices is None else np.asarray(indices, dtype=np.int64)
        shape = source.image_shape
        if size is None and shape is None:
            raise DatacullError(
                f"images of {source.name!r} differ in size; set data.image_size=[H,W] (or encoder.image_size)"
            )
        self.size = tuple(size) if size is not None else tuple(shape[:2])  # type: ignore[index]
        self.channels = channels or (shape[2] if shape is not None else 3)
        self.on_error = on_error
        self.labels = source.labels

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int):
        index = int(self.indices[position])
        error = ""
        try:
            image = conform(self.source.load(index), self.size, self.channels)
        except CorruptExample as exc:
            if self.on_error == "fail":
                raise DatacullError(
                    f"example {self.source.keys[index]!r} cannot be decoded ({exc}); "
                    "fix the input or set data.on_error=skip"
                ) from None
            image = np.zeros((*self.size, self.channels), dtype=np.uint8)
            error = skip_reason(exc)
        tensor = torch.from_numpy(image).permute(2, 0, 1).contiguous()
        return tensor, int(self.labels[index]), index, error


def make_loader(dataset: ExampleDataset, batch_size: int, num_workers: int = 0,
                shuffle: bool = False, seed: int = 0, drop_last: bool = False,
                pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """A DataLoader over `dataset` with a seeded shuffle and persistent workers when there are any.

    `pin_memory=True` (for a CUDA consumer) returns page-locked batches so host-to-device copies
    can be `non_blocking`."""
    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers, generator=generator,
        drop_last=drop_last, persistent_workers=num_workers > 0, pin_memory=pin_memory,
    )
