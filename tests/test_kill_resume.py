"""Kill-and-resume suite (issue #12): SIGKILL `datacull run` at seeded kill points, resume, compare.

Kill points come from the hook in datacull/faults.py (``DATACULL_KILL_AT=<label>:<n>``): each launch
of a chain is killed at the n-th atomic write (`write`: temp complete, not renamed, so litter is
left; `commit`: just renamed; `swap`: export folder complete, before the swap; `any`: all). A
resumed launch skips finished work, so a chain of launches walks through the whole pipeline
(embed, score, select, export, report). After the chain, a last uninterrupted launch must finish;
its outputs must equal an uninterrupted reference run's byte for byte (npy, shards) and table for
table (parquet), `datacull verify` must pass and no temporary may remain.
Default: >= 30 kill points; ``-m slow``: >= 100. The kill points exercised go to
``<tmp>/kill_points.txt`` and into every assertion message.
"""
from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

LITTER = re.compile(r"^\..+\.(tmp|old)$")
LABELS = ("write", "commit", "swap", "any")


def _cli(work: Path, kill_at: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("DATACULL_KILL_AT", None)
    if kill_at:
        env["DATACULL_KILL_AT"] = kill_at
    args = ["run", "data=synthetic", "encoder=pixels", f"paths.work_dir={work}", "metric.ssp.k=4", "device=cpu"]
    return subprocess.run([sys.executable, "-m", "datacull.cli", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def _outputs(work: Path) -> dict[str, Path]:
    return {str(p.relative_to(work)): p for p in sorted(work.rglob("*"))
            if p.is_file() and p.suffix in (".npy", ".parquet", ".tar", ".npz") or p.name.endswith(".wids.json")}


def _litter(work: Path) -> list[str]:
    return [str(p) for p in work.rglob("*") if LITTER.match(p.name)]


def _verify(run_dir: Path) -> subprocess.CompletedProcess:
    # single call site: `datacull verify` (datacull/stages/verify.py) recounts shards, manifest, selection
    return subprocess.run([sys.executable, "-m", "datacull.cli", "verify", str(run_dir)], capture_output=True,
                          text=True, timeout=120)


def _assert_same(ref: Path, got: Path, report: str) -> None:
    a, b = _outputs(ref), _outputs(got)
    assert sorted(a) == sorted(b), report
    for name, path in a.items():
        if path.suffix == ".parquet":
            pd.testing.assert_frame_equal(pd.read_parquet(path), pd.read_parquet(b[name]), obj=f"{name}\n{report}")
        else:
            assert path.read_bytes() == b[name].read_bytes(), f"{name} differs\n{report}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("ref") / "work"
    proc = _cli(work)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return work


def _chain(work: Path, rng: random.Random, log: list[str], max_launches: int = 60) -> int:
    """Launch killed runs until one finishes; return the number of kills."""
    kills = 0
    for _ in range(max_launches):
        label = rng.choice(LABELS)
        spec = f"{label}:{rng.randint(1, 4 if label != 'swap' else 1)}"
        proc = _cli(work, spec)
        if proc.returncode == -signal.SIGKILL:
            kills += 1
            log.append(f"{work.parent.name}: killed at {spec}")
            continue
        assert proc.returncode == 0, f"{spec}: {proc.stderr[-2000:]}"
        log.append(f"{work.parent.name}: {spec} not reached, run finished")
        return kills
    raise AssertionError(f"no launch finished after {max_launches}")


def _suite(reference: Path, tmp_path: Path, seed: int, min_kills: int) -> None:
    rng, log, kills, chain = random.Random(seed), [], 0, 0
    while kills < min_kills:
        work = tmp_path / f"chain{chain}" / "work"
        kills += _chain(work, rng, log)
        report = f"seed {seed}, {kills} kill points:\n" + "\n".join(log)
        (tmp_path / "kill_points.txt").write_text(report + "\n")
        final = _cli(work)  # resume once more without a kill: must be a no-op that succeeds
        assert final.returncode == 0, final.stderr[-2000:] + report
        assert not _litter(work), f"litter {_litter(work)}\n{report}"
        _assert_same(reference, work, report)
        run_dir = next(work.glob("*/default"))
        checked = _verify(run_dir)
        assert checked.returncode == 0, checked.stdout + checked.stderr + report
        chain += 1
    print(f"kill-and-resume: {kills} kill points in {chain} chains (seed {seed}); see {tmp_path / 'kill_points.txt'}")


def test_kill_and_resume_run(reference, tmp_path):
    _suite(reference, tmp_path, seed=12, min_kills=30)


@pytest.mark.slow
def test_kill_and_resume_run_100(reference, tmp_path):
    _suite(reference, tmp_path, seed=1212, min_kills=100)
