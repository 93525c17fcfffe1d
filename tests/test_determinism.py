"""Determinism (issue #12): the same config and seed, run twice in separate work dirs on CPU, give
identical embeddings (npy bytes), scores.parquet and selection.parquet tables, and shards (bytes)."""
from __future__ import annotations

from test_kill_resume import _assert_same, _cli, _outputs


def test_same_config_and_seed_give_identical_outputs(tmp_path):
    works = [tmp_path / name / "work" for name in ("a", "b")]
    for work in works:
        proc = _cli(work)
        assert proc.returncode == 0, proc.stderr[-2000:]
    names = set(_outputs(works[0]))
    assert any(n.endswith("scores.parquet") for n in names) and any(n.endswith(".tar") for n in names)
    assert any(n.endswith("selection.parquet") for n in names) and any(n.endswith(".npy") for n in names)
    _assert_same(works[0], works[1], "two runs with the same config and seed differ")
