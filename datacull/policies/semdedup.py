"""SemDeDup: semantic deduplication on embeddings, as a policy and as a pre-filter.

Abbas, Tirumala, Simig, Ganguli, Morcos (2023), "SemDeDup: Data-efficient learning at web-scale
through semantic deduplication"; protocol of the reference code (facebookresearch/SemDeDup):

1. spherical k-means on the L2-normalised embeddings (`datacull.kmeans`, faiss);
2. within each cluster, order the members by the keep rule; the reference (and default here,
   `keep=far`) puts the member FARTHEST from the centroid (lowest cosine similarity) first, so of a
   duplicate group the least prototypical member is kept. Alternatives: `near` (closest to the
   centroid first), `random` (seeded), `hard` / `easy` (highest / lowest difficulty score first);
3. `against=earlier` (the reference, default): M_j = the largest cosine similarity of member j to any
   EARLIER member of its cluster, kept or removed (the reference's max over the upper triangle of the
   cluster's similarity matrix); j is a duplicate when M_j > 1 - eps. The first member of every
   cluster is never a duplicate. On a chain a~b~c with a not~c this removes b AND c.
   `against=kept` (greedy variant): walk each cluster in keep order and keep a member only if its
   largest similarity to the members KEPT so far is <= 1 - eps; on the chain it removes only b.

Both are computed blockwise within a cluster (`block` x `block` similarity tiles), never an N x N
matrix; `kept` resolves a block's own members one by one, only where a block member duplicates an
earlier still-undecided member of the same block. The reason of a removed example names the kept
member it duplicates: the earlier member of largest similarity (`earlier`: among all earlier members,
followed along its own duplicate chain until a kept member is reached; `kept`: among the earlier
kept members).

As a policy alone (`select.policy=semdedup`) the budget is met as the reference meets a target size,
by choosing eps. `earlier`: the `budget` examples with the smallest M are kept (the largest eps that
leaves at least `budget` examples; ties at the cut broken by a seeded permutation). `kept`: the kept
count of the greedy walk is not exactly monotone in eps, so eps is found by bisection (the smallest
kept count >= budget that bisection reaches, to float32 resolution of the similarities); the excess
is then cut: of the members kept at that eps, those most similar to an earlier kept member of their
cluster go first (ties: later in keep order first). As a pre-filter (`select.dedup.eps`), every
duplicate under the chosen rule is removed before the configured policy runs.
"""
from __future__ import annotations

import logging

import numpy as np

from datacull.errors import DatacullError
from datacull.kmeans import l2_normalize, nearest_centroid, train_spherical_kmeans
from datacull.select import POLICIES, PolicyResult, hardness_order

log = logging.getLogger(__name__)

KEEP_RULES = ("far", "near", "random", "hard", "easy")
AGAINST = ("earlier", "kept")
_BISECTION_STEPS = 40  # halvings of [-1, 1]: well below float32 resolution of a cosine similarity


def default_clusters(n: int) -> int:
    """Number of k-means clusters when none is given: about one per 1,000 examples (at least 1)."""
    return max(1, n // 1000)


def _check_against(against) -> str:
    if against not in AGAINST:
        raise DatacullError(f"unknown semdedup `against` {against!r}; use earlier (the reference: any earlier "
                            f"member) or kept (greedy: only members kept so far)")
    return str(against)


def cluster_walk(embeddings: np.ndarray, scores: np.ndarray, rng: np.random.Generator, *,
                 clusters: int | None = None, keep: str = "far", block: int = 2048, niter: int = 25,
                 seed: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
    """(unit rows, one index array per cluster with its members in keep-rule order): steps 1-2 of
    the module docstring."""
    if keep not in KEEP_RULES:
        raise DatacullError(f"unknown semdedup keep rule {keep!r}; use one of {', '.join(KEEP_RULES)}")
    if block < 1:
        raise DatacullError(f"semdedup block must be >= 1, got {block}")
    n = len(embeddings)
    unit = l2_normalize(embeddings)
    k = min(int(clusters) if clusters else default_clusters(n), n)
    if k < 1:
        raise DatacullError(f"semdedup clusters must be >= 1, got {clusters}")
    if k > 1:
        centroids = train_spherical_kmeans(unit, k, niter=niter, seed=seed)
        assign, to_centroid = nearest_centroid(unit, centroids)
    else:
        assign, to_centroid = np.zeros(n, dtype=np.int64), unit @ l2_normalize(unit.mean(0, keepdims=True))[0]
    first = {"far": to_centroid, "near": -to_centroid, "random": rng.random(n),
             "hard": -np.asarray(scores, dtype=np.float64), "easy": np.asarray(scores, dtype=np.float64)}[keep]
    tie = rng.permutation(n)
    order = np.lexsort((tie, first, assign))  # by cluster, then keep rule (ascending key = earlier)
    bounds = np.flatnonzero(np.diff(assign[order])) + 1
    return unit, np.split(order, bounds)


def duplicate_similarity(embeddings: np.ndarray, scores: np.ndarray, rng: np.random.Generator, *,
                         clusters: int | None = None, keep: str = "far", block: int = 2048, niter: int = 25,
                         seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(M, nearest earlier member) per row: SemDeDup's max cosine similarity to an earlier member of
    the row's cluster in keep-rule order (-inf / -1 for the first member of a cluster)."""
    unit, groups = cluster_walk(embeddings, scores, rng, clusters=clusters, keep=keep, block=block,
                                niter=niter, seed=seed)
    sim = np.full(len(unit), -np.inf, dtype=np.float32)
    of = np.full(len(unit), -1, dtype=np.int64)
    for members in groups:
        _cluster_max(unit, members, block, sim, of)
    return sim, of


def _cluster_max(unit: np.ndarray, members: np.ndarray, block: int, sim: np.ndarray, of: np.ndarray) -> None:
    """Fill sim/of for one cluster (members in keep order) tile by tile."""
    rows = unit[members]
    for start in range(0, len(members), block):
        part = rows[start: start + block]
        best = np.full(len(part), -np.inf, dtype=np.float32)
        arg = np.full(len(part), -1, dtype=np.int64)
        for other in range(0, start + len(part), block):
            tile = part @ rows[other: other + block].T
            if other == start:  # only strictly earlier members
                tile[np.triu_indices(len(part), k=0, m=tile.shape[1])] = -np.inf
            _fold_max(tile, other, best, arg)
        sim[members[start: start + len(part)]] = best
        found = arg >= 0
        of[members[start: start + len(part)][found]] = members[arg[found]]


def _fold_max(tile: np.ndarray, offset: int, best: np.ndarray, arg: np.ndarray) -> None:
    """best/arg (per tile row) updated in place with the row maxima of `tile` (columns from `offset`)."""
    if tile.shape[1] == 0:
        return
    col = tile.argmax(1)
    val = tile[np.arange(len(tile)), col]
    better = val > best
    best[better], arg[better] = val[better], offset + col[better]


def kept_walk(unit: np.ndarray, groups: list[np.ndarray], threshold: float,
              block: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`against=kept`: (kept mask, largest similarity to an EARLIER KEPT member of the cluster, that
    member or -1) per row; a member is kept when that similarity is <= threshold (= 1 - eps)."""
    n = len(unit)
    kept = np.zeros(n, dtype=bool)
    sim = np.full(n, -np.inf, dtype=np.float32)
    of = np.full(n, -1, dtype=np.int64)
    for members in groups:
        _cluster_greedy(unit[members], members, np.float32(threshold), block, kept, sim, of)
    return kept, sim, of


def _cluster_greedy(rows: np.ndarray, members: np.ndarray, threshold: np.float32, block: int,
                    kept: np.ndarray, sim: np.ndarray, of: np.ndarray) -> None:
    """Greedy walk of one cluster (rows in keep order), block by block (memory `block` x `block`)."""
    kept_pos = np.zeros(0, dtype=np.int64)  # positions (in `rows`) kept so far
    for start in range(0, len(rows), block):
        part = rows[start: start + block]
        b = len(part)
        best = np.full(b, -np.inf, dtype=np.float32)
        arg = np.full(b, -1, dtype=np.int64)
        for other in range(0, len(kept_pos), block):  # earlier blocks: their kept members only
            chunk = kept_pos[other: other + block]
            local = np.full(b, -1, dtype=np.int64)
            _fold_max(part @ rows[chunk].T, 0, best, local)
            hit = local >= 0
            arg[hit] = chunk[local[hit]]
        tile = part @ part.T
        tile[np.triu_indices(b)] = -np.inf  # only strictly earlier members of the block
        alive = best <= threshold  # not a duplicate of a member kept before this block
        edge = (tile > threshold) & alive[None, :] & alive[:, None]
        decided = alive & ~edge.any(1)  # no earlier undecided neighbour in the block: kept
        keep = decided.copy()
        blocked = edge[:, decided].any(1)  # has an earlier kept neighbour in the block
        for i in np.flatnonzero(alive & ~decided).tolist():  # in keep order: kept unless blocked
            if not blocked[i]:
                keep[i] = True
                blocked |= edge[:, i]
        tile[:, ~keep] = -np.inf
        _fold_max(tile, start, best, arg)  # add the block's kept earlier members
        kept_pos = np.r_[kept_pos, start + np.flatnonzero(keep)]
        index = members[start: start + b]
        kept[index], sim[index] = keep, best
        found = arg >= 0
        of[index[found]] = members[arg[found]]


def duplicate_reasons(removed: np.ndarray, of: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """`pruned: near-duplicate of KEY` for removed rows (KEY = first kept member along the chain);
    "" (the select stage's default reason) where the chain reaches no kept member."""
    reasons = np.full(len(removed), "", dtype=object)
    for i in np.flatnonzero(removed):
        j = of[i]
        while j >= 0 and removed[j]:
            j = of[j]
        if j >= 0:
            reasons[i] = f"pruned: near-duplicate of {keys[j]}"
    return reasons


def _check_eps(eps) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 <= eps < 1:
        raise DatacullError(f"select.dedup.eps must be in [0, 1) (e.g. 0.05) or null, got {eps!r}")
    return float(eps)


@POLICIES.register("semdedup", "SemDeDup: drop near-duplicates within embedding clusters (Abbas et al. 2023)",
                   needs="embeddings")
def semdedup(scores: np.ndarray, budget: int, rng: np.random.Generator, *, embeddings: np.ndarray,
             keys: np.ndarray, clusters: int | None = None, keep: str = "far", block: int = 2048,
             niter: int = 25, against: str = "earlier", **_) -> PolicyResult:
    """Keep `budget` examples, eps chosen to meet the budget as SemDeDup meets a target size (module
    docstring: `earlier` keeps the budget least similar to an earlier member, `kept` bisects eps);
    pruned ones name the kept member they duplicate."""
    if _check_against(against) == "kept":
        return _semdedup_kept(scores, budget, rng, embeddings=embeddings, keys=keys, clusters=clusters,
                              keep=keep, block=block, niter=niter)
    sim, of = duplicate_similarity(embeddings, scores, rng, clusters=clusters, keep=keep, block=block,
                                   niter=niter, seed=int(rng.integers(2**31)))
    kept = np.zeros(len(scores), dtype=bool)
    kept[hardness_order(-sim.astype(np.float64), rng)[:budget]] = True
    if budget < len(scores):
        log.info(f"semdedup: keeping {budget}/{len(scores)} = eps {1 - float(sim[~kept].min()):.4g} "
                 f"(max similarity to an earlier cluster member <= {float(sim[kept].max()):.4g})")
    return PolicyResult(kept, duplicate_reasons(~kept, of, np.asarray(keys)))


def _semdedup_kept(scores: np.ndarray, budget: int, rng: np.random.Generator, *, embeddings: np.ndarray,
                   keys: np.ndarray, clusters, keep: str, block: int, niter: int) -> PolicyResult:
    """`against=kept` as a policy: bisection on eps, then the excess cut (module docstring)."""
    unit, groups = cluster_walk(embeddings, scores, rng, clusters=clusters, keep=keep, block=block,
                                niter=niter, seed=int(rng.integers(2**31)))
    n = len(unit)
    if budget >= n:
        return PolicyResult(np.ones(n, dtype=bool), np.full(n, "", dtype=object))
    walk = lambda t: kept_walk(unit, groups, t, block)
    # no cosine similarity lies outside [-1.01, 1.01]: count(lo) = one per cluster, count(hi) = n
    lo, hi, steps = -1.01, 1.01, 0
    best = walk(lo)
    if best[0].sum() >= budget:  # even eps = 2 keeps too many: cut among the clusters' first members
        hi = lo
    else:
        best = None
        for steps in range(1, _BISECTION_STEPS + 1):  # count(lo) < budget <= count(hi)
            mid = (lo + hi) / 2
            if np.float32(mid) in (np.float32(lo), np.float32(hi)):  # no float32 threshold left in between
                break
            result = walk(mid)
            count = int(result[0].sum())
            if count < budget:
                lo = mid
                continue
            hi, best = mid, result
            if count == budget:
                break
        if best is None:
            best = walk(hi)
    kept_at, sim, of = best
    within = np.zeros(n, dtype=np.int64)  # position in the cluster's keep order
    for members in groups:
        within[members] = np.arange(len(members))
    ranked = np.lexsort((rng.permutation(n), within, sim))  # least similar to an earlier kept member first
    kept = np.zeros(n, dtype=bool)
    kept[ranked[kept_at[ranked]][:budget]] = True
    log.info(f"semdedup (against=kept): eps {1 - hi:.4g} keeps {int(kept_at.sum())}/{n} (bisection, {steps} "
             f"steps); {int(kept_at.sum()) - budget} more cut to meet the budget {budget}")
    return PolicyResult(kept, duplicate_reasons(~kept, of, np.asarray(keys)))


def dedup_prefilter(section, scores: np.ndarray, embeddings: np.ndarray, keys: np.ndarray,
                    seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`select.dedup` as a pre-filter: (removed mask, reasons) over the given rows; nothing removed
    when `eps` is null. Duplicates: M > 1 - eps (`against=earlier`) or the greedy walk's removals
    (`against=kept`); module docstring."""
    eps = section.get("eps") if section is not None else None
    if eps is None:
        return np.zeros(len(scores), dtype=bool), np.full(len(scores), "", dtype=object)
    eps = _check_eps(eps)
    against = _check_against(section.get("against", "earlier"))
    rng = np.random.default_rng([int(seed), 0xDED])
    options = dict(clusters=section.get("clusters"), keep=str(section.get("keep", "far")),
                   block=int(section.get("block", 2048)), seed=int(seed))
    if against == "kept":
        unit, groups = cluster_walk(embeddings, scores, rng, **options)
        kept, _, of = kept_walk(unit, groups, 1.0 - eps, options["block"])
        removed = ~kept
    else:
        sim, of = duplicate_similarity(embeddings, scores, rng, **options)
        removed = sim > 1.0 - eps
    log.info(f"select.dedup: removed {int(removed.sum())} of {len(scores)} near-duplicates "
             f"(eps {eps}, against {against})")
    return removed, duplicate_reasons(removed, of, np.asarray(keys))


def dedup_usable(cfg, scores, values: np.ndarray, usable: np.ndarray, reasons: np.ndarray,
                 seed: int) -> np.ndarray:
    """The select stage's hook: `usable` minus the near-duplicates `select.dedup` removes (their
    `reasons` entries are set in place); `usable` unchanged when `select.dedup.eps` is null."""
    section = cfg.select.get("dedup")
    if section is None or section.get("eps") is None:
        return usable
    from datacull.stages.select import pool_embeddings

    keys = scores["key"].astype(str).to_numpy(dtype=object)[usable]
    removed, why = dedup_prefilter(section, values[usable], pool_embeddings(cfg, scores, usable), keys, seed)
    reasons[usable[removed]] = why[removed]
    return usable[~removed]
