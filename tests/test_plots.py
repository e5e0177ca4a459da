"""Figures a scientist can read: chance lines, shuffled drawing order, robust axes, PCA variance titles,
star highlights, density view, labelled plate thumbnails and names that are never cut."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cpdistiller_core.errors import CpDistillerError
from cpdistiller_core.layout import row_letters
from cpdistiller_core.plots import embedding as emb
from cpdistiller_core.plots import plates as plate_plots
from cpdistiller_core.plots.training import training_curves
from cpdistiller_core.profiles import Profiles, Roles
from cpdistiller_core.reduce import ReduceParams, explained_variance, pca, reduce


def _screen(n_plates: int = 3, n_rows: int = 16, n_cols: int = 24, plate_name: str = "P{}") -> Profiles:
    rows = [{"Plate": plate_name.format(p), "Well": f"{row_letters(r)}{c + 1:02d}", "Batch": f"B{p}",
             "Type": "ctl" if c == 0 else "trt", "Cpd": "DMSO" if c == 0 else f"cmpd{c % 5}"}
            for p in range(n_plates) for r in range(n_rows) for c in range(n_cols)]
    meta = pd.DataFrame(rows)
    X = np.random.default_rng(1).normal(size=(len(meta), 4)).astype(np.float32)
    roles = Roles(plate="Plate", well="Well", batch="Batch", perturbation="Cpd", control="Type",
                  negative_values=("ctl",))
    return Profiles(meta=meta, X=X, features=list("abcd"), roles=roles)


def _log() -> pd.DataFrame:
    return pd.DataFrame({"epoch": [1, 2, 3], "loss": [3.0, 2.0, 1.5], "acc_batch": [0.9, 0.6, 0.4],
                         "acc_row": [0.3, 0.2, 0.1], "lambda": [0.0, 0.5, 1.0]})


# ----- training curves --------------------------------------------------------------------------------
def test_chance_line_at_one_over_levels_with_its_label():
    fig = training_curves(_log(), levels={"batch": 3, "row": list("ABCDEFGHIJKLMNOP")})  # lists as in model.json
    lines = {round(s.y0, 6): s for s in fig.layout.shapes}
    assert set(lines) == {round(1 / 3, 6), round(1 / 16, 6)}
    assert lines[round(1 / 3, 6)].line.dash == "dash" and lines[round(1 / 3, 6)].yref == "y2"  # accuracy panel
    texts = [a.text for a in fig.layout.annotations]
    assert "chance (3 batches)" in texts and "chance (16 rows)" in texts
    acc = next(t for t in fig.data if t.name == "acc_batch")
    assert lines[round(1 / 3, 6)].line.color == acc.line.color  # the line reads as that curve's chance


def test_no_chance_line_without_level_counts():
    assert not training_curves(_log()).layout.shapes
    only_batch = training_curves(_log(), levels={"batch": 3, "plate": 5, "row": 1})
    assert [round(s.y0, 6) for s in only_batch.layout.shapes] == [round(1 / 3, 6)]  # no acc_plate; 1 row: no line


# ----- embedding: drawing order -------------------------------------------------------------------------
def test_draw_order_is_a_reproducible_permutation():
    a, b, c = emb.draw_order(500, seed=3), emb.draw_order(500, seed=3), emb.draw_order(500, seed=4)
    assert sorted(a) == list(range(500))
    assert (a == b).all() and not (a == c).all()


def test_shuffled_scatter_mixes_batches_and_colours_each_point_by_its_batch():
    p = _screen(3)  # wells are stored batch by batch: B2 last
    xy = np.random.default_rng(0).normal(size=(p.n_wells, 2))
    fig = emb.embedding_figure({"u": xy}, p, color_by="batch", seed=7)
    points = [t for t in fig.data if t.type in ("scatter", "scattergl") and t.x is not None and len(t.x) > 1
              and t.mode == "markers"]
    assert len(points) == 1
    trace = points[0]
    order = emb.draw_order(p.n_wells, 7)
    assert list(trace.customdata[:, 1]) == list(p.well.astype(str)[order])
    assert np.allclose(trace.x, xy[order, 0])
    last = trace.customdata[-p.n_wells // 3:, 3]  # the third drawn last (on top)
    assert len(set(last)) == 3 and max(pd.Series(last).value_counts(normalize=True)) < 0.5
    # each point's colour code picks its batch's legend colour
    proxies = {t.name: t.marker.color for t in fig.data if t.showlegend and t.legendgroup in ("B0", "B1", "B2")}
    assert set(proxies) == {"B0", "B1", "B2"}
    scale = [c for _, c in trace.marker.colorscale[::2]]
    batch_of = trace.customdata[:, 3]
    for code, batch in zip(trace.marker.color[:50], batch_of[:50]):
        assert scale[code] == proxies[batch]
    assert fig.layout.legend.itemclick is False  # proxies cannot hide points: clicks are off


def test_group_order_keeps_one_trace_per_group():
    p = _screen(2)
    xy = np.random.default_rng(0).normal(size=(p.n_wells, 2))
    fig = emb.embedding_figure({"u": xy}, p, color_by="batch", order="group", marginals=False)
    assert [t.name for t in fig.data] == ["B0", "B1"]
    with pytest.raises(CpDistillerError):
        emb.embedding_figure({"u": xy}, p, order="sorted")


def test_webgl_only_for_many_points():
    p = _screen(1)
    xy = np.random.default_rng(0).normal(size=(p.n_wells, 2))
    assert {t.type for t in emb.embedding_figure({"u": xy}, p, marginals=False).data} == {"scatter"}
    assert "scattergl" in {t.type for t in emb.embedding_figure({"u": xy}, p, marginals=False, webgl=True).data}
    big = _screen(14)
    assert big.n_wells >= emb.WEBGL_MIN_POINTS
    xy = np.random.default_rng(0).normal(size=(big.n_wells, 2))
    assert "scattergl" in {t.type for t in emb.embedding_figure({"u": xy}, big, marginals=False).data}


# ----- embedding: axes ------------------------------------------------------------------------------
def test_robust_range_drops_an_extreme_outlier_but_keeps_the_bulk():
    v = np.random.default_rng(0).normal(size=10_000)
    lo, hi = emb.robust_range(np.append(v, 1000.0))
    assert hi < 10 and hi >= np.percentile(v, 99) and lo <= np.percentile(v, 1)
    lo, hi = emb.robust_range(v)  # ordinary tails: every point in view
    assert lo < v.min() and hi > v.max()


def test_panel_range_excludes_outlier_which_stays_drawn_and_counted():
    p = _screen(2)
    xy = np.random.default_rng(0).normal(size=(p.n_wells, 2))
    xy[5] = [500.0, 0.0]
    fig = emb.embedding_figure({"u": xy}, p, marginals=False, order="group")
    assert fig.layout.xaxis.range[1] < 10 and fig.layout.xaxis.range[1] > np.percentile(xy[:, 0], 99)
    assert 500.0 in np.concatenate([np.asarray(t.x, dtype=float) for t in fig.data])
    assert any(a.text.startswith("1 well outside the view") for a in fig.layout.annotations)
    full = emb.embedding_figure({"u": xy}, p, marginals=False, axis_range="full")
    assert full.layout.xaxis.range[1] > 500


def test_pca_axis_titles_carry_the_variance_reduce_cached(tmp_path):
    rng = np.random.default_rng(0)
    X = (rng.normal(size=(400, 5)) * np.array([3.0, 1.5, 0.3, 0.2, 0.1])).astype(np.float32)
    coords = reduce(X, ReduceParams(method="pca"), cache_root=tmp_path)
    assert list(tmp_path.glob("*-variance.npy"))  # written next to the coordinates
    ratios = explained_variance(X, cache_root=tmp_path)
    assert np.allclose(ratios, pca(X, 2)[1], atol=1e-6) and 0.6 < ratios[0] < 0.9
    prof = _screen(1).subset(np.arange(384))
    fig = emb.embedding_figure({"PCA": coords[:384]}, prof, marginals=False, projection="PCA",
                               variance={"PCA": ratios})
    assert fig.layout.xaxis.title.text == f"PC1 ({100 * ratios[0]:.1f} % variance)"
    assert fig.layout.yaxis.title.text == f"PC2 ({100 * ratios[1]:.1f} % variance)"
    umap = emb.embedding_figure({"u": coords[:384]}, prof, marginals=False, projection="UMAP")
    assert (umap.layout.xaxis.title.text, umap.layout.yaxis.title.text) == ("UMAP 1", "UMAP 2")


# ----- embedding: highlights and density ------------------------------------------------------------
def test_highlight_legend_draws_stars_under_their_own_title():
    p = _screen(2)
    xy = np.random.default_rng(0).normal(size=(p.n_wells, 2))
    fig = emb.embedding_figure({"u": xy, "v": xy}, p, color_by="row", highlight=["cmpd3"])
    stars = [t for t in fig.data if t.name == "cmpd3"]
    assert len(stars) == 2 and [t.showlegend for t in stars] == [True, False]
    assert all(t.marker.symbol == "star" and t.legend == "legend2" for t in stars)
    assert fig.layout.legend2.title.text == "highlighted"
    assert len(stars[0].x) == int((p.perturbation == "cmpd3").sum())


def test_density_view_contours_enclose_the_stated_share_of_wells():
    p = _screen(2)
    rng = np.random.default_rng(0)
    xy = rng.normal(size=(p.n_wells, 2)) + np.where(p.labels("batch") == "B1", 4.0, 0.0)[:, None]
    fig = emb.embedding_figure({"u": xy}, p, color_by="batch", kind="density", marginals=False)
    contours = [t for t in fig.data if t.type == "contour"]
    assert [t.name for t in contours] == ["B0", "B1"]
    assert (contours[0].contours.start, contours[0].contours.end) == (0.2, 0.8)
    counts = rng.poisson(5.0, size=(40, 40)).astype(float)
    mass = emb._hdr_mass(counts)
    inside = counts[mass <= 0.5].sum() / counts.sum()
    assert 0.45 < inside <= 0.5  # the densest bins holding half of the wells
    rows = emb.embedding_figure({"u": np.c_[p.row, p.col].astype(float)}, p, color_by="row", kind="density",
                                marginals=False)
    heat = next(t for t in rows.data if t.type == "heatmap")
    z = np.asarray(heat.z, dtype=float)
    assert np.nanmin(z) >= 1 and np.nanmax(z) <= 16  # mean row (1-based) per bin
    first_x_bin = z[:, np.isfinite(z).any(axis=0)][:, 0]
    assert np.nanmax(first_x_bin) < 2  # x is the row itself: the leftmost bins hold row 1


# ----- plates ---------------------------------------------------------------------------------------
def test_thumbnails_name_rows_and_columns():
    fig = plate_plots.plate_layout_thumbnails(_screen(2))
    assert fig.layout.yaxis.showticklabels and fig.layout.xaxis.showticklabels
    rows, cols = list(fig.layout.yaxis.ticktext), list(fig.layout.xaxis.ticktext)
    assert rows == list("ABCDEFGHIJKLMNOP") and cols[0] == "1" and cols[-1] == "24"
    big = plate_plots.plate_layout_thumbnails(_screen(1, n_rows=32, n_cols=48))
    assert big.layout.yaxis.ticktext[-1] == "AF" and big.layout.xaxis.ticktext[-1] == "48"
    assert "A" in big.layout.yaxis.ticktext and len(big.layout.yaxis.ticktext) < 32
    assert plate_plots.axis_ticks(12, max_labels=12) == [str(i) for i in range(1, 13)]


def test_names_are_never_cut():
    long = "BR00110123__2020-08-{}_plate_with_a_long_name"
    p = _screen(2, plate_name=long)
    thumbs = plate_plots.plate_layout_thumbnails(p)
    titles = [a.text.replace("<br>", "") for a in thumbs.layout.annotations]
    assert titles == [long.format(0), long.format(1)]
    assert all("<br>" in a.text for a in thumbs.layout.annotations)  # wrapped, not overflowing
    grid = np.zeros((16, 24))
    heat = plate_plots.plate_heatmaps({"uncorrected (PCA-50)": {long.format(0): grid}}, p.geometry)
    assert heat.layout.hoverlabel.namelength == -1  # <extra> names would be cut after 15 characters
    assert heat.layout.annotations[0].text.replace("<br>", "") == f"uncorrected (PCA-50) · {long.format(0)}"
    table = pd.DataFrame({"side": ["cpDistiller (warm start)"], "effect": ["batch"], "variance_explained": [0.1]})
    assert plate_plots.variance_bars(table).layout.hoverlabel.namelength == -1
    assert training_curves(_log()).layout.hoverlabel.namelength == -1


def test_with_highlights_the_legend_names_the_marginal_colours_once():
    p = _screen(2)
    xy = np.random.default_rng(0).normal(size=(p.n_wells, 2))
    for order in ("random", "group"):
        fig = emb.embedding_figure({"u": xy, "v": xy}, p, color_by="batch", highlight=["cmpd3"], order=order)
        entries = [t for t in fig.data if t.showlegend and t.legend != "legend2"]
        assert sorted(t.name for t in entries) == ["B0", "B1"], order  # one entry per batch, not per panel
        assert all(t.mode == "lines" for t in entries)  # points are grey: the colour is the curves'
        curves = {t.line.color for t in fig.data if t.mode == "lines" and t.legendgroup == "B1" and not t.showlegend}
        assert curves == {next(t.line.color for t in entries if t.name == "B1")}
        assert fig.layout.legend.itemclick == "toggle"  # a click hides that batch's curves
