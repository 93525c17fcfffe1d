"""CIFAR-10/100, SVHN, ImageFolder (imagenet) and webdataset sources on tiny fixtures in their real on-disk formats."""
from __future__ import annotations

import io
import os
import pickle
import struct
import tarfile

import numpy as np
import pytest
import scipy.io
import webdataset as wds
from PIL import Image

from datacull.config import compose
from datacull.data.base import UNKNOWN_LABEL, CorruptExample, build_source
from datacull.data.loader import ExampleDataset
from datacull.errors import DatacullError


def data_cfg(*overrides: str):
    return compose(list(overrides)).data


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(buffer, format="PNG")
    return buffer.getvalue()


def random_image(rng, h=6, w=5, c=3) -> np.ndarray:
    return rng.integers(0, 256, (h, w, c), dtype=np.uint8)


# ------------------------------------------------------------------------------------------ CIFAR

class Python2Pickler(pickle._Pickler):
    """Writes pickles as CIFAR's Python 2 cPickle did: bytes as py2 `str` opcodes, numpy.core module paths."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj: bytes) -> None:
        n = len(obj)
        header = pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)
        self.write(header + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str

    def save_global(self, obj, name=None):
        if getattr(obj, "__name__", None) == "_reconstruct":
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)


def py2_dump(obj, path) -> None:
    with open(path, "wb") as handle:
        Python2Pickler(handle, protocol=2).dump(obj)


def write_cifar10(root, rng, per_batch=2, test=3):
    """A cifar-10-batches-py with 5 train batches + test batch pickled as the real (Python 2) files."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = {}
    for name, n in [*[(f"data_batch_{i}", per_batch) for i in range(1, 6)], ("test_batch", test)]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n)]
        py2_dump({b"batch_label": name.encode(), b"labels": labels, b"data": data,
                  b"filenames": [f"img{i}.png".encode() for i in range(n)]}, folder / name)
        batches[name] = (data, labels)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    py2_dump({b"num_cases_per_batch": 10000, b"label_names": names, b"num_vis": 3072}, folder / "batches.meta")
    return batches


def test_cifar10_reads_python2_pickles_in_torchvision_layout(tmp_path, rng):
    batches = write_cifar10(tmp_path, rng)
    train = build_source(data_cfg("data=cifar10", f"data.root={tmp_path}"))
    test = build_source(data_cfg("data=cifar10", f"data.root={tmp_path}"), "test")
    assert (len(train), len(test)) == (10, 3)
    assert train.keys[:3] == ["cifar10/train/000000", "cifar10/train/000001", "cifar10/train/000002"]
    assert test.keys[-1] == "cifar10/test/000002" and train.image_shape == (32, 32, 3)
    assert train.num_classes == 10 and train.class_names[0] == "airplane" and train.class_names[9] == "truck"
    order = [f"data_batch_{i}" for i in range(1, 6)]
    assert train.labels.tolist() == sum((batches[n][1] for n in order), [])
    # example 3 is the second image of data_batch_2; CIFAR rows are 1024 R, then G, then B values
    row = batches["data_batch_2"][0][1]
    expected = np.stack([row[:1024].reshape(32, 32), row[1024:2048].reshape(32, 32), row[2048:].reshape(32, 32)], -1)
    np.testing.assert_array_equal(train.load(3), expected)
    assert train.raw(3) is None
    # the root may also be the cifar-10-batches-py folder itself
    assert len(build_source(data_cfg("data=cifar10", f"data.root={tmp_path / 'cifar-10-batches-py'}"))) == 10


def test_cifar100_reads_python3_pickles_with_fine_labels(tmp_path, rng):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    data = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
    for protocol, name in [(4, "train"), (5, "test")]:  # bytes keys, as pickle.load(encoding="bytes") shows them
        with open(folder / name, "wb") as handle:
            pickle.dump({b"data": data, b"fine_labels": [99, 0, 5, 7], b"coarse_labels": [1, 2, 3, 4]}, handle,
                        protocol=protocol)
    with open(folder / "meta", "wb") as handle:
        pickle.dump({b"fine_label_names": [f"c{i}".encode() for i in range(100)], b"coarse_label_names": []}, handle)
    for split in ("train", "test"):
        source = build_source(data_cfg("data=cifar100", f"data.root={tmp_path}"), split)
        assert source.labels.tolist() == [99, 0, 5, 7] and source.num_classes == 100
        assert source.class_names[99] == "c99" and source.keys[1] == f"cifar100/{split}/000001"
        np.testing.assert_array_equal(source.load(2).transpose(2, 0, 1).reshape(-1), data[2])


class Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_cifar_pickle_with_a_disallowed_global_is_refused_and_not_run(tmp_path, rng):
    write_cifar10(tmp_path, rng)
    marker = tmp_path / "pwned"
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_3", "wb") as handle:
        pickle.dump({b"data": Exploit(marker), b"labels": []}, handle, protocol=2)
    with pytest.raises(DatacullError, match=r"data_batch_3 refers to (posix|os)\.system.*refusing to unpickle"):
        build_source(data_cfg("data=cifar10", f"data.root={tmp_path}"))
    assert not marker.exists()
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"\x80\x02}q\x00(")  # truncated
    with pytest.raises(DatacullError, match=r"cannot read .*test_batch"):
        build_source(data_cfg("data=cifar10", f"data.root={tmp_path}"), "test")


def test_cifar_missing_names_places_and_download(tmp_path):
    with pytest.raises(DatacullError,
                       match=r"CIFAR-10 train files .*looked in .*cifar-10-batches-py.*data\.download=true"):
        build_source(data_cfg("data=cifar10", f"data.root={tmp_path}"))
    with pytest.raises(DatacullError, match=r"CIFAR-100 test .*looked in .*cifar-100-python"):
        build_source(data_cfg("data=cifar100", f"data.root={tmp_path}"), "test")


def test_download_true_fetches_with_torchvision_only_when_asked(tmp_path, rng, monkeypatch):
    import torchvision.datasets.utils as tv_utils

    calls = []

    def fake_download_and_extract_archive(url, download_root, filename=None, md5=None):
        calls.append((url, filename, md5))
        write_cifar10(tmp_path, rng)

    def fake_download_url(url, root, filename=None, md5=None):
        calls.append((url, filename, md5))
        scipy.io.savemat(tmp_path / filename, {"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.ones((2, 1))})

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", fake_download_and_extract_archive)
    monkeypatch.setattr(tv_utils, "download_url", fake_download_url)
    with pytest.raises(DatacullError, match="not found"):
        build_source(data_cfg("data=cifar10", f"data.root={tmp_path}"))
    assert calls == []
    assert len(build_source(data_cfg("data=cifar10", f"data.root={tmp_path}", "data.download=true"))) == 10
    assert len(build_source(data_cfg("data=svhn", f"data.root={tmp_path}", "data.download=true"), "extra")) == 2
    assert [c[1] for c in calls] == ["cifar-10-python.tar.gz", "extra_32x32.mat"] and all(c[2] for c in calls)


# ------------------------------------------------------------------------------------------- SVHN

def test_svhn_mat_files_map_label_10_to_0(tmp_path, rng):
    x = rng.integers(0, 256, (32, 32, 3, 5), dtype=np.uint8)
    y = np.array([[10], [1], [9], [10], [3]], dtype=np.uint8)
    scipy.io.savemat(tmp_path / "test_32x32.mat", {"X": x, "y": y})
    source = build_source(data_cfg("data=svhn", f"data.root={tmp_path}"), "test")
    assert len(source) == 5 and source.labels.tolist() == [0, 1, 9, 0, 3] and source.num_classes == 10
    assert source.keys[4] == "svhn/test/000004" and source.image_shape == (32, 32, 3)
    for i in range(5):
        np.testing.assert_array_equal(source.load(i), x[:, :, :, i])
    with pytest.raises(DatacullError, match=r"SVHN train file not found .*train_32x32\.mat.*data\.download=true"):
        build_source(data_cfg("data=svhn", f"data.root={tmp_path}"))
    (tmp_path / "svhn").mkdir()
    (tmp_path / "svhn" / "train_32x32.mat").write_bytes(b"not a mat file at all")
    with pytest.raises(DatacullError, match="cannot read .*train_32x32.mat"):
        build_source(data_cfg("data=svhn", f"data.root={tmp_path}"))


# --------------------------------------------------------------------------------------- ImageNet

@pytest.fixture
def image_folder(tmp_path, rng):
    """root/train/{n01,n02}/... with PNGs (one with dots in its name), a JPEG, a corrupt JPEG; root/val/n02/."""
    root = tmp_path / "imagenet"
    files = {}
    layout = {"train/n01/a.png": random_image(rng), "train/n01/b.v2.png": random_image(rng, 7, 4),
              "train/n02/c.png": random_image(rng, 3, 3), "val/n02/d.png": random_image(rng)}
    for rel, image in layout.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(png_bytes(image))
        files[rel] = image
    jpeg = io.BytesIO()
    Image.fromarray(random_image(rng, 8, 8)).save(jpeg, format="JPEG")
    (root / "train/n02/e.JPEG").write_bytes(jpeg.getvalue())
    (root / "train/n02/bad.JPEG").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    (root / "train/n02/notes.txt").write_text("not an image")
    (root / "LOC_synset_mapping.txt").write_text("n01 tench, Tinca tinca\nn02 goldfish, Carassius auratus\n")
    return root, files


def test_imagenet_image_folder_keys_labels_pixels_and_raw_bytes(image_folder):
    root, files = image_folder
    source = build_source(data_cfg("data=imagenet", f"data.root={root}"))
    assert source.keys == ["imagenet/train/n01/a", "imagenet/train/n01/b_v2", "imagenet/train/n02/bad",
                           "imagenet/train/n02/c", "imagenet/train/n02/e"]
    assert source.labels.tolist() == [0, 0, 1, 1, 1] and source.num_classes == 2
    assert source.class_names == ["tench", "goldfish"] and source.image_shape is None
    np.testing.assert_array_equal(source.load(1), files["train/n01/b.v2.png"])
    assert source.raw(1) == ((root / "train/n01/b.v2.png").read_bytes(), "png")
    assert source.raw(4) == ((root / "train/n02/e.JPEG").read_bytes(), "jpeg")
    assert source.load(4).shape == (8, 8, 3)
    with pytest.raises(CorruptExample, match=r"bad\.JPEG"):
        source.load(2)
    val = build_source(data_cfg("data=imagenet", f"data.root={root}"), "val")
    assert val.keys == ["imagenet/val/n02/d"] and val.labels.tolist() == [1] and val.num_classes == 2


def test_imagenet_image_size_resizes_and_corrupt_is_skipped_with_reason(image_folder):
    root, _ = image_folder
    source = build_source(data_cfg("data=imagenet", f"data.root={root}", "data.image_size=[4,6]"))
    assert source.image_shape == (4, 6, 3)
    assert {source.load(i).shape for i in (0, 1, 3, 4)} == {(4, 6, 3)}
    _, _, _, error = ExampleDataset(source, on_error="skip")[2]
    assert "corrupt image" in error and "bad.JPEG" in error
    with pytest.raises(DatacullError, match="imagenet/train/n02/bad"):
        ExampleDataset(source, on_error="fail")[2]


def test_imagenet_colliding_keys_and_missing_folder(image_folder, tmp_path):
    root, _ = image_folder
    (root / "train/n01/b_v2.png").write_bytes((root / "train/n01/a.png").read_bytes())
    with pytest.raises(DatacullError, match=r"b\.v2\.png and .*b_v2\.png both map to key 'imagenet/train/n01/b_v2'"):
        build_source(data_cfg("data=imagenet", f"data.root={root}"))
    with pytest.raises(DatacullError,
                       match=r"looked in .*nowhere/train.*cannot be downloaded automatically.*ImageFolder"):
        build_source(data_cfg("data=imagenet", f"data.root={tmp_path / 'nowhere'}"))


# ------------------------------------------------------------------------------------- webdataset

def write_shards(folder, rng):
    """Two shards written with webdataset's TarWriter: 6x5 RGB PNGs, a corrupt JPEG, an unlabelled sample, a .pyd."""
    folder.mkdir(parents=True, exist_ok=True)
    expected = {}
    with wds.TarWriter(str(folder / "shard-000000.tar")) as sink:
        for i in range(3):
            image = random_image(rng)
            data = png_bytes(image)
            sink.write({"__key__": f"s{i:03d}", "png": data, "cls": str(i).encode(), "json": b"{}"})
            expected[f"s{i:03d}"] = (image, data, "png", i)
        sink.write({"__key__": "bad", "jpg": b"\xff\xd8 not a jpeg", "cls": b"1"})
        expected["bad"] = (None, b"\xff\xd8 not a jpeg", "jpg", 1)
    marker = folder / "pwned"
    with wds.TarWriter(str(folder / "shard-000001.tar")) as sink:
        image = random_image(rng)
        sink.write({"__key__": "sub/t000", "png": png_bytes(image), "cls": b"4",
                    "pyd": pickle.dumps(Exploit(marker))})
        expected["sub/t000"] = (image, png_bytes(image), "png", 4)
        image = random_image(rng)
        sink.write({"__key__": "t001", "png": png_bytes(image)})
        expected["t001"] = (image, png_bytes(image), "png", UNKNOWN_LABEL)
    return expected, marker


def test_wds_indexes_shards_from_a_brace_pattern_via_compose(tmp_path, rng):
    expected, marker = write_shards(tmp_path / "shards", rng)
    cfg = compose(["data=wds", f"data.urls='{tmp_path}/shards/shard-{{000000..000001}}.tar'"])
    source = build_source(cfg.data)
    assert source.keys == ["s000", "s001", "s002", "bad", "sub/t000", "t001"]
    assert source.labels.tolist() == [0, 1, 2, 1, 4, UNKNOWN_LABEL]
    assert source.num_classes == 5 and source.image_shape == (6, 5, 3)
    for index, key in enumerate(source.keys):
        image, data, ext, _ = expected[key]
        assert source.raw(index) == (data, ext)
        if image is not None:
            np.testing.assert_array_equal(source.load(index), image)
    with pytest.raises(CorruptExample, match=r"shard-000000\.tar member bad\.jpg"):
        source.load(3)
    # webdataset's own reader sees the same keys and image bytes
    shards = [str(tmp_path / "shards" / f"shard-00000{i}.tar") for i in range(2)]
    reference = [(s["__key__"], s.get("png", s.get("jpg"))) for s in wds.WebDataset(shards, shardshuffle=False)]
    assert reference == [(key, source.raw(i)[0]) for i, key in enumerate(source.keys)]
    assert not marker.exists()  # the .pyd member was never unpickled
    # relative urls resolve against data.root; data.num_classes and data.limit apply
    limited = build_source(data_cfg("data=wds", f"data.root={tmp_path}", "data.urls=shards/shard-000000.tar",
                                    "data.num_classes=10", "data.limit=2"))
    assert len(limited) == 2 and limited.num_classes == 10


def test_wds_sizes_and_channels_inferred_or_configured(tmp_path, rng):
    folder = tmp_path / "mixed"
    folder.mkdir()
    gray, big = random_image(rng, 4, 4, 1), random_image(rng, 9, 7, 1)
    with wds.TarWriter(str(folder / "a.tar")) as sink:
        sink.write({"__key__": "g0", "png": png_bytes(gray), "cls": b"0"})
        sink.write({"__key__": "g1", "png": png_bytes(big), "cls": b"1"})
    source = build_source(data_cfg("data=wds", f"data.urls={folder}/a.tar"))
    assert source.image_shape is None and source.channels == 1
    np.testing.assert_array_equal(source.load(1), big)
    sized = build_source(data_cfg("data=wds", f"data.urls={folder}/a.tar", "data.image_size=5", "data.channels=3"))
    assert sized.image_shape == (5, 5, 3) and sized.load(1).shape == (5, 5, 3)


def unsafe_shard(path, member_name):
    with tarfile.open(path, "w") as tar:
        for name, data in [("ok.png", png_bytes(np.zeros((2, 2, 3), np.uint8))), (member_name, b"1")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("member", ["../evil.cls", "/abs.jpg", "a/../../b.png"])
def test_wds_rejects_unsafe_member_names(tmp_path, member):
    unsafe_shard(tmp_path / "evil.tar", member)
    with pytest.raises(DatacullError, match=rf"shard .*evil\.tar has an unsafe member '{member}'"):
        build_source(data_cfg("data=wds", f"data.urls={tmp_path}/evil.tar"))


def test_wds_duplicate_keys_missing_shards_test_split_and_bad_labels(tmp_path, rng):
    write_shards(tmp_path / "one", rng)
    urls = f"data.urls=[{tmp_path}/one/shard-000000.tar,{tmp_path}/one/shard-000000.tar]"
    with pytest.raises(DatacullError, match=r"4 duplicate keys .*'s000'"):
        build_source(data_cfg("data=wds", urls))
    with pytest.raises(DatacullError, match=r"2 of 2 shards of data\.urls=.* not found .*missing-000000\.tar"):
        build_source(data_cfg("data=wds", f"data.urls='{tmp_path}/missing-{{000000..000001}}.tar'"))
    with pytest.raises(DatacullError, match=r"data\.test_urls is not set"):
        build_source(data_cfg("data=wds", f"data.urls={tmp_path}/one/shard-000000.tar"), "test")
    test = build_source(data_cfg("data=wds", "data.urls=x", f"data.test_urls={tmp_path}/one/shard-000001.tar"), "test")
    assert test.keys == ["sub/t000", "t001"] and test.split == "test"
    with wds.TarWriter(str(tmp_path / "badcls.tar")) as sink:
        sink.write({"__key__": "x", "png": png_bytes(np.zeros((2, 2, 3), np.uint8)), "cls": b"cat"})
    with pytest.raises(DatacullError, match=r"badcls\.tar member x\.cls holds b'cat', not an integer"):
        build_source(data_cfg("data=wds", f"data.urls={tmp_path}/badcls.tar"))
    with pytest.raises(DatacullError, match=r"label 4, but data\.num_classes=3"):
        build_source(data_cfg("data=wds", f"data.urls={tmp_path}/one/shard-000001.tar", "data.num_classes=3"))
    with pytest.raises(DatacullError, match="local tar shards only"):
        build_source(data_cfg("data=wds", "data.urls='https://example.com/shard-{000000..000001}.tar'"))


def test_wds_keeps_samples_without_an_image_as_missing_images(tmp_path, caplog):
    from datacull.data.base import MissingImage, skip_reason

    with wds.TarWriter(str(tmp_path / "a.tar")) as sink:
        sink.write({"__key__": "img", "png": png_bytes(np.zeros((2, 2, 3), np.uint8)), "cls": b"0"})
        sink.write({"__key__": "meta", "txt": b"caption only"})
    source = build_source(data_cfg("data=wds", f"data.urls={tmp_path}/a.tar", "data.index_cache=null"))
    assert source.keys == ["img", "meta"]  # accounted for, never silently dropped
    assert "1 samples have no readable image member" in caplog.text
    with pytest.raises(MissingImage) as caught:
        source.load(1)
    assert skip_reason(caught.value).startswith("no image member: shard ")
