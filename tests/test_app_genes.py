"""AppTest (streamlit.testing.v1) of the Gene clusters and Retrieval pages on the demo screen."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from dashboard import state as ds

ROOT = Path(__file__).resolve().parents[1]
GENES_PAGE = "pages/5_Gene_clusters.py"
RETRIEVAL_PAGE = "pages/6_Retrieval.py"


@pytest.fixture(autouse=True)
def _own_app_home(tmp_path, monkeypatch):
    """An empty app folder per test: runs written by other test modules must not show up here."""
    monkeypatch.setenv("CPDISTILLER_HOME", str(tmp_path / "home"))


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
    errors = [e.value for e in at.error]
    assert any("cannot reach Enrichr" in e and "Local .gmt files" in e for e in errors)
    assert not any("--" in e for e in errors)  # the page's words, not the command line's flags
    assert "genes_results" not in at.session_state  # checked before clustering: nothing computed


def test_gene_clusters_page_checks_archs4_before_clustering_and_drops_old_results(demo_dataset, monkeypatch):
    monkeypatch.setenv("CPDISTILLER_ARCHS4_URL", f"http://127.0.0.1:{_closed_port()}/matrixapi/coltop")
    at = _page(GENES_PAGE, demo_dataset)
    at.session_state["genes_results"] = {"source": "an earlier run", "results": {}}
    at.radio(key="genes_group_source").set_value("ARCHS4 (online, cached per gene)")
    at.button(key="genes_go").click()
    at.run()
    assert not at.exception
    assert any("cannot reach ARCHS4" in e.value and "My table" in e.value for e in at.error)
    assert "genes_results" not in at.session_state  # the earlier results are not shown as if current


def test_retrieval_page_pairs_scores_and_query(demo_dataset):
    at = _page(RETRIEVAL_PAGE, demo_dataset)
    assert not at.exception
    assert at.selectbox(key="retrieval_gene_col").value == "Metadata_Symbol"
    assert at.selectbox(key="retrieval_target_col").value == "Metadata_target"
    at.checkbox(key="retrieval_activity").uncheck()
    at.number_input(key="retrieval_null").set_value(500)
    at.button(key="retrieval_go").click()
    at.run()
    assert not at.exception and not at.error
    summary = at.session_state["retrieval_results"]["summary"].set_index(["task", "metric"])["value"]
    assert 0 < summary[("gene_compound", "fraction_retrieved")] <= 1
    assert 0 < summary[("shared_gene", "mAP")] <= 1
    assert ("replicates", "mAP") not in summary.index  # switched off
    # query a gene: the compounds targeting it are known pairs
    at.selectbox(key="retrieval_query").set_value("PSMB5")
    at.run()
    assert not at.exception
    table = at.dataframe[-1].value  # the query's ranked list (last table on the page)
    assert table["known_pair"].any()
    assert set(table.loc[table["known_pair"], "perturbation"]) <= {"bortezomib", "carfilzomib", "MG-132"}


def test_retrieval_page_opens_a_scorecard(demo_dataset, tmp_path, monkeypatch):
    import pandas as pd

    from cpdistiller_core.metrics import SCORE_COLUMNS

    rows = [("cpDistiller", "overall", "", "aggregate", 0.8, 20, ""), ("uncorrected", "overall", "", "aggregate", 0.6, 20, ""),
            ("cpDistiller", "asw", "row", "technical", 0.9, 100, ""), ("uncorrected", "asw", "row", "technical", 0.5, 100, ""),
            ("cpDistiller", "fraction_retrieved", "gene_compound", "biological", 0.7, 33, ""),
            ("uncorrected", "fraction_retrieved", "gene_compound", "biological", 0.4, 33, "")]
    path = tmp_path / "scores.csv"
    pd.DataFrame(rows, columns=SCORE_COLUMNS).to_csv(path, index=False)
    monkeypatch.setenv("CPDISTILLER_DATA_ROOT", str(tmp_path))  # server paths are read only under it
    at = _page(RETRIEVAL_PAGE, demo_dataset)
    at.text_input(key="retrieval_scores_path").set_value(str(path))
    at.button(key="retrieval_scores_open").click()
    at.run()
    assert not at.exception and not at.error
    wide = at.dataframe[0].value  # the headline scorecard (first table on the page): uncorrected first, Δ
    assert list(wide.index) == ["uncorrected", "cpDistiller"]
    assert wide.loc["cpDistiller", "asw[row]"] == 0.9
    assert abs(wide.loc["cpDistiller", "Δoverall"] - 0.2) < 1e-9
    at.text_input(key="retrieval_scores_path").set_value(str(tmp_path / "missing.csv"))
    at.button(key="retrieval_scores_open").click()
    at.run()
    assert any("no such file under the data root" in e.value for e in at.error)
