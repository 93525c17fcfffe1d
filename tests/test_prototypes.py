"""SSP / supervised prototypes against independent numpy computations and planted cases."""
import numpy as np
import pytest
from omegaconf import OmegaConf

from datacull.data.base import ArraySource
from datacull.errors import DatacullError
from datacull.kmeans import nearest_centroid, train_spherical_kmeans
from datacull.metrics.context import ScoreContext
from datacull.metrics.prototypes import ssp, supervised_prototypes


def _blobs(rng, n_per=100, d=16, k=4):
    centers = rng.normal(size=(k, d)) * 5
    labels = np.repeat(np.arange(k), n_per)
    return centers[labels] + rng.normal(size=(len(labels), d)), labels


def _ctx(rows, labels, k=4):
    cfg = OmegaConf.create({"seed": 0, "device": "cpu", "metric": {"ssp": {"k": k, "niter": 20}}})
    source = ArraySource("toy", "train", np.zeros((len(rows), 2, 2, 1), np.uint8), labels, int(labels.max()) + 1)
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


def test_ssp_k_auto_is_the_number_of_classes_and_is_recorded():
    from datacull.metrics.prototypes import ssp_k

    assert ssp_k("auto", 10, 60000) == 10 and ssp_k("auto", 1000, 500) == 500 and ssp_k(7, 10, 100) == 7
    assert ssp_k("auto", 0, 20000) == 100  # unlabelled: round(sqrt(N / 2))


def test_kmeanspp_init_reaches_the_best_objective_where_one_random_init_fails():
    """Ten clusters of very unequal size: the objective must match scikit-learn's best of 10 inits."""
    from sklearn.cluster import KMeans

    from datacull.kmeans import l2_normalize, nearest_centroid, train_spherical_kmeans

    rng = np.random.default_rng(0)
    centres = l2_normalize(rng.normal(size=(10, 32)))
    sizes = [2000] + [40] * 9
    rows = l2_normalize(np.concatenate([c + 0.15 * rng.normal(size=(m, 32)) for c, m in zip(centres, sizes)]).astype(np.float32))

    def objective(centroids):
        return float((1.0 - nearest_centroid(rows, centroids)[1]).mean())

    reference = KMeans(10, n_init=10, random_state=0).fit(rows).cluster_centers_
    best = objective(l2_normalize(reference.astype(np.float32)))
    ours = [objective(train_spherical_kmeans(rows, 10, seed=s)) for s in range(3)]
    randoms = [objective(train_spherical_kmeans(rows, 10, seed=s, init="random", nredo=1)) for s in range(3)]
    assert max(ours) <= best * 1.01
    assert max(randoms) > best * 1.01  # the planted failure of a random start
