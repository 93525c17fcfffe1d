"""Batched SimCLR augmentations on float image tensors, with per-sample random parameters.

Everything runs on whole (N, C, H, W) batches on the training device (no per-image PIL work), so
augmentation costs little next to the forward pass even on a CPU. Random parameters are drawn on
the CPU from an explicit `torch.Generator`, so a seed gives the same views on any device.
Views follow Chen et al. 2020 (SimCLR): random resized crop + horizontal flip, then colour jitter
(brightness, contrast, saturation) applied with probability `jitter_p`, and random grayscale.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    """Strengths of the augmentations (SimCLR's defaults, crop scale adjustable for tiny images)."""

    crop_scale: tuple[float, float] = (0.2, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    grayscale_p: float = 0.2


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def random_resized_crop_flip(images: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Crop a random box of each image (area fraction and aspect ratio drawn per image), maybe
    mirror it, and resample it to the full size — one `affine_grid` + `grid_sample` for the batch."""
    n = images.shape[0]
    area = _uniform(n, *cfg.crop_scale, generator)
    log_ratio = _uniform(n, math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1]), generator)
    ratio = torch.exp(log_ratio)
    half_w = torch.sqrt(area * ratio).clamp(max=1.0)  # box half-extent in [-1, 1] coordinates
    half_h = torch.sqrt(area / ratio).clamp(max=1.0)
    center_x = (2 * torch.rand(n, generator=generator) - 1) * (1 - half_w)
    center_y = (2 * torch.rand(n, generator=generator) - 1) * (1 - half_h)
    flip = torch.where(torch.rand(n, generator=generator) < cfg.flip_p, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = half_w * flip
    theta[:, 0, 2] = center_x
    theta[:, 1, 1] = half_h
    theta[:, 1, 2] = center_y
    theta = theta.to(device=images.device, dtype=images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _gray(images: torch.Tensor) -> torch.Tensor:
    if images.shape[1] == 1:
        return images
    weights = torch.tensor([0.299, 0.587, 0.114], device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True)


def color_jitter(images: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Per-image brightness, contrast and (RGB) saturation factors, applied with probability
    `jitter_p`; then random grayscale for RGB images. Values stay in [0, 1]."""
    n = images.shape[0]
    apply = (torch.rand(n, generator=generator) < cfg.jitter_p).float()

    def factors(strength: float) -> torch.Tensor:
        drawn = _uniform(n, max(0.0, 1 - strength), 1 + strength, generator)
        return (1 + apply * (drawn - 1)).to(images.device, images.dtype).view(n, 1, 1, 1)

    brightness, contrast, saturation = factors(cfg.brightness), factors(cfg.contrast), factors(cfg.saturation)
    images = (images * brightness).clamp(0, 1)
    mean = _gray(images).mean(dim=(1, 2, 3), keepdim=True)
    images = ((images - mean) * contrast + mean).clamp(0, 1)
    to_gray = torch.rand(n, generator=generator) < cfg.grayscale_p
    if images.shape[1] == 3:
        gray = _gray(images)
        images = ((images - gray) * saturation + gray).clamp(0, 1)
        images = torch.where(to_gray.to(images.device).view(n, 1, 1, 1), gray.expand_as(images), images)
    return images


def simclr_view(images: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """One random view of each image of a float batch in [0, 1] (N, C, H, W)."""
    return color_jitter(random_resized_crop_flip(images, cfg, generator), cfg, generator)
