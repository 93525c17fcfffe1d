"""Training results: one row per run, written as its own JSON file, merged on read.

Parallel jobs (a sweep's workers, Hydra multirun jobs, SLURM array tasks) each write only their own
row file `{rows_dir}/{run_id}.json` atomically, so no two jobs ever write the same file; readers
merge every row file (and any csv tables) into one DataFrame, keeping the newest row per run_id.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import pandas as pd

from datacull.errors import DatacullError
from datacull.store import write_bytes_atomic, write_json_atomic

# the columns of a result row, in the order tables are written
COLUMNS = ["run_id", "name", "data", "split", "model", "recipe", "metric", "policy", "fraction", "subset_size",
           "n_train", "class_balanced", "seed", "budget", "epochs", "steps", "test_error", "test_loss",
           "per_class_error", "kept_per_class", "pool_per_class", "class_names", "train_seconds",
           "eval_seconds", "selection", "run_dir", "finished_at"]


def row_path(rows_dir: Path, run_id: str) -> Path:
    """The file holding the row of run `run_id`."""
    return Path(rows_dir) / f"{run_id}.json"


def write_row(rows_dir: Path, row: dict) -> Path:
    """Write one result row (must have every column of COLUMNS) atomically; returns its path."""
    missing = [c for c in COLUMNS if c not in row]
    if missing:
        raise ValueError(f"result row lacks columns {missing}")
    return write_json_atomic(row_path(rows_dir, row["run_id"]), {c: row[c] for c in COLUMNS})


def read_row(rows_dir: Path, run_id: str) -> dict | None:
    """The stored row of `run_id`, or None when that run has not finished."""
    path = row_path(rows_dir, run_id)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        return None  # unreadable (should not happen with atomic writes): the run is redone


def _rows_in(folder: Path) -> list[dict]:
    rows = []
    for path in sorted(folder.rglob("*.json")):
        try:
            row = json.loads(path.read_text())
        except ValueError:
            continue
        if isinstance(row, dict) and "run_id" in row and "test_error" in row:
            rows.append(row)
    return rows


def load_results(paths: Iterable[Path | str]) -> pd.DataFrame:
    """Every result row found in `paths` (row-file folders, single row files, or csv tables), merged.

    Rows with the same run_id are one run: the last one read wins. Raises a clear error when a path
    does not exist or nothing is found.
    """
    frames = []
    for item in paths:
        path = Path(str(item)).expanduser()
        if path.is_dir():
            rows = _rows_in(path)
            if rows:
                frames.append(pd.DataFrame(rows))
        elif path.is_file() and path.suffix.lower() == ".csv":
            frames.append(pd.read_csv(path, dtype={"run_id": str}))
        elif path.is_file() and path.suffix.lower() == ".json":
            frames.append(pd.DataFrame([json.loads(path.read_text())]))
        else:
            raise DatacullError(f"results path {path} is not a folder of result rows or a .csv table")
    if not frames:
        raise DatacullError("no training results found; run `datacull train` or `datacull sweep` first")
    merged = pd.concat(frames, ignore_index=True)
    merged = merged.drop_duplicates(subset="run_id", keep="last").reset_index(drop=True)
    ordered = [c for c in COLUMNS if c in merged.columns] + [c for c in merged.columns if c not in COLUMNS]
    return merged[ordered]


def write_results_csv(frame: pd.DataFrame, path: Path) -> Path:
    """Write a merged results table as csv, atomically."""
    return write_bytes_atomic(Path(path), frame.to_csv(index=False).encode())
