"""The export stage: webdataset shards, wids index and manifest of the kept examples."""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import webdataset
from PIL import Image

import datacull.export as export_module
from datacull import layout
from datacull.config import compose
from datacull.data.base import CorruptExample, DataSource, build_source
from datacull.errors import DatacullError
from datacull.stages.export import export
from datacull.store import write_parquet_atomic


def make_cfg(work_dir: Path, *overrides: str):
    return compose(["data=synthetic", f"paths.work_dir={work_dir}", "export.maxcount=40", *overrides])


def write_selection(cfg, source: DataSource, keep_fraction: float = 0.4, n_skipped: int = 5, seed: int = 0,
                    fp: str = "sel-fp", scores_fp: str | None = None) -> pd.DataFrame:
    """A selection like the select stage writes: keep-hard by a random score, the first rows skipped."""
    n = len(source)
    score = np.random.default_rng(seed).random(n)
    score[:n_skipped] = np.nan
    scored = np.flatnonzero(np.isfinite(score))
    order = scored[np.argsort(-score[scored], kind="stable")]
    rank = np.full(n, -1, dtype=np.int64)
    rank[order] = np.arange(len(order))
    kept = np.zeros(n, dtype=bool)
    kept[order[: int(keep_fraction * len(order))]] = True
    reason = np.where(kept, "kept: keep_hard test", "pruned: keep_hard test").astype(object)
    reason[:n_skipped] = [f"skipped: corrupt image: broken header {i}" for i in range(n_skipped)]
    frame = pd.DataFrame({"key": source.keys, "index": np.arange(n, dtype=np.int64),
                          "label": source.labels.astype(np.int64), "score": score, "rank": rank,
                          "kept": kept, "reason": reason.astype(str)})
    config = {"scores_fingerprint": scores_fp} if scores_fp else {}
    write_parquet_atomic(layout.selection_path(cfg), frame, fp=fp, config=config)
    return frame


def shard_paths(out_dir: Path) -> list[str]:
    return sorted(str(p) for p in Path(out_dir).glob("*.tar"))


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class JpegSource(DataSource):
    """Encoded (JPEG) images with original bytes; example `bad` holds bytes that do not decode."""

    name, split, num_classes = "jpegs", "train", 3
    class_names = ["cat", "dog", "owl"]

    def __init__(self, n: int = 30, bad: tuple[int, ...] = ()):
        rng = np.random.default_rng(1)
        self._keys = [f"jpegs/train/img{i:04d}" for i in range(n)]
        self._labels = np.arange(n, dtype=np.int64) % 3
        self.blobs = []
        for i in range(n):
            buffer = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(buffer, format="JPEG", quality=80)
            self.blobs.append(b"not a jpeg" if i in bad else buffer.getvalue())

    @property
    def keys(self):
        return self._keys

    @property
    def labels(self):
        return self._labels

    def load(self, index):
        try:
            return np.asarray(Image.open(io.BytesIO(self.blobs[index])).convert("RGB"))
        except Exception as exc:
            raise CorruptExample(f"cannot decode {self._keys[index]}: {exc}") from None

    def raw(self, index):
        return self.blobs[index], "jpg"


def test_shards_hold_exactly_the_kept_examples(tmp_path):
    cfg = make_cfg(tmp_path / "work")
    source = build_source(cfg.data)
    selection = write_selection(cfg, source)
    paths = export(cfg)
    out = layout.shards_dir(cfg)
    assert paths["shards_dir"] == out and paths["manifest"].is_file() and paths["wids_index"].is_file()

    kept = selection[selection["kept"]]
    samples = list(webdataset.WebDataset(shard_paths(out), shardshuffle=False))
    assert [s["__key__"] for s in samples] == kept.sort_values("index")["key"].tolist()  # once each, by index
    by_key = selection.set_index("key")
    for sample in samples:
        row = by_key.loc[sample["__key__"]]
        assert int(sample["cls"].decode()) == row["label"]
        info = json.loads(sample["json"])
        assert info["key"] == sample["__key__"] and info["index"] == row["index"] and info["label"] == row["label"]
        assert info["rank"] == row["rank"] and info["score"] == row["score"]
        decoded = np.asarray(Image.open(io.BytesIO(sample["png"])))
        np.testing.assert_array_equal(decoded, source.load(int(row["index"]))[:, :, 0])

    counts = [len(list(tarfile.open(p).getnames())) // 3 for p in shard_paths(out)]
    assert counts == [40, 40, len(kept) - 80]  # maxcount per shard, the rest in the last one


def test_wids_reads_the_index(tmp_path):
    wids = pytest.importorskip("wids")  # the separate `wids` package
    cfg = make_cfg(tmp_path / "work")
    source = build_source(cfg.data)
    selection = write_selection(cfg, source)
    paths = export(cfg)
    index = json.loads(paths["wids_index"].read_text())
    assert index["__kind__"] == "wids-shard-index-v1" and index["wids_version"] == 1
    assert all("/" not in shard["url"] for shard in index["shardlist"])  # resolved beside the JSON file

    dataset = wids.ShardListDataset(str(paths["wids_index"]), cache_dir=str(tmp_path / "wids_cache"),
                                    transformations=[])
    kept = selection[selection["kept"]].sort_values("index")
    assert len(dataset) == len(kept)
    keys = [dataset[i]["__key__"] for i in range(len(dataset))]
    assert keys == kept["key"].tolist()
    last = dataset[len(dataset) - 1]
    assert int(last[".cls"].read().decode()) == kept["label"].iloc[-1]
    assert json.loads(last[".json"].read())["index"] == kept["index"].iloc[-1]


def test_same_config_gives_byte_identical_shards(tmp_path):
    hashes = []
    for work in ("a", "b"):
        cfg = make_cfg(tmp_path / work)
        write_selection(cfg, build_source(cfg.data))
        paths = export(cfg)
        tars = sorted(Path(paths["shards_dir"]).glob("*.tar"))
        hashes.append([(p.name, sha256(p)) for p in tars] + [("index", sha256(paths["wids_index"]))])
        manifest = json.loads(paths["manifest"].read_text())
        assert [s["sha256"] for s in manifest["shards"]] == [sha256(p) for p in tars]
    assert hashes[0] == hashes[1] and len(hashes[0]) == 4


def test_manifest_accounts_for_every_key(tmp_path):
    cfg = make_cfg(tmp_path / "work")
    source = build_source(cfg.data)
    selection = write_selection(cfg, source, n_skipped=7)
    manifest = json.loads(export(cfg)["manifest"].read_text())
    counts = manifest["counts"]
    n_kept = int(selection["kept"].sum())
    assert counts == {"input": len(source), "kept": n_kept, "pruned": len(source) - n_kept - 7, "skipped": 7,
                      "kept + pruned + skipped == input": True}
    assert manifest["reasons"] == {"kept: keep_hard test": n_kept, "pruned: keep_hard test": len(source) - n_kept - 7,
                                   "skipped: corrupt image": 7}
    assert [s["key"] for s in manifest["skipped"]] == source.keys[:7]
    expected = selection.groupby("label").agg(before=("key", "size"), after=("kept", "sum"))
    assert [(r["label"], r["before"], r["after"]) for r in manifest["per_class"]] == \
        [(int(label), int(row.before), int(row.after)) for label, row in expected.iterrows()]
    assert sum(s["nsamples"] for s in manifest["shards"]) == n_kept
    assert manifest["selection_fingerprint"] == "sel-fp"
    assert manifest["config"]["export"]["maxcount"] == 40 and manifest["config"]["data"]["name"] == "synthetic"


def test_fresh_export_is_skipped_and_config_change_rewrites(tmp_path, monkeypatch):
    cfg = make_cfg(tmp_path / "work")
    write_selection(cfg, build_source(cfg.data))
    first = export(cfg)
    stamp = first["manifest"].stat().st_mtime_ns
    monkeypatch.setattr("datacull.stages.export.export_selection",
                        lambda *a, **k: pytest.fail("a fresh export was redone"))
    assert export(cfg) == first and first["manifest"].stat().st_mtime_ns == stamp
    monkeypatch.undo()
    bigger = make_cfg(tmp_path / "work", "export.maxcount=1000")
    export(bigger)
    assert len(list(layout.shards_dir(bigger).glob("*.tar"))) == 1


def test_metric_scores_go_into_the_json_when_the_scores_made_the_selection(tmp_path):
    cfg = make_cfg(tmp_path / "work")
    source = build_source(cfg.data)
    n = len(source)
    scores = pd.DataFrame({"key": source.keys, "index": np.arange(n), "label": source.labels,
                           "skip_reason": [""] * n, "ssp": np.linspace(0, 1, n), "ssp_cluster": np.arange(n) % 3})
    write_parquet_atomic(layout.scores_path(cfg), scores, fp="scores-fp")
    write_selection(cfg, source, scores_fp="scores-fp")
    sample = next(iter(webdataset.WebDataset(shard_paths(export(cfg)["shards_dir"]), shardshuffle=False)))
    info = json.loads(sample["json"])
    assert info["metrics"] == {"ssp": pytest.approx(info["index"] / (n - 1)), "ssp_cluster": info["index"] % 3}

    other = make_cfg(tmp_path / "work2")
    write_parquet_atomic(layout.scores_path(other), scores, fp="stale-scores")
    write_selection(other, source, scores_fp="scores-fp")  # made from other scores: do not mix them in
    sample = next(iter(webdataset.WebDataset(shard_paths(export(other)["shards_dir"]), shardshuffle=False)))
    assert "metrics" not in json.loads(sample["json"])


def test_raw_sources_keep_their_original_bytes_and_corrupt_ones_are_skipped(tmp_path):
    cfg = make_cfg(tmp_path / "work")
    source = JpegSource(bad=(4,))
    selection = write_selection(cfg, source, keep_fraction=1.0, n_skipped=2)
    paths = export(cfg, source=source)
    samples = list(webdataset.WebDataset(shard_paths(paths["shards_dir"]), shardshuffle=False))
    assert [s["__key__"] for s in samples] == [k for i, k in enumerate(source.keys) if i >= 2 and i != 4]
    for sample in samples:
        index = source.keys.index(sample["__key__"])
        assert sample["jpg"] == source.blobs[index] and "png" not in sample
        assert json.loads(sample["json"])["class_name"] == source.class_names[index % 3]
    manifest = json.loads(paths["manifest"].read_text())
    assert manifest["counts"]["skipped"] == 3 and manifest["counts"]["kept"] == len(samples)
    assert manifest["skipped"][-1]["key"] == source.keys[4]
    assert manifest["skipped"][-1]["reason"].startswith(
        "skipped: corrupt image: example jpegs/train/img0004: UnidentifiedImageError")
    assert manifest["reasons"]["skipped: corrupt image"] == 3
    owl = [r for r in manifest["per_class"] if r["name"] == "owl"][0]
    assert (owl["before"], owl["after"]) == ((selection["label"] == 2).sum(), 10)  # no owl is skipped or corrupt

    failing = make_cfg(tmp_path / "fail", "data.on_error=fail")
    write_selection(failing, source, keep_fraction=1.0, n_skipped=2)
    with pytest.raises(DatacullError, match="jpegs/train/img0004.*corrupt.*on_error=skip"):
        export(failing, source=source)
    assert not layout.shards_dir(failing).exists()


def test_webdataset_source_round_trips_byte_for_byte(tmp_path):
    """data=wds: shards written by hand, exported, and read back as a wds source again."""
    rng = np.random.default_rng(2)
    shard = tmp_path / "in-000000.tar"
    blobs = {}
    with webdataset.TarWriter(str(shard), encoder=False) as writer:
        for i in range(24):
            buffer = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (9, 9, 3), dtype=np.uint8)).save(buffer, format="JPEG")
            blobs[f"photos/p{i:03d}"] = b"\xff\xd8 truncated" if i == 6 else buffer.getvalue()
            writer.write({"__key__": f"photos/p{i:03d}", "jpg": blobs[f"photos/p{i:03d}"], "cls": str(i % 2).encode()})
    cfg = compose(["data=wds", f"data.urls={shard}", f"paths.work_dir={tmp_path / 'work'}", "export.maxcount=8"])
    source = build_source(cfg.data)
    write_selection(cfg, source, keep_fraction=1.0, n_skipped=0)
    paths = export(cfg)
    manifest = json.loads(paths["manifest"].read_text())
    again = compose(["data=wds", f"data.urls='{paths['shards_dir']}/wds-default-{{000000..000002}}.tar'",
                     f"paths.work_dir={tmp_path / 'work2'}"])
    exported = build_source(again.data)
    assert len(exported) == manifest["counts"]["kept"] == 23 and len(manifest["shards"]) == 3
    for i, key in enumerate(exported.keys):
        assert exported.raw(i) == (blobs[key], "jpg") and exported.labels[i] == int(key[-3:]) % 2
    assert [s["key"] for s in manifest["skipped"]] == ["photos/p006"] and "photos/p006" not in exported.keys
    assert manifest["skipped"][0]["reason"].startswith("skipped: corrupt image: ")


def test_selection_keys_must_match_the_source(tmp_path):
    cfg = make_cfg(tmp_path / "work")
    source = build_source(cfg.data)
    frame = write_selection(cfg, source)
    stale = frame.copy()
    stale.loc[3, "key"] = "synthetic/train/999999"
    write_parquet_atomic(layout.selection_path(cfg), stale.iloc[:-2], fp="stale")
    with pytest.raises(DatacullError, match=r"1 selected keys not in the source .*999999.*3 source keys not in "
                                            r"the selection.*re-run `datacull select`"):
        export(cfg)
    moved = frame.copy()
    moved["index"] = moved["index"][::-1].to_numpy()
    write_parquet_atomic(layout.selection_path(cfg), moved, fp="moved")
    with pytest.raises(DatacullError, match="disagrees with the data source"):
        export(cfg)
    assert not layout.shards_dir(cfg).exists()


def test_missing_selection_says_to_run_select(tmp_path):
    cfg = make_cfg(tmp_path / "work")
    with pytest.raises(DatacullError, match="run `datacull select` first"):
        export(cfg)


def test_interrupted_export_leaves_nothing_and_keeps_the_old_one(tmp_path, monkeypatch):
    cfg = make_cfg(tmp_path / "work")
    write_selection(cfg, build_source(cfg.data))
    out = layout.shards_dir(cfg)
    real_write = export_module.ShardSequence.write
    calls = {"n": 0}

    def failing_write(self, sample):
        calls["n"] += 1
        if calls["n"] > 50:  # past the first full shard
            raise RuntimeError("disk on fire")
        real_write(self, sample)

    monkeypatch.setattr(export_module.ShardSequence, "write", failing_write)
    with pytest.raises(RuntimeError, match="disk on fire"):
        export(cfg)
    assert sorted(p.name for p in layout.selection_dir(cfg).iterdir()) == ["selection.parquet"]

    monkeypatch.undo()
    old = export(cfg)
    before = {p.name: sha256(p) for p in out.iterdir()}
    calls["n"] = 0
    monkeypatch.setattr(export_module.ShardSequence, "write", failing_write)
    with pytest.raises(RuntimeError, match="disk on fire"):
        export(make_cfg(tmp_path / "work", "export.maxcount=7"))
    assert {p.name: sha256(p) for p in out.iterdir()} == before
    assert sorted(p.name for p in layout.selection_dir(cfg).iterdir()) == ["selection.parquet", "shards"]
    assert json.loads(old["manifest"].read_text())["config"]["export"]["maxcount"] == 40


def test_tar_members_are_safe_relative_paths(tmp_path):
    cfg = make_cfg(tmp_path / "work")
    write_selection(cfg, build_source(cfg.data))
    for path in shard_paths(export(cfg)["shards_dir"]):
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                assert member.isfile() and not member.name.startswith("/")
                assert ".." not in member.name.split("/") and member.mtime == 0
    for bad in ("/etc/passwd.jpg", "a/../b.jpg", "a//b.jpg", "x" * 120 + ".jpg"):
        with pytest.raises(DatacullError):
            export_module.check_member_name(bad)
    with pytest.raises(DatacullError, match="absolute or '..'"):
        export_module.make_sample("../escape", (b"x", "jpg"), 0, {})
