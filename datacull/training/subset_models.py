"""The subset-training job shared by memorization and influence (Feldman & Zhang, NeurIPS 2020).

K models are trained, each on a random `subset_fraction` f of the scored examples (model k's subset
and training seed both derive from k, so the job is reproducible and can be extended: raising K
trains only the new models). Two subset designs (`metric.memorization.design`):

- `balanced` (default): the models form blocks of B (`block`; auto = the smallest B with
  f*B >= 1 and (1-f)*B >= 1, i.e. 4 at f = 0.7). Within a block every example independently draws
  how many of the B models hold it, floor(f*B) or ceil(f*B) with the probabilities that make the
  mean exactly f*B (at f = 0.7, B = 4: 3 models with probability 0.8, else 2), and which ones
  (uniformly). Each model therefore still holds every example with probability exactly f,
  independently of every other example (a uniform random subset given its size, which is
  Binomial(N, f) instead of exactly round(f*N): +-0.2% at N = 60,000), which is what Feldman &
  Zhang's estimator averages over; and once K >= B every example is in at least floor(f*B) and out
  of at least B - ceil(f*B) >= 1 models, so no example is left without an estimate.
- `iid`: every model independently draws exactly round(f*N) examples uniformly (the reference
  code's sampling); with few models some examples are in every subset or in none (0.7^8 + 0.3^8
  = 5.8% at K = 8, f = 0.7), and their estimates are NaN.

Per model one file is kept,

    {runs_dir}/subsets-{fingerprint}/model{k:04d}.npz
        mask          (N,) bool   example i was in model k's training subset
        train_correct (N,) bool   model k classifies training example i correctly (eval mode)
        test_correct  (N_test,) bool  same on the test split (empty when data.test_split is null)

written atomically with np.savez (no pickles). The fingerprint covers what determines a model
(data, scored indices, model and train config, fraction, epochs, seed, design and block) but not K.
"""
from __future__ import annotations

import math
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
DESIGNS = ("balanced", "iid")


@dataclass(frozen=True)
class SubsetJob:
    """Settings of one subset-training job (read from a metric's config node)."""

    models: int
    subset_fraction: float
    epochs: int | None
    seed: int
    design: str = "balanced"
    block: int = 0

    @classmethod
    def from_params(cls, params: DictConfig, seed: int, metric: str = "memorization") -> "SubsetJob":
        """Validated job settings from `metric.<metric>` (models, subset_fraction, epochs, design, block)."""
        models = int(params.get("models", 8))
        fraction = float(params.get("subset_fraction", 0.7))
        epochs = params.get("epochs")
        design = str(params.get("design", "balanced"))
        if design not in DESIGNS:
            raise DatacullError(f"metric.{metric}.design must be one of {', '.join(DESIGNS)}, got {design!r}")
        if models < 2:
            raise DatacullError(
                f"{metric} needs at least 2 subset models, got models={models}; "
                f"set metric.{metric}.models to 2 or more (the paper used thousands)"
            )
        if not 0.0 < fraction < 1.0:
            raise DatacullError(f"metric.{metric}.subset_fraction must be in (0, 1), got {fraction}; the paper uses 0.7")
        if epochs is not None and int(epochs) < 1:
            raise DatacullError(f"metric.{metric}.epochs must be at least 1 (or null for train.epochs), got {epochs}")
        block = 0
        if design == "balanced":
            smallest = min_block(fraction)
            value = params.get("block", "auto")
            block = smallest if value in ("auto", None) else int(value)
            if block < smallest:
                raise DatacullError(f"metric.{metric}.block={block} is too small for subset_fraction={fraction}: every "
                                    f"example must be in at least one and out of at least one model of a block; "
                                    f"use block >= {smallest} (or auto)")
        return cls(models, fraction, None if epochs is None else int(epochs), int(seed), design, block)


def min_block(fraction: float) -> int:
    """Smallest block B with f*B >= 1 and (1-f)*B >= 1 (so each example is in and out of a full block)."""
    return max(2, math.ceil(1 / fraction - 1e-9), math.ceil(1 / (1 - fraction) - 1e-9))


def job_dir(ctx, job: SubsetJob) -> Path:
    """The folder of the job's per-model files (independent of the number of models)."""
    cfg = ctx.cfg
    parts = [layout.data_identity(cfg.data), indices_hash(ctx.indices), indices_hash(ctx.labels),
             to_plain(cfg.model), train_identity(cfg.train), job.subset_fraction, job.epochs, job.seed,
             cfg.data.get("test_split")]
    if job.design != "iid":  # iid jobs keep the fingerprint they had before designs existed
        parts += [job.design, job.block]
    fp = fingerprint(*parts)
    return ctx.runs_dir / f"subsets-{fp}"


def model_path(directory: Path, k: int) -> Path:
    """File of model k."""
    return Path(directory) / f"model{k:04d}.npz"


def subset_mask(n: int, fraction: float, seed: int, k: int) -> np.ndarray:
    """Model k's training subset under the `iid` design: exactly round(fraction * n) of n positions,
    uniformly at random, independently of the other models."""
    chosen = np.random.default_rng([seed, k]).choice(n, size=int(round(fraction * n)), replace=False)
    mask = np.zeros(n, dtype=bool)
    mask[chosen] = True
    return mask


def balanced_block(n: int, fraction: float, block: int, seed: int, b: int) -> np.ndarray:
    """(n, block) bool: which of block b's models (models b*block .. b*block + block - 1) hold each example.

    Example i is in c_i of the block's models, c_i = floor(f*B) + Bernoulli(f*B - floor(f*B)), chosen
    uniformly at random; examples are independent, so every column is an independent Bernoulli(f)
    draw per example, and every row has floor(f*B) or ceil(f*B) ones.
    """
    rng = np.random.default_rng([seed, b, 2])
    expected = fraction * block
    base = math.floor(expected + 1e-9)
    extra = expected - base if abs(expected - round(expected)) > 1e-9 else 0.0
    counts = base + (rng.random(n) < extra)
    ranks = rng.random((n, block)).argsort(axis=1).argsort(axis=1)  # a uniform permutation of the slots per example
    return ranks < counts[:, None]


def design_mask(job: SubsetJob, n: int, k: int) -> np.ndarray:
    """Model k's training subset (n positions) under the job's design."""
    if job.design == "iid":
        return subset_mask(n, job.subset_fraction, job.seed, k)
    return balanced_block(n, job.subset_fraction, job.block, job.seed, k // job.block)[:, k % job.block].copy()


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
    mask = design_mask(job, len(ctx.indices), k)
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
