"""`datacull verify`: a good export verifies; each kind of tampering is caught with a precise message."""
from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import webdataset as wds
from PIL import Image

from datacull import layout
from datacull.errors import DatacullError
from datacull.export import sha256_file
from datacull.results import COLUMNS, load_results, write_results_csv, write_row
from datacull.stages.export import export
from datacull.stages.score import score
from datacull.stages.select import select
from datacull.stages.verify import verify_paths

CORRUPT, IMAGELESS = (3, 7, 15), 11


def write_wds(folder: Path, n: int = 24) -> Path:
    """One shard of `n` 4x4 grey PNGs with labels i % 2; CORRUPT ones do not decode, IMAGELESS has no image."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    path = folder / "in-000000.tar"
    with wds.TarWriter(str(path)) as sink:
        for i in range(n):
            sample = {"__key__": f"k{i:03d}", "cls": str(i % 2).encode()}
            if i in CORRUPT:
                sample["png"] = b"\x89PNG broken"
            elif i != IMAGELESS:
                buffer = io.BytesIO()
                Image.fromarray(rng.integers(0, 255, (4, 4), dtype=np.uint8)).save(buffer, format="PNG")
                sample["png"] = buffer.getvalue()
            else:
                sample["txt"] = b"caption only"
            sink.write(sample)
    return path


@pytest.fixture
def exported(make_cfg, tmp_path):
    """(cfg, shards dir) of a finished score -> select -> export on 24 wds samples (4 of them skipped)."""
    shard = write_wds(tmp_path / "in")
    cfg = make_cfg("data=wds", f"data.urls={shard}", "metrics=[random]", "select.fraction=0.5", "export.maxcount=4")
    score(cfg)
    select(cfg)
    return cfg, export(cfg)["shards_dir"]


def problems(path: Path) -> list[str]:
    return verify_paths([path]).problems


def rewrite_tar(path: Path, change) -> None:
    """Rewrite tar `path` with `change(list of (TarInfo, bytes))` applied to its members."""
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    members = change(members)
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for info, data in members:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def update_manifest(shards_dir: Path, edit) -> None:
    path = shards_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def rehash(shards_dir: Path) -> None:
    """Record the shards' current sizes, hashes and sample counts (a consistent forgery except for content)."""
    def edit(manifest):
        for record in manifest["shards"]:
            path = shards_dir / record["url"]
            with tarfile.open(path) as tar:
                record["nsamples"] = len({m.name.split(".")[0] for m in tar.getmembers()})
            record.update(filesize=path.stat().st_size, sha256=sha256_file(path))
    update_manifest(shards_dir, edit)


def test_a_good_export_verifies_and_accounts_for_every_key(exported):
    cfg, shards_dir = exported
    report = verify_paths([Path(cfg.paths.work_dir)])
    assert report.ok, report.problems
    c = report.counts
    assert (c["exports"], c["keys"], c["kept"], c["pruned"], c["skipped"]) == (1, 24, 10, 10, 4)
    assert c["samples"] == 10 and c["shards"] == 3
    manifest = json.loads((shards_dir / "manifest.json").read_text())
    reasons = {row["key"]: row["reason"] for row in manifest["skipped"]}
    assert reasons[f"k{IMAGELESS:03d}"].startswith("skipped: no image member")  # not silently dropped
    assert manifest["reasons"]["skipped: corrupt image"] == 3
    assert "object at 0x" not in json.dumps(manifest)  # reasons are the same in every run
    for path in (shards_dir, shards_dir.parent, layout.experiment_dir(cfg)):  # any level verifies
        assert verify_paths([path]).ok
    out = subprocess.run([sys.executable, "-m", "datacull.cli", "verify", str(cfg.paths.work_dir)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("\n") == 1 and out.stdout.startswith("verify: OK: 1 export (10 samples in 3 shards")


def test_deleted_shard_and_unlisted_shard(exported):
    _, shards_dir = exported
    shards = sorted(shards_dir.glob("*.tar"))
    shards[1].rename(shards_dir / "stray.tar")
    found = problems(shards_dir)
    assert f"{shards[1]}: listed in manifest.json but missing" in found
    assert f"{shards_dir / 'stray.tar'}: a shard not listed in manifest.json" in found
    assert any("kept in the selection but neither exported nor skipped" in p for p in found)


def test_modified_shard_bytes_and_an_image_that_no_longer_decodes(exported):
    _, shards_dir = exported
    shard = sorted(shards_dir.glob("*.tar"))[0]
    data = bytearray(shard.read_bytes())
    data[600] ^= 0xFF  # inside the first member's data: same size, other bytes
    shard.write_bytes(bytes(data))
    assert f"{shard}: sha256 differs from the manifest (the shard was modified)" in problems(shards_dir)

    def break_image(members):
        first_png = next(info.name for info, _ in members if info.name.endswith(".png"))
        return [(info, b"not a png" if info.name == first_png else data) for info, data in members]

    rewrite_tar(shard, break_image)
    rehash(shards_dir)
    found = problems(shards_dir)
    assert len(found) == 1 and f"{shard.name}: sample " in found[0] and "image does not decode" in found[0]


def test_a_key_missing_from_the_manifest(exported):
    _, shards_dir = exported
    dropped = {}

    def drop(manifest):
        dropped.update(manifest["skipped"].pop(0))
        manifest["counts"]["skipped"] -= 1
        manifest["counts"]["input"] -= 1
    update_manifest(shards_dir, drop)
    found = problems(shards_dir)
    assert any(f"key {dropped['key']!r} is skipped in the selection" in p and "not listed as skipped" in p
               for p in found), found
    assert any("input 23 but the selection has 24 keys" in p for p in found)


def test_a_duplicated_key(exported):
    _, shards_dir = exported
    shard = sorted(shards_dir.glob("*.tar"))[-1]
    key = []

    def duplicate_first(members):
        first = members[0][0].name.split(".")[0]
        key.append(first)
        return members + [(info, data) for info, data in members if info.name.split(".")[0] == first]

    rewrite_tar(shard, duplicate_first)
    rehash(shards_dir)
    found = problems(shards_dir)
    assert f"{shards_dir}: key {key[0]!r} is exported 2 times" in found
    assert any("records 10 kept, the shards hold 11" in p for p in found)


def test_temp_litter_is_reported(exported):
    cfg, shards_dir = exported
    (layout.experiment_dir(cfg) / ".scores.parquet.x1y2.tmp").write_bytes(b"half")
    (shards_dir.parent / ".shards.abcd.tmp").mkdir()
    (shards_dir.parent / ".shards.abcd.tmp" / "wds-000000.tar").write_bytes(b"partial")
    found = problems(Path(cfg.paths.work_dir))
    assert len(found) == 2 and all("temp litter" in p for p in found)
    assert any(".scores.parquet.x1y2.tmp: temp litter (file" in p for p in found)
    assert any(".shards.abcd.tmp: temp litter (folder" in p for p in found)
    out = subprocess.run([sys.executable, "-m", "datacull.cli", "verify", str(cfg.paths.work_dir)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert lines[0].startswith("verify: 2 problems in ") and all(line.startswith("  - ") for line in lines[1:])
    from datacull.stages import get_stage

    with pytest.raises(DatacullError, match="verify: 2 problems in .*temp litter"):  # the stage function
        get_stage("verify")(cfg)
    (layout.experiment_dir(cfg) / ".scores.parquet.x1y2.tmp").unlink()
    shutil.rmtree(shards_dir.parent / ".shards.abcd.tmp")
    assert get_stage("verify")(cfg) == {"verified": Path(cfg.paths.work_dir)}


def result_row(run_id: str) -> dict:
    return {c: None for c in COLUMNS} | {"run_id": run_id, "test_error": 0.5, "name": "default"}


def test_results_table_has_every_finished_run_once(tmp_path):
    experiment = tmp_path / "work" / "synthetic-train" / "default"
    rows = experiment / "results" / "rows"
    for run_id in ("r1", "r2", "r3"):
        write_row(rows, result_row(run_id))
    table = write_results_csv(load_results([rows]), experiment / "results.csv")
    report = verify_paths([tmp_path / "work"])
    assert report.ok and report.counts["result_rows"] == 3, report.problems
    frame = pd.read_csv(table, dtype={"run_id": str})
    pd.concat([frame, frame.iloc[[1]]]).to_csv(table, index=False)  # r2 twice
    assert problems(table) == [f"{table}: run r2 has 2 rows"]
    frame.iloc[[0, 1]].to_csv(table, index=False)  # r3 finished but missing
    found = problems(experiment)
    assert len(found) == 1 and found[0].startswith(f"{table}: finished run r3 (")
    (rows / "r4.json").write_text(json.dumps(result_row("r5")))
    assert any("r4.json: run_id 'r5' differs from its file name" in p for p in problems(experiment))


def test_nothing_to_verify_is_one_clear_error(tmp_path):
    with pytest.raises(DatacullError, match="does not exist"):
        verify_paths([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatacullError, match="nothing to verify in .*empty"):
        verify_paths([tmp_path / "empty"])
