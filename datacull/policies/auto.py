"""`select.policy=auto`: keep easy or keep hard, and how much? Decided by a measured pilot.

Sorscher et al. (NeurIPS 2022, arXiv 2206.14486, section 2 and appendix A) show that the best
pruning policy depends on how much data there is: keep the EASY examples when data is scarce (few
examples per parameter), the HARD ones when it is abundant; the crossover moves towards keep-hard
as the data grows, and the best fraction kept shrinks. Where a real dataset sits relative to that
crossover cannot be read off its size, so `auto` measures it:

Pilot. For each pilot size n in `select.auto.pilot_size` (one count or a list; nested seeded random
subsets of the usable pool, as `select.subset_size`) and each seed in `select.auto.seeds`, train
the configured model/recipe once on the whole n-example subset (the unpruned reference) and once per
(policy, f) for policy in keep_easy, keep_hard, random and f in `select.auto.fractions`, ranked by
the configured `select.metric`. Every run is an ordinary `datacull train` job (the sweep's
`job_config`), so its result row is cached and a re-run of `select` retrains nothing.

Rule (deterministic, at the LARGEST pilot size):
1. err(p) = mean test error of policy p over the pilot fractions and seeds.
2. The better of keep_easy / keep_hard is chosen if its err is below random's by more than
   `select.auto.margin`; otherwise `random` (no score-based policy earns its keep at this margin).
3. Regime: keep_easy winning = the pilot is in the scarce regime (below the crossover); keep_hard
   winning = abundant (past it). With two or more pilot sizes, the gap err(keep_hard) - err(keep_easy)
   per size is reported; if keep_easy wins but the gap shrinks as n grows, its zero is extrapolated
   linearly in log n as a rough crossover size, and a warning says so when the full pool is larger
   than that (the theory says keep_hard may win on the full data: re-run the pilot nearer that size).
4. `select.fraction=auto`: the smallest pilot fraction whose mean error under the chosen policy is
   within `select.auto.tolerance` of the unpruned pilot error; else 1.0 (keep everything).

Limits, honestly: the pilot is trained at pilot size with a short recipe, so the decision holds for
data and training like the pilot's; the crossover moves with dataset size, so a pilot much smaller
than the full data can pick keep_easy where keep_hard would win on everything (hence the gap trend
and the warning); with one seed and small test sets the errors are noisy (`margin` guards only the
choice against random); the fraction is chosen among the pilot fractions only, and at pilot size
(the best fraction shrinks with more data, so it is conservative for keep_hard).

The chosen selection is written under the chosen policy's own folder (`layout.selection_dir` of the
resolved config) with `auto.json` / `auto.csv` beside it and `summary.auto` in its metadata; train,
export and run resolve `auto` the same way (`datacull.stages.select.resolve_policy`).

The same rule runs on any `PilotEvaluator`; `perceptron_evaluator` evaluates it on the
teacher-student perceptron of `datacull.theory.simulate`, where the right answer is known.
"""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Callable

import pandas as pd
from omegaconf import DictConfig, OmegaConf, open_dict

from datacull.errors import DatacullError
from datacull.select import POLICIES

log = logging.getLogger(__name__)

PILOT_POLICIES = ("keep_easy", "keep_hard", "random")
UNPRUNED = "none"  # the pilot table's policy name of the unpruned reference run

# evaluate(policy, fraction, size, seed) -> {"n_train": int, "test_error": float}; policy "none" = unpruned
PilotEvaluator = Callable[[str, float, int, int], dict]


@POLICIES.register("auto", "measure keep_easy / keep_hard / random in a short pilot and use the winner "
                           "(select.auto.*; see datacull/policies/auto.py)")
def auto_policy(scores, budget, rng, **_):
    """Placeholder: `auto` is resolved by the select stage (`datacull select select.policy=auto`)."""
    raise DatacullError("select.policy=auto is resolved by the select stage (it trains a pilot first); run "
                        "`datacull select select.policy=auto` or call datacull.policies.auto.resolve_auto")


@dataclass(frozen=True)
class AutoSettings:
    """The pilot grid and the rule's thresholds (`select.auto.*`)."""

    fractions: tuple[float, ...] = (0.3, 0.6)
    sizes: tuple[int, ...] = (2000,)
    seeds: tuple[int, ...] = (0,)
    margin: float = 0.005
    tolerance: float = 0.01

    def __post_init__(self):
        if not self.fractions or any(not 0 < f < 1 for f in self.fractions):
            raise DatacullError(f"select.auto.fractions must be a non-empty list in (0, 1), got {list(self.fractions)}")
        if not self.sizes or any(isinstance(s, bool) or int(s) < 2 for s in self.sizes):
            raise DatacullError(f"select.auto.pilot_size must be a count >= 2 (or a list of them), "
                                f"got {list(self.sizes)}")
        if not self.seeds:
            raise DatacullError("select.auto.seeds is empty; give a list, e.g. select.auto.seeds=[0,1]")
        if self.margin < 0 or self.tolerance < 0:
            raise DatacullError(f"select.auto.margin and tolerance must be >= 0, got {self.margin}, {self.tolerance}")


def settings_from(cfg: DictConfig, pool: int) -> AutoSettings:
    """`select.auto` as AutoSettings; pilot sizes above the usable pool are clipped to it."""
    node = cfg.select.get("auto")
    node = OmegaConf.to_container(node) if node is not None else {}
    sizes = node.get("pilot_size", 2000)
    sizes = sizes if isinstance(sizes, list) else [sizes]
    if any(isinstance(s, bool) or not isinstance(s, int) for s in sizes):
        raise DatacullError(f"select.auto.pilot_size must be a count (or a list of counts), got {sizes}")
    seeds = node.get("seeds", [0])
    seeds = seeds if isinstance(seeds, list) else [seeds]
    fractions = node.get("fractions", [0.3, 0.6])
    fractions = fractions if isinstance(fractions, list) else [fractions]
    try:
        return AutoSettings(fractions=tuple(sorted(float(f) for f in fractions)),
                            sizes=tuple(sorted({min(int(s), pool) for s in sizes})),
                            seeds=tuple(int(s) for s in seeds), margin=float(node.get("margin", 0.005)),
                            tolerance=float(node.get("tolerance", 0.01)))
    except (TypeError, ValueError) as exc:
        raise DatacullError(f"select.auto has a non-numeric setting ({exc})") from None


def run_pilot(evaluate: PilotEvaluator, settings: AutoSettings) -> pd.DataFrame:
    """The pilot table: one row per (size, seed, policy, fraction) incl. the unpruned reference."""
    rows = []
    for size in settings.sizes:
        for seed in settings.seeds:
            grid = [(UNPRUNED, 1.0)] + [(p, f) for f in settings.fractions for p in PILOT_POLICIES]
            for policy, fraction in grid:
                out = evaluate(policy, fraction, size, seed)
                rows.append({"size": int(size), "seed": int(seed), "policy": policy, "fraction": float(fraction),
                             "n_train": int(out["n_train"]), "test_error": float(out["test_error"])})
    return pd.DataFrame(rows)


def decide(table: pd.DataFrame, settings: AutoSettings, n_full: int, choose_fraction: bool) -> dict:
    """Apply the rule of the module docstring to a pilot table; returns the decision and its reasons."""
    largest = int(table["size"].max())
    at = table[table["size"] == largest]
    err = {p: float(at.loc[at["policy"] == p, "test_error"].mean()) for p in PILOT_POLICIES}
    best = min(("keep_easy", "keep_hard"), key=lambda p: (err[p], p))
    policy = best if err[best] < err["random"] - settings.margin else "random"
    gaps = {int(n): float(g[g.policy == "keep_hard"].test_error.mean() - g[g.policy == "keep_easy"].test_error.mean())
            for n, g in table.groupby("size")}
    regime = {"keep_easy": "scarce (below the crossover: keep easy)",
              "keep_hard": "abundant (past the crossover: keep hard)",
              "random": "near the crossover or a weak metric (neither beats random)"}[policy]
    notes, crossover = [], None
    sizes = sorted(gaps)
    if len(sizes) >= 2 and best == "keep_easy" and gaps[sizes[-1]] < gaps[sizes[0]]:
        slope = (gaps[sizes[-1]] - gaps[sizes[0]]) / (math.log(sizes[-1]) - math.log(sizes[0]))
        crossover = int(round(sizes[-1] * math.exp(-gaps[sizes[-1]] / slope)))
        notes.append(f"keep_hard's disadvantage shrinks with pilot size ({gaps[sizes[0]]:+.4f} at n={sizes[0]} -> "
                     f"{gaps[sizes[-1]]:+.4f} at n={sizes[-1]}); extrapolated crossover near n={crossover}")
        if n_full > crossover:
            notes.append(f"the full pool ({n_full}) is past that: keep_hard may win on all of it; re-run the pilot "
                         f"with select.auto.pilot_size nearer {n_full}")
    elif policy == "keep_easy" and n_full > 4 * largest:
        notes.append(f"the full pool ({n_full}) is {n_full / largest:.0f}x the pilot; the crossover moves to keep_hard "
                     "as data grows (Sorscher et al. 2022): a larger pilot (or a list of sizes) tests that")
    unpruned = float(at.loc[at["policy"] == UNPRUNED, "test_error"].mean())
    fraction, per_fraction = None, {}
    if choose_fraction:
        chosen = at[at["policy"] == policy]
        per_fraction = {float(f): float(g.test_error.mean()) for f, g in chosen.groupby("fraction")}
        within = [f for f in sorted(per_fraction) if per_fraction[f] <= unpruned + settings.tolerance]
        fraction = within[0] if within else 1.0
    rule = (f"at pilot size n={largest}: mean test error over fractions {list(settings.fractions)} and seeds "
            f"{list(settings.seeds)}: " + ", ".join(f"{p} {err[p]:.4f}" for p in PILOT_POLICIES)
            + f"; {best} {'beats' if policy == best else 'does not beat'} random by more than margin "
              f"{settings.margin:g} -> {policy}")
    if choose_fraction:
        rule += (f"; fraction: smallest pilot fraction with error <= unpruned {unpruned:.4f} + tolerance "
                 f"{settings.tolerance:g} -> {fraction:g}")
    return {"policy": policy, "fraction": fraction, "regime": regime, "rule": rule, "notes": notes,
            "mean_error": err, "unpruned_error": unpruned, "gap_hard_minus_easy": {str(k): v for k, v in gaps.items()},
            "crossover_estimate": crossover, "fraction_errors": {f"{k:g}": v for k, v in per_fraction.items()},
            "pilot_size": largest, "full_pool": int(n_full)}


def perceptron_evaluator(N: int = 50, theta_deg: float = 0.0) -> PilotEvaluator:
    """The pilot on the teacher-student perceptron (datacull.theory.simulate): size = examples P, so
    alpha_tot = P / N; random keeping f of P is an unpruned set of f P examples; error is exact."""
    from datacull.theory.simulate import simulate_point

    def evaluate(policy: str, fraction: float, size: int, seed: int) -> dict:
        alpha_tot = size / N
        if policy in (UNPRUNED, "random"):
            point = simulate_point(N, fraction * alpha_tot, 1.0, "none", theta_deg, n_seeds=1, seed=seed)
        else:
            point = simulate_point(N, fraction * alpha_tot, fraction, policy, theta_deg, n_seeds=1, seed=seed)
        return {"n_train": int(round(point.alpha_prune * N)), "test_error": point.test_error}

    return evaluate


def training_evaluator(cfg: DictConfig) -> PilotEvaluator:
    """The pilot as `datacull train` jobs of the configured model/recipe/metric (cached result rows)."""
    import json

    from datacull import layout
    from datacull.stages.sweep import job_config
    from datacull.stages.train import train
    from datacull.sweep import SweepJob

    metric = layout.selection_metric(cfg)
    balanced = bool(cfg.select.get("class_balanced"))

    def evaluate(policy: str, fraction: float, size: int, seed: int) -> dict:
        job = SweepJob(metric, "random" if policy == UNPRUNED else policy, fraction, int(size), int(seed), balanced)
        row = json.loads(train(job_config(cfg, job))["row"].read_text())
        return {"n_train": row["n_train"], "test_error": row["test_error"]}

    return evaluate


def resolve_auto(cfg: DictConfig, n_full: int) -> tuple[DictConfig, dict]:
    """Run (or reuse) the pilot for `cfg` and return (a copy of cfg with the concrete policy and
    fraction, the evidence: settings, pilot table rows and the decision). `n_full` = usable pool."""
    choose_fraction = str(cfg.select.get("fraction")) == "auto" and cfg.select.get("count") is None
    settings = settings_from(cfg, n_full)
    runs = len(settings.sizes) * len(settings.seeds) * (1 + len(PILOT_POLICIES) * len(settings.fractions))
    log.info(f"select: policy=auto: pilot of {runs} "
             f"short training runs (sizes {list(settings.sizes)}, fractions {list(settings.fractions)}, seeds "
             f"{list(settings.seeds)}; cached)")
    table = run_pilot(training_evaluator(cfg), settings)
    decision = decide(table, settings, n_full, choose_fraction)
    log.info(f"select: auto: {decision['rule']}; regime: {decision['regime']}")
    for note in decision["notes"]:
        log.warning(f"select: auto: {note}")
    resolved = cfg.copy()
    with open_dict(resolved):
        resolved.select.policy = decision["policy"]
        if choose_fraction:
            resolved.select.fraction = decision["fraction"]
    settings_plain = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(settings).items()}
    return resolved, {"settings": settings_plain, "decision": decision, "pilot": table.to_dict(orient="records")}


def write_evidence(directory, evidence: dict) -> None:
    """`auto.json` (settings, decision, pilot) and `auto.csv` (the pilot table) in the selection folder."""
    from datacull.store import write_bytes_atomic, write_json_atomic

    write_json_atomic(directory / "auto.json", evidence)
    write_bytes_atomic(directory / "auto.csv", pd.DataFrame(evidence["pilot"]).to_csv(index=False).encode())


def mean_table(table: pd.DataFrame) -> pd.DataFrame:
    """Pilot errors averaged over seeds: one row per (size, policy, fraction)."""
    return (table.groupby(["size", "policy", "fraction"], as_index=False)
            .agg(n_train=("n_train", "mean"), test_error=("test_error", "mean"), seeds=("seed", "nunique")))


__all__ = ["AutoSettings", "PilotEvaluator", "decide", "mean_table", "perceptron_evaluator", "resolve_auto",
           "run_pilot", "settings_from", "training_evaluator", "write_evidence"]
