"""k-center greedy coreset selection on the embeddings.

Sener & Savarese (ICLR 2018), "Active learning for convolutional neural networks: a core-set
approach", greedy 2-approximation of the k-center problem (as in DeepCore's `kCenterGreedy`):
start from one seeded random example, then repeatedly add the example farthest from its nearest
selected center, until `budget` are selected. The covering radius max_x min_c d(x, c) is at most
twice the optimum for that many centers.

Distance: Euclidean on the embeddings (`normalize=true`: on L2-normalised rows, a monotone
function of cosine distance). Each pick updates every example's distance to its nearest center with
one vectorised pass over the rows in `block`-row pieces (|x|^2 + |c|^2 - 2 x.c), so the cost is
O(N x budget x d) arithmetic and O(N) extra memory; no N x N matrix. Difficulty scores are unused.
"""
from __future__ import annotations

import logging

import numpy as np

from datacull.errors import DatacullError
from datacull.kmeans import l2_normalize
from datacull.select import POLICIES

log = logging.getLogger(__name__)


def kcenter_greedy(rows: np.ndarray, budget: int, rng: np.random.Generator, *, block: int = 65536) -> np.ndarray:
    """Indices of `budget` centers picked greedily (farthest point first), starting from a seeded one."""
    n = len(rows)
    if not 0 <= budget <= n:
        raise DatacullError(f"kcenter cannot pick {budget} centers from {n} rows")
    if budget == 0:
        return np.empty(0, dtype=np.int64)
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    sq = np.einsum("ij,ij->i", rows, rows)
    nearest = np.full(n, np.inf, dtype=np.float32)
    picked = np.empty(budget, dtype=np.int64)
    center = int(rng.integers(n))
    for step in range(budget):
        picked[step] = center
        c = rows[center]
        for start in range(0, n, block):
            part = slice(start, start + block)
            d2 = sq[part] + sq[center] - 2.0 * (rows[part] @ c)
            np.minimum(nearest[part], d2, out=nearest[part])
        nearest[center] = -1.0  # chosen: never again (distance to itself is 0 up to rounding)
        center = int(np.argmax(nearest))
    return picked


def covering_radius(rows: np.ndarray, centers: np.ndarray) -> float:
    """max over rows of the Euclidean distance to the nearest of `centers` (indices)."""
    rows = np.asarray(rows, dtype=np.float64)
    d = np.linalg.norm(rows[:, None, :] - rows[centers][None, :, :], axis=2)
    return float(d.min(axis=1).max())


@POLICIES.register("kcenter", "k-center greedy coreset: most diverse examples (Sener & Savarese 2018)",
                   needs="embeddings")
def kcenter(scores: np.ndarray, budget: int, rng: np.random.Generator, *, embeddings: np.ndarray,
            normalize: bool = False, block: int = 65536, **_) -> np.ndarray:
    """Keep the `budget` centers of k-center greedy on the (optionally normalised) embeddings."""
    if len(embeddings) != len(scores):
        raise DatacullError(f"kcenter got {len(embeddings)} embedding rows for {len(scores)} scores")
    rows = l2_normalize(embeddings) if normalize else embeddings
    keep = np.zeros(len(scores), dtype=bool)
    keep[kcenter_greedy(rows, budget, rng, block=int(block))] = True
    return keep
