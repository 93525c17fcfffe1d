"""Spherical k-means with faiss, trained on a sample and assigned in blocks (bounded memory).

Cosine geometry throughout: rows are L2-normalised, faiss `Kmeans(spherical=True)` keeps unit
centroids, and an inner-product search returns cosine similarities.
"""
from __future__ import annotations

import faiss
import numpy as np
from tqdm.auto import tqdm

from datacull.errors import DatacullError


def l2_normalize(rows: np.ndarray) -> np.ndarray:
    """float32, C-contiguous, unit-norm copy of `rows` (zero rows stay zero)."""
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.maximum(norms, 1e-12)


def use_faiss_gpu(setting: str | bool, device: str = "auto") -> bool:
    """Whether to run k-means on GPU: `auto` = when the faiss build has GPUs and device is not cpu."""
    if setting in (False, "false", "False", "no"):
        return False
    has_gpu = faiss.get_num_gpus() > 0 if hasattr(faiss, "get_num_gpus") else False
    if setting in (True, "true", "True", "yes") and not has_gpu:
        raise DatacullError("metric.ssp.gpu=true but this faiss build has no GPUs; install faiss-gpu or set gpu=auto")
    return has_gpu and str(device) != "cpu"


def train_spherical_kmeans(rows: np.ndarray, k: int, *, niter: int = 25, seed: int = 0,
                           max_points_per_centroid: int = 256, gpu: bool = False) -> np.ndarray:
    """Unit-norm centroids (k, d) of spherical k-means on a seeded sample of `rows`.

    faiss itself would subsample to k * max_points_per_centroid rows; sampling here first means
    only the sample is normalised and copied to float32, not the whole (memory-mapped) array.
    """
    n = len(rows)
    if k < 1:
        raise DatacullError(f"k-means needs k >= 1, got k={k}")
    if k > n:
        raise DatacullError(f"k-means with k={k} needs at least k examples, but there are only {n}; lower metric.ssp.k")
    budget = k * max_points_per_centroid
    sample = np.sort(np.random.default_rng(seed).choice(n, size=budget, replace=False)) if n > budget else slice(None)
    train = l2_normalize(np.asarray(rows[sample]))
    kmeans = faiss.Kmeans(train.shape[1], k, niter=niter, seed=seed, spherical=True, gpu=gpu,
                          max_points_per_centroid=max_points_per_centroid, verbose=False)
    kmeans.train(train)
    return l2_normalize(kmeans.centroids)


def nearest_centroid(rows: np.ndarray, centroids: np.ndarray, *, block_size: int = 65536,
                     gpu: bool = False, desc: str = "assign") -> tuple[np.ndarray, np.ndarray]:
    """(cluster id int64, cosine similarity float32) of each row's nearest centroid, blockwise."""
    index = faiss.IndexFlatIP(centroids.shape[1])
    if gpu:
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    n = len(rows)
    assign = np.empty(n, dtype=np.int64)
    similarity = np.empty(n, dtype=np.float32)
    starts = range(0, n, block_size)
    for start in tqdm(starts, desc=desc, unit="block", leave=False, disable=len(starts) < 4):
        block = l2_normalize(np.asarray(rows[start: start + block_size]))
        sims, ids = index.search(block, 1)
        assign[start: start + len(block)] = ids[:, 0]
        similarity[start: start + len(block)] = sims[:, 0]
    return assign, similarity
