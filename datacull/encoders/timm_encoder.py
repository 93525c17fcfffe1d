"""`timm`: pooled features of any timm model (`encoder.model_name`), e.g. a self-supervised one.

Weights, in order: `encoder.checkpoint` (a local file, loaded through timm's
`pretrained_cfg_overlay=dict(file=...)`, so timm's checkpoint filters apply); else, with
`encoder.pretrained: true`, the model's weights from the local Hugging Face cache or torch hub cache
(no network); else a download only if `encoder.allow_download: true`. When weights were asked for
and none are found the encoder raises a DatacullError saying how to fix it, and after loading it
checks that every randomly initialised weight tensor really changed: never a silent random init.
Input size and normalisation come from the model's pretrained config; images are resized (whole,
no crop) by the data loader and grayscale is replicated to 3 channels.
"""
from __future__ import annotations

import difflib
import hashlib
import os
from pathlib import Path
from urllib.parse import urlparse

import torch
import torch.nn.functional as F

from datacull.data.base import DataSource
from datacull.data.encoded import configured_size
from datacull.encoders.base import Encoder, register_encoder
from datacull.encoders.common import cache_lock
from datacull.errors import DatacullError
from datacull.store import atomic_path, fingerprint

_HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")


def _check_model_name(name: str) -> None:
    import timm

    if not name or not timm.is_model(name):
        close = difflib.get_close_matches(str(name), timm.list_models(), n=5)
        hint = f" (close: {', '.join(close)})" if close else ""
        raise DatacullError(f"unknown timm model {name!r}{hint}; set encoder.model_name to a name from "
                            "timm.list_models() (e.g. vit_small_patch16_224.dino)")


def cached_weights(pretrained_cfg: dict) -> Path | None:
    """The model's weight file if it is already in the local Hugging Face or torch hub cache."""
    hub_id = pretrained_cfg.get("hf_hub_id")
    if hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo, _, revision = hub_id.partition("@")
        names = [pretrained_cfg["hf_hub_filename"]] if pretrained_cfg.get("hf_hub_filename") else _HF_WEIGHT_FILES
        for filename in names:
            found = try_to_load_from_cache(repo, filename, revision=revision or None)
            if isinstance(found, str) and os.path.isfile(found):
                return Path(found)
    url = pretrained_cfg.get("url")
    if url:
        local = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)
        if local.is_file():
            return local
    return None


def _random_tensor_digests(model: torch.nn.Module) -> dict[str, str]:
    """Digests of the parameters whose values are not constant (randomly initialised ones).

    Constant-initialised tensors (norm scales of 1, biases of 0) cannot tell a loaded checkpoint
    from an init, so they are left out; a checkpoint that loads leaves no random tensor unchanged.
    """
    digests = {}
    for name, param in model.named_parameters():
        flat = param.detach().cpu().reshape(-1)
        if flat.numel() > 1 and not torch.all(flat == flat[0]):
            digests[name] = hashlib.sha1(flat.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()
    return digests


def strip_prefix_checkpoint(path: Path, prefix: str, cache_dir: Path) -> Path:
    """A copy of checkpoint `path` holding only its keys that start with `prefix`, prefix removed
    (e.g. `module.encoder_q.` for MoCo), cached in `cache_dir`; loaded with weights_only=True."""
    from timm.models import load_state_dict

    stat = path.stat()
    key = fingerprint(str(path.resolve()), stat.st_size, stat.st_mtime_ns, prefix)
    out = Path(cache_dir) / f"timm-checkpoint-{key}.pt"
    with cache_lock(cache_dir, out.stem):
        if not out.exists():
            try:
                state = load_state_dict(str(path))  # weights_only; picks state_dict/model; strips "module."
            except Exception as exc:  # noqa: BLE001 - unreadable or unsafe (non-tensor pickled objects) file
                raise DatacullError(f"cannot read checkpoint {path} ({type(exc).__name__}: {str(exc)[:200]}); "
                                    "give a state_dict saved with torch.save or safetensors") from None
            bare = prefix[len("module."):] if prefix.startswith("module.") else prefix
            state = {k[len(bare):]: v for k, v in state.items() if k.startswith(bare)}
            if not state:
                raise DatacullError(f"no key of checkpoint {path} starts with encoder.checkpoint_prefix={prefix!r}; "
                                    "check the prefix")
            with atomic_path(out, suffix=".pt") as tmp:
                torch.save(state, tmp)
    return out


@register_encoder("timm", "pooled features of any timm model (DINO, DINOv2, SEER, or a checkpoint file)")
class TimmEncoder(Encoder):
    """timm model with `num_classes=0` (pooled pre-logits features), in eval mode."""

    def __init__(self, encoder_cfg, seed: int):
        self.cfg = encoder_cfg
        self.seed = int(seed)
        self.model_name = str(encoder_cfg.get("model_name") or "")
        self.pretrained = bool(encoder_cfg.get("pretrained", True))
        checkpoint = encoder_cfg.get("checkpoint")
        self.checkpoint = Path(str(checkpoint)).expanduser() if checkpoint else None
        self.model: torch.nn.Module | None = None
        self._dim: int | None = None
        self.input_channels = 3

    @property
    def dim(self) -> int:
        if self._dim is None:
            raise RuntimeError("TimmEncoder.dim is known after prepare()")
        return self._dim

    def _create(self, pretrained: bool, weights: Path | None = None) -> torch.nn.Module:
        import timm

        kwargs = {"pretrained_cfg_overlay": {"file": str(weights)}} if weights is not None else {}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return timm.create_model(self.model_name, pretrained=pretrained, num_classes=0, **kwargs)

    def _weights_file(self, pretrained_cfg: dict, cache_dir: Path) -> Path | None:
        if self.checkpoint is not None:
            if not self.checkpoint.is_file():
                raise DatacullError(f"encoder.checkpoint={self.checkpoint} does not exist; give the path of a weight "
                                    "file (.pth/.pt/.bin/.safetensors)")
            prefix = self.cfg.get("checkpoint_prefix")
            return strip_prefix_checkpoint(self.checkpoint, str(prefix), cache_dir) if prefix else self.checkpoint
        found = cached_weights(pretrained_cfg)
        if found is None and not self.cfg.get("allow_download", False):
            where = pretrained_cfg.get("hf_hub_id") or pretrained_cfg.get("url") or "nowhere (timm lists no weights)"
            raise DatacullError(
                f"weights for timm model {self.model_name!r} are not in the local cache (looked for {where}) and "
                "encoder.allow_download is false; give encoder.checkpoint=/path/to/weights, or download them once "
                "(encoder.allow_download=true online, or `huggingface-cli download` into HF_HOME), or set "
                "encoder.pretrained=false for a random init"
            )
        return found

    def _load(self, cache_dir: Path) -> torch.nn.Module:
        _check_model_name(self.model_name)
        try:
            reference = self._create(pretrained=False)
        except (RuntimeError, ValueError, TypeError) as exc:  # e.g. an unknown pretrained tag
            raise DatacullError(f"cannot create timm model {self.model_name!r}: {str(exc)[:300]}; "
                                "check encoder.model_name against timm.list_models(pretrained=True)") from None
        if not self.pretrained and self.checkpoint is None:
            return reference
        pretrained_cfg = dict(reference.pretrained_cfg or {})
        initial = _random_tensor_digests(reference)
        del reference
        weights = self._weights_file(pretrained_cfg, cache_dir)
        source = str(weights) if weights is not None else "a download"
        try:
            model = self._create(pretrained=True, weights=weights)
        except DatacullError:
            raise
        except Exception as exc:  # timm/torch raise many types on a mismatched or unreadable checkpoint
            message = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            raise DatacullError(f"cannot load weights for timm model {self.model_name!r} from {source}: {message}; "
                                "check that encoder.checkpoint matches encoder.model_name") from None
        unchanged = [name for name, digest in _random_tensor_digests(model).items() if initial.get(name) == digest]
        if unchanged:
            raise DatacullError(
                f"weights from {source} left {len(unchanged)} of {len(initial)} randomly initialised tensors of "
                f"{self.model_name!r} at their random init (first: {', '.join(unchanged[:3])}); "
                "the checkpoint does not match the model "
                "(for MoCo-style checkpoints set encoder.checkpoint_prefix, e.g. 'module.encoder_q.')"
            )
        return model

    def prepare(self, source: DataSource, cache_dir: Path, device: torch.device) -> None:
        """Create the model with its weights (see module doc) and read its input size and normalisation."""
        import timm

        model = self._load(Path(cache_dir)).eval()
        data_cfg = timm.data.resolve_model_data_config(model)
        channels, height, width = data_cfg["input_size"]
        self.input_size = configured_size(self.cfg.get("image_size"), "encoder.image_size") or (height, width)
        self.input_channels = int(channels)
        shape = (1, self.input_channels, 1, 1)
        self.mean = torch.tensor(data_cfg["mean"], dtype=torch.float32).view(shape).to(device)
        self.std = torch.tensor(data_cfg["std"], dtype=torch.float32).view(shape).to(device)
        self.model = model.to(device)
        self.amp = bool(self.cfg.get("amp", True)) and device.type == "cuda"
        try:
            probe = self.encode(torch.zeros(1, self.input_channels, *self.input_size, dtype=torch.uint8, device=device))
        except Exception as exc:  # noqa: BLE001 - e.g. a fixed-size ViT given another encoder.image_size
            height, width = self.input_size
            raise DatacullError(f"timm model {self.model_name!r} cannot embed {height}x{width} "
                                f"images ({type(exc).__name__}: {str(exc)[:200]}); unset encoder.image_size") from None
        self._dim = int(probe.shape[1])

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(N, dim) float32 pooled features of a uint8 (N, C, H, W) batch."""
        if self.model is None:
            raise RuntimeError("call prepare() before encode()")
        x = images.to(torch.float32) / 255.0
        if x.shape[1] != self.input_channels:
            x = x.expand(-1, self.input_channels, -1, -1) if x.shape[1] == 1 else x.mean(dim=1, keepdim=True)
        if tuple(x.shape[2:]) != tuple(self.input_size):
            x = F.interpolate(x, size=tuple(self.input_size), mode="bilinear", align_corners=False, antialias=True)
        x = (x - self.mean) / self.std
        with torch.inference_mode(), torch.autocast(device_type=x.device.type, dtype=torch.bfloat16,
                                                     enabled=self.amp):
            return self.model(x).float()
