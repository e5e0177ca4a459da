"""Neighbour mining (KNN within / MNN across technical levels) and triplet sampling."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pandas as pd
import pytest

from cpdistiller_core import neighbors
from cpdistiller_core.errors import CpDistillerError
from cpdistiller_core.neighbors import (
    KIND_KNN,
    KIND_MNN,
    NeighborGraph,
    TripletSampler,
    embed_for_neighbors,
    knn_within,
    mine_neighbors,
    mnn_across,
)


def plates(n_plates: int, n_batches: int = 1, n_features: int = 40, rank: int = 8, seed: int = 0,
           replicate_signal: float = 0.0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Low-rank profiles on 16x24 plates; ``replicate_signal`` makes a well position look alike
    across plates (as replicate plates of one layout do)."""
    rng = np.random.default_rng(seed)
    n = 384 * n_plates
    plate = np.repeat(np.arange(n_plates), 384)
    row = np.tile(np.repeat(np.arange(16), 24), n_plates)
    col = np.tile(np.tile(np.arange(24), 16), n_plates)
    W = rng.standard_normal((rank, n_features))
    latent = rng.standard_normal((n, rank))
    if replicate_signal:
        latent += replicate_signal * rng.standard_normal((384, rank))[row * 24 + col]
    X = latent @ W + 0.3 * rng.standard_normal((n, n_features))
    labels = {"batch": plate % n_batches, "row": row, "col": col}
    return X.astype(np.float32), labels


def pairs(csr) -> np.ndarray:
    coo = csr.tocoo()
    return np.column_stack([coo.row, coo.col])


def brute_topk(Z: np.ndarray, queries: np.ndarray, base: np.ndarray, k: int) -> list[set[int]]:
    sims = Z[queries] @ Z[base].T
    return [set(base[np.argsort(-s, kind="stable")[:k]].tolist()) for s in sims]


# ----- embedding ---------------------------------------------------------------------------------
def test_embedding_has_unit_rows_and_is_deterministic():
    X, _ = plates(1)
    Z = embed_for_neighbors(X, n_pcs=10, seed=3)
    assert Z.shape == (384, 10) and Z.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(Z, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(Z, embed_for_neighbors(X, n_pcs=10, seed=3))
    # cosine order of the PCA space is kept: with as many PCs as features, only centring happens
    full = embed_for_neighbors(X, n_pcs=100)
    Xc = X - X.mean(0)
    Xc /= np.linalg.norm(Xc, axis=1, keepdims=True)
    np.testing.assert_allclose(full @ full[:5].T, Xc @ Xc[:5].T, atol=1e-4)


def test_streamed_pca_matches_sklearn(monkeypatch):
    from sklearn.decomposition import PCA

    X, _ = plates(2, n_features=60, rank=12)
    ref = PCA(n_components=12, svd_solver="full").fit_transform(X)
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    Z = embed_for_neighbors(X, n_pcs=12)
    np.testing.assert_allclose(Z @ Z[:50].T, ref @ ref[:50].T, atol=2e-3)  # signs do not matter
    monkeypatch.setattr(neighbors, "_COV_PCA_MAX_FEATURES", 10)  # wide data: randomized PCA
    R = embed_for_neighbors(X, n_pcs=12)
    np.testing.assert_allclose(R @ R[:50].T, ref @ ref[:50].T, atol=2e-2)


def test_embedding_rejects_nan():
    X, _ = plates(1)
    X[3, 2] = np.nan
    with pytest.raises(CpDistillerError, match="NaN"):
        embed_for_neighbors(X)


# ----- per-effect KNN / MNN ----------------------------------------------------------------------
def test_knn_pairs_stay_within_levels_and_are_the_true_nearest():
    X, lab = plates(2)
    Z = embed_for_neighbors(X, n_pcs=12)
    levels = lab["row"]
    g = knn_within(Z, levels, 5, method="exact")
    p = pairs(g)
    assert len(p) == len(Z) * 5  # every level has 48 wells, so every well gets 5 neighbours
    assert np.all(levels[p[:, 0]] == levels[p[:, 1]])
    assert np.all(p[:, 0] != p[:, 1])
    for i in range(0, len(Z), 37):
        base = np.flatnonzero((levels == levels[i]) & (np.arange(len(Z)) != i))
        assert set(g[i].indices.tolist()) == brute_topk(Z, np.array([i]), base, 5)[0]


def test_mnn_pairs_always_cross_levels_and_match_the_pairwise_definition():
    X, lab = plates(1, n_features=30)
    Z = embed_for_neighbors(X, n_pcs=10)
    levels = lab["row"] // 4  # 4 levels of 96 wells
    g = mnn_across(Z, levels, 3, method="exact")
    p = pairs(g)
    assert len(p) > 0
    assert np.all(levels[p[:, 0]] != levels[p[:, 1]])
    assert (g != g.T).nnz == 0  # symmetric
    expected = set()
    for a in range(4):
        for b in range(a + 1, 4):
            ga, gb = np.flatnonzero(levels == a), np.flatnonzero(levels == b)
            a_in_b = brute_topk(Z, ga, gb, 3)
            b_in_a = brute_topk(Z, gb, ga, 3)
            pos_b = {w: t for t, w in enumerate(gb)}
            for s, i in enumerate(ga):
                for j in a_in_b[s]:
                    if i in b_in_a[pos_b[j]]:
                        expected |= {(i, j), (j, i)}
    assert set(map(tuple, p.tolist())) == expected


def test_approx_search_uses_hnsw_and_agrees_with_exact(monkeypatch):
    monkeypatch.setattr(neighbors, "HNSW_MIN_LEVEL", 10)  # HNSW even for these small levels
    X, lab = plates(4, n_features=30)
    Z = embed_for_neighbors(X, n_pcs=10)
    exact = knn_within(Z, lab["col"], 5, method="exact")
    approx = knn_within(Z, lab["col"], 5, method="approx")
    p = pairs(approx)
    assert np.all(lab["col"][p[:, 0]] == lab["col"][p[:, 1]])
    recall = exact.multiply(approx).nnz / exact.nnz
    assert recall > 0.9
    g = mine_neighbors(X, lab, n_pcs=10, method="approx")
    assert g.stats["indexes"]["approx"] > 0 and g.stats["indexes"]["exact"] == 0


def test_blocked_mnn_pairs_cross_levels_and_cover_wells(monkeypatch):
    monkeypatch.setattr(neighbors, "MNN_BLOCK", 600)  # 1,536 wells -> 3 random blocks
    X, lab = plates(4, n_features=30)
    Z = embed_for_neighbors(X, n_pcs=10)
    levels = lab["col"]
    exact = mnn_across(Z, levels, 5, method="exact")
    blocked = mnn_across(Z, levels, 5, method="approx", seed=1)
    p = pairs(blocked)
    assert np.all(levels[p[:, 0]] != levels[p[:, 1]])
    assert (blocked != blocked.T).nnz == 0
    assert (np.diff(blocked.indptr) > 0).mean() > 0.95  # wells still find partners in their block
    # blocks pair wells that are mutual neighbours among a subsample: not the exact set, but related
    assert 0.5 * exact.nnz < blocked.nnz < 3 * exact.nnz
    assert blocked.multiply(exact).nnz > 0.2 * blocked.nnz
    again = mnn_across(Z, levels, 5, method="approx", seed=1)
    other = mnn_across(Z, levels, 5, method="approx", seed=2)
    assert (again != blocked).nnz == 0 and (other != blocked).nnz > 0
    g = mine_neighbors(X, lab, n_pcs=10, method="approx")
    assert g.stats["method_used"] == "approx" and g.stats["mnn_blocks"] == 3
    assert mine_neighbors(X, lab, n_pcs=10).stats["method_used"] == "exact"  # auto: small -> exact


# ----- mining ------------------------------------------------------------------------------------
def check_graph(g: NeighborGraph) -> None:
    assert g.indptr.dtype == np.int64 and len(g.indptr) == g.n + 1
    rows = np.repeat(np.arange(g.n), np.diff(g.indptr))
    assert np.all(rows != g.indices), "self-pair"
    for i in range(g.n):
        assert np.all(np.diff(g.positives(i)) > 0), "not sorted/unique"
    assert g.to_csr().shape == (g.n, g.n)
    assert g.kind is not None and len(g.kind) == len(g.indices)


def _expected_graph(X: np.ndarray, lab: dict[str, np.ndarray], k_knn: int, k_mnn: int):
    """The combination rule rebuilt with scipy sparse algebra from the per-effect graphs."""
    Z = embed_for_neighbors(X, n_pcs=10)
    knn = [knn_within(Z, lab[e], k_knn) for e in lab]
    mnn = [mnn_across(Z, lab[e], k_mnn) for e in lab]
    paper_knn, paper_mnn = knn[0], mnn[0]
    for a, b in zip(knn[1:], mnn[1:]):
        paper_knn, paper_mnn = paper_knn.multiply(a), paper_mnn.multiply(b)
    paper_knn = (paper_knn + paper_knn.T).astype(bool).tocsr()
    union_knn = sum(knn[1:], knn[0]).astype(bool).tocsr()
    union_mnn = sum(mnn[1:], mnn[0]).astype(bool).tocsr()

    def fill(paper, union):
        empty = np.diff(paper.tocsr().indptr) == 0
        return (paper + union.multiply(empty[:, None])).astype(bool).tocsr()

    return fill(paper_knn, union_knn), fill(paper_mnn.tocsr(), union_mnn), paper_knn, paper_mnn


def test_paper_intersection_with_per_anchor_fallback_matches_sparse_algebra():
    # replicate plates of one layout: the same well position looks alike across plates
    X, lab = plates(4, n_batches=2, replicate_signal=2.0)
    g = mine_neighbors(X, lab, n_pcs=10, method="exact")
    check_graph(g)
    s = g.stats
    assert s["effects_used"] == ["batch", "row", "col"]
    knn, mnn, paper_knn, paper_mnn = _expected_graph(X, lab, 10, 5)
    assert s["knn_pairs_paper"] == paper_knn.nnz > 0 and s["mnn_pairs_paper"] == paper_mnn.nnz // 2 > 0
    assert s["knn_anchors_paper"] == (np.diff(paper_knn.indptr) > 0).sum() > 0.5 * g.n
    kind = g.kind
    rows = np.repeat(np.arange(g.n), np.diff(g.indptr))
    got_knn = g.to_csr().copy()
    got_knn.data = (kind & KIND_KNN) > 0
    got_knn.eliminate_zeros()
    got_mnn = g.to_csr().copy()
    got_mnn.data = (kind & KIND_MNN) > 0
    got_mnn.eliminate_zeros()
    assert (got_knn != knn).nnz == 0 and (got_mnn != mnn).nnz == 0
    # paper KNN pairs share every level, paper MNN pairs differ in every level
    pk = pairs(paper_knn)
    assert all(np.all(lab[e][pk[:, 0]] == lab[e][pk[:, 1]]) for e in lab)
    pm = pairs(paper_mnn)
    assert all(np.all(lab[e][pm[:, 0]] != lab[e][pm[:, 1]]) for e in lab)
    assert s["anchors_without_positive"] == 0 and len(rows) == g.n_pairs


@pytest.mark.parametrize("n_plates,n_batches", [(1, 1), (2, 2)])
def test_single_plate_and_one_plate_per_batch_use_the_recorded_fallback(n_plates, n_batches):
    X, lab = plates(n_plates, n_batches)
    g = mine_neighbors(X, lab, n_pcs=10)
    check_graph(g)
    s = g.stats
    assert s["knn_pairs_paper"] == 0  # no two wells share row and column (and batch)
    assert s["fallback"] == "union_per_anchor"
    assert s["knn_anchors_fallback"] == g.n
    assert g.has_positive().all() and s["anchors_without_positive"] == 0
    knn = (g.kind & KIND_KNN) > 0
    rows = np.repeat(np.arange(g.n), np.diff(g.indptr))
    # fallback KNN partners share at least one technical level with the anchor
    share = np.any([lab[e][rows[knn]] == lab[e][g.indices[knn]] for e in s["effects_used"]], axis=0)
    assert share.all()
    if n_batches == 1:
        assert s["effects_dropped"] == {"batch": "single level"}


def test_single_level_effects_are_dropped():
    X, lab = plates(2)
    with_const = mine_neighbors(X, {**lab, "batch": np.array(["b1"] * len(X), dtype=object)}, n_pcs=10)
    without = mine_neighbors(X, {"row": lab["row"], "col": lab["col"]}, n_pcs=10)
    assert with_const.stats["effects_dropped"] == {"batch": "single level"}
    assert with_const.stats["effects_used"] == ["row", "col"]
    np.testing.assert_array_equal(with_const.indptr, without.indptr)
    np.testing.assert_array_equal(with_const.indices, without.indices)


def test_no_effect_left_gives_plain_knn():
    X, _ = plates(1)
    g = mine_neighbors(X, {"plate": np.zeros(len(X))}, n_pcs=10, k_knn=4)
    assert g.stats["fallback"] == "plain_knn"
    assert g.has_positive().all()
    assert np.all(np.diff(g.indptr) >= 4)


def test_union_combine_is_a_superset_of_intersection():
    X, lab = plates(2, 2, replicate_signal=2.0)
    inter = mine_neighbors(X, lab, n_pcs=10).to_csr()
    union = mine_neighbors(X, lab, n_pcs=10, combine="union").to_csr()
    assert inter.multiply(union).nnz == inter.nnz and union.nnz > inter.nnz


def test_mining_is_deterministic_and_reports_progress():
    X, lab = plates(2, 2)
    calls: list[tuple[float, str]] = []
    a = mine_neighbors(X, lab, n_pcs=10, seed=5, progress=lambda f, m: calls.append((f, m)))
    b = mine_neighbors(X, lab, n_pcs=10, seed=5)
    np.testing.assert_array_equal(a.indptr, b.indptr)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.kind, b.kind)
    fr = [f for f, _ in calls]
    assert fr[0] == 0.0 and fr[-1] == 1.0 and fr == sorted(fr)
    json.dumps(a.stats)  # goes into report.json as is
    c = mine_neighbors(X, lab, n_pcs=10, seed=5, method="approx")
    d = mine_neighbors(X, lab, n_pcs=10, seed=5, method="approx")
    np.testing.assert_array_equal(c.indices, d.indices)


def test_bad_arguments_raise_user_errors():
    X, lab = plates(1)
    with pytest.raises(CpDistillerError, match="method"):
        mine_neighbors(X, lab, method="fast")
    with pytest.raises(CpDistillerError, match="combine"):
        mine_neighbors(X, lab, combine="xor")
    with pytest.raises(CpDistillerError, match="one label per well"):
        mine_neighbors(X, {"row": lab["row"][:-1]})


def test_mining_memory_is_linear_in_wells(monkeypatch):
    # a coarse HNSW keeps this test quick; recall does not matter for memory
    monkeypatch.setattr(neighbors, "_HNSW_M", 8)
    monkeypatch.setattr(neighbors, "_HNSW_EF_CONSTRUCTION", 16)
    monkeypatch.setattr(neighbors, "_HNSW_EF_SEARCH_MIN", 8)
    monkeypatch.setattr(neighbors, "MNN_BLOCK", 5000)
    n_plates = 131  # 50,304 wells
    rng = np.random.default_rng(0)
    n = 384 * n_plates
    X = (rng.standard_normal((n, 6)) @ rng.standard_normal((6, 24))).astype(np.float32)
    X += 0.3 * rng.standard_normal(X.shape).astype(np.float32)
    plate = np.repeat(np.arange(n_plates), 384)
    row = np.tile(np.repeat(np.arange(16), 24), n_plates)
    labels = {"batch": plate % 2, "half": row // 8}  # two 2-level effects keep the test fast
    k = 5
    embed_for_neighbors(X[:100], n_pcs=8)  # imports (sklearn) are not mining memory
    tracemalloc.start()
    try:
        g = mine_neighbors(X, labels, k_knn=k, k_mnn=5, n_pcs=8, method="approx")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert g.n == n and g.has_positive().all()
    assert g.stats["indexes"]["approx"] == 4
    # O(N*k): a few hundred bytes per (well, neighbour) (int64 keys and their sorted copies);
    # an N x N bool matrix would be 2.5 GB. (faiss's own HNSW graphs live outside tracemalloc's
    # view; they are O(N*M) by construction, and the benchmark reports process RSS.)
    assert peak < 400 * n * k, f"peak {peak / 1e6:.0f} MB"
    assert peak < n * n / 20


# ----- triplets ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mined() -> tuple[NeighborGraph, np.ndarray]:
    X, lab = plates(2, 2, replicate_signal=1.0)
    g = mine_neighbors(X, lab, n_pcs=10)
    rng = np.random.default_rng(1)
    negative = rng.random(g.n) < 0.15
    return g, negative


def test_triplets_follow_the_negative_control_rule(mined):
    g, negative = mined
    sampler = TripletSampler(g, negative, seed=0)
    a, p, n = sampler.sample(np.arange(g.n))
    assert len(a) == g.n  # every well has a positive here
    csr = g.to_csr().tolil()
    inside = np.array([csr[i, j] for i, j in zip(a, n)])
    assert not inside.any() and np.all(n != a)
    ctrl = negative[a]
    # non-control anchors: negatives are negative controls; positives are graph partners
    assert negative[n[~ctrl]].all()
    assert all(csr[i, j] for i, j in zip(a[~ctrl], p[~ctrl]))
    # negative-control anchors: positives are other negative controls, negatives are not controls
    assert negative[p[ctrl]].all() and np.all(p[ctrl] != a[ctrl])
    assert not negative[n[ctrl]].any()


def test_triplets_mix_knn_and_mnn_positives(mined):
    g, negative = mined
    sampler = TripletSampler(g, np.zeros(g.n, dtype=bool), seed=0, p_knn=0.5)
    a, p, _ = sampler.sample(np.repeat(np.arange(g.n), 4))
    key = {(int(i), int(j)): int(k) for i, j, k in
           zip(np.repeat(np.arange(g.n), np.diff(g.indptr)), g.indices, g.kind)}
    kinds = np.array([key[(int(i), int(j))] for i, j in zip(a, p)])
    assert 0.2 < np.mean((kinds & KIND_MNN) > 0) < 0.8
    only_knn = TripletSampler(g, np.zeros(g.n, dtype=bool), seed=0, p_knn=1.0)
    a2, p2, _ = only_knn.sample(np.arange(g.n))
    has_knn = np.array([(g.kind[g.indptr[i]:g.indptr[i + 1]] & KIND_KNN).any() for i in a2])
    kinds2 = np.array([key[(int(i), int(j))] for i, j in zip(a2, p2)])
    assert np.all((kinds2[has_knn] & KIND_KNN) > 0)


def test_negatives_fall_back_when_all_controls_are_positives():
    # well 0's partners are the only controls (1, 2): its negative must be another, non-positive well
    n = 6
    indptr = np.array([0, 2, 3, 4, 4, 4, 4], dtype=np.int64)
    g = NeighborGraph(indptr=indptr, indices=np.array([1, 2, 0, 0], dtype=np.int32), n=n)
    negative = np.array([False, True, True, False, False, False])
    a, p, neg = TripletSampler(g, negative, seed=0).sample(np.zeros(50, dtype=np.int64))
    assert set(p.tolist()) <= {1, 2} and set(neg.tolist()) <= {3, 4, 5}
    # wells 3-5 have no positive and are not controls: dropped
    a, _, _ = TripletSampler(g, negative, seed=0).sample(np.arange(n))
    assert a.tolist() == [0, 1, 2]


def test_without_controls_negatives_are_any_non_positive_well(mined):
    g, _ = mined
    a, p, n = TripletSampler(g, np.zeros(g.n, dtype=bool), seed=3).sample(np.arange(g.n))
    assert len(a) == g.n and np.all(n != a)
    csr = g.to_csr().tolil()
    assert not any(csr[i, j] for i, j in zip(a, n))
    assert all(csr[i, j] for i, j in zip(a, p))
    assert len(np.unique(n)) > g.n // 3  # drawn across the plate, not from a few wells


def test_sampler_is_deterministic_by_seed(mined):
    g, negative = mined
    batch = np.arange(0, g.n, 3)
    r1 = TripletSampler(g, negative, seed=7).sample(batch)
    r2 = TripletSampler(g, negative, seed=7).sample(batch)
    r3 = TripletSampler(g, negative, seed=8).sample(batch)
    for x, y in zip(r1, r2):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(r1[2], r3[2])
    epochs = list(TripletSampler(g, negative, seed=7).epoch(256))
    assert sum(len(t[0]) for t in epochs) == g.n and len(epochs) == -(-g.n // 256)


# ----- real designs the reference cannot run -----------------------------------------------------
def _plate_frame(path) -> tuple[pd.DataFrame, list[str]]:
    df = pd.read_csv(path)
    feats = [c for c in df.columns if not c.startswith("Metadata_")]
    return df, feats


def _row_col(wells: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    parts = wells.str.extract(r"^([A-Za-z]+)(\d+)$")
    return parts[0].str.upper().map(ord).to_numpy() - ord("A"), parts[1].astype(int).to_numpy()


def test_lincs_single_plate(shared_data):
    df, feats = _plate_frame(shared_data / "lincs_a549" / "SQ00015054_normalized_feature_select.csv.gz")
    row, col = _row_col(df["Metadata_Well"])
    labels = {"plate": df["Metadata_Plate"].to_numpy(), "row": row, "col": col}
    g = mine_neighbors(df[feats].to_numpy(np.float32), labels)
    assert g.stats["effects_dropped"] == {"plate": "single level"}
    assert g.stats["fallback"] == "union_per_anchor" and g.has_positive().all()
    negative = (df["Metadata_pert_type"] == "control").to_numpy()
    a, p, n = TripletSampler(g, negative).sample(np.arange(g.n))
    assert len(a) == g.n and negative[n[~negative[a]]].all()


def test_cmqtl_one_plate_per_batch(shared_data):
    folder = shared_data / "cmqtl_crispri"
    frames = [_plate_frame(p) for p in sorted(folder.glob("*.csv.gz"))]
    shared = [f for f in frames[0][1] if f in set(frames[1][1])]
    df = pd.concat([f[0].assign(batch=i) for i, f in enumerate(frames)], ignore_index=True)
    row, col = _row_col(df["Metadata_Well"])
    X = df[shared].to_numpy(np.float32)
    X = np.nan_to_num(X)
    g = mine_neighbors(X, {"batch": df["batch"].to_numpy(), "row": row, "col": col})
    assert g.stats["knn_pairs_paper"] == 0 and g.stats["fallback"] == "union_per_anchor"
    assert g.has_positive().all()
    assert g.stats["effects"]["batch"]["mnn_pairs"] > 0


def test_mining_after_the_negative_control_model_finds_phenotypes_not_positions():
    """With strong row/column gradients, MNN partners mined in the input mostly share a row; mined after
    removing the controls' additive model they share the perturbation far more often."""
    from cpdistiller_core.datasets import make_demo_screen
    from cpdistiller_core.training_data import _mining_space

    p = make_demo_screen(seed=1, n_batches=2, plates_per_batch=2, n_features=120, row_effect=2.4,
                         column_effect=2.4, edge_effect=2.4).profiles
    X = ((p.X - p.X.mean(0)) / p.X.std(0)).astype(np.float32)
    effects = ("batch", "row", "column")
    labels = {e: p.labels(e) for e in effects}
    pert, neg, row = np.asarray(p.perturbation), p.negative_mask, np.asarray(p.labels("row"))

    def mnn_rates(space: str) -> tuple[float, float]:
        g = mine_neighbors(_mining_space(p, X, effects, space, None)[0], labels, seed=0)
        a = np.repeat(np.arange(g.n), np.diff(g.indptr))[(g.kind & KIND_MNN) > 0]
        b = np.asarray(g.indices)[(g.kind & KIND_MNN) > 0]
        t = ~neg[a]
        return float(np.mean(pert[a][t] == pert[b][t])), float(np.mean(row[a] == row[b]))

    # the corrected space is read a block of rows at a time: same pairs as its full copy
    lazy, space = _mining_space(p, X, effects, "negcon_linear", None)
    assert space == "negcon_linear" and not isinstance(lazy, np.ndarray)
    g_lazy, g_full = mine_neighbors(lazy, labels, seed=0), mine_neighbors(np.asarray(lazy), labels, seed=0)
    assert np.array_equal(g_lazy.indptr, g_full.indptr) and np.array_equal(g_lazy.indices, g_full.indices)

    same_pert_input, same_row_input = mnn_rates("input")
    same_pert_ncl, same_row_ncl = mnn_rates("negcon_linear")
    assert same_pert_ncl > 2 * same_pert_input
    assert same_row_ncl < same_row_input / 2


def test_mining_falls_back_to_the_input_without_negative_controls():
    import dataclasses

    from cpdistiller_core.datasets import make_demo_screen
    from cpdistiller_core.errors import CpDistillerWarning
    from cpdistiller_core.training_data import _mining_space

    p = make_demo_screen(seed=1, n_batches=1, plates_per_batch=1, n_features=20).profiles
    no_controls = p.replace(roles=dataclasses.replace(p.roles, control=None))
    assert not no_controls.negative_mask.any()
    X = no_controls.X.astype(np.float32)
    with pytest.warns(CpDistillerWarning, match="needs 3\\+ negative controls .*has 0"):
        mined, space = _mining_space(no_controls, X, ("row", "column"), "negcon_linear", None)
    assert space == "input" and mined is X
