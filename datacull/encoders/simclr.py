"""`simclr`: a small CNN trained self-supervised on the dataset itself (no external weights).

SimCLR (Chen, Kornblith, Norouzi, Hinton, ICML 2020, "A Simple Framework for Contrastive Learning
of Visual Representations"): two random views of each image go through the backbone and a
projection MLP, and the NT-Xent loss pulls the two views of an image together against the other
2N-2 views of the batch. The embedding is the backbone's pooled features (before the projection
head), as in the paper. Training uses a seeded random subset of at most `encoder.train_samples`
images held in memory as uint8, batched tensor augmentations (`augment.py`), AdamW with a linear
warm-up and cosine decay; the trained backbone is cached as a state_dict (`torch.save`, loaded with
`weights_only=True`) so every embed shard uses the same weights and re-runs skip training.
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from datacull.data.base import DataSource
from datacull.encoders.augment import AugmentConfig, simclr_view
from datacull.encoders.base import Encoder, register_encoder
from datacull.encoders.common import cache_lock, image_geometry, load_images, seeded_subset, state_fingerprint
from datacull.errors import DatacullError
from datacull.faults import kill_point
from datacull.logs import progress
from datacull.store import atomic_path

log = logging.getLogger(__name__)

# defaults for keys missing from the encoder config (conf/encoder/simclr.yaml sets them all)
DEFAULTS = {"width": 16, "dim": 128, "proj_dim": 64, "epochs": 8, "train_samples": 20000, "train_batch_size": 128,
            "lr": 2e-3, "weight_decay": 1e-5, "temperature": 0.2, "crop_scale": [0.2, 1.0], "jitter_p": 0.8,
            "channels_last": False}


def setting(encoder_cfg, key: str):
    """`encoder.<key>`, or its default when the config lacks the key."""
    return encoder_cfg.get(key, DEFAULTS[key])


def conv_block(in_channels: int, out_channels: int, stride: int = 1, pool: bool = False) -> nn.Sequential:
    """3x3 conv (no bias) + BatchNorm + ReLU, then 2x2 max-pool when `pool`."""
    layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
                               nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class SmallConvNet(nn.Module):
    """Four conv blocks of widths (w, 2w, 4w, dim) and global average pooling: (N, C, H, W) in
    [0, 1] -> (N, dim) features. The first conv has stride 2 and blocks 2 and 3 end in 2x2
    max-pooling (28x28 -> 14 -> 7 -> 3): downsampling at once keeps the full-resolution activations
    small, which is where a CPU spends its time (about 3x faster than a stride-1 stem).

    The per-channel input mean/std of the training data are buffers, so they travel with the weights.
    """

    def __init__(self, in_channels: int, width: int, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(1, in_channels, 1, 1))
        self.register_buffer("std", torch.ones(1, in_channels, 1, 1))
        self.blocks = nn.Sequential(
            conv_block(in_channels, width, stride=2),
            conv_block(width, 2 * width, pool=True),
            conv_block(2 * width, 4 * width, pool=True),
            conv_block(4 * width, dim),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images - self.mean) / self.std
        return self.blocks(x).mean(dim=(2, 3))


def projection_head(dim: int, out_dim: int) -> nn.Sequential:
    """SimCLR's projection g(h): a one-hidden-layer MLP (Linear, BatchNorm, ReLU, Linear)."""
    return nn.Sequential(nn.Linear(dim, dim, bias=False), nn.BatchNorm1d(dim), nn.ReLU(inplace=True),
                         nn.Linear(dim, out_dim))


def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent (normalised temperature-scaled cross entropy, SimCLR eq. 1), averaged over all 2N views.

    `z1[i]` and `z2[i]` are the projections of two views of image i; every other view in the batch
    is a negative.
    """
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    logits = z @ z.T / temperature
    logits.fill_diagonal_(float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, targets)


def check_settings(encoder_cfg) -> None:
    """Raise one DatacullError for SimCLR settings that cannot train."""
    sizes = {k: int(setting(encoder_cfg, k)) for k in ("width", "dim", "proj_dim", "epochs")}
    low, high = (float(v) for v in setting(encoder_cfg, "crop_scale"))
    problems = [f"encoder.{k}={v} must be >= 1" for k, v in sizes.items() if v < 1]
    if int(setting(encoder_cfg, "train_batch_size")) < 2:
        problems.append("encoder.train_batch_size must be >= 2 (NT-Xent needs negatives)")
    if float(setting(encoder_cfg, "temperature")) <= 0 or float(setting(encoder_cfg, "lr")) <= 0:
        problems.append("encoder.temperature and encoder.lr must be > 0")
    if not 0 < low <= high <= 1:
        problems.append(f"encoder.crop_scale=[{low}, {high}] must satisfy 0 < low <= high <= 1")
    if problems:
        raise DatacullError("simclr: " + "; ".join(problems))


def _augment_config(encoder_cfg) -> AugmentConfig:
    scale = setting(encoder_cfg, "crop_scale")
    return AugmentConfig(crop_scale=(float(scale[0]), float(scale[1])),
                         jitter_p=float(setting(encoder_cfg, "jitter_p")))


def train_simclr(images: torch.Tensor, encoder_cfg, seed: int,
                 device: torch.device) -> tuple[SmallConvNet, list[float]]:
    """Train a SmallConvNet with NT-Xent on uint8 `images` (M, C, H, W); return it and the epoch losses.

    Deterministic on CPU given the seed: weights are initialised under a forked RNG seeded with
    `seed`, and batches and augmentations come from a generator seeded with `seed`.
    """
    width, dim = int(setting(encoder_cfg, "width")), int(setting(encoder_cfg, "dim"))
    epochs, temperature = int(setting(encoder_cfg, "epochs")), float(setting(encoder_cfg, "temperature"))
    lr, weight_decay = float(setting(encoder_cfg, "lr")), float(setting(encoder_cfg, "weight_decay"))
    batch_size = min(int(setting(encoder_cfg, "train_batch_size")), len(images))
    if batch_size < 2:
        raise DatacullError(f"simclr needs at least 2 training images, got {len(images)}")
    channels_last = bool(setting(encoder_cfg, "channels_last"))
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        backbone = SmallConvNet(images.shape[1], width, dim)
        head = projection_head(dim, int(setting(encoder_cfg, "proj_dim")))
    sample = images[:10000].to(torch.float32) / 255.0  # images are a random subset already
    backbone.mean.copy_(sample.mean(dim=(0, 2, 3)).view_as(backbone.mean))
    backbone.std.copy_(sample.std(dim=(0, 2, 3)).clamp(min=1e-3).view_as(backbone.std))
    del sample
    backbone, head = backbone.to(device, memory_format=memory_format), head.to(device)
    params = list(backbone.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    steps_per_epoch = len(images) // batch_size  # drop the ragged last batch (BatchNorm, loss balance)
    total = epochs * steps_per_epoch
    warmup = max(1, total // 10)

    def warmup_cosine(step: int) -> float:
        return min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine)
    generator = torch.Generator().manual_seed(seed)
    augment = _augment_config(encoder_cfg)
    losses: list[float] = []
    backbone.train()
    head.train()
    for epoch in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        running, bar = 0.0, progress(range(steps_per_epoch), desc=f"simclr epoch {epoch + 1}/{epochs}", unit="batch",
                                     leave=False)
        for step in bar:
            batch = images[order[step * batch_size: (step + 1) * batch_size]].to(device, non_blocking=True)
            batch = batch.to(torch.float32).div_(255.0)
            views = torch.cat([simclr_view(batch, augment, generator), simclr_view(batch, augment, generator)])
            features = backbone(views.contiguous(memory_format=memory_format))
            projections = head(features)
            loss = nt_xent_loss(projections[:len(batch)], projections[len(batch):], temperature)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            value = float(loss.detach())
            if not math.isfinite(value):
                raise DatacullError(f"simclr training diverged (loss {value}) in epoch {epoch + 1}; "
                                    "lower encoder.lr or raise encoder.temperature")
            running += value
            bar.set_postfix(loss=f"{running / (step + 1):.3f}")
            kill_point("step", f"simclr epoch {epoch + 1} step {step + 1}")
        losses.append(running / steps_per_epoch)
        log.info("simclr: epoch %d/%d NT-Xent loss %.4f", epoch + 1, epochs, losses[-1])
    backbone.eval()
    return backbone.to(memory_format=torch.contiguous_format), losses


@register_encoder("simclr", "small CNN trained with SimCLR on the dataset itself (offline, no weights)")
class SimCLREncoder(Encoder):
    """Backbone features of a SmallConvNet trained with SimCLR on (a subset of) the source."""

    def __init__(self, encoder_cfg, seed: int):
        self.cfg = encoder_cfg
        self.seed = int(seed)
        self.backbone: SmallConvNet | None = None
        self.cache_path: Path | None = None
        self.trained = False  # True when the last prepare() trained rather than loaded
        self.losses: list[float] = []
        check_settings(encoder_cfg)

    @property
    def dim(self) -> int:
        return int(setting(self.cfg, "dim"))

    def prepare(self, source: DataSource, cache_dir: Path, device: torch.device) -> None:
        """Load the trained backbone for `source` from `cache_dir`, training and caching it first if absent."""
        self.input_size, self.input_channels = image_geometry(self.cfg, source)
        tag = f"simclr-{state_fingerprint(self.cfg, self.seed, source)}"
        self.cache_path = Path(cache_dir) / f"{tag}.pt"
        self.trained = False
        with cache_lock(cache_dir, tag):
            if not self.cache_path.exists():
                self._train_and_save(source, device)
                self.trained = True
        backbone = SmallConvNet(self.input_channels, int(setting(self.cfg, "width")), self.dim)
        try:
            state = torch.load(self.cache_path, map_location="cpu", weights_only=True)
            backbone.load_state_dict(state)
        except (RuntimeError, OSError, KeyError) as exc:
            raise DatacullError(f"cannot load SimCLR weights {self.cache_path} ({type(exc).__name__}); "
                                "delete the file to retrain") from None
        self.backbone = backbone.to(device).eval()

    def _train_and_save(self, source: DataSource, device: torch.device) -> None:
        indices = seeded_subset(len(source), setting(self.cfg, "train_samples"), self.seed)
        images = load_images(source, indices, self.input_size, self.input_channels,
                             int(self.cfg.get("num_workers", 0)), desc="simclr: load training images")
        start = time.perf_counter()
        backbone, self.losses = train_simclr(images, self.cfg, self.seed, device)
        log.info("simclr: trained on %d images in %.0fs (final NT-Xent loss %.4f)", len(images),
                 time.perf_counter() - start, self.losses[-1])
        with atomic_path(self.cache_path, suffix=".pt") as tmp:
            torch.save({k: v.cpu() for k, v in backbone.state_dict().items()}, tmp)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(N, dim) float32 backbone features of a uint8 (N, C, H, W) batch."""
        if self.backbone is None:
            raise RuntimeError("call prepare() before encode()")
        with torch.inference_mode():
            return self.backbone(images.to(torch.float32) / 255.0).float()
