"""The on-disk per-shard index of the wds source: reused while a shard is unchanged, rebuilt otherwise."""
from __future__ import annotations

import io
import logging
import os
import tarfile

import numpy as np
import pytest
from omegaconf import OmegaConf

import datacull.data.tar_index as tar_index
from datacull.data.base import build_source
from datacull.data.tar_index import index_cache_file, shard_stamp


def write_shard(path, keys, label_offset=0):
    """A tar shard of 4-byte fake jpgs (never decoded: image_size/channels are configured) with .cls labels."""
    with tarfile.open(path, "w") as tar:
        for i, key in enumerate(keys):
            for ext, data in (("jpg", f"{key:>4}"[:4].encode()), ("cls", str(i + label_offset).encode())):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


@pytest.fixture
def shards(tmp_path):
    folder = tmp_path / "shards"
    folder.mkdir()
    for s in range(4):
        write_shard(folder / f"s-{s:06d}.tar", [f"k{s}_{i:03d}" for i in range(5 + s)], label_offset=s)
    return folder


def data_cfg(folder, cache, workers=0):
    return OmegaConf.create({"name": "wds", "split": "train", "test_split": "test", "root": None,
                             "urls": f"{folder}/s-{{000000..000003}}.tar", "num_classes": None, "channels": 3,
                             "image_size": 4, "limit": None, "num_workers": workers,
                             "index_cache": None if cache is None else str(cache)})


def snapshot(source):
    return (source.keys, source.labels.tolist(), source._shard_ids.tolist(), source._offsets.tolist(),
            source._sizes.tolist(), source._exts.tolist(), source.num_classes)


def expected_offsets(shard):
    """Independent computation: the data offset of every .jpg member, from tarfile directly."""
    with tarfile.open(shard) as tar:
        return [m.offset_data for m in tar.getmembers() if m.name.endswith(".jpg")]


def test_second_open_reads_no_tar_and_equals_the_first(shards, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = build_source(data_cfg(shards, cache))
    assert len(list(cache.glob("*.idx"))) == 4
    assert first._offsets.tolist() == sum((expected_offsets(p) for p in sorted(shards.glob("*.tar"))), [])
    assert first.raw(5) == (b"k1_0", "jpg")  # read by offset: first key of shard 1

    def no_tar_reading(*args, **kwargs):
        raise AssertionError("a tar header was read although the cached index is valid")

    monkeypatch.setattr(tar_index, "scan_shard", no_tar_reading)
    monkeypatch.setattr("datacull.data.wds.scan_shard", no_tar_reading)
    second = build_source(data_cfg(shards, cache))
    assert snapshot(second) == snapshot(first) and second.raw(5) == (b"k1_0", "jpg")


def test_changed_shard_size_or_mtime_is_reindexed(shards, tmp_path):
    cache = tmp_path / "cache"
    build_source(data_cfg(shards, cache))
    shard = shards / "s-000002.tar"
    # same size, new content and mtime: the stale index must not be trusted
    write_shard(shard, [f"z2_{i:03d}" for i in range(7)], label_offset=2)
    stat = os.stat(shard)
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    source = build_source(data_cfg(shards, cache))
    assert source.keys[11:18] == [f"z2_{i:03d}" for i in range(7)]
    # a different size (more samples)
    write_shard(shard, [f"y2_{i:03d}" for i in range(9)], label_offset=2)
    source = build_source(data_cfg(shards, cache))
    assert source.keys[11:20] == [f"y2_{i:03d}" for i in range(9)] and len(source) == 5 + 6 + 9 + 8
    assert source.labels[11:20].tolist() == list(range(2, 11))
    assert len(list(cache.glob("*.idx"))) == 4  # keyed by path: the stale file was replaced, not added to


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "wrong_stamp"])
def test_damaged_index_file_is_rebuilt_not_trusted(shards, tmp_path, damage, caplog):
    caplog.set_level(logging.INFO, logger="datacull")
    cache = tmp_path / "cache"
    reference = snapshot(build_source(data_cfg(shards, None)))
    build_source(data_cfg(shards, cache))
    path = index_cache_file(cache, shard_stamp(shards / "s-000001.tar"))
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) - 7]
    elif damage == "flip":
        data[-3] ^= 0xFF  # inside the keys: the checksum catches it
    elif damage == "garbage":
        data = bytearray(b"not an index at all")
    else:  # a valid index of another shard copied over this one's file
        data = bytearray(index_cache_file(cache, shard_stamp(shards / "s-000003.tar")).read_bytes())
    path.write_bytes(bytes(data))
    assert snapshot(build_source(data_cfg(shards, cache))) == reference
    assert any(w in caplog.text for w in ("unreadable", "stale"))
    assert snapshot(build_source(data_cfg(shards, cache))) == reference  # and the rebuilt file is good


def test_parallel_first_open_equals_serial_and_uncached(shards, tmp_path):
    serial = snapshot(build_source(data_cfg(shards, tmp_path / "serial")))
    parallel = snapshot(build_source(data_cfg(shards, tmp_path / "parallel", workers=2)))
    uncached = snapshot(build_source(data_cfg(shards, None)))
    assert serial == parallel == uncached
    assert serial[0][:5] == [f"k0_{i:03d}" for i in range(5)] and serial[1][:5] == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(serial[2], np.repeat(np.arange(4), [5, 6, 7, 8]))
    assert sorted(p.name for p in (tmp_path / "serial").iterdir()) == \
        sorted(p.name for p in (tmp_path / "parallel").iterdir())
