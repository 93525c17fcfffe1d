"""`datacull report` and datacull.comparison: figures, tables, sections, errors."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf, open_dict
from scipy import stats

from datacull import comparison as cmp
from datacull.errors import DatacullError
from datacull.store import write_parquet_atomic

CLASSES = [str(c) for c in range(10)]


def synthetic_results(data: str = "digits", model: str = "resnet8", sizes=(300, 600, 1200), fractions=(0.3, 0.6),
                      metrics=("random", "el2n", "ssp"), policies=("keep_hard", "keep_easy"), seeds=(0, 1),
                      seed: int = 0, scale: float = 1.0) -> pd.DataFrame:
    """A plausible results table (columns of datacull.results.COLUMNS) from a planted model of pruning.

    Unpruned error 0.9 n^-0.45 + 0.01; keep-hard helps at large subsets and hurts at small ones,
    keep-easy the reverse (stronger for el2n than ssp; random has no effect); 8% multiplicative noise
    per run; error quantised to a 360-example test set. Keep-hard ssp nearly empties class 1 (a very
    typical class) at small fractions.
    """
    rng = np.random.default_rng(seed)
    strength = {"random": 0.0, "el2n": 0.5, "ssp": 0.3}
    difficulty = np.linspace(0.4, 1.6, len(CLASSES))  # class 0 easiest ... class 9 hardest
    rows = []

    def row(metric, policy, f, size, s):
        pool = rng.multinomial(size, np.full(len(CLASSES), 1 / len(CLASSES)))
        n_train = int(round(f * size))
        if metric in ("all", "random"):
            w = np.ones(len(CLASSES))
        else:
            w = difficulty ** (1.0 if policy == "keep_hard" else -1.0) * (1 if metric == "el2n" else 0.7)
            if metric == "ssp" and policy == "keep_hard":
                w[1] = 0.02
        share = pool * w / (pool * w).sum()
        kept = np.minimum(np.floor(share * n_train).astype(int), pool)
        while kept.sum() < n_train:  # hand out the remainder to classes with room
            room = np.flatnonzero(kept < pool)
            kept[room[np.argmax(share[room] * n_train - kept[room])]] += 1
        base = 0.9 * n_train ** -0.45 + 0.01
        g = math.log(size / 600.0)  # > 0: abundant data
        effect = strength.get(metric, 0.0) * (1 - f) * (g if policy == "keep_hard" else -g)
        err = base * math.exp(-effect) * math.exp(rng.normal(0, 0.08)) * scale
        err = min(round(err * 360) / 360, 1.0)
        epochs = 10
        rows.append({
            "run_id": f"{data}-{model}-{metric}-{policy}-{f:g}-{size}-{s}", "name": "placeholder", "data": data,
            "split": "train", "model": model, "recipe": "cpu", "metric": metric, "policy": policy, "fraction": f,
            "subset_size": size, "n_train": n_train, "class_balanced": False, "seed": s, "budget": "epochs",
            "epochs": epochs, "steps": epochs * math.ceil(n_train / 128), "test_error": err,
            "test_loss": round(3 * err + 0.05, 4),
            "per_class_error": json.dumps([round(min(1.0, err * d), 4) for d in difficulty]),
            "kept_per_class": json.dumps(kept.tolist()), "pool_per_class": json.dumps(pool.tolist()),
            "class_names": json.dumps(CLASSES), "train_seconds": 0.004 * n_train * epochs, "eval_seconds": 0.2,
            "selection": f"{metric}-{policy}-f{f:g}-n{size}-s{s}", "run_dir": "", "finished_at": "2026-01-01T00:00:00"})

    for size in sizes:
        for s in seeds:
            row("all", "all", 1.0, size, s)
            for metric in metrics:
                for policy in policies:
                    for f in fractions:
                        row(metric, policy, f, size, s)
    return pd.DataFrame(rows)


def synthetic_scores(path, n: int = 400, seed: int = 0, cost: bool = True):
    """A scores.parquet with three correlated metric columns plus non-metric extras, and cost metadata."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=n)
    frame = pd.DataFrame({"key": [f"k{i}" for i in range(n)], "index": np.arange(n), "label": rng.integers(0, 10, n),
                          "skip_reason": "", "random": rng.random(n), "el2n": base + 0.3 * rng.normal(size=n),
                          "ssp": -base + rng.normal(size=n), "memorization_se": rng.random(n),
                          "ssp_cluster": rng.integers(0, 5, n)})
    config = {"metrics": ["random", "el2n", "ssp"], "data": {"name": "digits"}, "seed": 0}
    if cost:
        config["cost"] = {"random": {"wall_seconds": 0.01, "cpu_seconds": 0.01, "device": "cpu"},
                          "el2n": {"wall_seconds": 42.0, "cpu_seconds": 80.0, "device": "cpu"},
                          "ssp": {"wall_seconds": 7.5, "cpu_seconds": 12.0, "device": "cpu"}}
    write_parquet_atomic(path, frame, fp="test", config=config)
    return frame


def _cfg(make_cfg, **report):
    cfg = make_cfg("data=digits")
    with open_dict(cfg):
        base = OmegaConf.to_container(cfg.report) if "report" in cfg else {}
        cfg.report = OmegaConf.create({**base, "n_boot": 4, "dpi": 60, **report})
    return cfg


# --------------------------------------------------------------------------------------- the stage
def test_report_writes_every_figure_table_and_page(make_cfg, tmp_path):
    from datacull.stages.report import report

    results = synthetic_results()
    table = tmp_path / "results.csv"
    results.to_csv(table, index=False)
    synthetic_scores(tmp_path / "scores.parquet")
    out = tmp_path / "report"
    paths = report(_cfg(make_cfg, results=[str(table)], scores=str(tmp_path / "scores.parquet"), out=str(out)))
    slug = "digits-train_resnet8_cpu_epochs"
    for name in ("scaling", "frontier", "compare", "balance", "cost"):
        assert paths[f"{name}_{slug}"] == out / f"{name}_{slug}.png"
        assert (out / f"{name}_{slug}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "spearman.png").is_file()
    page = (out / "index.html").read_text()
    assert page.count("data:image/png;base64,") == 6 and "<table" in page
    md = (out / "report.md").read_text()
    for name in ("scaling", "frontier", "compare", "balance", "cost"):
        assert f"]({name}_{slug}.png)" in md
    fits = pd.read_csv(out / "fits.csv")
    assert {"unpruned", "f=0.3", "f=0.6", "frontier"} <= set(fits["curve"])
    assert set(fits["law"]) == {"power", "exponential"}
    merged = pd.read_csv(out / "results.csv")
    assert len(merged) == len(results)
    # the Spearman matrix is over registered metric columns only, and matches scipy
    corr = pd.read_csv(out / "spearman.csv").set_index("metric")
    assert list(corr.columns) == ["random", "el2n", "ssp"]
    scores = pd.read_parquet(tmp_path / "scores.parquet")
    assert corr.loc["el2n", "ssp"] == pytest.approx(stats.spearmanr(scores["el2n"], scores["ssp"])[0])
    # the planted nearly-emptied class is flagged
    balance = pd.read_csv(out / "class_balance.csv")
    flagged = balance[balance["flagged"]]
    assert set(flagged["metric"]) == {"ssp"} and set(flagged["class"].astype(str)) == {"1"}
    cost = pd.read_csv(out / "cost.csv").set_index("metric")
    assert cost.loc["el2n", "scoring_wall_s"] == 42.0
    assert cost.loc["el2n", "train_s"] == pytest.approx(results.loc[results["metric"] == "el2n", "train_seconds"].sum())
    # unchanged inputs: skipped
    before = (out / "index.html").stat().st_mtime_ns
    report(_cfg(make_cfg, results=[str(table)], scores=str(tmp_path / "scores.parquet"), out=str(out)))
    assert (out / "index.html").stat().st_mtime_ns == before


def test_report_reads_the_experiments_rows_by_default(make_cfg, tmp_path):
    from datacull import layout
    from datacull.results import write_row
    from datacull.stages.report import report

    cfg = _cfg(make_cfg, laws=[])
    rows_dir = layout.results_rows_dir(cfg)
    for row in synthetic_results(sizes=(400,), seeds=(0,)).to_dict("records"):
        write_row(rows_dir, row)
    paths = report(cfg)
    assert paths["html"] == layout.report_dir(cfg) / "index.html"
    page = paths["html"].read_text()
    assert "No scores table found" in page and "one seed" in page


def test_data_and_model_groups_are_reported_apart(make_cfg, tmp_path):
    from datacull.stages.report import report

    a = synthetic_results(data="digits", model="resnet8", sizes=(400,), seeds=(0, 1), seed=1)
    b = synthetic_results(data="digits", model="resnet20", sizes=(400,), seeds=(0, 1), seed=2, scale=2.0)
    c = synthetic_results(data="fashion_mnist", model="resnet8", sizes=(400,), seeds=(0, 1), seed=3, scale=3.0)
    table = tmp_path / "results.csv"
    pd.concat([a, b, c]).to_csv(table, index=False)
    out = tmp_path / "rep"
    report(_cfg(make_cfg, results=[str(table)], out=str(out), laws=[]))
    for slug in ("digits-train_resnet8_cpu_epochs", "digits-train_resnet20_cpu_epochs",
                 "fashion_mnist-train_resnet8_cpu_epochs"):
        assert (out / f"compare_{slug}.png").is_file()
    diff = pd.read_csv(out / "difference_to_random.csv")
    assert len(diff) == 3 * 2 * 2 * 2  # 3 sections x (el2n, ssp) x 2 policies x 2 fractions
    # each section's differences come from its own rows only
    for frame, (data, model) in ((a, ("digits", "resnet8")), (b, ("digits", "resnet20")), (c, ("fashion_mnist", "resnet8"))):
        got = diff[(diff["data"] == data) & (diff["model"] == model) & (diff["metric"] == "el2n")
                   & (diff["policy_label"] == "keep_hard") & (diff["fraction"] == 0.3)]["diff_pp"].item()
        mine = frame[(frame["metric"] == "el2n") & (frame["policy"] == "keep_hard") & (frame["fraction"] == 0.3)]
        ref = frame[(frame["metric"] == "random") & (frame["policy"] == "keep_hard") & (frame["fraction"] == 0.3)]
        assert got == pytest.approx(100 * (ref["test_error"].mean() - mine["test_error"].mean()))


def test_no_results_is_one_clear_error(make_cfg, tmp_path):
    from datacull.stages.report import report

    with pytest.raises(DatacullError, match="datacull sweep"):
        report(_cfg(make_cfg))
    with pytest.raises(DatacullError, match="does not exist"):
        report(_cfg(make_cfg, results=[str(tmp_path / "nope.csv")]))
    empty = tmp_path / "rows"
    empty.mkdir()
    with pytest.raises(DatacullError, match="datacull sweep"):
        report(_cfg(make_cfg, results=[str(empty)]))
    with pytest.raises(DatacullError, match="report.interval"):
        report(_cfg(make_cfg, interval="wilson"))


# ----------------------------------------------------------------------------------------- tables
def _case(rows):
    frame = pd.DataFrame(rows, columns=["metric", "policy", "fraction", "seed", "test_error"])
    frame = frame.assign(data="d", model="m", subset_size=100, n_train=(frame["fraction"] * 100).round(),
                         class_balanced=False)
    return cmp.prepare_results(frame)


def test_difference_to_random_paired_t_on_a_constructed_case():
    # el2n minus random accuracy per seed: +0.02, +0.04, +0.03 (errors are 1 - accuracy)
    rnd = [0.20, 0.22, 0.25]
    el2n = [0.18, 0.18, 0.22]
    rows = [("random", "keep_hard", 0.5, s, e) for s, e in enumerate(rnd)]
    rows += [("el2n", "keep_hard", 0.5, s, e) for s, e in enumerate(el2n)]
    rows += [("all", "all", 1.0, s, 0.1) for s in range(3)]
    diff = cmp.difference_to_random(_case(rows))
    assert len(diff) == 1
    got = diff.iloc[0]
    d = np.array([0.02, 0.04, 0.03])
    half = stats.t.ppf(0.975, 2) * d.std(ddof=1) / math.sqrt(3)
    assert got["diff_pp"] == pytest.approx(3.0)
    assert got["lo_pp"] == pytest.approx(100 * (0.03 - half))
    assert got["hi_pp"] == pytest.approx(100 * (0.03 + half))
    assert got["interval"].startswith("paired t") and got["verdict"] == "above random"
    assert got["accuracy"] == pytest.approx(1 - np.mean(el2n)) and got["random_accuracy"] == pytest.approx(1 - np.mean(rnd))


def test_difference_to_random_welch_without_shared_seeds_and_none_with_one_seed():
    rows = [("random", "keep_easy", 0.3, s, e) for s, e in ((0, 0.30), (1, 0.31))]
    rows += [("ssp", "keep_easy", 0.3, s, e) for s, e in ((5, 0.40), (6, 0.41), (7, 0.42))]
    rows += [("ssp", "keep_easy", 0.6, 0, 0.2), ("random", "keep_easy", 0.6, 0, 0.25)]
    diff = cmp.difference_to_random(_case(rows)).set_index("fraction")
    a, b = 1 - np.array([0.40, 0.41, 0.42]), 1 - np.array([0.30, 0.31])
    welch = stats.ttest_ind(a, b, equal_var=False)
    ci = welch.confidence_interval(0.95)
    assert diff.loc[0.3, "interval"] == "Welch t"
    assert diff.loc[0.3, "lo_pp"] == pytest.approx(100 * ci.low) and diff.loc[0.3, "hi_pp"] == pytest.approx(100 * ci.high)
    assert diff.loc[0.3, "verdict"] == "below random"
    assert diff.loc[0.6, "diff_pp"] == pytest.approx(5.0) and math.isnan(diff.loc[0.6, "lo_pp"])
    assert diff.loc[0.6, "verdict"] == "no interval (one seed)"


def test_identical_differences_over_seeds_get_no_verdict():
    rows = [("random", "keep_hard", 0.5, s, e) for s, e in ((0, 0.30), (1, 0.20))]
    rows += [("ssp", "keep_hard", 0.5, s, e) for s, e in ((0, 0.25), (1, 0.15))]  # +5 pp on both seeds
    got = cmp.difference_to_random(_case(rows)).iloc[0]
    assert got["diff_pp"] == pytest.approx(5.0) and got["verdict"] == "no spread over seeds"


def test_difference_to_random_uses_random_of_another_policy_when_needed():
    rows = [("random", "keep_hard", 0.5, s, 0.3) for s in range(2)]
    rows += [("el2n", "ccs", 0.5, s, e) for s, e in ((0, 0.2), (1, 0.22))]
    diff = cmp.difference_to_random(_case(rows))
    assert diff.iloc[0]["reference"] == "random, other policy"
    assert diff.iloc[0]["diff_pp"] == pytest.approx(9.0)


def test_bootstrap_interval_contains_the_mean_and_shrinks_with_agreement():
    m, lo, hi = cmp.mean_interval([1.0, 2.0, 3.0, 4.0], method="bootstrap", n_boot=4000, seed=1)
    assert m == 2.5 and 1.0 <= lo < 2.5 < hi <= 4.0
    m, lo, hi = cmp.mean_interval([2.0, 2.0, 2.0], method="bootstrap")
    assert lo == hi == 2.0
    assert all(math.isnan(v) for v in cmp.mean_interval([1.0])[1:])


def test_class_balance_matches_counts_by_hand():
    rows = [{"metric": "el2n", "policy": "keep_hard", "fraction": 0.5, "seed": s, "test_error": 0.1, "data": "d",
             "model": "m", "subset_size": 100, "n_train": 50, "kept_per_class": json.dumps(k),
             "pool_per_class": json.dumps([50, 50]), "class_names": json.dumps(["cat", "dog"])}
            for s, k in ((0, [48, 2]), (1, [46, 4]))]
    bal = cmp.class_balance(cmp.prepare_results(pd.DataFrame(rows)), empty_ratio=0.2)
    dog = bal[bal["class"] == "dog"].iloc[0]
    assert dog["kept"] == 6 and dog["pool"] == 100
    assert dog["kept_share"] == pytest.approx(0.06) and dog["ratio"] == pytest.approx(0.12) and dog["flagged"]
    assert not bal[bal["class"] == "cat"].iloc[0]["flagged"]


def test_prepare_results_rejects_tables_without_required_columns():
    with pytest.raises(DatacullError, match="lacks column"):
        cmp.prepare_results(pd.DataFrame({"metric": ["x"]}))
    with pytest.raises(DatacullError, match="empty"):
        cmp.prepare_results(pd.DataFrame())


def test_tiny_digits_sweep_then_report_draws_every_figure(make_cfg):
    """End to end: a real (tiny) sweep on digits, then the report from its rows and scores."""
    from datacull.stages.sweep import sweep

    cfg = make_cfg("data=digits", "sweep.metrics=[random,ssp]", "sweep.policies=[keep_hard,keep_easy]",
                   "sweep.fractions=[0.5,1.0]", "sweep.sizes=[300,600,1200]", "sweep.seeds=[0]", "sweep.report=true",
                   "model=resnet8", "model.width=4", "train.epochs=1", "train.batch_size=64")
    with open_dict(cfg):
        cfg.report = OmegaConf.merge(cfg.get("report") or {}, {"n_boot": 4, "dpi": 60})
    paths = sweep(cfg)
    out = paths["html"].parent
    for name in ("scaling", "frontier", "compare", "balance", "cost"):
        assert len(list(out.glob(f"{name}_digits-train_*.png"))) == 1
    assert (out / "spearman.png").is_file() and (out / "report.md").is_file()
    merged = pd.read_csv(out / "results.csv")
    assert len(merged) == 3 * (2 * 2 + 1)
    cost = pd.read_csv(out / "cost.csv").set_index("metric")
    assert cost.loc["ssp", "scoring_wall_s"] > 0  # recorded by `datacull score`


def test_policies_side_by_side_get_their_own_figure_and_table(make_cfg, tmp_path):
    from datacull.stages.report import report

    results = synthetic_results(sizes=(600,), metrics=("ssp",), policies=("keep_hard", "keep_easy", "random", "ccs"))
    table = tmp_path / "results.csv"
    results.to_csv(table, index=False)
    out = tmp_path / "report"
    paths = report(_cfg(make_cfg, results=[str(table)], out=str(out)))
    slug = "digits-train_resnet8_cpu_epochs"
    assert paths[f"policies_{slug}"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"](policies_{slug}.png)" in (out / "report.md").read_text()
    curves = cmp.accuracy_curves(cmp.prepare_results(results))
    table = cmp.policy_comparison(curves)
    assert set(table["policy_label"]) == {"keep_hard", "keep_easy", "ccs"}  # random is the reference
    row = table[(table["policy_label"] == "ccs") & (table["fraction"] == 0.3)].iloc[0]
    acc = lambda policy: 1 - results[(results["policy"] == policy) & (results["fraction"] == 0.3)].groupby("seed")["test_error"].mean().mean()
    assert row["accuracy"] == pytest.approx(acc("ccs"))
    assert row["diff_pp"] == pytest.approx(100 * (acc("ccs") - acc("random")))
