"""GPU-path selection and the blockwise assignment that both CPU and GPU faiss share (CPU-tested)."""
import faiss
import numpy as np
import pytest

from datacull import kmeans
from datacull.errors import DatacullError


def _reference(rows, centroids):
    """Independent computation: float64 cosine similarity, argmax over centroids."""
    x = rows.astype(np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = np.where(norms > 0, x / np.where(norms > 0, norms, 1), 0.0)
    c = centroids.astype(np.float64)
    c = c / np.linalg.norm(c, axis=1, keepdims=True)
    sims = x @ c.T
    return sims.argmax(1), sims.max(1)


@pytest.mark.parametrize("block_size", [1, 7, 64, 1000])
def test_nearest_centroid_float16_memmap_blocks(tmp_path, block_size):
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(203, 16)).astype(np.float16)
    rows[5] = 0  # a zero row stays zero: similarity 0
    path = tmp_path / "emb.npy"
    np.save(path, rows)
    mapped = np.load(path, mmap_mode="r")
    centroids = rng.normal(size=(9, 16)).astype(np.float32)
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    ids, sims = kmeans.nearest_centroid(mapped, centroids, block_size=block_size)
    ref_ids, ref_sims = _reference(rows, centroids)
    nonzero = np.arange(len(rows)) != 5
    np.testing.assert_allclose(sims, ref_sims, atol=1e-5)
    assert sims[5] == 0
    assert (ids[nonzero] == ref_ids[nonzero]).mean() == 1.0
    assert np.load(path)[0].tolist() == rows[0].tolist()  # input untouched (normalised in a copy)


def test_nearest_centroid_rejects_bad_block_size():
    with pytest.raises(DatacullError, match="block_size"):
        kmeans.nearest_centroid(np.ones((3, 2), np.float32), np.eye(2, dtype=np.float32), block_size=0)


def test_use_faiss_gpu_follows_faiss_gpu_count(monkeypatch):
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 0)
    assert kmeans.use_faiss_gpu("auto") is False
    with pytest.raises(DatacullError, match="faiss-gpu"):
        kmeans.use_faiss_gpu(True)
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 2)
    assert kmeans.use_faiss_gpu("auto", "cuda") is True
    assert kmeans.use_faiss_gpu("auto", "cpu") is False
    assert kmeans.use_faiss_gpu(False, "cuda") is False


def test_nearest_centroid_gpu_path_moves_index_to_gpus(monkeypatch):
    moved = []

    def fake_to_gpus(index):  # stands in for faiss.index_cpu_to_all_gpus: same search semantics
        moved.append(type(index).__name__)
        return index

    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", fake_to_gpus)
    rng = np.random.default_rng(1)
    rows = rng.normal(size=(50, 8)).astype(np.float32)
    centroids = np.eye(8, dtype=np.float32)
    ids, sims = kmeans.nearest_centroid(rows, centroids, gpu=True, block_size=16)
    assert moved == ["IndexFlatIP"]
    ref_ids, ref_sims = _reference(rows, centroids)
    assert (ids == ref_ids).all()
    np.testing.assert_allclose(sims, ref_sims, atol=1e-5)


def test_gpu_smoke_script_parses_and_dry_runs():
    import subprocess
    from pathlib import Path
    script = Path(__file__).resolve().parents[1] / "scripts" / "gpu_smoke.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    dry = subprocess.run(["bash", str(script), "--dry-run"], capture_output=True, text=True, cwd=script.parents[1])
    assert dry.returncode == 0, dry.stderr
    steps = dry.stdout.splitlines()
    assert len(steps) == 4 and all(line.startswith("[dry-run] ") for line in steps), dry.stdout
    assert "DDP train under torchrun" in steps[-1]
    bad = subprocess.run(["bash", str(script), "--bogus"], capture_output=True, text=True, cwd=script.parents[1])
    assert bad.returncode == 2 and "unknown argument '--bogus'" in bad.stderr
