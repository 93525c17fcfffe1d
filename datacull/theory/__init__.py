"""Perceptron theory of data pruning (Sorscher et al., NeurIPS 2022, arXiv 2206.14486, appendix A).

simulate: teacher-student simulation with probe-margin pruning and an exact max-margin student.
replica: the replica-theory order parameters (R, rho, kappa) for the same setup.
frontier: Pareto frontier over the kept fraction, f_min(theta), keep-easy/keep-hard crossover.
"""
from datacull.theory.frontier import break_alpha, crossover_alpha, f_min, pareto_frontier
from datacull.theory.replica import ReplicaSolution, field_quadrature, probe_threshold, replica_curve, solve_replica
from datacull.theory.simulate import (POLICIES, SimulationResult, error_from_overlap, keep_indices, sample_pruned,
                                      simulate_point)
from datacull.theory.svm import MaxMarginSolution, kkt_violation, max_margin

__all__ = [
    "POLICIES", "MaxMarginSolution", "ReplicaSolution", "SimulationResult", "break_alpha", "crossover_alpha",
    "error_from_overlap", "f_min", "field_quadrature", "keep_indices", "kkt_violation", "max_margin",
    "pareto_frontier", "probe_threshold", "replica_curve", "sample_pruned", "simulate_point", "solve_replica",
]
