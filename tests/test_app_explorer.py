"""Embedding explorer and Plate maps on a loaded dataset without a run, and the UMAP path with its disk cache."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from cpdistiller_core.profiles import Profiles, Roles
from cpdistiller_core.reduce import ReduceParams, is_cached
from dashboard import state as ds

APP = str(Path(__file__).resolve().parents[1] / "app.py")


def _small(seed: int = 3) -> ds.Dataset:
    """Two 96-well plates with a row gradient in the first feature and a batch per plate."""
    rng = np.random.default_rng(seed)
    rows = [{"Metadata_Plate": f"P{p}", "Metadata_Well": f"{r}{c:02d}", "Metadata_Batch": f"B{p}",
             "Metadata_pert_type": "negcon" if c in (1, 12) else "trt",
             "Metadata_pert_iname": "DMSO" if c in (1, 12) else f"cmpd{(ord(r) + c) % 9}",
             "Metadata_Count_Cells": 1000 + 20 * c}
            for p in range(2) for r in "ABCDEFGH" for c in range(1, 13)]
    meta = pd.DataFrame(rows)
    X = rng.normal(size=(len(meta), 6)).astype(np.float32)
    X[:, 0] += (meta["Metadata_Well"].str[0].map(ord) - 65).to_numpy() * 0.8
    roles = Roles(plate="Metadata_Plate", well="Metadata_Well", batch="Metadata_Batch",
                  perturbation="Metadata_pert_iname", control="Metadata_pert_type", negative_values=("negcon",))
    raw = Profiles(meta=meta, X=X, features=[f"Cells_f{i}" for i in range(6)], roles=roles, source="small")
    return ds.Dataset(name="small", raw=raw, origin="upload")


def _app(dataset: ds.Dataset | None, page: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=400)
    if dataset is not None:
        at.session_state[ds.DATASET_KEY] = dataset
    at.run()
    at.switch_page(page).run()
    assert not at.exception
    return at


def test_pages_without_data_point_to_the_load_page():
    for page in ("pages/3_Embedding_explorer.py", "pages/4_Plate_maps.py", "pages/2_Correct.py"):
        at = _app(None, page)
        assert not at.error
        assert any("Load a dataset" in i.value for i in at.info), page


def test_plate_maps_of_a_dataset_show_its_gradient_and_cell_counts():
    at = _app(_small(), "pages/4_Plate_maps.py")
    assert not at.error
    assert at.selectbox(key="plates_kind").value == "A feature (uncorrected)"
    assert "An embedding dimension (corrected)" not in at.selectbox(key="plates_kind").options
    heat = at.get("plotly_chart")[0].proto.spec
    assert '"type":"heatmap"' in heat.replace(" ", "")
    captions = " ".join(c.value for c in at.caption)
    row_g = float(captions.split("row gradient")[1].split("uncorrected")[1].split()[0])
    col_g = float(captions.split("column gradient")[1].split("uncorrected")[1].split()[0])
    assert row_g > 2 * col_g  # the simulated row gradient is what the profile plots show
    at.selectbox(key="plates_kind").set_value("Cell count / a numeric metadata column").run()
    assert not at.exception and not at.error
    assert at.selectbox(key="plates_meta").value == "Metadata_Count_Cells"


@pytest.mark.slow
def test_explorer_umap_is_computed_once_and_cached_on_disk():
    dataset = _small()
    at = _app(dataset, "pages/3_Embedding_explorer.py")
    assert at.radio(key="explorer_method").value == "PCA"
    assert any("uncorrected profiles only" in i.value for i in at.info)
    params = ReduceParams()
    assert not is_cached(dataset.raw.X, params)
    at.radio(key="explorer_method").set_value("UMAP").run()
    assert not at.exception and not at.error
    assert is_cached(dataset.raw.X, params)
    assert (params.n_neighbors, params.min_dist, params.random_state) == (15, 0.1, 9000)
    spec = at.get("plotly_chart")[0].proto.spec
    assert '"type":"scatter' in spec.replace(" ", "") and "plate %{customdata[0]}" in spec  # SVG below 5k wells
    at.selectbox(key="explorer_color").set_value("row").run()
    assert not at.exception and not at.error
    spec = at.get("plotly_chart")[0].proto.spec.replace(" ", "")
    assert '"cmax":8.0' in spec and '"colorscale":[[' in spec  # continuous scale over rows A..H


def test_home_autoloads_the_demo_when_started_with_demo_flag(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["app.py", "--demo"])
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    assert not at.exception
    assert at.session_state[ds.DATASET_KEY].origin == "demo"


@pytest.mark.slow
def test_explorer_umap_of_a_large_screen_runs_in_the_background(monkeypatch):
    """Above ``BACKGROUND_UMAP_WELLS`` the page does not block: a job computes the UMAP into the disk
    cache, the page says so, and draws it once the job is done."""
    import time

    from cpdistiller_core import jobs

    monkeypatch.setattr(ds, "BACKGROUND_UMAP_WELLS", 100)  # the 192-well screen counts as large
    dataset = _small(seed=11)  # not the matrix another test already put in the UMAP cache
    at = _app(dataset, "pages/3_Embedding_explorer.py")
    at.radio(key="explorer_method").set_value("UMAP").run()
    assert not at.exception and not at.error
    assert any("computing in the background" in i.value for i in at.info)
    assert not at.get("plotly_chart")  # nothing drawn while the job runs
    (job_dir,) = at.session_state["explorer_umap_jobs"].values()
    deadline = time.time() + 300
    while not jobs.status(Path(job_dir)).finished and time.time() < deadline:
        time.sleep(1)
    assert jobs.status(Path(job_dir)).status == jobs.DONE, jobs.status(Path(job_dir)).error
    assert is_cached(dataset.raw.X, ReduceParams())
    at.run()
    assert not at.exception and not at.error and at.get("plotly_chart")
    assert not any("computing in the background" in i.value for i in at.info)
