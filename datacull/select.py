"""Selection policies: which examples to keep given difficulty scores and a budget.

Every policy sees scores where HIGHER = HARDER and returns a boolean keep mask with exactly
`budget` True entries. Ties are broken by a seeded random permutation (never by position: sources
are often sorted by class, and discrete metrics such as forgetting tie massively), so a selection is
reproducible for a seed and unbiased across classes.

- keep_hard / keep_easy: top / bottom `budget` by score (Sorscher et al. 2022: keep easy when data
  is scarce, hard when it is abundant).
- random: uniform without replacement (the baseline).
- ccs: coverage-centric coreset selection (Zheng et al., ICLR 2023, "Coverage-centric coreset
  selection for high pruning rates"): drop the hardest `hard_cutoff` fraction, split the remaining
  score range into `strata` equal-width strata, give each stratum an equal share of the budget
  (smallest strata first, passing leftovers on) and sample uniformly within strata. The cutoff is
  tuned per dataset and pruning rate in the paper; the reference repository's published setting is
  CIFAR-10 at 90% pruning: cutoff 0.3 on AUM, 50 strata (haizhongzheng/Coverage-centric-coreset-selection).
`class_balanced` applies any policy within each class with budgets proportional to class size.

Policy interface: `policy(scores, budget, rng, **params)` returns a boolean keep mask, or a
`PolicyResult` (mask + a reason per example, "" = the default kept/pruned reason). A policy that
needs the embeddings is registered with `needs="embeddings"` and receives `embeddings` (float32 rows
aligned with `scores`) and `keys`; every per-example array parameter (length = len(scores)) is
sliced to the class members when `class_balanced` is on.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from datacull.errors import DatacullError
from datacull.registry import Registry

POLICIES: Registry = Registry("selection policy", "select.policy")


@dataclass
class PolicyResult:
    """A policy's keep mask plus, per example, why it was pruned or kept ("" = the default reason)."""

    keep: np.ndarray
    reasons: np.ndarray


def policy_needs(policy: str) -> str | None:
    """What a policy needs besides the scores (e.g. "embeddings"), or None."""
    return POLICIES.get(policy).info.get("needs")


def hardness_order(scores: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices hardest first; examples with equal scores in a seeded random order."""
    perm = rng.permutation(len(scores))
    return perm[np.argsort(-np.asarray(scores)[perm], kind="stable")]


def boundary_ties(scores: np.ndarray, keep: np.ndarray) -> dict:
    """How much of a selection rests on tie-breaking: share of tied scores overall, and the number
    (and share) of examples whose score equals the score at the kept/pruned boundary."""
    scores = np.asarray(scores, dtype=np.float64)
    n = len(scores)
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    tied_share = float((counts[inverse] > 1).mean()) if n else 0.0
    if keep.all() or not keep.any():
        return {"tied_share": tied_share, "boundary_value": float("nan"), "boundary_tied": 0, "boundary_tied_share": 0.0}
    kept_values, pruned_values = scores[keep], scores[~keep]
    shared = np.intersect1d(kept_values, pruned_values)  # values found on both sides of the cut
    tied = int(np.isin(scores, shared).sum())
    value = float(shared[0]) if len(shared) else float("nan")
    return {"tied_share": tied_share, "boundary_value": value, "boundary_tied": tied,
            "boundary_tied_share": tied / n}


@POLICIES.register("keep_hard", "keep the highest-scoring (hardest) examples")
def keep_hard(scores: np.ndarray, budget: int, rng: np.random.Generator, **_) -> np.ndarray:
    """Keep the `budget` hardest examples."""
    keep = np.zeros(len(scores), dtype=bool)
    keep[hardness_order(scores, rng)[:budget]] = True
    return keep


@POLICIES.register("keep_easy", "keep the lowest-scoring (easiest, most typical) examples")
def keep_easy(scores: np.ndarray, budget: int, rng: np.random.Generator, **_) -> np.ndarray:
    """Keep the `budget` easiest examples."""
    keep = np.zeros(len(scores), dtype=bool)
    keep[hardness_order(-np.asarray(scores), rng)[:budget]] = True
    return keep


@POLICIES.register("random", "keep a uniformly random subset (ignores the scores)")
def keep_random(scores: np.ndarray, budget: int, rng: np.random.Generator, **_) -> np.ndarray:
    """Keep `budget` examples drawn uniformly without replacement."""
    keep = np.zeros(len(scores), dtype=bool)
    keep[rng.choice(len(scores), size=budget, replace=False)] = True
    return keep


@POLICIES.register("ccs", "coverage-centric coreset selection: hard cutoff + stratified sampling")
def coverage_centric(scores: np.ndarray, budget: int, rng: np.random.Generator, *,
                     hard_cutoff: float = 0.1, strata: int = 50, cutoff_scores: np.ndarray | None = None,
                     **_) -> np.ndarray:
    """CCS (Zheng et al. 2023). The cutoff shrinks when the budget needs the examples it would drop.

    `cutoff_scores` (default: `scores`) ranks the examples for the hard cutoff; the reference code
    cuts on AUM whatever score it stratifies."""
    if not 0 <= hard_cutoff < 1:
        raise DatacullError(f"select.hard_cutoff must be in [0, 1), got {hard_cutoff}")
    if strata < 1:
        raise DatacullError(f"select.strata must be >= 1, got {strata}")
    n = len(scores)
    dropped = min(int(round(hard_cutoff * n)), n - budget)
    ranking = scores if cutoff_scores is None else np.asarray(cutoff_scores, dtype=np.float64)
    candidates = np.sort(hardness_order(ranking, rng)[dropped:])
    values = scores[candidates]
    edges = np.linspace(values.min(), values.max(), strata + 1)
    stratum = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, strata - 1)
    members = [candidates[stratum == s] for s in range(strata)]
    keep = np.zeros(n, dtype=bool)
    remaining = budget
    order = sorted(range(strata), key=lambda s: len(members[s]))
    for position, s in enumerate(order):
        share = min(len(members[s]), remaining // (strata - position))
        if share:
            keep[rng.choice(members[s], size=share, replace=False)] = True
        remaining -= share
    return top_up(keep, budget, rng)


def class_budgets(labels: np.ndarray, budget: int) -> dict[int, int]:
    """Per-class budgets proportional to class sizes, summing exactly to `budget` (largest remainder)."""
    classes, counts = np.unique(labels, return_counts=True)
    exact = budget * counts / counts.sum()
    base = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - base), kind="stable")[: budget - base.sum()]:
        base[i] += 1
    return {int(c): int(b) for c, b in zip(classes, base)}


def select_mask(scores: np.ndarray, labels: np.ndarray, budget: int, policy: str, *,
                class_balanced: bool = False, seed: int = 0, cutoff_scores: np.ndarray | None = None,
                **params) -> np.ndarray:
    """Keep mask with exactly `budget` entries chosen by `policy` (optionally within each class).

    `cutoff_scores` (CCS only) is the score the hard cutoff is taken on."""
    return select_with_reasons(scores, labels, budget, policy, class_balanced=class_balanced, seed=seed,
                               cutoff_scores=cutoff_scores, **params).keep


def select_with_reasons(scores: np.ndarray, labels: np.ndarray, budget: int, policy: str, *,
                        class_balanced: bool = False, seed: int = 0, **params) -> PolicyResult:
    """`select_mask` plus the policy's per-example reasons ("" where it gave none)."""
    choose: Callable = POLICIES.get(policy).obj
    n = len(scores)
    if not 0 <= budget <= n:
        raise DatacullError(f"cannot keep {budget} of {n} scored examples")
    rng = np.random.default_rng(seed)
    params = {k: v for k, v in params.items() if v is not None}
    if not class_balanced:
        return _as_result(choose(np.asarray(scores), budget, rng, **params), n, budget, policy)
    per_example = {k for k, v in params.items() if isinstance(v, (np.ndarray, list)) and len(v) == n}
    keep = np.zeros(n, dtype=bool)
    reasons = np.full(n, "", dtype=object)
    for label, class_budget in class_budgets(labels, budget).items():
        members = np.flatnonzero(labels == label)
        member_params = {k: (np.asarray(v)[members] if k in per_example else v) for k, v in params.items()}
        part = _as_result(choose(np.asarray(scores)[members], class_budget, rng, **member_params),
                          len(members), class_budget, policy)
        keep[members[part.keep]] = True
        reasons[members] = part.reasons
    return PolicyResult(keep, reasons)


def _as_result(out, n: int, budget: int, policy: str) -> PolicyResult:
    result = out if isinstance(out, PolicyResult) else PolicyResult(np.asarray(out, dtype=bool), np.full(n, "", dtype=object))
    if result.keep.shape != (n,) or int(result.keep.sum()) != budget:
        raise RuntimeError(f"policy {policy} kept {int(result.keep.sum())} of {n}, expected exactly {budget}")
    return result


def check_budget(fraction, count, policy: str | None = None) -> tuple[float | str | None, int | None]:
    """`select.fraction` / `select.count` as numbers (count wins when set), or one clear error.

    `select.fraction=auto` is accepted (returned as "auto") only with `policy="auto"`, which
    measures the fraction in a pilot (datacull/policies/auto.py)."""
    if count is not None:
        if isinstance(count, bool) or not isinstance(count, int):
            raise DatacullError(f"select.count must be a whole number of examples (or null), got {count!r}")
        return None, count
    if fraction == "auto":
        if policy != "auto":
            raise DatacullError(f"select.fraction=auto needs select.policy=auto (it is chosen from the auto pilot); "
                                f"with select.policy={policy} give a number in (0, 1]")
        return "auto", None
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < float(fraction) <= 1:
        raise DatacullError(f"select.fraction must be in (0, 1], got {fraction!r}")
    return float(fraction), None


def budget_from(n: int, fraction: float | None, count: int | None) -> int:
    """Number of examples to keep from `select.count`, else `select.fraction` of `n` (rounded)."""
    fraction, count = check_budget(fraction, count)
    if count is not None:
        if not 1 <= count <= n:
            raise DatacullError(f"select.count must be between 1 and {n} (the scored examples), got {count}")
        return count
    return max(1, int(round(fraction * n)))


def top_up(keep: np.ndarray, budget: int, rng: np.random.Generator) -> np.ndarray:
    """Add random unkept examples until `budget` are kept (guards rounding in stratified policies)."""
    missing = budget - int(keep.sum())
    if missing > 0:
        keep[rng.choice(np.flatnonzero(~keep), size=missing, replace=False)] = True
    return keep


from datacull import policies as _policies  # noqa: E402,F401  (registers the policies of datacull/policies/)
