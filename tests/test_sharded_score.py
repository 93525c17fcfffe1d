"""Sharded scoring (datacull.sharding): centroids once, one job per embedding shard, merge == unsharded."""
from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from datacull import layout
from datacull.errors import DatacullError
from datacull.sharding import ValidRows, aligned_window, parts_dir
from datacull.stages.embed import embed
from datacull.stages.score import score

# small blocks and a small k-means sample, so shards straddle assignment blocks and the sample spans shards
METRICS = ("metrics=[ssp,supervised_prototypes]", "metric.ssp.block_size=40", "metric.ssp.max_points_per_centroid=20",
           "metric.supervised_prototypes.block_size=30")


def plant_nan(cfg, shard: int, rows: list[int]) -> None:
    """Overwrite embedding rows with NaN (score skips them as non-finite): tests the usable-row bookkeeping."""
    path = layout.embeddings_dir(cfg) / f"{shard:05d}.npy"
    array = np.load(path, mmap_mode="r+")
    array[rows] = np.nan
    array.flush()


def sharded(make_cfg, tmp_path, count=3, plant=True, *extra):
    """Embed in `count` shards, fit centroids, score every shard; return the config of the merge."""
    work = f"paths.work_dir={tmp_path / 'sharded'}"
    cfgs = [make_cfg(work, *METRICS, f"shard.index={i}", f"shard.count={count}", *extra) for i in range(count)]
    for cfg in cfgs:
        embed(cfg)
    if plant:
        plant_nan(cfgs[0], 1, [3, 40])  # global rows 89 and 126 of 256 (shards of 86, 85, 85)
    score(make_cfg(work, *METRICS, "score.step=centroids", f"shard.count={count}", *extra))
    for cfg in reversed(cfgs):  # any order: the jobs are independent
        score(cfg)
    return make_cfg(work, *METRICS, *extra)


def test_sharded_scores_equal_unsharded_exactly(make_cfg, tmp_path):
    single = make_cfg(*METRICS)
    embed(single)
    plant_nan(single, 0, [89, 126])
    score(single)
    expected = pd.read_parquet(layout.scores_path(single))
    assert (expected["skip_reason"] != "").sum() == 2 and expected["ssp"].notna().sum() == 254

    merge_cfg = sharded(make_cfg, tmp_path)
    assert len(list(parts_dir(merge_cfg).glob("part-*.parquet"))) == 3
    score(merge_cfg)  # score.step=auto with parts present: merges
    merged = pd.read_parquet(layout.scores_path(merge_cfg))
    pd.testing.assert_frame_equal(merged, expected, check_exact=True)
    assert (merged["ssp_cluster"].to_numpy()[merged["ssp"].notna()] >= 0).all()


def test_merge_names_missing_and_duplicate_shards(make_cfg, tmp_path):
    merge_cfg = sharded(make_cfg, tmp_path, plant=False)
    folder = parts_dir(merge_cfg)
    (folder / "part-00001-of-00003.parquet").unlink()
    with pytest.raises(DatacullError, match=r"missing shards \[1\]"):
        score(make_cfg(f"paths.work_dir={tmp_path / 'sharded'}", *METRICS, "score.step=merge"))
    shutil.copy(folder / "part-00002-of-00003.parquet", folder / "part-00002-of-00003 (copy).parquet")
    with pytest.raises(DatacullError, match=r"missing shards \[1\], duplicate shards 2: part-00002-of-00003 "):
        score(merge_cfg)
    assert not layout.scores_path(merge_cfg).exists()


def test_bad_input_for_sharded_scoring(make_cfg, tmp_path):
    work = f"paths.work_dir={tmp_path / 'w'}"
    with pytest.raises(DatacullError, match="no embeddings"):
        score(make_cfg(work, *METRICS, "score.step=centroids", "shard.count=2"))
    for i in range(2):
        embed(make_cfg(work, f"shard.index={i}", "shard.count=2"))
    with pytest.raises(DatacullError, match=r"shard.count=3 does not match .* made with shard.count=2"):
        score(make_cfg(work, *METRICS, "score.step=centroids", "shard.count=3"))
    with pytest.raises(DatacullError, match=r"no centroids .* score.step=centroids shard.count=2"):
        score(make_cfg(work, *METRICS, "shard.index=1", "shard.count=2"))
    with pytest.raises(DatacullError, match=r"supports only .* not el2n"):
        score(make_cfg(work, "metrics=[ssp,el2n]", "shard.index=0", "shard.count=2"))
    with pytest.raises(DatacullError, match="score.step='fit' is not one of"):
        score(make_cfg(work, "score.step=fit"))
    # a shard made with another encoder dim / dtype
    cfg = make_cfg(work, "shard.count=2")
    path = layout.embeddings_dir(cfg) / "00001.npy"
    rows = np.load(path)
    np.save(path, rows[:, :-1])
    with pytest.raises(DatacullError, match=r"differ in dim or dtype \(dim \d+ float\d+: 00000\.npy; dim"):
        score(make_cfg(work, *METRICS, "score.step=centroids", "shard.count=2"))
    np.save(path, rows.astype(np.float64))
    with pytest.raises(DatacullError, match=r"differ in dim or dtype .*float64: 00001\.npy"):
        score(make_cfg(work, *METRICS, "score.step=centroids", "shard.count=2"))


def test_valid_rows_view_maps_positions_past_invalid_rows():
    rows = np.arange(20, dtype=np.float32).reshape(10, 2)
    view = ValidRows(rows, np.array([2, 3, 7]))
    kept = np.delete(rows, [2, 3, 7], axis=0)
    assert len(view) == 7 and view.shape == (7, 2)
    np.testing.assert_array_equal(view[:], kept)
    np.testing.assert_array_equal(view[np.array([0, 2, 6])], kept[[0, 2, 6]])
    np.testing.assert_array_equal(view.window(2, 5)[1:3], kept[3:5])
    np.testing.assert_array_equal(ValidRows(rows, np.array([], dtype=np.int64)).window(3, 6)[:], rows[3:6])
    assert aligned_window(86, 171, 256, 40) == (80, 200) and aligned_window(171, 256, 256, 40) == (160, 256)


def test_launcher_not_installed_names_the_pip_package():
    from hydra.errors import MissingConfigException

    from datacull.cli import config_error_message

    for option, package in (("joblib", "hydra-joblib-launcher"), ("submitit_slurm", "hydra-submitit-launcher")):
        exc = MissingConfigException(f"Could not find 'hydra/launcher/{option}'",
                                     missing_cfg_file=f"hydra/launcher/{option}", options=["basic", "slurm"])
        message = config_error_message(exc, "score", [f"hydra/launcher={option}"])
        assert f"pip install {package}" in message and "\n" not in message


@pytest.mark.slow  # ~17 s; the README's `# in order:` block runs the same joblib commands in the default suite
def test_joblib_multirun_scores_every_shard_and_merges_to_the_unsharded_table(make_cfg, tmp_path):
    """The shard jobs run in joblib processes (`datacull score -m ... hydra/launcher=joblib`); merged == unsharded."""
    work = f"paths.work_dir={tmp_path / 'w'}"
    for i in range(3):
        embed(make_cfg(work, *METRICS, f"shard.index={i}", "shard.count=3"))
    score(make_cfg(work, *METRICS, "score.step=centroids", "shard.count=3"))
    out = subprocess.run([sys.executable, "-m", "datacull.cli", "score", "-m", "shard.index=0,1,2", "shard.count=3",
                          "hydra/launcher=joblib", "data=synthetic", "encoder=pixels", "metric.ssp.k=4", "device=cpu",
                          work, *METRICS], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    merge_cfg = make_cfg(work, *METRICS)
    assert sorted(p.name for p in parts_dir(merge_cfg).glob("part-*")) == \
        [f"part-0000{i}-of-00003.parquet" for i in range(3)]
    score(merge_cfg)
    single = make_cfg(*METRICS)
    score(single)  # unsharded, in this process (embeds its own single shard)
    pd.testing.assert_frame_equal(pd.read_parquet(layout.scores_path(merge_cfg)),
                                  pd.read_parquet(layout.scores_path(single)), check_exact=True)


def test_shard_assignment_on_the_global_block_grid_is_bit_identical():
    """faiss/BLAS results depend on where a block starts: shards must reuse unsharded scoring's blocks."""
    from omegaconf import OmegaConf

    from datacull.metrics.prototypes import ssp_columns

    rng = np.random.default_rng(0)
    rows = rng.standard_normal((3000, 384)).astype(np.float16)
    centroids = rng.standard_normal((100, 384)).astype(np.float32)
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    params = OmegaConf.create({"block_size": 1024})
    view = ValidRows(rows, np.array([5, 1500], dtype=np.int64))  # unsharded scoring: the usable rows, in blocks
    expected = ssp_columns(view, centroids, 100, params, False)
    assert len(expected["ssp"]) == 2998
    for lo, hi in ((0, 997), (997, 1998), (1998, 2998)):
        a, b = aligned_window(lo, hi, len(view), 1024)
        got = ssp_columns(view.window(a, b), centroids, 100, params, False)
        for name in ("ssp", "ssp_cluster"):
            np.testing.assert_array_equal(got[name][lo - a: hi - a], expected[name][lo:hi])


def test_loading_embeddings_names_mixed_dtypes(make_cfg, tmp_path):
    from datacull.stages.embed import load_embeddings

    cfgs = [make_cfg(f"shard.index={i}", "shard.count=2") for i in range(2)]
    for cfg in cfgs:
        embed(cfg)
    path = layout.embeddings_dir(cfgs[0]) / "00000.npy"
    np.save(path, np.load(path).astype(np.float64))
    with pytest.raises(DatacullError, match=r"differ in dim or dtype .*float64: 00000\.npy"):
        load_embeddings(cfgs[1])


def test_plain_score_ignores_parts_made_with_other_settings(make_cfg, tmp_path):
    merge_cfg = sharded(make_cfg, tmp_path, plant=False)
    other = make_cfg(f"paths.work_dir={tmp_path / 'sharded'}", *METRICS, "metric.ssp.k=3")
    score(other)  # the parts are for k=4: scored in one process instead of merging them
    assert (pd.read_parquet(layout.scores_path(other))["ssp_k"] == 3).all()
    with pytest.raises(DatacullError, match="made with other settings"):
        score(make_cfg(f"paths.work_dir={tmp_path / 'sharded'}", *METRICS, "metric.ssp.k=2", "score.step=merge"))
    score(merge_cfg)
    assert (pd.read_parquet(layout.scores_path(merge_cfg))["ssp_k"] == 4).all()
