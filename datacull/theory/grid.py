"""Run the simulation and the replica theory over a grid of (theta, policy, f, alpha_prune).

Produces the long table of theory.csv (Sorscher et al. 2022, arXiv 2206.14486, Figure 1): one row
per point with source, policy, theta, f, alpha_tot, alpha_prune, test_error, sem, n_seeds.
Curves (one per theta, policy, f) are the unit of work, optionally spread over processes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from datacull.theory.replica import replica_curve
from datacull.theory.simulate import simulate_point

COLUMNS = ["source", "policy", "theta", "f", "alpha_tot", "alpha_prune", "test_error", "sem", "n_seeds"]


@dataclass(frozen=True)
class TheoryGrid:
    """Everything the theory stage computes; built from the `theory` config node by from_config."""

    N: int = 200
    n_seeds: int = 8
    seed: int = 0
    thetas: tuple[float, ...] = (0.0, 10.0)
    fractions: tuple[float, ...] = (0.1, 0.2, 0.4, 0.7)
    policies: tuple[str, ...] = ("keep_hard", "keep_easy")
    alphas: tuple[float, ...] = (0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0)
    replica_alphas: tuple[float, ...] = field(default_factory=lambda: tuple(np.geomspace(0.3, 10.0, 40)))
    quad_nodes: int = 64
    frontier_thetas: tuple[float, ...] = (0.0, 10.0, 20.0)
    frontier_fractions: tuple[float, ...] = field(default_factory=lambda: tuple(np.geomspace(0.01, 1.0, 17)[:-1]))
    solver: dict = field(default_factory=lambda: {"tol": 1e-9, "working_set": 2.0})
    n_jobs: int = 1

    @classmethod
    def from_config(cls, node: Any) -> "TheoryGrid":
        """Build from the `theory` config node (an omegaconf DictConfig or a plain dict)."""
        get = node.get
        replica = get("replica", {}) or {}
        alpha_min, alpha_max = float(replica.get("alpha_min", 0.3)), float(replica.get("alpha_max", 10.0))
        if not 0.0 < alpha_min < alpha_max <= 50.0:
            raise ValueError("theory.replica needs 0 < alpha_min < alpha_max <= 50 (the checked range)")
        f_floor = float(replica.get("frontier_f_min", 0.01))
        n_f = int(replica.get("frontier_fractions", 16))
        alphas = tuple(float(a) for a in get("alphas"))
        return cls(
            N=int(get("N")), n_seeds=int(get("n_seeds")), seed=int(get("seed", 0)),
            thetas=tuple(float(t) for t in get("thetas")),
            fractions=tuple(float(f) for f in get("fractions")),
            policies=tuple(str(p) for p in get("policies", ["keep_hard", "keep_easy"])),
            alphas=alphas,
            replica_alphas=tuple(np.unique(np.concatenate([
                np.geomspace(alpha_min, alpha_max, int(replica.get("n_alpha", 40))), alphas]))),
            quad_nodes=int(replica.get("quad_nodes", 64)),
            frontier_thetas=tuple(float(t) for t in replica.get("frontier_thetas", [])),
            frontier_fractions=tuple(np.geomspace(f_floor, 1.0, n_f + 1)[:-1]) if n_f > 0 else (),
            solver=dict(get("solver", {}) or {}),
            n_jobs=int(get("n_jobs", 1)),
        )

    def simulation_curves(self) -> list[tuple[float, str, float]]:
        """(theta, policy, f) of every simulated curve; policy 'none' is f = 1."""
        curves = [(t, p, f) for t in self.thetas for p in self.policies for f in self.fractions if f < 1.0]
        return curves + [(t, "none", 1.0) for t in self.thetas]

    def replica_curves(self) -> list[tuple[float, str, float]]:
        """(theta, policy, f) of every theory curve: the panel curves plus the frontier's f grid."""
        curves = set(self.simulation_curves())
        for theta in self.frontier_thetas:
            curves.add((theta, "none", 1.0))
            for policy in ("keep_hard", "keep_easy"):
                curves.update((theta, policy, float(f)) for f in self.frontier_fractions)
        return sorted(curves)


def _simulate_curve(grid: TheoryGrid, theta: float, policy: str, f: float) -> list[dict]:
    rows = []
    for alpha in grid.alphas:
        result = simulate_point(grid.N, alpha, f, policy, theta, n_seeds=grid.n_seeds, seed=grid.seed,
                                **grid.solver)
        rows.append(dict(source="simulation", policy=policy, theta=theta, f=f, alpha_tot=result.alpha_tot,
                         alpha_prune=result.alpha_prune, test_error=result.test_error, sem=result.sem,
                         n_seeds=grid.n_seeds))
    return rows


def _replica_curve(grid: TheoryGrid, theta: float, policy: str, f: float) -> list[dict]:
    return [dict(source="replica", policy=policy, theta=theta, f=f, alpha_tot=s.alpha_prune / f,
                 alpha_prune=s.alpha_prune, test_error=s.test_error, sem=float("nan"), n_seeds=0)
            for s in replica_curve(grid.replica_alphas, f, policy, theta, n_nodes=grid.quad_nodes)]


def _run(tasks: Iterable[tuple], work: Callable, grid: TheoryGrid, desc: str) -> list[dict]:
    tasks = list(tasks)
    if grid.n_jobs == 1:
        results = (work(grid, *task) for task in tasks)
    else:
        from joblib import Parallel, delayed

        results = Parallel(n_jobs=grid.n_jobs, return_as="generator_unordered")(
            delayed(work)(grid, *task) for task in tasks)
    rows: list[dict] = []
    for chunk in tqdm(results, total=len(tasks), desc=desc, unit="curve"):
        rows.extend(chunk)
    return rows


def run_grid(grid: TheoryGrid) -> pd.DataFrame:
    """Simulate and solve the theory over the grid; the rows of theory.csv, in a stable order."""
    rows = _run(grid.simulation_curves(), _simulate_curve, grid, "theory: simulation")
    rows += _run(grid.replica_curves(), _replica_curve, grid, "theory: replica")
    table = pd.DataFrame(rows, columns=COLUMNS)
    table = table.sort_values(["source", "theta", "policy", "f", "alpha_prune"], kind="stable")
    return table.reset_index(drop=True)
