"""The select stage: rank examples by one metric and keep a fraction by a policy.

Writes `selections/{tag}/selection.parquet` (see `layout.selection_dir`: one folder per selection
identity, so the jobs of a multirun never share a file) with key, index, label, score, rank
(0 = hardest, -1 = skipped), kept and reason, for EVERY example of the scores table:
kept + pruned + skipped = all keys.

Order of operations: undecodable examples are skipped; a NaN metric value of a decodable example is
imputed (`select.missing_score=median`) or skipped (`skip`); near-duplicates are removed when
`select.dedup.eps` is set (SemDeDup pre-filter, datacull/policies/semdedup.py); the optional seeded random subset
(`select.subset_size`, nested across sizes) is drawn from the remaining pool; the policy then keeps
`fraction x pool` of the subset. Ties are broken by a seeded random permutation.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from datacull import layout
from datacull.data.base import ArraySource, CorruptExample, DataSource, SubsetSource, build_source, skip_reason
from datacull.errors import DatacullError
from datacull.policies.semdedup import dedup_usable
from datacull.select import (POLICIES, boundary_ties, budget_from, check_budget, hardness_order, policy_needs,
                             select_with_reasons)
from datacull.store import fingerprint, is_fresh, parquet_config, parquet_fingerprint, to_plain, write_parquet_atomic

log = logging.getLogger(__name__)

_NOT_METRICS = ("key", "index", "label", "skip_reason")


def load_scores(cfg: DictConfig) -> tuple[pd.DataFrame, str]:
    """The scores table (the experiment's, or the user's `select.scores` file) and its fingerprint.

    The experiment's table must have been computed on the configured data (else: re-run `datacull
    score`); a user's file is joined to the dataset by key, and examples that cannot be decoded are
    marked skipped whatever the scores say (see `decode_errors`).
    """
    external = cfg.select.get("scores")
    if not external:
        path = layout.scores_path(cfg)
        if not path.exists():
            raise DatacullError(f"no scores at {path}; run `datacull score` first (or set select.scores=FILE)")
        try:
            frame, stored = pd.read_parquet(path), parquet_config(path)
        except (OSError, ValueError) as exc:
            raise DatacullError(f"cannot read {path} ({exc}); delete it and run `datacull score` again") from None
        if "data" in stored and layout.data_identity(OmegaConf.create(stored["data"])) != layout.data_identity(cfg.data):
            raise DatacullError(f"the scores at {path} were computed on other data than data={cfg.data.name} as "
                                f"configured now; run `datacull score` again (same overrides) to recompute them")
        return frame, parquet_fingerprint(path) or ""
    path = Path(str(external)).expanduser()
    if not path.is_file():
        raise DatacullError(f"select.scores file {path} does not exist")
    csv = path.suffix.lower() == ".csv"
    try:
        frame = pd.read_csv(path, dtype={"key": str}) if csv else pd.read_parquet(path)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DatacullError(f"cannot read select.scores file {path} as {'csv' if csv else 'parquet'} ({first})") from None
    if "key" not in frame.columns:
        raise DatacullError(f"select.scores file {path} has no 'key' column (columns: {list(frame.columns)})")
    aligned, source = _align_to_source(cfg, frame, path)
    aligned["skip_reason"] = decode_errors(cfg, source)
    stat = path.stat()
    return aligned, fingerprint(stat.st_size, stat.st_mtime_ns, str(path), layout.data_identity(cfg.data))


def decode_errors(cfg: DictConfig, source: DataSource) -> np.ndarray:
    """`skipped: ...` for each example of `source` that cannot be decoded, "" for the others.

    Array-backed sources cannot hold corrupt images; otherwise one decoding pass, cached beside the
    experiment (keyed by the data identity and checked against the keys).
    """
    if _array_backed(source):
        return np.full(len(source), "", dtype=object)
    cache = layout.experiment_dir(cfg) / f"decode-check-{fingerprint(layout.data_identity(cfg.data))}.parquet"
    if cache.exists():
        table = pd.read_parquet(cache)
        if table["key"].tolist() == source.keys:
            return table["skip_reason"].to_numpy(dtype=object)
    errors = np.full(len(source), "", dtype=object)
    for i in tqdm(range(len(source)), desc="select: checking images decode", unit="img", disable=len(source) < 10_000):
        try:
            source.load(i)
        except CorruptExample as exc:
            errors[i] = f"skipped: {skip_reason(exc)}"
    write_parquet_atomic(cache, pd.DataFrame({"key": source.keys, "skip_reason": errors.astype(str)}))
    return errors


def _array_backed(source: DataSource) -> bool:
    while isinstance(source, SubsetSource):
        source = source.base
    return isinstance(source, ArraySource)


def _align_to_source(cfg: DictConfig, frame: pd.DataFrame, path: Path) -> tuple[pd.DataFrame, DataSource]:
    """Join user scores to the dataset by key (any key on one side only is an error); also the source."""
    source = build_source(cfg.data)
    keys = pd.Index(source.keys)
    given = pd.Index(frame["key"].astype(str))
    if given.has_duplicates:
        raise DatacullError(f"{path} lists {int(given.duplicated().sum())} keys twice (first: {list(given[given.duplicated()][:3])})")
    unknown, missing = given.difference(keys), keys.difference(given)
    if len(unknown) or len(missing):
        raise DatacullError(
            f"scores in {path} and dataset keys do not match: {len(unknown)} score keys not in the dataset "
            f"(first: {list(unknown[:3])}), {len(missing)} dataset keys without a score (first: {list(missing[:3])})"
        )
    aligned = frame.set_index(frame["key"].astype(str)).loc[keys].reset_index(drop=True)
    aligned["key"] = list(keys)
    aligned["index"] = np.arange(len(keys), dtype=np.int64)
    aligned["label"] = source.labels.astype(np.int64)
    return aligned, source


def score_column(scores: pd.DataFrame, name: str, key: str) -> np.ndarray:
    """The float values of score column `name`, or one error listing the available columns."""
    if name not in scores.columns:
        available = [c for c in scores.columns if c not in _NOT_METRICS]
        raise DatacullError(f"{key} {name!r} is not in the scores (available: {', '.join(available)})")
    try:
        return scores[name].to_numpy(dtype=np.float64)
    except (TypeError, ValueError):
        raise DatacullError(f"score column {name!r} holds non-numeric values; every score must be a number") from None


def subset_order(n: int, seed: int) -> np.ndarray:
    """A seeded permutation of range(n); the first m entries of it form the size-m subset (nested in m)."""
    return np.random.default_rng([int(seed), 0x5EED]).permutation(n)


def subset_count(subset_size, pool: int) -> int:
    """`select.subset_size` as a count: an int count, or a float fraction in (0, 1] of the pool."""
    if isinstance(subset_size, bool) or not isinstance(subset_size, (int, float)):
        raise DatacullError(f"select.subset_size must be a count, a fraction in (0, 1] or null, got {subset_size!r}")
    if isinstance(subset_size, float):
        if not 0 < subset_size <= 1:
            raise DatacullError(f"select.subset_size={subset_size} as a fraction must be in (0, 1]")
        return max(1, int(round(subset_size * pool)))
    if not 1 <= subset_size <= pool:
        raise DatacullError(f"select.subset_size={subset_size} must be between 1 and {pool} (the usable examples)")
    return int(subset_size)


def select(cfg: DictConfig, auto: dict | None = None) -> dict[str, Path]:
    """Apply `cfg.select` to the scores and write this selection's `selection.parquet`.

    `select.policy=auto` first resolves the policy (and `select.fraction=auto`) from a pilot
    (datacull/policies/auto.py); `auto` is that evidence, stored as the summary's `auto` entry."""
    sel = cfg.select
    POLICIES.get(str(sel.policy))  # unknown policy or budget: error before any work
    check_budget(sel.get("fraction"), sel.get("count"), str(sel.policy))
    if str(sel.get("missing_score", "median")) not in ("median", "skip"):
        raise DatacullError(f"select.missing_score must be median or skip, not {sel.get('missing_score')!r}")
    if str(sel.policy) == "auto":
        return {"selection": layout.selection_path(resolve_policy(cfg))}
    scores, scores_fp = load_scores(cfg)
    metric = layout.selection_metric(cfg)
    values = score_column(scores, metric, "select.metric")
    cutoff_metric = sel.get("cutoff_metric") if str(sel.policy) == "ccs" else None
    cutoff_values = score_column(scores, str(cutoff_metric), "select.cutoff_metric") if cutoff_metric else None
    out = layout.selection_path(cfg)
    fp = fingerprint(scores_fp, layout.selection_identity(cfg))
    if is_fresh(out, fp):
        stored = parquet_config(out)
        if auto is not None and stored.get("summary", {}).get("auto") != json.loads(json.dumps(auto)):
            stored.setdefault("summary", {})["auto"] = auto  # same kept set: only the evidence is added
            write_parquet_atomic(out, pd.read_parquet(out), fp=fp, config=stored)
        log.info(f"select: {out} is up to date")
        return {"selection": out}

    seed = layout.selection_seed(cfg)
    reasons = scores["skip_reason"].fillna("").astype(str).to_numpy(dtype=object)
    decodable = reasons == ""
    values, imputed = _fill_missing(values, decodable, reasons, metric, str(sel.get("missing_score", "median")))
    if cutoff_values is not None:
        cutoff_values, _ = _fill_missing(cutoff_values, decodable, reasons, str(cutoff_metric), "median")
    usable = np.flatnonzero(reasons == "")
    if len(usable) == 0:
        raise DatacullError(f"no example has a usable {metric} score; nothing to select")
    scored = usable
    usable = dedup_usable(cfg, scores, values, usable, reasons, seed)  # select.dedup pre-filter (semdedup)
    pool = usable
    subset_note = ""
    if sel.get("subset_size") is not None:
        size = subset_count(sel.subset_size, len(usable))
        in_subset = np.zeros(len(scores), dtype=bool)
        in_subset[usable[subset_order(len(usable), seed)[:size]]] = True
        pool = np.flatnonzero(in_subset)
        reasons[usable[~in_subset[usable]]] = f"pruned: outside the random {size}-example subset (seed {seed})"
        subset_note = f" of a {size}-example subset"
    budget = budget_from(len(pool), sel.get("fraction"), sel.get("count"))
    labels = scores["label"].to_numpy()
    extra = policy_inputs(cfg, scores, pool)
    chosen = select_with_reasons(values[pool], labels[pool], budget, str(sel.policy),
                                 class_balanced=bool(sel.class_balanced), seed=seed,
                                 hard_cutoff=float(sel.get("hard_cutoff", 0.1)), strata=int(sel.get("strata", 50)),
                                 cutoff_scores=None if cutoff_values is None else cutoff_values[pool], **extra)
    keep_pool = chosen.keep
    kept = np.zeros(len(scores), dtype=bool)
    kept[pool[keep_pool]] = True
    rank = np.full(len(scores), -1, dtype=np.int64)
    rank[scored[hardness_order(values[scored], np.random.default_rng(seed))]] = np.arange(len(scored))
    how = f"{sel.policy}{' class-balanced' if sel.class_balanced else ''} {budget}/{len(pool)}{subset_note} by {metric}"
    reasons[pool[keep_pool]] = f"kept: {how}"
    reasons[pool[~keep_pool]] = f"pruned: {how}"
    given = chosen.reasons.astype(str) != ""
    reasons[pool[given]] = chosen.reasons[given]
    ties = boundary_ties(values[pool], keep_pool)
    frame = pd.DataFrame({"key": scores["key"].astype(str), "index": scores["index"].astype(np.int64),
                          "label": scores["label"].astype(np.int64), "score": values, "rank": rank,
                          "kept": kept, "reason": reasons.astype(str)})
    emptied = emptied_classes(labels[pool], kept[pool])
    if emptied:
        log.warning(f"select: {len(emptied)} classes lose every example under this selection (labels "
                    f"{emptied[:10]}{' ...' if len(emptied) > 10 else ''}); select.class_balanced=true keeps every "
                    "class (the manifest's per_class lists before/after counts)")
    summary = {"metric": metric, "policy": str(sel.policy), "budget": int(budget), "pool": int(len(pool)),
               "emptied_classes": emptied,
               "usable": int(len(scored)), "skipped": int(len(scores) - len(scored)), "imputed": int(imputed),
               "deduplicated": int(len(scored) - len(usable)),
               "seed": seed, "ties": {k: (float(v) if isinstance(v, (float, np.floating)) else int(v))
                                      for k, v in ties.items()}}
    if auto is not None:
        summary["auto"] = auto
    write_parquet_atomic(out, frame, fp=fp, config={"select": to_plain(sel), "metric": metric,
                                                     "scores_fingerprint": scores_fp,
                                                     "identity": layout.selection_identity(cfg), "summary": summary})
    _warn_ties(ties, float(sel.get("tie_warn_share", 0.05)), metric)
    log.info(f"select: kept {budget}, pruned {len(scored) - budget}, skipped {len(scores) - len(scored)} "
             f"({how}){f'; {imputed} NaN scores ranked as the median' if imputed else ''} -> {out}")
    return {"selection": out}


def resolve_policy(cfg: DictConfig) -> DictConfig:
    """`cfg` itself, or for `select.policy=auto` a copy with the policy (and `select.fraction=auto`)
    chosen by the pilot (datacull/policies/auto.py; its runs are cached), after writing that
    selection and its evidence (`auto.json`, `auto.csv`, `summary.auto`). Stages that use a
    selection (train, export, run) call this first, so they see the concrete policy."""
    if str(cfg.select.get("policy")) != "auto":
        return cfg
    from datacull.policies.auto import resolve_auto, write_evidence

    check_budget(cfg.select.get("fraction"), cfg.select.get("count"), "auto")
    scores, _ = load_scores(cfg)
    usable = int((scores["skip_reason"].fillna("").astype(str) == "").sum())
    size = cfg.select.get("subset_size")
    resolved, evidence = resolve_auto(cfg, subset_count(size, usable) if size is not None else usable)
    paths = select(resolved, auto=evidence)
    write_evidence(paths["selection"].parent, evidence)
    return resolved


def emptied_classes(labels: np.ndarray, kept: np.ndarray) -> list[int]:
    """Labels (>= 0) present in `labels` of which no example is kept."""
    present = np.unique(labels[labels >= 0])
    return [int(c) for c in present if not kept[labels == c].any()]


def policy_inputs(cfg: DictConfig, scores: pd.DataFrame, pool: np.ndarray) -> dict:
    """Keyword arguments for the configured policy beyond the scores: its `select.<policy>` section,
    and the pool's embedding rows + keys when the policy needs embeddings."""
    policy = str(cfg.select.policy)
    section = cfg.select.get(policy)
    params = dict(to_plain(section)) if isinstance(section, DictConfig) else {}
    if policy_needs(policy) == "embeddings":
        params["embeddings"] = pool_embeddings(cfg, scores, pool)
        params["keys"] = scores["key"].astype(str).to_numpy(dtype=object)[pool]
    return params


def pool_embeddings(cfg: DictConfig, scores: pd.DataFrame, pool: np.ndarray) -> np.ndarray:
    """float32 embedding rows of the scores rows `pool`, matched by key (embeds first if needed)."""
    from datacull.stages.embed import embed, load_embeddings

    try:
        rows, table = load_embeddings(cfg)
    except DatacullError:
        if int(cfg.shard.count) != 1:
            raise
        embed(cfg)
        rows, table = load_embeddings(cfg)
    position = pd.Index(table["key"].astype(str))
    wanted = scores["key"].astype(str).to_numpy()[pool]
    where = position.get_indexer(wanted)
    if (where < 0).any():
        missing = wanted[where < 0]
        raise DatacullError(f"{len(missing)} selected keys have no embedding in {layout.embeddings_dir(cfg)} "
                            f"(first: {list(missing[:3])}); run `datacull embed` with the same data/encoder settings")
    return _take_rows(rows, where)


def _take_rows(rows, where: np.ndarray) -> np.ndarray:
    order = np.argsort(where)
    taken = np.empty((len(where), rows.shape[1]), dtype=np.float32)
    taken[order] = np.asarray(rows[where[order]], dtype=np.float32)
    return taken


def _fill_missing(values: np.ndarray, decodable: np.ndarray, reasons: np.ndarray, metric: str,
                  rule: str) -> tuple[np.ndarray, int]:
    """Apply `select.missing_score` to decodable examples without a finite value; returns (values, imputed)."""
    values = values.copy()
    missing = decodable & ~np.isfinite(values)
    if not missing.any():
        return values, 0
    finite = values[decodable & np.isfinite(values)]
    if rule == "skip" or len(finite) == 0:
        reasons[missing] = f"skipped: no {metric} score"
        return values, 0
    values[missing] = float(np.median(finite))
    log.info(f"select: {int(missing.sum())} examples have no finite {metric} score; ranked as the median "
             f"({values[missing][0]:.4g}) with random tie-breaks (select.missing_score=skip leaves them out)")
    return values, int(missing.sum())


def _warn_ties(ties: dict, limit: float, metric: str) -> None:
    share = float(ties.get("boundary_tied_share", 0.0))
    if share > limit:
        log.warning(f"{share:.1%} of the pool ties with the {metric} score at the kept/pruned boundary "
                    f"({ties.get('boundary_value')}); those were chosen by a seeded random permutation "
                    f"(select.seed); a finer metric (more runs or models) resolves them")
