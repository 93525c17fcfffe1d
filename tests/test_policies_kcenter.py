"""k-center greedy (datacull/policies/kcenter.py): 2-approximation against a brute-forced optimum,
exact budget, determinism, class balance and the select stage."""
from itertools import combinations

import numpy as np
import pandas as pd

from datacull.policies.kcenter import covering_radius, kcenter_greedy
from datacull.select import select_with_reasons
from datacull.stages.score import score
from datacull.stages.select import select


def test_covering_radius_is_within_twice_the_brute_forced_optimum():
    for seed in range(5):
        rows = np.random.default_rng(seed).normal(size=(12, 3))
        optimum = min(covering_radius(rows, np.array(c)) for c in combinations(range(12), 3))
        greedy = covering_radius(rows, kcenter_greedy(rows, 3, np.random.default_rng(seed), block=5))
        assert optimum <= greedy <= 2 * optimum + 1e-9


def test_picks_are_farthest_points_against_a_plain_loop():
    rows = np.random.default_rng(1).normal(size=(40, 4)).astype(np.float32)
    picked = kcenter_greedy(rows, 6, np.random.default_rng(2))
    for step in range(1, 6):
        d = np.linalg.norm(rows[:, None] - rows[picked[:step]][None], axis=2).min(1)
        assert np.isclose(d[picked[step]], d.max(), rtol=1e-4)


def test_exact_budget_deterministic_and_class_balanced():
    rows = np.random.default_rng(0).normal(size=(90, 5)).astype(np.float32)
    labels = np.arange(90) % 3
    keys = np.array([str(i) for i in range(90)], dtype=object)
    run = lambda seed, cb: select_with_reasons(np.zeros(90), labels, 30, "kcenter", class_balanced=cb, seed=seed,
                                               embeddings=rows, keys=keys, normalize=True).keep
    assert run(0, False).sum() == 30 and (run(0, False) == run(0, False)).all()
    balanced = run(0, True)
    assert [int(balanced[labels == c].sum()) for c in range(3)] == [10, 10, 10]


def test_kcenter_runs_in_the_select_stage(make_cfg):
    overrides = ("metrics=[random]", "select.policy=kcenter", "select.fraction=0.25")
    score(make_cfg(*overrides))
    table = pd.read_parquet(select(make_cfg(*overrides))["selection"])
    assert table.kept.sum() == round(0.25 * len(table))
