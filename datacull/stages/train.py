"""The train stage: train `model=...` with `train=...` on the kept examples of a selection, evaluate on
the test split, and write one result row (see datacull/results.py).

The selection is made (or reused) first by the select stage, so `datacull train select.policy=...
select.fraction=...` is one self-contained job: Hydra multirun jobs and sweep workers each write
their own selection folder, run folder and row file. A run whose row exists is read, not retrained;
a killed run resumes from its last epoch checkpoint (the one trainer, datacull/training/trainer.py).

Budget rule `train.budget`: `epochs` trains every selection for `train.epochs` epochs (as the
full-data run); `steps` trains for as many optimizer steps as the unpruned run on the pool would take
(epochs = round(train.epochs x pool / n_train), at least train.epochs), so small selections get
more epochs. `train.min_steps` (default 0) raises the epochs of any run that would take fewer
optimizer steps (a CPU stand-in for "train to convergence" on tiny selections). The row records the
rule, the epochs and the optimizer steps actually taken.

Under `torchrun --nproc_per_node=N -m datacull.cli train ...` the training is data-parallel (DDP,
datacull/training/distributed.py; train.batch_size is the global batch): rank 0 makes the selection
first, every rank trains, and rank 0 alone evaluates and writes the row.
"""
from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, open_dict

from datacull import layout
from datacull.data.base import DataSource, build_source, check_labels
from datacull.encoders.base import resolve_device
from datacull.errors import DatacullError
from datacull.results import read_row, row_path, write_row
from datacull.stages.select import resolve_policy, select
from datacull.store import fingerprint, parquet_config, parquet_fingerprint, to_plain
from datacull.training import distributed
from datacull.training.trainer import indices_hash, predict_logits, train_identity, train_model

log = logging.getLogger(__name__)

BUDGETS = ("epochs", "steps")


def recipe_name(cfg: DictConfig) -> str:
    """Name of the training recipe (`train.name`, else `custom`)."""
    return str(cfg.train.get("name") or "custom")


def planned_epochs(cfg: DictConfig, n_train: int, pool: int) -> int:
    """Epochs to train `n_train` examples under `train.budget` (pool = examples before pruning),
    raised to reach `train.min_steps` optimizer steps when set."""
    budget = str(cfg.train.get("budget", "epochs"))
    if budget not in BUDGETS:
        raise DatacullError(f"train.budget must be one of {', '.join(BUDGETS)}, not {budget!r}")
    min_steps = int(cfg.train.get("min_steps", 0) or 0)
    if min_steps < 0:
        raise DatacullError(f"train.min_steps must be >= 0, got {min_steps}")
    epochs, batch = int(cfg.train.epochs), int(cfg.train.batch_size)
    per_epoch = math.ceil(max(n_train, 1) / batch)
    if budget == "steps" and n_train < pool:
        epochs = max(epochs, int(round(epochs * math.ceil(pool / batch) / per_epoch)))
    return max(epochs, math.ceil(min_steps / per_epoch))


def run_id(cfg: DictConfig, selection_fp: str, epochs: int) -> str:
    """Identity of one training run: what was kept, the model, the recipe, the epochs and the seed."""
    return fingerprint("train-run", selection_fp, to_plain(cfg.model), train_identity(cfg.train),
                       layout.data_identity(cfg.data), str(cfg.data.get("test_split", "test")), int(epochs),
                       layout.selection_seed(cfg))


def _per_class(labels: np.ndarray, num_classes: int) -> list[int]:
    return np.bincount(labels, minlength=num_classes).astype(int).tolist()


@torch.no_grad()
def evaluate(model, test_source: DataSource, cfg: DictConfig) -> dict:
    """Test error, mean cross-entropy and per-class error of `model` on every example of `test_source`."""
    labels = test_source.labels.astype(np.int64)
    check_labels(labels, test_source.num_classes, f"the test split ({test_source.split})")
    logits = torch.from_numpy(predict_logits(model, test_source, np.arange(len(test_source)), cfg))
    target = torch.from_numpy(labels)
    wrong = (logits.argmax(1) != target).numpy()
    per_class = [float(wrong[labels == c].mean()) if (labels == c).any() else float("nan")
                 for c in range(test_source.num_classes)]
    return {"test_error": float(wrong.mean()), "test_loss": float(F.cross_entropy(logits, target)),
            "per_class_error": per_class}


def full_test_source(cfg: DictConfig) -> DataSource:
    """The whole held-out split (`data.test_split`); `data.limit` shrinks only the training pool."""
    data_cfg = cfg.data.copy()
    with open_dict(data_cfg):
        data_cfg.limit = None
    return build_source(data_cfg, str(cfg.data.get("test_split", "test")))


def train(cfg: DictConfig, source: DataSource | None = None) -> dict[str, Path]:
    """Select (or reuse the selection), train on the kept examples, evaluate, write the result row."""
    planned_epochs(cfg, 1, 1)  # a bad train.budget fails before any work
    distributed.check_batch(int(cfg.train.batch_size), distributed.launched_world())  # so does a bad torchrun split
    ddp = distributed.setup(resolve_device(str(cfg.get("device", "auto"))))
    try:
        return _train(cfg, source, ddp)
    finally:
        distributed.shutdown()


def _train(cfg: DictConfig, source: DataSource | None, ddp: distributed.DistInfo) -> dict[str, Path]:
    cfg = resolve_policy(cfg)  # select.policy=auto: the pilot's choice (datacull/policies/auto.py)
    if not ddp.main:
        distributed.barrier()  # rank 0 makes the selection, the others then read it
    selection_path = select(cfg)["selection"]
    if ddp.main:
        distributed.barrier()
    selection = pd.read_parquet(selection_path)
    meta = parquet_config(selection_path)
    kept = selection.loc[selection["kept"], "index"].to_numpy(dtype=np.int64)
    pool = int(meta.get("summary", {}).get("pool", len(kept)))
    epochs = planned_epochs(cfg, len(kept), pool)
    rid = run_id(cfg, parquet_fingerprint(selection_path) or "", epochs)
    rows_dir = layout.results_rows_dir(cfg)
    done = read_row(rows_dir, rid)
    if done is not None:
        log.info(f"train: run {rid} already finished (test error {done['test_error']:.4f}); not retrained")
        return {"selection": selection_path, "row": rows_dir / f"{rid}.json"}

    source = source or build_source(cfg.data)
    test_source = full_test_source(cfg)
    seed = layout.selection_seed(cfg)
    run_root = layout.runs_dir(cfg) / f"{cfg.model.name}-{fingerprint(to_plain(cfg.model), train_identity(cfg.train), layout.data_identity(cfg.data))}"
    run_dir = run_root / f"kept-{indices_hash(kept)}-e{epochs}-seed{seed}"
    began = time.perf_counter()
    result = train_model(cfg, source, kept, seed, run_dir, record=False, epochs=epochs)
    if not ddp.main:  # rank 0 evaluates and writes the row
        distributed.barrier()
        return {"selection": selection_path, "row": row_path(rows_dir, rid), "run_dir": run_dir}
    trained = sum(h.get("seconds", 0.0) for h in result.history)
    began_eval = time.perf_counter()
    scores = evaluate(result.model, test_source, cfg)
    eval_seconds = time.perf_counter() - began_eval
    unpruned = float(cfg.select.get("fraction") or 0) == 1.0 and cfg.select.get("count") is None
    labels = source.labels.astype(np.int64)
    pool_mask = ~selection["reason"].str.startswith("skipped") & ~selection["reason"].str.contains("outside the random")
    row = {
        "run_id": rid, "name": str(cfg.name), "data": str(cfg.data.name), "split": str(cfg.data.split),
        "model": str(cfg.model.name), "recipe": recipe_name(cfg),
        "metric": "all" if unpruned else layout.selection_metric(cfg),
        "policy": "all" if unpruned else str(cfg.select.policy),
        "fraction": float(cfg.select.fraction) if cfg.select.get("count") is None else len(kept) / max(pool, 1),
        "subset_size": pool, "n_train": int(len(kept)), "class_balanced": bool(cfg.select.class_balanced),
        "seed": seed, "budget": str(cfg.train.get("budget", "epochs")), "epochs": int(epochs),
        "steps": int(epochs * math.ceil(len(kept) / int(cfg.train.batch_size))),
        "test_error": scores["test_error"], "test_loss": scores["test_loss"],
        "per_class_error": json.dumps(scores["per_class_error"]),
        "kept_per_class": json.dumps(_per_class(labels[kept], source.num_classes)),
        "pool_per_class": json.dumps(_per_class(selection.loc[pool_mask, "label"].to_numpy(dtype=np.int64),
                                                source.num_classes)),
        "class_names": json.dumps(list(source.class_names or [])),
        "train_seconds": float(trained if trained else time.perf_counter() - began),
        "eval_seconds": float(eval_seconds), "selection": selection_path.parent.name,
        "run_dir": str(run_dir), "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    path = write_row(rows_dir, row)
    log.info(f"train: {row['metric']}/{row['policy']} f={row['fraction']:g} n_train={row['n_train']} seed {seed}: "
             f"test error {row['test_error']:.4f} ({epochs} epochs, {row['train_seconds']:.0f} s) -> {path}")
    distributed.barrier()
    return {"selection": selection_path, "row": path, "run_dir": run_dir}
