"""The sweep stage: scores once, then one `train` job per grid point, then the report.

    datacull sweep sweep.metrics=[random,ssp,el2n] sweep.policies=[keep_hard,keep_easy] \
        sweep.fractions=[0.1,0.2,0.4,0.7,1.0] sweep.sizes=[2000,8000,30000,60000] sweep.seeds=[0,1]

1. the grid is validated (unknown metrics / policies / bad fractions fail before any work);
2. every metric is scored ONCE on the full data (`datacull score metrics=sweep.metrics`);
3. the jobs run sequentially or in `sweep.jobs` local processes (joblib), with a progress bar and
   an ETA; finished runs (their result row exists) are skipped, so a killed sweep resumes where it
   stopped, and an interrupted run resumes from its last epoch checkpoint;
4. the rows are merged into `{experiment}/results.csv` and `datacull report` runs (`sweep.report`).
On a cluster the same grid runs as Hydra multirun jobs of `datacull train` (README: Scaling sweeps).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict
from tqdm.auto import tqdm

from datacull import layout
from datacull.data.base import build_source
from datacull.errors import DatacullError
from datacull.results import load_results, read_row, write_results_csv
from datacull.sweep import SweepJob, expand_grid, sweep_metrics

log = logging.getLogger(__name__)


def job_config(cfg: DictConfig, job: SweepJob) -> DictConfig:
    """A copy of the sweep's config with the job's `select.*` keys set."""
    out = cfg.copy()
    with open_dict(out):
        for key, value in job.overrides().items():
            OmegaConf.update(out, key, value, merge=False)
    return out


def _run_job(cfg: DictConfig, job: SweepJob, threads: int) -> dict:
    """Worker body: one select + train + evaluate (imported lazily so workers start fast)."""
    import torch

    from datacull.logs import configure_console
    from datacull.stages.train import train

    if not logging.getLogger().handlers and not logging.getLogger("datacull").handlers:
        configure_console()  # a joblib worker process: show its messages like the parent's
    torch.set_num_threads(threads)
    paths = train(job_config(cfg, job))
    return {"job": job, "row": str(paths["row"])}


def _job_run_id(cfg: DictConfig, job: SweepJob) -> str:
    """The run id the job's result row is stored under (cheap: selection + run identity, no training)."""
    from datacull.stages.select import select
    from datacull.stages.train import planned_epochs, run_id
    from datacull.store import parquet_config, parquet_fingerprint

    job_cfg = job_config(cfg, job)
    path = select(job_cfg)["selection"]
    summary = parquet_config(path).get("summary", {})
    epochs = planned_epochs(job_cfg, int(summary.get("budget", 1)), int(summary.get("pool", 1)))
    return run_id(job_cfg, parquet_fingerprint(path) or "", epochs)



def sweep(cfg: DictConfig) -> dict[str, Path]:
    """Run the configured grid (see module docstring); returns results.csv and the report's paths."""
    from datacull.stages.score import score

    jobs_n = int(cfg.sweep.get("jobs", 1) or 1)
    if jobs_n < 1:
        raise DatacullError(f"sweep.jobs must be >= 1, got {jobs_n}")
    metrics = sweep_metrics(cfg)
    source = build_source(cfg.data)
    jobs = expand_grid(cfg, len(source))
    if str(cfg.train.get("budget", "epochs")) not in ("epochs", "steps"):
        raise DatacullError(f"train.budget must be epochs or steps, not {cfg.train.get('budget')!r}")
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.metrics = metrics
    paths = score(cfg, source)
    run_ids = [_job_run_id(cfg, job) for job in jobs]  # makes each selection once; training reuses it
    rows_dir = layout.results_rows_dir(cfg)
    pending = [job for job, rid in zip(jobs, run_ids) if read_row(rows_dir, rid) is None]
    log.info(f"sweep: {len(jobs)} runs in the grid, {len(jobs) - len(pending)} already finished, "
             f"{len(pending)} to train ({jobs_n} parallel job{'s' if jobs_n > 1 else ''})")
    bar = tqdm(total=len(pending), desc="sweep", unit="run", dynamic_ncols=True)
    if jobs_n == 1:
        for job in pending:
            bar.set_postfix_str(job.describe())
            _run_job(cfg, job, max(1, int(os.environ.get("OMP_NUM_THREADS", 0) or os.cpu_count() or 1)))
            bar.update()
    else:
        from joblib import Parallel, delayed

        threads = max(1, (os.cpu_count() or 1) // jobs_n)
        runner = Parallel(n_jobs=jobs_n, return_as="generator_unordered")
        for done in runner(delayed(_run_job)(cfg, job, threads) for job in pending):
            bar.set_postfix_str(done["job"].describe())
            bar.update()
    bar.close()
    results = load_results([rows_dir])
    # rows of runs outside the current grid (e.g. made before a policy setting changed) stay on disk
    # but not in results.csv, so the report never averages two versions of one grid point
    in_grid = results["run_id"].isin(set(run_ids))
    if not in_grid.all():
        log.info(f"sweep: {int((~in_grid).sum())} result rows of runs outside the current grid (earlier settings) "
                 f"left out of results.csv; they stay in {rows_dir}")
    results = results[in_grid].reset_index(drop=True)
    paths["results"] = write_results_csv(results, layout.experiment_dir(cfg) / "results.csv")
    log.info(f"sweep: {len(results)} result rows -> {paths['results']}")
    if bool(cfg.sweep.get("report", True)):
        from datacull.stages import STAGES, get_stage

        if "report" in STAGES:
            paths.update(get_stage("report")(cfg))
    return paths
