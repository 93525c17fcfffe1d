"""Figure 1 of Sorscher et al. (NeurIPS 2022, arXiv 2206.14486) from the theory table.

(A) test error vs alpha_prune for several f, keep-hard (solid, filled) and keep-easy (dashed, open),
replica theory as lines and simulation as points, perfect probe (theta = 0); (B) the same with an
imperfect probe (theta > 0); (C) the Pareto frontier over f against the unpruned power law, with
the optimal f below it: for theta = 0 it keeps shrinking (down to the smallest f of the grid) and
the frontier drops far below the power law; for theta > 0 it stops at f_min(theta) and the
frontier turns back to a power law.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

_STYLE = {"keep_hard": dict(ls="-", marker="o", mfc=None), "keep_easy": dict(ls="--", marker="s", mfc="white")}


def _learning_curves(ax, table: pd.DataFrame, theta: float, fractions, alpha_max: float) -> None:
    colors = plt.cm.viridis(np.linspace(0.0, 0.85, len(fractions)))
    at = table[np.isclose(table["theta"], theta) & (table["alpha_prune"] <= alpha_max * 1.05)]
    theory, sim = at[at["source"] == "replica"], at[at["source"] == "simulation"]
    for color, f in zip(colors, fractions):
        for policy, style in _STYLE.items():
            line = theory[(theory["policy"] == policy) & np.isclose(theory["f"], f)]
            dots = sim[(sim["policy"] == policy) & np.isclose(sim["f"], f)]
            ax.plot(line["alpha_prune"], line["test_error"], ls=style["ls"], color=color, lw=1.4)
            ax.errorbar(dots["alpha_prune"], dots["test_error"], yerr=dots["sem"], fmt=style["marker"], ms=4,
                        color=color, mfc=style["mfc"] or color, capsize=0, lw=0.8)
        ax.plot([], [], color=color, lw=3, label=f"f = {f:g}")
    line = theory[theory["policy"] == "none"]
    dots = sim[sim["policy"] == "none"]
    ax.plot(line["alpha_prune"], line["test_error"], color="black", lw=1.6, label="no pruning")
    ax.errorbar(dots["alpha_prune"], dots["test_error"], yerr=dots["sem"], fmt="D", ms=3.5, color="black")
    ax.plot([], [], "k-o", ms=4, label="keep hard")
    ax.plot([], [], "k--s", ms=4, mfc="white", label="keep easy")
    ax.set_yscale("log")
    ax.set_xlim(0.0, alpha_max * 1.03)
    ax.set_xlabel(r"$\alpha_{prune}$ = kept examples / N")
    ax.set_ylabel("test error")
    ax.grid(True, which="both", alpha=0.25)


def _frontier_panel(ax, ax_f, table: pd.DataFrame, frontiers: dict[float, pd.DataFrame],
                    f_mins: dict[float, float]) -> None:
    colors = plt.cm.plasma(np.linspace(0.0, 0.75, max(1, len(frontiers))))
    theta0 = next(iter(frontiers))
    unpruned = table[(table["source"] == "replica") & (table["policy"] == "none") & np.isclose(table["theta"], theta0)]
    alpha = unpruned["alpha_prune"].to_numpy()
    ax.plot(alpha, unpruned["test_error"], color="black", lw=2, label="no pruning")
    # the large-alpha law of the max-margin perceptron, eps ~ 0.5 / alpha (Engel & Van den Broeck 2001)
    ax.plot(alpha, 0.5 / alpha, color="grey", ls=":", lw=1.5, label=r"power law $0.5/\alpha$")
    for color, (theta, frontier) in zip(colors, frontiers.items()):
        ax.plot(frontier["alpha_prune"], frontier["test_error"], color=color, lw=1.8,
                label=rf"Pareto frontier, $\theta$ = {theta:g}°")
        hard = (frontier["policy"] == "keep_hard").to_numpy()
        f_opt = frontier["f"].where(hard)
        ax_f.plot(frontier["alpha_prune"], f_opt, color=color, lw=1.6)
        ax_f.plot(frontier["alpha_prune"], frontier["f"].where(~hard), color=color, lw=1.0, ls="--")
        fmin = f_mins.get(theta, np.nan)
        at = frontier[hard & np.isclose(frontier["f"], fmin)] if np.isfinite(fmin) else frontier.iloc[:0]
        # mark the break only where the optimal f has visibly stopped falling before the grid ends
        if theta > 0 and len(at) > 1:
            first = at.iloc[0]
            ax.plot(first["alpha_prune"], first["test_error"], "o", color=color, ms=7, mec="black")
            ax_f.axhline(fmin, color=color, ls=":", lw=1)
            ax_f.plot(first["alpha_prune"], fmin, "o", color=color, ms=6, mec="black")
    ax.plot([], [], "o", color="white", mec="black", label=r"break: optimal f reaches $f_{min}(\theta)$")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylabel("test error")
    ax.grid(True, which="both", alpha=0.25)
    ax.tick_params(labelbottom=False)
    ax_f.set_xscale("log")
    ax_f.set_yscale("log")
    ax_f.set_xlabel(r"$\alpha_{prune}$")
    ax_f.set_ylabel("optimal f", fontsize=8)
    ax_f.grid(True, which="both", alpha=0.25)
    ax_f.plot([], [], "k-", label="keep hard")
    ax_f.plot([], [], "k--", lw=1, label="keep easy")
    ax_f.legend(fontsize=6, loc="lower left", ncol=2)


def plot_figure1(table: pd.DataFrame, frontiers: dict[float, pd.DataFrame], f_mins: dict[float, float],
                 fractions, thetas, path: Path, dpi: int = 110) -> Path:
    """Draw panels A, B and C into one PNG at `path` (written as given; callers make it atomic)."""
    imperfect = [t for t in thetas if t > 0]
    alpha_max = float(table.loc[table["source"] == "simulation", "alpha_prune"].max())
    fig = plt.figure(figsize=(16, 5.2))
    outer = fig.add_gridspec(1, 3, width_ratios=[1, 1, 1.15])
    ax_a, ax_b = fig.add_subplot(outer[0]), fig.add_subplot(outer[1])
    right = outer[2].subgridspec(2, 1, height_ratios=[2.3, 1], hspace=0.06)
    ax_c, ax_f = fig.add_subplot(right[0]), fig.add_subplot(right[1])
    ax_f.sharex(ax_c)
    _learning_curves(ax_a, table, thetas[0], fractions, alpha_max)
    ax_a.set_title(rf"A  perfect metric ($\theta$ = {thetas[0]:g}°): lines theory, points simulation",
                   fontsize=9, loc="left")
    ax_a.legend(fontsize=7, ncol=2, loc="lower left")
    if imperfect:
        _learning_curves(ax_b, table, imperfect[0], fractions, alpha_max)
        ax_b.set_title(rf"B  imperfect metric ($\theta$ = {imperfect[0]:g}°)", fontsize=9, loc="left")
        ax_b.set_ylim(ax_a.get_ylim())
    else:
        ax_b.set_axis_off()
    if frontiers:
        replica = table[table["source"] == "replica"]
        floor = float(replica.loc[replica["policy"] != "none", "f"].min())
        _frontier_panel(ax_c, ax_f, replica, frontiers, f_mins)
        ax_c.set_title(f"C  Pareto frontier over f (theory, f >= {floor:g}) vs no pruning", fontsize=9, loc="left")
        ax_c.legend(fontsize=7, loc="lower left")
    else:
        ax_c.set_axis_off()
        ax_f.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=dpi, format="png")
    plt.close(fig)
    return Path(path)
