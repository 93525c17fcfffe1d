"""The training runs that the training-dynamics metrics read.

Shared runs: EL2N, forgetting, AUM, GraNd (epoch > 0) and in-sample ensemble uncertainty ask for
runs with seeds `run_seeds(cfg, runs)` on all scored examples, through `cached_run`, so asking for
several of them trains each run once. These runs keep the weights after every epoch that the
configured metrics ask for (`shared_keep_epochs`: `metric.el2n.epoch` with `source: checkpoint`,
`metric.grand.epoch`, `metric.grand_last_layer.epoch`, the last `metric.ensemble_uncertainty.
checkpoints` epochs with `pool: in_sample`), besides epoch 0 and the last `train.keep_epoch_weights`;
a cached run that lacks one of them (the setting changed after it was trained) is trained again.

Out-of-fold runs: `kfold_runs` trains one model per fold of a stratified k-fold split, each on the
other folds, so every example can be scored by models that never trained on it (DDD, out-of-fold
ensemble uncertainty).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
from omegaconf import DictConfig
from sklearn.model_selection import StratifiedKFold

from datacull import layout
from datacull.errors import DatacullError
from datacull.store import fingerprint, to_plain
from datacull.training.data import channel_stats, input_geometry, load_images
from datacull.training.models import build_model
from datacull.training.trainer import (TrainResult, cached_run, indices_hash, load_epoch_model, run_seeds,
                                       train_identity, train_model)


def run_count(params: DictConfig, metric: str, default: int = 2) -> int:
    """`metric.<name>.runs`, checked to be a positive integer."""
    runs = int(params.get("runs", default))
    if runs < 1:
        raise DatacullError(f"metric.{metric}.runs must be >= 1, got {runs}")
    return runs


def _as_int(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def shared_keep_epochs(cfg: DictConfig) -> set[int]:
    """Epochs whose weights the shared runs keep, from the metric settings in `cfg.metric`.

    Taken from every metric's settings whether or not it is requested now, so that asking for it
    later does not retrain the runs. Values that are not integers are ignored here (the metric
    itself reports them).
    """
    metric = cfg.get("metric") or {}
    epochs: set[int] = set()
    el2n = metric.get("el2n") or {}
    if str(el2n.get("source", "checkpoint")) == "checkpoint":
        epochs.add(_as_int(el2n.get("epoch", 2)))
    for name in ("grand", "grand_last_layer"):
        epochs.add(_as_int((metric.get(name) or {}).get("epoch", 0)))
    ensemble = metric.get("ensemble_uncertainty") or {}
    total = _as_int(cfg.get("train", {}).get("epochs"))
    checkpoints = _as_int(ensemble.get("checkpoints", 3))
    if (str(ensemble.get("pool", "out_of_fold")) == "in_sample" and total and checkpoints
            and str(ensemble.get("predictions", "checkpoints")) == "checkpoints"):
        epochs.update(range(max(1, total - checkpoints + 1), total + 1))
    return {e for e in epochs if e is not None and e > 0}


def recorded_runs(ctx, metric: str, runs: int, keep_epochs: Iterable[int] = ()) -> list[TrainResult]:
    """The first `runs` shared runs on `ctx.indices`, trained (with records) if not cached yet.

    They keep the weights of `shared_keep_epochs(ctx.cfg)` and of `keep_epochs`. Labels are checked
    first so a metric fails before any training when they are unusable.
    """
    ctx.require_labels(metric)
    keep = shared_keep_epochs(ctx.cfg) | {int(e) for e in keep_epochs}
    results = []
    for seed in run_seeds(ctx.cfg, runs):
        result = cached_run(ctx, seed, record=True, keep_epochs=keep)
        if not np.array_equal(result.train_indices, ctx.indices):  # pragma: no cover - guarded by the fingerprint
            raise RuntimeError(f"run {result.run_dir} was trained on other examples")
        results.append(result)
    return results


def check_epoch(epoch: int, total: int, metric: str, allow_init: bool = False) -> int:
    """An epoch in [1, total] (or [0, total] with `allow_init`, 0 = initialisation), else an error naming the metric."""
    low = 0 if allow_init else 1
    if epoch < low:
        meaning = "0 = at initialisation" if allow_init else "1 = the first epoch"
        raise DatacullError(f"metric.{metric}.epoch must be >= {low} ({meaning}), got {epoch}")
    if epoch > total:
        raise DatacullError(
            f"metric.{metric}.epoch={epoch} is beyond the run: training lasts train.epochs={total}; "
            f"lower the epoch or raise train.epochs"
        )
    return epoch


def init_model(ctx, seed: int, device: torch.device) -> torch.nn.Module:
    """`cfg.model` as initialised by the trainer with `seed`, input normalisation from the scored images.

    Equal to the weights a shared run with `seed` saves as epoch 0, without training anything.
    """
    cfg = ctx.cfg
    channels, size = input_geometry(cfg.model, ctx.source)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(cfg.model, ctx.num_classes, channels, size[0])
    pick = ctx.indices[np.linspace(0, len(ctx.indices) - 1, min(10_000, len(ctx.indices))).astype(np.int64)]
    sample, _ = load_images(ctx.source, pick, size, channels, int(cfg.data.get("num_workers", 0) or 0),
                            str(cfg.data.get("on_error", "skip")))
    model.set_normalization(*channel_stats(sample))
    return model.to(device).eval()


def epoch_models(ctx, metric: str, runs: int, epoch: int, device: torch.device) -> Iterator[torch.nn.Module]:
    """The models (eval mode) after `epoch` epochs of the first `runs` shared runs; 0 = the inits (no training).

    The runs are trained first if needed (all of them, keeping `epoch`'s weights), then loaded one by one.
    """
    epoch = check_epoch(int(epoch), int(ctx.cfg.train.epochs), metric, allow_init=True)
    if epoch == 0:
        for seed in run_seeds(ctx.cfg, runs):
            yield init_model(ctx, seed, device)
        return
    for run in recorded_runs(ctx, metric, runs, keep_epochs={epoch}):
        yield load_epoch_model(ctx.cfg, ctx.source, run.run_dir, epoch, device)


# ---------------------------------------------------------------- k-fold (out-of-fold) runs

def kfold_splits(labels: np.ndarray, folds: int, seed: int, metric: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified k-fold (train positions, held-out positions) of `labels`, shuffled with `seed`."""
    labels = np.asarray(labels)
    if folds < 2 or folds > len(labels):
        raise DatacullError(f"metric.{metric}.folds must be between 2 and the number of examples "
                            f"({len(labels)}), got {folds}")
    counts = np.bincount(labels)
    if counts[counts > 0].min() < folds:
        raise DatacullError(f"metric.{metric}.folds={folds} exceeds the size of the smallest class "
                            f"({counts[counts > 0].min()} examples); lower metric.{metric}.folds")
    return list(StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(np.zeros(len(labels)), labels))


def kfold_dir(ctx, prefix: str, folds: int, seed: int, epochs) -> Path:
    """Folder of the fold runs of one k-fold split (`{runs_dir}/{prefix}-{fingerprint}`)."""
    cfg = ctx.cfg
    fp = fingerprint(layout.data_identity(cfg.data), indices_hash(ctx.indices), to_plain(cfg.model),
                     train_identity(cfg.train), folds, seed, epochs)
    return ctx.runs_dir / f"{prefix}-{fp}"


def kfold_runs(ctx, metric: str, folds: int, seed: int, epochs: int | None = None, prefix: str | None = None,
               keep_epochs: Iterable[int] = ()) -> Iterator[tuple[int, np.ndarray, np.ndarray, TrainResult]]:
    """Yield (fold, train positions, held-out positions, run) for each fold of a stratified k-fold split
    of `ctx.indices` (split with `seed`); fold f's model trains on the other folds with seed `seed + f`.

    Runs are cached in `kfold_dir(ctx, prefix or metric, ...)/fold{f}`, not recorded, and keep the
    weights of `keep_epochs`. `epochs` overrides train.epochs. Positions index `ctx.indices`.
    """
    labels = ctx.require_labels(metric)
    splits = kfold_splits(labels, folds, seed, metric)
    folder = kfold_dir(ctx, prefix or metric, folds, seed, epochs)
    for fold, (train_pos, held_pos) in enumerate(splits):
        run = train_model(ctx.cfg, ctx.source, ctx.indices[train_pos], seed + fold, folder / f"fold{fold}",
                          record=False, epochs=None if epochs is None else int(epochs), keep_epochs=keep_epochs)
        yield fold, train_pos, held_pos, run
