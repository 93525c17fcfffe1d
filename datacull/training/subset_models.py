"""The subset-training job shared by memorization and influence (Feldman & Zhang, NeurIPS 2020).

K models are trained, each on a random `subset_fraction` of the scored examples (model k's subset
and training seed both derive from k, so the job is reproducible and can be extended: raising K
trains only the new models). Per model one file is kept,

    {runs_dir}/subsets-{fingerprint}/model{k:04d}.npz
        mask          (N,) bool   example i was in model k's training subset
        train_correct (N,) bool   model k classifies training example i correctly (eval mode)
        test_correct  (N_test,) bool  same on the test split (empty when data.test_split is null)

written atomically with np.savez (no pickles). The fingerprint covers what determines a model
(data, scored indices, model and train config, fraction, epochs, seed) but not K.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from omegaconf import DictConfig
from tqdm.auto import tqdm

from datacull import layout
from datacull.errors import DatacullError
from datacull.store import atomic_path, ensure_dir, fingerprint, to_plain
from datacull.training.trainer import indices_hash, predict_logits, train_identity, train_model

FIELDS = ("mask", "train_correct", "test_correct")


@dataclass(frozen=True)
class SubsetJob:
    """Settings of one subset-training job (read from a metric's config node)."""

    models: int
    subset_fraction: float
    epochs: int | None
    seed: int

    @classmethod
    def from_params(cls, params: DictConfig, seed: int, metric: str = "memorization") -> "SubsetJob":
        """Validated job settings from `metric.<metric>` (keys: models, subset_fraction, epochs)."""
        models = int(params.get("models", 8))
        fraction = float(params.get("subset_fraction", 0.7))
        epochs = params.get("epochs")
        if models < 2:
            raise DatacullError(
                f"{metric} needs at least 2 subset models, got models={models}; "
                f"set metric.{metric}.models to 2 or more (the paper used thousands)"
            )
        if not 0.0 < fraction < 1.0:
            raise DatacullError(f"metric.{metric}.subset_fraction must be in (0, 1), got {fraction}; the paper uses 0.7")
        if epochs is not None and int(epochs) < 1:
            raise DatacullError(f"metric.{metric}.epochs must be at least 1 (or null for train.epochs), got {epochs}")
        return cls(models, fraction, None if epochs is None else int(epochs), int(seed))


def job_dir(ctx, job: SubsetJob) -> Path:
    """The folder of the job's per-model files (independent of the number of models)."""
    cfg = ctx.cfg
    fp = fingerprint(layout.data_identity(cfg.data), indices_hash(ctx.indices), indices_hash(ctx.labels),
                     to_plain(cfg.model), train_identity(cfg.train), job.subset_fraction, job.epochs, job.seed,
                     cfg.data.get("test_split"))
    return ctx.runs_dir / f"subsets-{fp}"


def model_path(directory: Path, k: int) -> Path:
    """File of model k."""
    return Path(directory) / f"model{k:04d}.npz"


def subset_mask(n: int, fraction: float, seed: int, k: int) -> np.ndarray:
    """Model k's training subset: exactly round(fraction * n) of n positions, uniformly at random."""
    chosen = np.random.default_rng([seed, k]).choice(n, size=int(round(fraction * n)), replace=False)
    mask = np.zeros(n, dtype=bool)
    mask[chosen] = True
    return mask


def model_seed(seed: int, k: int) -> int:
    """Training seed (initialisation and data order) of model k."""
    return int(np.random.SeedSequence([seed, k, 1]).generate_state(1)[0] % (2**31 - 1))


def _test_split(ctx):
    """(test source, its labels) or (None, empty) when the data config has no test split."""
    if ctx.cfg.data.get("test_split") is None:
        return None, np.zeros(0, dtype=np.int64)
    test = ctx.test_source()
    return test, np.asarray(test.labels)


def train_one(ctx, job: SubsetJob, k: int, directory: Path) -> Path:
    """Train model k on its subset and write its mask and correctness file atomically."""
    labels = ctx.labels
    mask = subset_mask(len(ctx.indices), job.subset_fraction, job.seed, k)
    with tempfile.TemporaryDirectory(dir=directory, prefix=f".model{k:04d}-") as scratch:
        result = train_model(ctx.cfg, ctx.source, ctx.indices[mask], model_seed(job.seed, k), Path(scratch),
                             record=False, epochs=job.epochs)
        train_correct = predict_logits(result.model, ctx.source, ctx.indices, ctx.cfg).argmax(1) == labels
        test, test_labels = _test_split(ctx)
        if test is None:
            test_correct = np.zeros(0, dtype=bool)
        else:
            test_correct = predict_logits(result.model, test, np.arange(len(test)), ctx.cfg).argmax(1) == test_labels
    final = model_path(directory, k)
    with atomic_path(final, suffix=".npz") as tmp, open(tmp, "wb") as handle:
        np.savez(handle, mask=mask, train_correct=np.asarray(train_correct, dtype=bool),
                 test_correct=np.asarray(test_correct, dtype=bool))
    return final


def ensure_models(ctx, job: SubsetJob) -> Path:
    """Train the job's models that have no file yet (earlier models are reused); return the folder."""
    directory = ensure_dir(job_dir(ctx, job))
    missing = [k for k in range(job.models) if not model_path(directory, k).exists()]
    for k in tqdm(missing, desc="subset models", unit="model", disable=not missing):
        train_one(ctx, job, k, directory)
    return directory


def iter_models(directory: Path, count: int, fields: tuple[str, ...] = FIELDS) -> Iterator[dict[str, np.ndarray]]:
    """Yield `fields` of models 0..count-1 (mask, train_correct, test_correct), one model at a time."""
    for k in range(count):
        path = model_path(directory, k)
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: np.asarray(data[name], dtype=bool) for name in fields}
        except (OSError, KeyError, ValueError) as exc:
            raise DatacullError(f"subset model file {path} is unreadable ({exc}); delete it and score again") from None
        yield arrays


def stack_models(directory: Path, count: int, field: str) -> np.ndarray:
    """(count, length) bool array of one field over the models."""
    return np.stack([arrays[field] for arrays in iter_models(directory, count, (field,))])
