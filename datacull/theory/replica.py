"""Replica theory of the max-margin perceptron trained on pruned data (Sorscher et al. 2022, app. A).

Derived here, not copied: the circulating OCR of the paper's equations is partly garbled.

Fields. T is the teacher, J_probe the probe with cos(theta) = T.J_probe; e_1 = T and e_2 is the unit
vector of J_probe orthogonal to T. An example has two O(1) fields t = e_1.x (label y = sign t) and
u = e_2.x; the probe margin is z = cos(theta) t + sin(theta) u. Keep-hard keeps |z| < gamma and
keep-easy |z| > gamma, gamma fixed by the kept fraction f, so z follows a truncated Gaussian and,
given z, t ~ N(cos(theta) z, sin(theta)^2). Every other direction of x stays i.i.d. N(0, 1).

Order parameters. The unit-norm student is J = p_1 e_1 + p_2 e_2 + J_perp, so R = p_1,
rho = cos(theta) p_1 + sin(theta) p_2 and s^2 = |J_perp|^2 = 1 - p_1^2 - p_2^2. On an example its
signed field is y J.x = m + s xi with m = p.g, g = (y t, y u), and xi ~ N(0, 1) independent of the
pruning (it comes from the untouched directions).

Saddle point. Gardner's replica-symmetric volume of students with margin >= kappa at fixed p has
entropy (1/2) ln(1-q) + (q - |p|^2) / (2(1-q)) and energy
alpha_prune < ln H((kappa - m - sqrt(q - |p|^2) xi) / sqrt(1-q)) > (q: overlap of two replicas).
The max-margin student is the limit q -> 1: both terms grow like 1/(1-q) and the volume shrinks to
one point when

    F(p, kappa) = s^2 - alpha_prune * E[ (kappa - m - s xi)_+^2 ] = 0           (1)
    dF/dp_k = 0, k = 1, 2     (the largest kappa over p)                         (2)

The xi average is closed-form, with d = kappa - m:
E(d - s xi)_+^2 = (d^2 + s^2) Phi(d/s) + d s phi(d/s), and (2) becomes

    p_k (1 - alpha_prune E[Phi(d/s)]) = alpha_prune E[ g_k (d Phi(d/s) + s phi(d/s)) ].

These three equations give R, rho and kappa as functions of (alpha_prune, f, theta); the test error
is arccos(R) / pi. They are also what the convex Gaussian min-max theorem gives for this convex
problem, which is why replica symmetry is exact here. For f = 1 they reduce to the Gardner / Opper
optimal-stability perceptron (tests check this against the textbook form coded separately, and the
large-alpha law eps ~ 0.50 / alpha). The average over the pruned (t, u) uses Gauss-Legendre
quadrature: for theta = 0 only p_1 and t enter (a 1-D average); for theta > 0 the w-integral is split
where the label flips. Newton's method on (1)-(2), warm-started along alpha, solves them; a robust
maximisation of kappa(p) (the problem is convex, so it cannot get trapped) starts each curve and is
the fallback.

How it was checked, against datacull.theory.simulate (exact max-margin solver):
- default grid (N = 200, 8 seeds; theta in {0, 10} degrees; f in {0.1, 0.2, 0.4, 0.7, 1}; keep-hard
  and keep-easy; alpha_prune in [0.5, 8]; 126 points): median |sim - theory| = 0.0015 in test error,
  median |z| = 0.76, 99% of points within 3 standard errors. The largest gaps (up to 0.046) are on
  the steep drop of keep-hard at small f near alpha_prune ~ 2, which finite N smears out; the
  simulated keep-easy -> keep-hard crossover therefore sits 5-25% above the theory's.
- small f (keep-hard, theta = 0, N = 200): f = 0.01 at alpha_prune = 2.5 / 3 / 5 gives 0.00246 /
  0.00179 / 0.00095 in simulation against 0.00243 / 0.00176 / 0.00100 in theory.
- R, rho and kappa at theta = 20 degrees and spot checks at N = 400 agree likewise.
Unchecked regime: alpha_prune > 50, where s -> 0 and the fixed quadrature no longer resolves the
kink of the integrand (64 vs 160 nodes differ by ~1% at alpha_prune = 60 and more beyond); the stage
refuses alpha_max > 50.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import optimize
from scipy.special import ndtr, ndtri

from datacull.theory.simulate import POLICIES, error_from_overlap

_SQRT_2PI = np.sqrt(2.0 * np.pi)


def probe_threshold(f: float, policy: str) -> float:
    """gamma with P(|z| < gamma) = f (keep_hard) or P(|z| > gamma) = f (keep_easy), z ~ N(0, 1)."""
    if policy == "keep_hard":
        return float(ndtri((1.0 + f) / 2.0))
    if policy == "keep_easy":
        return float(ndtri(1.0 - f / 2.0))
    if policy == "none":
        return float("inf")
    raise ValueError(f"unknown pruning policy {policy!r}; valid: {', '.join(POLICIES)}")


@dataclass(frozen=True)
class FieldQuadrature:
    """Nodes and weights of the average over the kept examples' fields: g1 = y t, g2 = y u."""

    g1: np.ndarray
    g2: np.ndarray
    weight: np.ndarray  # sums to 1
    two_dimensional: bool  # False when theta = 0 (only the teacher direction matters)


def _gauss_legendre(lo: np.ndarray, hi: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    x, w = np.polynomial.legendre.leggauss(n)
    lo, hi = np.asarray(lo, float)[..., None], np.asarray(hi, float)[..., None]
    half = (hi - lo) / 2.0
    return lo + half * (x + 1.0), half * w


def _kept_interval(f: float, policy: str, width: float = 12.0) -> tuple[float, float]:
    # the kept |z| range; beyond z = gamma + 12 the Gaussian weight is < 1e-31 of what is kept
    if policy == "none" or f >= 1.0:
        return 0.0, width
    gamma = probe_threshold(f, policy)
    return (0.0, gamma) if policy == "keep_hard" else (gamma, gamma + width)


def field_quadrature(f: float, policy: str, theta_deg: float = 0.0, n_nodes: int = 64) -> FieldQuadrature:
    """Quadrature of the pruned field distribution (a truncated Gaussian along the probe).

    By the symmetry (x -> -x) only z > 0 is integrated. theta = 0: y t = |z|, on 4 * n_nodes
    Gauss-Legendre nodes. theta > 0: n_nodes nodes in z and, for each, n_nodes in
    w = (t - cos(theta) z) / sin(theta) ~ N(0, 1), half on each side of the label flip t = 0, so that
    every piece is smooth (64 nodes give R and kappa to ~1e-7).
    """
    z_lo, z_hi = _kept_interval(f, policy)
    z, wz = _gauss_legendre(z_lo, z_hi, n_nodes if theta_deg else 4 * n_nodes)
    wz = wz * np.exp(-z ** 2 / 2.0)
    if theta_deg == 0.0:
        weight = wz / wz.sum()
        return FieldQuadrature(g1=z, g2=np.zeros_like(z), weight=weight, two_dimensional=False)
    theta = np.deg2rad(theta_deg)
    cos, sin = np.cos(theta), np.sin(theta)
    flip = -cos * z / sin  # w at which t = 0
    half = max(8, n_nodes // 2)
    w_neg, ww_neg = _gauss_legendre(np.minimum(-9.0, flip - 1.0), flip, half)
    w_pos, ww_pos = _gauss_legendre(flip, np.maximum(9.0, flip + 1.0), half)
    w = np.concatenate([w_neg, w_pos], axis=1)
    ww = np.concatenate([ww_neg, ww_pos], axis=1) * np.exp(-w ** 2 / 2.0)
    t = cos * z[:, None] + sin * w
    y = np.where(t >= 0.0, 1.0, -1.0)
    u = (z[:, None] - cos * t) / sin
    weight = wz[:, None] * ww
    weight = weight / weight.sum()
    return FieldQuadrature(g1=(y * t).ravel(), g2=(y * u).ravel(), weight=weight.ravel(), two_dimensional=True)


def _saddle_terms(p1: float, p2: float, kappa: float, alpha: float, quad: FieldQuadrature):
    """F of eq. (1), its p-gradient (eq. 2) and dF/dkappa."""
    s2 = 1.0 - p1 * p1 - p2 * p2
    s = np.sqrt(s2)
    d = kappa - (p1 * quad.g1 + p2 * quad.g2)
    x = d / s
    cdf = ndtr(x)
    pdf = np.exp(-0.5 * x * x) / _SQRT_2PI
    hinge = d * cdf + s * pdf  # E_xi (d - s xi)_+
    square = (d * d + s2) * cdf + d * s * pdf  # E_xi (d - s xi)_+^2
    w = quad.weight
    mean_cdf = w @ cdf
    F = s2 - alpha * (w @ square)
    grad = np.array([-2.0 * p1 + 2.0 * alpha * (w @ (hinge * quad.g1)) + 2.0 * alpha * p1 * mean_cdf,
                     -2.0 * p2 + 2.0 * alpha * (w @ (hinge * quad.g2)) + 2.0 * alpha * p2 * mean_cdf])
    dF_dkappa = -2.0 * alpha * (w @ hinge)
    return F, grad, dF_dkappa


def _margin_at(p1: float, p2: float, alpha: float, quad: FieldQuadrature, xtol: float = 1e-13) -> float:
    """kappa(p): the largest margin a student with teacher/probe components p can reach (eq. 1)."""
    def F(kappa):
        return _saddle_terms(p1, p2, kappa, alpha, quad)[0]

    lo, hi = -1.0, 1.0
    while F(lo) <= 0.0:
        lo *= 2.0
    while F(hi) > 0.0:
        lo, hi = hi, hi * 2.0
    return optimize.brentq(F, lo, hi, xtol=xtol, rtol=max(xtol, 4e-16))


@dataclass(frozen=True)
class ReplicaSolution:
    """Order parameters of the max-margin student: R = J.T, rho = J.J_probe, margin kappa (|J| = 1)."""

    alpha_prune: float
    f: float
    policy: str
    theta_deg: float
    R: float
    rho: float
    kappa: float
    p: tuple[float, float]  # components along T and along the probe's part orthogonal to T

    @property
    def test_error(self) -> float:
        return float(error_from_overlap(self.R))


def _solve_1d(alpha: float, quad: FieldQuadrature, xtol: float = 1e-14) -> tuple[float, float]:
    # maximise kappa(p_1) with p_2 = 0: the root of dkappa/dp_1, which has the sign of dF/dp_1
    def slope(p1):
        return _saddle_terms(p1, 0.0, _margin_at(p1, 0.0, alpha, quad, xtol), alpha, quad)[1][0]

    lo, hi = 1e-9, 1.0 - 1e-13
    if slope(hi) > 0.0:
        p1 = hi
    else:
        p1 = optimize.brentq(slope, lo, hi, xtol=xtol, rtol=max(xtol, 4e-16))
    return p1, 0.0


def _saddle_jacobian(p1: float, p2: float, kappa: float, alpha: float, quad: FieldQuadrature):
    """Residuals (F, dF/dp_1, dF/dp_2) of eqs. (1)-(2) and their Jacobian in (p_1, p_2, kappa)."""
    p = np.array([p1, p2])
    g = np.stack([quad.g1, quad.g2])
    s2 = 1.0 - p @ p
    s = np.sqrt(s2)
    d = kappa - p @ g
    x = d / s
    cdf = ndtr(x)
    pdf = np.exp(-0.5 * x * x) / _SQRT_2PI
    w = quad.weight
    hinge = d * cdf + s * pdf
    square = (d * d + s2) * cdf + d * s * pdf
    mean_cdf, mean_pdf = w @ cdf, w @ pdf
    g_cdf, g_pdf, g_hinge = g @ (w * cdf), g @ (w * pdf), g @ (w * hinge)
    residual = np.empty(3)
    residual[0] = s2 - alpha * (w @ square)
    residual[1:] = -2.0 * p + 2.0 * alpha * g_hinge + 2.0 * alpha * p * mean_cdf
    jac = np.empty((3, 3))
    jac[0, :2] = residual[1:]
    jac[0, 2] = -2.0 * alpha * (w @ hinge)
    jac[1:, 2] = 2.0 * alpha * g_cdf + 2.0 * alpha * p * mean_pdf / s
    jac[1:, :2] = (2.0 * (alpha * mean_cdf - 1.0) * np.eye(2) - 2.0 * alpha * (g * (w * cdf)) @ g.T
                   - 2.0 * alpha / s * (np.outer(g_pdf, p) + np.outer(p, g_pdf))
                   + 2.0 * alpha * np.outer(p, p) * (w @ (d * pdf)) / (s2 * s))
    return residual, jac


def _newton_2d(alpha: float, quad: FieldQuadrature, start: tuple[float, float], tol: float = 1e-11,
               max_iter: int = 60) -> tuple[float, float] | None:
    """Damped Newton on eqs. (1)-(2) in (p_1, p_2, kappa); None when it does not converge."""
    z = np.array([start[0], start[1], _margin_at(start[0], start[1], alpha, quad)])
    residual, jac = _saddle_jacobian(*z, alpha, quad)
    for _ in range(max_iter):
        if np.max(np.abs(residual)) < tol:
            # the max-margin student has R > 0 and kappa > 0 (the teacher separates the data)
            return (float(z[0]), float(z[1])) if z[0] > 0 and z[2] > 0 else None
        try:
            step = np.linalg.solve(jac, -residual)
        except np.linalg.LinAlgError:
            return None
        scale = 1.0
        while scale > 1e-6:
            trial = z + scale * step
            if trial[:2] @ trial[:2] < 1.0:
                trial_residual, trial_jac = _saddle_jacobian(*trial, alpha, quad)
                if np.linalg.norm(trial_residual) < np.linalg.norm(residual):
                    break
            scale /= 2.0
        else:
            return None
        z, residual, jac = trial, trial_residual, trial_jac
    return None


def _solve(alpha: float, quad: FieldQuadrature, start: tuple[float, float] | None) -> tuple[float, float]:
    # Newton from a warm start; otherwise (or if it fails) a robust maximisation of kappa(p), which
    # cannot be trapped (the max-margin problem is convex), polished by Newton.
    if start is not None:
        solved = _newton_2d(alpha, quad, (start[0], start[1] if quad.two_dimensional else 0.0))
        if solved is not None:
            return solved
    if quad.two_dimensional:
        rough = _maximise_margin_2d(alpha, quad, start if start is not None else (0.5, 0.0))
    else:
        rough = _solve_1d(alpha, quad, xtol=1e-9)
    solved = _newton_2d(alpha, quad, rough)
    return solved if solved is not None else rough


def _maximise_margin_2d(alpha: float, quad: FieldQuadrature, start: tuple[float, float]) -> tuple[float, float]:
    # Fallback: maximise kappa(p) by BFGS; the disk |p| < 1 is mapped onto the plane.
    def to_p(v):
        return v / np.sqrt(1.0 + v @ v)

    def negative_margin(v):
        p = to_p(v)
        kappa = _margin_at(p[0], p[1], alpha, quad, xtol=1e-11)
        _, grad_p, dF_dkappa = _saddle_terms(p[0], p[1], kappa, alpha, quad)
        dkappa_dp = -grad_p / dF_dkappa
        r2 = 1.0 + v @ v
        jac = (np.eye(2) * r2 - np.outer(v, v)) / r2 ** 1.5  # dp/dv
        return -kappa, -(jac.T @ dkappa_dp)

    p0 = np.asarray(start, float)
    v0 = p0 / np.sqrt(max(1e-12, 1.0 - p0 @ p0))
    result = optimize.minimize(negative_margin, v0, jac=True, method="BFGS", options={"gtol": 1e-7, "maxiter": 100})
    p = to_p(result.x)
    return float(p[0]), float(p[1])


def solve_replica(alpha_prune: float, f: float, policy: str, theta_deg: float = 0.0, n_nodes: int = 64,
                  start: tuple[float, float] | None = None, quad: FieldQuadrature | None = None) -> ReplicaSolution:
    """Solve the saddle-point equations (1)-(2) of the module docstring at one point.

    Sorscher et al. (NeurIPS 2022, arXiv 2206.14486), appendix A: order parameters R, rho and the
    margin kappa of the max-margin student on data pruned by the probe margin, for alpha_prune =
    kept / N, kept fraction f, `policy` in {keep_hard, keep_easy, none} and probe angle theta.
    `start` = (p_1, p_2) warm-starts a Newton solve (replica_curve passes the previous point).
    """
    if policy == "none":
        f = 1.0
    if quad is None:
        quad = field_quadrature(f, policy, theta_deg, n_nodes)
    p1, p2 = _solve(alpha_prune, quad, start)
    kappa = _margin_at(p1, p2, alpha_prune, quad)
    theta = np.deg2rad(theta_deg)
    rho = np.cos(theta) * p1 + np.sin(theta) * p2
    return ReplicaSolution(alpha_prune=float(alpha_prune), f=float(f), policy=policy, theta_deg=float(theta_deg),
                           R=float(p1), rho=float(rho), kappa=float(kappa), p=(float(p1), float(p2)))


def replica_curve(alphas, f: float, policy: str, theta_deg: float = 0.0, n_nodes: int = 64) -> list[ReplicaSolution]:
    """Replica solutions along a grid of alpha_prune (each warm-started from the previous one)."""
    if policy == "none":
        f = 1.0
    quad = field_quadrature(f, policy, theta_deg, n_nodes)
    solutions, start = [], None
    for alpha in alphas:
        solution = solve_replica(alpha, f, policy, theta_deg, start=start, quad=quad)
        solutions.append(solution)
        start = solution.p
    return solutions
