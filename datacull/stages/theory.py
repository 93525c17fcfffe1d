"""`datacull theory`: the perceptron theory of data pruning (Figure 1 of Sorscher et al. 2022).

Simulates teacher-student perceptrons trained to maximum margin on data pruned by a probe's margin,
solves the replica theory for the same grid, and writes under `{paths.work_dir}/theory/`:
theory.csv (one row per point), frontier.csv (Pareto frontiers), figure1.png (panels A, B, C) and
theory.md (agreement, crossovers, frontier gains). Reads nothing; skips the work when the outputs
exist with the same config fingerprint.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from datacull.store import atomic_path, ensure_dir, fingerprint, to_plain, write_json_atomic
from datacull.theory.figure import plot_figure1
from datacull.theory.frontier import break_alpha, f_min, pareto_frontier
from datacull.theory.grid import TheoryGrid, run_grid
from datacull.theory.summary import agreement, crossovers, markdown_report

OUTPUTS = {"table": "theory.csv", "frontier": "frontier.csv", "figure": "figure1.png", "report": "theory.md"}
_META = "theory.json"
_VERSION = 1  # bump when the computation changes, so old outputs are not reused

log = logging.getLogger(__name__)


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _write_csv(path: Path, frame: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def _is_fresh(out_dir: Path, fp: str) -> bool:
    import json

    meta = out_dir / _META
    if not meta.exists() or not all((out_dir / name).exists() for name in OUTPUTS.values()):
        return False
    try:
        return json.loads(meta.read_text()).get("fingerprint") == fp
    except (OSError, ValueError):
        return False


def theory(cfg) -> dict[str, Path]:
    """Run the perceptron theory stage (Sorscher et al., NeurIPS 2022, arXiv 2206.14486, Figure 1).

    Uses `cfg.theory` (grid, seeds, solver) and `cfg.paths.work_dir`; returns name -> path of
    the files written (table, frontier, figure, report). Raises DatacullError when the work
    directory is not writable.
    """
    out_dir = ensure_dir(Path(str(cfg.paths.work_dir)) / "theory")
    paths = {name: out_dir / file for name, file in OUTPUTS.items()}
    fp = fingerprint(cfg.theory, _VERSION)
    if _is_fresh(out_dir, fp):
        log.info("datacull theory: outputs in %s are up to date (fingerprint %s); nothing to do", out_dir, fp)
        return paths

    grid = TheoryGrid.from_config(cfg.theory)
    start = time.perf_counter()
    table = run_grid(grid)
    replica = table[table["source"] == "replica"]
    frontiers = {theta: pareto_frontier(replica, theta) for theta in grid.frontier_thetas}
    f_mins = {theta: f_min(frontier) for theta, frontier in frontiers.items()}
    seconds = time.perf_counter() - start

    _write_csv(paths["table"], table)
    _write_csv(paths["frontier"], pd.concat(frontiers.values(), ignore_index=True) if frontiers
               else pd.DataFrame(columns=["theta", "alpha_prune", "test_error", "f", "policy"]))
    with atomic_path(paths["figure"], suffix=".png") as tmp:
        plot_figure1(table, frontiers, f_mins, grid.fractions, grid.thetas, tmp,
                     dpi=int(cfg.theory.get("figure", {}).get("dpi", 110)))
    agree = agreement(table)
    cross = crossovers(table, grid.thetas, grid.fractions)
    _write_text(paths["report"], markdown_report(grid, agree, cross, frontiers, f_mins, seconds))
    write_json_atomic(out_dir / _META, {"fingerprint": fp, "config": to_plain(cfg.theory), "seconds": seconds})

    _log_summary(paths, agree, cross, frontiers, f_mins, seconds, min(grid.frontier_fractions, default=np.nan))
    return paths


def _log_summary(paths, agree, cross, frontiers, f_mins, seconds, f_floor) -> None:
    lines = [f"datacull theory: done in {seconds:.0f} s; files in {paths['table'].parent}"]
    lines += [f"  {name:<8} {path}" for name, path in paths.items()]
    if not agree.empty:
        lines.append(f"  theory vs simulation: median |sim - theory| = {agree['diff'].abs().median():.4f}, "
                     f"max = {agree['diff'].abs().max():.4f} (test error)")
    for _, row in cross.iterrows():
        lines.append(f"  theta={row['theta']:g} f={row['f']:g}: keep-hard beats keep-easy above alpha_tot ~ "
                     f"{row['simulation']:.3g} (simulation), {row['theory']:.3g} (theory)")
    for theta, frontier in frontiers.items():
        last, fmin = frontier.iloc[-1], f_mins[theta]
        line = (f"  frontier theta={theta:g}: {last['gain']:.3g}x below no pruning "
                f"at alpha_prune={last['alpha_prune']:.3g}; ")
        if not np.isfinite(fmin):
            line += "keep-hard never optimal on this grid"
        elif np.isclose(fmin, f_floor):
            line += f"optimal f falls to the smallest f of the grid ({f_floor:.3g}): no f_min above it"
        elif break_alpha(frontier, fmin) >= last["alpha_prune"]:
            line += f"optimal f still falling at the grid end (f_min <= {fmin:.3g})"
        else:
            line += f"optimal f stops at f_min ~ {fmin:.3g} from alpha_prune ~ {break_alpha(frontier, fmin):.3g}"
        lines.append(line)
    log.info("\n".join(lines))
