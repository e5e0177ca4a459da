"""The field protocol (Arevalo et al. 2024) metrics on constructed data with known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cpdistiller_core import metrics as M
from tests.test_metrics import NULL, emb_of, make_screen


def batch_screen(mixed: bool, n_plates: int = 4, n_perts: int = 10, seed: int = 0):
    """Perturbation clusters; each batch (B0/B1) either shifted far apart (separated) or not (mixed)."""
    p = make_screen(n_plates=n_plates, n_perts=n_perts, signal=5.0, noise=1.0, seed=seed)
    Z = p.X.astype(np.float64).copy()
    if not mixed:
        shift = np.random.default_rng(9).normal(size=p.n_features) * 20
        Z[p.batch == "B1"] += shift
    return emb_of(p, Z)


def test_lisi_matches_harmonypy_compute_lisi():
    from harmonypy import compute_lisi

    rng = np.random.default_rng(0)
    X = rng.normal(size=(600, 8))
    X[:300] += 1.5
    lab = (np.arange(600) >= 300).astype(int)
    lab[rng.random(600) < 0.3] = 2
    ref = compute_lisi(X, pd.DataFrame({"b": lab.astype(str)}), ["b"])[:, 0]
    d, i = M.knn_search(X, 90, cosine=False)
    np.testing.assert_allclose(M.lisi(d, i, lab), ref, rtol=1e-8)


def test_ilisi_and_kbet_mixed_vs_separated():
    mixed, sep = batch_screen(True), batch_screen(False)
    assert M.batch_effect(mixed) == "batch"
    il_mixed, n = M.ilisi_score(mixed)
    il_sep, _ = M.ilisi_score(sep)
    assert il_mixed > 0.8 and il_sep < 0.05 and n == int(M.label_wells(mixed).sum())
    kb_mixed, n_labels = M.kbet_score(mixed)
    kb_sep, _ = M.kbet_score(sep)
    assert kb_mixed > 0.8 and kb_sep < 0.05 and n_labels == 10
    sb_mixed, _ = M.silhouette_batch(mixed)
    sb_sep, _ = M.silhouette_batch(sep)
    assert sb_mixed > 0.8 and sb_sep < 0.3


def test_clisi_separated_perturbations_vs_noise():
    p = make_screen(n_plates=4, n_perts=10, signal=10.0)
    assert M.clisi_score(p)[0] > 0.95
    noise = emb_of(p, np.random.default_rng(0).normal(size=(p.n_wells, 20)))
    assert M.clisi_score(noise)[0] < 0.5


def test_kbet_needs_two_levels_and_enough_wells():
    p = make_screen(n_plates=2, n_perts=40)  # 4 wells per perturbation: below kBET's 10
    with pytest.raises(M.MetricUnavailable, match="10\\+ wells"):
        M.kbet_score(p)


def test_chunked_average_precision_equals_one_call():
    p = make_screen(n_plates=3, n_perts=20, signal=1.0, seed=4)
    meta = pd.DataFrame({"pert": p.perturbation.astype(str), "well": p.well, "plate": p.plate})
    query = ~p.negative_mask
    args = (meta, p.X, ["pert"], ["well"], ["plate"], ["pert"])
    whole = M.chunked_average_precision(*args, query=query)
    chunked = M.chunked_average_precision(*args, query=query, max_pairs=500)
    np.testing.assert_allclose(chunked["average_precision"], whole["average_precision"])
    np.testing.assert_array_equal(chunked["n_total_pairs"], whole["n_total_pairs"])


def test_nonrep_map_strong_vs_none():
    strong = make_screen(n_plates=3, n_perts=20, signal=5.0)
    tab = M.phenotypic_distinctness(strong, null_size=NULL)
    assert tab["mean_average_precision"].mean() > 0.9 and len(tab) == 20
    noise = emb_of(strong, np.random.default_rng(0).normal(size=(strong.n_wells, 20)))
    assert M.phenotypic_distinctness(noise, null_size=NULL)["mean_average_precision"].mean() < 0.3


def test_same_position_test_detects_position_signature():
    p = make_screen(n_plates=4, n_perts=20)
    clean, n, _ = M.same_position_test(p, null_size=NULL)
    assert clean > 0.85 and n == 16  # 16 control positions (columns 1 and 12)
    position_effect = np.random.default_rng(1).normal(size=(96, 20)) * 3  # one offset per well position
    Z = p.X + position_effect[p.row * 12 + p.col]
    bad, _, note = M.same_position_test(emb_of(p, Z), null_size=NULL)
    assert bad < 0.2 and "mAP" in note


def test_map_missing_with_reason_when_no_different_well_replicates():
    p = make_screen(n_plates=2, n_perts=80)
    meta = p.meta.copy()
    trt = ~p.negative_mask
    meta.loc[trt, "Metadata_pert"] = "cmp_" + meta.loc[trt, "Metadata_Well"]  # same layout on both plates
    same = p.replace(meta=meta)
    with pytest.raises(M.MetricUnavailable, match="two or more well positions"):
        M.phenotypic_distinctness(same, null_size=NULL)
    with pytest.raises(M.MetricUnavailable, match="well positions"):
        M.phenotypic_activity(same, null_size=NULL)
    assert len(M.phenotypic_activity(same, null_size=NULL, replicates_in_different_wells=False)) > 0
