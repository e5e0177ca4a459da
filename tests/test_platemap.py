"""Plate-map numbers (per-well values, grids, row/column profiles, variance explained) and their figures."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cpdistiller_core import platemap
from cpdistiller_core.errors import CpDistillerError
from cpdistiller_core.plots import plates as plate_plots
from cpdistiller_core.profiles import Profiles, Roles


def _screen(n_plates: int = 2, gradient: float = 2.0, seed: int = 0, plate_format: int = 384) -> Profiles:
    """Full plates with a column gradient in feature f0, negatives in column 1, a cell count column."""
    rng = np.random.default_rng(seed)
    n_rows, n_cols = (16, 24) if plate_format == 384 else (8, 12)
    rows = []
    for p in range(n_plates):
        for r in range(n_rows):
            for c in range(n_cols):
                rows.append({"Plate": f"P{p}", "Well": f"{chr(65 + r)}{c + 1:02d}", "Batch": f"B{p % 2}",
                             "Type": "DMSO" if c == 0 else "cmpd", "Cpd": "DMSO" if c == 0 else f"c{(r * n_cols + c) % 7}",
                             "Count_Cells": 100 + 10 * r})
    meta = pd.DataFrame(rows)
    X = rng.normal(size=(len(meta), 6)).astype(np.float32)
    col = meta["Well"].str[1:].astype(int).to_numpy() - 1
    X[:, 0] += gradient * col / n_cols
    roles = Roles(plate="Plate", well="Well", batch="Batch", perturbation="Cpd", control="Type",
                  negative_values=("DMSO",))
    return Profiles(meta=meta, X=X, features=[f"f{i}" for i in range(6)], roles=roles, source="toy")


def test_plate_grid_places_values_at_their_wells_for_any_geometry():
    for fmt in (96, 384):
        p = _screen(1, plate_format=fmt)
        vals = p.row * 100.0 + p.col
        grid = platemap.plate_grid(p, vals, "P0")
        assert grid.shape == (p.geometry.n_rows, p.geometry.n_cols)
        assert grid[3, 5] == 305 and grid[0, 0] == 0
    p = _screen(1).subset(np.arange(10))  # a partial plate: missing wells are NaN
    grid = platemap.plate_grid(p, np.ones(10), "P0")
    assert np.isfinite(grid).sum() == 10 and np.isnan(grid[5, 5])
    with pytest.raises(CpDistillerError, match="no plate"):
        platemap.plate_grid(p, np.ones(10), "nope")


def test_well_values_for_every_kind():
    p = _screen()
    assert np.array_equal(platemap.well_values(p, "feature", "f2"), p.X[:, 2])
    pc1 = platemap.well_values(p, "pc", 0)
    assert abs(np.corrcoef(pc1, p.X[:, 0])[0, 1]) > 0.5  # the gradient feature dominates PC1
    counts = platemap.well_values(p, "metadata", "Count_Cells")
    assert counts[p.row == 2].min() == 120
    assert platemap.numeric_metadata_columns(p)[0] == "Count_Cells"
    with pytest.raises(CpDistillerError):
        platemap.well_values(p, "feature", "missing")
    with pytest.raises(CpDistillerError):
        platemap.well_values(p, "nonsense")


def test_control_distance_is_zero_mean_at_the_centroid_and_nan_without_controls():
    p = _screen()
    d = platemap.control_distance(p)
    neg = p.negative_mask
    for plate in ("P0", "P1"):
        on = p.plate == plate
        centroid = p.X[on & neg].mean(0)
        i = np.flatnonzero(on)[5]
        assert d[i] == pytest.approx(np.linalg.norm(p.X[i] - centroid), rel=1e-5)
    # a plate without negatives gets NaN, the others keep their distances
    q = p.subset(~((p.plate == "P1") & neg))
    dq = platemap.control_distance(q)
    assert np.isnan(dq[q.plate == "P1"]).all() and np.isfinite(dq[q.plate == "P0"]).all()
    none = p.replace(roles=Roles(plate="Plate", well="Well"))
    with pytest.raises(CpDistillerError, match="negative controls"):
        platemap.control_distance(none)


def test_column_profile_shows_the_gradient_and_row_profile_does_not():
    p = _screen(gradient=4.0)
    v = p.X[:, 0]
    cols = platemap.position_profile(p, v, "column")
    rows = platemap.position_profile(p, v, "row")
    assert list(cols["label"][:3]) == ["1", "2", "3"] and list(rows["label"][:2]) == ["A", "B"]
    assert cols["mean"].iloc[-1] - cols["mean"].iloc[0] > 3.0
    assert platemap.gradient_strength(cols) > 3 * platemap.gradient_strength(rows)
    per_plate = platemap.position_profile(p, v, "row", by="plate")
    assert set(per_plate["group"]) == {"P0", "P1"} and per_plate["n"].iloc[0] == 24


def test_variance_explained_finds_the_effect_that_is_there():
    p = _screen(gradient=6.0)
    col = platemap.variance_explained(p, "column", n_pcs=6)
    row = platemap.variance_explained(p, "row", n_pcs=6)
    assert col > 0.3 and row < 0.1
    # labels that perfectly explain everything -> 1; identical labels -> 0
    assert platemap.variance_explained(p, np.arange(p.n_wells), n_pcs=6) == pytest.approx(1.0)
    assert platemap.variance_explained(p, np.zeros(p.n_wells), n_pcs=6) == 0.0
    corrected = p.with_features(p.X - np.outer(p.col / 24 * 6.0, [1, 0, 0, 0, 0, 0]).astype(np.float32), p.features)
    table = platemap.variance_table({"before": p, "after": corrected}, n_pcs=6)
    wide = table.pivot(index="effect", columns="side", values="variance_explained")
    assert wide.loc["column", "after"] < wide.loc["column", "before"] / 3
    assert set(table["effect"]) == {"batch", "plate", "row", "column"}
    fig = plate_plots.variance_bars(table)
    assert [t.name for t in fig.data] == ["before", "after"]


def test_align_matches_wells_by_index():
    p = _screen(1)
    q = p.subset(np.arange(p.n_wells)[::2])
    a, b = platemap.align(p, q)
    assert a.n_wells == b.n_wells == q.n_wells
    assert list(a.well) == list(b.well)


def test_plate_figures_have_one_panel_per_plate_and_side():
    p = _screen(2)
    before = {pl: platemap.plate_grid(p, p.X[:, 0], pl) for pl in ("P0", "P1")}
    after = {pl: platemap.plate_grid(p, p.X[:, 1], pl) for pl in ("P0", "P1")}
    fig = plate_plots.plate_heatmaps({"uncorrected": before, "cpDistiller": after}, p.geometry, "f0")
    heat = [t for t in fig.data if t.type == "heatmap"]
    assert len(heat) == 4
    assert {t.coloraxis for t in heat} == {"coloraxis", "coloraxis2"}
    assert np.asarray(heat[0].z).shape == (16, 24) and list(heat[0].y[:2]) == ["A", "B"]
    z = plate_plots.plate_heatmaps({"a": before}, p.geometry, standardise=True)
    assert z.layout.coloraxis.cmin == -3
    thumbs = plate_plots.plate_layout_thumbnails(p)
    grid = np.asarray(thumbs.data[0].z)
    assert (grid[:, 0] == 2).all() and (grid[:, 1] == 1).all()  # negatives in column 1
    prof = platemap.position_profile(p, p.X[:, 0], "column")
    fig = plate_plots.position_profile_figure({"uncorrected": prof}, "column")
    assert list(fig.data[1].x[:2]) == ["1", "2"]


def test_standardised_heatmaps_colour_by_z_but_hover_the_value():
    p = _screen(1)
    grid = platemap.plate_grid(p, p.X[:, 0] * 100 + 50, "P0")
    fig = plate_plots.plate_heatmaps({"a": {"P0": grid}, "b": {"P0": grid * 2}}, p.geometry, "f0", standardise=True)
    heat = [t for t in fig.data if t.type == "heatmap"]
    assert {t.coloraxis for t in heat} == {"coloraxis"}  # one shared diverging scale
    z = np.asarray(heat[0].z, dtype=float)
    assert abs(np.nanmedian(z)) < 1e-6 and np.nanmax(np.abs(z)) < 50
    assert heat[0].text[0][0] == f"{grid[0, 0]:.3g}" and heat[1].text[0][0] == f"{2 * grid[0, 0]:.3g}"


def test_plate_maps_default_to_controls_only_when_the_layout_ties_treatments_to_positions():
    from cpdistiller_core.datasets import make_demo_screen

    shuffled = make_demo_screen(seed=1, n_batches=1, plates_per_batch=4, n_features=40).profiles  # two maps
    locked = make_demo_screen(seed=1, n_batches=1, plates_per_batch=2, n_features=40, n_layouts=1).profiles
    assert platemap.default_wells(shuffled)[0] == "all"
    wells, why = platemap.default_wells(locked)
    assert wells == "negative" and "same plate map" in why
    no_controls = locked.replace(roles=Roles.from_dict({**locked.roles.to_dict(), "control": None}))
    assert platemap.default_wells(no_controls)[0] == "all"
    v = np.arange(locked.n_wells, dtype=float)
    kept = platemap.restrict_values(locked, v, "negative")
    assert np.array_equal(np.isfinite(kept), locked.negative_mask) and kept[locked.negative_mask].tolist() == \
        v[locked.negative_mask].tolist()
    assert platemap.restrict_values(locked, v, "all") is v
    # treatments fixed to one row (cell_injury's layout): named as such
    tied = locked.meta.copy()
    tied[locked.roles.perturbation] = np.where(locked.negative_mask, tied[locked.roles.perturbation],
                                               "row_" + pd.Series(locked.row).astype(str))
    wells, why = platemap.default_wells(locked.replace(meta=tied))
    assert wells == "negative" and "ties treatments to their row (100% of treated wells)" in why
