"""Batched data augmentation on image tensors (no per-image Python loop, so it is cheap on CPU), and
the evaluation transform of the ImageNet recipe.

Training augmentations (`train.augment`), on float (N, C, H, W) batches on the device:
- `crop`: random crop of the original size from the image padded by `padding` pixels on each side
  (`train.crop_padding_mode`: `zeros`, or `reflect` as in mansheej/data_diet's CIFAR-10 pipeline);
- `flip`: horizontal flip with probability 1/2; `crop_flip` = both (the standard CIFAR/SVHN
  augmentation of He et al. 2016, used by Sorscher et al. 2022 and Paul et al. 2021);
- `resized_crop`: RandomResizedCrop (Szegedy et al. 2015; torchvision's sampling rule): a box of
  area fraction U(0.08, 1) and log-uniform aspect ratio in (3/4, 4/3) (10 tries, then the centre
  crop of clamped ratio), resized bilinearly back to the batch's H x W; `resized_crop_flip` adds the
  flip (the standard ImageNet ResNet-50 training augmentation).
Randomness comes from an explicit CPU torch.Generator so a run (and a resumed run) is reproducible.

Evaluation transform (`train.eval_transform`, used by predict_logits): `none` (the training
geometry), or `resize_center_crop`: per image, resize the shorter side to round(side * 256 / 224)
keeping the aspect ratio (bilinear, antialiased; 256 at side 224) and take the centre side x side
crop (torchvision's Resize(256) + CenterCrop(224)), from the decoded file rather than from the
training-size image.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from datacull.data.loader import conform
from datacull.errors import DatacullError

AUGMENTATIONS = ("none", "crop", "flip", "crop_flip", "resized_crop", "resized_crop_flip")
PAD_MODES = ("zeros", "reflect")
EVAL_TRANSFORMS = ("none", "resize_center_crop")
RRC_SCALE = (0.08, 1.0)
RRC_RATIO = (3.0 / 4.0, 4.0 / 3.0)
# resize_center_crop: the shorter side before cropping is side * EVAL_RESIZE (256 for 224)
EVAL_RESIZE = 256.0 / 224.0


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


def resolve_pad_mode(train_cfg) -> str:
    """`train.crop_padding_mode`: zeros (default) or reflect."""
    mode = str(train_cfg.get("crop_padding_mode", "zeros") or "zeros")
    if mode not in PAD_MODES:
        raise DatacullError(f"train.crop_padding_mode must be one of {', '.join(PAD_MODES)}; got {mode!r}")
    return mode


def resolve_eval_transform(train_cfg) -> str:
    """`train.eval_transform`: none (default) or resize_center_crop."""
    name = str(train_cfg.get("eval_transform", "none") or "none")
    if name not in EVAL_TRANSFORMS:
        raise DatacullError(f"train.eval_transform must be one of {', '.join(EVAL_TRANSFORMS)}; got {name!r}")
    return name


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator, pad_mode: str = "zeros") -> torch.Tensor:
    """Per-image random crops of x's size from x padded by `padding` (zeros or reflect; x: N, C, H, W)."""
    if padding == 0:
        return x
    n, c, h, w = x.shape
    if pad_mode == "reflect":
        if padding >= min(h, w):
            raise DatacullError(f"train.crop_padding={padding} is too large for reflect padding of {h}x{w} images; "
                                f"use at most {min(h, w) - 1} or crop_padding_mode=zeros")
        padded = F.pad(x, (padding, padding, padding, padding), mode="reflect")
    else:
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


def resized_crop_boxes(n: int, height: int, width: int, generator: torch.Generator,
                       scale: tuple[float, float] = RRC_SCALE, ratio: tuple[float, float] = RRC_RATIO,
                       attempts: int = 10) -> torch.Tensor:
    """(n, 4) int64 boxes (top, left, h, w) of RandomResizedCrop on height x width images.

    torchvision's rule, vectorised over images: up to `attempts` draws of an area fraction
    U(scale) and a log-uniform aspect ratio in `ratio`; the first box that fits is taken, at a
    uniform position; if none fits, the centre crop whose aspect ratio is clamped to `ratio`.
    """
    area = float(height * width)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    uniform = lambda: torch.rand((n, attempts), generator=generator, dtype=torch.float64)  # noqa: E731
    target = area * (scale[0] + (scale[1] - scale[0]) * uniform())
    aspect = torch.exp(log_lo + (log_hi - log_lo) * uniform())
    w = torch.round(torch.sqrt(target * aspect)).long()
    h = torch.round(torch.sqrt(target / aspect)).long()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)
    w, h, found = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0], fits.any(dim=1)
    # fallback: the whole image, or its centre crop with the aspect ratio clamped to `ratio`
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        fw, fh = int(round(height * ratio[1])), height
    else:
        fw, fh = width, height
    w, h = torch.where(found, w, fw), torch.where(found, h, fh)
    u_top, u_left = torch.rand((2, n), generator=generator, dtype=torch.float64)
    top = torch.where(found, (u_top * (height - h + 1)).floor().long(), (height - fh) // 2)
    left = torch.where(found, (u_left * (width - w + 1)).floor().long(), (width - fw) // 2)
    return torch.stack([top, left, h, w], dim=1)


def _linear_taps(start: torch.Tensor, length: torch.Tensor, out: int, device) -> tuple[torch.Tensor, ...]:
    """Per-image source indices (i0, i1) and weight of i1 for resizing [start, start+length) to `out`
    samples: bilinear with half-pixel centres, clamped to the crop (F.interpolate, align_corners=False)."""
    start, length = start.to(device), length.to(device)
    scale = length.to(torch.float32) / out
    dst = torch.arange(out, device=device, dtype=torch.float32)
    src = ((dst[None, :] + 0.5) * scale[:, None] - 0.5).clamp(min=0.0)
    last = (length - 1)[:, None]
    i0 = torch.minimum(src.floor().long(), last)
    i1 = torch.minimum(i0 + 1, last)
    frac = src - i0.to(torch.float32)
    return start[:, None] + i0, start[:, None] + i1, frac


def resized_crop(x: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Crop each image of x (N, C, H, W) to its box (top, left, h, w) and resize it bilinearly to `size`
    (default: x's own H x W)."""
    n, c, height, width = x.shape
    out_h, out_w = size if size is not None else (height, width)
    boxes = boxes.to(x.device)
    r0, r1, fy = _linear_taps(boxes[:, 0], boxes[:, 2], out_h, x.device)
    c0, c1, fx = _linear_taps(boxes[:, 1], boxes[:, 3], out_w, x.device)
    rows = lambda idx: torch.gather(x, 2, idx[:, None, :, None].expand(n, c, out_h, width))  # noqa: E731
    fy = fy.to(x.dtype)[:, None, :, None]
    xr = rows(r0) * (1 - fy) + rows(r1) * fy
    cols = lambda idx: torch.gather(xr, 3, idx[:, None, None, :].expand(n, c, out_h, out_w))  # noqa: E731
    fx = fx.to(x.dtype)[:, None, None, :]
    return cols(c0) * (1 - fx) + cols(c1) * fx


def random_resized_crop(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """RandomResizedCrop(scale=(0.08, 1), ratio=(3/4, 4/3)) of each image, resized back to x's H x W."""
    n, _, height, width = x.shape
    return resized_crop(x, resized_crop_boxes(n, height, width, generator))


def augment_batch(x: torch.Tensor, name: str, padding: int, generator: torch.Generator,
                  pad_mode: str = "zeros") -> torch.Tensor:
    """Apply augmentation `name` (one of AUGMENTATIONS) to a batch; the generator lives on the CPU."""
    if name in ("crop", "crop_flip"):
        x = random_crop(x, padding, generator, pad_mode)
    if name in ("resized_crop", "resized_crop_flip"):
        x = random_resized_crop(x, generator)
    if name in ("flip", "crop_flip", "resized_crop_flip"):
        x = random_flip(x, generator)
    return x


def center_crop_size(height: int, width: int, side: int) -> tuple[int, int, int, int]:
    """(resized H, resized W, top, left) of resize_center_crop on a height x width image.

    The shorter side becomes round(side * 256 / 224), the longer one int(that * long / short)
    (torchvision's Resize(int)); the crop offsets are round((resized - side) / 2) (CenterCrop).
    """
    short = int(round(side * EVAL_RESIZE))
    if height <= width:
        new_h, new_w = short, int(short * width / height)
    else:
        new_h, new_w = int(short * height / width), short
    return new_h, new_w, int(round((new_h - side) / 2.0)), int(round((new_w - side) / 2.0))


def resize_center_crop(image: np.ndarray, side: int) -> np.ndarray:
    """uint8 (H, W, C) image -> (side, side, C): shorter side to round(side * 256/224) (bilinear,
    antialiased, aspect kept), then the centre side x side crop."""
    new_h, new_w, top, left = center_crop_size(image.shape[0], image.shape[1], side)
    pil = Image.fromarray(image[..., 0] if image.shape[2] == 1 else image)
    if (new_h, new_w) != image.shape[:2]:
        pil = pil.resize((new_w, new_h), Image.BILINEAR)
    out = np.array(pil.crop((left, top, left + side, top + side)))  # a writable copy
    return np.ascontiguousarray(out[..., None] if out.ndim == 2 else out)


class CenterCropView:
    """A source whose images are `resize_center_crop`ped to side x side with `channels` channels
    (what predict_logits reads under `train.eval_transform=resize_center_crop`)."""

    def __init__(self, source, side: int, channels: int):
        self.source, self.side, self.channels = source, int(side), int(channels)
        self.name, self.split = source.name, source.split
        self.labels, self.num_classes = source.labels, source.num_classes
        self.image_shape = (self.side, self.side, self.channels)

    @property
    def keys(self):
        """The wrapped source's example keys."""
        return self.source.keys

    def __len__(self) -> int:
        return len(self.source)

    def load(self, index: int) -> np.ndarray:
        """Example `index` decoded at its own size, converted to `channels`, resized and centre-cropped."""
        return resize_center_crop(conform(self.source.load(index), None, self.channels), self.side)
