"""The select stage: rank examples by one metric and keep a fraction by a policy.

Writes selection.parquet with key, index, label, score, rank (0 = hardest, -1 = skipped), kept
and reason, for EVERY example of the scores table: kept + pruned + skipped = all keys.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from datacull import layout
from datacull.data.base import build_source
from datacull.errors import DatacullError
from datacull.select import POLICIES, budget_from, select_mask
from datacull.store import fingerprint, is_fresh, parquet_fingerprint, to_plain, write_parquet_atomic


def load_scores(cfg: DictConfig) -> tuple[pd.DataFrame, str]:
    """The scores table (the experiment's, or the user's `select.scores` file) and its fingerprint."""
    external = cfg.select.get("scores")
    if not external:
        path = layout.scores_path(cfg)
        if not path.exists():
            raise DatacullError(f"no scores at {path}; run `datacull score` first (or set select.scores=FILE)")
        return pd.read_parquet(path), parquet_fingerprint(path) or ""
    path = Path(str(external)).expanduser()
    if not path.is_file():
        raise DatacullError(f"select.scores file {path} does not exist")
    frame = pd.read_csv(path) if path.suffix.lower() == ".csv" else pd.read_parquet(path)
    if "key" not in frame.columns:
        raise DatacullError(f"select.scores file {path} has no 'key' column (columns: {list(frame.columns)})")
    return _align_to_source(cfg, frame, path), fingerprint(path.stat().st_size, path.stat().st_mtime_ns, str(path))


def _align_to_source(cfg: DictConfig, frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Join user scores to the dataset by key; any key on one side only is an error."""
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
    if "skip_reason" not in aligned.columns:
        aligned["skip_reason"] = ""
    return aligned


def select(cfg: DictConfig) -> dict[str, Path]:
    """Apply `cfg.select` to the scores and write `selection.parquet`."""
    sel = cfg.select
    POLICIES.get(str(sel.policy))  # unknown policy: error before any work
    scores, scores_fp = load_scores(cfg)
    metric = str(sel.get("metric") or (cfg.metrics[0] if not isinstance(cfg.metrics, str) else cfg.metrics))
    if metric not in scores.columns:
        available = [c for c in scores.columns if c not in ("key", "index", "label", "skip_reason")]
        raise DatacullError(f"select.metric {metric!r} is not in the scores (available: {', '.join(available)})")
    out = layout.selection_path(cfg)
    fp = fingerprint(scores_fp, to_plain(sel), metric, cfg.seed)
    if is_fresh(out, fp):
        print(f"select: {out} is up to date")
        return {"selection": out}

    values = scores[metric].to_numpy(dtype=np.float64)
    reasons = scores["skip_reason"].fillna("").astype(str).to_numpy(dtype=object)
    no_score = ~np.isfinite(values) & (reasons == "")
    reasons[no_score] = f"skipped: no {metric} score"
    scored = np.flatnonzero(reasons == "")
    if len(scored) == 0:
        raise DatacullError(f"no example has a finite {metric} score; nothing to select")
    budget = budget_from(len(scored), sel.get("fraction"), sel.get("count"))
    keep_scored = select_mask(values[scored], scores["label"].to_numpy()[scored], budget, str(sel.policy),
                              class_balanced=bool(sel.class_balanced), seed=int(cfg.seed),
                              hard_cutoff=float(sel.get("hard_cutoff", 0.1)), strata=int(sel.get("strata", 50)))
    kept = np.zeros(len(scores), dtype=bool)
    kept[scored[keep_scored]] = True
    rank = np.full(len(scores), -1, dtype=np.int64)
    rank[scored[np.argsort(-values[scored], kind="stable")]] = np.arange(len(scored))
    how = f"{sel.policy}{' class-balanced' if sel.class_balanced else ''} {budget}/{len(scored)} by {metric}"
    reasons[scored[keep_scored]] = f"kept: {how}"
    reasons[scored[~keep_scored]] = f"pruned: {how}"
    frame = pd.DataFrame({"key": scores["key"].astype(str), "index": scores["index"].astype(np.int64),
                          "label": scores["label"].astype(np.int64), "score": values, "rank": rank,
                          "kept": kept, "reason": reasons.astype(str)})
    write_parquet_atomic(out, frame, fp=fp, config={"select": to_plain(sel), "metric": metric,
                                                     "scores_fingerprint": scores_fp})
    skipped = len(scores) - len(scored)
    print(f"select: kept {budget}, pruned {len(scored) - budget}, skipped {skipped} ({how}) -> {out}")
    return {"selection": out}
