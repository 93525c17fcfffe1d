"""Classifier networks for the training-dynamics metrics and scaling runs, registered by name.

Every model is a `ClassifierNet`: `forward(x) == classifier(penultimate(x))` with `penultimate(x)`
the pooled (N, d) features and `classifier` an `nn.Linear`, so per-example statistics of the last
layer (GraNd's closed form, embeddings) work for all of them. Inputs are float images in [0, 1]
(N, C, H, W); the per-channel normalisation is part of the model (buffers `input_mean`,
`input_std`, set by the trainer from the training data), so a saved state_dict is self-contained.

- resnet8 / resnet20: the CIFAR ResNets of He et al. 2016 (sec. 4.2): a 3x3 stem, 3 stages of
  n basic blocks (depth 6n + 2) with widths w, 2w, 4w, global average pooling.
- resnet18_cifar: ResNet-18 with a 3x3 stride-1 stem and no max-pool, the CIFAR-10 model of
  Sorscher et al. 2022 and Paul et al. 2021.
- resnet50: torchvision's ResNet-50 (the ImageNet model of Sorscher et al. 2022).
- timm: any timm architecture by name (`model.timm_name`), randomly initialised or from a local file.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from datacull.errors import DatacullError
from datacull.registry import Registry
from datacull.store import to_plain

MODELS: Registry = Registry("model", "model.name")
register_model = MODELS.register


class ClassifierNet(nn.Module):
    """A feature extractor (`features`: images -> (N, d)) followed by a linear `classifier`."""

    def __init__(self, features: nn.Module, feature_dim: int, num_classes: int, in_channels: int,
                 image_size: int):
        super().__init__()
        self.features = features
        self.classifier = nn.Linear(feature_dim, num_classes)
        self.in_channels, self.image_size, self.num_classes = in_channels, image_size, num_classes
        self.register_buffer("input_mean", torch.full((1, in_channels, 1, 1), 0.5))
        self.register_buffer("input_std", torch.full((1, in_channels, 1, 1), 0.25))

    def set_normalization(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Per-channel mean and std of the training images (values in [0, 1])."""
        self.input_mean.copy_(torch.as_tensor(mean, dtype=torch.float32).reshape(self.input_mean.shape))
        self.input_std.copy_(torch.as_tensor(std, dtype=torch.float32).reshape(self.input_std.shape).clamp_min(1e-3))

    def penultimate(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features (N, d) of float images in [0, 1]."""
        return self.features((x - self.input_mean) / self.input_std).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes)."""
        return self.classifier(self.penultimate(x))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 conv projection) shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def resnet_features(in_channels: int, widths: list[int], blocks: list[int]) -> tuple[nn.Module, int]:
    """3x3 stride-1 stem, then stages of basic blocks (stride 2 from the second), then global pooling."""
    layers: list[nn.Module] = [nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]),
                               nn.ReLU(inplace=True)]
    in_planes = widths[0]
    for stage, (planes, count) in enumerate(zip(widths, blocks)):
        for b in range(count):
            layers.append(BasicBlock(in_planes, planes, 2 if (stage > 0 and b == 0) else 1))
            in_planes = planes
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    features = nn.Sequential(*layers)
    _init_resnet(features)
    return features, in_planes


def _init_resnet(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _width(model_cfg: DictConfig, default: int) -> int:
    width = int(model_cfg.get("width") or default)
    if width < 1:
        raise DatacullError(f"model.width must be a positive integer, got {width}")
    return width


@register_model("resnet8", "CIFAR ResNet-8 (He et al. 2016), widths w,2w,4w; CPU-friendly")
def resnet8(model_cfg: DictConfig, num_classes: int, in_channels: int, image_size: int) -> ClassifierNet:
    w = _width(model_cfg, 16)
    features, dim = resnet_features(in_channels, [w, 2 * w, 4 * w], [1, 1, 1])
    return ClassifierNet(features, dim, num_classes, in_channels, image_size)


@register_model("resnet20", "CIFAR ResNet-20 (He et al. 2016), widths w,2w,4w")
def resnet20(model_cfg: DictConfig, num_classes: int, in_channels: int, image_size: int) -> ClassifierNet:
    w = _width(model_cfg, 16)
    features, dim = resnet_features(in_channels, [w, 2 * w, 4 * w], [3, 3, 3])
    return ClassifierNet(features, dim, num_classes, in_channels, image_size)


@register_model("resnet18_cifar", "ResNet-18 with 3x3 stem, no max-pool (the paper's CIFAR-10 model)")
def resnet18_cifar(model_cfg: DictConfig, num_classes: int, in_channels: int, image_size: int) -> ClassifierNet:
    w = _width(model_cfg, 64)
    features, dim = resnet_features(in_channels, [w, 2 * w, 4 * w, 8 * w], [2, 2, 2, 2])
    return ClassifierNet(features, dim, num_classes, in_channels, image_size)


@register_model("resnet50", "torchvision ResNet-50 (the paper's ImageNet model)")
def resnet50(model_cfg: DictConfig, num_classes: int, in_channels: int, image_size: int) -> ClassifierNet:
    import torchvision

    net = torchvision.models.resnet50(weights=None)
    small = model_cfg.get("small_input_stem", "auto")
    small = image_size <= 64 if small == "auto" else bool(small)
    if small:
        net.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        net.maxpool = nn.Identity()
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    elif in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    dim = net.fc.in_features
    net.fc = nn.Identity()
    return ClassifierNet(net, dim, num_classes, in_channels, image_size)


@register_model("timm", "any timm model by name (model.timm_name), random init or a local weights file")
def timm_model(model_cfg: DictConfig, num_classes: int, in_channels: int, image_size: int) -> ClassifierNet:
    import timm

    name = model_cfg.get("timm_name")
    if not name:
        raise DatacullError("model=timm needs model.timm_name, e.g. model.timm_name=resnet18 (see timm.list_models())")
    if not timm.is_model(name):
        raise DatacullError(f"timm has no model {name!r}; pick one of timm.list_models() for model.timm_name")
    kwargs = dict(to_plain(model_cfg.get("kwargs")) or {})
    file = model_cfg.get("pretrained_file")
    if file:
        kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=str(file)))
    create: Callable[..., nn.Module] = lambda **extra: timm.create_model(  # noqa: E731
        name, num_classes=0, in_chans=in_channels, **kwargs, **extra)
    try:
        try:
            backbone = create(img_size=image_size)  # ViT-style models fix their input size at creation
        except TypeError:
            backbone = create()
    except (FileNotFoundError, RuntimeError, ValueError) as exc:
        raise DatacullError(f"cannot create timm model {name!r} (model.pretrained_file={file}): {exc}") from None
    return ClassifierNet(backbone, int(backbone.num_features), num_classes, in_channels, image_size)


def build_model(model_cfg: DictConfig, num_classes: int, in_channels: int, image_size: int) -> ClassifierNet:
    """The model named by `model_cfg.name` for `num_classes` classes and (in_channels, image_size) inputs."""
    if num_classes < 2:
        raise DatacullError(f"a classifier needs at least 2 classes, the data has {num_classes}")
    if in_channels not in (1, 3) and model_cfg.name != "timm":
        raise DatacullError(f"model.in_channels must be 1 or 3, got {in_channels}")
    return MODELS.get(str(model_cfg.name)).obj(model_cfg, int(num_classes), int(in_channels), int(image_size))
