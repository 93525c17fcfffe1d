"""Scaling-law fits, the Pareto frontier and local log-log slopes of pruned-data scaling curves.

This is the analysis side of Figure 3 of Sorscher et al., "Beyond neural scaling laws: beating power
law scaling via data pruning" (NeurIPS 2022): test error against the number of examples kept, one
curve per fraction kept f, the lower envelope over f (the Pareto frontier) and the unpruned power law.
Following SCIENCE.md section 6 two forms are fitted and compared, never assumed:

* power law with a floor:   err(n) = a * n**(-b) + c
* exponential-type law:     err(n) = a * exp(-n / tau) + c      (``Fit.b`` holds tau)

with a > 0, b (or tau) > 0 and 0 <= c < min(err). Fits minimise the squared residuals of log(err)
against log(model) (errors span decades, so relative misfit is what matters) with
``scipy.optimize.least_squares`` from several starting points; intervals come from a bootstrap over
seeds (whole replicate curves) or, with one seed, over log-space residuals; the two forms are compared
by AIC computed from the Gaussian log-space residuals (both have k = 3 parameters, so the AIC
difference is n * log(rss_1 / rss_2)).

"Better than power law" in the paper means the frontier's local log-log slope keeps steepening while
the unpruned curve's stays constant; :func:`local_slopes` and the ``slope_vs_unpruned`` column of
:func:`fit_table` measure exactly that.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from scipy.optimize import least_squares

from datacull.errors import DatacullError
from datacull.store import write_bytes_atomic

LAWS = ("power", "exponential")
K_PARAMS = 3
REQUIRED_COLUMNS = ("data", "model", "recipe", "metric", "policy", "fraction", "subset_size", "n_train",
                    "class_balanced", "seed", "test_error")
GROUP_COLUMNS = ("data", "model", "recipe", "class_balanced", "metric", "policy")
UNPRUNED_TOL = 1e-9
# Floor of the mean squared log residual used in the AIC: exact fits (3 points, 3 parameters) tie
# instead of racing to -inf on rounding noise. 1e-12 is a relative error of 1e-6, far below any real noise.
_MSE_FLOOR = 1e-12
FIT_COLUMNS = ["data", "model", "recipe", "metric", "policy", "class_balanced", "curve", "fraction", "law",
               "a", "b", "c", "a_lo", "a_hi", "b_lo", "b_hi", "c_lo", "c_hi", "n_points", "n_sizes", "n_seeds",
               "n_min", "n_max", "n_zero_error", "rss_log", "aic", "delta_aic", "mean_local_slope",
               "slope_vs_unpruned"]


@dataclass
class Fit:
    """One fitted scaling law (Sorscher et al. 2022, Fig. 3; SCIENCE.md section 6).

    ``law == "power"``: err = a * n**(-b) + c.  ``law == "exponential"``: err = a * exp(-n / b) + c
    (``b`` is the decay length tau, in examples). ``rss_log`` is the residual sum of squares of
    log(err) - log(model) over the ``n_points`` points; ``aic = n * log(rss / n) + 2 k`` with k = 3.
    """

    law: str
    a: float
    b: float
    c: float
    n_points: int
    rss_log: float
    aic: float

    def predict(self, n) -> np.ndarray:
        """Predicted error at example counts ``n`` (computed in log space, so huge ``a`` is harmless)."""
        n = np.asarray(n, dtype=float)
        log_a = math.log(self.a) if self.a > 0 else -np.inf
        if self.law == "power":
            term = np.exp(log_a - self.b * np.log(n))
        else:
            term = np.exp(log_a - n / self.b)
        return term + self.c

    def as_dict(self) -> dict:
        """The fit as a plain dict (for tables)."""
        return asdict(self)


# ----------------------------------------------------------------------------------------- fitting
class _Problem:
    """Log-space least squares for one law on one set of points, in well-conditioned coordinates.

    Parameters theta = (L, p, c). Power: err = exp(L) * (n / n0)**(-p) + c with n0 the geometric mean
    of n (so L and p are nearly uncorrelated). Exponential: err = exp(L) * exp(-(x - x_min) / exp(p)) + c
    with x = n / max(n) (so L is the error scale at the smallest n and exp(p) is tau / max(n)).
    """

    def __init__(self, n: np.ndarray, err: np.ndarray, law: str):
        self.law = law
        self.n = n
        self.log_y = np.log(err)
        self.c_max = float(err.min()) * (1.0 - 1e-9)
        if law == "power":
            self.n0 = float(np.exp(np.log(n).mean()))
            self.u = np.log(n / self.n0)
            self.p_bounds = (1e-6, 10.0)
        else:
            self.scale = float(n.max())
            x = n / self.scale
            self.x_min = float(x.min())
            self.v = x - self.x_min
            span = float(x.max() - x.min())
            # lower tau bound keeps a = exp(L + x_min / tau) representable; upper one is "linear decay".
            self.p_bounds = (math.log(max(span / 1000.0, self.x_min / 600.0)), math.log(1000.0))
        self.lower = np.array([-60.0, self.p_bounds[0], 0.0])
        self.upper = np.array([60.0, self.p_bounds[1], self.c_max])

    def _g(self, p: float) -> np.ndarray:
        return p * self.u if self.law == "power" else self.v * math.exp(-p)

    def log_model(self, theta: np.ndarray) -> np.ndarray:
        L, p, c = theta
        log_c = math.log(c) if c > 0 else -np.inf
        return np.logaddexp(L - self._g(p), log_c)

    def residuals(self, theta: np.ndarray) -> np.ndarray:
        return self.log_model(theta) - self.log_y

    def jacobian(self, theta: np.ndarray) -> np.ndarray:
        L, p, c = theta
        g = self._g(p)
        log_m = self.log_model(theta)
        share = np.exp(L - g - log_m)  # T / m, the power/exponential term's share of the model
        d_p = -share * self.u if self.law == "power" else share * g
        return np.column_stack([share, d_p, np.exp(-log_m)])

    def level(self, p: float, c: float) -> float:
        """The best L for fixed (p, c): mean of log(err - c) + g, clipped to the bounds."""
        L = float(np.mean(np.log(np.exp(self.log_y) - c) + self._g(p)))
        return float(np.clip(L, -59.0, 59.0))

    def start(self, p: float, c: float) -> np.ndarray:
        p = float(np.clip(p, self.p_bounds[0] + 1e-9, self.p_bounds[1] - 1e-9))
        c = float(np.clip(c, 0.0, self.c_max * (1 - 1e-6)))
        return np.array([self.level(p, c), p, c])

    def starts(self, count: int, rng: np.random.Generator) -> list[np.ndarray]:
        out = []
        if self.law == "power":
            slope = -np.polyfit(self.u, self.log_y, 1)[0]  # c = 0: exact log-log regression
            out += [self.start(slope if slope > 0 else 0.1, 0.0), self.start(0.5, 0.5 * self.c_max)]
            lo, hi = math.log(0.02), math.log(3.0)
        else:
            lo, hi = self.p_bounds[0], self.p_bounds[1] - math.log(100.0)
            out += [self.start(math.log(0.3), 0.0), self.start(math.log(0.3), 0.5 * self.c_max)]
        while len(out) < count:
            p = rng.uniform(lo, hi)
            p = math.exp(p) if self.law == "power" else p
            c = 0.0 if rng.random() < 0.25 else rng.uniform(0.0, 0.98) * self.c_max
            out.append(self.start(p, c))
        return out[:max(count, 1)]

    def solve(self, starts: Iterable[np.ndarray]) -> np.ndarray:
        best, best_cost = None, np.inf
        for x0 in starts:
            x0 = np.clip(x0, self.lower, self.upper)
            try:
                res = least_squares(self.residuals, x0, jac=self.jacobian, bounds=(self.lower, self.upper),
                                    method="trf", x_scale="jac", max_nfev=400)
            except (ValueError, FloatingPointError):  # pragma: no cover - a degenerate start
                continue
            if np.isfinite(res.cost) and res.cost < best_cost:
                best, best_cost = res.x, res.cost
        if best is None:  # pragma: no cover - every start failed
            raise DatacullError(f"the {self.law} fit failed from every starting point; check the curve's values")
        return best

    def to_fit(self, theta: np.ndarray) -> Fit:
        L, p, c = (float(v) for v in theta)
        rss = float(np.sum(self.residuals(theta) ** 2))
        m = len(self.log_y)
        aic = m * math.log(max(rss / m, _MSE_FLOOR)) + 2 * K_PARAMS
        if self.law == "power":
            a, b = math.exp(L + p * math.log(self.n0)), p
        else:
            tau_scaled = math.exp(p)
            a, b = math.exp(min(L + self.x_min / tau_scaled, 709.0)), tau_scaled * self.scale
        return Fit(law=self.law, a=a, b=b, c=c, n_points=m, rss_log=rss, aic=aic)


def _check_law(law: str) -> str:
    if law not in LAWS:
        raise DatacullError(f"unknown scaling law {law!r}; use one of {', '.join(LAWS)}")
    return law


def _clean_points(n, err, what: str = "curve") -> tuple[np.ndarray, np.ndarray]:
    try:
        n = np.asarray(n, dtype=float).ravel()
        err = np.asarray(err, dtype=float).ravel()
    except (TypeError, ValueError):
        raise DatacullError(f"{what}: n and err must be numbers") from None
    if n.shape != err.shape:
        raise DatacullError(f"{what}: n and err have different lengths ({n.size} vs {err.size})")
    if not (np.all(np.isfinite(n)) and np.all(np.isfinite(err))):
        raise DatacullError(f"{what}: n and err must be finite (drop NaN/inf rows first)")
    if np.any(n <= 0):
        raise DatacullError(f"{what}: every n (examples trained on) must be > 0")
    if np.any(err <= 0):
        raise DatacullError(f"{what}: every error must be > 0 for a log-space fit "
                            f"(found {int(np.sum(err <= 0))} zero or negative; drop them or use a larger test set)")
    distinct = np.unique(n).size
    if distinct < 3:
        raise DatacullError(f"{what}: a scaling fit needs at least 3 distinct n, got {distinct}; "
                            "add subset sizes or fractions")
    return n, err


def fit_law(n, err, law: str, starts: int = 20, seed: int = 0) -> Fit:
    """Fit ``law`` ("power" or "exponential", SCIENCE.md section 6) to the points (n, err).

    Minimises sum (log err_i - log model(n_i))**2 with ``scipy.optimize.least_squares`` (trust region,
    analytic Jacobian) from ``starts`` starting points (two deterministic, the rest seeded random) under
    a > 0, b > 0, 0 <= c < min(err), and returns the best. Repeated n (several seeds) are fitted as
    separate points. Raises DatacullError for fewer than 3 distinct n, non-positive values or an
    unknown law.
    """
    _check_law(law)
    n, err = _clean_points(n, err, f"{law} fit")
    problem = _Problem(n, err, law)
    theta = problem.solve(problem.starts(int(starts), np.random.default_rng(seed)))
    return problem.to_fit(theta)


# --------------------------------------------------------------------------------------- bootstrap
def _percentile_intervals(samples: list[Fit], level: float = 0.95) -> dict:
    if not samples:
        return {k: (math.nan, math.nan) for k in ("a", "b", "c")}
    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
    out = {}
    for k in ("a", "b", "c"):
        lo, hi = np.percentile([getattr(s, k) for s in samples], q)
        out[k] = (float(lo), float(hi))
    return out


def _envelope(n: np.ndarray, e: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Lower envelope of points (n, e): for each distinct n (sorted) the best e among points with n' <= n.

    Returns (distinct n, envelope value, index of the point attaining it, attained-at-this-n mask).
    """
    order = np.lexsort((e, n))
    ns, es = n[order], e[order]
    distinct, first = np.unique(ns, return_index=True)
    lowest = es[first]  # the lowest error at exactly each n
    running = np.minimum.accumulate(lowest)
    attained = np.ones(lowest.size, dtype=bool)
    attained[1:] = lowest[1:] < running[:-1]
    where = np.maximum.accumulate(np.where(attained, np.arange(lowest.size), 0))
    return distinct, running, order[first[where]], attained


class _Curve:
    """The points of one curve as arrays, rebuilt for any multiset of seeds (the seed bootstrap).

    ``points(w)`` with ``w[i]`` = how often seed i was drawn returns the fitted points: every run's
    (n, err) repeated w times, or, for a frontier, the attained points of the lower envelope of the
    per-(fraction, subset_size) mean errors over the drawn seeds.
    """

    def __init__(self, n, err, seeds, keys=None):
        self.n = np.asarray(n, dtype=float)
        self.err = np.asarray(err, dtype=float)
        self.seed_labels, self.seed_idx = np.unique(np.asarray(seeds), return_inverse=True)
        self.frontier = keys is not None
        if self.frontier:
            _, self.key_idx = np.unique(np.asarray(keys), axis=0, return_inverse=True)
            self.key_idx = self.key_idx.ravel()
            self.n_keys = int(self.key_idx.max()) + 1
            self.key_n = np.array([np.round(np.median(self.n[self.key_idx == k])) for k in range(self.n_keys)])

    @property
    def n_seeds(self) -> int:
        return int(self.seed_labels.size)

    def points(self, w: np.ndarray | None = None, drop_zero: bool = True) -> tuple[np.ndarray, np.ndarray]:
        w = np.ones(self.n_seeds, dtype=int) if w is None else w
        rw = w[self.seed_idx]
        if not self.frontier:
            n, e = np.repeat(self.n, rw), np.repeat(self.err, rw)
        else:
            total = np.bincount(self.key_idx, weights=rw, minlength=self.n_keys)
            summed = np.bincount(self.key_idx, weights=rw * self.err, minlength=self.n_keys)
            have = total > 0
            n_k, e_k = self.key_n[have], summed[have] / total[have]
            distinct, value, _, attained = _envelope(n_k, e_k)
            n, e = distinct[attained], value[attained]
        if not drop_zero:
            return n, e
        keep = e > 0
        return n[keep], e[keep]


def _refit(n: np.ndarray, e: np.ndarray, law: str, theta: np.ndarray, starts: int) -> Fit:
    """Refit a bootstrap replicate from the point estimate plus ``starts - 1`` deterministic starts."""
    boot = _Problem(n, e, law)
    x0 = [boot.start(theta[1], min(theta[2], boot.c_max))]
    if starts > 1:
        x0 += boot.starts(min(starts - 1, 2), np.random.default_rng(0))
    return boot.to_fit(boot.solve(x0))


def _fit_and_bootstrap(curve: _Curve, law: str, n_boot: int, seed: int, starts: int = 2) -> tuple[Fit, list[Fit]]:
    """The point fit of ``curve`` (20 starts) and ``n_boot`` bootstrap refits.

    Several seeds: seeds are drawn with replacement and the curve is rebuilt from the drawn replicate
    curves (identical multisets of seeds give identical refits, so each is fitted once). One seed:
    residual bootstrap, log-space residuals of the point fit (centred) resampled with replacement.
    """
    n0, e0 = curve.points()
    n0, e0 = _clean_points(n0, e0, f"{law} fit")
    problem = _Problem(n0, e0, law)
    theta = problem.solve(problem.starts(20, np.random.default_rng(seed)))
    fit = problem.to_fit(theta)
    rng = np.random.default_rng(seed + 1)
    fits: list[Fit] = []
    if n_boot <= 0:
        return fit, fits
    if curve.n_seeds > 1:
        cache: dict[tuple, Fit | None] = {}
        for _ in range(n_boot):
            w = np.bincount(rng.integers(0, curve.n_seeds, curve.n_seeds), minlength=curve.n_seeds)
            key = tuple(w)
            if key not in cache:
                n, e = curve.points(w)
                cache[key] = _refit(n, e, law, theta, starts) if np.unique(n).size >= 3 else None
            if cache[key] is not None:
                fits.append(cache[key])
    else:
        log_fit = problem.log_model(theta)
        resid = problem.log_y - log_fit
        resid = resid - resid.mean()
        for _ in range(n_boot):
            y = np.exp(log_fit + rng.choice(resid, size=resid.size, replace=True))
            fits.append(_refit(n0, y, law, theta, starts))
    return fit, fits


def bootstrap_fit(data, err=None, law: str | None = None, *, seeds=None, n_boot: int = 200, seed: int = 0,
                  starts: int = 2, x: str = "n_train", y: str = "test_error") -> dict:
    """95% percentile bootstrap intervals of a scaling fit's (a, b, c) (SCIENCE.md section 6).

    Call as ``bootstrap_fit(frame, "power")`` with a frame holding ``n_train``, ``test_error`` and
    (optionally) ``seed`` columns, or ``bootstrap_fit(n, err, "power", seeds=seed_per_point)``.
    With several seeds the resampling unit is the seed: whole replicate curves are drawn with
    replacement and refitted (with only 2 seeds there are just 3 distinct resamples, so the interval
    spans the fits to seed A, seed B and both: read it as rough). With one seed, log-space residuals
    of the point fit are resampled. Each refit starts from the point estimate plus ``starts - 1``
    (at most 2) deterministic starts. Returns ``{"a": (lo, hi), "b": ..., "c": ...}`` (NaN bounds if
    ``n_boot`` is 0).
    """
    if isinstance(data, pd.DataFrame):
        if isinstance(err, str) and law is None:
            err, law = None, err
        missing = [c for c in (x, y) if c not in data.columns]
        if missing:
            raise DatacullError(f"bootstrap_fit: the frame lacks column(s) {', '.join(missing)}")
        n_arr, e_arr = data[x].to_numpy(float), data[y].to_numpy(float)
        seed_arr = data["seed"].to_numpy() if "seed" in data.columns else np.zeros(len(data), dtype=int)
    else:
        if err is None:
            raise DatacullError("bootstrap_fit: pass a results frame, or the arrays n and err")
        n_arr, e_arr = np.asarray(data, dtype=float).ravel(), np.asarray(err, dtype=float).ravel()
        seed_arr = np.zeros(n_arr.size, dtype=int) if seeds is None else np.asarray(seeds).ravel()
        if seed_arr.size != n_arr.size or e_arr.size != n_arr.size:
            raise DatacullError("bootstrap_fit: n, err and seeds must have the same length")
    if law is None:
        raise DatacullError("bootstrap_fit: say which law to fit (law='power' or 'exponential')")
    _check_law(law)
    if n_boot < 0:
        raise DatacullError(f"bootstrap_fit: n_boot must be >= 0, got {n_boot}")
    n_arr, e_arr = _clean_points(n_arr, e_arr, f"{law} bootstrap")
    _, fits = _fit_and_bootstrap(_Curve(n_arr, e_arr, seed_arr), law, n_boot, seed, starts)
    return _percentile_intervals(fits)


# -------------------------------------------------------------------------------- frontier, slopes
def pareto_frontier(curves: pd.DataFrame) -> pd.DataFrame:
    """The Pareto frontier (lower envelope over fractions kept) of one metric and policy (Sorscher et al. Fig. 3).

    ``curves``: the result rows of ONE (data, model, metric, policy), including the unpruned f = 1
    rows (metric "all"). Errors are first averaged over seeds per (fraction, subset_size); then for
    each distinct ``n_train`` (sorted) the frontier is the best mean error among all points with
    ``n_train <= n`` (the best you can do with at most n examples), so it is monotone non-increasing.
    Returns columns ``n_train, test_error, fraction, subset_size`` (the latter two of the point that
    attains the minimum) and ``attained``: True where that point was trained on exactly ``n_train``
    examples (a Pareto-optimal run), False where the value is carried forward from a smaller n. Fits
    and slopes of the frontier use the attained points only: a carried-forward step is not a
    measurement at that n and would flatten the top of the frontier, where no larger subset exists.
    """
    missing = [c for c in ("fraction", "subset_size", "n_train", "test_error") if c not in curves.columns]
    if missing:
        raise DatacullError(f"pareto_frontier: the rows lack column(s) {', '.join(missing)}")
    if curves.empty:
        raise DatacullError("pareto_frontier: no rows given")
    pruned = curves[curves["fraction"] < 1.0 - UNPRUNED_TOL]
    for col in ("data", "model", "metric", "policy"):
        if col in pruned.columns and pruned[col].nunique(dropna=False) > 1:
            found = ", ".join(sorted(pruned[col].astype(str).unique()))
            raise DatacullError(f"pareto_frontier: rows mix several {col} values ({found}); pass one curve family")
    for col in ("data", "model"):
        if col in curves.columns and curves[col].nunique(dropna=False) > 1:
            raise DatacullError(f"pareto_frontier: rows mix several {col} values; never combine different {col}s")
    means = (curves.groupby(["fraction", "subset_size"], as_index=False)
             .agg(n_train=("n_train", "median"), test_error=("test_error", "mean")))
    n = means["n_train"].round().to_numpy(float)
    distinct, value, best, attained = _envelope(n, means["test_error"].to_numpy(float))
    return pd.DataFrame({"n_train": distinct.astype(int), "test_error": value,
                         "fraction": means["fraction"].to_numpy(float)[best],
                         "subset_size": means["subset_size"].to_numpy()[best].astype(int),
                         "attained": attained})


def local_slopes(n, err) -> np.ndarray:
    """Local log-log slopes d log(err) / d log(n) between consecutive points (sorted by n).

    For a pure power law a * n**(-b) every slope is -b; a frontier that beats power-law scaling has
    slopes that keep getting more negative (Sorscher et al. 2022). Needs distinct n > 0 and err > 0.
    """
    n = np.asarray(n, dtype=float).ravel()
    err = np.asarray(err, dtype=float).ravel()
    if n.shape != err.shape:
        raise DatacullError(f"local_slopes: n and err have different lengths ({n.size} vs {err.size})")
    if n.size < 2:
        raise DatacullError("local_slopes: need at least 2 points")
    if np.any(n <= 0) or np.any(err <= 0) or not np.all(np.isfinite(n) & np.isfinite(err)):
        raise DatacullError("local_slopes: n and err must be finite and > 0 (log-log slopes)")
    order = np.argsort(n, kind="mergesort")
    n, err = n[order], err[order]
    if np.any(np.diff(n) == 0):
        raise DatacullError("local_slopes: n has repeated values; average seeds per n first")
    return np.diff(np.log(err)) / np.diff(np.log(n))


def _mean_slope(n: np.ndarray, err: np.ndarray, lo: float | None = None, hi: float | None = None) -> float:
    """Mean local log-log slope over [lo, hi], each interval weighted by its width in log n.

    Weighting by log-n width makes the number independent of where the points happen to lie: it is
    the slope of the log-log secant between the (interpolated) curve values at lo and hi.
    """
    keep = (n > 0) & (err > 0)
    n, err = n[keep], err[keep]
    if np.unique(n).size < 2:
        return math.nan
    order = np.argsort(n)
    ln, le = np.log(n[order]), np.log(err[order])
    lo = ln[0] if lo is None else math.log(lo)
    hi = ln[-1] if hi is None else math.log(hi)
    if not hi > lo or lo < ln[0] - 1e-12 or hi > ln[-1] + 1e-12:
        return math.nan
    return float((np.interp(hi, ln, le) - np.interp(lo, ln, le)) / (hi - lo))


def _seed_means(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    m = rows.groupby("n_train")["test_error"].mean()
    return m.index.to_numpy(float), m.to_numpy(float)


# -------------------------------------------------------------------------------------- fit table
def _check_results(results: pd.DataFrame) -> pd.DataFrame:
    if not isinstance(results, pd.DataFrame):
        raise DatacullError("fit_table: results must be a pandas DataFrame (one row per training run)")
    missing = [c for c in REQUIRED_COLUMNS if c not in results.columns]
    if missing:
        raise DatacullError(f"fit_table: the results table lacks column(s) {', '.join(missing)}; "
                            "it must come from `datacull train`/`datacull sweep`")
    res = results.copy()
    res["fraction"] = res["fraction"].astype(float)
    res["test_error"] = res["test_error"].astype(float)
    res["n_train"] = res["n_train"].astype(float)
    bad = ~res["test_error"].between(0.0, 1.0)
    if bad.any():
        raise DatacullError(f"fit_table: {int(bad.sum())} test_error value(s) outside [0, 1]")
    return res


def _curve_rows(base: dict, curve_name: str, fraction: float, curve: _Curve, laws: Sequence[str], n_boot: int,
                seed: int, mean_points: tuple[np.ndarray, np.ndarray]) -> list[dict]:
    """Fit every law to one curve; returns [] when it has fewer than 3 distinct n with error > 0."""
    n_all, e_all = curve.points(drop_zero=False)
    zero = int(np.sum(e_all <= 0))
    n = n_all[e_all > 0]
    if np.unique(n).size < 3:
        return []
    out = []
    for law in laws:
        fit, samples = _fit_and_bootstrap(curve, law, n_boot, seed)
        ci = _percentile_intervals(samples)
        out.append({**base, "curve": curve_name, "fraction": fraction, "law": law, "a": fit.a, "b": fit.b,
                    "c": fit.c, "a_lo": ci["a"][0], "a_hi": ci["a"][1], "b_lo": ci["b"][0], "b_hi": ci["b"][1],
                    "c_lo": ci["c"][0], "c_hi": ci["c"][1], "n_points": fit.n_points,
                    "n_sizes": int(np.unique(n).size), "n_seeds": curve.n_seeds,
                    "n_min": float(n.min()), "n_max": float(n.max()), "n_zero_error": zero,
                    "rss_log": fit.rss_log, "aic": fit.aic, "mean_local_slope": _mean_slope(*mean_points),
                    "slope_vs_unpruned": math.nan})
    best = min(r["aic"] for r in out)
    for r in out:
        r["delta_aic"] = r["aic"] - best
    return out


def _raw_curve(rows: pd.DataFrame) -> _Curve:
    return _Curve(rows["n_train"].to_numpy(float), rows["test_error"].to_numpy(float), rows["seed"].to_numpy())


def _frontier_curve(rows: pd.DataFrame) -> _Curve:
    keys = rows[["fraction", "subset_size"]].to_numpy(float)
    return _Curve(rows["n_train"].to_numpy(float), rows["test_error"].to_numpy(float), rows["seed"].to_numpy(), keys)


def fit_table(results: pd.DataFrame, laws=("power", "exponential"), n_boot: int = 200, seed: int = 0) -> pd.DataFrame:
    """Fit every scaling curve of a results table (Sorscher et al. 2022 Fig. 3; SCIENCE.md sections 6-7).

    Curves, each fitted with every law in ``laws``:

    * ``"unpruned"``: the f = 1 rows over subset sizes, once per (data, model, recipe, class_balanced),
      metric and policy "all";
    * ``"f=0.2"`` etc.: per (data, model, recipe, class_balanced, metric, policy) and fraction kept,
      x = n_train, y = test_error of every seed's run (several seeds are fitted as separate points and
      bootstrapped by seed);
    * ``"frontier"``: the attained (Pareto-optimal) points of the :func:`pareto_frontier` of that
      group's pruned rows plus its unpruned rows (seed means; bootstrapped by recomputing the frontier
      from resampled seeds).

    Columns: see ``FIT_COLUMNS``. ``delta_aic`` is this law's AIC minus the best law's on the same
    curve (0 = preferred). ``mean_local_slope`` is the mean local log-log slope of the seed-averaged
    points, each interval weighted by its log-n width (= the end-to-end log-log secant slope).
    ``slope_vs_unpruned`` (frontier rows only) is the frontier's mean slope minus the unpruned curve's
    over the n range both cover (attained frontier points vs seed-mean unpruned points, log-log
    interpolated at the range ends). It equals the growth of log(frontier / unpruned) per unit of
    log n: negative means the frontier's advantage grows with n (it falls faster than the unpruned
    curve), 0 means a constant-factor gain or none.
    Curves with fewer than 3 distinct n (after dropping zero-error points, counted in ``n_zero_error``)
    are skipped. Rows of different data, model or recipe are never mixed.
    """
    for law in laws:
        _check_law(law)
    if n_boot < 0:
        raise DatacullError(f"fit_table: n_boot must be >= 0, got {n_boot}")
    res = _check_results(results)
    unpruned_mask = res["fraction"] >= 1.0 - UNPRUNED_TOL
    unpruned, pruned = res[unpruned_mask], res[~unpruned_mask]
    out: list[dict] = []
    # unpruned curves: one per data/model/recipe/class_balanced
    for key, rows in unpruned.groupby(["data", "model", "recipe", "class_balanced"], dropna=False, sort=True):
        base = dict(zip(["data", "model", "recipe", "class_balanced"], key), metric="all", policy="all")
        out += _curve_rows(base, "unpruned", 1.0, _raw_curve(rows), laws, n_boot, seed, _seed_means(rows))
    for key, rows in pruned.groupby(list(GROUP_COLUMNS), dropna=False, sort=True):
        base = dict(zip(GROUP_COLUMNS, key))
        for fraction, frows in rows.groupby("fraction", sort=True):
            out += _curve_rows(base, f"f={fraction:g}", float(fraction), _raw_curve(frows), laws, n_boot, seed,
                               _seed_means(frows))
        same = ((unpruned["data"] == base["data"]) & (unpruned["model"] == base["model"])
                & (unpruned["recipe"] == base["recipe"]))
        ref = unpruned[same & (unpruned["class_balanced"] == base["class_balanced"])]
        if ref.empty:  # f = 1 keeps everything, so class balance does not change the unpruned run
            ref = unpruned[same]
        family = pd.concat([rows, ref], ignore_index=True)
        front = _frontier_curve(family)
        fn, fe = front.points(drop_zero=False)
        fitted = _curve_rows(base, "frontier", math.nan, front, laws, n_boot, seed, (fn, fe))
        if fitted and not ref.empty:
            un, ue = _seed_means(ref)
            un, ue = un[ue > 0], ue[ue > 0]
            pos = fe > 0
            if un.size >= 2 and pos.sum() >= 2:
                lo, hi = max(un.min(), fn[pos].min()), min(un.max(), fn[pos].max())
                diff = _mean_slope(fn, fe, lo, hi) - _mean_slope(un, ue, lo, hi)
                for r in fitted:
                    r["slope_vs_unpruned"] = diff
        out += fitted
    table = pd.DataFrame(out, columns=FIT_COLUMNS)
    return table


def write_fits(results: pd.DataFrame, path, laws=("power", "exponential"), n_boot: int = 200, seed: int = 0) -> Path:
    """Write :func:`fit_table` of ``results`` as CSV to ``path`` atomically; returns the path."""
    table = fit_table(results, laws=laws, n_boot=n_boot, seed=seed)
    return write_bytes_atomic(Path(path), table.to_csv(index=False).encode())
