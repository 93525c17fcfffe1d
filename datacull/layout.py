"""Where each artifact lives under `paths.work_dir`.

    {work_dir}/{data.name}-{data.split}/
        embeddings/{encoder.name}-{fp}/{shard:05d}.npy|.parquet   shared by every experiment
        encoders/{encoder.name}-{fp}.*                            trained / fitted encoder state
        runs/...                                                  training dynamics, shared
        {name}/scores.parquet, selection.parquet, shards/, report/   one experiment (`name`)

Shared artifacts are keyed by a fingerprint of exactly the config that determines them, so two
experiments on the same data and encoder reuse the same embeddings and training runs.
"""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from datacull.store import fingerprint, to_plain

# data-config keys that do not change the examples themselves
_DATA_KEYS_IGNORED = {"root", "download", "num_workers", "batch_size"}
# encoder-config keys that change speed, not the embedding
_ENCODER_KEYS_IGNORED = {"batch_size", "num_workers"}


def data_identity(data_cfg: DictConfig) -> dict:
    """The part of the data config that determines which examples (and pixels) a source yields."""
    plain = to_plain(data_cfg)
    return {k: v for k, v in plain.items() if k not in _DATA_KEYS_IGNORED}


def encoder_identity(encoder_cfg: DictConfig) -> dict:
    """The part of the encoder config that determines the embedding."""
    plain = to_plain(encoder_cfg)
    return {k: v for k, v in plain.items() if k not in _ENCODER_KEYS_IGNORED}


def dataset_dir(cfg: DictConfig) -> Path:
    """Folder shared by everything computed on one dataset split."""
    return Path(cfg.paths.work_dir) / f"{cfg.data.name}-{cfg.data.split}"


def encoder_tag(cfg: DictConfig) -> str:
    """`{encoder}-{fingerprint}` naming one encoder config on one dataset."""
    return f"{cfg.encoder.name}-{fingerprint(data_identity(cfg.data), encoder_identity(cfg.encoder), cfg.seed)}"


def embeddings_dir(cfg: DictConfig) -> Path:
    """Folder of the embedding shards for the configured data + encoder."""
    return dataset_dir(cfg) / "embeddings" / encoder_tag(cfg)


def encoder_cache_dir(cfg: DictConfig) -> Path:
    """Folder holding fitted/trained encoder state (PCA basis, SimCLR weights)."""
    return dataset_dir(cfg) / "encoders"


def runs_dir(cfg: DictConfig) -> Path:
    """Folder holding cached training runs (shared by training-dynamics metrics and sweeps)."""
    return dataset_dir(cfg) / "runs"


def experiment_dir(cfg: DictConfig) -> Path:
    """Folder of one experiment's scores, selection, shards and report."""
    return dataset_dir(cfg) / cfg.name


def scores_path(cfg: DictConfig) -> Path:
    """The scores table of the experiment (or `select.scores` when the user gives one)."""
    return experiment_dir(cfg) / "scores.parquet"


def selection_path(cfg: DictConfig) -> Path:
    """The selection table of the experiment."""
    return experiment_dir(cfg) / "selection.parquet"


def shards_dir(cfg: DictConfig) -> Path:
    """Folder of the exported webdataset shards of the experiment."""
    return experiment_dir(cfg) / "shards"


def report_dir(cfg: DictConfig) -> Path:
    """Folder of the experiment's figures and report."""
    return experiment_dir(cfg) / "report"
