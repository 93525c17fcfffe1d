"""The one trainer: SGD (momentum / Nesterov, weight decay), step or cosine schedule, per-example recorder.

    result = train_model(cfg, source, train_indices, seed, run_dir)       # trains, or loads a finished run
    logits = predict_logits(result.model, source, indices, cfg)           # eval mode, no augmentation
    result = cached_run(ctx, seed)                                        # shared by el2n/forgetting/aum/...

A run directory holds
    run.json                 fingerprint, epochs, history; `finished` once the last epoch is done
    checkpoint.pt            model + optimizer + epoch + RNG states (resume point; removed when finished)
    weights-epoch{e:04d}.pt  model weights after epoch e (0, the last `train.keep_epoch_weights` epochs
                             and every epoch in `keep_epochs`, recorded in run.json)
    record/{field}.npy       per-example statistics (see recorder.py) when `record=True`
all written atomically; tensors are loaded with torch.load(weights_only=True). A killed run resumes
from its last checkpoint. Each epoch's data order, augmentation and global torch RNG are derived
from (seed, epoch), so a resumed run gives the same result as an uninterrupted one. Under `torchrun`
the loop is data-parallel (DDP, global batch = train.batch_size; see distributed.py).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import pickle
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn
from tqdm.auto import tqdm

from datacull import layout
from datacull.data.base import DataSource, check_labels
from datacull.data.loader import ExampleDataset
from datacull.encoders.base import resolve_device
from datacull.errors import DatacullError
from datacull.store import atomic_path, ensure_dir, fingerprint, to_plain, without_defaults, write_json_atomic
from datacull.training import distributed
from datacull.training.augment import (
    CenterCropView, augment_batch, resolve_augment, resolve_eval_transform, resolve_pad_mode, resolve_padding,
)
from datacull.training.data import channel_stats, input_geometry, iter_images, load_images
from datacull.training.models import ClassifierNet, build_model
from datacull.training.recorder import Recorder
from datacull.training.subset import check_indices

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from datacull.metrics.context import ScoreContext

# train-config keys that change speed or bookkeeping, not the trained model
_TRAIN_KEYS_IGNORED = {"num_workers", "checkpoint_every", "keep_epoch_weights", "eval_batch_size", "max_in_memory_gb",
                       "budget", "min_steps", "name"}
RUN_FILE, CHECKPOINT_FILE, RECORD_DIR = "run.json", "checkpoint.pt", "record"
# train-config keys left out of the identity while at these values (keys added later with a neutral
# default leave the fingerprints, and so the cached runs, of existing recipes unchanged)
_TRAIN_NEUTRAL = {"crop_padding_mode": "zeros", "eval_transform": "none"}


@dataclass
class TrainResult:
    """A finished training run: the model (eval mode, on the device) and what was recorded."""

    run_dir: Path
    model: nn.Module
    train_indices: np.ndarray
    epochs: int
    history: list[dict] = field(default_factory=list)
    recorder: Recorder | None = None


def weights_path(run_dir: Path, epoch: int) -> Path:
    """File of the model weights after `epoch` (0 = at initialisation)."""
    return Path(run_dir) / f"weights-epoch{epoch:04d}.pt"


def indices_hash(indices: np.ndarray) -> str:
    """Short sha256 of the index array (identifies a training subset)."""
    return hashlib.sha256(np.ascontiguousarray(indices, dtype=np.int64).tobytes()).hexdigest()[:16]


def train_identity(train_cfg: DictConfig) -> dict:
    """The part of the train config that determines the trained model."""
    return without_defaults({k: v for k, v in to_plain(train_cfg).items() if k not in _TRAIN_KEYS_IGNORED},
                            _TRAIN_NEUTRAL)


def run_fingerprint(cfg: DictConfig, source: DataSource, indices: np.ndarray, seed: int, epochs: int,
                    world: int = 1) -> str:
    """Fingerprint of everything a run depends on: model, training recipe, data, subset, seed, epochs
    (and the number of data-parallel processes when more than one, see distributed.py)."""
    return fingerprint(to_plain(cfg.model), train_identity(cfg.train), layout.data_identity(cfg.data),
                       source.name, source.split, len(source), indices_hash(indices),
                       indices_hash(source.labels[indices]), int(seed), int(epochs),
                       *([{"world_size": int(world)}] if world > 1 else []))


def _derived_seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] % (2**31 - 1))


def _flag(value, device: torch.device) -> bool:
    return device.type == "cuda" if value in ("auto", None) else bool(value)


def lr_at(train_cfg: DictConfig, epochs: int, step: float) -> float:
    """Learning rate at fractional epoch `step` (linear warmup, then cosine to 0 or x gamma at milestones)."""
    base, warmup = float(train_cfg.lr), float(train_cfg.get("warmup_epochs", 0) or 0)
    if warmup > 0 and step < warmup:
        return base * (step + 1e-3) / warmup
    schedule = str(train_cfg.get("schedule", "cosine"))
    if schedule == "cosine":
        span = max(epochs - warmup, 1e-9)
        return 0.5 * base * (1.0 + math.cos(math.pi * min(max(step - warmup, 0.0) / span, 1.0)))
    if schedule == "step":
        passed = sum(1 for m in (train_cfg.get("milestones") or []) if step >= float(m))
        return base * float(train_cfg.get("gamma", 0.1)) ** passed
    if schedule == "constant":
        return base
    raise DatacullError(f"train.schedule must be cosine, step or constant, not {schedule!r}")


def _check_train_cfg(train_cfg: DictConfig, epochs: int) -> None:
    if epochs < 0:
        raise DatacullError(f"train.epochs must be >= 0, got {epochs}")
    if int(train_cfg.batch_size) < 1:
        raise DatacullError(f"train.batch_size must be >= 1, got {train_cfg.batch_size}")
    if bool(train_cfg.get("nesterov", False)) and float(train_cfg.get("momentum", 0.0)) <= 0:
        raise DatacullError("train.nesterov=true needs train.momentum > 0 (e.g. 0.9)")
    lr_at(train_cfg, max(epochs, 1), 0.0)


class _Batches:
    """Training batches (uint8 images, labels, positions) in a given order, in memory or streamed."""

    def __init__(self, cfg: DictConfig, source: DataSource, indices: np.ndarray, size, channels: int):
        self.source, self.indices, self.size, self.channels = source, indices, size, channels
        self.labels = torch.from_numpy(np.asarray(source.labels[indices], dtype=np.int64))
        self.num_workers = int(cfg.train.get("num_workers", 0) or 0)
        self.on_error = str(cfg.data.get("on_error", "skip"))
        limit = float(cfg.train.get("max_in_memory_gb", 4)) * 2**30
        self.images: torch.Tensor | None = None
        if len(indices) * channels * size[0] * size[1] <= limit:
            self.images, bad = load_images(source, indices, size, channels, self.num_workers, self.on_error)
            if bad:
                log.info(f"train: {bad} of {len(indices)} training images could not be decoded and are blank")

    def stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel mean/std of the training images (from up to 10k of them)."""
        if self.images is not None:
            return channel_stats(self.images)
        pick = self.indices[np.linspace(0, len(self.indices) - 1, min(10_000, len(self.indices))).astype(np.int64)]
        sample, _ = load_images(self.source, pick, self.size, self.channels, self.num_workers, self.on_error)
        return channel_stats(sample)

    def __call__(self, order: np.ndarray, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, np.ndarray]]:
        batches = [order[i: i + batch_size] for i in range(0, len(order), batch_size)]
        if self.images is not None:
            for positions in batches:
                pos = torch.from_numpy(positions)
                yield self.images[pos], self.labels[pos], positions
            return
        dataset = ExampleDataset(self.source, self.indices, size=self.size, channels=self.channels,
                                 on_error=self.on_error)
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=[b.tolist() for b in batches],
                                             num_workers=self.num_workers, pin_memory=torch.cuda.is_available())
        for positions, (images, labels, _, _) in zip(batches, loader):
            yield images, labels, positions


def to_input(images: torch.Tensor, device: torch.device, channels_last: bool = False) -> torch.Tensor:
    """uint8 (N, C, H, W) images -> float in [0, 1] on `device` (the input every ClassifierNet takes)."""
    x = images.to(device, non_blocking=True).float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _autocast(device: torch.device, amp: bool):
    if amp and device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast(device.type, enabled=False)


def _new_model(cfg: DictConfig, source: DataSource, seed: int) -> ClassifierNet:
    channels, size = input_geometry(cfg.model, source)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(cfg.model, source.num_classes, channels, size[0])


def _load_weights(model: nn.Module, path: Path) -> None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except (OSError, RuntimeError, KeyError, EOFError, pickle.UnpicklingError) as exc:
        raise DatacullError(f"cannot load model weights {path} ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
                            f"delete {path.parent} and train again") from None


def _save_torch(obj, path: Path) -> None:
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(obj, tmp)


def _read_run(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / RUN_FILE).read_text())
    except (OSError, ValueError):
        return {}


def _clear_run(run_dir: Path) -> None:
    for path in [run_dir / RUN_FILE, run_dir / CHECKPOINT_FILE, *run_dir.glob("weights-epoch*.pt")]:
        path.unlink(missing_ok=True)
    shutil.rmtree(run_dir / RECORD_DIR, ignore_errors=True)


def load_finished(cfg: DictConfig, source: DataSource, run_dir: Path, info: dict,
                  device: torch.device) -> ClassifierNet:
    """The model of a finished run (eval mode, on `device`)."""
    model = _new_model(cfg, source, int(info["seed"]))
    _load_weights(model, weights_path(run_dir, int(info["epochs"])))
    return model.to(device).eval()


def load_epoch_model(cfg: DictConfig, source: DataSource, run_dir: Path, epoch: int,
                     device: torch.device | None = None) -> ClassifierNet:
    """The model of run `run_dir` after `epoch` (0 = initialisation), eval mode, on `device` (default cfg.device).

    Only epoch 0, the last `train.keep_epoch_weights` epochs and the run's `keep_epochs` are kept;
    asking for another is an error.
    """
    run_dir = Path(run_dir)
    info = _read_run(run_dir)
    path = weights_path(run_dir, epoch)
    if not info or not path.exists():
        kept = sorted(int(p.stem.split("epoch")[1]) for p in run_dir.glob("weights-epoch*.pt"))
        raise DatacullError(
            f"run {run_dir} has no weights for epoch {epoch} (kept epochs: {kept}); pass keep_epochs "
            f"to train_model/cached_run (the run is then trained again) or raise train.keep_epoch_weights"
        )
    model = _new_model(cfg, source, int(info["seed"]))
    _load_weights(model, path)
    return model.to(device or resolve_device(str(cfg.get("device", "auto")))).eval()


def train_model(cfg: DictConfig, source: DataSource, train_indices: np.ndarray, seed: int, run_dir: Path,
                record: bool = True, epochs: int | None = None,
                on_epoch_end: Callable[[int, dict], None] | None = None,
                keep_epochs: Iterable[int] = ()) -> TrainResult:
    """Train `cfg.model` on `source[train_indices]` with `cfg.train` (or load the finished run in `run_dir`).

    `epochs` overrides `cfg.train.epochs` (the schedule spans the given number). With `record` the
    per-example statistics of every epoch are kept (see recorder.py). `on_epoch_end(epoch, stats)`
    is called after each epoch's checkpoint is written (1-based epoch). The weights after each epoch
    in `keep_epochs` are kept besides epoch 0 and the last `train.keep_epoch_weights`; a finished (or
    resumable) run that lacks one of them is trained again from scratch (each epoch is seeded from
    (seed, epoch), so on CPU the new run is the same run, now with those weights). Under torchrun
    (WORLD_SIZE > 1) the training is data-parallel (distributed.py) and rank 0 alone writes the run
    folder and calls `on_epoch_end`.
    """
    run_dir = ensure_dir(Path(run_dir))
    indices = check_indices(train_indices, source)
    check_labels(source.labels[indices], source.num_classes, "training")
    epochs = int(cfg.train.epochs if epochs is None else epochs)
    _check_train_cfg(cfg.train, epochs)
    device = resolve_device(str(cfg.get("device", "auto")))
    ddp = distributed.setup(device)  # torchrun: data-parallel over the ranks (only rank 0 writes)
    device = distributed.device_for(device, ddp)
    rank_batch = distributed.check_batch(int(cfg.train.batch_size), ddp.world)
    fp = run_fingerprint(cfg, source, indices, seed, epochs, ddp.world)
    keep_epochs = sorted({int(e) for e in keep_epochs if 0 < int(e) <= epochs})

    info = _read_run(run_dir)
    saved = [int(p.stem.split("epoch")[1]) for p in run_dir.glob("weights-epoch*.pt")]
    missing = [e for e in keep_epochs if e <= max(saved, default=0) and e not in saved]
    distributed.barrier()  # every rank has read the run folder before rank 0 changes it
    if info.get("fingerprint") == fp and missing:
        log.info(f"train: {run_dir} did not keep the weights of epoch(s) {missing}; training it again to keep them")
        if ddp.main:
            _clear_run(run_dir)
        info = {}
        distributed.barrier()
    if info.get("fingerprint") == fp and info.get("finished") and (info.get("record") or not record):
        model = load_finished(cfg, source, run_dir, info, device)
        if ddp.main:  # killed after its final run.json, before the cleanup at the end of this function
            (run_dir / CHECKPOINT_FILE).unlink(missing_ok=True)
        recorder = Recorder.open(run_dir / RECORD_DIR) if record else None
        return TrainResult(run_dir, model, indices, epochs, info.get("history", []), recorder)

    channels, size = input_geometry(cfg.model, source)
    model = _new_model(cfg, source, seed)
    batches = _Batches(cfg, source, indices, size, channels)
    amp = _flag(cfg.train.get("amp", "auto"), device)
    channels_last = _flag(cfg.train.get("channels_last", "auto"), device)
    optimizer = torch.optim.SGD(model.parameters(), lr=float(cfg.train.lr),
                                momentum=float(cfg.train.get("momentum", 0.0)),
                                nesterov=bool(cfg.train.get("nesterov", False)),
                                weight_decay=float(cfg.train.get("weight_decay", 0.0)))
    start, history, recorder, rng_states = _resume(run_dir, fp, model, optimizer, record)
    distributed.barrier()  # every rank has read the checkpoint before rank 0 starts over
    recorder = recorder if ddp.main else None
    if start == 0:
        model.set_normalization(*batches.stats())
        if ddp.main:
            _clear_run(run_dir)
            recorder = Recorder.create(run_dir / RECORD_DIR, epochs, len(indices)) if record else None
            write_json_atomic(run_dir / RUN_FILE, _run_info(fp, seed, epochs, record, indices, history, False,
                                                            keep_epochs))
            _save_torch(model.state_dict(), weights_path(run_dir, 0))
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    _optimizer_to(optimizer, device)
    net = model
    if ddp.active:  # per-rank BatchNorm, as the torchvision reference by default (see distributed.py)
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    augment = resolve_augment(cfg.train, cfg.data, channels)
    padding, pad_mode = resolve_padding(cfg.train, size[0]), resolve_pad_mode(cfg.train)
    batch_size = int(cfg.train.batch_size)
    steps = math.ceil(len(indices) / batch_size)
    every = max(1, int(cfg.train.get("checkpoint_every", 1) or 1))
    label_smoothing = float(cfg.train.get("label_smoothing", 0.0) or 0.0)
    fork_devices = [device.index or 0] if device.type == "cuda" else []
    bar = tqdm(range(start, epochs), desc=f"train seed {seed}", unit="epoch", initial=start, total=epochs,
               disable=epochs == start or not ddp.main)
    rank_seed = (ddp.rank,) if ddp.rank else ()  # each rank its own augmentation / dropout draws
    with torch.random.fork_rng(devices=fork_devices):  # the caller's global RNG state is left alone
        if "torch_rng" in rng_states:
            torch.set_rng_state(rng_states["torch_rng"])
        if "cuda_rng" in rng_states and device.type == "cuda":
            torch.cuda.set_rng_state_all(rng_states["cuda_rng"])
        for epoch in bar:
            began = time.perf_counter()
            torch.manual_seed(_derived_seed(seed, epoch, 1, *rank_seed))  # dropout etc. of timm models
            order = np.random.default_rng([seed, epoch]).permutation(len(indices))
            order = distributed.rank_order(order, ddp)  # this rank's strided share (all of it in one process)
            generator = torch.Generator().manual_seed(_derived_seed(seed, epoch, 2, *rank_seed))
            model.train()
            loss_sum = torch.zeros((), device=device)
            correct_sum = torch.zeros((), device=device)
            inner = tqdm(batches(order, rank_batch), total=steps, desc=f"epoch {epoch + 1}/{epochs}",
                         unit="batch", leave=False, disable=steps < 100 or not ddp.main)
            for step, (images, labels, positions) in enumerate(inner):
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(cfg.train, epochs, epoch + step / steps)
                x = augment_batch(to_input(images, device), augment, padding, generator, pad_mode)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                y = labels.to(device, non_blocking=True)
                with _autocast(device, amp):
                    logits = net(x)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += loss.detach() * len(y)
                correct_sum += (logits.detach().argmax(1) == y).sum()
                if record:  # under DDP rank 0 records every rank's examples
                    gathered = distributed.gather_batch(positions, logits, y)
                    if recorder is not None:
                        recorder.record(epoch, *gathered)
            seen = len(order) * ddp.world  # len(indices), padded to a multiple of the world size under DDP
            distributed.all_sum(loss_sum)
            distributed.all_sum(correct_sum)
            stats = {"epoch": epoch + 1, "loss": float(loss_sum) / seen,
                     "train_acc": float(correct_sum) / seen, "lr": optimizer.param_groups[0]["lr"],
                     "seconds": time.perf_counter() - began}
            history.append(stats)
            bar.set_postfix(loss=f"{stats['loss']:.3f}", acc=f"{stats['train_acc']:.3f}")
            if ddp.main:
                _end_epoch(run_dir, cfg, fp, epochs, epoch + 1, model, optimizer, recorder, history,
                           save_checkpoint=(epoch + 1) % every == 0, keep_epochs=keep_epochs)
                if on_epoch_end is not None:
                    on_epoch_end(epoch + 1, stats)
    model.eval()
    if ddp.main:
        write_json_atomic(run_dir / RUN_FILE, _run_info(fp, seed, epochs, record, indices, history, True,
                                                        keep_epochs))
        (run_dir / CHECKPOINT_FILE).unlink(missing_ok=True)
    distributed.barrier()  # the finished run is on disk for every rank
    if record:
        recorder = Recorder.open(run_dir / RECORD_DIR)
    return TrainResult(run_dir, model, indices, epochs, history, recorder)


def _run_info(fp: str, seed: int, epochs: int, record: bool, indices: np.ndarray, history: list, finished: bool,
              keep_epochs: list[int] = ()) -> dict:
    return {"fingerprint": fp, "seed": int(seed), "epochs": int(epochs), "record": bool(record),
            "n_train": int(len(indices)), "history": history, "finished": finished,
            "keep_epochs": [int(e) for e in keep_epochs]}


def _end_epoch(run_dir: Path, cfg: DictConfig, fp: str, epochs: int, done: int, model: nn.Module,
               optimizer: torch.optim.Optimizer, recorder: Recorder | None, history: list,
               save_checkpoint: bool, keep_epochs: Iterable[int] = ()) -> None:
    """Flush the record, save this epoch's weights (dropping old ones not in `keep_epochs`) and, if due,
    the resume checkpoint."""
    if recorder is not None:
        recorder.flush()
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    _save_torch(state, weights_path(run_dir, done))
    keep = max(1, int(cfg.train.get("keep_epoch_weights", 3) or 1))
    for old in set(range(1, done - keep + 1)) - set(keep_epochs):
        weights_path(run_dir, old).unlink(missing_ok=True)
    if save_checkpoint or done == epochs:
        checkpoint = {"fingerprint": fp, "epoch": done, "model": state, "optimizer": optimizer.state_dict(),
                      "torch_rng": torch.get_rng_state(), "history": history}
        if torch.cuda.is_available():
            checkpoint["cuda_rng"] = torch.cuda.get_rng_state_all()
        _save_torch(checkpoint, run_dir / CHECKPOINT_FILE)


def _resume(run_dir: Path, fp: str, model: nn.Module, optimizer: torch.optim.Optimizer,
            record: bool) -> tuple[int, list, Recorder | None, dict]:
    """(first epoch to train, history, recorder, RNG states) from the run's checkpoint, or a fresh start."""
    path = run_dir / CHECKPOINT_FILE
    if not path.exists():
        return 0, [], None, {}
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:  # damaged, or not weights-only
        log.warning(f"train: ignoring unreadable checkpoint {path} ({type(exc).__name__}); starting over")
        return 0, [], None, {}
    info = _read_run(run_dir)
    if checkpoint.get("fingerprint") != fp or info.get("record") != record:
        return 0, [], None, {}
    recorder = Recorder.open(run_dir / RECORD_DIR, writable=True) if record else None
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    log.info(f"train: resuming {run_dir} after epoch {checkpoint['epoch']}")
    rng_states = {k: checkpoint[k] for k in ("torch_rng", "cuda_rng") if k in checkpoint}
    return int(checkpoint["epoch"]), list(checkpoint["history"]), recorder, rng_states


def _optimizer_to(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    for state in optimizer.state.values():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                state[key] = value.to(device)


@torch.no_grad()
def predict_logits(model: nn.Module, source: DataSource, indices: np.ndarray, cfg: DictConfig,
                   batch_size: int | None = None) -> np.ndarray:
    """(len(indices), C) float32 logits of `model` in eval mode, without augmentation.

    Images come in the training geometry, or resized and centre-cropped per image from the decoded
    file under `train.eval_transform=resize_center_crop` (see augment.py).
    """
    indices = np.asarray(indices, dtype=np.int64)
    param = next(model.parameters())
    device = param.device
    channels, side = int(model.in_channels), int(model.image_size)
    shape = source.image_shape
    # the training geometry: the data's own (H, W) when its height is the model's side, else side x side
    size = (int(shape[0]), int(shape[1])) if shape is not None and shape[0] == side else (side, side)
    if resolve_eval_transform(cfg.train) == "resize_center_crop":
        source, size = CenterCropView(source, side, channels), (side, side)
    batch_size = int(batch_size or cfg.train.get("eval_batch_size") or 2 * int(cfg.train.batch_size))
    amp = _flag(cfg.train.get("amp", "auto"), device)
    channels_last = _flag(cfg.train.get("channels_last", "auto"), device)
    was_training = model.training
    model.eval()
    out = np.empty((len(indices), int(model.classifier.out_features)), dtype=np.float32)
    start = 0
    for images, _ in iter_images(source, indices, size, channels, batch_size,
                                 int(cfg.train.get("num_workers", 0) or 0), str(cfg.data.get("on_error", "skip")),
                                 desc="predict" if len(indices) > 50_000 else None):
        with _autocast(device, amp):
            logits = model(to_input(images, device, channels_last))
        out[start: start + len(images)] = logits.float().cpu().numpy()
        start += len(images)
    model.train(was_training)
    return out


def run_seeds(cfg: DictConfig, count: int) -> list[int]:
    """Seeds of the `count` shared training runs (the same for every metric, so runs are reused)."""
    return [1000 * int(cfg.seed) + k for k in range(int(count))]


def cached_run(ctx: "ScoreContext", seed: int, train_indices: np.ndarray | None = None, tag: str = "full",
               record: bool = True, keep_epochs: Iterable[int] = ()) -> TrainResult:
    """The run of `ctx.cfg.model` / `ctx.cfg.train` with `seed` on `train_indices` (default ctx.indices).

    Lives in `{runs_dir}/{model.name}-{fingerprint}/{tag}-seed{seed}`, so every metric asking for the
    same seeds (EL2N, forgetting, AUM, ensembles) shares the same runs; trains only when missing.
    `keep_epochs`: epochs whose weights the run keeps (see train_model).
    """
    cfg = ctx.cfg
    indices = ctx.indices if train_indices is None else np.asarray(train_indices, dtype=np.int64)
    fp = fingerprint(to_plain(cfg.model), train_identity(cfg.train), layout.data_identity(cfg.data),
                     ctx.source.name, ctx.source.split, len(ctx.source), indices_hash(indices),
                     indices_hash(ctx.source.labels[indices]))
    run_dir = ctx.runs_dir / f"{cfg.model.name}-{fp}" / f"{tag}-seed{seed}"
    return train_model(cfg, ctx.source, indices, seed, run_dir, record=record, keep_epochs=keep_epochs)
