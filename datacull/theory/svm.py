"""Exact hard-margin linear SVM without bias: the max-margin student of the perceptron theory.

Sorscher et al. (NeurIPS 2022, arXiv 2206.14486, appendix A) train the student to maximum margin on
the pruned data. The hard-margin problem without bias,

    minimise |w|^2  subject to  y_i (w . x_i) >= 1  for every i,

is a least-distance program (LDP). Lawson & Hanson ("Solving Least Squares Problems", 1974, ch. 23)
reduce an LDP to one non-negative least-squares problem, which scipy's active-set NNLS solves
exactly (finite termination, no learning rate, no C to tune). A working set (the current support
plus the most violated examples) keeps each NNLS small; the loop ends only when every example
satisfies its constraint, so the answer is the exact optimum of the full problem (the working-set
problem is a relaxation whose optimum is feasible for all constraints).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import nnls

from datacull.errors import DatacullError


@dataclass(frozen=True)
class MaxMarginSolution:
    """The max-margin weights `w` (margins y*w.x >= 1), the dual variables and the geometric margin."""

    w: np.ndarray
    dual: np.ndarray  # alpha_i >= 0 with w = sum_i alpha_i y_i x_i (zero off the support)
    margin: float  # geometric margin min_i y_i w.x_i / |w| = 1 / |w|
    n_support: int
    n_rounds: int


def _least_distance(Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """min |w| s.t. Z w >= 1 through one NNLS (Lawson & Hanson's LDP algorithm); returns (w, dual)."""
    n_rows, dim = Z.shape
    E = np.vstack([Z.T, np.ones((1, n_rows))])
    target = np.zeros(dim + 1)
    target[-1] = 1.0
    u, _ = nnls(E, target, maxiter=50 * (n_rows + dim))
    residual = E @ u - target
    if abs(residual[-1]) < 1e-12:
        raise DatacullError("max-margin solver: the data are not linearly separable through the origin")
    w = -residual[:dim] / residual[-1]
    dual = u / -residual[-1]
    return w, dual


def max_margin(X: np.ndarray, y: np.ndarray, tol: float = 1e-9, working_set: float = 2.0,
               add_per_round: float = 2.0, max_rounds: int = 1000) -> MaxMarginSolution:
    """Exact hard-margin linear SVM without bias (the max-margin student of Sorscher et al. 2022).

    X: (P, N) inputs, y: (P,) labels in {-1, +1}. `working_set` * N examples with the smallest
    Hebbian margin start the working set; each round keeps the support and adds the
    add_per_round * N examples with the smallest margins, until every margin is >= 1 - tol.
    Raises DatacullError when the data are not separable through the origin.
    """
    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float)
    Z = y[:, None] * X
    n_rows, dim = Z.shape
    hebb = Z.sum(axis=0)
    order = np.argsort(Z @ hebb)
    active = np.zeros(n_rows, dtype=bool)
    active[order[: min(n_rows, max(dim, int(working_set * dim)))]] = True
    n_add = max(1, min(n_rows, int(add_per_round * dim)))
    for rounds in range(1, max_rounds + 1):
        w_active, dual_active = _least_distance(Z[active])
        margins = Z @ w_active
        violated = np.flatnonzero((margins < 1.0 - tol) & ~active)
        if violated.size == 0:
            dual = np.zeros(n_rows)
            dual[active] = dual_active
            norm = float(np.linalg.norm(w_active))
            return MaxMarginSolution(w=w_active, dual=dual, margin=1.0 / norm,
                                     n_support=int(np.count_nonzero(dual > 0)), n_rounds=rounds)
        # Next working set: the current support plus the examples with the smallest margins (the
        # most violated come first). It always gains a violated example, so each round's optimal
        # norm strictly grows and the loop cannot cycle.
        support = np.flatnonzero(active)[dual_active > 0]
        smallest = np.argpartition(margins, n_add - 1)[:n_add]
        active[:] = False
        active[support] = True
        active[smallest] = True
    raise DatacullError(f"max-margin solver: working set did not converge in {max_rounds} rounds")


def kkt_violation(X: np.ndarray, y: np.ndarray, solution: MaxMarginSolution) -> dict[str, float]:
    """Largest violation of each KKT condition of the hard-margin SVM (all ~0 at the exact optimum).

    stationarity |w - sum alpha_i y_i x_i|, primal feasibility max(0, 1 - y_i w.x_i), dual
    feasibility max(0, -alpha_i), complementary slackness max alpha_i |y_i w.x_i - 1|.
    """
    Z = np.asarray(y, dtype=float)[:, None] * np.asarray(X, dtype=float)
    margins = Z @ solution.w
    return {
        "stationarity": float(np.max(np.abs(solution.w - Z.T @ solution.dual))),
        "primal": float(np.max(np.maximum(0.0, 1.0 - margins))),
        "dual": float(np.max(np.maximum(0.0, -solution.dual))),
        "slackness": float(np.max(solution.dual * np.abs(margins - 1.0))),
    }
