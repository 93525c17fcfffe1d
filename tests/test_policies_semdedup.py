"""SemDeDup (datacull/policies/semdedup.py): planted near-duplicates, the kept-member rule, reasons,
the select.dedup pre-filter in the select stage, class balance and determinism."""
import numpy as np
import pandas as pd
import pytest

from datacull.errors import DatacullError
from datacull.policies.semdedup import dedup_prefilter, duplicate_similarity
from datacull.select import select_with_reasons
from datacull.stages.score import score
from datacull.stages.select import select
from datacull.store import parquet_config


def planted(n_distinct=600, n_copies=150, d=32, noise=0.01, seed=0):
    """Distinct Gaussian rows plus noisy copies of some of them; returns rows, keys, copy -> original."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n_distinct, d)).astype(np.float32)
    originals = rng.choice(n_distinct, size=n_copies, replace=False)
    copies = base[originals] + noise * rng.normal(size=(n_copies, d)).astype(np.float32)
    rows = np.vstack([base, copies])
    keys = np.array([f"k{i}" for i in range(len(rows))], dtype=object)
    return rows, keys, originals


def test_planted_near_duplicates_are_removed_and_reasons_name_the_kept_original():
    rows, keys, originals = planted()
    n_distinct = len(rows) - len(originals)
    cfg = {"eps": 0.05, "clusters": 4, "keep": "hard", "block": 64}  # small tiles: blocks cross boundaries
    scores = np.r_[np.ones(n_distinct), np.zeros(len(originals))]  # originals harder: kept under keep=hard
    removed, reasons = dedup_prefilter(cfg, scores, rows, keys, seed=0)
    recall = removed[n_distinct:].mean()
    assert recall >= 0.95
    assert removed[:n_distinct].mean() < 0.01
    for copy in np.flatnonzero(removed[n_distinct:]):
        assert reasons[n_distinct + copy] == f"pruned: near-duplicate of k{originals[copy]}"
    assert (reasons[~removed] == "").all()


@pytest.mark.parametrize("keep, kept_is_copy", [("hard", False), ("easy", True)])
def test_keep_rule_by_difficulty_decides_which_member_survives(keep, kept_is_copy):
    rows, keys, originals = planted(n_distinct=200, n_copies=50)
    n_distinct = 200
    scores = np.r_[np.ones(n_distinct), np.zeros(50)]
    removed, _ = dedup_prefilter({"eps": 0.05, "clusters": 2, "keep": keep}, scores, rows, keys, seed=1)
    assert removed[originals].all() == kept_is_copy
    assert (~removed[n_distinct:]).all() == kept_is_copy


def test_default_keep_rule_keeps_the_member_farthest_from_the_centroid():
    rng = np.random.default_rng(3)
    centre = np.r_[1.0, np.zeros(7)].astype(np.float32)
    rows = np.vstack([centre + 0.3 * rng.normal(size=8), centre + 0.3 * rng.normal(size=8)]).astype(np.float32)
    rows = np.vstack([rows, rows + 1e-4]).astype(np.float32)  # two pairs of duplicates, one cluster
    sim, of = duplicate_similarity(rows, np.zeros(4), np.random.default_rng(0), clusters=1)
    unit = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    mean = unit.mean(0) / np.linalg.norm(unit.mean(0))
    removed = sim > 0.95
    for a, b in ((0, 2), (1, 3)):
        assert removed[a] != removed[b]
        far = a if unit[a] @ mean < unit[b] @ mean else b  # the reference keeps the least typical member
        assert not removed[far]


def test_policy_alone_meets_the_budget_deterministically_and_prunes_duplicates_first():
    rows, keys, originals = planted(n_distinct=300, n_copies=60)
    scores = np.random.default_rng(0).random(len(rows))
    budget = 300
    run = lambda seed: select_with_reasons(scores, np.zeros(len(rows)), budget, "semdedup", seed=seed,
                                           embeddings=rows, keys=keys, clusters=3)
    first, again = run(5), run(5)
    assert first.keep.sum() == budget and (first.keep == again.keep).all()
    both_kept = first.keep[300:] & first.keep[originals]
    assert both_kept.mean() <= 0.05  # one member of (nearly) every duplicate pair goes first
    assert all(r.startswith("pruned: near-duplicate of k") for r in first.reasons[~first.keep])


def test_class_balanced_semdedup_keeps_each_class_share():
    rows, keys, _ = planted(n_distinct=200, n_copies=40)
    labels = np.arange(len(rows)) % 2
    out = select_with_reasons(np.zeros(len(rows)), labels, 120, "semdedup", class_balanced=True, seed=0,
                              embeddings=rows, keys=keys, clusters=2)
    assert out.keep.sum() == 120 and out.keep[labels == 0].sum() == 60


def test_bad_eps_is_one_clear_error():
    rows, keys, _ = planted(n_distinct=20, n_copies=2)
    with pytest.raises(DatacullError, match="select.dedup.eps"):
        dedup_prefilter({"eps": 1.5}, np.zeros(len(rows)), rows, keys, seed=0)


def test_prefilter_composes_with_keep_hard_in_the_select_stage(make_cfg):
    overrides = ("metrics=[random]", "select.policy=keep_hard", "select.fraction=0.5", "select.dedup.eps=0.3",
                 "select.dedup.clusters=2")
    score(make_cfg(*overrides))
    path = select(make_cfg(*overrides))["selection"]
    table, summary = pd.read_parquet(path), parquet_config(path)["summary"]
    dup = table["reason"].str.startswith("pruned: near-duplicate of ")
    assert summary["deduplicated"] == dup.sum() > 0
    kept_keys = set(table.loc[table.kept, "key"])
    assert {r.rsplit(" ", 1)[1] for r in table.loc[dup, "reason"]} <= kept_keys | set(table.loc[~dup, "key"])
    rest = table[~dup]
    assert table.kept.sum() == summary["budget"] == round(0.5 * len(rest))
    assert rest.loc[rest.kept, "score"].min() >= rest.loc[~rest.kept, "score"].max()  # keep_hard on the rest
