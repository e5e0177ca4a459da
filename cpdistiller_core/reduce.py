"""2-D views of profiles and embeddings (UMAP, PCA) with a disk cache keyed by content + parameters.

UMAP is computed once per embedding and parameter set: the cache key is a SHA-256 of the matrix
bytes, its shape and dtype, plus the method and its parameters, so a changed embedding or a changed
parameter gives a new key and an unchanged one is read back from ``<cache dir>/reduce/<key>.npy``.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CpDistillerError
from .paths import atomic_write_bytes, cache_dir
from .progress import ProgressCallback, no_progress

UMAP_DEFAULTS = {"n_neighbors": 15, "min_dist": 0.1, "random_state": 9000}


@dataclass(frozen=True)
class ReduceParams:
    """How to reduce: ``method`` 'umap' or 'pca', and UMAP's parameters (paper defaults)."""

    method: str = "umap"
    n_components: int = 2
    n_neighbors: int = 15
    min_dist: float = 0.1
    random_state: int = 9000
    metric: str = "euclidean"

    def key_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.method == "pca":  # UMAP knobs do not change a PCA; how its axes are fitted does
            d = {"method": "pca", "n_components": self.n_components, "fit": f"sample{PCA_FIT_MAX_WELLS}-float32"}
        return d


def content_hash(X: np.ndarray) -> str:
    """SHA-256 of a matrix's bytes, shape and dtype (C-contiguous float32 view)."""
    arr = np.ascontiguousarray(X, dtype=np.float32)
    h = hashlib.sha256()
    h.update(json.dumps({"shape": list(arr.shape), "dtype": str(arr.dtype)}).encode())
    h.update(memoryview(arr).cast("B"))
    return h.hexdigest()


def cache_key(X: np.ndarray, params: ReduceParams) -> str:
    """Content hash of the matrix combined with the reduction parameters."""
    h = hashlib.sha256()
    h.update(content_hash(X).encode())
    h.update(json.dumps(params.key_dict(), sort_keys=True).encode())
    return h.hexdigest()[:32]


def _cache_path(key: str, root: Path | None) -> Path:
    return (Path(root) if root is not None else cache_dir() / "reduce") / f"{key}.npy"


def _check_matrix(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float32)
    if X.ndim != 2 or X.shape[0] < 3:
        raise CpDistillerError(f"need at least 3 wells to draw an embedding (got shape {X.shape}).")
    bad = ~np.isfinite(X)
    if bad.any():
        raise CpDistillerError(
            f"{int(bad.sum())} NaN/inf values in the matrix ({int(bad.any(axis=0).sum())} features); "
            "preprocess the profiles (drop or impute them) before computing a UMAP or PCA."
        )
    return X


PCA_FIT_MAX_WELLS = 10_000  # above this, the axes are fitted on a seeded sample of wells, then all are projected


def pca(X: np.ndarray, n_components: int = 2, seed: int = 0,
        max_fit_wells: int = PCA_FIT_MAX_WELLS) -> tuple[np.ndarray, np.ndarray]:
    """PCA scores (n x k) and explained-variance ratios of a centred matrix (k clipped to the data).

    Screens with more than ``max_fit_wells`` wells get their axes (and the ratios) from a seeded random
    sample of that many wells; every well is then projected onto them, in row chunks. For the
    dashboard's views of 100k+ wells this is several times faster than a full fit (1.8 s for 100k x 1,446
    here) and the top axes of 10,000 wells are stable (tests/test_reduce.py checks them against the exact PCA); up
    to ``max_fit_wells`` the PCA is exact as before."""
    from sklearn.decomposition import PCA

    X = _check_matrix(X)
    k = int(max(1, min(n_components, X.shape[0] - 1, X.shape[1])))
    model = PCA(n_components=k, random_state=seed, svd_solver="auto")
    if X.shape[0] <= max_fit_wells:
        scores = model.fit_transform(X.astype(np.float64)).astype(np.float32)
        return scores, model.explained_variance_ratio_.astype(np.float32)
    sample = np.sort(np.random.default_rng(seed).choice(X.shape[0], max_fit_wells, replace=False))
    model.fit(X[sample])  # float32: half the time of float64 (1.2 vs 2.3 s, 30 axes of 10k x 1,446)
    axes = model.components_.T.astype(np.float32)
    offset = model.mean_.astype(np.float32) @ axes  # (x - mean) @ axes without a centred copy of X
    scores = np.empty((X.shape[0], k), dtype=np.float32)
    for s in range(0, X.shape[0], 65536):
        scores[s:s + 65536] = X[s:s + 65536] @ axes - offset
    return scores, model.explained_variance_ratio_.astype(np.float32)


def reduce(X: np.ndarray, params: ReduceParams | None = None, cache: bool = True,
           cache_root: Path | None = None, progress: ProgressCallback = no_progress,
           key: str | None = None) -> np.ndarray:
    """2-D (or ``n_components``-D) coordinates of the rows of ``X`` by UMAP or PCA, cached on disk.

    ``key``: ``cache_key(X, params)`` when the caller has it already (hashing a 100k-well matrix
    takes ~0.5 s, so a page hashes each matrix once per visit)."""
    params = params or ReduceParams()
    if params.method not in ("umap", "pca"):
        raise CpDistillerError(f"unknown reduction {params.method!r}; use 'umap' or 'pca'.")
    X = _check_matrix(X)
    path = _cache_path(key or cache_key(X, params), cache_root)
    if cache and path.exists():
        try:
            out = np.load(path, allow_pickle=False)
            if out.shape[0] == X.shape[0]:
                progress(1.0, "read from cache")
                return out
        except (OSError, ValueError):
            pass  # unreadable cache entry: recompute and overwrite it
    progress(0.0, f"computing {params.method.upper()} of {X.shape[0]} x {X.shape[1]}")
    if params.method == "pca":
        out, ratios = pca(X, params.n_components)
        if out.shape[1] < params.n_components:  # a 1-feature matrix: pad so plots keep two axes
            out = np.hstack([out, np.zeros((out.shape[0], params.n_components - out.shape[1]), np.float32)])
        if cache:
            _save_npy(_variance_path(path), _padded(ratios, params.n_components))
    else:
        out = _umap(X, params)
    if cache:
        _save_npy(path, out.astype(np.float32))
    progress(1.0, "done")
    return out.astype(np.float32)


def _variance_path(coords_path: Path) -> Path:
    return coords_path.with_name(coords_path.stem + "-variance.npy")


def _padded(ratios: np.ndarray, k: int) -> np.ndarray:
    """Ratios padded with zeros to ``k`` (the padded axes of a 1-feature PCA explain nothing)."""
    return np.concatenate([ratios, np.zeros(max(0, k - len(ratios)), np.float32)]).astype(np.float32)


def _save_npy(path: Path, arr: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


def explained_variance(X: np.ndarray, n_components: int = 2, cache: bool = True,
                       cache_root: Path | None = None, key: str | None = None) -> np.ndarray:
    """Fraction of the variance of ``X`` along each axis of ``reduce(X, ReduceParams("pca", n_components))``.

    Read from the disk cache that ``reduce`` fills when it computes a PCA (keyed like the coordinates;
    ``key`` is that PCA's ``cache_key`` when the caller has it); computed (and cached) otherwise. Use
    it to label PCA axes: 'PC1 (23.4 % variance)'.
    """
    X = _check_matrix(X)
    key = key or cache_key(X, ReduceParams(method="pca", n_components=n_components))
    path = _variance_path(_cache_path(key, cache_root))
    if cache and path.exists():
        try:
            out = np.load(path, allow_pickle=False)
            if out.shape == (n_components,):
                return out
        except (OSError, ValueError):
            pass  # unreadable cache entry: recompute and overwrite it
    out = _padded(pca(X, n_components)[1], n_components)
    if cache:
        _save_npy(path, out)
    return out


def _umap(X: np.ndarray, params: ReduceParams) -> np.ndarray:
    import warnings

    import umap

    n = X.shape[0]
    n_neighbors = int(min(params.n_neighbors, n - 1))
    if n_neighbors < 2:
        raise CpDistillerError(f"UMAP needs at least 3 wells (got {n}).")
    model = umap.UMAP(n_neighbors=n_neighbors, min_dist=params.min_dist, n_components=params.n_components,
                      random_state=params.random_state, metric=params.metric)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # n_jobs overridden by random_state; spectral init notices
        return np.asarray(model.fit_transform(X), dtype=np.float32)


def reduce_to_cache(X: np.ndarray, method: str = "umap", n_neighbors: int = UMAP_DEFAULTS["n_neighbors"],
                    min_dist: float = UMAP_DEFAULTS["min_dist"], random_state: int = UMAP_DEFAULTS["random_state"],
                    progress: ProgressCallback = no_progress) -> None:
    """:func:`reduce` into the disk cache and nothing else: the target of a background job (``jobs.submit``,
    whose arguments are JSON and arrays), so a slow UMAP of a large screen never blocks a page."""
    reduce(X, ReduceParams(method=method, n_neighbors=n_neighbors, min_dist=min_dist, random_state=random_state),
           progress=progress)


def is_cached(X: np.ndarray, params: ReduceParams, cache_root: Path | None = None, key: str | None = None) -> bool:
    """Whether ``reduce(X, params)`` would be read from disk (``key``: its ``cache_key``, if known)."""
    return _cache_path(key or cache_key(np.asarray(X, dtype=np.float32), params), cache_root).exists()
