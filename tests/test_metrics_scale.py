"""The scorecard's large-screen paths: graph kNN above the exact limit, sampled neighbour preservation,
LISI with many labels and chunked rows. Thresholds are lowered so the paths run on CI-sized data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cpdistiller_core import metrics as M
from tests.test_metrics import emb_of, make_screen


def clustered(n: int = 3000, dim: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(60, dim)) * 3
    return centres[rng.integers(0, 60, n)] + rng.normal(size=(n, dim))


def test_hnsw_knn_recalls_the_exact_neighbours_and_excludes_self():
    X = clustered()
    d_exact, i_exact = M.knn_search(X, 30)
    d_hnsw, i_hnsw = M.knn_search(X, 30, exact_max_rows=1000)
    recall = np.mean([len(set(a) & set(b)) / 30 for a, b in zip(i_exact, i_hnsw)])
    assert recall > 0.97
    assert not (i_hnsw == np.arange(len(X))[:, None]).any()
    # distances are Euclidean on the unit sphere, like the exact path, and sorted per row
    found = i_hnsw == i_exact
    np.testing.assert_allclose(d_hnsw[found], d_exact[found], atol=1e-5)
    assert (np.diff(d_hnsw, axis=1) >= -1e-6).all()


def test_hnsw_knn_is_reproducible():
    X = clustered(seed=1)
    a = M.knn_search(X, 15, exact_max_rows=500)[1]
    b = M.knn_search(X, 15, exact_max_rows=500)[1]
    np.testing.assert_array_equal(a, b)


def test_knn_graph_above_the_limit_keeps_self_and_matches_exact(monkeypatch):
    X = clustered(n=1500)
    exact = M.knn_graph(X, 10)
    monkeypatch.setattr(M, "KNN_EXACT_MAX_ROWS", 500)
    approx = M.knn_graph(X, 10)
    assert approx.diagonal().all()  # self loops, as sklearn's kneighbors_graph
    agree = exact.multiply(approx).sum() / exact.sum()
    assert agree > 0.97


def test_lisi_with_many_labels_matches_a_per_label_sum():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 300, 800)  # more labels than neighbours: the case the old loop made slow
    i = rng.integers(0, 800, size=(800, 45))
    K = rng.random(i.shape)
    simpson = M._simpson(labels[i], K)
    for row in range(0, 800, 37):  # reference: kernel mass summed per label with pandas
        per = pd.Series(K[row]).groupby(labels[i][row]).sum()
        assert simpson[row] == pytest.approx(float((per ** 2).sum()))
    d, i = M.knn_search(rng.normal(size=(800, 6)), 45, cosine=False)
    got = M.lisi(d, i, labels, perplexity=15)
    assert np.all(np.isfinite(got)) and got.min() >= 1.0


def test_lisi_in_row_chunks_equals_one_pass(monkeypatch):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(700, 5))
    labels = rng.integers(0, 4, 700)
    d, i = M.knn_search(X, 30, cosine=False)
    whole = M.lisi(d, i, labels, perplexity=10)
    monkeypatch.setattr(M, "_LISI_ROWS_PER_CHUNK", 128)
    np.testing.assert_array_equal(M.lisi(d, i, labels, perplexity=10), whole)


def test_neighbor_preservation_sampled_above_the_limit():
    p = make_screen(n_plates=6, n_perts=40)
    n_trt = int((~p.negative_mask).sum())
    score, n = M.neighbor_preservation(p, p, k=10, max_wells=200)
    assert n == 200 < n_trt and score == pytest.approx(1.0)
    rand = emb_of(p, np.random.default_rng(3).normal(size=(p.n_wells, 20)))
    assert M.neighbor_preservation(rand, p, k=10, max_wells=200)[0] < 0.2
    # the sample is a function of the seed and the wells, so every embedding gets the same wells
    Q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(p.n_features, p.n_features)))
    noisy = emb_of(p, p.X @ Q + np.random.default_rng(4).normal(scale=0.5, size=p.X.shape))
    a = M.neighbor_preservation(noisy, p, k=10, max_wells=200, seed=5)
    assert a == M.neighbor_preservation(noisy, p, k=10, max_wells=200, seed=5)
    assert a != M.neighbor_preservation(noisy, p, k=10, max_wells=200, seed=6)
    # unsampled when the selection fits
    assert M.neighbor_preservation(p, p, k=10, max_wells=n_trt)[1] == n_trt


def test_scorecard_notes_a_sampled_neighbour_preservation(monkeypatch):
    p = make_screen(n_plates=4, n_perts=30)
    monkeypatch.setattr(M, "NEIGHBOUR_SAMPLE_WELLS", 100)
    card = M.evaluate(p, baseline=p, config=M.EvaluationConfig(null_size=200))
    row = card.scores.set_index("metric").loc["neighbor_preservation"]
    assert row["n"] == 100 and "random sample" in row["note"]


def test_cap_per_group_keeps_small_groups_and_samples_large_ones():
    labels = np.array(["a"] * 5 + ["b"] * 300 + ["c"] * 101)
    keep = M.cap_per_group(labels, 100, seed=0)
    counts = pd.Series(labels[keep]).value_counts()
    assert counts["a"] == 5 and counts["b"] == 100 and counts["c"] == 100
    np.testing.assert_array_equal(keep, M.cap_per_group(labels, 100, seed=0))
    assert not np.array_equal(keep, M.cap_per_group(labels, 100, seed=1))
    assert M.cap_per_group(labels, None).all()


def test_map_of_a_heavily_replicated_perturbation_is_sampled_and_said_so():
    p = make_screen(n_plates=6, n_perts=6, signal=5.0, seed=2)  # 80 wells per perturbation
    full = M.phenotypic_activity(p, null_size=200)
    capped = M.phenotypic_activity(p, null_size=200, max_replicates=5)
    assert full.attrs["sampled"] == "" and "perturbations with > 5 wells" in capped.attrs["sampled"]
    # strong signal: the sampled mAP stays high, each perturbation counted once, on 5 wells
    assert capped["mean_average_precision"].min() > 0.8 and len(capped) == len(full)
    assert (capped["n_replicates"] == 5).all()
    nonrep = M.phenotypic_distinctness(p, null_size=200, max_replicates=5)
    assert (nonrep["n_replicates"] == 5).all() and nonrep.attrs["sampled"]
    n_controls = int(p.negative_mask.sum())
    _, n, note = M.same_position_test(p, null_size=200, max_replicates=2)
    assert n == 16 and "16 positions with > 2 wells: a random 2 of each" in note  # 6 plates each
    assert int(p.negative_mask.sum()) == n_controls  # the screen's own mask is left alone


def test_auto_cap_only_when_positive_pairs_exceed_the_budget(monkeypatch):
    labels = np.repeat(np.arange(10), 150)  # 10 groups of 150: 225,000 positive pairs
    assert M.replicate_cap(labels) is None
    monkeypatch.setattr(M, "MAP_MAX_POSITIVE_PAIRS", 200_000)
    assert M.replicate_cap(labels) == M.MAP_MAX_REPLICATES
    assert M.replicate_cap(labels, None) is None and M.replicate_cap(labels, 7) == 7
