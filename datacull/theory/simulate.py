"""Teacher-student perceptron simulation of data pruning (Sorscher et al. 2022, appendix A).

Setup (arXiv 2206.14486, section 2 and appendix A): a teacher T in R^N labels Gaussian inputs
x ~ N(0, I_N) by y = sign(T.x). A probe student J_probe at angle theta to T scores every example by
its margin |J_probe.x|; keep-hard keeps the fraction f with the smallest margins, keep-easy the
largest. A new student is trained to maximum margin on the kept examples and its test error is
eps = arccos(R) / pi, with R the cosine between student and teacher (exact, no test set needed).

Everything is rotation invariant (Gaussian inputs, max-margin student), so T = e_1 and
J_probe = cos(theta) e_1 + sin(theta) e_2 without loss of generality. Pruning looks only at the two
fields t = x_1 and u = x_2, so those are drawn for all alpha_tot * N examples (vectorised over seeds)
and the other N - 2 coordinates only for the kept ones: the result has exactly the distribution of
pruning a full dataset, at a cost independent of f.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from datacull.theory.svm import max_margin

POLICIES = ("keep_hard", "keep_easy", "none")


def error_from_overlap(overlap: np.ndarray | float) -> np.ndarray | float:
    """Generalisation error of a perceptron with cosine `overlap` to the teacher: arccos(R) / pi.

    Exact for isotropic Gaussian inputs (Sorscher et al. 2022, appendix A; Engel & Van den Broeck 2001).
    """
    return np.arccos(np.clip(overlap, -1.0, 1.0)) / np.pi


def dataset_sizes(N: int, alpha_prune: float, f: float) -> tuple[int, int]:
    """(kept, total) example counts for alpha_prune = kept / N and kept fraction f = kept / total."""
    if not 0.0 < f <= 1.0:
        raise ValueError(f"kept fraction f must be in (0, 1], got {f}")
    n_keep = max(1, int(round(alpha_prune * N)))
    return n_keep, max(n_keep, int(round(n_keep / f)))


def keep_indices(probe_margin: np.ndarray, n_keep: int, policy: str) -> np.ndarray:
    """Indices kept along the last axis: keep_hard = smallest |margin|, keep_easy = largest, none = all.

    Works on a (seeds, examples) array at once; returns (seeds, n_keep) indices.
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown pruning policy {policy!r}; valid: {', '.join(POLICIES)}")
    n_total = probe_margin.shape[-1]
    if policy == "none":
        if n_keep != n_total:
            raise ValueError("policy 'none' keeps every example (f = 1)")
        return np.broadcast_to(np.arange(n_total), probe_margin.shape).copy()
    size = np.abs(probe_margin)
    if policy == "keep_hard":
        return np.argsort(size, axis=-1, kind="stable")[..., :n_keep]
    return np.argsort(-size, axis=-1, kind="stable")[..., :n_keep]


def _rng(seed: int, alpha_prune: float, f: float, policy: str, theta_deg: float) -> np.random.Generator:
    # The stream depends on the point, not on the grid order, so any sub-grid reproduces it.
    key = (int(round(theta_deg * 1e4)), int(round(f * 1e6)), POLICIES.index(policy), int(round(alpha_prune * 1e6)))
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def sample_pruned(N: int, alpha_prune: float, f: float, policy: str, theta_deg: float, n_seeds: int,
                  seed: int = 0):
    """Pruned datasets for `n_seeds` independent seeds: yields (X, y) with X of shape (n_keep, N).

    T = e_1, J_probe = cos(theta) e_1 + sin(theta) e_2; see the module docstring for why only the two
    pruning fields are drawn for the unpruned set.
    """
    n_keep, n_total = dataset_sizes(N, alpha_prune, f)
    if policy == "none" and n_total != n_keep:
        raise ValueError("policy 'none' needs f = 1")
    rng = _rng(seed, alpha_prune, f, policy, theta_deg)
    theta = np.deg2rad(theta_deg)
    t = rng.standard_normal((n_seeds, n_total))
    u = rng.standard_normal((n_seeds, n_total))
    kept = keep_indices(np.cos(theta) * t + np.sin(theta) * u, n_keep, policy)
    t_kept = np.take_along_axis(t, kept, axis=-1)
    u_kept = np.take_along_axis(u, kept, axis=-1)
    for s, bulk_rng in enumerate(rng.spawn(n_seeds)):
        X = np.empty((n_keep, N))
        X[:, 0] = t_kept[s]
        X[:, 1] = u_kept[s]
        X[:, 2:] = bulk_rng.standard_normal((n_keep, N - 2))
        y = np.where(t_kept[s] >= 0, 1.0, -1.0)
        yield X, y


@dataclass(frozen=True)
class SimulationResult:
    """Per-seed overlaps of the max-margin student; `test_error` and `sem` summarise over seeds."""

    N: int
    alpha_prune: float  # kept / N as realised
    alpha_tot: float  # total / N as realised
    f: float
    policy: str
    theta_deg: float
    R: np.ndarray  # cosine student-teacher, per seed
    rho: np.ndarray  # cosine student-probe, per seed
    kappa: np.ndarray  # geometric margin of the unit-norm student, per seed

    @property
    def errors(self) -> np.ndarray:
        return error_from_overlap(self.R)

    @property
    def test_error(self) -> float:
        return float(np.mean(self.errors))

    @property
    def sem(self) -> float:
        n = len(self.R)
        return float(np.std(self.errors, ddof=1) / np.sqrt(n)) if n > 1 else float("nan")


def simulate_point(N: int, alpha_prune: float, f: float, policy: str, theta_deg: float = 0.0,
                   n_seeds: int = 8, seed: int = 0, tol: float = 1e-9, working_set: float = 2.0,
                   add_per_round: float = 2.0) -> SimulationResult:
    """Simulate pruning + max-margin training at one (alpha_prune, f, policy, theta) point.

    Sorscher et al. (NeurIPS 2022, arXiv 2206.14486), appendix A / Figure 1 setup. Reproducible:
    the random stream is fixed by (seed, point). tol, working_set, add_per_round go to max_margin.
    """
    if policy == "none":
        f = 1.0
    n_keep, n_total = dataset_sizes(N, alpha_prune, f)
    theta = np.deg2rad(theta_deg)
    probe = np.zeros(N)
    probe[0], probe[1] = np.cos(theta), np.sin(theta)
    R, rho, kappa = [], [], []
    for X, y in sample_pruned(N, alpha_prune, f, policy, theta_deg, n_seeds, seed):
        solution = max_margin(X, y, tol=tol, working_set=working_set, add_per_round=add_per_round)
        w_unit = solution.w / np.linalg.norm(solution.w)
        R.append(w_unit[0])
        rho.append(w_unit @ probe)
        kappa.append(solution.margin)
    return SimulationResult(N=N, alpha_prune=n_keep / N, alpha_tot=n_total / N, f=f, policy=policy,
                            theta_deg=theta_deg, R=np.array(R), rho=np.array(rho), kappa=np.array(kappa))
