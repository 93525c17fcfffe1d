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

from datacull.errors import DatacullError
from datacull.kmeans import l2_normalize, nearest_centroid, train_spherical_kmeans, use_faiss_gpu
from datacull.metrics.context import ScoreContext
from datacull.metrics.registry import register_metric


# k = "auto" without known classes: round(sqrt(N / 2)) (the rule of thumb in Mardia, Kent & Bibby
# 1979, "Multivariate Analysis"), capped at the paper's ImageNet value (SCIENCE.md, section 2)
AUTO_K_CAP = 1000


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
    k = resolve_ssp_k(params.get("k", "auto"), ctx.num_classes, len(rows))
    gpu = use_faiss_gpu(params.get("gpu", "auto"), str(ctx.cfg.device))
    trials = params.get("local_trials", 20)
    centroids = train_spherical_kmeans(rows, k, niter=int(params.get("niter", 25)), seed=ctx.seed("ssp"), gpu=gpu,
                                       max_points_per_centroid=int(params.get("max_points_per_centroid", 256)),
                                       init=str(params.get("init", "kmeans++")), nredo=int(params.get("nredo", 1)),
                                       local_trials=None if trials is None else int(trials))
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
    block = int(params.get("block_size", 65536))
    sums = np.zeros((ctx.num_classes, rows.shape[1]), dtype=np.float64)
    for start in range(0, len(rows), block):
        onehot = np.eye(ctx.num_classes)[labels[start: start + block]]
        sums += onehot.T @ l2_normalize(np.asarray(rows[start: start + block]))
    prototypes = l2_normalize(sums)
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
