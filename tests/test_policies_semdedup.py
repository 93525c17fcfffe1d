"""SemDeDup (datacull/policies/semdedup.py): planted near-duplicates, the kept-member rule, reasons,
the select.dedup pre-filter in the select stage, class balance and determinism; `against=kept` (greedy)
against a planted chain and a plain O(m^2) walk."""
import numpy as np
import pandas as pd
import pytest

from datacull.errors import DatacullError
from datacull import layout
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


def chain(d=6):
    """a~b~c at cosine 0.97 / 0.97 with a-c at 2 * 0.97^2 - 1 = 0.88 (one plane of R^d)."""
    theta = np.arccos(0.97)
    rows = np.zeros((3, d), dtype=np.float32)
    rows[:, 0], rows[:, 1] = np.cos([0, theta, 2 * theta]), np.sin([0, theta, 2 * theta])
    return rows, np.array(["a", "b", "c"], dtype=object)


@pytest.mark.parametrize("against, removed_keys", [("earlier", ["b", "c"]), ("kept", ["b"])])
def test_chain_earlier_removes_both_links_kept_only_the_middle(against, removed_keys):
    rows, keys = chain()
    section = {"eps": 0.05, "clusters": 1, "keep": "hard", "against": against}
    removed, reasons = dedup_prefilter(section, np.array([3.0, 2.0, 1.0]), rows, keys, seed=0)  # order a, b, c
    assert list(keys[removed]) == removed_keys
    assert all(r == "pruned: near-duplicate of a" for r in reasons[removed])


def test_kept_still_removes_planted_duplicates_and_names_the_original():
    rows, keys, originals = planted()
    n_distinct = len(rows) - len(originals)
    cfg = {"eps": 0.05, "clusters": 4, "keep": "hard", "block": 64, "against": "kept"}
    scores = np.r_[np.ones(n_distinct), np.zeros(len(originals))]
    removed, reasons = dedup_prefilter(cfg, scores, rows, keys, seed=0)
    assert removed[n_distinct:].mean() >= 0.95 and removed[:n_distinct].mean() < 0.01
    for copy in np.flatnonzero(removed[n_distinct:]):
        assert reasons[n_distinct + copy] == f"pruned: near-duplicate of k{originals[copy]}"
    again, _ = dedup_prefilter(cfg, scores, rows, keys, seed=0)
    assert (removed == again).all()


def greedy_reference(rows, order, threshold):
    """Plain O(m^2) greedy walk in float64: (kept mask, kept member of highest similarity or -1)."""
    unit = rows.astype(np.float64) / np.linalg.norm(rows.astype(np.float64), axis=1, keepdims=True)
    kept, of, chosen = np.zeros(len(rows), dtype=bool), np.full(len(rows), -1), []
    for i in order:
        sims = [float(unit[i] @ unit[j]) for j in chosen]
        if sims and max(sims) > threshold:
            of[i] = chosen[int(np.argmax(sims))]
        else:
            kept[i] = True
            chosen.append(i)
    return kept, of


@pytest.mark.parametrize("block", [7, 2048])
def test_kept_equals_a_plain_greedy_walk_on_random_chains(block):
    rng = np.random.default_rng(4)
    base = rng.normal(size=(30, 8))
    noise = rng.uniform(0.1, 0.4, (170, 1)) * rng.normal(size=(170, 8))  # copies at many distances: chains
    rows = np.vstack([base, base[rng.integers(0, 30, 170)] + noise])
    rows, scores = rows.astype(np.float32), rng.permutation(len(rows)).astype(np.float64)
    keys = np.array([f"k{i}" for i in range(len(rows))], dtype=object)
    unit = rows.astype(np.float64) / np.linalg.norm(rows.astype(np.float64), axis=1, keepdims=True)
    assert np.abs(unit @ unit.T - 0.95).min() > 1e-5  # no pair at the threshold within float32 rounding
    section = {"eps": 0.05, "clusters": 1, "keep": "hard", "block": block}
    removed, reasons = dedup_prefilter({**section, "against": "kept"}, scores, rows, keys, seed=0)
    kept, of = greedy_reference(rows, np.argsort(-scores), 0.95)
    assert (removed == ~kept).all()
    assert list(reasons[removed]) == [f"pruned: near-duplicate of k{j}" for j in of[removed]]
    earlier, _ = dedup_prefilter({**section, "against": "earlier"}, scores, rows, keys, seed=0)
    assert earlier.sum() > removed.sum() > 20  # chains present: the two rules differ here


def test_kept_policy_bisects_eps_and_cuts_to_the_budget_deterministically():
    rows, keys, originals = planted(n_distinct=300, n_copies=60)
    scores = np.random.default_rng(0).random(len(rows))
    run = lambda budget, seed: select_with_reasons(scores, np.zeros(len(rows)), budget, "semdedup", seed=seed,
                                                   embeddings=rows, keys=keys, clusters=3, against="kept")
    first, again = run(300, 5), run(300, 5)
    assert first.keep.sum() == 300 and (first.keep == again.keep).all()
    assert (first.keep[300:] & first.keep[originals]).mean() <= 0.05
    named = [r.rsplit(" ", 1)[1] for r in first.reasons[~first.keep]]
    assert all(r.startswith("pruned: near-duplicate of k") for r in first.reasons[~first.keep])
    assert set(named) <= set(keys[first.keep])
    small = run(40, 1)  # far below the duplicates: bisection on eps among distinct examples
    assert small.keep.sum() == 40
    assert {r.rsplit(" ", 1)[1] for r in small.reasons[~small.keep]} <= set(keys[small.keep])
    tiny = run(2, 0)  # below one per cluster: a cluster's first member is cut, its cluster names no kept member
    why = tiny.reasons[~tiny.keep]
    assert tiny.keep.sum() == 2 and (why == "").any()
    assert {r.rsplit(" ", 1)[1] for r in why if r} <= set(keys[tiny.keep])


def test_bad_against_is_one_clear_error():
    rows, keys, _ = planted(n_distinct=20, n_copies=2)
    with pytest.raises(DatacullError, match="against"):
        dedup_prefilter({"eps": 0.05, "against": "later"}, np.zeros(len(rows)), rows, keys, seed=0)


def test_against_enters_the_selection_fingerprint_only_when_not_the_reference(make_cfg):
    for section in ("semdedup", "dedup"):
        base = ("select.policy=semdedup",) if section == "semdedup" else ("select.dedup.eps=0.05",)
        default = layout.selection_identity(make_cfg(*base))
        assert "against" not in default[section]  # selections made before the option keep their fingerprint
        greedy = make_cfg(*base, f"select.{section}.against=kept")
        assert layout.selection_tag(greedy) != layout.selection_tag(make_cfg(*base))
