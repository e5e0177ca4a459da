"""Metrics on constructed cases with known answers, copairs against brute force, missing stays missing."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from cpdistiller_core import metrics as M
from cpdistiller_core.errors import CpDistillerError
from cpdistiller_core.profiles import Embedding, Profiles, Roles

NULL = 500  # small copairs null: fast, p-values still resolve well below 0.05


def make_screen(n_plates: int = 2, n_perts: int = 40, dim: int = 20, signal: float = 3.0, row_effect: float = 0.0,
                noise: float = 1.0, seed: int = 0, annotation: bool = True, batch: bool = True) -> Profiles:
    """A 96-well screen: columns 1 and 12 negative controls, other wells perturbations in shuffled
    positions per plate; each perturbation has a random centroid (scaled by ``signal``)."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_plates):
        wells = [(r, c) for r in range(8) for c in range(12)]
        trt = [w for w in wells if w[1] not in (0, 11)]
        perts = [f"cmp{i % n_perts}" for i in range(len(trt))]
        rng.shuffle(perts)
        lookup = dict(zip(trt, perts))
        for r, c in wells:
            ctrl = c in (0, 11)
            pert = "DMSO" if ctrl else lookup[(r, c)]
            rows.append({"Metadata_Plate": f"P{p}", "Metadata_Well": f"{chr(65 + r)}{c + 1:02d}",
                         "Metadata_Batch": f"B{p % 2}", "Metadata_pert": pert,
                         "Metadata_type": "negcon" if ctrl else "trt",
                         "Metadata_moa": None if ctrl else f"moa{int(pert[3:]) % 5}"})
    meta = pd.DataFrame(rows)
    centroids = {f"cmp{i}": rng.normal(size=dim) * signal for i in range(n_perts)}
    centroids["DMSO"] = np.zeros(dim)
    X = np.stack([centroids[p] for p in meta["Metadata_pert"]]) + rng.normal(size=(len(meta), dim)) * noise
    row = meta["Metadata_Well"].str[0].map(ord).to_numpy() - 65
    X += np.outer(row - 3.5, rng.normal(size=dim)) * row_effect
    roles = Roles(plate="Metadata_Plate", well="Metadata_Well", batch="Metadata_Batch" if batch else None,
                  perturbation="Metadata_pert", control="Metadata_type", negative_values=("negcon",),
                  annotation="Metadata_moa" if annotation else None)
    return Profiles(meta=meta, X=X, features=[f"f{i}" for i in range(dim)], roles=roles)


def emb_of(p: Profiles, Z: np.ndarray, method: str = "test") -> Embedding:
    return Embedding.from_profiles(p, Z, method=method)


@pytest.fixture(scope="module")
def screen() -> Profiles:
    return make_screen()


# ------------------------------------------------------------------ technical metrics
def test_asw_mixed_labels_near_one_separated_near_zero():
    big = make_screen(n_plates=16, n_perts=10)
    rng = np.random.default_rng(1)
    # perfectly mixed: four tight clusters, each holding every row equally often -> |silhouette| ~ 0
    cluster = np.arange(big.n_wells) % 4
    mixed = emb_of(big, np.eye(4)[cluster] * 10 + rng.normal(size=(big.n_wells, 4)) * 0.01)
    score, n = M.asw_effect(mixed, "row")
    assert score > 0.95 and n == int(big.negative_mask.sum())
    # each row its own tight, orthogonal cluster -> silhouette ~ 1 -> score ~ 0
    Z = np.eye(8)[big.row] * 10 + rng.normal(size=(big.n_wells, 8)) * 0.01
    score, _ = M.asw_effect(emb_of(big, Z), "row")
    assert score < 0.05


def test_asw_per_perturbation_groups():
    p = make_screen(n_perts=10)
    Z = np.eye(8)[p.row] * 10 + np.random.default_rng(0).normal(size=(p.n_wells, 8)) * 0.01
    score, n = M.asw_effect(emb_of(p, Z), "row", groups="perturbation")
    assert score < 0.05 and n > p.negative_mask.sum()


def test_leakage_of_embedding_copying_labels_is_full(screen):
    rng = np.random.default_rng(2)
    copy = emb_of(screen, np.eye(12)[screen.col] + rng.normal(size=(screen.n_wells, 12)) * 0.01)
    # negative controls are in columns 1 and 12 only: two classes, perfectly predictable
    score, n = M.classifier_leakage(copy, "column")
    assert score < 0.05
    row_copy = emb_of(screen, np.eye(8)[screen.row] + rng.normal(size=(screen.n_wells, 8)) * 0.01)
    assert M.classifier_leakage(row_copy, "row")[0] < 0.05
    random = emb_of(screen, rng.normal(size=(screen.n_wells, 8)))
    assert M.classifier_leakage(random, "row")[0] > 0.6


def test_variance_score_copy_vs_random(screen):
    rng = np.random.default_rng(3)
    copy = emb_of(screen, np.eye(8)[screen.row] * 5 + rng.normal(size=(screen.n_wells, 8)) * 0.01)
    assert M.variance_explained_score(copy, "row")[0] < 0.01
    random = emb_of(screen, rng.normal(size=(screen.n_wells, 8)))
    assert M.variance_explained_score(random, "row")[0] > 0.9


def test_graph_connectivity_separated_vs_scattered(screen):
    rng = np.random.default_rng(4)
    pert = screen.perturbation
    codes = pd.factorize(pert)[0]
    clustered = np.eye(codes.max() + 1)[codes] * 10 + rng.normal(size=(screen.n_wells, codes.max() + 1)) * 0.01
    score, n_labels = M.graph_connectivity(emb_of(screen, clustered), k=5)
    assert score == pytest.approx(1.0) and n_labels == len(set(pert))
    scattered, _ = M.graph_connectivity(emb_of(screen, rng.normal(size=(screen.n_wells, 30))), k=5)
    assert scattered < 0.8


# ------------------------------------------------------------------ copairs mAP
def brute_force_activity(emb: Profiles, different_wells: bool = True) -> pd.Series:
    """Per-perturbation mAP computed by hand: each replicate well ranks the other replicates (in other
    well positions) and all negative controls by cosine similarity."""
    Z = emb.X / np.linalg.norm(emb.X, axis=1, keepdims=True)
    neg = np.flatnonzero(emb.negative_mask)
    pert, well = emb.perturbation, emb.well
    out = {}
    for p in pd.unique(pert[~emb.negative_mask]):
        idx = np.flatnonzero(pert == p)
        aps = []
        for i in idx:
            pos = [j for j in idx if j != i and (not different_wells or well[j] != well[i])]
            if not pos:
                continue
            cand = np.array(pos + list(neg))
            rel = np.array([1] * len(pos) + [0] * len(neg))
            order = np.argsort(-(Z[cand] @ Z[i]), kind="stable")
            rel = rel[order]
            hits = np.cumsum(rel)
            ranks = np.arange(1, len(rel) + 1)
            aps.append(float(np.mean((hits / ranks)[rel == 1])))
        if aps:
            out[p] = float(np.mean(aps))
    return pd.Series(out)


def test_copairs_activity_matches_brute_force():
    small = make_screen(n_plates=2, n_perts=30, signal=0.7, seed=5)
    rng = np.random.default_rng(6)
    emb = emb_of(small, small.X + rng.normal(size=small.X.shape) * 0.1)
    act = M.phenotypic_activity(emb, null_size=NULL).set_index("perturbation")
    brute = brute_force_activity(emb)
    assert set(act.index) == set(brute.index)
    np.testing.assert_allclose(act.loc[brute.index, "mean_average_precision"], brute, atol=1e-6)
    assert {"p_value", "corrected_p_value", "below_corrected_p", "n_replicates"} <= set(act.columns)
    assert (act["n_replicates"] >= 2).all()
    assert act.attrs["negatives"] == "all"
    same_plate = M.phenotypic_activity(emb, null_size=NULL, negatives="same_plate")
    assert same_plate.attrs["negatives"] == "same_plate"
    auto = M.phenotypic_activity(emb, null_size=NULL, max_negative_pairs=10)  # too many pairs: per plate
    assert auto.attrs["negatives"] == "same_plate"
    np.testing.assert_allclose(auto.set_index("perturbation")["mean_average_precision"],
                               same_plate.set_index("perturbation")["mean_average_precision"])


def test_random_embedding_low_map_and_near_zero_retrieval(screen):
    rng = np.random.default_rng(7)
    random = emb_of(screen, rng.normal(size=(screen.n_wells, 20)))
    act = M.phenotypic_activity(random, null_size=NULL)
    n_neg = screen.negative_mask.sum()
    assert act["mean_average_precision"].mean() < 0.25  # chance level: ~ replicates / (replicates + n_neg)
    assert act["below_corrected_p"].mean() < 0.1
    strong = M.phenotypic_activity(screen, null_size=NULL)
    assert strong["mean_average_precision"].mean() > 0.9 and strong["below_corrected_p"].mean() > 0.9
    assert n_neg == 32
    pairs = M.pairs_from_annotation(screen)
    frac, table = M.fraction_retrieved(random, pairs)
    assert frac < 0.15 and table["found"].all()


def test_fraction_retrieved_known_pairs():
    p = make_screen(n_perts=40, signal=3.0, seed=8)
    # make cmp0..cmp9 twins of cmp10..cmp19 (same centroid): those pairs must be retrieved
    X = p.X.copy()
    pert = p.perturbation
    for i in range(10):
        a, b = pert == f"cmp{i}", pert == f"cmp{i + 10}"
        X[b] = X[a].mean(axis=0) + np.random.default_rng(i).normal(size=(b.sum(), X.shape[1])) * 0.1
    emb = emb_of(p, X)
    pairs = pd.DataFrame({"a": [f"cmp{i}" for i in range(10)] + ["nope"],
                          "b": [f"cmp{i + 10}" for i in range(10)] + ["cmp1"]})
    frac, table = M.fraction_retrieved(emb, pairs)
    assert frac == 1.0
    assert table["found"].tolist() == [True] * 10 + [False]
    assert math.isnan(table["cosine_similarity"].iloc[-1])
    assert table.attrs["null_size"] == 10 * 10 - 10  # cross null: a-side x b-side minus the true pairs
    frac_u, table_u = M.fraction_retrieved(emb, pairs, null="union")
    assert frac_u == 1.0 and table_u.attrs["null_size"] == 20 * 19 // 2 - 10
    with pytest.raises(M.MetricUnavailable):
        M.fraction_retrieved(emb, pd.DataFrame({"a": ["x"], "b": ["y"]}))
    with pytest.raises(CpDistillerError):
        M.fraction_retrieved(emb, pd.DataFrame({"left": ["x"]}))


def test_consistency_map_detects_shared_annotation():
    p = make_screen(n_perts=40, signal=1.0, seed=9)
    # perturbations sharing a MOA share a centroid -> high consistency; shuffled MOA -> low
    moa = p.meta["Metadata_moa"]
    cent = {m: np.random.default_rng(k).normal(size=p.n_features) * 4 for k, m in enumerate(moa.dropna().unique())}
    X = p.X + np.stack([cent.get(m, np.zeros(p.n_features)) if isinstance(m, str) else np.zeros(p.n_features)
                        for m in moa])
    good = M.phenotypic_consistency(emb_of(p, X), null_size=NULL)
    assert good["mean_average_precision"].mean() > 0.8 and good["below_corrected_p"].all()
    assert (good["n_perturbations"] == 8).all()
    rand = M.phenotypic_consistency(emb_of(p, np.random.default_rng(0).normal(size=X.shape)), null_size=NULL)
    assert rand["mean_average_precision"].mean() < 0.4


def test_knn_overlap_identity_and_random(screen):
    assert M.knn_overlap(screen, screen, k=10, standardize_truth=False)[0] == pytest.approx(1.0)
    z = (screen.X - screen.X.mean(axis=0)) / screen.X.std(axis=0)
    assert M.knn_overlap(emb_of(screen, z), screen, k=10)[0] == pytest.approx(1.0)  # truth is z-scored
    random = emb_of(screen, np.random.default_rng(0).normal(size=(screen.n_wells, 20)))
    assert M.knn_overlap(random, screen, k=10)[0] < 0.2


def test_pasw_and_leiden(screen):
    assert M.perturbation_asw(screen)[0] > 0.6
    res = M.leiden_nmi_ari(screen, resolutions=(0.5, 1.0))
    assert 0 <= res["nmi"] <= 1 and 0 <= res["ari"] <= 1 and res["n"] == (~screen.negative_mask).sum()
    random = emb_of(screen, np.random.default_rng(0).normal(size=(screen.n_wells, 20)))
    assert M.perturbation_asw(random)[0] < 0.55


# ------------------------------------------------------------------ missing stays missing; scorecard
def test_missing_metrics_stay_missing():
    p = make_screen(n_plates=1, annotation=False, batch=False)
    no_ctrl = p.replace(roles=Roles(plate="Metadata_Plate", well="Metadata_Well", perturbation="Metadata_pert"))
    card = M.evaluate(no_ctrl, config=M.EvaluationConfig(null_size=NULL))
    s = card.scores.set_index(["metric", "effect"])
    for key in [("asw", "batch"), ("asw", "plate"), ("variance", "row"), ("leakage", "column"),
                ("activity_map", ""), ("activity_fraction", ""), ("consistency_map", ""), ("nmi", "annotation"),
                ("ari", "annotation"), ("silhouette_batch", "batch"), ("kbet", "batch"), ("ilisi", "batch"),
                ("same_position", ""), ("control_collapse", ""), ("neighbor_preservation", "")]:
        assert math.isnan(s.loc[key, "value"]), key
        assert s.loc[key, "note"].startswith("missing:"), key
    assert "no batch column" in s.loc[("asw", "batch"), "note"]
    assert "negative controls" in s.loc[("activity_map", ""), "note"]
    assert "single plate" in s.loc[("kbet", "batch"), "note"]
    assert "baseline" in s.loc[("neighbor_preservation", ""), "note"]
    # aggregates over what is available, and say how many
    tech = s.loc[("technical", "")]
    assert tech["n"] == 1 and "1 of 4" in tech["note"]  # only graph connectivity
    bio = s.loc[("biological", "")]
    available = {k for k, v in s.loc[s["category"] == M.BIOLOGICAL, "value"].items() if not math.isnan(v)}
    assert available == {("clisi", ""), ("nonrep_map", ""), ("nmi", "perturbation"), ("ari", "perturbation"),
                         ("pasw", "")}
    assert bio["n"] == 5 and "5 of 6" in bio["note"]
    assert s.loc[("overall", ""), "value"] == pytest.approx(0.4 * tech["value"] + 0.6 * bio["value"])
    assert "missing" in card.format()


def test_overall_missing_without_technical():
    p = make_screen(n_plates=1, batch=False)
    card = M.evaluate(p, config=M.EvaluationConfig(effects=("plate",), null_size=NULL))
    s = card.scores.set_index(["metric", "effect"])
    assert math.isnan(s.loc[("asw", "plate"), "value"])
    with pytest.raises(M.MetricUnavailable):
        M.asw_effect(p, "plate")


def test_scorecard_tables_and_aggregates(screen):
    pairs = {"moa": M.pairs_from_annotation(screen)}
    a = M.evaluate(screen, method="raw", truth=screen, pairs=pairs, baseline=screen,
                   config=M.EvaluationConfig(null_size=NULL))
    rng = np.random.default_rng(0)
    b = M.evaluate(emb_of(screen, rng.normal(size=(screen.n_wells, 20)), "noise"), truth=screen,
                   config=M.EvaluationConfig(null_size=NULL))
    card = M.Scorecard.concat([a, b])
    assert list(card.scores.columns) == M.SCORE_COLUMNS
    vals = card.scores["value"].dropna()
    assert ((vals >= 0) & (vals <= 1)).all()
    wide = card.wide()
    assert list(wide.index) == ["raw", "noise"]
    assert list(wide.columns[:4]) == ["technical", "biological", "overall", "position"]
    assert "asw[row]" in wide.columns and "fraction_retrieved[moa]" in wide.columns
    assert math.isnan(wide.loc["noise", "fraction_retrieved[moa]"])  # not requested for noise
    raw = card.scores[(card.scores["method"] == "raw") & (card.scores["category"] == "biological")]
    assert wide.loc["raw", "biological"] == pytest.approx(raw["value"].mean())
    assert wide.loc["raw", "biological"] > wide.loc["noise", "biological"]
    assert wide.loc["raw", "knn_overlap[truth]"] > 0.7 > wide.loc["noise", "knn_overlap[truth]"]
    summary = card.summary()
    assert {"technical", "biological", "overall", "n_technical", "n_biological"} <= set(summary.columns)
    assert "activity" in card.details["raw"]
    text = card.format()
    assert "== raw" in text and "== noise" in text
    missing = [line.split()[1] for line in text.split("== noise")[0].splitlines() if "missing" in line]
    assert missing == ["kbet[batch]"], missing  # 4 wells per perturbation: below kBET's 10
    assert wide.loc["raw", "neighbor_preservation"] == pytest.approx(1.0)


def test_technical_metrics_within_perturbations():
    p = make_screen(n_plates=4, n_perts=10, seed=11)
    rng = np.random.default_rng(0)
    codes = pd.factorize(p.perturbation)[0]
    # perturbation identity plus the row: within perturbations only the row varies
    copy = emb_of(p, np.hstack([np.eye(codes.max() + 1)[codes] * 5, np.eye(8)[p.row]])
                  + rng.normal(size=(p.n_wells, codes.max() + 9)) * 0.01)
    assert M.variance_explained_score(copy, "row", groups="perturbation")[0] < 0.01
    assert M.classifier_leakage(copy, "row", groups="perturbation")[0] < 0.05
    # perturbation identity plus noise: no row left once perturbation means are removed
    clean = emb_of(p, np.hstack([np.eye(codes.max() + 1)[codes] * 5, rng.normal(size=(p.n_wells, 8))]))
    n_trt = int((~p.negative_mask).sum())
    score, n = M.variance_explained_score(clean, "row", groups="perturbation")
    assert score > 0.9 and n == n_trt
    assert M.classifier_leakage(clean, "row", groups="perturbation")[0] > 0.6
    card = M.evaluate(copy, config=M.EvaluationConfig(effects=("row",), null_size=NULL, treatment_technical=True))
    s = card.scores.set_index(["metric", "effect"])
    assert s.loc[("variance_trt", "row"), "category"] == M.POSITION
    assert s.loc[("position", ""), "n"] == 8  # 6 row metrics + same-position test + control collapse


def test_within_perturbation_metrics_missing_when_layout_repeats():
    p = make_screen(n_plates=2, n_perts=80, seed=12)  # 80 perturbations in 80 wells: one well per plate
    same = p.meta.groupby("Metadata_pert")["Metadata_Well"].nunique()
    p = p.subset(np.isin(p.perturbation, same.index[same == 1].tolist() + ["DMSO"]))
    assert (~p.negative_mask).sum() > 0
    with pytest.raises(M.MetricUnavailable, match="two or more row levels"):
        M.variance_explained_score(p, "row", groups="perturbation")
    with pytest.raises(M.MetricUnavailable):
        M.classifier_leakage(p, "row", groups="perturbation")
