"""Tables and figures of the scaling / metric-comparison report (`datacull report`).

Reproduces the analysis figures of Sorscher et al., "Beyond neural scaling laws: beating power law
scaling via data pruning" (NeurIPS 2022, arXiv 2206.14486) from training result rows:

* :func:`plot_scaling` (Figure 3): test error vs examples kept, log-log, one panel per metric and
  policy, one line per fraction kept, fitted power laws dashed;
* :func:`plot_frontier`: the Pareto frontier of each metric and policy against the unpruned curve and
  its power law, with :func:`slope_table` giving the fitted exponents and local log-log slopes;
* :func:`plot_comparison` (Figure 5A): test accuracy vs fraction kept, one line per metric, random in
  black, with :func:`difference_to_random` (each metric minus random, with 95% intervals over seeds);
* :func:`plot_spearman`: Spearman rank correlation between the metric columns of a scores table;
* :func:`plot_class_balance`: the share of each class every selection kept (pruning can empty classes);
* :func:`plot_cost`: seconds of scoring and of the training runs of each metric.

Results of different data, model, training recipe or budget rule are never mixed: :func:`sections`
splits a results table into groups that are analysed apart. The scaling fits come from
:mod:`datacull.scaling`. Everything here is a pure function of DataFrames plus an output path.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Iterable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib import colors as mcolors  # noqa: E402
from matplotlib import ticker  # noqa: E402

from datacull.errors import DatacullError  # noqa: E402
from datacull.store import atomic_path  # noqa: E402

# a results table is split into sections by these columns; nothing is averaged across sections
SECTION_KEYS = ("data", "split", "model", "recipe", "budget")
REQUIRED = ("data", "model", "metric", "policy", "fraction", "subset_size", "n_train", "seed", "test_error")
INTERVALS = ("t", "bootstrap")
UNPRUNED = "all"
REFERENCE = "random"
_TOL = 1e-9
# policies that rank by one score and cut (Sorscher et al.): the panels of the metric comparison
RANKING_POLICIES = ("keep_hard", "keep_easy", "keep_hard (balanced)", "keep_easy (balanced)")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*")


# ------------------------------------------------------------------------------------------ inputs
def prepare_results(results: pd.DataFrame) -> pd.DataFrame:
    """A clean copy of a results table: typed columns, defaults for optional ones, a `policy_label`.

    Optional columns get defaults (split "train", recipe/budget "unknown", class_balanced False,
    train_seconds 0). `policy_label` is the policy, suffixed " (balanced)" for class-balanced
    selections; it names the curves and panels. Raises DatacullError when required columns are
    missing or the table is empty.
    """
    if not isinstance(results, pd.DataFrame) or results.empty:
        raise DatacullError("the results table is empty; run `datacull sweep` or `datacull train` first")
    missing = [c for c in REQUIRED if c not in results.columns]
    if missing:
        raise DatacullError(f"the results table lacks column(s) {', '.join(missing)}; it must come from "
                            "`datacull train` / `datacull sweep` (results/rows/*.json or results.csv)")
    res = results.copy()
    defaults = {"split": "train", "recipe": "unknown", "budget": "unknown", "class_balanced": False,
                "train_seconds": 0.0, "name": ""}
    for col, value in defaults.items():
        if col not in res.columns:
            res[col] = value
        res[col] = res[col].fillna(value)
    for col in ("data", "split", "model", "recipe", "budget", "metric", "policy"):
        res[col] = res[col].astype(str)
    res["class_balanced"] = res["class_balanced"].map(_as_bool)
    res["fraction"] = res["fraction"].astype(float).round(6)
    res["subset_size"] = res["subset_size"].astype(float).round().astype(int)
    res["n_train"] = res["n_train"].astype(float)
    res["seed"] = res["seed"].astype(int)
    res["test_error"] = res["test_error"].astype(float)
    res["train_seconds"] = res["train_seconds"].astype(float)
    bad = ~res["test_error"].between(0.0, 1.0)
    if bad.any():
        raise DatacullError(f"{int(bad.sum())} result row(s) have test_error outside [0, 1]")
    unpruned = res["fraction"] >= 1.0 - _TOL
    res.loc[unpruned, "metric"] = UNPRUNED
    res.loc[unpruned, "policy"] = UNPRUNED
    res["policy_label"] = [p + (" (balanced)" if b and p != UNPRUNED else "")
                           for p, b in zip(res["policy"], res["class_balanced"])]
    return res


def _as_bool(value) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value)


def sections(results: pd.DataFrame) -> list[tuple[dict, pd.DataFrame]]:
    """Split a prepared results table into groups of one (data, split, model, recipe, budget) each.

    Returns [(key dict, rows)], sorted by key. Results of different groups are never averaged together.
    """
    out = []
    for key, rows in results.groupby(list(SECTION_KEYS), sort=True, dropna=False):
        out.append((dict(zip(SECTION_KEYS, key)), rows.reset_index(drop=True)))
    return out


def section_title(key: dict) -> str:
    """Human title of a section, e.g. "fashion_mnist-train · resnet8 · recipe cpu · budget epochs"."""
    return f"{key['data']}-{key['split']} · {key['model']} · recipe {key['recipe']} · budget {key['budget']}"


def section_slug(key: dict) -> str:
    """File-name-safe tag of a section."""
    raw = f"{key['data']}-{key['split']}_{key['model']}_{key['recipe']}_{key['budget']}"
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", raw)


def metric_order(results: pd.DataFrame) -> list[str]:
    """The pruning metrics of a results table: random first, then alphabetical (unpruned excluded)."""
    names = sorted(set(results["metric"]) - {UNPRUNED})
    return ([REFERENCE] if REFERENCE in names else []) + [m for m in names if m != REFERENCE]


def policy_order(results: pd.DataFrame) -> list[str]:
    """The policy labels of a results table, keep_hard and keep_easy first (unpruned excluded)."""
    labels = sorted(set(results["policy_label"]) - {UNPRUNED})
    first = [p for p in RANKING_POLICIES if p in labels]
    return first + [p for p in labels if p not in first]


def metric_colors(metrics: Iterable[str]) -> dict[str, tuple]:
    """A stable colour per metric: random black, the others from tab10/tab20 in the given order."""
    others = [m for m in metrics if m != REFERENCE]
    cmap = plt.get_cmap("tab10" if len(others) <= 10 else "tab20")
    colors = {m: cmap(i % cmap.N) for i, m in enumerate(others)}
    colors[REFERENCE] = (0.0, 0.0, 0.0, 1.0)
    return colors


def _fraction_colors(fractions: Iterable[float]) -> dict[float, tuple]:
    fr = sorted(f for f in set(fractions) if f < 1.0 - _TOL)
    cols = plt.cm.viridis(np.linspace(0.0, 0.85, max(len(fr), 1)))
    out = {f: tuple(c) for f, c in zip(fr, cols)}
    out[1.0] = (0.0, 0.0, 0.0, 1.0)
    return out


# ------------------------------------------------------------------------------------- statistics
def mean_interval(values, method: str = "t", level: float = 0.95, n_boot: int = 2000,
                  seed: int = 0) -> tuple[float, float, float]:
    """(mean, lo, hi): the mean of replicate values with a `level` interval for it.

    method "t": mean +- t_{(1+level)/2, n-1} * sd / sqrt(n) (Student t over seeds); "bootstrap":
    percentile interval of the mean over `n_boot` resamples of the values. With fewer than 2 values
    the bounds are NaN (no interval from one seed).
    """
    from scipy import stats

    _check_method(method)
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return math.nan, math.nan, math.nan
    m = float(v.mean())
    if v.size < 2:
        return m, math.nan, math.nan
    if method == "t":
        half = float(stats.t.ppf((1 + level) / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))
        return m, m - half, m + half
    rng = np.random.default_rng(seed)
    means = rng.choice(v, size=(n_boot, v.size), replace=True).mean(axis=1)
    lo, hi = np.percentile(means, [(1 - level) / 2 * 100, (1 + level) / 2 * 100])
    return m, float(lo), float(hi)


def _check_method(method: str) -> None:
    if method not in INTERVALS:
        raise DatacullError(f"unknown interval method {method!r}; use one of {', '.join(INTERVALS)}")


def difference_interval(a: pd.Series, b: pd.Series, method: str = "t", level: float = 0.95,
                        n_boot: int = 2000, seed: int = 0) -> dict:
    """Mean of `a` minus mean of `b` (values indexed by seed) with a `level` interval over seeds.

    Seeds present in both (the same seed draws the same subset and initialisation) are paired: with
    at least 2 shared seeds the interval is that of the mean paired difference (t or bootstrap over
    the shared seeds; unshared seeds are dropped). Otherwise, with at least 2 seeds on each side, it
    is Welch's t interval (or an independent bootstrap of both means). With one seed on a side there
    is no interval (NaN bounds). Returns {diff, lo, hi, n_a, n_b, how}.
    """
    from scipy import stats

    _check_method(method)
    a = a.groupby(level=0).mean().dropna()
    b = b.groupby(level=0).mean().dropna()
    out = {"n_a": int(a.size), "n_b": int(b.size)}
    if a.empty or b.empty:
        return {**out, "diff": math.nan, "lo": math.nan, "hi": math.nan, "how": "missing"}
    shared = a.index.intersection(b.index)
    if shared.size >= 2:
        d = (a.loc[shared] - b.loc[shared]).to_numpy(float)
        m, lo, hi = mean_interval(d, method, level, n_boot, seed)
        how = f"paired {'t' if method == 't' else 'bootstrap'}, {shared.size} seeds"
        return {**out, "diff": m, "lo": lo, "hi": hi, "how": how}
    diff = float(a.mean() - b.mean())
    if a.size < 2 or b.size < 2:
        return {**out, "diff": diff, "lo": math.nan, "hi": math.nan, "how": "one seed: no interval"}
    if method == "t":
        va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
        se = math.sqrt(va + vb)
        dof = (va + vb) ** 2 / (va ** 2 / (a.size - 1) + vb ** 2 / (b.size - 1)) if se > 0 else a.size + b.size - 2
        half = float(stats.t.ppf((1 + level) / 2, dof) * se)
        return {**out, "diff": diff, "lo": diff - half, "hi": diff + half, "how": "Welch t"}
    rng = np.random.default_rng(seed)
    da = rng.choice(a.to_numpy(float), size=(n_boot, a.size)).mean(axis=1)
    db = rng.choice(b.to_numpy(float), size=(n_boot, b.size)).mean(axis=1)
    lo, hi = np.percentile(da - db, [(1 - level) / 2 * 100, (1 + level) / 2 * 100])
    return {**out, "diff": diff, "lo": float(lo), "hi": float(hi), "how": "unpaired bootstrap"}


def accuracy_curves(results: pd.DataFrame, method: str = "t", level: float = 0.95) -> pd.DataFrame:
    """Test accuracy vs fraction kept per (metric, policy_label, subset_size): mean over seeds + interval.

    The unpruned runs (f = 1) of each subset size are appended to every metric's curve, so every
    line ends at the same point. Columns: metric, policy_label, subset_size, fraction, n_train,
    accuracy, lo, hi, n_seeds. One results section at a time.
    """
    pruned = results[results["metric"] != UNPRUNED]
    unpruned = results[results["metric"] == UNPRUNED]
    rows = []
    for (metric, label, size, fraction), g in pruned.groupby(["metric", "policy_label", "subset_size", "fraction"]):
        rows.append(_acc_row(metric, label, size, fraction, g, method, level))
    for (metric, label, size), _ in pruned.groupby(["metric", "policy_label", "subset_size"]):
        g = unpruned[unpruned["subset_size"] == size]
        if not g.empty:
            rows.append(_acc_row(metric, label, size, 1.0, g, method, level))
    cols = ["metric", "policy_label", "subset_size", "fraction", "n_train", "accuracy", "lo", "hi", "n_seeds"]
    return pd.DataFrame(rows, columns=cols).sort_values(["policy_label", "subset_size", "metric", "fraction"],
                                                       ignore_index=True)


def _acc_row(metric, label, size, fraction, g, method, level) -> dict:
    per_seed = 1.0 - g.groupby("seed")["test_error"].mean()
    m, lo, hi = mean_interval(per_seed.to_numpy(), method, level)
    return {"metric": metric, "policy_label": label, "subset_size": int(size), "fraction": float(fraction),
            "n_train": float(g["n_train"].mean()), "accuracy": m, "lo": lo, "hi": hi, "n_seeds": int(per_seed.size)}


def difference_to_random(results: pd.DataFrame, method: str = "t", level: float = 0.95, n_boot: int = 2000,
                         seed: int = 0) -> pd.DataFrame:
    """Each metric's test accuracy minus random's at the same policy, subset size and fraction kept.

    In accuracy percentage points (positive = the metric beats random), with a `level` interval over
    seeds from :func:`difference_interval` (paired by seed where both have the seed). The reference
    is random under the same policy label (random keep-hard and keep-easy are both random subsets);
    when random was run under other policies only, random of any policy with the same class balance
    (pooled per seed) is used and `reference` says so. f = 1 (unpruned, identical for every metric)
    is left out. Takes the rows of one results section (see :func:`sections`). Columns:
    policy_label, subset_size, fraction, metric, accuracy, random_accuracy, diff_pp, lo_pp, hi_pp,
    n_seeds, n_seeds_random, interval, reference, verdict ("above random" / "below random" when
    the interval excludes 0, "indistinguishable", "no interval (one seed)", "no spread over seeds"
    when every paired seed gave exactly the same difference, "no random reference").
    """
    cols = ["policy_label", "subset_size", "fraction", "metric", "accuracy", "random_accuracy", "diff_pp", "lo_pp",
            "hi_pp", "n_seeds", "n_seeds_random", "interval", "reference", "verdict"]
    pruned = results[(results["metric"] != UNPRUNED) & (results["fraction"] < 1.0 - _TOL)]
    ref_all = pruned[pruned["metric"] == REFERENCE]
    rows = []
    for (label, size, fraction, metric), g in pruned.groupby(["policy_label", "subset_size", "fraction", "metric"]):
        if metric == REFERENCE:
            continue
        at = ref_all[(ref_all["subset_size"] == size) & (ref_all["fraction"] == fraction)]
        ref = at[at["policy_label"] == label]
        reference = "random, same policy"
        if ref.empty:
            balanced = bool(g["class_balanced"].iloc[0])
            ref = at[at["class_balanced"] == balanced]
            reference = "random, other policy" if not ref.empty else "none"
        acc = 1.0 - g.set_index("seed")["test_error"]
        racc = 1.0 - ref.set_index("seed")["test_error"]
        d = difference_interval(acc, racc, method, level, n_boot, seed)
        lo, hi = d["lo"], d["hi"]
        if not np.isfinite(d["diff"]):
            verdict = "no random reference"
        elif not (np.isfinite(lo) and np.isfinite(hi)):
            verdict = "no interval (one seed)"
        elif hi - lo <= 1e-12:  # every seed gave the same difference: a zero-width interval says nothing
            verdict = "no spread over seeds"
        elif lo > 0:
            verdict = "above random"
        elif hi < 0:
            verdict = "below random"
        else:
            verdict = "indistinguishable"
        rows.append({"policy_label": label, "subset_size": int(size), "fraction": float(fraction), "metric": metric,
                     "accuracy": float(acc.groupby(level=0).mean().mean()),
                     "random_accuracy": float(racc.groupby(level=0).mean().mean()) if not racc.empty else math.nan,
                     "diff_pp": 100 * d["diff"], "lo_pp": 100 * lo, "hi_pp": 100 * hi, "n_seeds": d["n_a"],
                     "n_seeds_random": d["n_b"], "interval": d["how"], "reference": reference, "verdict": verdict})
    return pd.DataFrame(rows, columns=cols)


def policy_comparison(curves: pd.DataFrame) -> pd.DataFrame:
    """Each selection policy's accuracy beside the random policy's, per metric, subset size and fraction.

    `curves` from :func:`accuracy_curves`. The reference is the `random` policy at the same subset
    size and fraction (it ignores the metric, so any metric's random-policy runs serve), else the
    `random` metric. Columns: metric, subset_size, fraction, policy_label, accuracy,
    random_accuracy, diff_pp (accuracy points; positive = better than random), n_seeds.
    """
    cols = ["metric", "subset_size", "fraction", "policy_label", "accuracy", "random_accuracy", "diff_pp", "n_seeds"]
    pruned = curves[curves["fraction"] < 1.0 - _TOL]
    rows = []
    for (metric, size, fraction, label), g in pruned.groupby(["metric", "subset_size", "fraction", "policy_label"]):
        if label == REFERENCE or metric == REFERENCE:
            continue
        at = pruned[(pruned["subset_size"] == size) & (pruned["fraction"] == fraction)]
        ref = at[at["policy_label"] == REFERENCE]
        ref = ref if not ref.empty else at[at["metric"] == REFERENCE]
        random_acc = float(ref["accuracy"].mean()) if not ref.empty else math.nan
        acc = float(g["accuracy"].iloc[0])
        rows.append({"metric": metric, "subset_size": int(size), "fraction": float(fraction), "policy_label": label,
                     "accuracy": acc, "random_accuracy": random_acc, "diff_pp": 100 * (acc - random_acc),
                     "n_seeds": int(g["n_seeds"].iloc[0])})
    return pd.DataFrame(rows, columns=cols)


def spearman_matrix(scores: pd.DataFrame, metrics: Iterable[str]) -> pd.DataFrame:
    """Spearman rank correlation between the given metric columns of a scores table.

    Pairwise complete observations (an example with NaN in one column is left out of that pair only).
    Raises DatacullError when fewer than 2 of the metrics are columns of the table.
    """
    cols = [m for m in metrics if m in scores.columns]
    if len(cols) < 2:
        raise DatacullError(f"a rank-correlation heatmap needs at least 2 metric columns; the scores table has "
                            f"{cols or 'none'}; score more metrics with `datacull score metrics=[...]`")
    return scores[cols].astype(float).corr(method="spearman")


def _json_list(value) -> list:
    if isinstance(value, (list, tuple, np.ndarray)):
        return list(value)
    if value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() == "":
        return []
    try:
        parsed = json.loads(str(value))
    except ValueError:
        return []
    return parsed if isinstance(parsed, list) else []


def class_names_of(results: pd.DataFrame) -> list[str]:
    """Class names from the `class_names` column (JSON list), else "0".."C-1" from the count columns."""
    if "class_names" in results.columns:
        for value in results["class_names"]:
            names = _json_list(value)
            if names:
                return [str(n) for n in names]
    width = 0
    for col in ("kept_per_class", "pool_per_class"):
        if col in results.columns:
            width = max([width] + [len(_json_list(v)) for v in results[col]])
    return [str(i) for i in range(width)]


def class_balance(results: pd.DataFrame, empty_ratio: float = 0.2, subset_size: int | None = None) -> pd.DataFrame:
    """Share of each class kept by every pruned selection (summed over seeds), and nearly emptied classes.

    For each (metric, policy_label, fraction) at `subset_size` (None = the largest subset size of the
    section): kept_share[c] = sum over seeds of kept_per_class[c] / sum of pool_per_class[c], and
    ratio[c] = kept_share[c] / overall kept share (1 = the class keeps its proportion). A class is
    flagged as nearly emptied when ratio < `empty_ratio`. Long table with columns metric,
    policy_label, fraction, subset_size, class_index, class, kept, pool, kept_share, ratio, flagged.
    Empty when the rows carry no per-class counts.
    """
    cols = ["metric", "policy_label", "fraction", "subset_size", "class_index", "class", "kept", "pool",
            "kept_share", "ratio", "flagged"]
    if not {"kept_per_class", "pool_per_class"} <= set(results.columns):
        return pd.DataFrame(columns=cols)
    pruned = results[(results["metric"] != UNPRUNED) & (results["fraction"] < 1.0 - _TOL)]
    if pruned.empty:
        return pd.DataFrame(columns=cols)
    size = int(pruned["subset_size"].max()) if subset_size is None else int(subset_size)
    pruned = pruned[pruned["subset_size"] == size]
    names = class_names_of(results)
    rows = []
    for (metric, label, fraction), g in pruned.groupby(["metric", "policy_label", "fraction"]):
        kept = [_json_list(v) for v in g["kept_per_class"]]
        pool = [_json_list(v) for v in g["pool_per_class"]]
        pairs = [(k, p) for k, p in zip(kept, pool) if k and len(k) == len(p)]
        if not pairs:
            continue
        k = np.sum([np.asarray(a, float) for a, _ in pairs], axis=0)
        p = np.sum([np.asarray(b, float) for _, b in pairs], axis=0)
        overall = k.sum() / max(p.sum(), 1.0)
        share = np.divide(k, p, out=np.full_like(k, np.nan), where=p > 0)
        ratio = share / overall if overall > 0 else np.full_like(share, np.nan)
        for c in range(len(k)):
            rows.append({"metric": metric, "policy_label": label, "fraction": float(fraction), "subset_size": size,
                         "class_index": c, "class": names[c] if c < len(names) else str(c), "kept": int(k[c]),
                         "pool": int(p[c]), "kept_share": share[c], "ratio": ratio[c],
                         "flagged": bool(np.isfinite(ratio[c]) and ratio[c] < empty_ratio)})
    return pd.DataFrame(rows, columns=cols)


def cost_table(results: pd.DataFrame, scoring: dict | None, metrics: Iterable[str] | None = None) -> pd.DataFrame:
    """Seconds each metric cost: scoring (from the scores table's `cost` metadata) and its training runs.

    `scoring`: {metric: {"wall_seconds", "cpu_seconds", "device"}} or None. Training seconds are the
    sum of `train_seconds` over the metric's result rows; the unpruned (f = 1) runs, shared by every
    metric, are their own row "all (unpruned)". Columns: metric, scoring_wall_s, scoring_cpu_s,
    device, train_runs, train_s, total_s (scoring wall + training).
    """
    scoring = scoring or {}
    names = list(metrics) if metrics is not None else metric_order(results)
    names = names + [m for m in scoring if m not in names]
    rows = []
    for m in names + [UNPRUNED]:
        runs = results[results["metric"] == m]
        if m == UNPRUNED and runs.empty:
            continue
        info = scoring.get(m, {}) if m != UNPRUNED else {}
        wall = float(info.get("wall_seconds", math.nan))
        train_s = float(runs["train_seconds"].sum()) if not runs.empty else 0.0
        rows.append({"metric": "all (unpruned)" if m == UNPRUNED else m, "scoring_wall_s": wall,
                     "scoring_cpu_s": float(info.get("cpu_seconds", math.nan)), "device": str(info.get("device", "")),
                     "train_runs": int(len(runs)), "train_s": train_s,
                     "total_s": (0.0 if math.isnan(wall) else wall) + train_s})
    return pd.DataFrame(rows, columns=["metric", "scoring_wall_s", "scoring_cpu_s", "device", "train_runs",
                                       "train_s", "total_s"])


def slope_table(results: pd.DataFrame, fits: pd.DataFrame) -> pd.DataFrame:
    """Per metric and policy: the Pareto frontier's fitted power law and slopes against the unpruned curve.

    From :func:`datacull.scaling.fit_table` rows of one section (`fits`) and the section's results:
    the unpruned curve's power-law exponent b [95% interval], then per (metric, policy_label) the
    frontier's b [interval], the law preferred by AIC, its mean log-log slope, the difference of
    its slope to the unpruned one over their common n range (negative = frontier falls faster;
    about 0 by construction when the frontier passes through the unpruned points at both ends of
    that range), `vs_unpruned_law_pct`: the median % difference between the Pareto-optimal PRUNED
    points and the unpruned power law at the same n, inside the n range of the unpruned runs
    (negative = pruning a larger pool beats training on an unpruned set of the same size), and
    the local log-log slopes between consecutive Pareto-optimal points (steepening = beating the
    power law).
    """
    from datacull.scaling import local_slopes, pareto_frontier

    cols = ["metric", "policy_label", "curve", "points", "b_power", "b_lo", "b_hi", "preferred_law", "delta_aic_other",
            "mean_slope", "slope_vs_unpruned", "vs_unpruned_law_pct", "local_slopes"]
    rows = []
    unpruned = results[results["metric"] == UNPRUNED]
    law = _fit_row(fits, "unpruned", "", "", False) if fits is not None and not fits.empty else None

    def _vs_law(frontier) -> float:
        """Median % difference of Pareto-optimal pruned points to the unpruned power law, inside its range."""
        if law is None or frontier is None:
            return math.nan
        pts = frontier[(frontier["fraction"] < 1.0 - _TOL) & (frontier["n_train"] >= law["n_min"] - _TOL)
                       & (frontier["n_train"] <= law["n_max"] + _TOL)]
        if pts.empty:
            return math.nan
        pred = _law_of(law).predict(pts["n_train"].to_numpy(float))
        return float(np.median(100 * (pts["test_error"].to_numpy(float) / pred - 1)))

    def _row(metric, label, curve_rows, points, slope_vs, frontier=None):
        power = curve_rows[curve_rows["law"] == "power"]
        best = curve_rows.sort_values("delta_aic").iloc[0] if not curve_rows.empty else None
        other = curve_rows[curve_rows["law"] != (best["law"] if best is not None else "")]
        local = ""
        if frontier is not None and len(frontier) >= 2:
            fr = frontier[frontier["test_error"] > 0]
            if len(fr) >= 2:
                local = ", ".join(f"{s:.2f}" for s in local_slopes(fr["n_train"], fr["test_error"]))
        return {"metric": metric, "policy_label": label, "curve": "unpruned" if metric == UNPRUNED else "frontier",
                "points": points,
                "b_power": float(power["b"].iloc[0]) if not power.empty else math.nan,
                "b_lo": float(power["b_lo"].iloc[0]) if not power.empty else math.nan,
                "b_hi": float(power["b_hi"].iloc[0]) if not power.empty else math.nan,
                "preferred_law": best["law"] if best is not None else "",
                "delta_aic_other": float(other["delta_aic"].min()) if not other.empty else math.nan,
                "mean_slope": float(curve_rows["mean_local_slope"].iloc[0]) if not curve_rows.empty else math.nan,
                "slope_vs_unpruned": slope_vs,
                "vs_unpruned_law_pct": _vs_law(frontier) if metric != UNPRUNED else math.nan, "local_slopes": local}

    fit_rows = fits if fits is not None and not fits.empty else pd.DataFrame(columns=["curve", "law", "metric",
                                                                                    "policy", "class_balanced"])
    if not unpruned.empty:
        means = unpruned.groupby("n_train", as_index=False)["test_error"].mean()
        rows.append(_row(UNPRUNED, UNPRUNED, fit_rows[fit_rows["curve"] == "unpruned"], len(means), math.nan, means))
    pruned = results[results["metric"] != UNPRUNED]
    for (metric, label), g in pruned.groupby(["metric", "policy_label"]):
        policy, balanced = g["policy"].iloc[0], bool(g["class_balanced"].iloc[0])
        family = pd.concat([g, unpruned], ignore_index=True)
        frontier = pareto_frontier(family)
        frontier = frontier[frontier["attained"]]
        mine = fit_rows[(fit_rows["curve"] == "frontier") & (fit_rows["metric"] == metric)
                        & (fit_rows["policy"] == policy) & (fit_rows["class_balanced"].map(_as_bool) == balanced)]
        slope_vs = float(mine["slope_vs_unpruned"].iloc[0]) if not mine.empty else math.nan
        rows.append(_row(metric, label, mine, len(frontier), slope_vs, frontier))
    return pd.DataFrame(rows, columns=cols)


# ---------------------------------------------------------------------------------------- figures
def save_figure(fig, path: Path, dpi: int = 110) -> Path:
    """Save a matplotlib figure as PNG atomically and close it."""
    with atomic_path(Path(path), suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def _grid(n_panels: int, ncols: int, w: float = 3.4, h: float = 2.8, sharex=True, sharey=True):
    ncols = max(1, min(ncols, n_panels))
    nrows = max(1, math.ceil(n_panels / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(w * ncols + 0.6, h * nrows + 0.9), squeeze=False,
                             sharex=sharex, sharey=sharey, layout="constrained")
    flat = axes.ravel()
    for ax in flat[n_panels:]:
        ax.set_visible(False)
    return fig, axes, flat[:n_panels]


def _g_formatter(value, _pos=None) -> str:
    if value <= 0:
        return ""
    if value >= 1000:
        return f"{value / 1000:g}k"
    return f"{value:.3g}"


def _log_axes(ax, x: bool = True, y: bool = True) -> None:
    """Log scale with plain-number tick labels (e.g. 0.05, 0.07, 0.1); call after plotting.

    The tick density follows the visible range: 1-1.5-2-3-5-7 within about a decade, 1-2-5 up to a few
    decades, powers of ten beyond, so short ranges (typical of error curves) still get several labels.
    """
    for on, axis, setter, getter in ((x, ax.xaxis, ax.set_xscale, ax.get_xlim),
                                     (y, ax.yaxis, ax.set_yscale, ax.get_ylim)):
        if not on:
            continue
        setter("log")
        ax.autoscale_view()
        lo, hi = getter()
        decades = math.log10(hi / lo) if lo > 0 and hi > lo else 3.0
        subs = (1.0, 1.5, 2.0, 3.0, 5.0, 7.0) if decades < 1.3 else (1.0, 2.0, 5.0) if decades < 3.0 else (1.0,)
        axis.set_major_locator(ticker.LogLocator(base=10, subs=subs))
        axis.set_major_formatter(ticker.FuncFormatter(_g_formatter))
        axis.set_minor_locator(ticker.LogLocator(base=10, subs=np.arange(1, 10)))
        axis.set_minor_formatter(ticker.NullFormatter())
    ax.grid(True, which="major", alpha=0.3)
    ax.grid(True, which="minor", alpha=0.1)


def _bars(pts: pd.DataFrame) -> np.ndarray:
    """Non-negative (below, above) error-bar lengths from the err / lo / hi columns."""
    return np.maximum(np.vstack([pts["err"] - pts["lo"], pts["hi"] - pts["err"]]).astype(float), 0.0)


def _point_means(rows: pd.DataFrame) -> pd.DataFrame:
    """Seed mean, min, max of test error per (fraction, subset_size), at the mean n_train."""
    g = rows.groupby(["fraction", "subset_size"])
    out = g.agg(n_train=("n_train", "mean"), err=("test_error", "mean"), lo=("test_error", "min"),
                hi=("test_error", "max"), seeds=("seed", "nunique")).reset_index()
    return out.sort_values("n_train")


def _fit_row(fits: pd.DataFrame, curve: str, metric: str, policy: str, balanced: bool, law: str = "power"):
    if fits is None or fits.empty:
        return None
    m = fits[(fits["curve"] == curve) & (fits["law"] == law)]
    if curve != "unpruned":
        m = m[(m["metric"] == metric) & (m["policy"] == policy) & (m["class_balanced"].map(_as_bool) == balanced)]
    return None if m.empty else m.iloc[0]


def _law_of(row):
    """A :class:`datacull.scaling.Fit` from one row of a fit table."""
    from datacull.scaling import Fit

    return Fit(law=row["law"], a=float(row["a"]), b=float(row["b"]), c=float(row["c"]), n_points=int(row["n_points"]),
               rss_log=float(row["rss_log"]), aic=float(row["aic"]))


def _draw_fit(ax, row, color, ls="--", lw=1.2, label=None) -> None:
    if row is None or not np.isfinite(row["a"]):
        return
    fit = _law_of(row)
    n = np.geomspace(float(row["n_min"]), float(row["n_max"]), 60)
    ax.plot(n, fit.predict(n), ls=ls, color=color, lw=lw, label=label)


def _panels(results: pd.DataFrame) -> list[tuple[str, str]]:
    """(metric, policy_label) panels present in the pruned rows, metrics in metric_order."""
    pruned = results[results["metric"] != UNPRUNED]
    present = set(zip(pruned["metric"], pruned["policy_label"]))
    return [(m, p) for m in metric_order(results) for p in policy_order(results) if (m, p) in present]


def _ncols(results: pd.DataFrame, n_panels: int) -> int:
    n_pol = max(1, len(policy_order(results)))
    return n_pol if n_pol >= 3 or n_panels <= 2 * n_pol else 2 * n_pol


def _positive(frame: pd.DataFrame, col: str = "err") -> pd.DataFrame:
    return frame[frame[col] > 0]


def plot_scaling(results: pd.DataFrame, fits: pd.DataFrame | None, path: Path, title: str = "",
                 dpi: int = 110) -> Path:
    """Figure 3 of Sorscher et al.: test error vs examples kept (log-log), one panel per metric and policy.

    One line per fraction kept (viridis, small f dark), the unpruned runs (f = 1) in black in every
    panel; points are seed means with min-max bars; the fitted power law of each curve is dashed
    (only curves with 3 or more distinct sizes are fitted). Zero-error points cannot be shown on a
    log axis and are left out.
    """
    panels = _panels(results)
    if not panels:
        raise DatacullError("no pruned runs to plot; the results hold only unpruned (f = 1) rows")
    fcol = _fraction_colors(results["fraction"])
    fig, _, flat = _grid(len(panels), _ncols(results, len(panels)))
    unpruned = _positive(_point_means(results[results["metric"] == UNPRUNED]))
    for ax, (metric, label) in zip(flat, panels):
        rows = results[(results["metric"] == metric) & (results["policy_label"] == label)]
        policy, balanced = rows["policy"].iloc[0], bool(rows["class_balanced"].iloc[0])
        for fraction, frows in rows.groupby("fraction"):
            pts = _positive(_point_means(frows))
            c = fcol[fraction]
            ax.errorbar(pts["n_train"], pts["err"], yerr=_bars(pts),
                        fmt="o-", color=c, ms=3.5, lw=1.0, capsize=2, elinewidth=0.8)
            _draw_fit(ax, _fit_row(fits, f"f={fraction:g}", metric, policy, balanced), c)
        if not unpruned.empty:
            ax.errorbar(unpruned["n_train"], unpruned["err"],
                        yerr=_bars(unpruned),
                        fmt="s-", color="black", ms=3.5, lw=1.2, capsize=2, elinewidth=0.8)
            _draw_fit(ax, _fit_row(fits, "unpruned", metric, policy, balanced), "black")
        ax.set_title(f"{metric} · {label}", fontsize=10)
    for ax in flat:
        _log_axes(ax)
        ax.tick_params(labelbottom=True, labelleft=True, labelsize=8)
    fig.supxlabel("examples kept (n_train = f × subset size)", fontsize=10)
    fig.supylabel("test error", fontsize=10)
    handles = [plt.Line2D([], [], color=fcol[f], marker="o", lw=1.5, label=f"f = {f:g}")
               for f in sorted(fcol) if f < 1.0]
    handles.append(plt.Line2D([], [], color="black", marker="s", lw=1.5, label="f = 1 (unpruned)"))
    handles.append(plt.Line2D([], [], color="grey", ls="--", lw=1.2, label="power-law fit"))
    fig.legend(handles=handles, loc="outside right center", fontsize=9, frameon=False)
    fig.suptitle(title, fontsize=11)
    return save_figure(fig, path, dpi)


def plot_frontier(results: pd.DataFrame, fits: pd.DataFrame | None, path: Path, title: str = "",
                  dpi: int = 110) -> Path:
    """The Pareto frontier of each metric and policy (coloured) against the unpruned curve (black).

    Grey dots: every pruned point (seed means); coloured line: the Pareto-optimal points (lowest
    error at each n over all fractions, :func:`datacull.scaling.pareto_frontier`) with their
    power-law fit dotted; black: the unpruned runs and their power-law fit dashed. The text gives
    the frontier's slope minus the unpruned one (negative = the frontier falls faster).
    """
    from datacull.scaling import pareto_frontier

    panels = _panels(results)
    if not panels:
        raise DatacullError("no pruned runs to plot; the results hold only unpruned (f = 1) rows")
    colors = metric_colors(metric_order(results))
    fig, _, flat = _grid(len(panels), _ncols(results, len(panels)))
    unpruned_rows = results[results["metric"] == UNPRUNED]
    unpruned = _positive(_point_means(unpruned_rows))
    for ax, (metric, label) in zip(flat, panels):
        rows = results[(results["metric"] == metric) & (results["policy_label"] == label)]
        policy, balanced = rows["policy"].iloc[0], bool(rows["class_balanced"].iloc[0])
        cloud = _positive(_point_means(rows))
        ax.plot(cloud["n_train"], cloud["err"], "o", color="0.7", ms=3, zorder=1)
        color = colors[metric] if metric != REFERENCE else (0.45, 0.45, 0.45, 1.0)
        frontier = pareto_frontier(pd.concat([rows, unpruned_rows], ignore_index=True))
        frontier = frontier[frontier["attained"] & (frontier["test_error"] > 0)]
        ax.plot(frontier["n_train"], frontier["test_error"], "o-", color=color, ms=4, lw=1.6, zorder=3)
        _draw_fit(ax, _fit_row(fits, "frontier", metric, policy, balanced), color, ls=":", lw=1.6)
        if not unpruned.empty:
            ax.plot(unpruned["n_train"], unpruned["err"], "s", color="black", ms=4, zorder=2)
            _draw_fit(ax, _fit_row(fits, "unpruned", metric, policy, balanced), "black")
        fr = _fit_row(fits, "frontier", metric, policy, balanced)
        un = _fit_row(fits, "unpruned", metric, policy, balanced)
        if fr is not None and un is not None:
            ax.text(0.97, 0.96, f"power-law b\nfrontier {fr['b']:.2f}\nunpruned {un['b']:.2f}", ha="right", va="top",
                    transform=ax.transAxes, fontsize=7.5, bbox=dict(facecolor="white", alpha=0.8, lw=0))
        ax.set_title(f"{metric} · {label}", fontsize=10)
    for ax in flat:
        _log_axes(ax)
        ax.tick_params(labelbottom=True, labelleft=True, labelsize=8)
    fig.supxlabel("examples kept (n_train)", fontsize=10)
    fig.supylabel("test error", fontsize=10)
    handles = [plt.Line2D([], [], color="0.7", marker="o", ls="", label="pruned runs (any f)"),
               plt.Line2D([], [], color="tab:blue", marker="o", lw=1.6, label="Pareto frontier (colour = metric)"),
               plt.Line2D([], [], color="tab:blue", ls=":", lw=1.6, label="frontier power-law fit"),
               plt.Line2D([], [], color="black", marker="s", ls="", label="unpruned"),
               plt.Line2D([], [], color="black", ls="--", label="unpruned power-law fit")]
    fig.legend(handles=handles, loc="outside right center", fontsize=9, frameon=False)
    fig.suptitle(title, fontsize=11)
    return save_figure(fig, path, dpi)


def plot_comparison(curves: pd.DataFrame, path: Path, title: str = "", level: float = 0.95,
                    dpi: int = 110, by: str = "metric") -> Path:
    """Figure 5A of Sorscher et al.: test accuracy vs fraction kept, random in black.

    `curves` from :func:`accuracy_curves`. `by="metric"`: one line per metric, one panel per policy
    (columns) and subset size (rows), random = the `random` metric. `by="policy"`: one line per
    selection policy, one panel per metric and subset size, random = the `random` policy (the
    policies compared side by side). Bars are the `level` intervals over seeds (none with one
    seed); lines are slightly offset along x so bars do not hide each other.
    """
    if curves.empty:
        raise DatacullError("no pruned runs to compare")
    if by not in ("metric", "policy"):
        raise ValueError(f"by must be metric or policy, not {by!r}")
    line_key, panel_key = ("metric", "policy_label") if by == "metric" else ("policy_label", "metric")
    present = set(curves[line_key])
    lines = [m for m in [REFERENCE] + sorted(present - {REFERENCE}) if m in present]
    colors = metric_colors(lines)
    panels = [p for p in RANKING_POLICIES if p in set(curves[panel_key])]
    panels += sorted(set(curves[panel_key]) - set(panels))
    sizes = sorted(set(curves["subset_size"]))
    # room for the legend beside the panels, and for a two-line title above a single panel
    fig, axes = plt.subplots(len(sizes), len(panels), figsize=(4.6 * len(panels) + 2.4, 3.4 * len(sizes) + 1.2),
                             squeeze=False, sharey="row", sharex=True, layout="constrained")
    fr = sorted(set(curves["fraction"]))
    span = (max(fr) - min(fr)) if len(fr) > 1 else 1.0
    step = min(0.012, 0.06 / max(len(lines) - 1, 1)) * span
    others = [m for m in lines if m != REFERENCE]
    slots = sorted(range(-len(others), len(others) + 1), key=lambda k: (abs(k), -k))[1:len(others) + 1]
    offsets = {m: k * step for m, k in zip(others, slots)}
    offsets[REFERENCE] = 0.0  # random sits on the tick; the others alternate around it
    for r, size in enumerate(sizes):
        for c, panel in enumerate(panels):
            ax = axes[r][c]
            sub = curves[(curves["subset_size"] == size) & (curves[panel_key] == panel)]
            for name in lines:
                line = sub[sub[line_key] == name].sort_values("fraction")
                if line.empty:
                    continue
                x = line["fraction"] + offsets[name]
                y = 100 * line["accuracy"]
                lo = np.clip(line["lo"].to_numpy(float), 0.0, 1.0)
                hi = np.clip(line["hi"].to_numpy(float), 0.0, 1.0)
                yerr = np.vstack([100 * (line["accuracy"] - lo), 100 * (hi - line["accuracy"])])
                yerr = np.maximum(np.where(np.isfinite(yerr), yerr, 0.0), 0.0)
                ref = name == REFERENCE
                marker = "o" if ref else _MARKERS[others.index(name) % len(_MARKERS)]
                ax.errorbar(x, y, yerr=yerr, fmt=marker + "-", color=colors[name], lw=2.4 if ref else 1.4, ms=4,
                            capsize=2, elinewidth=0.9, zorder=4 if ref else 3, label=name)
            ax.set_title(f"{panel} · subset {size:,}", fontsize=10)
            ax.set_xticks(fr)
            ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _p: f"{v:g}"))
            ax.grid(True, alpha=0.3)
            ax.tick_params(labelbottom=True, labelsize=8)
            if c == 0:
                ax.set_ylabel("test accuracy (%)")
            if r == len(sizes) - 1:
                ax.set_xlabel("fraction of data kept (f)")
        # y range from the means (wide few-seed intervals would otherwise flatten every line); bars that
        # reach past it are clipped at the panel edge
        row = curves[curves["subset_size"] == size]
        lo_m, hi_m = 100 * row["accuracy"].min(), 100 * row["accuracy"].max()
        pad = max(0.6 * (hi_m - lo_m), 1.0)
        axes[r][0].set_ylim(lo_m - pad, min(hi_m + pad, 100.5))
    handles, names = [], []
    for ax in axes.ravel():
        for h, n in zip(*ax.get_legend_handles_labels()):
            if n not in names:
                handles.append(h)
                names.append(n)
    order = [names.index(m) for m in lines if m in names]
    fig.legend([handles[i] for i in order], [names[i] for i in order], loc="outside right center",
               fontsize=9, frameon=False, title=by)
    seeds = int(curves["n_seeds"].max())
    note = (f"bars: {int(level * 100)}% interval over {seeds} seeds (clipped at the panel edge)" if seeds > 1
            else "one seed: no intervals")
    fig.suptitle(f"{title}\n{note}" if title else note, fontsize=11)
    return save_figure(fig, path, dpi)


def plot_spearman(corr: pd.DataFrame, path: Path, title: str = "", dpi: int = 110) -> Path:
    """Annotated heatmap of a Spearman rank-correlation matrix between metrics (red +1, blue -1)."""
    k = len(corr)
    size = max(3.6, 0.62 * k + 1.8)
    fig, ax = plt.subplots(figsize=(size + 1.0, size), layout="constrained")
    im = ax.imshow(corr.to_numpy(float), cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(k), corr.columns, rotation=45, ha="right", fontsize=9)
    ax.set_yticks(range(k), corr.index, fontsize=9)
    for i in range(k):
        for j in range(k):
            v = corr.iat[i, j]
            if np.isfinite(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8 if k <= 10 else 6.5,
                        color="white" if abs(v) > 0.6 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="Spearman rank correlation")
    ax.set_title(title or "rank correlation between metrics", fontsize=10)
    return save_figure(fig, path, dpi)


def plot_class_balance(balance: pd.DataFrame, path: Path, title: str = "", empty_ratio: float = 0.2,
                       dpi: int = 110) -> Path:
    """Heatmap of the kept share of each class relative to the overall kept share, per selection.

    Rows: metric / fraction (one panel per policy), columns: classes. Colour and number: the class's
    kept share divided by the selection's overall kept share (1 = proportional; below 1 the class
    lost more than its share). Cells below `empty_ratio` (nearly emptied classes) are outlined in red.
    """
    if balance.empty:
        raise DatacullError("no per-class counts in the results (kept_per_class / pool_per_class)")
    labels = [p for p in RANKING_POLICIES if p in set(balance["policy_label"])]
    labels += sorted(set(balance["policy_label"]) - set(labels))
    classes = balance.drop_duplicates("class_index").sort_values("class_index")["class"].tolist()
    n_cls = len(classes)
    order = {m: i for i, m in enumerate(metric_order(balance))}
    tables = []
    for label in labels:
        sub = balance[balance["policy_label"] == label]
        piv = sub.pivot_table(index=["metric", "fraction"], columns="class_index", values="ratio")
        piv = piv.reindex(sorted(piv.index, key=lambda t: (order.get(t[0], 99), t[1])))
        flags = sub.pivot_table(index=["metric", "fraction"], columns="class_index", values="flagged",
                                aggfunc="max").reindex(piv.index)
        tables.append((label, piv, flags))
    n_rows = max(len(t[1]) for t in tables)
    annotate = n_cls <= 30
    cell_w = 0.48 if annotate else max(0.06, 8.0 / n_cls)
    fig_w = len(labels) * (cell_w * n_cls + 2.2) + 1.2
    fig_h = 0.27 * n_rows + 2.0
    fig, axes = plt.subplots(1, len(labels), figsize=(fig_w, fig_h), squeeze=False, layout="constrained")
    vmax = max(2.0, float(np.nanmax(balance["ratio"].to_numpy(float))) if balance["ratio"].notna().any() else 2.0)
    norm = mcolors.TwoSlopeNorm(vmin=0.0, vcenter=1.0, vmax=vmax)
    im = None
    for ax, (label, piv, flags) in zip(axes[0], tables):
        values = piv.to_numpy(float)
        im = ax.imshow(values, cmap="RdBu", norm=norm, aspect="auto")
        ax.set_yticks(range(len(piv)), [f"{m}  f={f:g}" for m, f in piv.index], fontsize=8)
        if annotate:
            ax.set_xticks(range(n_cls), [str(c)[:12] for c in classes], rotation=45, ha="right", fontsize=8)
            for i in range(values.shape[0]):
                for j in range(values.shape[1]):
                    v = values[i, j]
                    if np.isfinite(v):
                        ax.text(j, i, f"{v:.1f}" if v < 9.95 else f"{v:.0f}", ha="center", va="center",
                                fontsize=7, color="white" if (v < 0.35 or v > vmax * 0.8) else "black")
        else:
            step = max(1, n_cls // 20)
            ax.set_xticks(range(0, n_cls, step), [str(classes[i])[:10] for i in range(0, n_cls, step)],
                          rotation=90, fontsize=6)
        fl = flags.to_numpy(float)
        for i, j in zip(*np.nonzero(np.nan_to_num(fl) > 0)):
            ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="red", lw=1.6))
        # separate metrics with a thin line
        metrics_seq = [m for m, _ in piv.index]
        for i in range(1, len(metrics_seq)):
            if metrics_seq[i] != metrics_seq[i - 1]:
                ax.axhline(i - 0.5, color="white", lw=2)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("class")
    size = int(balance["subset_size"].iloc[0])
    fig.colorbar(im, ax=list(axes[0]), fraction=0.03, pad=0.01, shrink=0.9,
                 label="kept share of class ÷ overall\n(1 = proportional)")
    what = (f"class balance of each selection (subset {size:,}); red box: the class keeps < {empty_ratio:g}× "
            "its proportional share (nearly emptied)")
    fig.suptitle(f"{title}\n{what}" if title else what, fontsize=10)
    return save_figure(fig, path, dpi)


def plot_cost(costs: pd.DataFrame, path: Path, title: str = "", dpi: int = 110) -> Path:
    """Horizontal bars (log scale) per metric: seconds of scoring and summed seconds of its training runs."""
    if costs.empty:
        raise DatacullError("no cost information to plot")
    k = len(costs)
    fig, ax = plt.subplots(figsize=(8.0, 0.55 * k + 1.6), layout="constrained")
    y = np.arange(k)
    h = 0.38
    score = costs["scoring_wall_s"].to_numpy(float)
    train = costs["train_s"].to_numpy(float)
    positive = np.concatenate([score[np.isfinite(score) & (score > 0)], train[train > 0]])
    left = max(positive.min() / 3, 1e-3) if positive.size else 0.1
    ax.set_xscale("log")
    ax.set_xlim(left, (positive.max() if positive.size else 1.0) * 10)
    ax.barh(y - h / 2, np.where(np.isfinite(score), score, 0), height=h, color="tab:orange",
            label="scoring the metric (wall seconds)")
    ax.barh(y + h / 2, train, height=h, color="tab:blue", label="its training runs here (sum of seconds)")
    for yi, (s_, t) in enumerate(zip(score, train)):
        if np.isfinite(s_):
            ax.text(max(s_, left), yi - h / 2, f" {s_:.3g} s", va="center", fontsize=7.5)
        elif costs["metric"].iloc[yi] != "all (unpruned)":
            ax.text(left, yi - h / 2, " scoring not recorded", va="center", fontsize=7.5, color="0.4")
        ax.text(max(t, left), yi + h / 2, f" {t:.3g} s", va="center", fontsize=7.5)
    ax.set_yticks(y, costs["metric"], fontsize=9)
    ax.invert_yaxis()
    ax.set_xlabel("seconds (log scale)")
    ax.grid(True, axis="x", which="major", alpha=0.3)
    fig.legend(fontsize=8.5, loc="outside lower center", ncol=2, frameon=False)
    fig.suptitle(title or "cost of each metric", fontsize=10)
    return save_figure(fig, path, dpi)
