"""Theory-vs-simulation agreement and the markdown summary of the theory stage.

Sorscher et al. (NeurIPS 2022, arXiv 2206.14486), appendix A: the replica curves should pass
through the simulated points; the summary states how well they do, where keep-easy hands over to
keep-hard, and how far the Pareto frontier beats the unpruned power law.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from datacull.theory.frontier import crossover_alpha


def agreement(table: pd.DataFrame) -> pd.DataFrame:
    """Each simulated point beside the theory at the same (theta, policy, f), interpolated in log alpha.

    Columns: theta, policy, f, alpha_prune, simulation, sem, theory, diff (= simulation - theory),
    z (= diff / sem).
    """
    sim = table[table["source"] == "simulation"]
    theory = table[table["source"] == "replica"]
    rows = []
    for (theta, policy, f), points in sim.groupby(["theta", "policy", "f"]):
        curve = theory[np.isclose(theory["theta"], theta) & (theory["policy"] == policy) & np.isclose(theory["f"], f)]
        curve = curve.sort_values("alpha_prune")
        if curve.empty:
            continue
        predicted = np.interp(np.log(points["alpha_prune"]), np.log(curve["alpha_prune"]), curve["test_error"],
                              left=np.nan, right=np.nan)
        for (_, point), value in zip(points.iterrows(), predicted):
            diff = point["test_error"] - value
            rows.append(dict(theta=theta, policy=policy, f=f, alpha_prune=point["alpha_prune"],
                             simulation=point["test_error"], sem=point["sem"], theory=value, diff=diff,
                             z=diff / point["sem"] if point["sem"] > 0 else np.nan))
    return pd.DataFrame(rows)


def crossovers(table: pd.DataFrame, thetas, fractions) -> pd.DataFrame:
    """alpha_tot of the keep-easy -> keep-hard switch per (theta, f), in simulation and in theory."""
    sim = table[table["source"] == "simulation"]
    theory = table[table["source"] == "replica"]
    return pd.DataFrame([dict(theta=t, f=f, simulation=crossover_alpha(sim, t, f), theory=crossover_alpha(theory, t, f))
                         for t in thetas for f in fractions if f < 1.0])


def _markdown(frame: pd.DataFrame, floatfmt: str = ".4g") -> str:
    cols = list(frame.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, row in frame.iterrows():
        cells = [format(v, floatfmt) if isinstance(v, (float, np.floating)) else str(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_report(grid, agree: pd.DataFrame, cross: pd.DataFrame, frontiers: dict, f_mins: dict,
                    seconds: float) -> str:
    """The theory stage's markdown summary (grid, agreement, crossovers, frontier gains)."""
    parts = [
        "# Perceptron theory of data pruning (Sorscher et al. 2022, Figure 1)",
        "",
        f"Simulation: N = {grid.N}, {grid.n_seeds} seeds, alpha_prune in {list(grid.alphas)}, "
        f"f in {list(grid.fractions)} (+ f = 1), theta in {list(grid.thetas)} degrees. "
        f"Replica theory: {len(grid.replica_alphas)} alpha_prune values; frontier over "
        f"{len(grid.frontier_fractions)} fractions from {min(grid.frontier_fractions, default=1):.3g} to 1 "
        f"for theta in {list(grid.frontier_thetas)}. Run time {seconds:.0f} s.",
        "",
        "## Theory vs simulation",
        "",
    ]
    if not agree.empty:
        by = agree.groupby(["theta", "policy"]).agg(
            points=("diff", "size"), max_abs_diff=("diff", lambda d: d.abs().max()),
            median_abs_z=("z", lambda z: z.abs().median()))
        parts += [_markdown(by.reset_index()), ""]
    parts += ["## Keep-easy -> keep-hard crossover (alpha_tot)", "",
              "Keep-easy has the lower test error below this total dataset size, keep-hard above it.", "",
              _markdown(cross), "", "## Pareto frontier", ""]
    for theta, frontier in frontiers.items():
        picks = frontier.iloc[np.unique(np.linspace(0, len(frontier) - 1, 6).round().astype(int))]
        parts += [f"theta = {theta:g} degrees, smallest optimal keep-hard f = {f_mins[theta]:.3g}", "",
                  _markdown(picks[["alpha_prune", "test_error", "unpruned", "gain", "f", "policy"]]), ""]
    return "\n".join(parts)
