"""D2 pruning: message passing on a kNN graph to balance difficulty and diversity.

Maharana, Yadav & Bansal, ICLR 2024, "D2 Pruning: Message Passing for Balancing Diversity and
Difficulty in Data Pruning" (reference code: adymaharana/d2pruning, `GraphDensitySampler` with
graph_mode=sum, graph_sampling_mode=weighted, the precomputed-kNN path used at scale).

1. Graph: each example's `k` nearest neighbours (faiss, exact L2) in the embedding space; edge
   weights use the Euclidean distance d_ij between the embedding rows (as the reference, which
   computes sklearn Euclidean distances on the raw features).
2. Forward message passing: s_i <- s_i + sum_{j in kNN(i)} exp(-gamma_f * d_ij) * s_j
   (the reference uses exp(-d), i.e. gamma_f = 1).
3. Reverse message passing: repeatedly keep the node with the highest current score s_i, then
   for each of its k neighbours j: s_j <- s_j - exp(-gamma_r * d_ij) * s_i, until the budget is met.

Selection uses a max-heap with lazy invalidation (each update pushes a fresh entry; stale entries
are skipped when popped), O((N + budget * k) log N) instead of a rescan per pick. Ties in the
current score are broken by a seeded random rank, never by position.
"""
from __future__ import annotations

import heapq
import logging

import faiss
import numpy as np

from datacull.errors import DatacullError
from datacull.select import POLICIES

log = logging.getLogger(__name__)


def knn_graph(rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(neighbours (n, k) int64, Euclidean distances (n, k) float64) of each row's k nearest other rows."""
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    n = len(rows)
    if not 1 <= k < n:
        raise DatacullError(f"select.d2.k must be between 1 and the number of examples - 1 ({n - 1}), got {k}; "
                            "lower select.d2.k")
    index = faiss.IndexFlatL2(rows.shape[1])
    index.add(rows)
    sq, nbrs = index.search(rows, k + 1)
    # drop each row itself (usually, but with exact duplicates not always, the first hit)
    not_self = nbrs != np.arange(n)[:, None]
    order = np.argsort(~not_self, axis=1, kind="stable")[:, :k]
    nbrs = np.take_along_axis(nbrs, order, axis=1).astype(np.int64)
    dist = np.sqrt(np.maximum(np.take_along_axis(sq, order, axis=1).astype(np.float64), 0.0))
    return nbrs, dist


def forward_pass(scores: np.ndarray, nbrs: np.ndarray, dist: np.ndarray, gamma_f: float) -> np.ndarray:
    """Graph scores after forward message passing: s_i + sum_j exp(-gamma_f d_ij) s_j over i's neighbours."""
    scores = np.asarray(scores, dtype=np.float64)
    return scores + (np.exp(-gamma_f * dist) * scores[nbrs]).sum(axis=1)


def reverse_select(graph_scores: np.ndarray, nbrs: np.ndarray, dist: np.ndarray, budget: int,
                   gamma_r: float, rank: np.ndarray) -> np.ndarray:
    """Indices picked in order by iterative selection with reverse message passing (lazy max-heap).

    `rank` (a permutation) breaks ties: among equal current scores the lowest rank is picked."""
    s = np.array(graph_scores, dtype=np.float64)
    weights = np.exp(-gamma_r * dist)
    version = np.zeros(len(s), dtype=np.int64)
    taken = np.zeros(len(s), dtype=bool)
    heap = [(-s[i], int(rank[i]), i, 0) for i in range(len(s))]
    heapq.heapify(heap)
    picked = []
    while len(picked) < budget:
        neg, _, i, ver = heapq.heappop(heap)
        if taken[i] or ver != version[i]:
            continue
        taken[i] = True
        picked.append(i)
        si = s[i]
        for j, w in zip(nbrs[i], weights[i]):
            if taken[j]:
                continue
            s[j] = s[j] - w * si
            version[j] += 1
            heapq.heappush(heap, (-s[j], int(rank[j]), int(j), int(version[j])))
    return np.asarray(picked, dtype=np.int64)


@POLICIES.register("d2", "D2 pruning: kNN-graph message passing balancing difficulty and diversity",
                   needs="embeddings")
def d2_pruning(scores: np.ndarray, budget: int, rng: np.random.Generator, *, embeddings: np.ndarray,
               k: int = 10, gamma_f: float = 1.0, gamma_r: float = 1.0, **_) -> np.ndarray:
    """Keep `budget` examples by D2 pruning (Maharana et al. 2024) on difficulty `scores`."""
    n = len(scores)
    keep = np.zeros(n, dtype=bool)
    if budget == 0:
        return keep
    if budget == n:
        keep[:] = True
        return keep
    if float(gamma_f) < 0 or float(gamma_r) < 0:
        raise DatacullError(f"select.d2.gamma_f and gamma_r must be >= 0, got {gamma_f}, {gamma_r}")
    k = min(int(k), n - 1)
    nbrs, dist = knn_graph(embeddings, k)
    graph = forward_pass(scores, nbrs, dist, float(gamma_f))
    rank = rng.permutation(n)
    keep[reverse_select(graph, nbrs, dist, budget, float(gamma_r), rank)] = True
    log.info("d2: kept %d of %d (k=%d, gamma_f=%g, gamma_r=%g)", budget, n, k, gamma_f, gamma_r)
    return keep
