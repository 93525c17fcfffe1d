"""embed -> score -> select on tiny synthetic data, skip-when-fresh, and the bad-input contract."""
import numpy as np
import pandas as pd
import pytest

from datacull import layout
from datacull.data.base import ArraySource, CorruptExample, SOURCES
from datacull.errors import DatacullError
from datacull.stages.embed import embed, load_embeddings
from datacull.stages.score import score
from datacull.stages.select import select


def test_embed_score_select_end_to_end(make_cfg):
    cfg = make_cfg("metrics=[ssp,supervised_prototypes,random]", "select.fraction=0.25")
    paths = embed(cfg)
    rows, table = load_embeddings(cfg)
    assert rows.shape[0] == len(table) == 256 and table["key"].is_unique
    score(cfg)
    scores = pd.read_parquet(layout.scores_path(cfg))
    assert list(scores.columns[:4]) == ["key", "index", "label", "skip_reason"]
    assert {"ssp", "ssp_cluster", "supervised_prototypes", "random"} <= set(scores.columns)
    select(cfg)
    selection = pd.read_parquet(layout.selection_path(cfg))
    assert list(selection.columns) == ["key", "index", "label", "score", "rank", "kept", "reason"]
    assert selection["kept"].sum() == 64
    kept_scores = selection.loc[selection.kept, "score"]
    assert kept_scores.min() >= selection.loc[~selection.kept, "score"].max()
    assert (selection["key"] == scores["key"]).all()
    assert paths["embeddings"].exists()


def test_stages_skip_when_outputs_are_fresh(make_cfg, caplog):
    caplog.set_level("INFO", logger="datacull")
    cfg = make_cfg()
    embed(cfg)
    score(cfg)
    mtime = layout.scores_path(cfg).stat().st_mtime_ns
    embed(cfg)
    score(cfg)
    assert "up to date" in caplog.text and layout.scores_path(cfg).stat().st_mtime_ns == mtime
    score(make_cfg("metric.ssp.k=3"))  # a changed metric config recomputes
    assert layout.scores_path(cfg).stat().st_mtime_ns != mtime


def test_sharded_embedding_equals_single_run(make_cfg, tmp_path):
    single = make_cfg()
    embed(single)
    whole, _ = load_embeddings(single)
    parts = [make_cfg(f"paths.work_dir={tmp_path / 'sharded'}", f"shard.index={i}", "shard.count=3") for i in range(3)]
    with pytest.raises(DatacullError, match="incomplete"):
        embed(parts[0])
        load_embeddings(parts[0])
    for cfg in parts[1:]:
        embed(cfg)
    rows, table = load_embeddings(parts[0])
    np.testing.assert_allclose(rows, whole, rtol=1e-5, atol=1e-5)
    assert table["index"].tolist() == list(range(256))


@pytest.mark.parametrize("override, message", [
    ("metrics=[ssp,nonsense]", "unknown metric 'nonsense'"),
    ("select.policy=keep_some", "unknown selection policy"),
    ("select.fraction=1.5", "fraction"),
    ("select.fraction=0", "fraction"),
    ("metric.ssp.k=1000", "k=1000"),
])
def test_bad_settings_give_one_clear_error(make_cfg, override, message):
    cfg = make_cfg(override)
    with pytest.raises(DatacullError, match=message):
        score(cfg)
        select(cfg)
    assert not layout.selection_path(cfg).exists()


def test_unknown_encoder_and_data_names_list_valid_ones(make_cfg):
    cfg = make_cfg()
    cfg.encoder.name = "nope"
    with pytest.raises(DatacullError, match="valid encoder values: .*pixels"):
        embed(cfg)
    cfg = make_cfg()
    cfg.data.name = "nope"
    with pytest.raises(DatacullError, match="valid data values: .*fashion_mnist"):
        embed(cfg)


def _register(name, factory):
    if name not in SOURCES:
        SOURCES.register(name)(factory)


def test_empty_and_duplicate_key_datasets_are_rejected(make_cfg):
    _register("empty_test", lambda cfg, split: ArraySource("empty", split, np.zeros((0, 4, 4, 1), np.uint8), [], 2))

    def duplicated(cfg, split):
        source = ArraySource("dup", split, np.zeros((4, 4, 4, 1), np.uint8), [0, 1, 0, 1], 2)
        source._keys[2] = source._keys[1]
        return source

    _register("dup_test", duplicated)
    cfg = make_cfg()
    cfg.data.name = "empty_test"
    with pytest.raises(DatacullError, match="no examples"):
        embed(cfg)
    cfg.data.name = "dup_test"
    with pytest.raises(DatacullError, match="duplicate keys"):
        embed(cfg)


class _CorruptAt(ArraySource):
    def load(self, index):
        if index in (3, 10):
            raise CorruptExample("truncated JPEG")
        return super().load(index)


def _corrupt_source(cfg, split):
    rng = np.random.default_rng(0)
    return _CorruptAt("corrupt", split, rng.integers(0, 255, (40, 8, 8, 1), dtype=np.uint8), np.arange(40) % 2, 2)


def test_corrupt_images_are_skipped_with_reason_or_fail(make_cfg):
    _register("corrupt_test", _corrupt_source)
    cfg = make_cfg("select.fraction=0.5", "metrics=[ssp,supervised_prototypes]")
    cfg.data.name = "corrupt_test"
    score(cfg)
    select(cfg)
    selection = pd.read_parquet(layout.selection_path(cfg))
    skipped = selection[selection["rank"] < 0]
    assert skipped["index"].tolist() == [3, 10]
    assert all(r.startswith("skipped: corrupt image: truncated JPEG") for r in skipped["reason"])
    assert selection["kept"].sum() == 19 and len(selection) == 40
    cfg.data.on_error = "fail"
    cfg.paths.work_dir = cfg.paths.work_dir + "_fail"
    with pytest.raises(DatacullError, match="cannot be decoded"):
        embed(cfg)


def test_nan_embeddings_are_an_error(make_cfg, monkeypatch):
    from datacull.encoders import pixels

    cfg = make_cfg()
    original = pixels.PixelPCAEncoder.encode

    def broken(self, images):
        out = original(self, images)
        out[0, 0] = float("nan")
        return out

    monkeypatch.setattr(pixels.PixelPCAEncoder, "encode", broken)
    with pytest.raises(DatacullError, match="NaN/inf"):
        embed(cfg)
    assert not list(layout.embeddings_dir(cfg).glob("*.npy"))


def test_scores_whose_keys_do_not_match_the_dataset(make_cfg, tmp_path):
    cfg = make_cfg()
    keys = [f"synthetic/train/{i:06d}" for i in range(256)]
    bad = pd.DataFrame({"key": keys[:-1] + ["someone/else/000001"], "ssp": np.arange(256.0)})
    bad.to_csv(tmp_path / "scores.csv", index=False)
    cfg = make_cfg(f"select.scores={tmp_path / 'scores.csv'}", "select.metric=ssp")
    with pytest.raises(DatacullError, match="do not match: 1 score keys not in the dataset"):
        select(cfg)
    good = pd.DataFrame({"key": keys[::-1], "ssp": np.arange(256.0)})
    good.to_csv(tmp_path / "scores.csv", index=False)
    select(cfg)
    selection = pd.read_parquet(layout.selection_path(cfg))
    assert selection["key"].tolist() == keys  # joined by key, not position
    assert selection.loc[selection.kept, "index"].max() < 128  # reversed scores: low index = hard


def test_unwritable_work_dir(make_cfg, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    cfg = make_cfg(f"paths.work_dir={blocker / 'work'}")
    with pytest.raises(DatacullError, match="paths.work_dir"):
        embed(cfg)
