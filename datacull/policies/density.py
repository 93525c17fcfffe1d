"""Cluster-quota policies: density-based pruning (`dbp`) and equal per-cluster quotas (`cluster_balanced`).

Both cluster the embeddings with spherical k-means (datacull.kmeans, cosine geometry), give each
cluster a quota, and then apply a within-cluster rule to the difficulty scores
(`within`: random | keep_hard | keep_easy).

- dbp: Abbas, Rusak, Tirumala, Brendel, Chaudhuri & Morcos, ICLR 2024, "Effective pruning of
  web-scale datasets based on complexity of concept clusters". Cluster complexity
  C_j = d_intra_j * d_inter_j, where d_intra_j is the mean cosine distance of the cluster's members
  to its centroid (spread) and d_inter_j the mean cosine distance of its centroid to the
  `neighbours` nearest other centroids (isolation). Target shares p = softmax(C / tau): spread-out,
  isolated (complex) clusters keep more, tight redundant ones less. As in the reference code
  (amro-kamal/effective_pruning, prune.py: `pruning_qp`), the quotas x solve the quadratic program
  min ||x - p * budget||^2 subject to sum(x) = budget and min(floor, size_j - 1) <= x_j <= size_j,
  with floor = int(budget / k * min_share) (`--cls-bal-ratio`, default 0.5; 0 gives a floor of 1);
  with an identity Hessian its solution is the Euclidean projection x_j = clip(p_j * budget + lam)
  (`projected_quotas`). Within each cluster the reference keeps the examples farthest from the
  centroid (`--which-to-keep hard`, SSP's difficulty): `within=keep_hard, difficulty=centroid`.
  Reference defaults: temperature 0.5, 20 neighbouring centroids.
- cluster_balanced: the balanced sampling of Vo et al. 2024, "Automatic data curation for
  self-supervised learning: a clustering-based approach" (facebookresearch/ssl-data-curation), flat
  (one k-means level): an equal share per cluster; clusters smaller than their share are kept whole
  and the leftover is shared among the others.

Quotas never exceed a cluster's size (overflow is redistributed in proportion to the remaining
clusters' weights) and sum exactly to the budget (largest remainders round the fractions).
"""
from __future__ import annotations

import logging

import numpy as np

from datacull.errors import DatacullError, setting_number
from datacull.kmeans import l2_normalize, nearest_centroid, train_spherical_kmeans
from datacull.metrics.prototypes import resolve_ssp_k
from datacull.select import POLICIES, PolicyResult, keep_easy, keep_hard, keep_random

log = logging.getLogger(__name__)

WITHIN_RULES = {"random": keep_random, "keep_hard": keep_hard, "keep_easy": keep_easy}


def capped_quotas(weights: np.ndarray, sizes: np.ndarray, budget: int) -> np.ndarray:
    """Integer quotas proportional to `weights`, each <= its cluster size, summing exactly to `budget`.

    Clusters whose proportional share exceeds their size are kept whole and the overflow is shared
    among the others in proportion to their weights (repeated until no share exceeds a size); the
    fractional shares are then rounded by largest remainder."""
    weights = np.asarray(weights, dtype=np.float64)
    sizes = np.asarray(sizes, dtype=np.int64)
    if budget > sizes.sum():
        raise DatacullError(f"cannot keep {budget} examples from clusters holding {int(sizes.sum())}")
    share = np.zeros(len(sizes), dtype=np.float64)
    full = sizes <= 0
    while True:
        open_ = ~full
        remaining = budget - sizes[full & (sizes > 0)].sum()
        w = np.where(open_, weights, 0.0)
        share = np.where(full, np.maximum(sizes, 0), 0).astype(np.float64)
        if w.sum() > 0:
            share[open_] = remaining * w[open_] / w.sum()
        over = open_ & (share >= sizes)
        if not over.any():
            break
        full |= over
    quotas = np.minimum(np.floor(share + 1e-9).astype(np.int64), sizes)
    short = budget - int(quotas.sum())
    if short > 0:
        frac = np.where(quotas < sizes, share - quotas, -np.inf)
        order = np.argsort(-frac, kind="stable")
        for c in order:
            if short == 0:
                break
            if quotas[c] < sizes[c]:
                quotas[c] += 1
                short -= 1
    return quotas


def projected_quotas(target: np.ndarray, lower: np.ndarray, upper: np.ndarray, budget: int) -> np.ndarray:
    """Integer quotas x, lower <= x <= upper, sum(x) = budget, closest in L2 to `target` (DBP's QP).

    The continuous solution of min ||x - target||^2 under these constraints is x = clip(target + lam,
    lower, upper) with the scalar lam found by bisection (sum(x) is monotone in lam); it is then
    rounded by largest remainder within the bounds so that the quotas add up exactly to `budget`.
    """
    target = np.asarray(target, dtype=np.float64)
    lower, upper = np.asarray(lower, dtype=np.int64), np.asarray(upper, dtype=np.int64)
    if not lower.sum() <= budget <= upper.sum():
        raise DatacullError(f"cannot keep {budget} examples with per-cluster bounds summing to "
                            f"{int(lower.sum())}..{int(upper.sum())}; lower select.dbp.min_share")
    lo, hi = float(lower.min() - target.max()) - 1.0, float(upper.max() - target.min()) + 1.0
    for _ in range(200):
        lam = 0.5 * (lo + hi)
        if np.clip(target + lam, lower, upper).sum() < budget:
            lo = lam
        else:
            hi = lam
    share = np.clip(target + hi, lower, upper)
    quotas = np.clip(np.floor(share + 1e-9).astype(np.int64), lower, upper)
    order = np.argsort(-(share - quotas), kind="stable")
    short = budget - int(quotas.sum())
    for c in order:  # largest remainders first; each step moves one example, within the bounds
        if short == 0:
            break
        if short > 0 and quotas[c] < upper[c]:
            quotas[c] += 1
            short -= 1
    for c in order[::-1]:
        if short == 0:
            break
        if short < 0 and quotas[c] > lower[c]:
            quotas[c] -= 1
            short += 1
    return quotas


def cluster_rows(embeddings: np.ndarray, k, seed: int, niter: int = 25) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cluster id per row, cosine similarity to its centroid, unit centroids) of spherical k-means.

    `k` is an int or `auto` (as metric.ssp.k without classes: round(sqrt(N/2)), capped)."""
    n = len(embeddings)
    k = resolve_ssp_k(k, 0, n)
    if k > n:
        raise DatacullError(f"k={k} clusters for {n} examples; lower the policy's k")
    centroids = train_spherical_kmeans(embeddings, k, niter=int(niter), seed=int(seed))
    ids, sims = nearest_centroid(embeddings, centroids, desc="cluster")
    return ids, sims, centroids


def cluster_complexity(ids: np.ndarray, sims: np.ndarray, centroids: np.ndarray, neighbours: int) -> np.ndarray:
    """DBP complexity d_intra * d_inter per cluster (cosine distances; empty clusters get 0)."""
    k = len(centroids)
    sizes = np.bincount(ids, minlength=k)
    intra = np.bincount(ids, weights=1.0 - sims.astype(np.float64), minlength=k) / np.maximum(sizes, 1)
    if k == 1:
        return intra
    unit = l2_normalize(centroids).astype(np.float64)
    dist = 1.0 - unit @ unit.T
    np.fill_diagonal(dist, np.inf)
    m = max(1, min(int(neighbours), k - 1))
    inter = np.sort(dist, axis=1)[:, :m].mean(axis=1)
    return np.where(sizes > 0, intra * inter, 0.0)


DIFFICULTIES = ("centroid", "scores")


def _quota_policy(scores, budget, rng, embeddings, quotas_fn, *, k, within, niter, name, difficulty="scores"):
    n = len(scores)
    if within not in WITHIN_RULES:
        raise DatacullError(f"select.{name}.within must be one of {sorted(WITHIN_RULES)}, got {within!r}")
    if difficulty not in DIFFICULTIES:
        raise DatacullError(f"select.{name}.difficulty must be one of {', '.join(DIFFICULTIES)}, got {difficulty!r}")
    ids, sims, centroids = cluster_rows(embeddings, k, seed=int(rng.integers(2**31 - 1)), niter=niter)
    sizes = np.bincount(ids, minlength=len(centroids))
    quotas = quotas_fn(ids, sims, centroids, sizes)
    # difficulty inside a cluster: the selection metric's scores, or (DBP's reference) the cosine
    # distance to this clustering's own centroid
    values = 1.0 - sims.astype(np.float64) if difficulty == "centroid" else np.asarray(scores)
    keep = np.zeros(n, dtype=bool)
    reasons = np.full(n, "", dtype=object)
    rule = WITHIN_RULES[within]
    for c in np.flatnonzero(sizes):
        members = np.flatnonzero(ids == c)
        keep[members[rule(values[members], int(quotas[c]), rng)]] = True
        pruned = members[~keep[members]]
        reasons[pruned] = f"pruned: cluster {c} quota {int(quotas[c])}/{int(sizes[c])}"
    log.info("%s: %d clusters, quotas %d..%d, kept %d of %d (within=%s)", name, len(centroids),
             int(quotas.min()), int(quotas.max()), budget, n, within)
    return PolicyResult(keep, reasons)


@POLICIES.register("dbp", "density-based pruning: cluster quotas from softmax(complexity / tau)",
                   needs="embeddings")
def density_based_pruning(scores: np.ndarray, budget: int, rng: np.random.Generator, *, embeddings: np.ndarray,
                          k="auto", tau: float = 0.5, neighbours: int = 20, min_share: float = 0.5,
                          within: str = "keep_hard", difficulty: str = "centroid", niter: int = 25,
                          **_) -> PolicyResult:
    """Keep `budget` examples by DBP (Abbas et al. 2024): complexity-softmax quotas, then a within-cluster rule.

    Defaults follow the reference code: tau 0.5, 20 neighbouring centroids, a per-cluster floor of
    half an equal share (`min_share`, the reference's cls_bal_ratio), and keep-hard by distance to
    the cluster's centroid (`difficulty=centroid`; `scores` ranks by the selection metric instead).
    """
    tau, min_share = setting_number(tau, "select.dbp.tau"), setting_number(min_share, "select.dbp.min_share")
    if tau <= 0:
        raise DatacullError(f"select.dbp.tau must be > 0, got {tau}")
    if not 0.0 <= min_share <= 1.0:
        raise DatacullError(f"select.dbp.min_share must be in [0, 1], got {min_share}")

    def quotas(ids, sims, centroids, sizes):
        occupied = sizes > 0
        c = cluster_complexity(ids, sims, centroids, neighbours) / float(tau)
        w = np.where(occupied, np.exp(c - c[occupied].max()), 0.0)
        floor = int(budget / len(sizes) * float(min_share)) if float(min_share) > 0 else 1
        lower = np.where(occupied, np.minimum(floor, np.maximum(sizes - 1, 0)), 0)
        return projected_quotas(w / w.sum() * budget, lower, sizes, budget)

    return _quota_policy(scores, budget, rng, embeddings, quotas, k=k, within=within, niter=niter, name="dbp",
                         difficulty=difficulty)


@POLICIES.register("cluster_balanced", "equal quota per embedding cluster (ssl-data-curation balanced sampling)",
                   needs="embeddings")
def cluster_balanced(scores: np.ndarray, budget: int, rng: np.random.Generator, *, embeddings: np.ndarray,
                     k="auto", within: str = "random", niter: int = 25, **_) -> PolicyResult:
    """Keep `budget` examples with an equal share per k-means cluster (Vo et al. 2024, flat)."""
    def quotas(ids, sims, centroids, sizes):
        return capped_quotas((sizes > 0).astype(float), sizes, budget)

    return _quota_policy(scores, budget, rng, embeddings, quotas, k=k, within=within, niter=niter,
                         name="cluster_balanced")
