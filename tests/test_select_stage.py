"""The select stage's contract with its inputs: stale scores, external score files, undecodable images."""
import numpy as np
import pandas as pd
import pytest
import webdataset as wds

from datacull import layout
from datacull.errors import DatacullError
from datacull.stages.score import score
from datacull.stages.select import select


def test_scores_of_other_data_are_refused_not_reused(make_cfg):
    score(make_cfg("metrics=[random]"))
    with pytest.raises(DatacullError, match="other data.*datacull score"):
        select(make_cfg("metrics=[random]", "data.size=128"))


def _numeric_key_shards(folder, corrupt=()):
    """One shard whose keys are zero-padded numbers ('000000', ...): 4x4 grey PNGs, some corrupt."""
    from PIL import Image
    import io

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    with wds.TarWriter(str(folder / "num-000000.tar")) as sink:
        for i in range(12):
            if i in corrupt:
                sink.write({"__key__": f"{i:06d}", "png": b"\x89PNG broken", "cls": b"0"})
                continue
            buffer = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (4, 4), dtype=np.uint8)).save(buffer, format="PNG")
            sink.write({"__key__": f"{i:06d}", "png": buffer.getvalue(), "cls": str(i % 2).encode()})
    return folder / "num-000000.tar"


def test_csv_scores_with_zero_padded_keys_match_and_corrupt_images_are_skipped(make_cfg, tmp_path):
    shard = _numeric_key_shards(tmp_path / "shards", corrupt=(3, 7))
    scores = tmp_path / "mine.csv"
    pd.DataFrame({"key": [f"{i:06d}" for i in range(12)], "mine": np.arange(12.0)}).to_csv(scores, index=False)
    cfg = make_cfg("data=wds", f"data.urls={shard}", f"select.scores={scores}", "select.metric=mine",
                   "select.fraction=0.5")
    selection = pd.read_parquet(select(cfg)["selection"])
    skipped = selection[selection["reason"].str.startswith("skipped: corrupt image")]
    assert skipped["key"].tolist() == ["000003", "000007"]
    assert not selection.loc[selection.key.isin(["000003", "000007"]), "kept"].any()
    assert selection["kept"].sum() == 5  # half of the 10 decodable examples
    assert selection.loc[selection.kept, "score"].min() >= selection.loc[~selection.kept & (selection["rank"] >= 0), "score"].max()


def test_unreadable_scores_files_are_one_clear_error(make_cfg, tmp_path):
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet at all")
    with pytest.raises(DatacullError, match="cannot read select.scores file"):
        select(make_cfg(f"select.scores={bad}", "select.metric=x"))
    text = tmp_path / "text.csv"
    cfg = make_cfg("metrics=[random]")
    score(cfg)
    keys = pd.read_parquet(layout.scores_path(cfg))["key"]
    pd.DataFrame({"key": keys, "mine": ["high"] * len(keys)}).to_csv(text, index=False)
    with pytest.raises(DatacullError, match="non-numeric"):
        select(make_cfg(f"select.scores={text}", "select.metric=mine"))


@pytest.mark.parametrize("override, message", [("select.fraction=abc", "select.fraction"),
                                               ("select.count=abc", "select.count"),
                                               ("select.count=1.7", "select.count"),
                                               ("select.count=true", "select.count")])
def test_a_malformed_budget_is_one_clear_error_before_any_output(make_cfg, override, message):
    cfg = make_cfg("metrics=[random]")
    score(cfg)
    with pytest.raises(DatacullError, match=message):
        select(make_cfg("metrics=[random]", override))
    assert not (layout.experiment_dir(cfg) / "selections").exists()


def test_settings_that_cannot_change_the_kept_set_do_not_invalidate_a_selection(make_cfg):
    from datacull.store import parquet_fingerprint

    cfg = make_cfg("metrics=[random]", "select.fraction=0.5")
    score(cfg)
    path = select(cfg)["selection"]
    fp = parquet_fingerprint(path)
    # a warning threshold, another policy's section and an unused option: same selection, same fingerprint
    same = make_cfg("metrics=[random]", "select.fraction=0.5", "select.tie_warn_share=0.5",
                    "+select.some_policy={k: 3}", "select.strata=7")
    assert select(same)["selection"] == path and parquet_fingerprint(path) == fp
    changed = select(make_cfg("metrics=[random]", "select.fraction=0.4"))["selection"]
    assert changed != path
