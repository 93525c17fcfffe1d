"""The encoder interface: image batches in, one embedding row per image out."""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import torch

from datacull.data.base import DataSource
from datacull.registry import Registry

ENCODERS: Registry = Registry("encoder", "encoder")
register_encoder = ENCODERS.register


def resolve_device(name: str) -> torch.device:
    """`auto` -> cuda when available, else cpu; any other value is passed to torch.device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class Encoder(ABC):
    """Maps uint8 image batches (N, C, H, W) to float embeddings (N, dim).

    `input_size` (H, W) and `input_channels` say what the data loader must deliver (None = the
    source's native size / channels). `prepare` fits or trains whatever the encoder needs, caching
    it under `cache_dir` so every embed shard uses the same state; it must be deterministic given
    the config and seed.
    """

    input_size: tuple[int, int] | None = None
    input_channels: int | None = None

    @property
    @abstractmethod
    def dim(self) -> int:
        """Embedding width (valid after `prepare`)."""

    def prepare(self, source: DataSource, cache_dir: Path, device: torch.device) -> None:
        """Fit / train / load the encoder state for `source` (default: nothing to do)."""

    @abstractmethod
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Embeddings (N, dim) float32 for a uint8 batch (N, C, H, W) already on the right device."""


def build_encoder(encoder_cfg, seed: int) -> Encoder:
    """Instantiate the encoder named by `encoder_cfg.name`."""
    import datacull.encoders  # noqa: F401  (registers the built-in encoders)

    return ENCODERS.get(encoder_cfg.name).obj(encoder_cfg, seed)
