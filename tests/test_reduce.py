"""UMAP/PCA reduction and its content-addressed disk cache."""

from __future__ import annotations

import numpy as np
import pytest

from cpdistiller_core.errors import CpDistillerError
from cpdistiller_core.reduce import ReduceParams, cache_key, content_hash, is_cached, pca, reduce


def _blobs(n: int = 120, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = np.array([[0] * 8, [8] * 8], dtype=np.float32)
    lab = np.arange(n) % 2
    return (centers[lab] + rng.normal(size=(n, 8))).astype(np.float32), lab


def test_umap_separates_blobs_and_is_read_back_from_cache(tmp_path):
    X, lab = _blobs()
    params = ReduceParams()
    assert (params.n_neighbors, params.min_dist, params.random_state) == (15, 0.1, 9000)
    assert not is_cached(X, params, tmp_path)
    Y = reduce(X, params, cache_root=tmp_path)
    assert Y.shape == (120, 2)
    # the two blobs stay apart in 2-D
    d_between = np.linalg.norm(Y[lab == 0].mean(0) - Y[lab == 1].mean(0))
    spread = max(Y[lab == 0].std(0).max(), Y[lab == 1].std(0).max())
    assert d_between > 3 * spread
    assert is_cached(X, params, tmp_path)
    files = list(tmp_path.glob("*.npy"))
    assert len(files) == 1
    # overwrite the cache entry: a second call must return the cached array, not recompute
    marker = np.full_like(Y, 7.0)
    np.save(files[0], marker)
    assert np.array_equal(reduce(X, params, cache_root=tmp_path), marker)


def test_cache_key_changes_with_content_and_params():
    X, _ = _blobs()
    X2 = X.copy()
    X2[0, 0] += 1e-3
    p = ReduceParams()
    assert cache_key(X, p) == cache_key(X.copy(), p)
    assert cache_key(X, p) != cache_key(X2, p)
    assert cache_key(X, p) != cache_key(X, ReduceParams(n_neighbors=30))
    assert cache_key(X, ReduceParams(method="pca")) == cache_key(X, ReduceParams(method="pca", n_neighbors=30))
    assert content_hash(X) != content_hash(X.reshape(60, 16))


def test_pca_matches_numpy_svd(tmp_path):
    X, _ = _blobs()
    Y = reduce(X, ReduceParams(method="pca"), cache_root=tmp_path)
    Xc = X.astype(np.float64) - X.mean(0)
    u, s, _ = np.linalg.svd(Xc, full_matrices=False)
    ref = u[:, :2] * s[:2]
    for k in range(2):
        assert abs(abs(np.corrcoef(Y[:, k], ref[:, k])[0, 1]) - 1) < 1e-4
    scores, ratio = pca(X, 50)
    assert scores.shape == (120, 8) and ratio.sum() == pytest.approx(1.0, abs=1e-5)


def test_nan_and_tiny_inputs_raise_readable_errors(tmp_path):
    X, _ = _blobs()
    X[3, 2] = np.inf
    with pytest.raises(CpDistillerError, match="NaN/inf"):
        reduce(X, cache_root=tmp_path)
    with pytest.raises(CpDistillerError, match="at least 3"):
        reduce(np.zeros((2, 4), np.float32), cache_root=tmp_path)
    with pytest.raises(CpDistillerError, match="unknown reduction"):
        reduce(_blobs()[0], ReduceParams(method="tsne"), cache_root=tmp_path)
