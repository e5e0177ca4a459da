"""The core Profiles object: well parsing, plate geometry, control status, precision, subsetting."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cpdistiller_core import CpDistillerError, Embedding, Profiles, Roles
from cpdistiller_core.layout import infer_geometry, parse_wells, row_letters


def _profiles(wells, ctl=None, X=None, **kw) -> Profiles:
    meta = pd.DataFrame({"P": ["p1"] * len(wells), "W": wells, "ctl": ctl or ["x"] * len(wells)})
    X = np.arange(len(wells) * 2, dtype=np.float64).reshape(-1, 2) if X is None else X
    roles = Roles(plate="P", well="W", control="ctl", negative_values=("DMSO",), positive_values=("pos",))
    return Profiles(meta, X, ["Cells_a", "Nuclei_b"], roles, source="t.csv", **kw)


@pytest.mark.parametrize("name, row, col", [("A01", 0, 0), ("A1", 0, 0), ("a01", 0, 0), ("P24", 15, 23),
                                            ("r03c04", 2, 3), ("R16C24", 15, 23), ("AF48", 31, 47)])
def test_well_formats(name, row, col):
    r, c = parse_wells(pd.Series([name]))
    assert (r[0], c[0]) == (row, col)


def test_unparseable_wells_name_file_column_and_rows():
    with pytest.raises(CpDistillerError, match=r"t\.csv, column 'W'.*'\?\?'.*row 1"):
        _profiles(["A01", "??", "B02"])


def test_geometry_is_inferred_and_checked():
    assert infer_geometry(np.array([7]), np.array([11])).n_wells == 96
    assert infer_geometry(np.array([14]), np.array([22])).n_wells == 384
    assert infer_geometry(np.array([31]), np.array([47])).n_wells == 1536
    with pytest.raises(CpDistillerError, match="outside a 96-well plate"):
        infer_geometry(np.array([9]), np.array([0]), declared=96)
    assert row_letters(26) == "AA" and row_letters(31) == "AF"


def test_standard_wells_and_control_status():
    p = _profiles(["a1", "B02", "r03c04"], ctl=["DMSO", "pos", "cpd"])
    assert list(p.well) == ["A01", "B02", "C04"]
    assert list(p.control) == ["negative", "positive", "treatment"]
    assert p.negative_mask.tolist() == [True, False, False]
    assert p.labels("row").tolist() == [0, 1, 2] and p.labels("col").tolist() == [0, 1, 3]


def test_float32_by_default_float64_only_on_request():
    assert _profiles(["A01", "A02"]).X.dtype == np.float32  # pandas' float64 is not kept by accident
    full = _profiles(["A01", "A02"], full_precision=True)
    assert full.X.dtype == np.float64
    assert full.with_features(full.X * 2, full.features).X.dtype == np.float64
    normalised = full.with_features(full.X.astype(np.float32), full.features)
    assert normalised.X.dtype == np.float32 and not normalised.full_precision
    # once float32, a later float64 matrix is stored as float32 again
    assert normalised.with_features(full.X, full.features).X.dtype == np.float32


def test_subset_keeps_metadata_and_order():
    p = _profiles(["A01", "A02", "A03"], ctl=["DMSO", "x", "DMSO"])
    sub = p.subset(rows=p.negative_mask, features=["Nuclei_b"])
    assert list(sub.meta.columns) == ["P", "W", "ctl"] and list(sub.well) == ["A01", "A03"]
    np.testing.assert_array_equal(sub.X[:, 0], p.X[p.negative_mask, 1])
    with pytest.raises(CpDistillerError, match="unknown feature"):
        p.subset(features=["Cells_zzz"])


def test_shape_mismatch_and_missing_role_column():
    with pytest.raises(CpDistillerError, match="does not match"):
        _profiles(["A01", "A02"], X=np.zeros((3, 2)))
    meta = pd.DataFrame({"P": ["p"], "W": ["A01"]})
    with pytest.raises(CpDistillerError, match="not found in the metadata"):
        Profiles(meta, np.zeros((1, 1)), ["Cells_a"], Roles(plate="P", well="W", batch="Metadata_Batch"))
    with pytest.raises(CpDistillerError, match="no batch column"):
        _profiles(["A01"]).labels("batch")


def test_roles_from_dict_rejects_unknown_roles():
    assert Roles.from_dict({"plate": "P", "negative_values": "DMSO"}).negative_values == ("DMSO",)
    with pytest.raises(CpDistillerError, match="unknown role"):
        Roles.from_dict({"plate": "P", "platee": "x"})


def test_embedding_wraps_profiles():
    p = _profiles(["A01", "A02"])
    emb = Embedding.from_profiles(p, np.ones((2, 3)), method="cpDistiller")
    assert emb.features == ["cpd_0", "cpd_1", "cpd_2"] and emb.method == "cpDistiller"
    assert emb.meta is p.meta and list(emb.well) == ["A01", "A02"]


def test_position_confounding_separates_fixed_from_shuffled_layouts():
    from cpdistiller_core.layout import position_confounding

    perts = np.array([f"c{i}" for i in range(8)] * 3, dtype=object)  # 8 compounds on 3 plates
    fixed_rows = np.tile(np.arange(8), 3)                            # same map on every plate
    shuffled = np.concatenate([np.random.default_rng(s).permutation(8) for s in range(3)])
    assert position_confounding(perts, fixed_rows) == 1.0
    assert position_confounding(perts, shuffled) < 0.5
    # Half the compounds keep their row: half the replicated wells are confounded.
    half = shuffled.copy()
    keep = np.isin(perts, [f"c{i}" for i in range(4)])
    half[keep] = fixed_rows[keep]
    moved = ~keep & (np.array([len(set(shuffled[perts == p])) for p in perts]) == 1)
    assert position_confounding(perts, half) == pytest.approx((keep.sum() + moved.sum()) / len(perts))
    # Excluded wells (controls) and unreplicated perturbations do not count.
    include = perts != "c0"
    assert position_confounding(perts, fixed_rows, include) == 1.0
    assert np.isnan(position_confounding(np.array(["a", "b"], dtype=object), np.array([0, 1])))


def _dose_series_plate(rng: np.random.Generator, dose_by_column: bool) -> pd.DataFrame:
    """Two 96-well plates: 8 compounds, one per row, six doses in columns 1-6 (or shuffled), DMSO in 7-12."""
    rows = []
    for plate in ("p1", "p2"):
        for r in range(8):
            doses = np.array([20.0, 10.0, 5.0, 2.5, 1.25, 0.6])
            doses = doses if dose_by_column else rng.permutation(doses)
            for c in range(12):
                compound = f"c{r}" if c < 6 else "DMSO"
                rows.append({"Plate": plate, "Well": f"{chr(65 + r)}{c + 1:02d}", "Compound": compound,
                             "Target": "none" if c >= 6 else f"t{r % 3}",
                             "Dose": doses[c] if c < 6 else np.nan, "Image": f"{plate}_{r}_{c}",
                             "Edge": "edge" if c in (0, 11) else "inner"})
    return pd.DataFrame(rows)


def test_covariate_ties_find_the_dose_series_laid_out_by_column():
    from cpdistiller_core.layout import covariate_ties

    rng = np.random.default_rng(0)
    roles = Roles(plate="Plate", well="Well", perturbation="Compound", control="Compound",
                  negative_values=("DMSO",))

    def profiles(meta):
        return Profiles(meta, rng.normal(size=(len(meta), 3)), ["Cells_a", "Cells_b", "Cells_c"], roles)

    by_column = profiles(_dose_series_plate(rng, dose_by_column=True))
    ties = covariate_ties(by_column)
    # Dose is set by the column (6 values); not by the row. The compound's target does not change
    # within a compound (a property, not a covariate); the image name and the edge flag are set by the
    # well itself and vary among the controls.
    assert set(ties) == {"column"}
    assert (ties["column"].column, ties["column"].share, ties["column"].values) == ("Dose", 1.0, 6)
    assert covariate_ties(profiles(_dose_series_plate(rng, dose_by_column=False))) == {}
    # A column that is a role (here the control status) is never a covariate.
    meta = _dose_series_plate(rng, dose_by_column=True)
    assert covariate_ties(Profiles(meta, rng.normal(size=(len(meta), 3)), ["Cells_a", "Cells_b", "Cells_c"],
                                   Roles(plate="Plate", well="Well", perturbation="Compound", control="Compound",
                                         negative_values=("DMSO",), annotation="Dose"))) == {}


def test_position_ties_need_a_perturbation_column():
    from cpdistiller_core.datasets import make_demo_screen
    from cpdistiller_core.layout import position_ties, tied_effects
    from cpdistiller_core.profiles import Roles

    rows = make_demo_screen(seed=1, n_batches=1, plates_per_batch=2, n_features=40, n_layouts=1,
                            replicates_in_row=True).profiles
    ties = position_ties(rows, ("batch", "row", "column"))
    assert set(ties) == {"row", "column"} and ties["row"] > 0.8 and set(tied_effects(ties)) == {"row"}
    # without a perturbation column wells are named by position: that says nothing about the layout
    anonymous = rows.replace(roles=Roles.from_dict({**rows.roles.to_dict(), "perturbation": None}))
    assert position_ties(anonymous) == {"row": None, "column": None} and tied_effects(position_ties(anonymous)) == {}
