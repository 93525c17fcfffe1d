"""Scaling-law fits, bootstrap intervals, the Pareto frontier and the fit table (datacull.scaling)."""
import numpy as np
import pandas as pd
import pytest

from datacull.errors import DatacullError
from datacull.scaling import (FIT_COLUMNS, Fit, bootstrap_fit, fit_law, fit_table, local_slopes,
                              pareto_frontier, write_fits)

N = np.geomspace(500, 60000, 9)
POWER = ("power", 3.0, 0.5, 0.02)          # err = 3 n^-0.5 + 0.02
EXPO = ("exponential", 0.5, 8000.0, 0.03)  # err = 0.5 exp(-n / 8000) + 0.03


def noisy(law, a, b, c, n=N, noise=0.03, seed=1):
    """The true curve times log-normal multiplicative noise of about `noise` (3%)."""
    clean = Fit(law, a, b, c, 0, 0.0, 0.0).predict(n)
    return clean * np.exp(np.random.default_rng(seed).normal(0.0, noise, np.size(n)))


@pytest.mark.parametrize("truth", [POWER, EXPO], ids=["power", "exponential"])
@pytest.mark.parametrize("noise_seed", [1, 2, 3])
def test_fit_recovers_planted_parameters_and_aic_prefers_true_law(truth, noise_seed):
    law, a, b, c = truth
    err = noisy(*truth, seed=noise_seed)
    fit = fit_law(N, err, law)
    assert fit.law == law and fit.n_points == N.size
    assert fit.b == pytest.approx(b, rel=0.15)
    assert fit.c == pytest.approx(c, rel=0.3, abs=0.004)
    assert fit.a == pytest.approx(a, rel=0.5)
    # the fitted curve follows the truth within the noise everywhere
    truth_curve = Fit(law, a, b, c, 0, 0.0, 0.0).predict(N)
    assert np.max(np.abs(np.log(fit.predict(N) / truth_curve))) < 0.05
    # residuals are the log misfit, AIC = n log(rss/n) + 2k
    assert fit.rss_log == pytest.approx(np.sum(np.log(err / fit.predict(N)) ** 2), rel=1e-6)
    assert fit.aic == pytest.approx(N.size * np.log(fit.rss_log / N.size) + 6, rel=1e-9)
    other = fit_law(N, err, "exponential" if law == "power" else "power")
    assert fit.aic < other.aic - 4  # decisively preferred


def test_pure_power_law_fit_and_local_slopes_equal_minus_b():
    n = np.array([100, 300, 1000, 5000, 20000, 80000.0])
    err = 2.0 * n ** -0.37
    np.testing.assert_allclose(local_slopes(n, err), -0.37, atol=1e-12)
    np.testing.assert_allclose(local_slopes(n[::-1], err[::-1]), -0.37, atol=1e-12)  # order does not matter
    fit = fit_law(n, err, "power")
    assert fit.b == pytest.approx(0.37, abs=1e-4) and fit.a == pytest.approx(2.0, rel=1e-3) and fit.c < 1e-5
    # a floor flattens the local slope: |slope| shrinks as n grows
    slopes = local_slopes(n, err + 0.01)
    assert np.all(np.diff(slopes) > 0) and slopes[0] > -0.37


def test_residual_bootstrap_intervals_cover_truth_and_are_tight():
    for truth in (POWER, EXPO):
        law, a, b, c = truth
        ci = bootstrap_fit(N, noisy(*truth), law, n_boot=120, seed=0)
        assert set(ci) == {"a", "b", "c"}
        for name, value in zip("abc", (a, b, c)):
            lo, hi = ci[name]
            assert lo <= value <= hi, (law, name, lo, value, hi)
        assert ci["b"][1] - ci["b"][0] < 0.5 * b  # informative, not just wide


def test_seed_bootstrap_resamples_whole_curves():
    law, a, b, c = POWER
    seeds = np.arange(6)
    frame = pd.DataFrame([{"n_train": n, "test_error": e, "seed": s}
                          for s in seeds for n, e in zip(N, noisy(*POWER, noise=0.05, seed=10 + s))])
    ci = bootstrap_fit(frame, "power", n_boot=80, seed=0)
    for name, value in zip("abc", (a, b, c)):
        assert ci[name][0] <= value <= ci[name][1]
    # identical replicate curves: resampling seeds changes nothing, so the interval collapses
    same = pd.DataFrame([{"n_train": n, "test_error": e, "seed": s}
                         for s in seeds for n, e in zip(N, noisy(*POWER, noise=0.05, seed=10))])
    ci_same = bootstrap_fit(same, "power", n_boot=20, seed=0)
    assert ci_same["b"][1] - ci_same["b"][0] < 1e-4
    # array form with explicit seeds gives the same answer as the frame form
    ci_arr = bootstrap_fit(frame["n_train"], frame["test_error"], "power", seeds=frame["seed"], n_boot=80, seed=0)
    assert ci_arr == ci
    assert np.isnan(bootstrap_fit(frame, "power", n_boot=0)["a"][0])


def test_pareto_frontier_picks_best_point_at_each_size_and_is_monotone():
    rows = []

    def add(fraction, size, errors):
        for seed, e in enumerate(errors):
            rows.append({"data": "d", "model": "m", "metric": "all" if fraction == 1 else "el2n",
                         "policy": "all" if fraction == 1 else "keep_hard", "fraction": fraction,
                         "subset_size": size, "n_train": int(round(fraction * size)), "seed": seed,
                         "test_error": e})

    add(1.0, 1000, [0.30, 0.32])   # n=1000, mean 0.31
    add(1.0, 4000, [0.20, 0.22])   # n=4000, mean 0.21
    add(0.5, 1000, [0.36, 0.36])   # n=500
    add(0.5, 4000, [0.15, 0.17])   # n=2000, mean 0.16: better than unpruned at 4000
    add(0.25, 4000, [0.40, 0.42])  # n=1000, mean 0.41: worse than the unpruned 1000 run
    add(0.25, 1000, [0.50, 0.50])  # n=250
    front = pareto_frontier(pd.DataFrame(rows))
    assert list(front.columns) == ["n_train", "test_error", "fraction", "subset_size", "attained"]
    assert front["n_train"].tolist() == [250, 500, 1000, 2000, 4000]
    np.testing.assert_allclose(front["test_error"], [0.50, 0.36, 0.31, 0.16, 0.16])
    assert front["fraction"].tolist() == [0.25, 0.5, 1.0, 0.5, 0.5]  # at 4000 the 2000-example point wins
    assert front["subset_size"].tolist() == [1000, 1000, 1000, 4000, 4000]
    assert front["attained"].tolist() == [True, True, True, True, False]
    assert np.all(np.diff(front["test_error"]) <= 0)
    bad = pd.DataFrame(rows).assign(metric=["x", "y"] * (len(rows) // 2))
    with pytest.raises(DatacullError, match="mix several metric"):
        pareto_frontier(bad)


def test_pareto_frontier_is_monotone_on_random_curves():
    rng = np.random.default_rng(0)
    rows = [{"fraction": f, "subset_size": s, "n_train": int(f * s), "seed": seed,
             "test_error": float(rng.uniform(0.05, 0.5))}
            for f in (0.1, 0.3, 0.7, 1.0) for s in (1000, 3000, 9000) for seed in (0, 1)]
    front = pareto_frontier(pd.DataFrame(rows))
    assert np.all(np.diff(front["test_error"]) <= 0) and front["n_train"].is_monotonic_increasing
    means = (pd.DataFrame(rows).groupby(["fraction", "subset_size"])
             .agg(n=("n_train", "first"), e=("test_error", "mean")))
    for n, e in zip(front["n_train"], front["test_error"]):  # independent brute force
        assert e == pytest.approx(means[means["n"] <= n]["e"].min())


def unpruned_error(n, scale=2.0):
    return scale * n ** -0.3


def results_frame(beats_power_law=True, data="d1", scale=2.0, seeds=(0, 1)):
    """Planted results: unpruned err = scale n^-0.3; pruned curves at fraction f follow
    scale (f s)^-0.3 (s/1000)^(-0.4 (1 - f)) (steeper than the unpruned power law) or, as a control,
    the unpruned law of n_train itself. A second metric has only 2 sizes (too short to fit)."""
    rows = []
    sizes = [1000, 2000, 4000, 8000, 16000]
    rng = np.random.default_rng(7)
    for seed in seeds:
        for s in sizes:
            rows.append(dict(data=data, model="m", recipe="r", metric="all", policy="all", fraction=1.0,
                             subset_size=s, n_train=s, class_balanced=False, seed=seed,
                             test_error=unpruned_error(s, scale) * np.exp(rng.normal(0, 0.01))))
            for f in (0.25, 0.5):
                n = int(f * s)
                e = unpruned_error(n, scale) * ((s / 1000) ** (-0.4 * (1 - f)) if beats_power_law else 1.0)
                rows.append(dict(data=data, model="m", recipe="r", metric="el2n", policy="keep_hard", fraction=f,
                                 subset_size=s, n_train=n, class_balanced=False, seed=seed,
                                 test_error=e * np.exp(rng.normal(0, 0.01))))
        for s in sizes[:2]:
            rows.append(dict(data=data, model="m", recipe="r", metric="ssp", policy="keep_easy", fraction=0.5,
                             subset_size=s, n_train=s // 2, class_balanced=False, seed=seed,
                             test_error=unpruned_error(s // 2, scale)))
    return pd.DataFrame(rows)


def test_fit_table_rows_skips_short_curves_and_measures_frontier_slope():
    table = fit_table(results_frame(), n_boot=10)
    assert list(table.columns) == FIT_COLUMNS
    curves = table[["metric", "policy", "curve"]].drop_duplicates().apply(tuple, axis=1).tolist()
    assert sorted(curves) == sorted([("all", "all", "unpruned"), ("el2n", "keep_hard", "f=0.25"),
                                     ("el2n", "keep_hard", "f=0.5"), ("el2n", "keep_hard", "frontier"),
                                     ("ssp", "keep_easy", "frontier")])
    # the ssp f=0.5 curve has 2 sizes: skipped, not an error (its frontier includes the f = 1 runs)
    assert len(table) == 10 and set(table["law"]) == {"power", "exponential"}
    for _, grp in table.groupby(["metric", "curve"]):
        assert sorted(grp["delta_aic"])[0] == 0.0 and (grp["delta_aic"] >= 0).all()
    power = table[(table["law"] == "power") & (table["metric"] != "ssp")].set_index("curve")
    assert power.loc["unpruned", "b"] == pytest.approx(0.3, abs=0.03)
    assert power.loc["unpruned", "mean_local_slope"] == pytest.approx(-0.3, abs=0.03)
    assert power.loc["unpruned", "n_points"] == 10 and power.loc["unpruned", "n_seeds"] == 2
    for f in (0.25, 0.5):  # planted per-fraction exponent 0.3 + 0.4 (1 - f)
        assert power.loc[f"f={f:g}", "b"] == pytest.approx(0.3 + 0.4 * (1 - f), abs=0.04)
        assert power.loc[f"f={f:g}", "fraction"] == f
    front = power.loc["frontier"]
    assert front["slope_vs_unpruned"] < -0.05  # planted: the frontier falls faster than the unpruned law
    assert front["b_lo"] <= front["b"] <= front["b_hi"]
    assert np.isnan(power.loc["unpruned", "slope_vs_unpruned"])
    # control: pruning that only moves along the unpruned power law has no slope advantage
    control = fit_table(results_frame(beats_power_law=False), laws=("power",), n_boot=0)
    ctrl = control[control["metric"] == "el2n"].set_index("curve").loc["frontier"]
    assert abs(ctrl["slope_vs_unpruned"]) < 0.02 and np.isnan(ctrl["b_lo"])


def test_fit_table_never_mixes_data_and_uses_unpruned_rows_for_class_balanced_groups():
    mixed = pd.concat([results_frame(data="d1", scale=2.0), results_frame(data="d2", scale=4.0)], ignore_index=True)
    cb = results_frame(data="d1").query("fraction < 1 and metric == 'el2n'").assign(class_balanced=True)
    table = fit_table(pd.concat([mixed, cb], ignore_index=True), laws=("power",), n_boot=0)
    unpruned = table[table["curve"] == "unpruned"].set_index("data")
    assert len(unpruned) == 2  # f = 1 rows are all class_balanced=False: one unpruned curve per data set
    assert unpruned.loc["d1", "a"] == pytest.approx(2.0, rel=0.15)
    assert unpruned.loc["d2", "a"] == pytest.approx(4.0, rel=0.15)
    fronts = table[(table["curve"] == "frontier") & (table["metric"] == "el2n")]
    assert sorted(zip(fronts["data"], fronts["class_balanced"])) == [("d1", False), ("d1", True), ("d2", False)]
    assert (fronts["slope_vs_unpruned"] < 0).all()


def test_write_fits_writes_the_table_as_csv(tmp_path):
    frame = results_frame()
    path = write_fits(frame, tmp_path / "out" / "fits.csv", laws=("power",), n_boot=0)
    back = pd.read_csv(path)
    expected = fit_table(frame, laws=("power",), n_boot=0)
    assert list(back.columns) == FIT_COLUMNS and len(back) == len(expected)
    np.testing.assert_allclose(back["b"], expected["b"])
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["fits.csv"]  # no temp file left


def test_bad_input_raises_datacull_error():
    with pytest.raises(DatacullError, match="at least 3 distinct n"):
        fit_law([100, 100, 200, 200], [0.3, 0.31, 0.2, 0.21], "power")
    with pytest.raises(DatacullError, match="unknown scaling law"):
        fit_law(N, noisy(*POWER), "logistic")
    with pytest.raises(DatacullError, match="must be > 0"):
        fit_law(N, np.r_[0.0, noisy(*POWER)[1:]], "power")
    with pytest.raises(DatacullError, match="different lengths"):
        fit_law(N, N[:-1], "power")
    with pytest.raises(DatacullError, match="which law"):
        bootstrap_fit(pd.DataFrame({"n_train": N, "test_error": noisy(*POWER)}))
    with pytest.raises(DatacullError, match="lacks column"):
        fit_table(results_frame().drop(columns=["recipe"]))
    with pytest.raises(DatacullError, match="outside"):
        fit_table(results_frame().assign(test_error=1.5))
    with pytest.raises(DatacullError, match="repeated"):
        local_slopes([1, 1, 2], [0.3, 0.2, 0.1])


def test_fit_table_drops_and_counts_zero_error_runs():
    frame = results_frame(seeds=(0,))
    zero = (frame["metric"] == "el2n") & (frame["fraction"] == 0.5) & (frame["subset_size"] == 16000)
    frame.loc[zero, "test_error"] = 0.0
    table = fit_table(frame, laws=("power",), n_boot=0).set_index(["metric", "curve"])
    row = table.loc[("el2n", "f=0.5")]
    assert row["n_zero_error"] == 1 and row["n_points"] == 4 and row["n_max"] == 4000
    assert table.loc[("all", "unpruned"), "n_zero_error"] == 0
