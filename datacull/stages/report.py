"""`datacull report`: the scaling and metric-comparison report from training results.

Reads the result rows of `datacull train` / `datacull sweep` (`report.results`: row folders, row
files or csv tables; default: the experiment's `results/rows/`) and a scores table (`report.scores`,
default: the experiment's `scores.parquet`), and writes to `report.out` (default
`{work_dir}/{data}-{split}/{name}/report/`):

    index.html      self-contained (figures embedded as base64 PNGs, tables as HTML)
    report.md       the same text and tables, figures linked
    *.png           the figures (see below), one set per results section
    fits.csv        every scaling-law fit (datacull.scaling.fit_table), with the section columns
    results.csv     the merged results table
    difference_to_random.csv, class_balance.csv, cost.csv, slopes.csv

Figures (Sorscher et al., NeurIPS 2022, arXiv 2206.14486): (a) test error vs examples kept, one line
per fraction, with power-law fits (Figure 3); (b) the Pareto frontier of each metric and policy vs the
unpruned power law, with a slope table; (c) test accuracy vs fraction kept, one line per metric, random
as the reference (Figure 5A), and a table of the difference to random with 95% intervals over seeds;
(d) the Spearman rank-correlation heatmap of the metric columns; (e) class balance of each selection;
(f) each metric's cost (scoring seconds and training seconds). Results of different data, split,
model, recipe or budget rule are separate sections and never averaged together. The report is
skipped when its inputs and settings are unchanged (fingerprint in report.json).
"""
from __future__ import annotations

import logging
import base64
import hashlib
import html
import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from datacull import comparison as cmp
from datacull import layout
from datacull.errors import DatacullError
from datacull.store import ensure_dir, fingerprint, parquet_config, to_plain, write_bytes_atomic, write_json_atomic

log = logging.getLogger(__name__)

_VERSION = 1  # bump when the report's computation changes, so old reports are redone
_META = "report.json"
_HELP = "run `datacull sweep` (or `datacull train`) first, or point report.results at a results .csv / rows folder"


def report_options(cfg: DictConfig) -> DictConfig:
    """`cfg.report` merged over the shipped defaults (conf/report/default.yaml)."""
    from datacull.config import conf_dir

    base = OmegaConf.load(conf_dir() / "report" / "default.yaml")
    given = cfg.get("report") if isinstance(cfg, DictConfig) else None
    opts = OmegaConf.merge(base, given) if given is not None else base
    if str(opts.interval) not in cmp.INTERVALS:
        raise DatacullError(f"report.interval must be one of {', '.join(cmp.INTERVALS)}, not {opts.interval!r}")
    if not 0.0 < float(opts.level) < 1.0:
        raise DatacullError(f"report.level must be in (0, 1), got {opts.level}")
    if int(opts.n_boot) < 0:
        raise DatacullError(f"report.n_boot must be >= 0, got {opts.n_boot}")
    return opts


def _result_paths(cfg: DictConfig, opts: DictConfig) -> list[Path]:
    if opts.results is None:
        rows = layout.results_rows_dir(cfg)
        if not rows.is_dir() or not any(rows.glob("*.json")):
            raise DatacullError(f"no training results in {rows}; {_HELP}")
        return [rows]
    items = [opts.results] if isinstance(opts.results, str) else list(opts.results)
    if not items:
        raise DatacullError(f"report.results is an empty list; {_HELP}")
    paths = [Path(str(p)).expanduser() for p in items]
    for p in paths:
        if not p.exists():
            raise DatacullError(f"report.results: {p} does not exist; {_HELP}")
    return paths


def load_report_results(paths: list[Path]) -> pd.DataFrame:
    """Merge result rows / tables with `datacull.results.load_results` and prepare them for the report."""
    from datacull.results import load_results

    try:
        frame = load_results(paths)
    except DatacullError as exc:
        raise DatacullError(f"{exc} ({_HELP})") from None
    if frame.empty:
        raise DatacullError(f"no result rows in {', '.join(map(str, paths))}; {_HELP}")
    return frame


def _scores_path(cfg: DictConfig, opts: DictConfig) -> Path | None:
    if opts.scores is not None:
        path = Path(str(opts.scores)).expanduser()
        if not path.is_file():
            raise DatacullError(f"report.scores: {path} does not exist; compute scores with `datacull score`")
        return path
    path = layout.scores_path(cfg)
    return path if path.is_file() else None


def _file_digest(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        if p.is_file():
            h.update(str(p).encode())
            h.update(str(p.stat().st_mtime_ns).encode())
            h.update(str(p.stat().st_size).encode())
    return h.hexdigest()[:16]


def report(cfg: DictConfig) -> dict[str, Path]:
    """Write the scaling / metric-comparison report (see module docstring); returns name -> path.

    Raises DatacullError when there are no results (naming the command that makes them), when a
    given results or scores path is missing, or when an option is invalid.
    """
    opts = report_options(cfg)
    raw = load_report_results(_result_paths(cfg, opts))
    scores = _scores_path(cfg, opts)
    out_dir = ensure_dir(Path(str(opts.out)).expanduser() if opts.out is not None else layout.report_dir(cfg))
    results_bytes = raw.sort_values("run_id" if "run_id" in raw.columns else list(raw.columns)[0]).to_csv(
        index=False).encode()
    fp = fingerprint(hashlib.sha256(results_bytes).hexdigest(), _file_digest([scores] if scores else []),
                     {k: v for k, v in to_plain(opts).items() if k not in ("out", "results", "scores")}, _VERSION)
    meta = out_dir / _META
    if meta.is_file() and (out_dir / "index.html").is_file():
        try:
            stored = json.loads(meta.read_text())
        except ValueError:
            stored = {}
        if stored.get("fingerprint") == fp and all(Path(p).exists() for p in stored.get("files", {}).values()):
            log.info(f"report: {out_dir} is up to date (fingerprint {fp}); nothing to do")
            return {k: Path(v) for k, v in stored["files"].items()}
    began = time.perf_counter()
    paths = build_report(raw, scores, out_dir, opts)
    write_json_atomic(meta, {"fingerprint": fp, "files": {k: str(v) for k, v in paths.items()},
                             "seconds": time.perf_counter() - began})
    log.info(f"report: {len(raw)} result rows -> {paths['html']} ({time.perf_counter() - began:.0f} s)")
    return paths


# ------------------------------------------------------------------------------------- assembling
class _Doc:
    """Accumulates the report as HTML and markdown side by side."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self.html: list[str] = []
        self.md: list[str] = []

    def heading(self, text: str, level: int = 2) -> None:
        self.html.append(f"<h{level}>{html.escape(text)}</h{level}>")
        self.md += ["#" * level + " " + text, ""]

    def para(self, text: str) -> None:
        self.html.append(f"<p>{html.escape(text)}</p>")
        self.md += [text, ""]

    def bullets(self, items: list[str]) -> None:
        if not items:
            return
        self.html.append("<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>")
        self.md += [f"- {i}" for i in items] + [""]

    def figure(self, path: Path, caption: str) -> None:
        data = base64.b64encode(Path(path).read_bytes()).decode()
        self.html.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(path.name)}">'
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")
        self.md += [f"![{caption}]({path.name})", "", f"*{caption}*", ""]

    def table(self, frame: pd.DataFrame, floatfmt: str = ".3g") -> None:
        if frame.empty:
            self.para("(empty)")
            return
        shown = frame.copy()
        for col in shown.columns:
            if shown[col].dtype.kind == "f":
                shown[col] = [_fmt(v, floatfmt) for v in shown[col]]
        self.html.append(shown.to_html(index=False, escape=True, classes="tbl", border=0, na_rep=""))
        cols = [str(c) for c in shown.columns]
        self.md.append("| " + " | ".join(cols) + " |")
        self.md.append("|" + "---|" * len(cols))
        for _, row in shown.iterrows():
            self.md.append("| " + " | ".join(str(v).replace("|", "/") for v in row) + " |")
        self.md.append("")


def _fmt(v, floatfmt: str = ".3g") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return format(float(v), floatfmt)


_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1200px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}h1{border-bottom:2px solid #444}h2{border-bottom:1px solid #bbb;margin-top:2em}
img{max-width:100%;border:1px solid #eee}figure{margin:1em 0}figcaption{font-size:.9em;color:#555}
table.tbl{border-collapse:collapse;font-size:.82em;margin:.5em 0 1.5em}table.tbl th,table.tbl td{padding:2px 8px;
border-bottom:1px solid #ddd;text-align:right}table.tbl th{background:#f3f3f3}code{background:#f3f3f3;padding:0 3px}"""


def _write_csv(path: Path, frame: pd.DataFrame) -> Path:
    return write_bytes_atomic(path, frame.to_csv(index=False).encode())


def _scores_info(scores: Path | None) -> tuple[pd.DataFrame | None, dict, str]:
    """(scores frame or None, cost metadata, data name of the scores)."""
    if scores is None:
        return None, {}, ""
    config = parquet_config(scores)
    frame = pd.read_parquet(scores)
    data = config.get("data", {})
    return frame, dict(config.get("cost", {}) or {}), str(data.get("name", "")) if isinstance(data, dict) else ""


def registered_metric_columns(scores: pd.DataFrame) -> list[str]:
    """Columns of a scores table that are registered metrics (extras like `memorization_se` are not)."""
    from datacull.metrics.registry import list_metrics

    names = [e.name for e in list_metrics()]
    return [c for c in scores.columns if c in names]


def build_report(raw: pd.DataFrame, scores: Path | None, out_dir: Path, opts: DictConfig) -> dict[str, Path]:
    """Compute every table and figure and write the report files into `out_dir`; returns name -> path."""
    from datacull.scaling import fit_table

    results = cmp.prepare_results(raw)
    level, method, dpi = float(opts.level), str(opts.interval), int(opts.dpi)
    empty_ratio = float(opts.empty_ratio)
    paths: dict[str, Path] = {"results": _write_csv(out_dir / "results.csv", raw)}
    doc = _Doc(out_dir)
    score_frame, scoring_cost, score_data = _scores_info(scores)
    groups = cmp.sections(results)
    doc.heading("Data pruning: scaling curves and metric comparison", 1)
    doc.para(f"{len(results)} training runs in {len(groups)} section(s) (one per data, model, training recipe and "
             f"budget rule; never averaged together). Intervals: {int(level * 100)}% over seeds, "
             + ("Student t (paired by seed where both runs share the seed, else Welch)." if method == "t" else
                "percentile bootstrap over seeds (paired where both runs share the seed).")
             + " Method: Sorscher et al., Beyond neural scaling laws (NeurIPS 2022), Figures 3 and 5.")
    all_fits, all_diff, all_balance, all_cost, all_slopes = [], [], [], [], []
    for key, rows in groups:
        slug, title = cmp.section_slug(key), cmp.section_title(key)
        doc.heading(title, 2)
        seeds = sorted(rows["seed"].unique())
        sizes = sorted(rows["subset_size"].unique())
        doc.para(f"{len(rows)} runs; metrics: {', '.join(cmp.metric_order(rows)) or 'none'}; policies: "
                 f"{', '.join(cmp.policy_order(rows)) or 'none'}; fractions kept: "
                 f"{', '.join(f'{f:g}' for f in sorted(rows['fraction'].unique()))}; subset sizes: "
                 f"{', '.join(f'{s:,}' for s in sizes)}; seeds: {', '.join(map(str, seeds))}.")
        pruned_any = (rows["metric"] != cmp.UNPRUNED).any()
        fits = _section_fits(fit_table, rows, opts)
        if not fits.empty:
            all_fits.append(fits.assign(**{k: key[k] for k in ("split", "budget")}))
        diff = cmp.difference_to_random(rows, method, level, seed=int(opts.seed)) if pruned_any else pd.DataFrame()
        slopes = cmp.slope_table(rows, fits) if pruned_any else pd.DataFrame()
        doc.bullets(_findings(diff, slopes, rows))
        if not pruned_any:
            doc.para("Only unpruned (f = 1) runs: no pruning curves to draw.")
        else:
            # (a) Figure 3
            doc.heading("(a) Test error vs examples kept (Figure 3)", 3)
            p = cmp.plot_scaling(rows, fits, out_dir / f"scaling_{slug}.png", title, dpi)
            paths[f"scaling_{slug}"] = p
            doc.figure(p, "Test error against the number of examples trained on (log-log), one line per fraction "
                          "kept f (f = 1 black: unpruned), points = mean over seeds with min-max bars, dashed = "
                          "fitted power law a·n^-b + c (curves with at least 3 sizes).")
            if len(sizes) < 3:
                doc.para(f"Only {len(sizes)} subset size(s): a curve needs at least 3 sizes to be fitted; "
                         "add sizes (sweep.sizes) for scaling fits.")
            # (b) frontier
            doc.heading("(b) Pareto frontier vs the unpruned power law", 3)
            p = cmp.plot_frontier(rows, fits, out_dir / f"frontier_{slug}.png", title, dpi)
            paths[f"frontier_{slug}"] = p
            doc.figure(p, "Pareto frontier (lowest error at each size over all fractions kept) of each metric and "
                          "policy against the unpruned runs; dotted/dashed: power-law fits.")
            doc.para("Slopes: b_power = fitted power-law exponent [95% bootstrap interval]; preferred_law by AIC "
                     "(delta_aic_other = AIC of the other law minus the preferred one's); mean_slope = log-log "
                     "slope end to end; slope_vs_unpruned < 0: the frontier falls faster than the unpruned "
                     "curve over their common range; vs_unpruned_law_pct < 0: the Pareto-optimal pruned runs beat "
                     "the unpruned power law at the same number of examples (median %); local_slopes between consecutive Pareto-optimal points (steepening = better than "
                     "a power law).")
            doc.table(slopes)
            if not slopes.empty:
                all_slopes.append(slopes.assign(**key))
            # (c) Figure 5A
            doc.heading("(c) Metric comparison: accuracy vs fraction kept (Figure 5A)", 3)
            curves = cmp.accuracy_curves(rows, method, level)
            # one panel per ranking policy here; every other policy is drawn in (c') below
            ranking = curves[curves["policy_label"].isin(cmp.RANKING_POLICIES)]
            if not ranking.empty:
                p = cmp.plot_comparison(ranking, out_dir / f"compare_{slug}.png", title, level, dpi)
                paths[f"compare_{slug}"] = p
                doc.figure(p, f"Test accuracy against fraction kept, one line per metric, random in black; bars: "
                              f"{int(level * 100)}% intervals over seeds.")
            doc.para(f"Difference to random, in accuracy percentage points (metric minus random at the same "
                     f"policy, subset size and fraction; positive = better than random), with "
                     f"{int(level * 100)}% intervals over seeds (column interval says how each was computed).")
            shown = diff.drop(columns=["accuracy", "random_accuracy"]) if not diff.empty else diff
            doc.table(shown, ".2f")
            if not diff.empty:
                all_diff.append(diff.assign(**key))
            if len(set(curves["policy_label"]) - {"keep_hard", "keep_easy"}) > 0:
                doc.heading("(c') Policy comparison: accuracy vs fraction kept, one line per policy", 3)
                p = cmp.plot_comparison(curves, out_dir / f"policies_{slug}.png", title, level, dpi, by="policy")
                paths[f"policies_{slug}"] = p
                doc.figure(p, "Test accuracy against fraction kept, one line per selection policy (random policy in "
                              "black), one panel per metric.")
                doc.table(cmp.policy_comparison(curves), ".3g")
            # (e) class balance
            doc.heading("(e) Class balance of each selection", 3)
            balance = cmp.class_balance(rows, empty_ratio,
                                        None if opts.balance_size is None else int(opts.balance_size))
            if balance.empty:
                doc.para("No per-class counts in these results (kept_per_class / pool_per_class).")
            else:
                p = cmp.plot_class_balance(balance, out_dir / f"balance_{slug}.png", title, empty_ratio, dpi)
                paths[f"balance_{slug}"] = p
                doc.figure(p, "Kept share of each class divided by the selection's overall kept share (1 = the "
                              "class keeps its proportion); red boxes: nearly emptied classes.")
                flagged = balance[balance["flagged"]]
                if flagged.empty:
                    doc.para(f"No class kept less than {empty_ratio:g}x its proportional share.")
                else:
                    doc.para(f"Nearly emptied classes (kept share < {empty_ratio:g}x the overall kept share):")
                    doc.table(flagged[["metric", "policy_label", "fraction", "subset_size", "class", "kept", "pool",
                                       "kept_share", "ratio"]])
                all_balance.append(balance.assign(**key))
        # (f) cost
        doc.heading("(f) Cost of each metric", 3)
        cost = cmp.cost_table(rows, scoring_cost if score_data in ("", key["data"]) else {})
        if scores is None:
            doc.para("No scores table, so no scoring seconds (compute scores with `datacull score`).")
        elif not scoring_cost:
            doc.para("The scores table records no cost (scores made before cost recording): re-run `datacull "
                     "score` to record scoring seconds.")
        p = cmp.plot_cost(cost, out_dir / f"cost_{slug}.png", title, dpi)
        paths[f"cost_{slug}"] = p
        doc.figure(p, "Seconds spent scoring each metric (wall clock, shared training runs counted once, by the "
                      "first metric that needed them) and summed seconds of that metric's training runs here.")
        doc.table(cost)
        all_cost.append(cost.assign(**key))
    # (d) rank correlation: one per scores table
    doc.heading("(d) Rank correlation between metrics", 2)
    if score_frame is None:
        doc.para("No scores table found (report.scores or the experiment's scores.parquet); compute scores with "
                 "`datacull score metrics=[...]`.")
    else:
        metric_cols = registered_metric_columns(score_frame)
        if len(metric_cols) < 2:
            doc.para(f"The scores table {scores} has {len(metric_cols)} metric column(s); the heatmap needs 2 or more "
                     "(score more metrics with `datacull score metrics=[...]`).")
        else:
            corr = cmp.spearman_matrix(score_frame, metric_cols)
            p = cmp.plot_spearman(corr, out_dir / "spearman.png",
                                  f"Spearman rank correlation of difficulty scores ({score_data or 'scores'}, "
                                  f"{len(score_frame):,} examples)", dpi)
            paths["spearman"] = p
            doc.figure(p, f"Spearman rank correlation between every metric column of {scores.name} "
                          "(pairwise complete examples).")
            doc.table(corr.reset_index().rename(columns={"index": "metric"}), ".2f")
            _write_csv(out_dir / "spearman.csv", corr.reset_index().rename(columns={"index": "metric"}))
            paths["spearman_csv"] = out_dir / "spearman.csv"
    fits_all = pd.concat(all_fits, ignore_index=True) if all_fits else pd.DataFrame()
    paths["fits"] = _write_csv(out_dir / "fits.csv", fits_all)
    for name, frames in (("difference_to_random", all_diff), ("class_balance", all_balance), ("cost", all_cost),
                         ("slopes", all_slopes)):
        paths[name] = _write_csv(out_dir / f"{name}.csv", pd.concat(frames, ignore_index=True) if frames
                                 else pd.DataFrame())
    doc.para("Files: results.csv (merged runs), fits.csv (every scaling fit), slopes.csv, difference_to_random.csv, "
             "class_balance.csv, cost.csv" + (", spearman.csv" if "spearman" in paths else "") + ".")
    body = "\n".join(doc.html)
    page = (f"<!doctype html>\n<html><head><meta charset='utf-8'><title>datacull report</title>"
            f"<style>{_CSS}</style></head><body>\n{body}\n</body></html>\n")
    paths["html"] = write_bytes_atomic(out_dir / "index.html", page.encode())
    paths["markdown"] = write_bytes_atomic(out_dir / "report.md", ("\n".join(doc.md) + "\n").encode())
    return paths


def _section_fits(fit_table, rows: pd.DataFrame, opts: DictConfig) -> pd.DataFrame:
    """Scaling fits of one section (empty when no curve has 3 sizes)."""
    laws = [str(x) for x in opts.laws]
    if not laws:
        return pd.DataFrame()
    table = fit_table(rows, laws=tuple(laws), n_boot=int(opts.n_boot), seed=int(opts.seed))
    return table


def _findings(diff: pd.DataFrame, slopes: pd.DataFrame, rows: pd.DataFrame) -> list[str]:
    """Plain sentences: where each metric beats random (intervals excluding 0) and how frontiers scale."""
    out = []
    if not diff.empty:
        for (label, size, metric), g in diff.groupby(["policy_label", "subset_size", "metric"]):
            parts = []
            for verdict in ("above random", "below random", "indistinguishable", "no spread over seeds",
                            "no interval (one seed)"):
                h = g[g["verdict"] == verdict]
                if h.empty:
                    continue
                at = ", ".join(f"f={r.fraction:g} ({r.diff_pp:+.1f} pp" + (
                    f" [{r.lo_pp:+.1f}, {r.hi_pp:+.1f}])" if np.isfinite(r.lo_pp) else ")") for r in h.itertuples())
                word = {"above random": "above random at", "below random": "below random at",
                        "indistinguishable": "indistinguishable from random at",
                        "no spread over seeds": "the same difference for every seed (no interval) at",
                        "no interval (one seed)": "one seed, so no interval:"}[verdict]
                parts.append(f"{word} {at}")
            if parts:
                out.append(f"{label}, subset {size:,}, {metric}: " + "; ".join(parts) + ".")
    if not slopes.empty:
        un = slopes[slopes["curve"] == "unpruned"]
        un_b = f"{un['b_power'].iloc[0]:.2f}" if not un.empty and np.isfinite(un["b_power"].iloc[0]) else "n/a"
        for r in slopes[slopes["curve"] == "frontier"].itertuples():
            parts = []
            if np.isfinite(r.b_power):
                ci = f" [{r.b_lo:.2f}, {r.b_hi:.2f}]" if np.isfinite(r.b_lo) else ""
                parts.append(f"power-law exponent b = {r.b_power:.2f}{ci} vs {un_b} unpruned")
            if np.isfinite(r.vs_unpruned_law_pct):
                side = "below" if r.vs_unpruned_law_pct < 0 else "above"
                parts.append(f"its Pareto-optimal pruned runs are {abs(r.vs_unpruned_law_pct):.0f}% {side} the "
                             "unpruned power law at the same number of examples (median)")
            if parts:
                out.append(f"Frontier of {r.metric} · {r.policy_label}: " + "; ".join(parts) + ".")
    return out
