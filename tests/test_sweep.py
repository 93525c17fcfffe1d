"""Selections with their own identity, nested subsets, `datacull train`, `datacull sweep` (resume)."""
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from datacull import layout
from datacull.errors import DatacullError
from datacull.results import load_results
from datacull.stages.score import score
from datacull.stages.select import select
from datacull.stages.train import planned_epochs, train
from datacull.sweep import expand_grid

TINY_TRAIN = ["model=resnet8", "model.width=4", "train.epochs=1", "train.batch_size=64"]


def test_every_selection_of_a_multirun_keeps_its_own_folder(make_cfg):
    cfg = make_cfg("metrics=[ssp,random]")
    score(cfg)
    paths = {policy: select(make_cfg("metrics=[ssp,random]", f"select.policy={policy}"))["selection"]
             for policy in ("keep_hard", "keep_easy", "ccs")}
    assert len(set(paths.values())) == 3 and all(p.exists() for p in paths.values())
    hard, easy = (pd.read_parquet(paths[p]) for p in ("keep_hard", "keep_easy"))
    assert hard["kept"].sum() == easy["kept"].sum() == 128
    assert (hard.loc[hard.kept, "score"].min() >= easy.loc[easy.kept, "score"].max())
    assert "ssp-keep_hard-f0.5-s0-" in paths["keep_hard"].parent.name


def test_readme_multirun_line_writes_every_selection(tmp_path):
    """`datacull select -m select.policy=keep_hard,keep_easy,ccs` exactly as the README prints it."""
    pytest.importorskip("datacull.data.fashion_mnist")
    from datacull.config import compose
    from datacull.data.base import build_source
    from datacull.store import write_parquet_atomic

    cfg = compose([])
    try:
        source = build_source(cfg.data)
    except DatacullError as exc:
        pytest.skip(f"Fashion-MNIST not installed: {exc}")
    scores = pd.DataFrame({"key": source.keys, "index": np.arange(len(source)), "label": source.labels,
                           "skip_reason": "", "ssp": np.random.default_rng(0).random(len(source))})
    write_parquet_atomic(tmp_path / "datacull_work" / "fashion_mnist-train" / "default" / "scores.parquet", scores, fp="x")
    out = subprocess.run([sys.executable, "-m", "datacull.cli", "select", "-m",
                          "select.policy=keep_hard,keep_easy,ccs"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr
    made = sorted((tmp_path / "datacull_work" / "fashion_mnist-train" / "default" / "selections").glob("*/selection.parquet"))
    assert [p.parent.name.split("-")[1] for p in made] == ["ccs", "keep_easy", "keep_hard"]


def test_subsets_are_nested_across_sizes_and_differ_across_seeds(make_cfg):
    score(make_cfg("metrics=[random]"))

    def pool(size, seed=0):
        path = select(make_cfg("metrics=[random]", f"select.subset_size={size}", f"select.seed={seed}",
                               "select.fraction=1.0"))["selection"]
        frame = pd.read_parquet(path)
        assert frame["kept"].sum() == size
        assert frame.loc[~frame.kept, "reason"].str.contains("outside the random").all()
        return set(frame.loc[frame.kept, "key"])

    small, large = pool(50), pool(120)
    assert small < large
    assert pool(50, seed=1) != small
    half = pd.read_parquet(select(make_cfg("metrics=[random]", "select.subset_size=0.5", "select.fraction=0.5"))["selection"])
    assert half["kept"].sum() == 64 and (half["reason"].str.startswith("pruned")).sum() == 256 - 64


def test_nan_scores_of_decodable_examples_are_ranked_not_dropped(make_cfg):
    cfg = make_cfg("metrics=[random]", "select.policy=keep_easy", "select.fraction=0.5")
    score(cfg)
    path = layout.scores_path(cfg)
    frame = pd.read_parquet(path)
    frame.loc[:19, "random"] = np.nan
    from datacull.store import write_parquet_atomic

    write_parquet_atomic(path, frame, fp="with-nans")
    selection = pd.read_parquet(select(cfg)["selection"])
    assert selection["kept"].sum() == 128 and (selection["rank"] >= 0).all()
    assert not selection["reason"].str.startswith("skipped").any()
    skipping = pd.read_parquet(select(make_cfg("metrics=[random]", "select.policy=keep_easy", "select.fraction=0.5",
                                               "select.missing_score=skip"))["selection"])
    assert skipping["reason"].str.startswith("skipped: no random score").sum() == 20


def test_train_writes_one_row_with_the_kept_count_and_reuses_it(make_cfg, caplog):
    caplog.set_level("INFO", logger="datacull")
    cfg = make_cfg("metrics=[ssp]", "select.fraction=0.25", *TINY_TRAIN)
    score(cfg)
    paths = train(cfg)
    row = json.loads(paths["row"].read_text())
    selection = pd.read_parquet(paths["selection"])
    assert row["n_train"] == int(selection["kept"].sum()) == 64
    assert sum(json.loads(row["kept_per_class"])) == 64 and sum(json.loads(row["pool_per_class"])) == 256
    assert 0 <= row["test_error"] <= 1 and row["metric"] == "ssp" and row["policy"] == "keep_hard"
    assert len(json.loads(row["per_class_error"])) == 4 and row["epochs"] == 1 and row["steps"] == 1
    again = train(cfg)
    assert again["row"] == paths["row"] and "not retrained" in caplog.text
    full = json.loads(train(make_cfg("metrics=[ssp]", "select.fraction=1.0", *TINY_TRAIN))["row"].read_text())
    assert full["metric"] == full["policy"] == "all" and full["n_train"] == 256


def test_steps_budget_gives_small_selections_more_epochs(make_cfg):
    cfg = make_cfg("train.budget=steps", "train.epochs=4", "train.batch_size=10")
    assert planned_epochs(cfg, 100, 1000) == 40 and planned_epochs(cfg, 1000, 1000) == 4
    assert planned_epochs(make_cfg("train.epochs=4"), 100, 1000) == 4
    floor = make_cfg("train.epochs=4", "train.batch_size=10", "train.min_steps=100")
    assert planned_epochs(floor, 100, 1000) == 10 and planned_epochs(floor, 1000, 1000) == 4
    with pytest.raises(DatacullError, match="train.budget"):
        planned_epochs(make_cfg("train.budget=time"), 1, 1)


def test_grid_validation_fails_before_any_work(make_cfg):
    with pytest.raises(DatacullError, match="unknown"):
        expand_grid(make_cfg("sweep.metrics=[ssp,nonsense]"))
    with pytest.raises(DatacullError):
        expand_grid(make_cfg("sweep.policies=[keep_hard,keep_weird]"))
    with pytest.raises(DatacullError, match="fractions"):
        expand_grid(make_cfg("sweep.fractions=[0.5,1.5]"))
    jobs = expand_grid(make_cfg("sweep.metrics=[ssp,random]", "sweep.fractions=[0.5,1.0]", "sweep.sizes=[100,50]",
                                "sweep.seeds=[0,1]"), 256)
    assert len(jobs) == 2 * 2 * (2 * 2 + 1)
    assert [j.size for j in jobs[:5]] == [50] * 5 and sum(j.fraction == 1.0 for j in jobs) == 4


def test_killed_sweep_resumes_without_retraining(make_cfg, monkeypatch):
    from datacull.stages import sweep as sweep_stage
    import datacull.stages.train as train_stage

    overrides = ["sweep.metrics=[random,ssp]", "sweep.policies=[keep_hard]", "sweep.fractions=[0.5,1.0]",
                 "sweep.sizes=[64,128]", "sweep.report=false", *TINY_TRAIN]
    trained, killed = [], []
    real = train_stage.train_model

    def counting(*args, **kwargs):
        trained.append(args[2].copy())
        if len(trained) == 3 and not killed:
            killed.append(True)
            raise KeyboardInterrupt  # the sweep is killed during its third run
        return real(*args, **kwargs)

    monkeypatch.setattr(train_stage, "train_model", counting)
    with pytest.raises(KeyboardInterrupt):
        sweep_stage.sweep(make_cfg(*overrides))
    assert len(trained) == 3
    trained.clear()
    paths = sweep_stage.sweep(make_cfg(*overrides))
    assert len(trained) == 6 - 2  # the two finished runs are read, not retrained
    results = load_results([paths["results"]])
    assert len(results) == 6 and set(results["subset_size"]) == {64, 128}
    assert (results.loc[results.fraction == 0.5, "n_train"] == results.loc[results.fraction == 0.5, "subset_size"] // 2).all()


def test_results_csv_holds_only_the_current_grid_after_a_setting_changes(make_cfg):
    from datacull.stages import sweep as sweep_stage

    grid = ["sweep.metrics=[ssp]", "sweep.policies=[dbp]", "sweep.fractions=[0.5]", "sweep.sizes=[null]",
            "sweep.report=false", "data.limit=96", "select.dbp.k=3", *TINY_TRAIN]
    first = load_results([sweep_stage.sweep(make_cfg(*grid))["results"]])
    changed = load_results([sweep_stage.sweep(make_cfg(*grid, "select.dbp.min_share=0.0"))["results"]])
    rows_on_disk = load_results([layout.results_rows_dir(make_cfg(*grid))])
    assert len(first) == len(changed) == 1 and len(rows_on_disk) == 2  # the old row is kept on disk ...
    assert changed["run_id"].iloc[0] != first["run_id"].iloc[0]  # ... but only the new one is in results.csv
