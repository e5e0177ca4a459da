"""Neighbour mining for the contrastive module: sparse KNN/MNN pairs and streamed triplets.

What the paper (Yan et al. 2025) and its reference code do, and what we do
---------------------------------------------------------------------------
* Space: cosine distance on a PCA of the input features. We PCA, then L2-normalise the rows, so the
  inner product is the cosine similarity and every search below is an inner-product search.
* KNN, per technical effect: each well's ``k_knn`` nearest wells *within its own level* (same row,
  same column, same batch...), self excluded. (The reference asks hnswlib for 10 and drops the
  first hit, i.e. 9 neighbours; we give ``k_knn`` real neighbours.)
* MNN, per technical effect, between *every pair of levels* (as the reference does, not level vs
  rest): for levels A and B, ``a`` and ``b`` form a pair when ``b`` is among the ``k_mnn`` nearest
  wells of ``a`` in B and ``a`` among the ``k_mnn`` nearest of ``b`` in A. Pairwise matters for
  gradients: row A gets partners in row P too, not only in the rows next to it.
* Combination across effects (``combine="intersection"``, the paper's): a KNN pair must be a KNN
  pair in every effect (i.e. the two wells share every technical level), an MNN pair must be an MNN
  pair in every effect. KNN pairs are intersected as directed pairs, then made symmetric (reference).
* Fallback (ours; the reference crashes here): with one plate, or one plate per batch, no two wells
  share row *and* column (*and* batch), so the KNN intersection is empty. For every anchor whose
  intersected KNN set is empty we use the *union* over effects of its own within-level neighbours
  (wells sharing at least one level with it); likewise for an empty MNN intersection. Anchors whose
  paper sets are non-empty keep them untouched, and fallback rows are directed (they give partners
  to the anchor that lacks them and add nothing to other anchors). ``stats`` counts the anchors
  served by the paper's rule and by the fallback. Effects with a single level carry no technical
  contrast and are dropped (listed in ``stats["effects_dropped"]``); with no effect left, positives
  are a plain KNN over all wells (``stats["fallback"] == "plain_knn"``).

Cost
----
Every well is searched once in its own level (KNN) and once in each other level (MNN), i.e.
``sum_e L_e`` searches per well; pairs are kept as sorted int64 keys (``i * N + j``) and combined
with sorted-array merges, so memory is O(N * k * L) and never N x N. Searches use faiss:

* ``method="exact"``: ``faiss.knn`` (BLAS inner products + heap top-k) per level. Exact, but the
  pairwise MNN costs ~N^2 comparisons per effect (every well against every other level): measured
  23 s at 20k wells and 92 s at 40k (1,446 features, 50 PCs, batch/row/column, 1 thread, this
  2-core machine at load ~12).
* ``method="approx"``: KNN levels larger than ``HNSW_MIN_LEVEL`` wells use one faiss HNSW graph
  each (M=16), smaller ones stay exact, so a KNN search never costs more than ~10k comparisons;
  MNN is computed exactly *within random blocks* of at most ``MNN_BLOCK`` wells (a seeded random
  partition of all wells) and the blocks' pairs are pooled. Time and memory are then linear in N.
  A block pair is a mutual nearest pair within a random 1/B subsample, i.e. MNN at a coarser
  scale; wells still get partners in the other levels. Per-level HNSW for the MNN searches was
  measured and rejected: with L-1 searches per well it was slower than exact (53 s vs 23 s at
  20k wells, 140 s vs 92 s at 40k).
* ``method="auto"`` (default): exact up to ``AUTO_EXACT_MAX_WELLS`` (15,000) wells, approx above,
  so a 20k-well screen is mined in two blocks of 10k.

Why faiss (faiss-cpu, pinned in requirements.txt) rather than pynndescent or hnswlib: it has both
an exact BLAS search and HNSW behind one API and starts instantly; pynndescent (already a
dependency via umap) spent 60-90 s in numba compilation per fresh process here before its first
query, which alone would break the 30 s mining budget at 20k wells; hnswlib (the reference's
choice) has no exact search. HNSW graphs are built single-threaded so that results are
reproducible. Mining runs faiss and BLAS single-threaded by default (``threads=1``): its searches
are many and small, and on a shared CPU spinning OpenMP threads made it ~7x slower with 2 threads
than with 1 (measured here at load 12 on 2 cores).

Triplets (``TripletSampler``) follow the reference's negative-control rule: a non-control anchor's
positive is drawn from its KNN set with probability ``p_knn`` (0.5) and from its MNN set otherwise
(falling back to whichever is non-empty), its negative is a negative control outside its positive
set when one exists; a negative-control anchor's positive is another negative control, its
negative a non-control well outside its positive set when one exists. Triplets are drawn per
mini-batch with vectorised numpy; nothing proportional to the number of triplets is stored.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .errors import CpDistillerError
from .progress import ProgressCallback

__all__ = [
    "AUTO_EXACT_MAX_WELLS",
    "HNSW_MIN_LEVEL",
    "KIND_KNN",
    "KIND_MNN",
    "MNN_BLOCK",
    "NeighborGraph",
    "TripletSampler",
    "embed_for_neighbors",
    "knn_within",
    "mine_neighbors",
    "mnn_across",
]

KIND_KNN = 1  # bit flags in NeighborGraph.kind
KIND_MNN = 2
AUTO_EXACT_MAX_WELLS = 15_000  # "auto" is exact up to here, approximate above
HNSW_MIN_LEVEL = 10_000  # approx: KNN levels larger than this are searched with HNSW
MNN_BLOCK = 10_000  # approx: MNN is exact within random blocks of at most this many wells
_HNSW_M = 16
_HNSW_EF_CONSTRUCTION = 40
_HNSW_EF_SEARCH_MIN = 32
_METHODS = ("auto", "exact", "approx")
_CHUNK = 4096  # rows per chunk when streaming over the profiles
_COV_PCA_MAX_FEATURES = 2048  # covariance (F x F) PCA up to here, randomized PCA above
_COMBINES = ("intersection", "union")


@dataclass
class NeighborGraph:
    """Positive partners per well, stored as CSR (sorted per anchor, no self-pairs).

    ``kind`` (optional, one uint8 per entry of ``indices``) says whether a pair came from KNN
    (``KIND_KNN``), MNN (``KIND_MNN``) or both (bitwise or); the sampler uses it to mix the two.

    ``stats`` (JSON-ready) from ``mine_neighbors``: ``n``, ``n_pcs``, ``method``/``method_used``,
    ``mnn_blocks``, ``effects_used``, ``effects_dropped`` (name -> reason), ``effects`` (per effect:
    ``levels``, ``knn_pairs`` (directed), ``mnn_pairs`` (unordered), seconds), ``knn_pairs_paper`` /
    ``mnn_pairs_paper`` (after the intersection; intersection only), ``knn_anchors_paper`` /
    ``knn_anchors_fallback`` and the same for MNN (anchors served by the paper's rule / by the
    union fallback), ``fallback`` ("none", "union_per_anchor" or "plain_knn"), ``pairs``,
    ``anchors_with_positive`` / ``anchors_without_positive``, ``indexes`` (exact / HNSW indexes
    built) and ``timings_s``.
    """

    indptr: np.ndarray
    indices: np.ndarray
    n: int
    stats: dict[str, Any] = field(default_factory=dict)
    kind: np.ndarray | None = None

    def positives(self, i: int) -> np.ndarray:
        """Positive partners of well ``i`` (sorted, possibly empty)."""
        return self.indices[self.indptr[i]:self.indptr[i + 1]]

    def has_positive(self) -> np.ndarray:
        """Boolean per well: does it have at least one positive partner?"""
        return np.diff(self.indptr) > 0

    def to_csr(self) -> sp.csr_matrix:
        """The graph as an n x n boolean sparse matrix."""
        data = np.ones(len(self.indices), dtype=bool)
        return sp.csr_matrix((data, self.indices, self.indptr), shape=(self.n, self.n))

    @property
    def n_pairs(self) -> int:
        """Number of stored (anchor, positive) entries."""
        return int(len(self.indices))


# ----- embedding ---------------------------------------------------------------------------------
def _rows(X: Any) -> Any:
    """``X`` as an array, unless it is read by row slices already (``preprocess.CorrectedRows``)."""
    from .preprocess import CorrectedRows

    return X if isinstance(X, CorrectedRows) else np.asarray(X)


def embed_for_neighbors(X: np.ndarray, n_pcs: int = 50, seed: int = 0) -> np.ndarray:
    """PCA of ``X`` then L2-normalised rows (float32), so inner product equals cosine similarity.

    Up to ``_COV_PCA_MAX_FEATURES`` features the PCA is exact and streamed: the feature covariance
    is accumulated over row chunks and diagonalised, then rows are projected chunk by chunk, so
    memory is O(F^2 + N * n_pcs) instead of a centred N x F copy (578 MB at 100k x 1,446). Wider
    data use sklearn's randomized PCA (deterministic for ``seed``).
    """
    X = _rows(X)
    if X.ndim != 2 or X.shape[0] < 2:
        raise CpDistillerError(f"need a 2-D feature matrix with at least 2 wells, got shape {X.shape}.")
    n, f = X.shape
    if not all(np.isfinite(X[s:s + _CHUNK]).all() for s in range(0, n, _CHUNK)):  # no N x F mask
        raise CpDistillerError("feature matrix contains NaN or infinite values; impute or drop them first.")
    n_comp = min(int(n_pcs), n - 1, f)
    if n_comp < 1:
        raise CpDistillerError(f"n_pcs must be at least 1, got {n_pcs}.")
    if f > _COV_PCA_MAX_FEATURES and n_comp < f:
        from sklearn.decomposition import PCA

        Z = PCA(n_components=n_comp, svd_solver="randomized", random_state=seed).fit_transform(
            np.asarray(X).astype(np.float32, copy=False))
        Z = np.ascontiguousarray(Z, dtype=np.float32)
    else:
        mean = np.zeros(f)
        for s in range(0, n, _CHUNK):
            mean += X[s:s + _CHUNK].sum(axis=0, dtype=np.float64)
        mean = (mean / n).astype(np.float32)
        if n_comp == f:  # all components: a rotation, which cosines ignore; only centre
            V = None
        else:
            cov = np.zeros((f, f))
            for s in range(0, n, _CHUNK):
                B = np.asarray(X[s:s + _CHUNK], dtype=np.float32) - mean
                cov += B.T @ B
            _, vecs = np.linalg.eigh(cov)
            V = np.ascontiguousarray(vecs[:, ::-1][:, :n_comp])
            V *= np.sign(V[np.abs(V).argmax(axis=0), np.arange(n_comp)])  # deterministic signs
            V = V.astype(np.float32)
        Z = np.empty((n, n_comp), dtype=np.float32)
        for s in range(0, n, _CHUNK):
            B = np.asarray(X[s:s + _CHUNK], dtype=np.float32) - mean
            Z[s:s + _CHUNK] = B if V is None else B @ V
    norms = np.linalg.norm(Z, axis=1, keepdims=True)
    np.divide(Z, norms, out=Z, where=norms > 0)
    return Z


# ----- per-level search --------------------------------------------------------------------------
class _LevelIndex:
    """Nearest-neighbour search over the wells of one level (exact faiss or faiss HNSW)."""

    def __init__(self, Z: np.ndarray, members: np.ndarray, approx: bool) -> None:
        self.members = members
        self.base = np.ascontiguousarray(Z[members])
        self.approx = approx
        self.hnsw: faiss.IndexHNSWFlat | None = None
        if approx:
            index = faiss.IndexHNSWFlat(self.base.shape[1], _HNSW_M, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = _HNSW_EF_CONSTRUCTION
            threads = faiss.omp_get_max_threads()
            faiss.omp_set_num_threads(1)  # multi-threaded HNSW insertion is not reproducible
            try:
                index.add(self.base)
            finally:
                faiss.omp_set_num_threads(threads)
            self.hnsw = index

    def search(self, queries: np.ndarray, k: int) -> np.ndarray:
        """Global well ids of the ``k`` nearest members for each query row; -1 where missing."""
        k_eff = min(k, len(self.members))
        if k_eff < 1 or len(queries) == 0:
            return np.full((len(queries), max(k_eff, 0)), -1, dtype=np.int64)
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if self.hnsw is not None:
            self.hnsw.hnsw.efSearch = max(_HNSW_EF_SEARCH_MIN, k_eff + 8)
            _, local = self.hnsw.search(queries, k_eff)
        else:
            _, local = faiss.knn(queries, self.base, k_eff, metric=faiss.METRIC_INNER_PRODUCT)
        out = np.where(local >= 0, self.members[np.clip(local, 0, None)], -1)
        return out.astype(np.int64, copy=False)


@contextlib.contextmanager
def _limit_threads(threads: int | None) -> Iterator[None]:
    """Cap faiss's OpenMP threads and the BLAS threads (PCA) for the duration of mining.

    Mining makes many small searches; on a shared CPU, spinning OpenMP/BLAS threads made mining
    ~7x slower with 2 threads than with 1 (measured at load 12 on 2 cores), so 1 is the default.
    """
    if threads is None:
        yield
        return
    from threadpoolctl import threadpool_limits

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(max(1, int(threads)))
    try:
        with threadpool_limits(limits=max(1, int(threads))):
            yield
    finally:
        faiss.omp_set_num_threads(before)


def _resolve(method: str, n: int) -> str:
    """'exact' or 'approx' for ``n`` wells."""
    _check_method(method)
    if method == "auto":
        return "exact" if n <= AUTO_EXACT_MAX_WELLS else "approx"
    return method


def _check_method(method: str) -> None:
    if method not in _METHODS:
        raise CpDistillerError(f"unknown neighbour search method {method!r}; use one of {list(_METHODS)}.")


def _codes(labels: np.ndarray, n: int, name: str = "labels") -> tuple[np.ndarray, int]:
    """Integer level codes 0..L-1 (missing values form their own level) and L."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != n:
        raise CpDistillerError(f"{name}: expected one label per well ({n}), got shape {labels.shape}.")
    codes, uniques = pd.factorize(pd.Series(labels), sort=True)
    n_levels = len(uniques)
    if (codes < 0).any():
        codes = np.where(codes < 0, n_levels, codes)
        n_levels += 1
    return codes.astype(np.int64), n_levels


def _groups(codes: np.ndarray, n_levels: int) -> list[np.ndarray]:
    order = np.argsort(codes, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(codes, minlength=n_levels))])
    return [order[bounds[i]:bounds[i + 1]] for i in range(n_levels)]


def _unique(a: np.ndarray, owned: bool = False) -> np.ndarray:
    """Sorted unique values; sort-based (numpy 2's hash-based ``np.unique`` is ~10x slower here).

    ``owned``: ``a`` is a temporary of the caller and may be sorted in place.
    """
    if owned:
        a.sort()
    else:
        a = np.sort(a)
    if len(a) < 2:
        return a
    return a[np.concatenate([[True], a[1:] != a[:-1]])]


def _intersect(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection of two sorted unique arrays (binary search; no concatenation or sort)."""
    if len(a) == 0 or len(b) == 0:
        return np.empty(0, dtype=np.int64)
    if len(b) > len(a):
        a, b = b, a  # look the smaller array up in the larger one
    pos = np.minimum(np.searchsorted(a, b), len(a) - 1)
    return b[a[pos] == b]


def _union(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return _unique(np.concatenate([a, b]), owned=True)


def _keys(src: np.ndarray, dst: np.ndarray, n: int) -> np.ndarray:
    """Sorted unique int64 keys ``src * n + dst`` for valid, non-self pairs."""
    src = np.asarray(src, dtype=np.int64)
    dst = np.asarray(dst, dtype=np.int64)
    ok = (src >= 0) & (dst >= 0) & (src != dst)
    return _unique(src[ok] * n + dst[ok], owned=True)


def _swap(keys: np.ndarray, n: int) -> np.ndarray:
    out = (keys % n) * n + keys // n
    out.sort()
    return out


def _symmetric(keys: np.ndarray, n: int) -> np.ndarray:
    return _union(keys, _swap(keys, n))


def _keys_to_csr(keys: np.ndarray, n: int) -> sp.csr_matrix:
    rows, cols = keys // n, keys % n
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n))]).astype(np.int64)
    return sp.csr_matrix((np.ones(len(keys), dtype=bool), cols.astype(np.int32), indptr), shape=(n, n))


class _Progress:
    """Maps units of work onto ``progress(fraction, message)`` within [start, end], throttled."""

    def __init__(self, cb: ProgressCallback | None, start: float, end: float, total: int, msg: str) -> None:
        self.cb, self.start, self.end, self.total, self.msg = cb, start, end, max(total, 1), msg
        self.done, self.last = 0, -1.0

    def step(self, units: int = 1) -> None:
        if self.cb is None:
            return
        self.done += units
        frac = self.start + (self.end - self.start) * min(self.done / self.total, 1.0)
        if frac - self.last >= 0.01 or self.done >= self.total:
            self.last = frac
            self.cb(frac, self.msg)


def _build_indexes(Z: np.ndarray, groups: list[np.ndarray],
                   method: str) -> tuple[list[_LevelIndex | None], dict[str, int]]:
    """One search index per non-empty level: HNSW for large levels under 'approx', exact otherwise."""
    out: list[_LevelIndex | None] = []
    used = {"exact": 0, "approx": 0}
    for members in groups:
        if len(members):
            approx = method == "approx" and len(members) > HNSW_MIN_LEVEL
            used["approx" if approx else "exact"] += 1
            out.append(_LevelIndex(Z, members, approx))
        else:
            out.append(None)
    return out, used


def _knn_keys(Z: np.ndarray, indexes: list[_LevelIndex | None], k: int,
              prog: _Progress | None = None) -> np.ndarray:
    """Sorted keys of directed within-level KNN pairs (self excluded)."""
    n = len(Z)
    parts = []
    for index in indexes:
        if index is not None and len(index.members) >= 2 and k > 0:
            members = index.members
            found = index.search(index.base, k + 1)
            src = np.repeat(members, found.shape[1]).reshape(found.shape)
            keep = (found != src) & (found >= 0)
            # keep the k nearest non-self hits per row (self is usually, not always, the first hit)
            keep &= np.cumsum(keep, axis=1) <= k
            parts.append(src[keep] * n + found[keep])
        if prog is not None:
            prog.step()
    return _unique(np.concatenate(parts), owned=True) if parts else np.empty(0, dtype=np.int64)


def _mnn_keys(Z: np.ndarray, indexes: list[_LevelIndex | None], k: int,
              prog: _Progress | None = None) -> np.ndarray:
    """Sorted keys of symmetric MNN pairs between every pair of levels."""
    n = len(Z)
    parts = []
    for a in range(len(indexes)):
        for b in range(a + 1, len(indexes)):
            ia, ib = indexes[a], indexes[b]
            if ia is not None and ib is not None and k > 0:
                ga, gb = ia.members, ib.members
                a_to_b = ib.search(ia.base, k)          # global ids in level b
                b_to_a = ia.search(ib.base, k)          # global ids in level a
                fwd = _keys(np.repeat(ga, a_to_b.shape[1]), a_to_b.ravel(), n)
                bwd = _keys(b_to_a.ravel(), np.repeat(gb, b_to_a.shape[1]), n)  # stored as a -> b
                mutual = _intersect(fwd, bwd)
                if len(mutual):
                    parts.append(mutual)
            if prog is not None:
                prog.step()
    keys = _unique(np.concatenate(parts), owned=True) if parts else np.empty(0, dtype=np.int64)
    return _symmetric(keys, n)


def _blocks(n: int, block: int, seed: int) -> list[np.ndarray]:
    """A seeded random partition of the wells into near-equal blocks of at most ``block`` wells."""
    if n <= block:
        return [np.arange(n)]
    perm = np.random.default_rng(seed).permutation(n)
    return [np.sort(b) for b in np.array_split(perm, -(-n // block))]


def _mnn_keys_blocked(Z: np.ndarray, codes: np.ndarray, n_levels: int, k: int, seed: int,
                      prog: _Progress | None = None) -> tuple[np.ndarray, int]:
    """Exact pairwise MNN within each random block of at most ``MNN_BLOCK`` wells (union)."""
    blocks = _blocks(len(Z), MNN_BLOCK, seed)
    parts = []
    for blk in blocks:
        sub_groups = [blk[g] for g in _groups(codes[blk], n_levels)]
        indexes, _ = _build_indexes(Z, sub_groups, "exact")
        parts.append(_mnn_keys(Z, indexes, k, prog))
    return _unique(np.concatenate(parts), owned=True), len(blocks)


def knn_within(Z: np.ndarray, levels: np.ndarray, k: int, *, method: str = "exact",
               seed: int = 0, threads: int | None = 1) -> sp.csr_matrix:
    """Directed KNN graph on an embedding ``Z`` (unit rows): each well's ``k`` nearest wells
    sharing its level, self excluded. Row ``i`` of the returned CSR lists well ``i``'s neighbours.

    ``seed`` is accepted for API symmetry; faiss searches are deterministic.
    """
    _check_method(method)
    Z = np.ascontiguousarray(Z, dtype=np.float32)
    codes, n_levels = _codes(levels, len(Z))
    with _limit_threads(threads):
        indexes, _ = _build_indexes(Z, _groups(codes, n_levels), _resolve(method, len(Z)))
        keys = _knn_keys(Z, indexes, k)
    return _keys_to_csr(keys, len(Z))


def mnn_across(Z: np.ndarray, levels: np.ndarray, k: int, *, method: str = "exact",
               seed: int = 0, threads: int | None = 1) -> sp.csr_matrix:
    """Symmetric MNN graph on an embedding ``Z`` (unit rows): for every pair of levels (A, B),
    wells ``a`` in A and ``b`` in B are paired when each is among the other's ``k`` nearest wells
    in the other's level. Pairs therefore always join different levels. ``method="approx"`` (or
    "auto" above ``AUTO_EXACT_MAX_WELLS`` wells) does this within seeded random blocks of at most
    ``MNN_BLOCK`` wells.
    """
    _check_method(method)
    Z = np.ascontiguousarray(Z, dtype=np.float32)
    codes, n_levels = _codes(levels, len(Z))
    with _limit_threads(threads):
        if _resolve(method, len(Z)) == "approx":
            keys, _ = _mnn_keys_blocked(Z, codes, n_levels, k, seed)
        else:
            indexes, _ = _build_indexes(Z, _groups(codes, n_levels), "exact")
            keys = _mnn_keys(Z, indexes, k)
    return _keys_to_csr(keys, len(Z))


# ----- mining ------------------------------------------------------------------------------------
def _fill_empty_anchors(paper: np.ndarray, per_effect: list[np.ndarray],
                        n: int) -> tuple[np.ndarray, int, int]:
    """Paper keys, plus, for anchors that have none, their rows of the union over effects.

    Returns the keys, the number of anchors served by the paper rule and by the fallback.
    """
    has = np.zeros(n, dtype=bool)
    has[paper // n] = True
    extra = _union_all([keys[~has[keys // n]] for keys in per_effect])
    extra_anchors = int(len(_unique(extra // n, owned=True))) if len(extra) else 0
    return _union(paper, extra), int(has.sum()), extra_anchors


def mine_neighbors(X: np.ndarray, labels: Mapping[str, np.ndarray], *, k_knn: int = 10, k_mnn: int = 5,
                   n_pcs: int = 50, combine: str = "intersection", method: str = "auto",
                   seed: int = 0, progress: ProgressCallback | None = None,
                   threads: int | None = 1) -> NeighborGraph:
    """Mine positive pairs: KNN within levels and MNN across levels of each technical effect,
    combined across effects (``"intersection"``, the paper's, with a per-anchor union fallback; or
    ``"union"``). ``labels`` maps effect name -> one label per well; effects with a single level
    are dropped. ``threads`` caps faiss/BLAS threads while mining (None: leave them as they are).
    See the module docstring for the exact definitions and ``stats`` for what happened.
    """
    with _limit_threads(threads):
        return _mine(X, labels, k_knn=k_knn, k_mnn=k_mnn, n_pcs=n_pcs, combine=combine, method=method,
                     seed=seed, progress=progress)


def _mine(X: np.ndarray, labels: Mapping[str, np.ndarray], *, k_knn: int, k_mnn: int, n_pcs: int,
          combine: str, method: str, seed: int, progress: ProgressCallback | None) -> NeighborGraph:
    t_start = time.perf_counter()
    X, n = _check_mining(X, k_knn, k_mnn, combine, method)
    effects, dropped = _effect_codes(labels, n)
    stats: dict[str, Any] = {
        "n": n, "k_knn": k_knn, "k_mnn": k_mnn, "combine": combine, "method": method,
        "effects_used": list(effects), "effects_dropped": dropped, "effects": {},
        "indexes": {"exact": 0, "approx": 0}, "timings_s": {},
    }
    if progress:
        progress(0.0, "neighbours: PCA")
    t0 = time.perf_counter()
    Z = embed_for_neighbors(X, n_pcs=n_pcs, seed=seed)
    stats["n_pcs"] = int(Z.shape[1])
    stats["timings_s"]["pca"] = time.perf_counter() - t0
    resolved = _resolve(method, n)
    stats["method_used"] = resolved
    knn_sets, mnn_sets = _search_effects(Z, effects, k_knn, k_mnn, resolved, seed, stats, progress)
    t0 = time.perf_counter()
    if progress:
        progress(0.95, "neighbours: combining effects")
    knn, mnn = _combine_effects(Z, n, knn_sets, mnn_sets, k_knn, k_mnn, combine, resolved, stats)
    del knn_sets, mnn_sets
    graph = _build_graph(knn, mnn, n, stats)
    stats["timings_s"]["combine"] = time.perf_counter() - t0
    stats["timings_s"]["total"] = time.perf_counter() - t_start
    has = graph.has_positive()
    stats.update(pairs=graph.n_pairs, knn_entries=int(len(knn)), mnn_entries=int(len(mnn)),
                 anchors_with_positive=int(has.sum()), anchors_without_positive=int((~has).sum()))
    if progress:
        progress(1.0, f"neighbours: {graph.n_pairs} pairs, {int(has.sum())}/{n} wells with a positive")
    return graph


def _check_mining(X: np.ndarray, k_knn: int, k_mnn: int, combine: str, method: str) -> tuple[np.ndarray, int]:
    _check_method(method)
    if combine not in _COMBINES:
        raise CpDistillerError(f"unknown combine rule {combine!r}; use one of {list(_COMBINES)}.")
    if k_knn < 0 or k_mnn < 0 or (k_knn == 0 and k_mnn == 0):
        raise CpDistillerError(f"k_knn and k_mnn must be >= 0 and not both 0 (got {k_knn}, {k_mnn}).")
    X = _rows(X)
    n = int(X.shape[0]) if X.ndim == 2 else 0
    if n < 2:
        raise CpDistillerError(f"need at least 2 wells to mine neighbours, got {n}.")
    return X, n


def _effect_codes(labels: Mapping[str, np.ndarray], n: int
                  ) -> tuple[dict[str, tuple[np.ndarray, int]], dict[str, str]]:
    """Integer codes and level counts of the effects with 2+ levels; the others, with the reason."""
    effects: dict[str, tuple[np.ndarray, int]] = {}
    dropped: dict[str, str] = {}
    for name, lab in labels.items():
        codes, n_levels = _codes(lab, n, f"effect {name!r}")
        if n_levels < 2:
            dropped[name] = "single level"
        else:
            effects[name] = (codes, n_levels)
    return effects, dropped


def _search_effects(Z: np.ndarray, effects: Mapping[str, tuple[np.ndarray, int]], k_knn: int, k_mnn: int,
                    resolved: str, seed: int, stats: dict[str, Any], progress: ProgressCallback | None
                    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """KNN within and MNN across the levels of each effect: one key set of each per effect."""
    n = Z.shape[0]
    n_blocks = len(_blocks(n, MNN_BLOCK, seed)) if resolved == "approx" else 1
    stats["mnn_blocks"] = n_blocks
    # work units: one per level (KNN) + one per pair of levels and block (MNN)
    total = sum(L + n_blocks * L * (L - 1) // 2 for _, L in effects.values()) or 1
    prog = _Progress(progress, 0.1, 0.95, total, "neighbours: KNN/MNN search")
    knn_sets: list[np.ndarray] = []
    mnn_sets: list[np.ndarray] = []
    t_build = t_knn = t_mnn = 0.0
    for name, (codes, n_levels) in effects.items():
        groups = _groups(codes, n_levels)
        t0 = time.perf_counter()
        indexes, used = _build_indexes(Z, groups, resolved)
        for key in ("exact", "approx"):
            stats["indexes"][key] += used[key]
        t_index = time.perf_counter()
        kkeys = _knn_keys(Z, indexes, k_knn, prog)
        t1 = time.perf_counter()
        if resolved == "approx":
            del indexes
            mkeys, _ = _mnn_keys_blocked(Z, codes, n_levels, k_mnn, seed, prog)
        else:
            mkeys = _mnn_keys(Z, indexes, k_mnn, prog)
            del indexes
        t2 = time.perf_counter()
        t_build += t_index - t0
        t_knn += t1 - t_index
        t_mnn += t2 - t1
        knn_sets.append(kkeys)
        mnn_sets.append(mkeys)
        stats["effects"][name] = {
            "levels": n_levels, "knn_pairs": int(len(kkeys)), "mnn_pairs": int(len(mkeys) // 2),
            "index_s": round(t_index - t0, 3), "knn_s": round(t1 - t_index, 3), "mnn_s": round(t2 - t1, 3),
        }
    stats["timings_s"].update(index=t_build, knn=t_knn, mnn=t_mnn)
    return knn_sets, mnn_sets


def _combine_effects(Z: np.ndarray, n: int, knn_sets: list[np.ndarray], mnn_sets: list[np.ndarray], k_knn: int,
                     k_mnn: int, combine: str, resolved: str, stats: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """One KNN and one MNN key set over all effects (intersection with per-anchor fallback, or union);
    plain KNN over all wells when no effect has two levels."""
    fallback = "none"
    if not knn_sets:
        indexes, used = _build_indexes(Z, [np.arange(n)], resolved)
        kkeys = _knn_keys(Z, indexes, k_knn if k_knn > 0 else k_mnn)
        stats["indexes"]["exact"] += used["exact"]
        stats["indexes"]["approx"] += used["approx"]
        knn = _symmetric(kkeys, n)
        mnn = np.empty(0, dtype=np.int64)
        fallback = "plain_knn"
        stats.update(knn_anchors_paper=0, knn_anchors_fallback=_n_anchors(knn, n),
                     mnn_anchors_paper=0, mnn_anchors_fallback=0)
    elif combine == "union":
        knn = _symmetric(_union_all(knn_sets), n)
        mnn = _union_all(mnn_sets)
        stats.update(knn_anchors_paper=_n_anchors(knn, n), knn_anchors_fallback=0,
                     mnn_anchors_paper=_n_anchors(mnn, n), mnn_anchors_fallback=0)
    else:
        paper_knn = _symmetric(_intersect_all(knn_sets), n)
        paper_mnn = _intersect_all(mnn_sets)
        stats.update(knn_pairs_paper=int(len(paper_knn)), mnn_pairs_paper=int(len(paper_mnn) // 2))
        knn, a_knn, f_knn = _fill_empty_anchors(paper_knn, knn_sets, n)
        del paper_knn
        mnn, a_mnn, f_mnn = _fill_empty_anchors(paper_mnn, mnn_sets, n)
        del paper_mnn
        stats.update(knn_anchors_paper=a_knn, knn_anchors_fallback=f_knn,
                     mnn_anchors_paper=a_mnn, mnn_anchors_fallback=f_mnn)
        if f_knn or f_mnn:
            fallback = "union_per_anchor"
    stats["fallback"] = fallback
    return knn, mnn


def _union_all(sets: list[np.ndarray]) -> np.ndarray:
    return _unique(np.concatenate(sets), owned=True) if sets else np.empty(0, dtype=np.int64)


def _intersect_all(sets: list[np.ndarray]) -> np.ndarray:
    out = sets[0]
    for s in sets[1:]:
        out = _intersect(out, s)
    return out


def _n_anchors(keys: np.ndarray, n: int) -> int:
    return int(len(_unique(keys // n, owned=True)))


def _build_graph(knn: np.ndarray, mnn: np.ndarray, n: int, stats: dict[str, Any]) -> NeighborGraph:
    # the kind flag rides in the two low bits of the key, so one in-place sort merges both sets
    tagged = np.concatenate([knn * 4 + KIND_KNN, mnn * 4 + KIND_MNN])
    tagged.sort()
    keys = tagged >> 2
    flags = (tagged & 3).astype(np.uint8)
    del tagged
    if len(keys):
        starts = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]]))
        flags = np.bitwise_or.reduceat(flags, starts).astype(np.uint8)
        keys = keys[starts]
    rows = keys // n
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n))]).astype(np.int64)
    indices = (keys % n).astype(np.int32 if n < 2**31 else np.int64)
    return NeighborGraph(indptr=indptr, indices=indices, n=n, stats=stats, kind=flags)


# ----- triplets ----------------------------------------------------------------------------------
class TripletSampler:
    """Streams (anchor, positive, negative) index triplets per mini-batch (see module docstring).

    ``negative_mask`` marks negative-control wells. ``p_knn`` is the chance that a non-control
    anchor with both KNN and MNN partners draws its positive from the KNN set.
    """

    _REJECTION_ROUNDS = 16

    def __init__(self, graph: NeighborGraph, negative_mask: np.ndarray, seed: int = 0,
                 p_knn: float = 0.5) -> None:
        n = graph.n
        mask = np.asarray(negative_mask, dtype=bool)
        if mask.shape != (n,):
            raise CpDistillerError(f"negative-control mask has shape {mask.shape}, expected ({n},).")
        self.graph, self.negative_mask, self.p_knn = graph, mask, float(p_knn)
        self.rng = np.random.default_rng(seed)
        indptr = np.asarray(graph.indptr, dtype=np.int64)
        indices = np.asarray(graph.indices, dtype=np.int64)
        rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(indptr))
        self._keys = rows * n + indices  # sorted: CSR rows ascending, sorted within rows
        kind = graph.kind if graph.kind is not None else np.full(len(indices), KIND_KNN, np.uint8)
        self._sub = {}
        for flag in (KIND_KNN, KIND_MNN):
            sel = (kind & flag) > 0
            sub_ptr = np.concatenate([[0], np.cumsum(np.bincount(rows[sel], minlength=n))]).astype(np.int64)
            self._sub[flag] = (sub_ptr, indices[sel])
        self.controls = np.flatnonzero(mask)
        self.noncontrols = np.flatnonzero(~mask)
        self._controls_as_positives = len(self.controls) >= 2
        has = np.diff(indptr) > 0
        self.valid = has | (mask & self._controls_as_positives)

    def anchors(self) -> np.ndarray:
        """Wells that can anchor a triplet (have a positive)."""
        return np.flatnonzero(self.valid)

    def _count(self, flag: int, a: np.ndarray) -> np.ndarray:
        ptr = self._sub[flag][0]
        return ptr[a + 1] - ptr[a]

    def _draw_from(self, flag: int, a: np.ndarray) -> np.ndarray:
        ptr, idx = self._sub[flag]
        counts = ptr[a + 1] - ptr[a]
        off = (self.rng.random(len(a)) * counts).astype(np.int64)
        return idx[ptr[a] + off]

    def _is_positive(self, a: np.ndarray, j: np.ndarray) -> np.ndarray:
        """Is ``j`` in the positive set of ``a`` (graph partners, self, and controls for controls)?"""
        q = a * self.graph.n + j
        pos = np.searchsorted(self._keys, q)
        pos = np.minimum(pos, len(self._keys) - 1)
        inside = (self._keys[pos] == q) if len(self._keys) else np.zeros(len(a), dtype=bool)
        inside |= a == j
        if self._controls_as_positives:
            inside |= self.negative_mask[a] & self.negative_mask[j]
        return inside

    def sample(self, anchors: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Triplets for ``anchors`` that have a positive (others dropped): (anchor, positive, negative)."""
        a = np.asarray(anchors, dtype=np.int64).ravel()
        a = a[self.valid[a]]
        m = len(a)
        pos = np.empty(m, dtype=np.int64)
        is_ctrl = self.negative_mask[a]

        ctrl = is_ctrl & self._controls_as_positives
        if ctrl.any():
            nc = len(self.controls)
            r = self.rng.integers(0, nc - 1, size=int(ctrl.sum()))
            r += r >= np.searchsorted(self.controls, a[ctrl])  # skip the anchor itself
            pos[ctrl] = self.controls[r]
        rest = ~ctrl
        if rest.any():
            ar = a[rest]
            ck, cm = self._count(KIND_KNN, ar), self._count(KIND_MNN, ar)
            use_knn = (ck > 0) & ((cm == 0) | (self.rng.random(len(ar)) < self.p_knn))
            p = np.empty(len(ar), dtype=np.int64)
            if use_knn.any():
                p[use_knn] = self._draw_from(KIND_KNN, ar[use_knn])
            if (~use_knn).any():
                p[~use_knn] = self._draw_from(KIND_MNN, ar[~use_knn])
            pos[rest] = p

        neg = np.full(m, -1, dtype=np.int64)
        anywhere: list[np.ndarray] = []  # anchors without a usable preferred negative
        for sel, pool in ((~is_ctrl, self.controls), (is_ctrl, self.noncontrols)):
            todo = np.flatnonzero(sel)
            if len(pool) == 0:
                anywhere.append(todo)
                continue
            todo = self._reject(a, todo, pool, neg)
            # rare: most of the pool is inside the anchor's positive set; check exactly
            for t in todo:
                cand = np.setdiff1d(pool, self._excluded(int(a[t])))
                if len(cand):
                    neg[t] = cand[self.rng.integers(0, len(cand))]
                else:
                    anywhere.append(np.array([t]))
        if anywhere:
            todo = self._reject(a, np.concatenate(anywhere), np.arange(self.graph.n), neg)
            for t in todo:  # only in tiny data sets: nearly every well is a positive
                cand = np.setdiff1d(np.arange(self.graph.n), self._excluded(int(a[t])))
                if len(cand):
                    neg[t] = cand[self.rng.integers(0, len(cand))]
        keep = neg >= 0
        return a[keep], pos[keep], neg[keep]

    def _reject(self, a: np.ndarray, todo: np.ndarray, pool: np.ndarray, neg: np.ndarray) -> np.ndarray:
        """Rejection-sample negatives for ``a[todo]`` from ``pool`` into ``neg``; returns the failures."""
        for _ in range(self._REJECTION_ROUNDS):
            if len(todo) == 0:
                break
            j = pool[self.rng.integers(0, len(pool), size=len(todo))]
            ok = ~self._is_positive(a[todo], j)
            neg[todo[ok]] = j[ok]
            todo = todo[~ok]
        return todo

    def _excluded(self, a: int) -> np.ndarray:
        """The positive set of ``a``: graph partners, itself, and the other controls for a control."""
        excluded = np.append(self.graph.positives(a).astype(np.int64), a)
        if self.negative_mask[a] and self._controls_as_positives:
            excluded = np.concatenate([excluded, self.controls])
        return excluded

    def epoch(self, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """One pass over the valid anchors in a fresh random order, as triplet mini-batches."""
        order = self.rng.permutation(self.anchors())
        for start in range(0, len(order), batch_size):
            yield self.sample(order[start:start + batch_size])
