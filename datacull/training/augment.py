"""Batched data augmentation on image tensors (no per-image Python loop, so it is cheap on CPU).

`crop` = random crop of the original size from the image zero-padded by `padding` pixels on each
side; `flip` = horizontal flip with probability 1/2; `crop_flip` = both (the standard CIFAR/SVHN
augmentation of He et al. 2016, used by Sorscher et al. 2022 and Paul et al. 2021). Randomness
comes from an explicit torch.Generator so a run (and a resumed run) is reproducible.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from datacull.errors import DatacullError

AUGMENTATIONS = ("none", "crop", "flip", "crop_flip")


def resolve_augment(train_cfg, data_cfg, channels: int) -> str:
    """The augmentation to use: `train.augment`, where `auto` = `data.augment` if set, else by channels."""
    name = str(train_cfg.get("augment", "auto"))
    if name == "auto":
        name = str(data_cfg.get("augment") or ("crop_flip" if channels == 3 else "crop"))
    if name not in AUGMENTATIONS:
        raise DatacullError(f"train.augment must be one of auto, {', '.join(AUGMENTATIONS)}; got {name!r}")
    return name


def resolve_padding(train_cfg, image_size: int) -> int:
    """Crop padding in pixels: `train.crop_padding`, where `auto` = image side / 8 (4 at 32 px)."""
    value = train_cfg.get("crop_padding", "auto")
    padding = max(1, round(image_size / 8)) if value in ("auto", None) else int(value)
    if padding < 0:
        raise DatacullError(f"train.crop_padding must be >= 0 or auto, got {padding}")
    return padding


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Per-image random crops of x's size from x zero-padded by `padding` (x: N, C, H, W)."""
    if padding == 0:
        return x
    n, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    offsets = torch.randint(0, 2 * padding + 1, (2, n), generator=generator).to(x.device)
    rows = (offsets[0][:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (offsets[1][:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    channel = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, channel, rows, cols]


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Flip each image horizontally with probability 1/2."""
    flip = (torch.rand(x.shape[0], generator=generator) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def augment_batch(x: torch.Tensor, name: str, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Apply augmentation `name` (one of AUGMENTATIONS) to a batch; the generator lives on the CPU."""
    if name in ("crop", "crop_flip"):
        x = random_crop(x, padding, generator)
    if name in ("flip", "crop_flip"):
        x = random_flip(x, generator)
    return x
