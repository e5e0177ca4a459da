"""AppTest (streamlit.testing.v1) of the Gene clusters and Retrieval pages on the demo screen."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from cpdistiller_core import dashboard_state as ds

ROOT = Path(__file__).resolve().parents[1]
GENES_PAGE = "pages/5_Gene_clusters.py"
RETRIEVAL_PAGE = "pages/6_Retrieval.py"


@pytest.fixture(scope="module")
def demo_dataset() -> ds.Dataset:
    from cpdistiller_core.preprocess import PreprocessConfig

    return ds.apply_preprocessing(ds.load_demo(0), PreprocessConfig())


def _page(path: str, dataset: ds.Dataset | None) -> AppTest:
    """The dashboard (app.py, with its navigation) switched to one page."""
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    if dataset is not None:
        at.session_state[ds.DATASET_KEY] = dataset
    at.run()
    at.switch_page(path)
    return at.run()


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_gene_clusters_page_without_data_explains_what_to_do():
    at = _page(GENES_PAGE, None)
    assert not at.exception
    assert any("Load a dataset" in i.value for i in at.info)


def test_gene_clusters_page_runs_on_demo_with_demo_gene_sets(demo_dataset):
    at = _page(GENES_PAGE, demo_dataset)
    assert not at.exception
    assert at.selectbox(key="genes_type_col").value == "Metadata_modality"
    assert at.multiselect(key="genes_types").value == ["crispr"]
    assert at.radio(key="genes_gs_source").value == "Demo gene sets"
    at.number_input(key="genes_perm").set_value(200)
    at.button(key="genes_go").click()
    at.run()
    assert not at.exception and not at.error
    results = at.session_state["genes_results"]["results"]
    res = results["uncorrected"]["result"]
    assert len(res.clustering.labels) >= 3
    enr = results["uncorrected"]["enrichment"]
    # the demo's planted functional groups come back as enriched terms of some cluster
    top = enr[enr["adjusted_p_value"] < 0.05]
    assert len(top) and set(top["library"]) == {"demo_gene_sets"}
    assert set(top["term"]) & {"PROTEASOME", "MITOCHONDRIAL_RESPIRATORY_CHAIN", "ACTIN_CYTOSKELETON",
                               "CYTOSOLIC_RIBOSOME", "MITOTIC_CELL_CYCLE"}
    assert len(at.get("plotly_chart")) >= 3  # threshold plot, dendrogram, enrichment bars
    assert len(at.dataframe) >= 2


def test_gene_clusters_page_offline_enrichr_says_how_to_use_local_sets(demo_dataset, monkeypatch):
    monkeypatch.setenv("CPDISTILLER_ENRICHR_URL", f"http://127.0.0.1:{_closed_port()}/Enrichr")
    at = _page(GENES_PAGE, demo_dataset)
    at.radio(key="genes_gs_source").set_value("Enrichr libraries (online, cached)")
    at.button(key="genes_go").click()
    at.run()
    assert not at.exception
    assert any("cannot reach Enrichr" in e.value and "--gmt" in e.value for e in at.error)
    assert any("Local .gmt files" in i.value for i in at.info)
    assert "genes_results" not in at.session_state
