"""SemDeDup: semantic deduplication on embeddings, as a policy and as a pre-filter.

Abbas, Tirumala, Simig, Ganguli, Morcos (2023), "SemDeDup: Data-efficient learning at web-scale
through semantic deduplication"; protocol of the reference code (facebookresearch/SemDeDup):

1. spherical k-means on the L2-normalised embeddings (`datacull.kmeans`, faiss);
2. within each cluster, order the members by the keep rule; the reference (and default here,
   `keep=far`) puts the member FARTHEST from the centroid (lowest cosine similarity) first, so of a
   duplicate group the least prototypical member is kept. Alternatives: `near` (closest to the
   centroid first), `random` (seeded), `hard` / `easy` (highest / lowest difficulty score first);
3. M_j = the largest cosine similarity of member j to any EARLIER member of its cluster (the
   reference's max over the upper triangle of the cluster's similarity matrix); j is a duplicate
   when M_j > 1 - eps. The first member of every cluster is never a duplicate.

M is computed blockwise within a cluster (`block` x `block` similarity tiles), never an N x N
matrix. The reason of a removed example names the kept member it duplicates: the earlier member of
largest similarity, followed along its own duplicate chain until a kept member is reached.

As a policy alone (`select.policy=semdedup`) the budget is met as the reference meets a target size,
by choosing eps: the `budget` examples with the smallest M are kept (the largest eps that leaves at
least `budget` examples; ties at the cut broken by a seeded permutation). As a pre-filter
(`select.dedup.eps`), every example with M > 1 - eps is removed before the configured policy runs.
"""
from __future__ import annotations

import logging

import numpy as np

from datacull.errors import DatacullError
from datacull.kmeans import l2_normalize, nearest_centroid, train_spherical_kmeans
from datacull.select import POLICIES, PolicyResult, hardness_order

log = logging.getLogger(__name__)

KEEP_RULES = ("far", "near", "random", "hard", "easy")


def default_clusters(n: int) -> int:
    """Number of k-means clusters when none is given: about one per 1,000 examples (at least 1)."""
    return max(1, n // 1000)


def duplicate_similarity(embeddings: np.ndarray, scores: np.ndarray, rng: np.random.Generator, *,
                         clusters: int | None = None, keep: str = "far", block: int = 2048, niter: int = 25,
                         seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(M, nearest earlier member) per row: SemDeDup's max cosine similarity to an earlier member of
    the row's cluster in keep-rule order (-inf / -1 for the first member of a cluster)."""
    if keep not in KEEP_RULES:
        raise DatacullError(f"unknown semdedup keep rule {keep!r}; use one of {', '.join(KEEP_RULES)}")
    if block < 1:
        raise DatacullError(f"semdedup block must be >= 1, got {block}")
    n = len(embeddings)
    unit = l2_normalize(embeddings)
    k = min(int(clusters) if clusters else default_clusters(n), n)
    if k < 1:
        raise DatacullError(f"semdedup clusters must be >= 1, got {clusters}")
    if k > 1:
        centroids = train_spherical_kmeans(unit, k, niter=niter, seed=seed)
        assign, to_centroid = nearest_centroid(unit, centroids)
    else:
        assign, to_centroid = np.zeros(n, dtype=np.int64), unit @ l2_normalize(unit.mean(0, keepdims=True))[0]
    first = {"far": to_centroid, "near": -to_centroid, "random": rng.random(n),
             "hard": -np.asarray(scores, dtype=np.float64), "easy": np.asarray(scores, dtype=np.float64)}[keep]
    tie = rng.permutation(n)
    order = np.lexsort((tie, first, assign))  # by cluster, then keep rule (ascending key = earlier)
    sim = np.full(n, -np.inf, dtype=np.float32)
    of = np.full(n, -1, dtype=np.int64)
    bounds = np.flatnonzero(np.diff(assign[order])) + 1
    for members in np.split(order, bounds):
        _cluster_max(unit, members, block, sim, of)
    return sim, of


def _cluster_max(unit: np.ndarray, members: np.ndarray, block: int, sim: np.ndarray, of: np.ndarray) -> None:
    """Fill sim/of for one cluster (members in keep order) tile by tile."""
    rows = unit[members]
    for start in range(0, len(members), block):
        part = rows[start: start + block]
        best = np.full(len(part), -np.inf, dtype=np.float32)
        arg = np.full(len(part), -1, dtype=np.int64)
        for other in range(0, start + len(part), block):
            tile = part @ rows[other: other + block].T
            if other == start:  # only strictly earlier members
                tile[np.triu_indices(len(part), k=0, m=tile.shape[1])] = -np.inf
            col = tile.argmax(1)
            val = tile[np.arange(len(part)), col]
            better = val > best
            best[better], arg[better] = val[better], other + col[better]
        sim[members[start: start + len(part)]] = best
        found = arg >= 0
        of[members[start: start + len(part)][found]] = members[arg[found]]


def duplicate_reasons(removed: np.ndarray, of: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """`pruned: near-duplicate of KEY` for removed rows (KEY = first kept member along the chain)."""
    reasons = np.full(len(removed), "", dtype=object)
    for i in np.flatnonzero(removed):
        j = of[i]
        while j >= 0 and removed[j]:
            j = of[j]
        reasons[i] = f"pruned: near-duplicate of {keys[j]}"
    return reasons


def _check_eps(eps) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 <= eps < 1:
        raise DatacullError(f"select.dedup.eps must be in [0, 1) (e.g. 0.05) or null, got {eps!r}")
    return float(eps)


@POLICIES.register("semdedup", "SemDeDup: drop near-duplicates within embedding clusters (Abbas et al. 2023)",
                   needs="embeddings")
def semdedup(scores: np.ndarray, budget: int, rng: np.random.Generator, *, embeddings: np.ndarray,
             keys: np.ndarray, clusters: int | None = None, keep: str = "far", block: int = 2048,
             niter: int = 25, **_) -> PolicyResult:
    """Keep the `budget` examples least similar to an earlier member of their cluster (eps chosen
    to meet the budget, as SemDeDup meets a target size); pruned ones name the member they duplicate."""
    sim, of = duplicate_similarity(embeddings, scores, rng, clusters=clusters, keep=keep, block=block,
                                   niter=niter, seed=int(rng.integers(2**31)))
    kept = np.zeros(len(scores), dtype=bool)
    kept[hardness_order(-sim.astype(np.float64), rng)[:budget]] = True
    if budget < len(scores):
        log.info(f"semdedup: keeping {budget}/{len(scores)} = eps {1 - float(sim[~kept].min()):.4g} "
                 f"(max similarity to an earlier cluster member <= {float(sim[kept].max()):.4g})")
    return PolicyResult(kept, duplicate_reasons(~kept, of, np.asarray(keys)))


def dedup_prefilter(section, scores: np.ndarray, embeddings: np.ndarray, keys: np.ndarray,
                    seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`select.dedup` as a pre-filter: (removed mask, reasons) over the given rows; nothing removed
    when `eps` is null. Duplicates are those with M > 1 - eps (module docstring)."""
    eps = section.get("eps") if section is not None else None
    if eps is None:
        return np.zeros(len(scores), dtype=bool), np.full(len(scores), "", dtype=object)
    eps = _check_eps(eps)
    rng = np.random.default_rng([int(seed), 0xDED])
    sim, of = duplicate_similarity(embeddings, scores, rng, clusters=section.get("clusters"),
                                   keep=str(section.get("keep", "far")), block=int(section.get("block", 2048)),
                                   seed=int(seed))
    removed = sim > 1.0 - eps
    log.info(f"select.dedup: removed {int(removed.sum())} of {len(scores)} near-duplicates (eps {eps})")
    return removed, duplicate_reasons(removed, of, np.asarray(keys))


def dedup_usable(cfg, scores, values: np.ndarray, usable: np.ndarray, reasons: np.ndarray,
                 seed: int) -> np.ndarray:
    """The select stage's hook: `usable` minus the near-duplicates `select.dedup` removes (their
    `reasons` entries are set in place); `usable` unchanged when `select.dedup.eps` is null."""
    section = cfg.select.get("dedup")
    if section is None or section.get("eps") is None:
        return usable
    from datacull.stages.select import pool_embeddings

    keys = scores["key"].astype(str).to_numpy(dtype=object)[usable]
    removed, why = dedup_prefilter(section, values[usable], pool_embeddings(cfg, scores, usable), keys, seed)
    reasons[usable[removed]] = why[removed]
    return usable[~removed]
