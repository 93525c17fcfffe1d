"""Perceptron theory of data pruning (Sorscher et al. 2022, appendix A): solver, simulation, replica
theory and the `theory` stage. Small N keeps this file fast; the theory-vs-simulation check uses
N = 200."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf
from scipy import integrate, optimize
from scipy.special import ndtr

from datacull.errors import DatacullError
from datacull.theory.frontier import crossover_alpha, pareto_frontier
from datacull.theory.replica import probe_threshold, replica_curve, solve_replica
from datacull.theory.simulate import error_from_overlap, keep_indices, simulate_point
from datacull.theory.svm import kkt_violation, max_margin


# --- the max-margin solver -------------------------------------------------------------------

def test_max_margin_on_a_problem_solved_by_hand():
    # constraints w1 >= 1, w2 >= 1 (the third point is slack): min |w| is w = (1, 1)
    X = np.array([[1.0, 0.0], [0.0, 1.0], [3.0, 2.0]])
    solution = max_margin(X, np.ones(3))
    np.testing.assert_allclose(solution.w, [1.0, 1.0], atol=1e-10)
    np.testing.assert_allclose(solution.dual, [1.0, 1.0, 0.0], atol=1e-10)
    assert solution.margin == pytest.approx(1 / np.sqrt(2))


def test_max_margin_satisfies_kkt_and_matches_sklearn_svc():
    from sklearn.svm import SVC

    rng = np.random.default_rng(3)
    X = rng.standard_normal((120, 15))
    y = np.sign(X @ rng.standard_normal(15))
    solution = max_margin(X, y, working_set=1.0, add_per_round=0.5)  # force several working-set rounds
    assert solution.n_rounds > 1
    violation = kkt_violation(X, y, solution)
    scale = np.abs(solution.dual).max()
    assert violation["primal"] < 1e-8 and violation["dual"] == 0.0
    assert violation["stationarity"] < 1e-8 * max(1.0, scale) and violation["slackness"] < 1e-7 * max(1.0, scale)
    # A bias-free SVM equals SVC with intercept on the symmetrised data {(x, y), (-x, -y)}: by symmetry
    # the optimal intercept is 0. A huge C makes SVC's soft margin hard.
    svc = SVC(kernel="linear", C=1e8, tol=1e-10).fit(np.vstack([X, -X]), np.concatenate([y, -y]))
    assert abs(svc.intercept_[0]) < 1e-4
    np.testing.assert_allclose(solution.w, svc.coef_[0], rtol=1e-4, atol=1e-5)


def test_max_margin_refuses_non_separable_data():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((60, 10))  # 6 random labels per dimension: beyond Cover's capacity of 2
    with pytest.raises(DatacullError, match="not linearly separable"):
        max_margin(X, rng.choice([-1.0, 1.0], 60))


# --- pruning and simulation -------------------------------------------------------------------

def test_keep_indices_keeps_smallest_or_largest_margins_per_seed():
    margins = np.array([[0.1, -2.0, 0.5, -0.05, 3.0], [1.0, 0.2, -0.3, 4.0, -5.0]])
    hard = keep_indices(margins, 2, "keep_hard")
    easy = keep_indices(margins, 2, "keep_easy")
    assert [sorted(r) for r in hard.tolist()] == [[0, 3], [1, 2]]
    assert [sorted(r) for r in easy.tolist()] == [[1, 4], [3, 4]]
    with pytest.raises(ValueError):
        keep_indices(margins, 2, "keep_middle")


def test_simulation_is_reproducible_and_seed_dependent():
    a = simulate_point(80, 1.5, 0.5, "keep_hard", 10.0, n_seeds=3, seed=7)
    b = simulate_point(80, 1.5, 0.5, "keep_hard", 10.0, n_seeds=3, seed=7)
    c = simulate_point(80, 1.5, 0.5, "keep_hard", 10.0, n_seeds=3, seed=8)
    np.testing.assert_array_equal(a.R, b.R)
    assert not np.allclose(a.R, c.R)
    assert a.alpha_prune == pytest.approx(1.5) and a.alpha_tot == pytest.approx(3.0)
    np.testing.assert_allclose(a.errors, np.arccos(a.R) / np.pi)


def test_keep_easy_wins_at_small_alpha_tot_and_keep_hard_at_large():
    f, rows = 0.3, []
    for policy in ("keep_hard", "keep_easy"):
        for alpha in (0.5, 1.0, 4.0, 6.0):
            r = simulate_point(120, alpha, f, policy, 0.0, n_seeds=4, seed=1)
            rows.append(dict(policy=policy, theta=0.0, f=f, alpha_prune=r.alpha_prune, test_error=r.test_error,
                             sem=r.sem))
    table = pd.DataFrame(rows)
    hard, easy = (table[table["policy"] == p].set_index("alpha_prune") for p in ("keep_hard", "keep_easy"))
    small, large = hard.index.min(), hard.index.max()
    assert easy.loc[small, "test_error"] + 3 * easy.loc[small, "sem"] < hard.loc[small, "test_error"]
    assert hard.loc[large, "test_error"] + 3 * hard.loc[large, "sem"] < easy.loc[large, "test_error"]
    crossover = crossover_alpha(table, 0.0, f)
    assert small / f < crossover < large / f
    # the replica theory puts the switch inside the same interval of the simulated grid
    easy_better = (easy["test_error"] < hard["test_error"]).to_numpy()
    last_easy = hard.index[np.flatnonzero(easy_better)[-1]]
    first_hard = hard.index[np.flatnonzero(~easy_better)[0]]
    theory = pd.DataFrame([dict(policy=p, theta=0.0, f=f, alpha_prune=s.alpha_prune, test_error=s.test_error)
                           for p in ("keep_hard", "keep_easy")
                           for s in replica_curve(np.linspace(0.5, 6.0, 23), f, p, 0.0)])
    assert last_easy / f < crossover_alpha(theory, 0.0, f) < first_hard / f


def test_pareto_frontier_beats_no_pruning_by_a_growing_factor():
    rows = []
    for policy, fractions in (("keep_hard", (0.2, 0.5)), ("keep_easy", (0.2, 0.5)), ("none", (1.0,))):
        for f in fractions:
            for alpha in (1.0, 3.0, 6.0):
                r = simulate_point(100, alpha, f, policy, 0.0, n_seeds=4, seed=2)
                rows.append(dict(source="simulation", policy=policy, theta=0.0, f=f, alpha_tot=r.alpha_tot,
                                 alpha_prune=r.alpha_prune, test_error=r.test_error))
    frontier = pareto_frontier(pd.DataFrame(rows), 0.0)
    gains = frontier["gain"].to_numpy()
    assert gains[0] > 1.2 and np.all(np.diff(gains) > 0.2), frontier
    assert frontier["policy"].iloc[0] == "keep_easy" and frontier["policy"].iloc[-1] == "keep_hard"


def test_imperfect_probe_keeps_the_optimal_fraction_away_from_zero():
    # theta = 0: the smallest f of the grid is optimal at large alpha; theta = 20 degrees: it is not
    fractions, alphas = (0.02, 0.05, 0.1, 0.2, 0.4), np.geomspace(8.0, 24.0, 5)
    best = {}
    for theta in (0.0, 20.0):
        errors = np.array([[s.test_error for s in replica_curve(alphas, f, "keep_hard", theta)] for f in fractions])
        best[theta] = np.asarray(fractions)[errors.argmin(axis=0)]
    assert np.all(best[0.0] == 0.02)
    assert np.all(best[20.0] >= 0.1)


# --- replica theory ----------------------------------------------------------------------------

def _gardner_opper_optimal_stability(alpha: float) -> tuple[float, float]:
    """(R, kappa) of the max-margin perceptron, unpruned Gaussian data, in the textbook form.

    Engel & Van den Broeck, Statistical Mechanics of Learning (2001), ch. 4 (Gardner 1988; Opper et
    al. 1990): with the student field u ~ N(0, 1) and the teacher field correlated by R,
      1 - R^2 = alpha * int Du 2 H(-R u / sqrt(1 - R^2)) (kappa - u)^2 [u < kappa]      (volume -> 0)
      d/dR of [ (1 - R^2) - alpha * int ... ] = 0                                        (kappa max)
    Written independently of datacull.theory.replica (scipy quad over u, fsolve on both).
    """
    def residuals(params):
        R, kappa = params
        s = np.sqrt(1 - R * R)

        def density(u):
            return np.exp(-u * u / 2) / np.sqrt(2 * np.pi)

        volume = integrate.quad(lambda u: density(u) * 2 * ndtr(R * u / s) * (kappa - u) ** 2, -np.inf, kappa,
                                epsabs=1e-13, epsrel=1e-12)[0]
        # d/dR of 2 H(-R u / s) = 2 phi(R u / s) u / s^3
        slope = integrate.quad(lambda u: density(u) * 2 * density(R * u / s) * u / s ** 3 * (kappa - u) ** 2,
                               -np.inf, kappa, epsabs=1e-13, epsrel=1e-12)[0]
        return [1 - R * R - alpha * volume, -2 * R - alpha * slope]

    R, kappa = optimize.fsolve(residuals, [min(0.95, 0.3 + 0.15 * alpha), 1.0 / (1.0 + alpha)], xtol=1e-12)
    return R, kappa


@pytest.mark.parametrize("alpha", [0.5, 2.0, 5.0])
def test_unpruned_replica_matches_gardner_opper(alpha):
    R, kappa = _gardner_opper_optimal_stability(alpha)
    solution = solve_replica(alpha, 1.0, "none")
    assert solution.R == pytest.approx(R, abs=1e-6)
    assert solution.kappa == pytest.approx(kappa, abs=1e-6)
    # the pruning code path with f -> 1 reduces to the same curve
    assert solve_replica(alpha, 0.999999, "keep_hard").R == pytest.approx(R, abs=1e-4)


def test_unpruned_learning_curve_has_the_known_large_alpha_law():
    # optimal-stability perceptron: eps ~ 0.50 / alpha for large alpha (Opper, Kinzel, Kleinz, Nehl 1990)
    alpha = 40.0
    assert alpha * solve_replica(alpha, 1.0, "none").test_error == pytest.approx(0.50, abs=0.01)


def test_probe_threshold_keeps_fraction_f():
    for f in (0.05, 0.3, 0.9):
        assert 2 * ndtr(probe_threshold(f, "keep_hard")) - 1 == pytest.approx(f)
        assert 2 * (1 - ndtr(probe_threshold(f, "keep_easy"))) == pytest.approx(f)


# Stated tolerance: the simulated mean test error lies within 4 standard errors of the seeds plus 8%
# of the theory value (the finite-N allowance at N = 200); the margin kappa within 4 SEM plus 5%.
AGREEMENT_GRID = [(0.0, "keep_hard", 0.3, 0.5), (0.0, "keep_hard", 0.3, 3.0), (0.0, "keep_easy", 0.3, 0.5),
                  (0.0, "keep_easy", 0.3, 3.0), (0.0, "keep_hard", 0.7, 1.0), (0.0, "keep_easy", 0.7, 2.0),
                  (10.0, "keep_hard", 0.5, 3.0), (10.0, "keep_easy", 0.2, 1.0)]


def test_replica_theory_agrees_with_simulation_at_N_200():
    failures = []
    for theta, policy, f, alpha in AGREEMENT_GRID:
        sim = simulate_point(200, alpha, f, policy, theta, n_seeds=8, seed=11)
        theory = solve_replica(alpha, f, policy, theta)
        kappa_sem = sim.kappa.std(ddof=1) / np.sqrt(len(sim.kappa))
        if abs(sim.test_error - theory.test_error) > 4 * sim.sem + 0.08 * theory.test_error:
            failures.append(("test error", theta, policy, f, alpha, sim.test_error, theory.test_error, sim.sem))
        if abs(sim.kappa.mean() - theory.kappa) > 4 * kappa_sem + 0.05 * theory.kappa:
            failures.append(("kappa", theta, policy, f, alpha, sim.kappa.mean(), theory.kappa, kappa_sem))
    assert not failures, failures


def test_replica_error_is_arccos_of_overlap_and_monotone_in_alpha():
    curve = replica_curve(np.geomspace(0.5, 8.0, 8), 0.4, "keep_easy", 10.0)
    errors = np.array([s.test_error for s in curve])
    assert np.all(np.diff(errors) < 0)
    assert all(s.test_error == pytest.approx(error_from_overlap(s.R)) for s in curve)
    assert all(abs(s.rho) <= 1 and s.kappa > 0 for s in curve)


# --- the stage ---------------------------------------------------------------------------------

def _tiny_config(work_dir) -> OmegaConf:
    return OmegaConf.create({
        "paths": {"work_dir": str(work_dir)},
        "theory": {
            "N": 60, "n_seeds": 2, "seed": 0, "thetas": [0.0, 10.0], "fractions": [0.3],
            "policies": ["keep_hard", "keep_easy"], "alphas": [0.5, 2.0], "n_jobs": 1,
            "replica": {"n_alpha": 5, "alpha_min": 0.4, "alpha_max": 3.0, "quad_nodes": 32,
                        "frontier_thetas": [0.0, 10.0], "frontier_fractions": 2, "frontier_f_min": 0.2},
            "solver": {"tol": 1e-9, "working_set": 2.0, "add_per_round": 2.0},
            "figure": {"dpi": 40},
        },
    })


def test_stage_writes_table_figure_and_report(tmp_path, caplog):
    from datacull.stages.theory import theory

    caplog.set_level("INFO", logger="datacull")

    paths = theory(_tiny_config(tmp_path / "work"))
    assert set(paths) == {"table", "frontier", "figure", "report"}
    assert all(p.parent == tmp_path / "work" / "theory" and p.exists() for p in paths.values())
    table = pd.read_csv(paths["table"])
    assert list(table.columns) == ["source", "policy", "theta", "f", "alpha_tot", "alpha_prune", "test_error",
                                   "sem", "n_seeds"]
    assert set(table["source"]) == {"simulation", "replica"}
    assert set(table["policy"]) == {"keep_hard", "keep_easy", "none"}
    sim, rep = table[table["source"] == "simulation"], table[table["source"] == "replica"]
    assert len(sim) == 2 * (2 * 1 + 1) * 2 and sim["sem"].notna().all() and (sim["n_seeds"] == 2).all()
    assert rep["sem"].isna().all()
    np.testing.assert_allclose(table["alpha_tot"] * table["f"], table["alpha_prune"], rtol=1e-9)
    assert paths["figure"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Theory vs simulation" in paths["report"].read_text()
    assert not [p for p in paths["table"].parent.iterdir() if p.name.startswith(".")]  # no temp files left
    first = caplog.text
    assert "alpha_tot" in first and str(paths["table"].parent) in first
    mtime = paths["table"].stat().st_mtime_ns
    caplog.clear()
    theory(_tiny_config(tmp_path / "work"))  # same config: skipped
    assert paths["table"].stat().st_mtime_ns == mtime and "up to date" in caplog.text


def test_stage_reports_an_unwritable_work_dir(tmp_path):
    from datacull.stages.theory import theory

    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(DatacullError, match="work_dir"):
        theory(_tiny_config(blocker / "work"))


@pytest.mark.parametrize("option", ["default", "paper"])
def test_shipped_theory_configs_compose_into_valid_grids(option):
    from datacull.config import compose
    from datacull.theory.grid import TheoryGrid

    grid = TheoryGrid.from_config(compose([f"theory={option}"]).theory)
    assert grid.N >= 200 and grid.n_seeds >= 2 and 0.0 in grid.thetas and any(t > 0 for t in grid.thetas)
    assert set(grid.alphas) <= set(grid.replica_alphas) and max(grid.replica_alphas) <= 50
