"""Selection policies against independent computations."""
import numpy as np
import pytest

from datacull.errors import DatacullError
from datacull.select import budget_from, class_budgets, select_mask


def test_keep_hard_and_easy_take_the_extremes(rng):
    scores = rng.permutation(100).astype(float)
    hard = select_mask(scores, np.zeros(100), 10, "keep_hard")
    easy = select_mask(scores, np.zeros(100), 10, "keep_easy")
    assert set(scores[hard]) == set(range(90, 100))
    assert set(scores[easy]) == set(range(10))


def test_random_is_seeded_and_exact(rng):
    scores = rng.random(50)
    a = select_mask(scores, np.zeros(50), 20, "random", seed=3)
    b = select_mask(scores, np.zeros(50), 20, "random", seed=3)
    assert a.sum() == 20 and (a == b).all()
    assert not (a == select_mask(scores, np.zeros(50), 20, "random", seed=4)).all()


def test_class_balanced_preserves_class_proportions(rng):
    labels = np.repeat([0, 1, 2], [60, 30, 10])
    scores = rng.random(100)
    scores[labels == 0] += 10  # class 0 is all "harder": unbalanced keep_hard would take only it
    keep = select_mask(scores, labels, 50, "keep_hard", class_balanced=True)
    assert [int(keep[labels == c].sum()) for c in range(3)] == [30, 15, 5]
    # within each class it is still keep_hard
    for c in range(3):
        members = labels == c
        assert scores[members & keep].min() >= scores[members & ~keep].max()
    assert select_mask(scores, labels, 50, "keep_hard")[labels == 0].sum() == 50


def test_class_budgets_sum_exactly():
    labels = np.repeat([0, 1, 2], [7, 7, 7])
    assert sum(class_budgets(labels, 10).values()) == 10


def test_ccs_drops_hard_cutoff_and_covers_strata(rng):
    scores = rng.normal(size=2000)
    keep = select_mask(scores, np.zeros(2000), 200, "ccs", hard_cutoff=0.1, strata=10, seed=1)
    assert keep.sum() == 200
    order = np.argsort(-scores)
    assert not keep[order[:200]].any(), "the hardest 10% must be dropped"
    # independent stratification: equal-width bins over the remaining range
    rest = order[200:]
    edges = np.linspace(scores[rest].min(), scores[rest].max(), 11)
    bins = np.clip(np.digitize(scores[rest], edges) - 1, 0, 9)
    sizes = np.bincount(bins, minlength=10)
    kept_per = np.bincount(bins[keep[rest]], minlength=10)
    # every stratum gets min(size, fair share); tail strata are fully kept, central ones equally
    assert (kept_per == np.minimum(sizes, kept_per.max())).all() or kept_per.max() - kept_per[sizes > kept_per.max()].min() <= 1
    assert (kept_per[sizes <= 5] == sizes[sizes <= 5]).all()
    # unlike keep_easy/keep_hard, CCS keeps examples from across the score range
    assert (kept_per > 0).sum() >= 8


def test_ccs_cutoff_shrinks_when_budget_needs_it(rng):
    scores = rng.random(100)
    keep = select_mask(scores, np.zeros(100), 95, "ccs", hard_cutoff=0.2)
    assert keep.sum() == 95


@pytest.mark.parametrize("fraction", [0, -0.1, 1.5, None])
def test_fraction_outside_unit_interval_is_an_error(fraction):
    with pytest.raises(DatacullError, match="fraction"):
        budget_from(100, fraction, None)


def test_count_and_fraction_budget():
    assert budget_from(100, 0.25, None) == 25
    assert budget_from(100, 0.25, 7) == 7
    with pytest.raises(DatacullError, match="count"):
        budget_from(100, 0.5, 101)


def test_unknown_policy_lists_valid_ones():
    with pytest.raises(DatacullError, match="keep_hard, keep_easy, random, ccs"):
        select_mask(np.zeros(3), np.zeros(3), 1, "keep_medium")


def test_ties_are_broken_at_random_not_by_position():
    """60% tied scores on class-sorted data: every class keeps about its share (Sorscher et al. rank by score)."""
    from datacull.select import boundary_ties

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(5), 200)  # sorted by class, as ImageFolder sources are
    scores = np.where(rng.random(1000) < 0.6, 0.0, rng.random(1000) + 0.1)
    for policy in ("keep_easy", "keep_hard"):
        keep = select_mask(scores, labels, 300, policy, seed=1)
        shares = np.bincount(labels[keep], minlength=5) / 200
        assert keep.sum() == 300 and np.all(np.abs(shares - 0.3) < 0.1), (policy, shares)
    easy = select_mask(scores, labels, 300, "keep_easy", seed=1)
    assert np.array_equal(easy, select_mask(scores, labels, 300, "keep_easy", seed=1))
    assert not np.array_equal(easy, select_mask(scores, labels, 300, "keep_easy", seed=2))
    ties = boundary_ties(scores, easy)
    assert ties["boundary_value"] == 0.0 and ties["boundary_tied"] == int((scores == 0).sum())
    assert 0.55 < ties["tied_share"] <= 1.0


def test_ccs_cutoff_on_another_score_drops_its_hardest():
    rng = np.random.default_rng(3)
    scores, other = rng.random(400), rng.random(400)
    keep = select_mask(scores, np.zeros(400, int), 200, "ccs", seed=0, hard_cutoff=0.25, cutoff_scores=other)
    hardest_other = np.argsort(-other)[:100]
    assert keep.sum() == 200 and not keep[hardest_other].any()
