"""Real data: Fashion-MNIST from the Debian package (apt-get install dataset-fashion-mnist)."""
import gzip
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from datacull.config import compose
from datacull.data.base import build_source
from datacull.data.fashion_mnist import DEBIAN_DIR
from datacull.data.idx import read_idx
from datacull.errors import DatacullError

needs_debian = pytest.mark.skipif(not (DEBIAN_DIR / "train-images-idx3-ubyte.gz").exists(),
                                  reason="apt-get install dataset-fashion-mnist")


@needs_debian
def test_debian_fashion_mnist_loads_both_splits(tmp_path):
    train = build_source(compose([f"data.root={tmp_path}"]).data)
    test = build_source(compose([f"data.root={tmp_path}"]).data, "test")
    assert (len(train), len(test)) == (60000, 10000)
    assert train.image_shape == (28, 28, 1) and train.keys[123] == "fashion_mnist/train/000123"
    assert np.bincount(train.labels).tolist() == [6000] * 10
    assert train.class_names[9] == "Ankle boot"


def test_idx_reader_matches_an_independent_parse(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 3, 4), dtype=np.uint8)
    header = bytes([0, 0, 8, 3]) + b"".join(int(d).to_bytes(4, "big") for d in images.shape)
    path = tmp_path / "x-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(header + images.tobytes()))
    np.testing.assert_array_equal(read_idx(path), images)
    (tmp_path / "bad").write_bytes(header + images.tobytes()[:-1])
    with pytest.raises(DatacullError, match="truncated"):
        read_idx(tmp_path / "bad")


def test_missing_data_names_where_it_looked(tmp_path, monkeypatch):
    from datacull.data import fashion_mnist

    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "nowhere")
    with pytest.raises(DatacullError, match=r"looked in .*empty.*nowhere.*apt-get install dataset-fashion-mnist"):
        build_source(compose([f"data.root={tmp_path / 'empty'}"]).data)


@needs_debian
def test_run_curates_real_fashion_mnist_subset_end_to_end(tmp_path):
    """The main job on 3,000 real images via the CLI: scores, selection, shards, figures."""
    out = subprocess.run(
        [sys.executable, "-m", "datacull.cli", "run", "encoder=pixels", "data.limit=3000",
         f"paths.work_dir={tmp_path / 'w'}", "metrics=[ssp,supervised_prototypes]", "select.class_balanced=true",
         "select.fraction=0.4"],
        capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    base = tmp_path / "w" / "fashion_mnist-train" / "default"
    [selection_file] = list((base / "selections").glob("*/selection.parquet"))
    selection = pd.read_parquet(selection_file)
    assert selection["kept"].sum() == 1200
    per_class = selection.groupby("label")["kept"].mean()
    assert (per_class - 0.4).abs().max() < 0.01  # class-balanced
    assert (selection_file.parent / "report" / "selection.png").stat().st_size > 10_000
    assert (selection_file.parent / "shards" / "manifest.json").exists()
    assert "kept 1200" in out.stdout
