"""SSP / supervised prototypes against independent numpy computations and planted cases."""
import faiss
import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from datacull import layout
from datacull.data.base import ArraySource
from datacull.errors import DatacullError
from datacull.kmeans import (INIT_SAMPLE, cast_into, init_rows, kmeans_plusplus_unit, l2_normalize, nearest_centroid,
                             train_spherical_kmeans)
from datacull.metrics.context import ScoreContext
from datacull.metrics.prototypes import resolve_ssp_k, ssp, ssp_identity, supervised_prototypes


def _blobs(rng, n_per=100, d=16, k=4):
    centers = rng.normal(size=(k, d)) * 5
    labels = np.repeat(np.arange(k), n_per)
    return centers[labels] + rng.normal(size=(len(labels), d)), labels


def _ctx(rows, labels, k=4, num_classes=None, **ssp_params):
    cfg = OmegaConf.create({"seed": 0, "device": "cpu", "metric": {"ssp": {"k": k, "niter": 20, **ssp_params}}})
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    source = ArraySource("toy", "train", np.zeros((len(rows), 2, 2, 1), np.uint8), labels, num_classes)
    return ScoreContext(cfg, source, np.arange(len(rows)), embeddings_loader=lambda: rows.astype(np.float32))


def test_ssp_is_cosine_distance_to_nearest_centroid(rng):
    rows, labels = _blobs(rng)
    centroids = train_spherical_kmeans(rows, 4, seed=0)
    _, sim = nearest_centroid(rows, centroids, block_size=37)  # blocks smaller than the data
    unit = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    expected = 1 - (unit @ centroids.T).max(axis=1)
    np.testing.assert_allclose(1 - sim, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1, atol=1e-5)


def test_ssp_ranks_a_planted_outlier_hardest(rng):
    rows, labels = _blobs(rng)
    rows[7] = rng.normal(size=rows.shape[1]) * 5  # not near any blob direction
    ctx = _ctx(rows, labels)
    out = ssp(ctx, ctx.params("ssp"))
    assert out["ssp"].argmax() == 7 or np.argsort(-out["ssp"])[:3].tolist().count(7) == 1
    assert len(np.unique(out["ssp_cluster"])) == 4


def test_supervised_prototypes_matches_numpy(rng):
    rows, labels = _blobs(rng)
    ctx = _ctx(rows, labels)
    got = supervised_prototypes(ctx, OmegaConf.create({"block_size": 50}))
    unit = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    protos = np.stack([unit[labels == c].mean(0) for c in range(4)])
    protos /= np.linalg.norm(protos, axis=1, keepdims=True)
    np.testing.assert_allclose(got, 1 - (unit * protos[labels]).sum(1), atol=1e-6)


def test_mislabelled_example_is_hardest_under_supervised_prototypes(rng):
    rows, labels = _blobs(rng)
    labels = labels.copy()
    labels[3] = (labels[3] + 1) % 4
    ctx = _ctx(rows, labels)
    assert supervised_prototypes(ctx, OmegaConf.create({})).argmax() == 3


def test_k_larger_than_examples_is_an_error(rng):
    rows, labels = _blobs(rng, n_per=2)
    with pytest.raises(DatacullError, match="k=50"):
        train_spherical_kmeans(rows, 50)


def test_kmeanspp_init_reaches_the_best_objective_where_one_random_init_fails():
    """One big cluster and nine tiny ones: the objective must match scikit-learn's best of 10 inits."""
    from sklearn.cluster import KMeans

    rng = np.random.default_rng(0)
    centres = l2_normalize(rng.normal(size=(10, 32)))
    sizes = [2000] + [40] * 9
    rows = np.concatenate([c + 0.15 * rng.normal(size=(m, 32)) for c, m in zip(centres, sizes)])
    rows = l2_normalize(rows.astype(np.float32))

    def objective(centroids):
        return float((1.0 - nearest_centroid(rows, centroids)[1]).mean())

    reference = KMeans(10, n_init=10, random_state=0).fit(rows).cluster_centers_
    best = objective(l2_normalize(reference.astype(np.float32)))
    ours = [objective(train_spherical_kmeans(rows, 10, seed=s)) for s in range(3)]
    randoms = [objective(train_spherical_kmeans(rows, 10, seed=s, init="random", nredo=1)) for s in range(3)]
    assert max(ours) <= best * 1.01
    assert max(randoms) > best * 1.01  # the planted failure of a random start


# --- k: auto, recorded, validated ---------------------------------------------------------------

def test_ssp_k_auto_is_the_number_of_classes_and_is_recorded(rng):
    rows, labels = _blobs(rng, n_per=60, k=5)
    ctx = _ctx(rows, labels, k="auto")
    out = ssp(ctx, ctx.params("ssp"))
    assert out["ssp_k"].dtype == np.int64 and (out["ssp_k"] == 5).all()
    assert len(np.unique(out["ssp_cluster"])) == 5


def test_ssp_k_auto_without_classes_is_sqrt_half_n(rng):
    rows, _ = _blobs(rng, n_per=100, k=4)  # 400 rows, no labels: round(sqrt(200)) = 14
    ctx = _ctx(rows, np.full(len(rows), -1), k="auto", num_classes=0)
    assert (ssp(ctx, ctx.params("ssp"))["ssp_k"] == 14).all()
    assert resolve_ssp_k("auto", 1, 400) == 14  # one class says nothing about clusters: the same rule
    assert resolve_ssp_k("auto", 0, 1_281_167) == 800  # ImageNet-sized, below the cap
    assert resolve_ssp_k("auto", 0, 10**9) == 1000  # capped


@pytest.mark.parametrize("setting, match", [("auto", "num_classes = 50"), (60, "k=60"), ("many", "positive integer"),
                                            (0, "positive integer"), (2.5, "positive integer")])
def test_ssp_bad_k_is_one_clear_error(setting, match):
    with pytest.raises(DatacullError, match=match):
        resolve_ssp_k(setting, 50, 40)


def test_score_stage_writes_the_k_used(make_cfg):
    from datacull.stages.score import score

    cfg = make_cfg("metrics=[ssp]", "metric.ssp.k=auto", "data.num_classes=3")
    score(cfg)
    scores = pd.read_parquet(layout.scores_path(cfg))
    assert (scores["ssp_k"] == 3).all() and scores["ssp_cluster"].nunique() == 3


# --- k-means initialisation and restarts ------------------------------------------------------

def _unequal_clusters(seed=0, n=3000, d=32):
    """Ten tight, well-separated directions with very unequal sizes (30% down to 2%)."""
    rng = np.random.default_rng(seed)
    sizes = np.array([0.30, 0.20, 0.12, 0.09, 0.07, 0.06, 0.05, 0.04, 0.04, 0.03])
    labels = np.repeat(np.arange(10), (sizes * n).astype(int))
    centers = l2_normalize(rng.normal(size=(10, d)))
    rows = centers[labels] + 0.3 / np.sqrt(d) * rng.normal(size=(len(labels), d))
    return rows.astype(np.float32), labels


def _objective(rows, centroids):
    """Mean cosine distance to the nearest centroid, in numpy."""
    unit = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    cent = centroids / np.linalg.norm(centroids, axis=1, keepdims=True)
    return float(1 - (unit @ cent.T).max(axis=1).mean())


def test_default_init_reaches_the_best_objective_where_random_init_fails():
    from sklearn.cluster import KMeans

    rows, _ = _unequal_clusters()
    unit = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    # independent reference: scikit-learn's Euclidean k-means on unit rows (= spherical up to the
    # normalisation of centres), best of 20 k-means++ starts
    best = _objective(rows, KMeans(10, n_init=20, random_state=0).fit(unit).cluster_centers_)
    seeds = range(5)
    robust = [_objective(rows, train_spherical_kmeans(rows, 10, seed=s)) for s in seeds]
    old = [_objective(rows, train_spherical_kmeans(rows, 10, seed=s, init="random")) for s in seeds]
    assert max(robust) <= best * 1.01, (robust, best)
    assert max(old) >= best * 1.10, (old, best)  # the planted case is one a random init gets wrong


def test_kmeans_plusplus_seeds_are_rows_covering_every_separated_cluster():
    rows, labels = _unequal_clusters(seed=1)
    unit = l2_normalize(rows)
    for seed in range(5):
        seeds = kmeans_plusplus_unit(unit, 10, seed=seed, n_local_trials=20)
        match = (seeds @ unit.T).argmax(axis=1)
        np.testing.assert_allclose(seeds, unit[match], atol=1e-6)  # each seed is one of the rows
        assert sorted(labels[match]) == list(range(10)), labels[match]


def test_random_init_is_faiss_own_behaviour(rng):
    rows, _ = _blobs(rng, n_per=300)  # 1200 rows > k * max_points_per_centroid = 4 * 64: a sample is drawn
    got = train_spherical_kmeans(rows, 4, seed=3, init="random", max_points_per_centroid=64)
    sample = np.sort(np.random.default_rng(3).choice(len(rows), size=256, replace=False))
    kmeans = faiss.Kmeans(rows.shape[1], 4, niter=25, seed=3, spherical=True, max_points_per_centroid=64)
    kmeans.train(l2_normalize(rows[sample]))
    np.testing.assert_allclose(got, l2_normalize(kmeans.centroids), atol=1e-6)


def test_nredo_keeps_the_restart_with_the_lowest_objective():
    rows, _ = _unequal_clusters(n=1500)  # fewer rows than k * 256: every restart sees all rows
    singles = [_objective(rows, train_spherical_kmeans(rows, 10, seed=7 + r, init="random")) for r in range(4)]
    kept = _objective(rows, train_spherical_kmeans(rows, 10, seed=7, init="random", nredo=4))
    assert kept == pytest.approx(min(singles), abs=1e-6)
    assert max(singles) > min(singles)  # the restarts differ, so keeping the best matters


@pytest.mark.parametrize("kwargs, match", [({"init": "forgy"}, "unknown k-means init"), ({"nredo": 0}, "nredo"),
                                           ({"local_trials": 0}, "local_trials"), ({"init_sample": 0}, "init_sample")])
def test_bad_kmeans_settings_are_clear_errors(rng, kwargs, match):
    rows, _ = _blobs(rng)
    with pytest.raises(DatacullError, match=match):
        train_spherical_kmeans(rows, 4, **kwargs)


def test_ssp_k_defaults_auto_and_the_paper_config_uses_the_imagenet_value():
    from datacull.config import compose

    assert compose([]).metric.ssp.k == "auto"
    paper = compose(["metric=paper"]).metric.ssp
    assert paper.k == 1000 and paper.init == "kmeans++"


def test_init_rows_seed_from_the_whole_sample_for_small_k_and_a_bounded_subsample_for_large_k():
    assert init_rows(10 * 256, 10, INIT_SAMPLE) == 2560  # small k: the whole k-means sample
    assert init_rows(100 * 256, 100, INIT_SAMPLE) == INIT_SAMPLE
    assert init_rows(5000 * 256, 5000, INIT_SAMPLE) == 16 * 5000  # at least 16 rows per centroid
    assert init_rows(100 * 256, 100, None) == 25600


def test_kmeanspp_on_the_init_subsample_still_seeds_every_separated_cluster():
    # 120 well-separated clusters: the k-means sample (120 * 256 = 30,720 rows) is larger than the
    # seeding subsample (16,384 rows); every true cluster must still get a centroid
    rng = np.random.default_rng(4)
    centers = l2_normalize(rng.normal(size=(120, 32)))
    labels = rng.integers(0, 120, size=40_000)
    rows = centers[labels] + 0.02 * rng.normal(size=(len(labels), 32)).astype(np.float32)
    centroids = train_spherical_kmeans(rows, 120, seed=0, niter=5)
    assert init_rows(120 * 256, 120, INIT_SAMPLE) < 120 * 256
    nearest_center = (centroids @ centers.T).argmax(axis=1)
    assert len(set(nearest_center.tolist())) == 120


@pytest.mark.parametrize("dtype", [np.float16, np.float64, np.int16])
def test_cast_into_equals_numpy_cast_also_from_a_read_only_memory_map(tmp_path, dtype):
    values = (np.random.default_rng(0).normal(size=(300, 7)) * 100).astype(dtype)
    np.save(tmp_path / "x.npy", values)
    rows = np.load(tmp_path / "x.npy", mmap_mode="r")
    out = np.empty((200, 7), np.float32)
    cast_into(out, rows[100:])
    np.testing.assert_array_equal(out, values[100:].astype(np.float32))


def test_ssp_fingerprint_leaves_out_only_a_default_init_sample():
    base = {"k": 10, "init": "kmeans++", "local_trials": 20}
    assert ssp_identity({**base, "init_sample": INIT_SAMPLE}) == base  # scores computed before stay valid
    assert ssp_identity({**base, "init_sample": 4096})["init_sample"] == 4096
    assert ssp_identity({**base, "init_sample": None})["init_sample"] is None
    assert "init_sample" not in ssp_identity({**base, "init": "random", "init_sample": 4096})


@pytest.mark.parametrize("key, value", [("init_sample", "abc"), ("init_sample", 2.5), ("local_trials", "many")])
def test_bad_seeding_settings_name_the_key(rng, key, value):
    from datacull.metrics.prototypes import fit_ssp_centroids
    rows, _ = _blobs(rng)
    with pytest.raises(DatacullError, match=f"metric.ssp.{key} must be an integer"):
        fit_ssp_centroids(rows, OmegaConf.create({"k": 4, key: value}), num_classes=0, seed=0, device="cpu")
