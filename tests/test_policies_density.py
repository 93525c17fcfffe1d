"""dbp and cluster_balanced (datacull/policies/density.py): quotas, direction, within-cluster rules."""
import numpy as np
import pytest

from datacull.errors import DatacullError
from datacull.policies.density import capped_quotas, projected_quotas
from datacull.select import select_with_reasons


def planted(sizes, spreads, d=32, seed=0):
    """Clusters around orthogonal directions with the given sizes and noise levels."""
    rng = np.random.default_rng(seed)
    rows = [np.eye(d)[c] * 10 + rng.normal(0, s, (n, d)) for c, (n, s) in enumerate(zip(sizes, spreads))]
    return np.concatenate(rows).astype(np.float32), np.repeat(np.arange(len(sizes)), sizes)


def test_capped_quotas_sum_to_budget_and_respect_sizes():
    rng = np.random.default_rng(0)
    for _ in range(200):
        sizes = rng.integers(0, 50, rng.integers(1, 12))
        if sizes.sum() == 0:
            continue
        budget = int(rng.integers(0, sizes.sum() + 1))
        q = capped_quotas(rng.random(len(sizes)) ** 3, sizes, budget)
        assert q.sum() == budget and (q <= sizes).all() and (q >= 0).all()
    assert list(capped_quotas(np.ones(3), np.array([2, 100, 100]), 60)) == [2, 29, 29]
    with pytest.raises(DatacullError):
        capped_quotas(np.ones(2), np.array([1, 1]), 3)


def test_dbp_keeps_more_of_the_spread_cluster():
    rows, truth = planted([200, 200], [0.2, 2.0])
    keep = select_with_reasons(np.zeros(400), np.zeros(400), 200, "dbp", embeddings=rows, k=2, tau=0.1,
                               min_share=0.0).keep
    assert keep.sum() == 200
    assert keep[truth == 1].sum() > keep[truth == 0].sum() + 20


def test_cluster_balanced_gives_equal_quotas_up_to_sizes():
    rows, truth = planted([20, 200, 200], [0.3, 0.3, 0.3])
    result = select_with_reasons(np.zeros(420), np.zeros(420), 120, "cluster_balanced", embeddings=rows, k=3)
    assert sorted(int(result.keep[truth == c].sum()) for c in range(3)) == [20, 50, 50]
    pruned = result.reasons[~result.keep]
    assert all(r.startswith("pruned: cluster ") and r.endswith("/200") and "quota 50/" in r for r in pruned)


@pytest.mark.parametrize("policy", ["dbp", "cluster_balanced"])
def test_within_rule_deterministic_exact(policy):
    rows, truth = planted([60, 90, 150], [0.5, 1.0, 1.5], seed=1)
    scores = np.random.default_rng(5).random(300)
    kw = dict(embeddings=rows, k=3, seed=4, **({"difficulty": "scores"} if policy == "dbp" else {}))
    hard = select_with_reasons(scores, np.zeros(300), 100, policy, within="keep_hard", **kw).keep
    easy = select_with_reasons(scores, np.zeros(300), 100, policy, within="keep_easy", **kw).keep
    for c in range(3):
        members = truth == c
        assert scores[members & hard].min() > scores[members & ~hard].max()
        assert scores[members & easy].max() < scores[members & ~easy].min()
    a = select_with_reasons(scores, np.zeros(300), 100, policy, **kw)
    b = select_with_reasons(scores, np.zeros(300), 100, policy, **kw)
    assert a.keep.sum() == 100 and (a.keep == b.keep).all() and (a.reasons == b.reasons).all()
    labels = np.arange(300) % 2
    cb = select_with_reasons(scores, labels, 100, policy, class_balanced=True, **kw).keep
    assert [int(cb[labels == c].sum()) for c in (0, 1)] == [50, 50]
    with pytest.raises(DatacullError):
        select_with_reasons(scores, np.zeros(300), 100, policy, within="hardest", **kw)


def test_projected_quotas_solve_the_reference_qp():
    # the reference (amro-kamal/effective_pruning, pruning_qp) solves min ||x - t||^2, sum x = budget,
    # lower <= x <= upper with a QP solver; check against scipy's solver on random cases, then the bounds
    from scipy.optimize import minimize
    rng = np.random.default_rng(0)
    for _ in range(30):
        sizes = rng.integers(1, 60, rng.integers(2, 9))
        budget = int(rng.integers(sizes.size, sizes.sum()))
        target = rng.dirichlet(np.ones(len(sizes)) * 0.3) * budget
        lower = np.minimum(int(budget / len(sizes) * 0.5), sizes - 1)
        got = projected_quotas(target, lower, sizes, budget)
        assert got.sum() == budget and (got >= lower).all() and (got <= sizes).all()
        qp = minimize(lambda x: ((x - target) ** 2).sum(), np.clip(target, lower, sizes), method="SLSQP",
                      bounds=list(zip(lower, sizes)), constraints=[{"type": "eq", "fun": lambda x: x.sum() - budget}],
                      options={"ftol": 1e-12, "maxiter": 500})
        assert np.abs(got - qp.x).max() <= 1.0 + 1e-6  # integer rounding of the same optimum
    with pytest.raises(DatacullError, match="min_share"):
        projected_quotas(np.ones(2), np.array([5, 5]), np.array([9, 9]), 8)


def test_dbp_reference_defaults_keep_hard_by_distance_to_the_cluster_centroid_with_a_floor():
    rows, truth = planted([300, 300, 30], [0.2, 2.0, 0.2], seed=2)
    scores = np.random.default_rng(1).random(len(rows))  # ignored by the default difficulty=centroid
    result = select_with_reasons(scores, np.zeros(len(rows)), 150, "dbp", embeddings=rows, k=3)
    keep = result.keep
    assert keep.sum() == 150
    assert all(keep[truth == c].sum() >= min(int(150 / 3 * 0.5), (truth == c).sum() - 1) for c in range(3))
    unit = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    for c in range(3):
        members = truth == c
        centre = unit[members].mean(axis=0)
        dist = 1 - unit @ (centre / np.linalg.norm(centre))
        if 0 < (members & keep).sum() < members.sum():
            assert np.median(dist[members & keep]) > np.median(dist[members & ~keep])
    with pytest.raises(DatacullError, match="difficulty"):
        select_with_reasons(scores, np.zeros(len(rows)), 150, "dbp", embeddings=rows, k=3, difficulty="loss")


@pytest.mark.parametrize("key, value", [("min_share", "abc"), ("tau", "x"), ("min_share", 1.5)])
def test_dbp_bad_settings_are_one_clear_error(key, value):
    rows, _ = planted([50, 50], [0.2, 0.2])
    with pytest.raises(DatacullError, match=f"select.dbp.{key}"):
        select_with_reasons(np.zeros(100), np.zeros(100), 50, "dbp", embeddings=rows, k=2, **{key: value})
