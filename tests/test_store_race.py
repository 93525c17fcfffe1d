"""Defects 5 and 6 of issue #12: concurrent atomic_directory swaps, and temp litter after SIGKILL."""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import sys
from pathlib import Path

from datacull.store import atomic_directory, atomic_path, remove_stale_temps


def _export_like(final: str, tag: str, barrier) -> None:
    with atomic_directory(Path(final)) as tmp:
        for i in range(5):
            (tmp / f"part-{i}.txt").write_text(tag)
        barrier.wait()  # both writers finish together


def test_two_processes_swapping_one_folder_never_crash(tmp_path):
    ctx = mp.get_context("fork")
    final = tmp_path / "shards"
    for round_ in range(24):
        barrier = ctx.Barrier(2)
        procs = [ctx.Process(target=_export_like, args=(str(final), f"{round_}-{w}", barrier)) for w in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(30)
        assert [p.exitcode for p in procs] == [0, 0], f"round {round_}"
        texts = {f.read_text() for f in final.iterdir()}
        assert len(texts) == 1 and sorted(f.name for f in final.iterdir()) == [f"part-{i}.txt" for i in range(5)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shards"]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temps_of_dead_writers_are_removed_live_ones_kept(tmp_path):
    dead, live = _dead_pid(), os.getppid()
    stale = [tmp_path / f".examples.png.p{dead}.abc.png.tmp", tmp_path / f".shards.p{dead}.xyz.old"]
    stale[0].write_bytes(b"x")
    (stale[1]).mkdir()
    (stale[1] / "a.tar").write_bytes(b"y")
    stale.append(tmp_path / f".shards.p{dead}.q1.tmp")
    stale[2].mkdir()
    kept = tmp_path / f".selection.png.p{live}.abc.png.tmp"
    kept.write_bytes(b"z")
    removed = remove_stale_temps(tmp_path)
    assert sorted(removed) == sorted(stale)
    assert kept.exists() and not any(p.exists() for p in stale)


def test_sigkilled_writer_litter_is_cleaned_by_the_next_write(tmp_path):
    code = ("import os,signal,sys; from pathlib import Path; from datacull.store import atomic_path\n"
            "with atomic_path(Path(sys.argv[1])) as t:\n    t.write_bytes(b'half'); os.kill(os.getpid(), signal.SIGKILL)")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "examples.png")])
    assert proc.returncode == -signal.SIGKILL
    assert len(list(tmp_path.glob(".examples.png.p*.tmp"))) == 1
    with atomic_path(tmp_path / "other.png") as tmp:
        tmp.write_bytes(b"ok")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.png"]
