"""Prototype metrics: distance of an example's embedding to a prototype (Sorscher et al. 2022).

Sorscher, Geirhos, Shekhar, Ganguli, Morcos, "Beyond neural scaling laws: beating power law
scaling via data pruning", NeurIPS 2022 (arXiv 2206.14486), section 5: self-supervised
prototypes (SSP) = cosine distance to the nearest of k spherical k-means centroids of
self-supervised embeddings; supervised prototypes = cosine distance to the example's own class
mean. The paper's later text uses cosine distance (reference code varies); we use cosine.
"""
from __future__ import annotations

import numpy as np
from omegaconf import DictConfig

from datacull.errors import DatacullError, setting_number
from datacull.kmeans import INIT_SAMPLE, l2_normalize, nearest_centroid, train_spherical_kmeans, use_faiss_gpu
from datacull.metrics.context import ScoreContext
from datacull.metrics.registry import register_metric
from datacull.rows import finite_rows
from datacull.store import without_defaults


# k = "auto" without known classes: round(sqrt(N / 2)) (the rule of thumb in Mardia, Kent & Bibby
# 1979, "Multivariate Analysis"), capped at the paper's ImageNet value (SCIENCE.md, section 2)
AUTO_K_CAP = 1000


def check_finite(rows, metric: str) -> None:
    """One clear error when embedding rows hold NaN/inf (faiss would abort, means would turn NaN).

    The score stage skips such rows with a reason before any metric sees them; this guards other callers.
    """
    bad = ~finite_rows(rows)
    if bad.any():
        raise DatacullError(f"{metric}: {int(bad.sum())} of {len(rows)} embedding rows hold NaN/inf (first row "
                            f"{int(np.argmax(bad))}); delete the embeddings folder and run `datacull embed` again")


def resolve_ssp_k(setting, num_classes: int, n: int) -> int:
    """The number of SSP prototypes for `n` examples: `metric.ssp.k` as an int, or `auto`.

    `auto` = the data source's number of classes when it has more than one (Sorscher et al. 2022:
    k about the number of classes, results robust within an order of magnitude), else
    min(round(sqrt(n / 2)), 1000), which gives 800 for ImageNet's 1.28M images. Raises a
    DatacullError when k is not a positive integer or exceeds the number of examples.
    """
    if isinstance(setting, str) and setting.strip().lower() == "auto":
        if num_classes > 1:
            k, why = int(num_classes), f"k=auto = the data's num_classes = {num_classes}"
        else:
            k, why = min(max(1, round(np.sqrt(n / 2))), AUTO_K_CAP), f"k=auto = min(round(sqrt({n}/2)), {AUTO_K_CAP})"
    elif isinstance(setting, int) and not isinstance(setting, bool):
        k, why = int(setting), f"k={setting}"
    elif isinstance(setting, str) and setting.strip().isdigit():
        k, why = int(setting), f"k={int(setting)}"
    else:
        raise DatacullError(f"metric.ssp.k must be a positive integer or 'auto', got {setting!r}")
    if k < 1:
        raise DatacullError(f"metric.ssp.k must be a positive integer or 'auto', got {setting!r}")
    if k > n:
        raise DatacullError(f"SSP with {why} needs at least k examples to cluster, but there are only {n}; "
                            f"set metric.ssp.k to at most {n}")
    return k


@register_metric("ssp", "self-supervised prototypes: cosine distance to the nearest k-means centroid",
                 needs="embeddings", requires_labels=False, citation="Sorscher et al. 2022")
def ssp(ctx: ScoreContext, params: DictConfig) -> dict[str, np.ndarray]:
    """1 - cosine similarity to the nearest spherical-k-means centroid, plus `ssp_cluster` and `ssp_k`.

    k is `metric.ssp.k` (`auto`: see `resolve_ssp_k`); the k used is written to every row as
    the `ssp_k` column. Centroids: `datacull.kmeans.train_spherical_kmeans` with `init`
    (kmeans++ | random), `local_trials`, `nredo`, `niter` and `max_points_per_centroid`.
    """
    rows = ctx.embeddings()
    check_finite(rows, "ssp")
    k, centroids, gpu = fit_ssp_centroids(rows, params, ctx.num_classes, ctx.seed("ssp"), str(ctx.cfg.device))
    return ssp_columns(rows, centroids, k, params, gpu)


def fit_ssp_centroids(rows, params: DictConfig, num_classes: int, seed: int,
                      device: str) -> tuple[int, np.ndarray, bool]:
    """(k, unit centroids (k, d), whether faiss runs on GPU) of SSP's spherical k-means on `rows`.

    Also the first step of sharded scoring (`datacull.sharding`), which passes a view of every shard's rows.
    """
    k = resolve_ssp_k(params.get("k", "auto"), num_classes, len(rows))
    gpu = use_faiss_gpu(params.get("gpu", "auto"), device)
    trials = params.get("local_trials", 20)
    init_sample = params.get("init_sample", INIT_SAMPLE)
    centroids = train_spherical_kmeans(rows, k, niter=int(params.get("niter", 25)), seed=seed, gpu=gpu,
                                       max_points_per_centroid=int(params.get("max_points_per_centroid", 256)),
                                       init=str(params.get("init", "kmeans++")), nredo=int(params.get("nredo", 1)),
                                       local_trials=None if trials is None else setting_number(
                                           trials, "metric.ssp.local_trials", int),
                                       init_sample=None if init_sample is None else setting_number(
                                           init_sample, "metric.ssp.init_sample", int))
    return k, centroids, gpu


def ssp_identity(params: dict) -> dict:
    """SSP's settings as they enter the score fingerprint: `init_sample` only where it is not the default.

    The default seeding subsample (`datacull.kmeans.INIT_SAMPLE`) is part of the algorithm, like the
    rest of datacull's k-means code, so scores computed before the setting existed stay valid; a
    non-default value, or `null` (seed from the whole sample), changes the fingerprint. With
    `init: random` there is no seeding and the setting is always left out.
    """
    if params.get("init", "kmeans++") == "random":
        return {k: v for k, v in params.items() if k != "init_sample"}
    return without_defaults(params, {"init_sample": INIT_SAMPLE})


def ssp_columns(rows, centroids: np.ndarray, k: int, params: DictConfig, gpu: bool) -> dict[str, np.ndarray]:
    """SSP's columns for `rows` given the centroids: `ssp` (1 - cosine to the nearest), `ssp_cluster`, `ssp_k`."""
    cluster, similarity = nearest_centroid(rows, centroids, block_size=int(params.get("block_size", 65536)),
                                           gpu=gpu, desc="ssp assign")
    return {"ssp": (1.0 - similarity).astype(np.float64), "ssp_cluster": cluster,
            "ssp_k": np.full(len(rows), k, dtype=np.int64)}


@register_metric("supervised_prototypes", "cosine distance to the example's own class-mean embedding",
                 needs="embeddings", requires_labels=True, citation="Sorscher et al. 2022")
def supervised_prototypes(ctx: ScoreContext, params: DictConfig) -> np.ndarray:
    """1 - cosine similarity between an example and the (normalised) mean embedding of its class."""
    labels = ctx.require_labels("supervised_prototypes")
    rows = ctx.embeddings()
    check_finite(rows, "supervised_prototypes")
    block = int(params.get("block_size", 65536))
    return prototype_distances(rows, labels, class_prototypes(rows, labels, ctx.num_classes, block), block)


def class_prototypes(rows, labels: np.ndarray, num_classes: int, block: int = 65536) -> np.ndarray:
    """Unit-norm (num_classes, d) class means of the L2-normalised rows, summed in blocks of `block` rows."""
    sums = np.zeros((num_classes, rows.shape[1]), dtype=np.float64)
    for start in range(0, len(rows), block):
        onehot = np.eye(num_classes)[labels[start: start + block]]
        sums += onehot.T @ l2_normalize(np.asarray(rows[start: start + block]))
    return l2_normalize(sums)


def prototype_distances(rows, labels: np.ndarray, prototypes: np.ndarray, block: int = 65536) -> np.ndarray:
    """1 - cosine similarity of each row to the prototype of its label, in blocks of `block` rows."""
    distance = np.empty(len(rows), dtype=np.float64)
    for start in range(0, len(rows), block):
        unit = l2_normalize(np.asarray(rows[start: start + block]))
        distance[start: start + len(unit)] = 1.0 - np.einsum("ij,ij->i", unit, prototypes[labels[start: start + block]])
    return distance


@register_metric("random", "uniform random scores (the baseline every metric must beat)",
                 needs="none", requires_labels=False, citation="Sorscher et al. 2022")
def random_scores(ctx: ScoreContext, params: DictConfig) -> np.ndarray:
    """Independent U(0, 1) scores from the seed, so `keep_hard` with it is random pruning."""
    return np.random.default_rng(ctx.seed("random")).random(len(ctx.indices))
