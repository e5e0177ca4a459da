"""UMAP/PCA reduction and its content-addressed disk cache."""

from __future__ import annotations

import numpy as np
import pytest

from cpdistiller_core.errors import CpDistillerError
from cpdistiller_core.reduce import ReduceParams, cache_key, content_hash, is_cached, pca, reduce


def _blobs(n: int = 120, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = np.array([[0] * 8, [8] * 8], dtype=np.float32)
    lab = np.arange(n) % 2
    return (centers[lab] + rng.normal(size=(n, 8))).astype(np.float32), lab


def test_umap_separates_blobs_and_is_read_back_from_cache(tmp_path):
    X, lab = _blobs()
    params = ReduceParams()
    assert (params.n_neighbors, params.min_dist, params.random_state) == (15, 0.1, 9000)
    assert not is_cached(X, params, tmp_path)
    Y = reduce(X, params, cache_root=tmp_path)
    assert Y.shape == (120, 2)
    # the two blobs stay apart in 2-D
    d_between = np.linalg.norm(Y[lab == 0].mean(0) - Y[lab == 1].mean(0))
    spread = max(Y[lab == 0].std(0).max(), Y[lab == 1].std(0).max())
    assert d_between > 3 * spread
    assert is_cached(X, params, tmp_path)
    files = list(tmp_path.glob("*.npy"))
    assert len(files) == 1
    # overwrite the cache entry: a second call must return the cached array, not recompute
    marker = np.full_like(Y, 7.0)
    np.save(files[0], marker)
    assert np.array_equal(reduce(X, params, cache_root=tmp_path), marker)


def test_cache_key_changes_with_content_and_params():
    X, _ = _blobs()
    X2 = X.copy()
    X2[0, 0] += 1e-3
    p = ReduceParams()
    assert cache_key(X, p) == cache_key(X.copy(), p)
    assert cache_key(X, p) != cache_key(X2, p)
    assert cache_key(X, p) != cache_key(X, ReduceParams(n_neighbors=30))
    assert cache_key(X, ReduceParams(method="pca")) == cache_key(X, ReduceParams(method="pca", n_neighbors=30))
    assert content_hash(X) != content_hash(X.reshape(60, 16))


def test_pca_matches_numpy_svd(tmp_path):
    X, _ = _blobs()
    Y = reduce(X, ReduceParams(method="pca"), cache_root=tmp_path)
    Xc = X.astype(np.float64) - X.mean(0)
    u, s, _ = np.linalg.svd(Xc, full_matrices=False)
    ref = u[:, :2] * s[:2]
    for k in range(2):
        assert abs(abs(np.corrcoef(Y[:, k], ref[:, k])[0, 1]) - 1) < 1e-4
    scores, ratio = pca(X, 50)
    assert scores.shape == (120, 8) and ratio.sum() == pytest.approx(1.0, abs=1e-5)


def test_nan_and_tiny_inputs_raise_readable_errors(tmp_path):
    X, _ = _blobs()
    X[3, 2] = np.inf
    with pytest.raises(CpDistillerError, match="NaN/inf"):
        reduce(X, cache_root=tmp_path)
    with pytest.raises(CpDistillerError, match="at least 3"):
        reduce(np.zeros((2, 4), np.float32), cache_root=tmp_path)
    with pytest.raises(CpDistillerError, match="unknown reduction"):
        reduce(_blobs()[0], ReduceParams(method="tsne"), cache_root=tmp_path)


# ----- the embedding figure built on these coordinates ----------------------------------------------
def _profiles(n_plates: int = 2):
    import pandas as pd

    from cpdistiller_core.profiles import Profiles, Roles

    rows = [{"Plate": f"P{p}", "Well": f"{chr(65 + r)}{c + 1:02d}", "Batch": f"B{p}", "Type": "ctl" if c == 0 else "trt",
             "Cpd": "DMSO" if c == 0 else f"cmpd{c % 5}"} for p in range(n_plates) for r in range(8) for c in range(12)]
    meta = pd.DataFrame(rows)
    X = np.random.default_rng(1).normal(size=(len(meta), 4)).astype(np.float32)
    roles = Roles(plate="Plate", well="Well", batch="Batch", perturbation="Cpd", control="Type", negative_values=("ctl",))
    return Profiles(meta=meta, X=X, features=list("abcd"), roles=roles)


def test_embedding_figure_panels_colourings_hover_and_highlight():
    from cpdistiller_core.plots.embedding import available_colorings, embedding_figure

    p = _profiles()
    xy = np.random.default_rng(0).normal(size=(p.n_wells, 2))
    assert available_colorings(p) == ["batch", "row", "column", "plate", "perturbation", "control"]
    fig = embedding_figure({"uncorrected": xy, "cpDistiller": xy * 2}, p, color_by="batch", order="group", webgl=True)
    scatters = [t for t in fig.data if t.type == "scattergl"]
    assert len(scatters) == 4  # 2 batches x 2 panels, all WebGL
    assert sorted(t.name for t in scatters if t.showlegend) == ["B0", "B1"]
    densities = [t for t in fig.data if t.type == "scatter"]
    assert len(densities) == 8  # x and y density per batch per panel
    assert "plate %{customdata[0]}" in scatters[0].hovertemplate
    assert list(scatters[0].customdata[0][:2]) == ["P0", "A01"]
    titles = [a.text for a in fig.layout.annotations]
    assert titles == ["<b>uncorrected</b>", "<b>cpDistiller</b>"]
    # marginal x axes follow their scatter's x axis
    main_x = scatters[0].xaxis
    top = [t for t in densities if t.yaxis != scatters[0].yaxis and t.xaxis != main_x][0]
    assert fig.layout[top.xaxis.replace("x", "xaxis")].matches == main_x

    col = embedding_figure({"u": xy}, p, color_by="column", webgl=True)
    main = [t for t in col.data if t.type == "scattergl"][0]
    assert main.marker.colorscale is not None and max(main.marker.color) == 12  # continuous 1-based columns
    assert len([t for t in col.data if t.type == "scatter"]) == 2 * 12  # one density per column

    hl = embedding_figure({"u": xy}, p, color_by="plate", highlight=["cmpd3"])
    star = [t for t in hl.data if t.name == "cmpd3"]
    assert len(star) == 1 and len(star[0].x) == int((p.perturbation == "cmpd3").sum())
    assert star[0].marker.symbol == "star" and star[0].legend == "legend2"
    with pytest.raises(CpDistillerError):
        embedding_figure({"u": xy[:5]}, p)
    with pytest.raises(CpDistillerError):
        embedding_figure({"u": xy}, p, color_by="annotation")


def test_pca_of_a_large_screen_fits_its_axes_on_a_sample_and_projects_every_well():
    from cpdistiller_core.reduce import pca

    rng = np.random.default_rng(0)
    X = (rng.normal(size=(3000, 2)) * [5.0, 2.0]) @ rng.normal(size=(2, 40)) + rng.normal(size=(3000, 40))
    X = X.astype(np.float32)
    exact, exact_ratio = pca(X, 2)
    sampled, ratio = pca(X, 2, max_fit_wells=500)
    assert sampled.shape == (3000, 2)
    for j in range(2):  # same axes up to sign, every well projected
        assert abs(np.corrcoef(exact[:, j], sampled[:, j])[0, 1]) > 0.99
    np.testing.assert_allclose(ratio, exact_ratio, atol=0.03)
    same, _ = pca(X, 2, max_fit_wells=3000)  # at or below the limit: the exact PCA, unchanged
    np.testing.assert_array_equal(same, exact)
