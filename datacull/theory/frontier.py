"""Pareto frontier over the kept fraction, f_min(theta) and the keep-easy / keep-hard crossover.

Sorscher et al. (NeurIPS 2022, arXiv 2206.14486), section 2 and Figure 1: for a pruned dataset of
size alpha_prune, choosing the kept fraction f (and policy) that minimises the test error traces the
Pareto frontier; with a perfect metric it falls faster than the unpruned power law, with an
imperfect one (theta > 0) the optimal f stops shrinking at f_min(theta) and the frontier turns
back to a power law. Keep-easy wins when data are scarce (small alpha_tot), keep-hard when they
are abundant; `crossover_alpha` locates the switch.

All functions take a long table with the columns of theory.csv (source, policy, theta, f,
alpha_tot, alpha_prune, test_error, ...).
"""
from __future__ import annotations

import numpy as np
import pandas as pd


def pareto_frontier(table: pd.DataFrame, theta: float) -> pd.DataFrame:
    """Lower envelope over (f, policy) of the test error at each alpha_prune, for one probe angle.

    Returns alpha_prune, test_error, f, policy (the minimising choice), alpha_tot, unpruned
    (the f = 1 error at the same alpha_prune) and gain = unpruned / test_error.
    """
    rows = table[np.isclose(table["theta"], theta)]
    if rows.empty:
        raise ValueError(f"no rows for theta = {theta}")
    alpha = rows["alpha_prune"].round(10)
    best = rows.loc[rows.assign(_a=alpha).groupby("_a")["test_error"].idxmin()]
    unpruned = rows[rows["policy"] == "none"].assign(_a=lambda d: d["alpha_prune"].round(10))
    unpruned = unpruned.set_index("_a")["test_error"]
    out = best[["alpha_prune", "test_error", "f", "policy", "alpha_tot"]].copy()
    out["unpruned"] = unpruned.reindex(out["alpha_prune"].round(10)).to_numpy()
    out["gain"] = out["unpruned"] / out["test_error"]
    out.insert(0, "theta", theta)
    return out.sort_values("alpha_prune").reset_index(drop=True)


def f_min(frontier: pd.DataFrame, alpha_from: float | None = None) -> float:
    """f_min(theta): the smallest kept fraction the frontier uses with keep-hard.

    Beyond the break the optimal f no longer decreases, so the minimum over the keep-hard part of
    the frontier (optionally only for alpha_prune >= alpha_from) estimates f_min. For theta = 0 it
    is the smallest f of the grid (the frontier keeps shrinking f); NaN if keep-hard is never optimal.
    """
    hard = frontier[frontier["policy"] == "keep_hard"]
    if alpha_from is not None:
        hard = hard[hard["alpha_prune"] >= alpha_from]
    return float(hard["f"].min()) if not hard.empty else float("nan")


def break_alpha(frontier: pd.DataFrame, fraction: float) -> float:
    """The first alpha_prune from which the frontier keeps f at `fraction` (keep-hard), or NaN."""
    at_floor = (frontier["policy"] == "keep_hard") & np.isclose(frontier["f"], fraction)
    if not at_floor.any():
        return float("nan")
    return float(frontier.loc[at_floor, "alpha_prune"].min())


def crossover_alpha(table: pd.DataFrame, theta: float, f: float) -> float:
    """alpha_tot at which keep-hard starts to beat keep-easy for kept fraction f (NaN if no switch).

    Linear interpolation of err(keep_hard) - err(keep_easy) between the alpha_prune grid points
    where it changes sign from + (keep-easy better) to - (keep-hard better); alpha_tot = alpha/f.
    """
    rows = table[np.isclose(table["theta"], theta) & np.isclose(table["f"], f)]
    hard = rows[rows["policy"] == "keep_hard"].set_index(rows[rows["policy"] == "keep_hard"]["alpha_prune"].round(10))
    easy = rows[rows["policy"] == "keep_easy"].set_index(rows[rows["policy"] == "keep_easy"]["alpha_prune"].round(10))
    common = hard.index.intersection(easy.index).sort_values()
    if len(common) < 2:
        return float("nan")
    diff = hard.loc[common, "test_error"].to_numpy() - easy.loc[common, "test_error"].to_numpy()
    alphas = np.asarray(common, dtype=float)
    for i in range(len(diff) - 1):
        if diff[i] > 0 >= diff[i + 1]:
            a = alphas[i] + (alphas[i + 1] - alphas[i]) * diff[i] / (diff[i] - diff[i + 1])
            return float(a / f)
    return float("nan")
