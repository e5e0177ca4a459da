"""The demo screen: technical effects where they belong, biology in the truth, determinism, GMT."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from cpdistiller_core.datasets import (
    GENE_GROUPS,
    GMT_PATH,
    demo_gene_sets,
    demo_profiles,
    gene_sets,
    gmt_text,
    load_demo,
    make_demo_screen,
    read_gmt,
)
from cpdistiller_core.io import detect_roles
from cpdistiller_core.profiles import NEGATIVE, POSITIVE


@pytest.fixture(scope="module")
def screen():
    return make_demo_screen(seed=0)


def _negcon_z(p):
    """Negative controls standardised per feature, each plate centred (isolates well position)."""
    neg = p.negative_mask
    X = p.X[neg].astype(np.float64)
    Z = (X - X.mean(0)) / X.std(0)
    Z = Z - pd.DataFrame(Z).groupby(p.plate[neg]).transform("mean").to_numpy()
    return Z, p.row[neg], p.col[neg]


def _explained(Z: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of the (centred) variance explained by group means."""
    Z = Z - Z.mean(0)
    means = pd.DataFrame(Z).groupby(labels).transform("mean").to_numpy()
    return float((means**2).sum() / (Z**2).sum())


def _distance_by_offset(Z: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    M = pd.DataFrame(Z).groupby(labels).mean().reindex(range(n)).to_numpy()
    return np.array([np.mean(np.linalg.norm(M[k:] - M[:-k], axis=1)) for k in range(1, n)])


def test_shape_metadata_and_roles(screen):
    p, t = screen.profiles, screen.truth
    assert p.n_wells == 3 * 4 * 384 and p.n_features == 300 and p.geometry.n_wells == 384
    assert p.meta is t.meta and p.features == t.features
    for col in ("Metadata_Batch", "Metadata_Plate", "Metadata_Well", "Metadata_pert_iname", "Metadata_Symbol",
                "Metadata_pert_type", "Metadata_target", "Metadata_pathway", "Metadata_Count_Cells"):
        assert col in p.meta.columns
    assert set(p.meta["Metadata_pert_type"]) == {"negcon", "poscon", "trt"}
    assert (p.control == NEGATIVE).sum() > 0 and (p.control == POSITIVE).sum() > 0
    assert len(np.unique(p.batch)) == 3 and len(np.unique(p.plate)) == 12
    # realistic CellProfiler names across compartments, channels and feature families
    for prefix in ("Cells_AreaShape_", "Nuclei_Intensity_", "Cytoplasm_Texture_", "_Granularity_",
                   "_RadialDistribution_", "_Correlation_"):
        assert any(prefix in f for f in p.features), prefix
    assert any(f.endswith("_Mito_3_00_256") for f in p.features)
    # io's auto-detection (pycytominer/JUMP names) finds the same roles, apart from the annotation,
    # where it prefers the gene-symbol column
    auto = detect_roles(p.meta)
    for role in ("plate", "well", "batch", "perturbation", "control"):
        assert getattr(auto, role) == getattr(p.roles, role), role
    assert auto.negative_values == ("negcon",)
    # compounds: pipe-separated real targets; genes from the shipped groups
    cpd = p.meta[p.meta["Metadata_modality"] == "compound"]
    assert cpd["Metadata_target"].str.contains("|", regex=False).any()
    genes = set(p.meta.loc[p.meta["Metadata_modality"] == "crispr", "Metadata_Symbol"].dropna())
    assert genes == {g for grp in GENE_GROUPS.values() for g in grp.genes}
    # negative controls on edge wells too; replicates of every treatment
    neg = p.negative_mask
    assert ((p.row[neg] == 0) | (p.row[neg] == 15) | (p.col[neg] == 0) | (p.col[neg] == 23)).sum() > 20
    reps = p.meta.loc[p.control == "treatment", "Metadata_pert_iname"].value_counts()
    assert reps.min() >= 3
    # plates share layouts, as real screens do, but not all the same
    maps = p.meta.groupby("Metadata_Plate")["Metadata_plate_map_name"].first()
    assert 1 < maps.nunique() < len(maps)
    assert p.meta["Metadata_Count_Cells"].between(100, 20000).all()


def test_row_and_column_effects_present_and_monotone(screen):
    Z, row, col = _negcon_z(screen.profiles)
    chance_row, chance_col = 15 / len(Z), 23 / len(Z)
    assert _explained(Z, row) > 4 * chance_row
    assert _explained(Z, col) > 4 * chance_col
    d_row = _distance_by_offset(Z, row, 16)
    d_col = _distance_by_offset(Z, col, 24)
    assert spearmanr(np.arange(15), d_row)[0] > 0.9 and d_row[-1] > 2 * d_row[0]
    assert spearmanr(np.arange(23), d_col)[0] > 0.9 and d_col[-1] > 2 * d_col[0]


def test_truth_is_free_of_position_and_batch_effects(screen):
    Z, row, col = _negcon_z(screen.truth)
    assert _explained(Z, row) < 2 * 15 / len(Z)
    assert _explained(Z, col) < 2 * 23 / len(Z)
    assert abs(spearmanr(np.arange(15), _distance_by_offset(Z, row, 16))[0]) < 0.6
    for p, low in ((screen.truth, True), (screen.profiles, False)):
        neg = p.negative_mask
        X = p.X[neg].astype(np.float64)
        Zb = (X - X.mean(0)) / X.std(0)
        frac = _explained(Zb, p.batch[neg])
        assert (frac < 0.02) if low else (frac > 0.05)


def test_same_group_genes_are_closer_in_truth(screen):
    t = screen.truth
    neg = t.negative_mask
    Z = (t.X - t.X[neg].mean(0)) / t.X[neg].std(0)
    crispr = (t.meta["Metadata_modality"] == "crispr").to_numpy() & (t.control == "treatment")
    means = pd.DataFrame(Z[crispr]).groupby(t.meta["Metadata_Symbol"].to_numpy()[crispr]).mean()
    table = screen.perturbations.set_index("perturbation")
    active = table.loc[means.index, "active"].to_numpy(bool)
    group = table.loc[means.index, "pathway"].to_numpy()[active]
    M = means.to_numpy()[active]
    M /= np.linalg.norm(M, axis=1, keepdims=True)
    C = M @ M.T
    same = (group[:, None] == group[None]) & ~np.eye(len(M), dtype=bool)
    assert C[same].mean() > C[group[:, None] != group[None]].mean() + 0.2
    # inactive (olfactory) genes look like negative controls; active genes do not
    norms = np.linalg.norm(means.to_numpy(), axis=1)
    assert norms[~active].max() < np.median(norms[active])
    # compounds resemble their targets' group
    cpd = t.meta["Metadata_pert_iname"].to_numpy() == "bortezomib"
    prot = np.isin(t.meta["Metadata_Symbol"].to_numpy(), GENE_GROUPS["PROTEASOME"].genes)
    ribo = np.isin(t.meta["Metadata_Symbol"].to_numpy(), GENE_GROUPS["CYTOSOLIC_RIBOSOME"].genes)
    v, a, b = Z[cpd].mean(0), Z[prot].mean(0), Z[ribo].mean(0)
    assert v @ a / np.linalg.norm(a) > v @ b / np.linalg.norm(b)


def test_deterministic_by_seed():
    a, b, c = make_demo_screen(seed=3, n_batches=2, plates_per_batch=2), \
        make_demo_screen(seed=3, n_batches=2, plates_per_batch=2), make_demo_screen(seed=4, n_batches=2,
                                                                                    plates_per_batch=2)
    assert np.array_equal(a.profiles.X, b.profiles.X) and np.array_equal(a.truth.X, b.truth.X)
    pd.testing.assert_frame_equal(a.profiles.meta, b.profiles.meta)
    assert not np.allclose(a.profiles.X, c.profiles.X)
    assert a.profiles.features == c.profiles.features  # the feature set depends on n_features only


def test_sizes_and_switches():
    s = make_demo_screen(seed=1, n_batches=1, plates_per_batch=2, n_features=120, row_effect=0, column_effect=0,
                         edge_effect=0, batch_effect=0, plate_effect=0)
    assert s.profiles.n_features == 120 and s.profiles.n_wells == 768
    # with every technical effect off, measured equals truth
    np.testing.assert_allclose(s.profiles.X, s.truth.X, rtol=1e-5)


def test_gmt_matches_definitions():
    assert GMT_PATH.read_text(encoding="utf-8") == gmt_text()
    assert demo_gene_sets() == gene_sets() == read_gmt(GMT_PATH)
    for line in GMT_PATH.read_text().splitlines():
        assert line.split("\t")[1].startswith("cpDistiller demo subset")
    assert sum(len(v) for v in demo_gene_sets().values()) >= 80


def test_load_demo_is_cached():
    assert load_demo() is load_demo()
    assert demo_profiles() is load_demo().profiles and demo_profiles(truth=True) is load_demo().truth


@pytest.mark.parametrize("fraction", [0.05, 0.25, 0.5])
def test_negcon_fraction_sets_the_share_of_controls(fraction):
    s = make_demo_screen(n_batches=2, plates_per_batch=2, n_features=40, negcon_fraction=fraction)
    p = s.profiles
    assert p.negative_mask.mean() == pytest.approx(fraction, abs=0.5 / 384)
    trt = s.perturbations.loc[s.perturbations.pert_type == "trt", "perturbation"]
    present = set(p.meta["Metadata_pert_iname"])
    if fraction <= 0.1:  # the whole library fits each plate
        assert set(trt) <= present
    else:  # plate maps carry different slices of the library, each treatment replicated
        counts = p.meta.loc[p.meta["Metadata_pert_type"] == "trt", "Metadata_pert_iname"].value_counts()
        assert len(counts) > 0.5 * len(trt) and counts.min() >= 3
    np.testing.assert_array_equal(s.truth.meta["Metadata_Well"], p.meta["Metadata_Well"])


def test_locked_layout_puts_each_perturbation_at_one_position():
    s = make_demo_screen(n_batches=2, plates_per_batch=2, n_features=40, n_layouts=1)
    maps = s.profiles.meta.groupby("Metadata_Plate")["Metadata_pert_iname"].apply(list)
    assert all(m == maps.iloc[0] for m in maps)


def _share_of_replicate_pairs_in_one_row(profiles) -> float:
    meta = profiles.meta[profiles.meta["Metadata_pert_type"] == "trt"]
    same = total = 0
    for _, wells in meta.groupby(["Metadata_Plate", "Metadata_pert_iname"]):
        rows = wells["Metadata_Well"].str[0].value_counts().to_numpy()
        same += (rows * (rows - 1) // 2).sum()
        total += len(wells) * (len(wells) - 1) // 2
    return same / total


@pytest.mark.parametrize("fraction", [None, 0.25])
def test_replicates_in_row_lays_a_treatments_wells_along_one_row(fraction):
    kw = dict(n_batches=1, plates_per_batch=2, n_features=40, negcon_fraction=fraction)
    in_row = make_demo_screen(replicates_in_row=True, **kw)
    assert _share_of_replicate_pairs_in_one_row(in_row.profiles) > 0.8
    assert _share_of_replicate_pairs_in_one_row(make_demo_screen(**kw).profiles) < 0.25
    # the same treatments and controls, only placed differently; the truth follows the wells
    plain = make_demo_screen(**kw).profiles.meta["Metadata_pert_iname"].value_counts().sort_index()
    moved = in_row.profiles.meta["Metadata_pert_iname"].value_counts().sort_index()
    pd.testing.assert_series_equal(plain, moved)
    assert in_row.params["replicates_in_row"] is True
    np.testing.assert_array_equal(in_row.truth.meta["Metadata_Well"], in_row.profiles.meta["Metadata_Well"])


def test_dose_by_column_sets_each_treated_wells_dose_and_scales_its_effect_in_the_truth():
    from cpdistiller_core.layout import covariate_ties

    kw = dict(n_batches=1, plates_per_batch=2, n_features=40, replicates_in_row=True)
    plain, dosed = make_demo_screen(**kw), make_demo_screen(dose_by_column=True, **kw)
    assert "Metadata_dose_uM" not in plain.profiles.meta and dosed.params["dose_by_column"] is True
    meta = dosed.profiles.meta
    treated = meta["Metadata_pert_type"].to_numpy() == "trt"
    dose = meta["Metadata_dose_uM"].to_numpy()
    assert np.isnan(dose[~treated]).all()
    expected = np.array([10.0, 3.0, 1.0])[(meta["Metadata_Column"].to_numpy() - 1) % 3]
    np.testing.assert_array_equal(dose[treated], expected[treated])
    # the truth: a treatment's distance from the negative controls shrinks with its dose
    truth = dosed.truth
    controls = truth.X[truth.negative_mask]
    dist = np.linalg.norm((truth.X - controls.mean(axis=0)) / controls.std(axis=0), axis=1)
    by_dose = pd.Series(dist[treated]).groupby(dose[treated]).mean()
    assert by_dose[10.0] > by_dose[3.0] > by_dose[1.0]
    # the placement and the noise are those of the same screen without doses
    np.testing.assert_array_equal(meta["Metadata_pert_iname"], plain.profiles.meta["Metadata_pert_iname"])
    assert covariate_ties(dosed.profiles)["column"].column == "Metadata_dose_uM"
    assert covariate_ties(plain.profiles) == {}


def test_same_well_replicates_make_each_treated_well_a_perturbation_replicated_in_its_well_across_plates():
    from cpdistiller_core.layout import position_ties, tied_effects

    kw = dict(n_batches=1, plates_per_batch=3, n_features=40, n_layouts=1)
    plain, clones = make_demo_screen(**kw), make_demo_screen(same_well_replicates=True, **kw)
    assert clones.params["same_well_replicates"] is True
    np.testing.assert_array_equal(clones.profiles.X, plain.profiles.X)  # the same screen, renamed
    meta, before = clones.profiles.meta, plain.profiles.meta
    treated = meta["Metadata_pert_type"].to_numpy() == "trt"
    names = meta["Metadata_pert_iname"].astype(str)
    assert (names[~treated] == before["Metadata_pert_iname"][~treated]).all()
    assert names[treated].str.fullmatch(r".+_w\d+").all()
    # each clone sits in one well, once on every plate; the clones of a treatment keep its gene
    per_clone = meta[treated].groupby("Metadata_pert_iname")
    assert (per_clone["Metadata_Well"].nunique() == 1).all() and (per_clone.size() == 3).all()
    base = names[treated].str.replace(r"_w\d+$", "", regex=True)
    np.testing.assert_array_equal(base, before["Metadata_pert_iname"][treated].astype(str))
    np.testing.assert_array_equal(meta["Metadata_Symbol"], before["Metadata_Symbol"])
    # the layout ties row and column to the perturbations; without the renaming it ties neither
    assert set(tied_effects(position_ties(clones.profiles, ("row", "column")))) == {"row", "column"}
    assert tied_effects(position_ties(plain.profiles, ("row", "column"))) == {}
