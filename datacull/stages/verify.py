"""The verify stage: recount what datacull wrote and report every inconsistency.

    datacull verify [PATH ...]      # a work dir, an experiment dir, a selection dir or a shards dir

Everything found under PATH (default: `paths.work_dir`) is checked, read-only:

- an export (a folder with `manifest.json`): every shard listed exists with the recorded size,
  sha256 and sample count, and no unlisted `.tar` lies beside them; every sample has one image that
  decodes, an integer `.cls` and a `.json` naming its key and label; no key is exported twice; the
  manifest's counts add up (kept + pruned + skipped == input) and every skipped key has a reason;
  the wids index lists the same shards;
- its selection (`../selection.parquet`): the manifest was made from this very selection; every
  input key is kept exactly once (in the shards), pruned, or skipped with a reason, and the
  manifest's counts are the selection's;
- a selection without an export: unique keys, a reason on every row, kept rows ranked;
- a results folder (`results/rows/*.json` of `datacull train` / `sweep`): every row file readable
  and named by its run_id, and in `results.csv` (when present) every finished run's row present
  exactly once and no row of an unfinished run;
- no temp litter anywhere: no `.*.tmp` files or folders, no `.*.old` folders (a killed atomic write).

`verify_paths` returns a `Verification` (problems, counts); the CLI prints a one-line summary and
exits 0, or prints the list of problems and exits 2.
"""
from __future__ import annotations

import json
import logging
import re
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from datacull.errors import DatacullError

log = logging.getLogger(__name__)

LITTER = re.compile(r"^\..+\.(tmp|old)$")  # atomic_path / atomic_directory temporaries (store.py)
MANIFEST_NAME = "manifest.json"
SELECTION_NAME = "selection.parquet"
RESULTS_CSV = "results.csv"


@dataclass
class Verification:
    """What `verify_paths` found: the problems (empty = all good) and what was checked."""

    problems: list[str] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, message: str) -> None:
        self.problems.append(message)

    def summary(self, paths: list[Path]) -> str:
        """One line: what was verified (or how many problems were found) where."""
        c = self.counts
        parts = []
        if c["exports"]:
            parts.append(f"{c['exports']} export{'s' if c['exports'] != 1 else ''} ({c['samples']} samples in "
                         f"{c['shards']} shards decode and match their sha256; {c['keys']} input keys: {c['kept']} kept, "
                         f"{c['pruned']} pruned, {c['skipped']} skipped with a reason)")
        if c["selections"]:
            parts.append(f"{c['selections']} selection{'s' if c['selections'] != 1 else ''}")
        if c["result_rows"] or c["results_tables"]:
            parts.append(f"{c['result_rows']} result rows ({c['results_tables']} results.csv)")
        where = ", ".join(str(p) for p in paths)
        if not self.ok:
            return f"verify: {len(self.problems)} problem{'s' if len(self.problems) != 1 else ''} in {where}"
        return f"verify: OK: {'; '.join(parts) or 'nothing datacull wrote'} in {where}; no temp litter"


# ---------------------------------------------------------------------------------------- shards

def _sha256(path: Path) -> str:
    from datacull.export import sha256_file

    return sha256_file(path)


def _read_shard(path: Path, report: Verification) -> list[tuple[str, dict[str, bytes]]] | None:
    """The samples of tar `path` as (key, {ext: bytes}) in order, or None (problem recorded) if unreadable."""
    from webdataset.tariterators import base_plus_ext

    samples: list[tuple[str, dict[str, bytes]]] = []
    try:
        with tarfile.open(path, mode="r:") as tar:
            for member in tar:
                name = member.name
                if name.startswith("/") or ".." in name.split("/"):
                    report.add(f"{path}: unsafe member name {name!r}")
                    continue
                if not member.isreg():
                    report.add(f"{path}: member {name!r} is not a regular file")
                    continue
                key, ext = base_plus_ext(name)
                if key is None:
                    report.add(f"{path}: member {name!r} has no key.extension name")
                    continue
                if not samples or samples[-1][0] != key:
                    samples.append((key, {}))
                handle = tar.extractfile(member)
                samples[-1][1][ext.lower()] = handle.read() if handle is not None else b""
    except (tarfile.TarError, OSError, EOFError) as exc:
        report.add(f"{path}: cannot read as a tar ({exc})")
        return None
    return samples


def _check_sample(shard: Path, key: str, members: dict[str, bytes], report: Verification) -> int | None:
    """Check one exported sample; returns its label (None when it has no readable label)."""
    from datacull.data.base import CorruptExample
    from datacull.data.encoded import decode_image
    from datacull.data.wds import IMAGE_EXTENSIONS

    where = f"{shard.name}: sample {key!r}"
    images = [ext for ext in members if ext in IMAGE_EXTENSIONS]
    if len(images) != 1:
        report.add(f"{where} has {len(images)} image members ({sorted(members)}); expected one")
    else:
        try:
            decode_image(members[images[0]], where)
        except CorruptExample as exc:
            report.add(f"{where}: image does not decode ({exc})")
    label = None
    if "cls" in members:
        text = members["cls"].decode("ascii", "replace").strip()
        if re.fullmatch(r"-?[0-9]+", text):
            label = int(text)
        else:
            report.add(f"{where}: .cls holds {members['cls'][:20]!r}, not an integer label")
    try:
        info = json.loads(members.get("json", b""))
    except ValueError:
        report.add(f"{where}: missing or unreadable .json")
        return label
    if info.get("key") != key:
        report.add(f"{where}: .json names key {info.get('key')!r}")
    if label is not None and info.get("label") != label:
        report.add(f"{where}: .cls label {label} but .json label {info.get('label')!r}")
    return label


def verify_export(shards_dir: Path, report: Verification) -> None:
    """Check one export folder (see module docstring) and, when present, its selection."""
    shards_dir = Path(shards_dir)
    manifest_path = shards_dir / MANIFEST_NAME
    try:
        manifest = json.loads(manifest_path.read_text())
        counts, records = manifest["counts"], manifest["shards"]
        skipped_rows = manifest["skipped"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        report.add(f"{manifest_path}: unreadable manifest ({type(exc).__name__}: {exc})")
        return
    report.counts["exports"] += 1
    listed = {str(r.get("url")) for r in records}
    for extra in sorted(p.name for p in shards_dir.glob("*.tar") if p.name not in listed):
        report.add(f"{shards_dir / extra}: a shard not listed in {MANIFEST_NAME}")
    exported: Counter = Counter()
    for record in records:
        path = shards_dir / str(record.get("url"))
        if not path.is_file():
            report.add(f"{path}: listed in {MANIFEST_NAME} but missing")
            continue
        report.counts["shards"] += 1
        if path.stat().st_size != record.get("filesize"):
            report.add(f"{path}: {path.stat().st_size} bytes, manifest records {record.get('filesize')}")
        if _sha256(path) != record.get("sha256"):
            report.add(f"{path}: sha256 differs from the manifest (the shard was modified)")
        samples = _read_shard(path, report)
        if samples is None:
            continue
        if len(samples) != record.get("nsamples"):
            report.add(f"{path}: {len(samples)} samples, manifest records {record.get('nsamples')}")
        for key, members in samples:
            exported[key] += 1
            report.counts["samples"] += 1
            _check_sample(path, key, members, report)
    for key, times in sorted(exported.items()):
        if times > 1:
            report.add(f"{shards_dir}: key {key!r} is exported {times} times")
    _check_wids_index(shards_dir, manifest, records, report)
    skipped = {}
    for row in skipped_rows:
        key, reason = str(row.get("key")), str(row.get("reason") or "")
        if not reason.startswith("skipped"):
            report.add(f"{manifest_path}: skipped key {key!r} has no reason")
        skipped[key] = reason
    total = counts.get("kept", 0) + counts.get("pruned", 0) + counts.get("skipped", 0)
    if total != counts.get("input"):
        report.add(f"{manifest_path}: kept {counts.get('kept')} + pruned {counts.get('pruned')} + skipped "
                   f"{counts.get('skipped')} != input {counts.get('input')}")
    if counts.get("kept") != sum(exported.values()):
        report.add(f"{manifest_path}: records {counts.get('kept')} kept, the shards hold {sum(exported.values())}")
    if counts.get("skipped") != len(skipped):
        report.add(f"{manifest_path}: records {counts.get('skipped')} skipped, lists {len(skipped)}")
    for key in sorted(set(exported) & set(skipped))[:20]:
        report.add(f"{shards_dir}: key {key!r} is both exported and listed as skipped")
    selection_path = shards_dir.parent / SELECTION_NAME
    if selection_path.is_file():
        _check_against_selection(selection_path, manifest, exported, skipped, report)
    else:
        report.counts["keys"] += int(counts.get("input") or 0)
        report.counts["pruned"] += int(counts.get("pruned") or 0)
    report.counts["kept"] += sum(exported.values())
    report.counts["skipped"] += len(skipped)


def _check_wids_index(shards_dir: Path, manifest: dict, records: list[dict], report: Verification) -> None:
    index_path = shards_dir / str(manifest.get("wids_index", ""))
    try:
        index = json.loads(index_path.read_text())
        shardlist = [(s["url"], s["nsamples"]) for s in index["shardlist"]]
    except (OSError, ValueError, KeyError, TypeError):
        report.add(f"{index_path}: missing or unreadable wids index")
        return
    if shardlist != [(r.get("url"), r.get("nsamples")) for r in records]:
        report.add(f"{index_path}: lists other shards or counts than {MANIFEST_NAME}")


def _read_selection(path: Path, report: Verification) -> pd.DataFrame | None:
    from datacull.export import SELECTION_COLUMNS

    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for damaged files
        report.add(f"{path}: unreadable selection ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
        return None
    missing = [c for c in SELECTION_COLUMNS if c not in frame.columns]
    if missing:
        report.add(f"{path}: lacks columns {missing}")
        return None
    return frame


def _check_against_selection(path: Path, manifest: dict, exported: Counter, skipped: dict,
                             report: Verification) -> None:
    """Every selection key kept exactly once (in the shards or skipped at export), pruned, or skipped."""
    from datacull.store import parquet_fingerprint

    selection = _read_selection(path, report)
    if selection is None:
        return
    made_from = manifest.get("selection_fingerprint")
    if made_from and made_from != parquet_fingerprint(path):
        report.add(f"{path}: changed since the export was made (manifest selection_fingerprint {made_from}); "
                   "run `datacull export` again")
    keys = selection["key"].astype(str)
    kept = selection["kept"].astype(bool).to_numpy()
    reasons = selection["reason"].fillna("").astype(str).to_numpy()
    ranks = selection["rank"].to_numpy()
    _check_selection_rows(path, selection, report)
    key_set = set(keys)
    for key in sorted(set(exported) - key_set)[:20]:
        report.add(f"{path.parent}: exported key {key!r} is not in the selection")
    for key in sorted(set(skipped) - key_set)[:20]:
        report.add(f"{path.parent}: skipped key {key!r} is not in the selection")
    lost, wrongly = [], []
    n_kept = n_pruned = n_skipped = 0
    for key, keep, reason, rank in zip(keys, kept, reasons, ranks):
        if keep:
            if exported[key] == 1:
                n_kept += 1
            elif key in skipped:
                n_skipped += 1
            elif exported[key] == 0:
                lost.append(key)
        elif exported[key]:
            wrongly.append(key)
        elif reason.startswith("skipped") or rank < 0 or key in skipped:  # as datacull.export counts them
            n_skipped += 1
            if key not in skipped:
                report.add(f"{path.parent}: key {key!r} is skipped in the selection ({reason[:80]}) but not listed "
                           f"as skipped in {MANIFEST_NAME}")
        else:
            n_pruned += 1
    for key in lost[:20]:
        report.add(f"{path.parent}: key {key!r} is kept in the selection but neither exported nor skipped")
    for key in wrongly[:20]:
        report.add(f"{path.parent}: key {key!r} is exported but pruned or skipped in the selection")
    if len(lost) > 20 or len(wrongly) > 20:
        report.add(f"{path.parent}: {len(lost)} kept keys lost, {len(wrongly)} keys exported against the selection")
    counts = manifest.get("counts", {})
    if counts.get("input") != len(selection):
        report.add(f"{path.parent}/{MANIFEST_NAME}: input {counts.get('input')} but the selection has {len(selection)} keys")
    if counts.get("pruned") != n_pruned:
        report.add(f"{path.parent}/{MANIFEST_NAME}: records {counts.get('pruned')} pruned, the selection prunes {n_pruned}")
    report.counts["keys"] += len(selection)
    report.counts["pruned"] += n_pruned


def _check_selection_rows(path: Path, selection: pd.DataFrame, report: Verification) -> None:
    """Unique keys, a reason on every row, kept rows ranked (rank >= 0)."""
    keys = selection["key"].astype(str)
    dupes = keys[keys.duplicated()]
    if len(dupes):
        report.add(f"{path}: {len(dupes)} keys listed twice (first: {list(dupes[:3])})")
    reasons = selection["reason"].fillna("").astype(str)
    if (reasons == "").any():
        report.add(f"{path}: {int((reasons == '').sum())} rows without a reason (first: {list(keys[reasons == ''][:3])})")
    unranked = selection["kept"].astype(bool) & (selection["rank"] < 0)
    if unranked.any():
        report.add(f"{path}: {int(unranked.sum())} kept rows have no rank (first: {list(keys[unranked][:3])})")


def verify_selection(path: Path, report: Verification) -> None:
    """Check a selection table that has no export beside it."""
    selection = _read_selection(path, report)
    if selection is not None:
        _check_selection_rows(path, selection, report)
        report.counts["selections"] += 1


# --------------------------------------------------------------------------------------- results

def verify_results(rows_dir: Path | None, table: Path | None, report: Verification) -> None:
    """Every finished run's row (a file in `rows_dir`) present exactly once in the results table `table`."""
    from datacull.results import COLUMNS

    finished: set[str] = set()
    for path in sorted(rows_dir.rglob("*.json")) if rows_dir is not None else []:
        try:
            row = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            report.add(f"{path}: unreadable result row ({exc})")
            continue
        if not isinstance(row, dict) or str(row.get("run_id")) != path.stem:
            report.add(f"{path}: run_id {row.get('run_id') if isinstance(row, dict) else None!r} differs from "
                       "its file name")
            continue
        missing = [c for c in COLUMNS if c not in row]
        if missing:
            report.add(f"{path}: result row lacks {missing}")
        finished.add(path.stem)
        report.counts["result_rows"] += 1
    if table is None or not table.is_file():
        return
    report.counts["results_tables"] += 1
    try:
        frame = pd.read_csv(table, dtype={"run_id": str})
        run_ids = frame["run_id"].astype(str)
    except (OSError, ValueError, KeyError, pd.errors.ParserError) as exc:
        report.add(f"{table}: unreadable results table ({type(exc).__name__}: {exc})")
        return
    times = Counter(run_ids)
    for run_id, n in sorted(times.items()):
        if n > 1:
            report.add(f"{table}: run {run_id} has {n} rows")
    if rows_dir is not None:
        for run_id in sorted(finished - set(times)):
            report.add(f"{table}: finished run {run_id} ({rows_dir / (run_id + '.json')}) has no row; "
                       "run `datacull sweep` (or `datacull report`) again")
        for run_id in sorted(set(times) - finished):
            report.add(f"{table}: run {run_id} has a row but no finished run in {rows_dir}")


# ------------------------------------------------------------------------------------------ walk

def _litter(root: Path, report: Verification) -> None:
    for path in sorted(root.rglob(".*")) if root.is_dir() else []:
        if LITTER.match(path.name) and not any(LITTER.match(p.name) for p in path.relative_to(root).parents if p.name):
            report.add(f"{path}: temp litter ({'folder' if path.is_dir() else 'file'} left by an interrupted write); "
                       "delete it")


def verify_paths(paths: list[Path]) -> Verification:
    """Verify everything datacull wrote under `paths` (see module docstring)."""
    report = Verification()
    for root in [Path(p).expanduser() for p in paths]:
        if not root.exists():
            raise DatacullError(f"nothing to verify: {root} does not exist")
        if root.is_file():
            if root.name == RESULTS_CSV:
                rows = root.parent / "results" / "rows"
                verify_results(rows if rows.is_dir() else None, root, report)
                continue
            if root.name in (MANIFEST_NAME, SELECTION_NAME):
                root = root.parent
            else:
                raise DatacullError(f"cannot verify {root}: give a work dir, experiment dir, selection dir, shards "
                                    f"dir or a {RESULTS_CSV}")
        found = 0
        exports = sorted(p.parent for p in root.rglob(MANIFEST_NAME) if not _in_litter(p, root))
        for shards_dir in exports:
            verify_export(shards_dir, report)
            found += 1
        exported_from = {d.parent for d in exports}
        for selection in sorted(root.rglob(SELECTION_NAME)):
            if selection.parent not in exported_from and not _in_litter(selection, root):
                verify_selection(selection, report)
                found += 1
        report.counts["selections"] += len([d for d in exported_from if (d / SELECTION_NAME).is_file()])
        rows_dirs = {p for p in root.rglob("rows") if p.is_dir() and p.parent.name == "results"}
        if root.name == "rows" and root.parent.name == "results":
            rows_dirs.add(root)
        tables = {p.parent: p for p in root.rglob(RESULTS_CSV)}
        for rows in sorted(rows_dirs):
            experiment = rows.parent.parent
            verify_results(rows, tables.pop(experiment, None), report)
            found += 1
        for _, table in sorted(tables.items()):
            verify_results(None, table, report)
            found += 1
        _litter(root, report)
        if not found and not report.problems:
            raise DatacullError(f"nothing to verify in {root}: no {MANIFEST_NAME}, {SELECTION_NAME} or results found "
                                "(give a work dir, experiment dir, selection dir or shards dir)")
    return report


def _in_litter(path: Path, root: Path) -> bool:
    return any(LITTER.match(p.name) for p in path.relative_to(root).parents if p.name)


def verify(cfg: DictConfig) -> dict[str, Path]:
    """Verify `verify.path` (default `paths.work_dir`); raises one DatacullError listing the problems."""
    node = cfg.get("verify")
    path = Path(str(node.get("path") if node is not None and node.get("path") else cfg.paths.work_dir))
    report = verify_paths([path])
    if not report.ok:
        raise DatacullError(f"{report.summary([path])}: " + "; ".join(report.problems))
    log.info(report.summary([path]))
    return {"verified": path}
