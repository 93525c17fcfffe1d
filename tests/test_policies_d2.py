"""D2 pruning (datacull/policies/d2.py) against a plain dense re-implementation of its message passing."""
import numpy as np
import pytest

from datacull.errors import DatacullError
from datacull.policies.d2 import forward_pass, knn_graph, reverse_select
from datacull.select import select_with_reasons


def slow_d2(rows, scores, budget, k, gamma_f, gamma_r, rank):
    """Dense loops: all pairwise Euclidean distances, k nearest others, forward pass, then a full
    rescan for the highest current score per pick (ties: lowest rank)."""
    n = len(rows)
    dist = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            dist[i, j] = np.sqrt(((rows[i].astype(np.float64) - rows[j]) ** 2).sum())
    nbrs = []
    for i in range(n):
        others = [j for j in np.argsort(dist[i], kind="stable") if j != i]
        nbrs.append(others[:k])
    s = [float(scores[i]) + sum(np.exp(-gamma_f * dist[i, j]) * scores[j] for j in nbrs[i]) for i in range(n)]
    return slow_select(s, nbrs, lambda i, j: dist[i, j], budget, gamma_r, rank)


def slow_select(s, nbrs, dist, budget, gamma_r, rank):
    s = list(s)
    taken, picked = set(), []
    while len(picked) < budget:
        best = None
        for i in range(len(s)):
            if i in taken:
                continue
            if best is None or s[i] > s[best] or (s[i] == s[best] and rank[i] < rank[best]):
                best = i
        taken.add(best)
        picked.append(best)
        for j in nbrs[best]:
            if j not in taken:
                s[j] = s[j] - np.exp(-gamma_r * dist(best, j)) * s[best]
    return picked


@pytest.mark.parametrize("gammas", [(1.0, 1.0), (0.5, 2.0)])
def test_d2_matches_the_slow_reference(gammas):
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(40, 5)).astype(np.float32)
    scores = rng.random(40)
    keep = select_with_reasons(scores, np.zeros(40), 15, "d2", seed=7, embeddings=rows, k=4,
                               gamma_f=gammas[0], gamma_r=gammas[1]).keep
    rank = np.random.default_rng(7).permutation(40)
    expected = slow_d2(rows, scores, 15, 4, *gammas, rank)
    assert keep.sum() == 15
    assert sorted(np.flatnonzero(keep)) == sorted(expected)


def test_heap_selection_equals_rescan_exactly_with_ties():
    """Same graph, discrete scores with many ties: the lazy heap picks the very same sequence."""
    rng = np.random.default_rng(1)
    rows = rng.normal(size=(40, 3)).astype(np.float32)
    nbrs, dist = knn_graph(rows, 5)
    graph = forward_pass(rng.integers(0, 3, 40).astype(float), nbrs, dist, 1.0)
    graph[:10] = 2.0  # planted exact ties
    rank = rng.permutation(40)
    fast = reverse_select(graph, nbrs, dist, 25, 1.0, rank)
    slow = slow_select(graph, [list(r) for r in nbrs], lambda i, j: dist[i][list(nbrs[i]).index(j)], 25, 1.0, rank)
    assert list(fast) == slow


def test_d2_spreads_over_clusters_where_keep_hard_does_not():
    """Two clusters, one uniformly harder: keep_hard takes only it, D2 (strong reverse passing) both."""
    rng = np.random.default_rng(2)
    rows = np.concatenate([rng.normal(0, 0.1, (50, 4)), rng.normal(3, 0.1, (50, 4))]).astype(np.float32)
    scores = np.concatenate([rng.random(50) + 1.0, rng.random(50)])
    keep = select_with_reasons(scores, np.zeros(100), 30, "d2", embeddings=rows, k=10, gamma_r=0.0).keep
    assert 0 < keep[50:].sum() and keep[:50].sum() < 30
    hard = select_with_reasons(scores, np.zeros(100), 30, "keep_hard").keep
    assert hard[50:].sum() == 0


def test_d2_is_deterministic_exact_and_class_balanced():
    rng = np.random.default_rng(3)
    rows = rng.normal(size=(90, 6)).astype(np.float32)
    scores, labels = rng.random(90), np.repeat([0, 1, 2], [30, 30, 30])
    a = select_with_reasons(scores, labels, 45, "d2", seed=1, embeddings=rows, class_balanced=True, k=5).keep
    b = select_with_reasons(scores, labels, 45, "d2", seed=1, embeddings=rows, class_balanced=True, k=5).keep
    assert (a == b).all() and a.sum() == 45
    assert [int(a[labels == c].sum()) for c in range(3)] == [15, 15, 15]
    with pytest.raises(DatacullError):
        select_with_reasons(scores, labels, 45, "d2", embeddings=rows, k=0)
