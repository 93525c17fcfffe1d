"""Determinism (issue #12): the same config and seed, run twice in separate work dirs on CPU, give
identical embeddings (npy bytes), scores.parquet and selection.parquet tables, and shards (bytes);
and `datacull train` gives identical trained weights and result rows apart from the wall-clock
fields (tests/test_kill_resume.py: TIMING_FIELDS; `run_dir` compared relative to the work dir)."""
from __future__ import annotations

import json
import shutil

from test_kill_resume import _SSP, TIMING_FIELDS, _assert_same, _cli, _normal, _outputs


def test_same_config_and_seed_give_identical_outputs(tmp_path):
    works = [tmp_path / name / "work" for name in ("a", "b")]
    for work in works:
        proc = _cli(work)
        assert proc.returncode == 0, proc.stderr[-2000:]
    names = set(_outputs(works[0]))
    assert any(n.endswith("scores.parquet") for n in names) and any(n.endswith(".tar") for n in names)
    assert any(n.endswith("selection.parquet") for n in names) and any(n.endswith(".npy") for n in names)
    _assert_same(works[0], works[1], "two runs with the same config and seed differ")


def test_train_twice_gives_identical_result_rows(tmp_path):
    works = [tmp_path / name / "work" for name in ("a", "b")]
    proc = _cli(works[0], ("score", *_SSP))  # the scores are the first test's business: made once, copied
    assert proc.returncode == 0, proc.stderr[-2000:]
    shutil.copytree(works[0], works[1])
    for work in works:  # ResNet-8 w4, 1 epoch on the kept half of 256 images: a few seconds
        proc = _cli(work, ("train", *_SSP, "train.epochs=1", "model.width=4"))
        assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [sorted(work.glob("*/*/results/rows/*.json")) for work in works]
    assert len(rows[0]) == 1 and [p.name for p in rows[0]] == [p.name for p in rows[1]]
    a, b = (json.loads(r[0].read_text()) for r in rows)
    assert 0.0 <= a["test_error"] <= 1.0 and a["n_train"] == 128 and set(TIMING_FIELDS) <= set(a)
    assert _normal(a, works[0]) == _normal(b, works[1])  # every field but the wall-clock ones
    _assert_same(works[0], works[1], "two `datacull train` runs with the same config and seed differ")
