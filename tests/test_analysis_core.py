"""Consensus profiles, the active screen and hierarchical clustering with permutation p-values."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cpdistiller_core import CpDistillerError, Profiles, Roles
from cpdistiller_core.analysis.active import active_screen, distances_to
from cpdistiller_core.analysis.clustering import (
    cluster_profiles,
    distance_matrix,
    gene_clusters,
    permutation_test,
)
from cpdistiller_core.analysis.consensus import consensus, select_type


def make_profiles(X: np.ndarray, perts: list[str], extra: dict[str, list] | None = None) -> Profiles:
    """Wells on 384-well plates; perturbation 'DMSO' is the negative control."""
    n = len(perts)
    wells = [f"{chr(65 + (i // 24) % 16)}{i % 24 + 1:02d}" for i in range(n)]
    meta = pd.DataFrame({"Metadata_Plate": [f"P{i // 384}" for i in range(n)], "Metadata_Well": wells,
                         "Metadata_pert": perts, "Metadata_batch": ["b1" if i % 2 else "b2" for i in range(n)]})
    for k, v in (extra or {}).items():
        meta[k] = v
    roles = Roles(plate="Metadata_Plate", well="Metadata_Well", perturbation="Metadata_pert",
                  control="Metadata_pert", negative_values=("DMSO",), batch="Metadata_batch")
    return Profiles(meta, X, [f"f{j}" for j in range(X.shape[1])], roles)


def test_consensus_median_mean_per_batch_and_by():
    X = np.array([[1, 0], [3, 0], [5, 0], [0, 1], [0, 3], [10, 10]], dtype=float)
    p = make_profiles(X, ["a", "a", "a", "b", "b", "DMSO"], {"gene": ["G1", "G1", "G1", "G1", "G2", None]})
    med = consensus(p)
    row = dict(zip(med.table["perturbation"], med.X.tolist()))
    assert row["a"] == [3, 0] and row["b"] == [0, 2]
    assert dict(zip(med.table["perturbation"], med.table["n_wells"])) == {"a": 3, "b": 2, "DMSO": 1}
    assert med.negative_mask.tolist() == [False, False, True]
    mean = consensus(p, aggregate="mean")
    assert np.allclose(mean.X[0], [3, 0])
    per_batch = consensus(p, per_batch=True)
    assert len(per_batch) == 5  # a@b2, a@b1, b@b1, b@b2, DMSO@b1
    assert "a @ b1" in set(per_batch.labels)
    by_gene = consensus(p, by="gene", aggregate="mean")
    genes = dict(zip(by_gene.table["perturbation"], by_gene.X.tolist()))
    assert genes["G1"] == [2.25, 0.25] and genes["G2"] == [0, 3]
    assert "DMSO" in genes  # controls keep their own label
    with pytest.raises(CpDistillerError):
        consensus(p, aggregate="mode")


def test_select_type_keeps_controls():
    X = np.zeros((4, 2))
    p = make_profiles(X, ["a", "b", "DMSO", "DMSO"], {"type": ["orf", "compound", "control", "control"]})
    sub = select_type(p, "type", ["orf"])
    assert sorted(sub.perturbation) == ["DMSO", "DMSO", "a"]
    # controls labelled with a type: only those of the chosen type
    q = make_profiles(np.zeros((5, 2)), ["a", "b", "DMSO", "DMSO", "DMSO"],
                      {"type": ["crispr", "compound", "crispr", "compound", "compound"]})
    assert list(select_type(q, "type", ["crispr"]).meta["type"]) == ["crispr", "crispr"]
    assert sorted(select_type(q, "type", ["compound"]).perturbation) == ["DMSO", "DMSO", "b"]
    with pytest.raises(CpDistillerError, match="no wells"):
        select_type(p, "type", ["crispr"])


def test_active_screen_threshold_on_constructed_data():
    rng = np.random.default_rng(0)
    ctrl = rng.normal(size=(200, 5))
    # Perturbation distances from the origin (control centroid ~ 0): 0.1 (inactive) ... 20 (active)
    radii = {"weak": 0.1, "mid": 6.0, "strong": 20.0, "medium": 10.0}
    X = [ctrl]
    perts = ["DMSO"] * 200
    for name, r in radii.items():
        X.append(np.tile(np.r_[r, 0, 0, 0, 0], (3, 1)))
        perts += [name] * 3
    p = make_profiles(np.vstack(X), perts)
    cons = consensus(p)
    screen = active_screen(p, cons, top_n=2, null="wells")
    centre = ctrl.mean(axis=0)
    expected = np.percentile(np.linalg.norm(ctrl - centre, axis=1), 95)
    assert screen.threshold == pytest.approx(expected)
    t = screen.table.set_index("perturbation")
    assert t.loc["weak", "active"] == False  # noqa: E712
    assert t.loc[["mid", "strong", "medium"], "active"].all()
    assert list(screen.table["perturbation"][:3]) == ["strong", "medium", "mid"]
    assert list(screen.selected["perturbation"]) == ["strong", "medium"]  # top-N of the actives
    assert screen.n_active == 3
    assert "DMSO" not in set(screen.table["perturbation"])


def test_consensus_null_matches_replicate_averaging():
    rng = np.random.default_rng(2)
    d = 5
    X, perts = [rng.normal(size=(400, d))], ["DMSO"] * 400
    for i in range(40):  # inactive: wells drawn like the controls
        X.append(rng.normal(size=(4, d)))
        perts += [f"inactive{i}"] * 4
    for i in range(6):  # modest effect: below single-well noise, far above a 4-well consensus's
        X.append(rng.normal(size=(4, d)) + np.r_[2.6, 0, 0, 0, 0])
        perts += [f"active{i}"] * 4
    p = make_profiles(np.vstack(X), perts)
    cons = consensus(p)
    by_wells = active_screen(p, cons, null="wells").table.set_index("perturbation")["active"]
    by_cons = active_screen(p, cons, null="consensus", seed=1)
    act = by_cons.table.set_index("perturbation")["active"]
    assert by_cons.threshold < active_screen(p, cons, null="wells").threshold
    assert act[[f"active{i}" for i in range(6)]].all()
    assert act[[f"inactive{i}" for i in range(40)]].mean() <= 0.15  # ~5% false positives expected
    assert by_wells[[f"active{i}" for i in range(6)]].sum() <= 2  # the well-level null misses them
    assert len(by_cons.control_distances) == 1000
    with pytest.raises(CpDistillerError):
        active_screen(p, cons, null="plates")


def test_cosine_distance_helpers_agree_with_definition():
    X = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    assert np.allclose(distances_to(X, np.array([1.0, 0.0]), "cosine"), [0.0, 1.0, 1 - 1 / np.sqrt(2)])
    d = distance_matrix(X, "cosine")
    assert np.allclose(d, [1.0, 1 - 1 / np.sqrt(2), 1 - 1 / np.sqrt(2)])


def planted(seed: int = 1, n: int = 80, k: int = 8, d: int = 20):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    X[:k] = rng.normal(size=d) * 3 + 0.2 * rng.normal(size=(k, d))
    return X


@pytest.mark.parametrize("method", ["average", "complete", "single", "ward"])
def test_planted_cluster_is_significant(method):
    X = planted()
    res = cluster_profiles(X, [f"g{i}" for i in range(len(X))], method=method, n_clusters=6,
                           n_permutations=300, seed=0)
    planted_cluster = res.clusters[0]
    assert set(res.clusters[:8]) == {planted_cluster}  # the planted genes stay together
    row = res.table.set_index("cluster").loc[planted_cluster]
    assert row["p_value"] == pytest.approx(1 / 301)
    assert row["significant"]


def test_random_set_is_not_significant():
    from scipy.spatial.distance import squareform

    noise = np.random.default_rng(7).normal(size=(80, 20))
    square = squareform(distance_matrix(noise))
    rng = np.random.default_rng(3)
    p_random = np.array([permutation_test(square, rng.choice(80, 8, replace=False), "average", 200,
                                          np.random.default_rng(i))[1] for i in range(30)])
    # Random sets are exchangeable with the null: p-values are ~uniform, mostly not significant.
    assert 0.3 < p_random.mean() < 0.7
    assert (p_random < 0.05).sum() <= 4
    square = squareform(distance_matrix(planted()))
    obs, p_planted, rank = permutation_test(square, np.arange(8), "average", 200, np.random.default_rng(0))
    assert p_planted < 0.01 and rank == 1


def test_cut_by_height_and_errors():
    X = planted()
    labels = [f"g{i}" for i in range(len(X))]
    low = cluster_profiles(X, labels, height=1e-6, n_permutations=0)
    assert len(set(low.clusters)) == len(X)
    high = cluster_profiles(X, labels, height=1e6, n_permutations=0)
    assert len(set(high.clusters)) == 1
    # clusters are numbered left to right in dendrogram order
    order = high.leaf_order
    res = cluster_profiles(X, labels, n_clusters=5, n_permutations=0)
    seen = list(dict.fromkeys(res.clusters[order]))
    assert seen == sorted(seen)
    with pytest.raises(CpDistillerError):
        cluster_profiles(X, labels, method="centroid")
    with pytest.raises(CpDistillerError):
        cluster_profiles(np.full((4, 2), np.nan), list("abcd"))


def test_gene_clusters_pipeline_finds_planted_group():
    rng = np.random.default_rng(5)
    d = 10
    ctrl = rng.normal(size=(60, d))
    X, perts = [ctrl], ["DMSO"] * 60
    module = rng.normal(size=d) * 6
    for g in range(30):
        centre = module + rng.normal(size=d) * 0.3 if g < 6 else rng.normal(size=d) * 4
        X.append(centre + 0.3 * rng.normal(size=(2, d)))
        perts += [f"GENE{g}"] * 2
    p = make_profiles(np.vstack(X), perts)
    res = gene_clusters(p, top_n=20, n_clusters=4, n_permutations=200)
    assert len(res.clustering.labels) == 20
    assert res.X.shape == (20, d)
    module_genes = {f"GENE{g}" for g in range(6)}
    assert module_genes <= set(res.clustering.labels)
    cl = {res.clustering.clusters[res.clustering.labels.index(g)] for g in module_genes}
    assert len(cl) == 1
    row = res.clustering.table.set_index("cluster").loc[cl.pop()]
    assert row["significant"]
    assert len(res.background) == 30
    assert all(len(m) >= 2 for m in res.gene_lists().values())
