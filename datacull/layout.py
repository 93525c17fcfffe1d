"""Where each artifact lives under `paths.work_dir`.

    {work_dir}/{data.name}-{data.split}/
        embeddings/{encoder.name}-{fp}/{shard:05d}.npy|.parquet   shared by every experiment
        encoders/{encoder.name}-{fp}.*                            trained / fitted encoder state
        runs/...                                                  training dynamics, shared
        {name}/scores.parquet                                     one experiment (`name`)
        {name}/selections/{tag}/selection.parquet, shards/, report/   one selection each
        {name}/results/rows/{run_id}.json                         one row per training run
        {name}/report/                                            the sweep / comparison report

Shared artifacts are keyed by a fingerprint of exactly the config that determines them, so two
experiments on the same data and encoder reuse the same embeddings and training runs.
"""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from datacull.store import fingerprint, to_plain, without_defaults

# data-config keys that do not change the examples themselves
_DATA_KEYS_IGNORED = {"root", "download", "num_workers", "batch_size", "index_cache"}
# encoder-config keys that change speed, not the embedding
_ENCODER_KEYS_IGNORED = {"batch_size", "num_workers"}
# select-section options added after selections existed: left out of the selection identity at their
# default value, so those selections keep their fingerprint (section -> {option: default})
_SELECT_DEFAULTS_IGNORED = {"semdedup": {"against": "earlier"}, "dedup": {"against": "earlier"}}


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


def selection_metric(cfg: DictConfig) -> str:
    """The score column a selection ranks by: `select.metric`, else the first of `metrics`."""
    metrics = [cfg.metrics] if isinstance(cfg.metrics, str) else list(cfg.metrics)
    return str(cfg.select.get("metric") or metrics[0])


def selection_seed(cfg: DictConfig) -> int:
    """The replicate seed of a selection (subset draw, random policy, tie-breaks) and of its training run."""
    seed = cfg.select.get("seed")
    return int(cfg.seed if seed is None else seed)


def selection_identity(cfg: DictConfig) -> dict:
    """Everything that determines which examples a selection keeps (besides the scores themselves).

    Settings that cannot change the kept set (warnings, other policies' sections, a pre-filter that is
    off) are left out, so adding such options never invalidates existing selections and their runs."""
    sel = to_plain(cfg.select)
    identity = {"metric": selection_metric(cfg), "policy": sel.get("policy"), "fraction": sel.get("fraction"),
                "count": sel.get("count"), "class_balanced": bool(sel.get("class_balanced")),
                "subset_size": sel.get("subset_size"), "seed": selection_seed(cfg),
                "missing_score": sel.get("missing_score", "median"), "scores": sel.get("scores")}
    if sel.get("count") is not None:
        identity["fraction"] = None
    if identity["policy"] == "ccs":
        identity.update({k: sel.get(k) for k in ("hard_cutoff", "strata", "cutoff_metric")})
    if isinstance(sel.get(identity["policy"]), dict):  # the policy's own section, e.g. select.d2
        policy = str(identity["policy"])
        identity[policy] = without_defaults(sel[policy], _SELECT_DEFAULTS_IGNORED.get(policy, {}))
    if isinstance(sel.get("dedup"), dict) and sel["dedup"].get("eps") is not None:  # the optional pre-filter
        identity["dedup"] = without_defaults(sel["dedup"], _SELECT_DEFAULTS_IGNORED["dedup"])
    return identity


def selection_tag(cfg: DictConfig) -> str:
    """Readable, unique folder name of a selection: `{metric}-{policy}-f{fraction}[-cb][-n{subset}]-s{seed}-{fp}`."""
    ident = selection_identity(cfg)
    budget = f"n{ident['count']}" if ident["count"] is not None else f"f{float(ident['fraction']):g}"
    parts = [ident["metric"], str(ident["policy"]), budget]
    if ident["class_balanced"]:
        parts.append("cb")
    if ident["subset_size"] is not None:
        parts.append(f"sub{ident['subset_size']:g}" if isinstance(ident["subset_size"], float)
                     else f"sub{ident['subset_size']}")
    parts += [f"s{ident['seed']}", fingerprint(ident)[:8]]
    return "-".join(parts)


def selection_dir(cfg: DictConfig) -> Path:
    """Folder of one selection: its table, exported shards and figures (never shared by two selections)."""
    return experiment_dir(cfg) / "selections" / selection_tag(cfg)


def selection_path(cfg: DictConfig) -> Path:
    """The selection table of the configured selection."""
    return selection_dir(cfg) / "selection.parquet"


def shards_dir(cfg: DictConfig) -> Path:
    """Folder of the exported webdataset shards of the configured selection."""
    return selection_dir(cfg) / "shards"


def selection_report_dir(cfg: DictConfig) -> Path:
    """Folder of the figures of one selection (score histogram, examples)."""
    return selection_dir(cfg) / "report"


def results_rows_dir(cfg: DictConfig) -> Path:
    """Folder of the experiment's training-result rows (one JSON file per run; parallel-safe)."""
    return experiment_dir(cfg) / "results" / "rows"


def report_dir(cfg: DictConfig) -> Path:
    """Folder of the experiment's sweep / comparison report."""
    return experiment_dir(cfg) / "report"
