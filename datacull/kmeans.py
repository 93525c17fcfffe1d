"""Spherical k-means with faiss, trained on a sample and assigned in blocks (bounded memory).

Cosine geometry throughout: rows are L2-normalised, faiss `Kmeans(spherical=True)` keeps unit
centroids, and an inner-product search returns cosine similarities.

Initialisation. faiss starts Lloyd's iterations from k rows drawn uniformly at random; on a
training sample of k * max_points_per_centroid rows one unlucky draw (two seeds in one true
cluster, none in another) decides the prototypes (measured in README, Benchmarks). The default here
is greedy k-means++ seeding on the training sample (Arthur & Vassilvitskii 2007, "k-means++: the
advantages of careful seeding"; the greedy variant its conclusion mentions: each seed is the best
of several D^2-sampled candidates), handed to faiss as `init_centroids`. scikit-learn uses 2 + ln k
candidates (4 for k = 10); that still misses a true cluster in a third to a half of seedings on
noisy or unequal clusters (README, Benchmarks), so datacull's default is 20. Seeding runs on the
CPU on at most max(init_sample, 16 k) rows of the sample (`init_rows`): all of it for k <= 64,
about 5% of the Lloyd iterations' arithmetic at large k (the whole sample would cost 20 / niter). `nredo` restarts keep the fit
with the lowest objective on the sample. `init="random", nredo=1` is faiss's own behaviour.
"""
from __future__ import annotations

import warnings

import faiss
import numpy as np
from tqdm.auto import tqdm

from datacull.errors import DatacullError

INIT_METHODS = ("kmeans++", "random")


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


def kmeans_plusplus_unit(unit: np.ndarray, k: int, seed: int = 0, n_local_trials: int | None = None) -> np.ndarray:
    """Greedy k-means++ seeds (k, d) chosen among the unit-norm rows `unit` (Arthur & Vassilvitskii 2007).

    The first seed is uniform; each next one is the best (lowest total potential) of
    `n_local_trials` (default 2 + ln k) candidates drawn with probability proportional to D(x)^2,
    the squared Euclidean distance to the nearest seed so far. For unit rows D^2 = 2 - 2 cos, so
    this is k-means++ in the cosine geometry of spherical k-means.
    """
    n, d = unit.shape
    if not 1 <= k <= n:
        raise DatacullError(f"k-means++ needs 1 <= k <= number of rows, got k={k} for {n} rows")
    rng = np.random.default_rng(seed)
    trials = int(n_local_trials) if n_local_trials else 2 + int(np.log(k))
    seeds = np.empty((k, d), dtype=np.float32)
    first = int(rng.integers(n))
    seeds[0] = unit[first]
    closest = np.maximum(2.0 - 2.0 * (unit @ unit[first]), 0.0)  # D^2 to the nearest seed
    potential = float(closest.sum())
    for c in range(1, k):
        if potential <= 0:  # every row coincides with a seed: any remaining row will do
            candidates = rng.integers(n, size=1)
        else:
            cumulative = np.cumsum(closest, dtype=np.float64)
            candidates = np.searchsorted(cumulative, rng.random(trials) * cumulative[-1], side="right")
            candidates = np.minimum(candidates, n - 1)
        dist = np.maximum(2.0 - 2.0 * (unit[candidates] @ unit.T), 0.0)  # (trials, n)
        np.minimum(dist, closest[None, :], out=dist)
        totals = dist.sum(axis=1, dtype=np.float64)
        best = int(np.argmin(totals))
        seeds[c] = unit[candidates[best]]
        closest, potential = dist[best], float(totals[best])
    return seeds


INIT_POINTS_PER_CENTROID = 16
INIT_SAMPLE = 16384


def init_rows(n_train: int, k: int, init_sample: int | None) -> int:
    """How many training-sample rows k-means++ seeds from: all, or max(init_sample, 16 k) if fewer.

    Greedy k-means++ reads every candidate row for each of the k seeds and each of its local
    trials, k * trials * rows * d operations: on the full k * 256-row sample that is
    trials / niter (20 / 25) of Lloyd's whole cost, and it grows as k^2. Seeding from a seeded
    subsample of max(init_sample, 16 k) rows bounds it to about 16 * trials / (256 * niter) = 5%
    of Lloyd's cost at large k, while small k (where a missed cluster hurts most) still seeds
    from the whole sample (k <= 64 with the defaults). `None` seeds from the whole sample.
    """
    if init_sample is None:
        return n_train
    return min(n_train, max(int(init_sample), INIT_POINTS_PER_CENTROID * k))


def _seed_centroids(train: np.ndarray, k: int, seed: int, local_trials: int | None,
                    init_sample: int | None = None) -> np.ndarray:
    """k-means++ seeds on (a seeded subsample of) the training sample; one BLAS thread when it is small.

    Each k-means++ step is a skinny (trials x d) @ (d x n) product: on a small sample, BLAS
    threads cost more in start-up and in contention with faiss's OpenMP threads (measured: a
    10x slowdown on 2 cores right after a faiss call) than they save.
    """
    m = init_rows(len(train), k, init_sample)
    if m < len(train):
        train = train[np.sort(np.random.default_rng(seed).choice(len(train), size=m, replace=False))]
    if train.size > 1 << 22:
        return kmeans_plusplus_unit(train, k, seed=seed, n_local_trials=local_trials)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        return kmeans_plusplus_unit(train, k, seed=seed, n_local_trials=local_trials)


def train_spherical_kmeans(rows: np.ndarray, k: int, *, niter: int = 25, seed: int = 0,
                           max_points_per_centroid: int = 256, gpu: bool = False,
                           init: str = "kmeans++", nredo: int = 1, local_trials: int | None = 20,
                           init_sample: int | None = INIT_SAMPLE) -> np.ndarray:
    """Unit-norm centroids (k, d) of spherical k-means on a seeded sample of `rows`.

    The sample is k * max_points_per_centroid rows (all rows if fewer); only the sample is
    normalised and copied to float32 (`unit_rows`, block by block), not the whole (memory-mapped) array. `init` is
    `kmeans++` (greedy k-means++ seeds on the sample, see `kmeans_plusplus_unit`) or `random`
    (faiss's own uniform draw of k sample rows); `local_trials` is the number of k-means++
    candidates per seed (None: 2 + ln k, scikit-learn's choice), drawn from at most
    max(init_sample, 16 k) sample rows (`init_rows`; None: the whole sample). Restart r of `nredo` uses
    seed + r, and the restart with the lowest mean cosine distance of the sample to its nearest
    centroid is kept.
    """
    n = len(rows)
    if k < 1:
        raise DatacullError(f"k-means needs k >= 1, got k={k}")
    if k > n:
        raise DatacullError(f"k-means with k={k} needs at least k examples, but there are only {n}; "
                            "lower metric.ssp.k")
    if init not in INIT_METHODS:
        raise DatacullError(f"unknown k-means init {init!r}; use one of {', '.join(INIT_METHODS)} (metric.ssp.init)")
    if nredo < 1 or niter < 1 or max_points_per_centroid < 1:
        raise DatacullError(f"k-means needs nredo, niter and max_points_per_centroid >= 1, got nredo={nredo}, "
                            f"niter={niter}, max_points_per_centroid={max_points_per_centroid}")
    if init_sample is not None and init_sample < 1:
        raise DatacullError(f"k-means++ needs init_sample >= 1 rows (or null for the whole sample), got {init_sample}")
    if local_trials is not None and local_trials < 1:
        raise DatacullError(f"k-means++ needs local_trials >= 1 (or null for 2 + ln k), got {local_trials}")
    budget = k * max_points_per_centroid
    sample = np.sort(np.random.default_rng(seed).choice(n, size=budget, replace=False)) if n > budget else None
    train = unit_rows(rows, sample)
    best_centroids, best_objective = None, np.inf
    for restart in range(nredo):
        kmeans = faiss.Kmeans(train.shape[1], k, niter=niter, seed=seed + restart, spherical=True, gpu=gpu,
                              max_points_per_centroid=max_points_per_centroid, verbose=False)
        start = (_seed_centroids(train, k, seed + restart, local_trials, init_sample)
                 if init == "kmeans++" else None)
        kmeans.train(train, init_centroids=start)
        centroids = l2_normalize(kmeans.centroids)
        if nredo == 1:
            return centroids
        _, similarity = nearest_centroid(train, centroids, gpu=gpu, desc="k-means restart")
        objective = float(1.0 - similarity.mean(dtype=np.float64))
        if objective < best_objective:
            best_centroids, best_objective = centroids, objective
    return best_centroids


def unit_rows(rows: np.ndarray, positions: np.ndarray | None = None, block_size: int = 65536) -> np.ndarray:
    """Unit-norm float32 copy of `rows[positions]` (all rows if None), gathered block by block.

    The only full-size allocation is the float32 result: the rows (possibly a float16 memory map) are
    read and cast one block at a time and normalised in place (zero rows stay zero), so the k-means
    sample costs its own size in memory, not also a copy in the input dtype and a normalised copy.
    """
    count = len(rows) if positions is None else len(positions)
    out = np.empty((count, rows.shape[1]), dtype=np.float32)
    for start in range(0, count, block_size):
        stop = min(start + block_size, count)
        cast_into(out[start:stop], rows[start:stop] if positions is None else rows[positions[start:stop]])
    faiss.normalize_L2(out)
    return out


def cast_into(out: np.ndarray, rows: np.ndarray) -> None:
    """Copy `rows` into the float32 array `out`, converting the dtype with torch's vectorised kernels.

    numpy converts float16 to float32 one element at a time (measured: 8x slower than torch's
    copy on 65,536 x 384 rows, and as slow as the faiss search it feeds at k = 250); dtypes torch
    cannot view fall back to numpy.
    """
    import torch
    try:
        with warnings.catch_warnings():  # a read-only memory map: torch only reads from it here
            warnings.simplefilter("ignore", UserWarning)
            source = torch.from_numpy(np.asarray(rows))
    except TypeError:
        out[...] = rows
        return
    torch.from_numpy(out).copy_(source)


def nearest_centroid(rows: np.ndarray, centroids: np.ndarray, *, block_size: int = 131072,
                     gpu: bool = False, desc: str = "assign") -> tuple[np.ndarray, np.ndarray]:
    """(cluster id int64, cosine similarity float32) of each row's nearest centroid, blockwise.

    Each block of `rows` (any float dtype, possibly memory-mapped) is cast into one reused float32
    buffer (`cast_into`) and L2-normalised in place with `faiss.normalize_L2` (zero rows stay zero),
    so the per-block cost beyond faiss `search` is one cast-copy: no temporary arrays per block. Memory
    beyond the map: one block_size x d float32 buffer. `gpu=True` searches on all faiss GPUs.
    """
    if block_size < 1:
        raise DatacullError(f"block_size must be >= 1, got {block_size}")
    index = faiss.IndexFlatIP(centroids.shape[1])
    if gpu:
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    n = len(rows)
    assign = np.empty(n, dtype=np.int64)
    similarity = np.empty(n, dtype=np.float32)
    buffer = np.empty((min(block_size, max(n, 1)), centroids.shape[1]), dtype=np.float32)
    starts = range(0, n, block_size)
    for start in tqdm(starts, desc=desc, unit="block", leave=False, disable=len(starts) < 4):
        stop = min(start + block_size, n)
        block = buffer[: stop - start]
        cast_into(block, rows[start:stop])
        faiss.normalize_L2(block)
        sims, ids = index.search(block, 1)
        assign[start:stop] = ids[:, 0]
        similarity[start:stop] = sims[:, 0]
    return assign, similarity
