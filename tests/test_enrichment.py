"""Enrichment: Enrichr libraries from a local server that answers like Enrichr, GMT files, caches, offline."""

from __future__ import annotations

import socket
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from scipy.stats import hypergeom

from cpdistiller_core import CpDistillerError
from cpdistiller_core.analysis import enrichment as en

# Enrichr's geneSetLibrary?mode=text format: term, empty description, genes (some with ",weight").
LIBRARIES = {
    "GO_Cellular_Component_2023": {
        "Proteasome Complex (GO:0000502)": ["PSMA1", "PSMA2", "PSMB1", "PSMB2", "PSMD1"],
        "Mitochondrial Inner Membrane (GO:0005743)": ["NDUFA1", "NDUFB2", "COX4I1", "ATP5F1A"],
        "Nucleus (GO:0005634)": ["TP53", "MYC", "PSMA1", "NDUFA1"],
    },
    "ChEA_2022": {
        "MYC 18555785 ChIP-Seq MESCs Mouse": ["PSMA1,1.0", "PSMB1,1.0", "NDUFA1,1.0"],
    },
}


class FakeEnrichr(BaseHTTPRequestHandler):
    requests_seen: list[str] = []

    def do_GET(self):  # noqa: N802
        parts = urlsplit(self.path)
        type(self).requests_seen.append(self.path)
        q = parse_qs(parts.query)
        if parts.path != "/Enrichr/geneSetLibrary" or q.get("mode") != ["text"]:
            self.send_response(404)
            self.end_headers()
            return
        lib = LIBRARIES.get(q.get("libraryName", [""])[0], {})
        body = "".join(f"{t}\t\t" + "\t".join(g) + "\n" for t, g in lib.items()).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """A fresh cache per test, so cache hits are the ones the test itself made."""
    monkeypatch.setenv("CPDISTILLER_CACHE", str(tmp_path / "cache"))


@pytest.fixture()
def enrichr_server(local_http_server):
    FakeEnrichr.requests_seen = []
    _, base = local_http_server(FakeEnrichr)
    return f"{base}/Enrichr", FakeEnrichr.requests_seen


def closed_port_url() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}/Enrichr"


SCREEN = sorted({g.split(",")[0] for lib in LIBRARIES.values() for gs in lib.values() for g in gs}
                | {f"OTHER{i}" for i in range(30)})


def test_download_caches_library_and_second_call_makes_no_request(enrichr_server):
    url, seen = enrichr_server
    sets = en.resolve_gene_sets(["GO_Cellular_Component_2023", "ChEA_2022"], base_url=url)
    assert len(seen) == 2
    assert sets["ChEA_2022"]["MYC 18555785 ChIP-Seq MESCs Mouse"] == ["PSMA1", "PSMB1", "NDUFA1"]  # weights dropped
    assert (en.library_cache_dir() / "ChEA_2022.gmt").is_file()
    again = en.resolve_gene_sets(["GO_Cellular_Component_2023", "ChEA_2022"], base_url=url)
    assert again == sets
    assert len(seen) == 2  # served from the cache


def test_enrichment_uses_screen_background(enrichr_server):
    url, _ = enrichr_server
    sets = en.resolve_gene_sets(["GO_Cellular_Component_2023"], base_url=url)
    clusters = {1: ["PSMA1", "PSMA2", "PSMB1", "PSMB2", "OTHER1"], 2: ["OTHER2", "OTHER3"]}
    res = en.enrich_clusters(clusters, SCREEN, sets)
    assert list(res.columns) == en.RESULT_COLUMNS
    top = res[res["cluster"] == 1].iloc[0]
    assert top["term"] == "Proteasome Complex (GO:0000502)"
    assert top["overlap"] == "4/5"
    # hypergeometric test with the screen as background: N=len(SCREEN), set of 5, query of 5, 4 hits
    assert top["p_value"] == pytest.approx(hypergeom.sf(3, len(SCREEN), 5, 5))
    assert set(top["genes"].split(";")) == {"PSMA1", "PSMA2", "PSMB1", "PSMB2"}
    assert (res["cluster"] == 2).sum() == 0  # no overlap, no rows
    sig = en.top_terms(res, n=1, alpha=0.05)
    assert list(sig["term"]) == ["Proteasome Complex (GO:0000502)"]


def test_results_are_cached_on_disk(tmp_path):
    sets = {"A": ["G1", "G2", "G3"], "B": ["G4", "G5"]}
    bg = [f"G{i}" for i in range(1, 30)]
    first = en.enrich_genes(["G1", "G2", "G9"], bg, "lib", sets)
    files = list((Path(en.cache_dir()) / "enrichment").glob("*.csv"))
    assert files
    key = en._cache_key(sorted(["G1", "G2", "G9"]), sorted(bg), "lib", sets)
    path = Path(en.cache_dir()) / "enrichment" / f"{key}.csv"
    assert path.is_file()
    # the cached table is what a second call returns
    path.write_text(path.read_text().replace("A,2/3", "A,9/9"))
    second = en.enrich_genes(["G9", "G2", "G1"], bg, "lib", sets)
    assert first.loc[0, "overlap"] == "2/3" and second.loc[0, "overlap"] == "9/9"


def test_offline_fails_fast_with_how_to_use_local_gene_sets():
    t0 = time.monotonic()
    with pytest.raises(CpDistillerError) as info:
        en.resolve_gene_sets(["ChEA_2022"], base_url=closed_port_url())
    assert time.monotonic() - t0 < 2.0
    msg = str(info.value)
    assert "Enrichr" in msg and "--gmt" in msg and "--library-dir" in msg and "enrichr-download" in msg


def test_offline_mode_never_touches_the_network(enrichr_server, tmp_path):
    url, seen = enrichr_server
    with pytest.raises(CpDistillerError, match="not available offline"):
        en.resolve_gene_sets(["ChEA_2022"], base_url=url, offline=True)
    assert seen == []
    # a library directory (as written by `cpdistiller enrichr-download`) works offline
    en.download_library("ChEA_2022", out_dir=tmp_path / "libs", base_url=url)
    seen.clear()
    sets = en.resolve_gene_sets(["ChEA_2022"], library_dir=tmp_path / "libs", offline=True)
    assert "MYC 18555785 ChIP-Seq MESCs Mouse" in sets["ChEA_2022"] and seen == []


def test_gmt_files_and_bad_inputs(tmp_path, enrichr_server):
    gmt = tmp_path / "my_sets.gmt"
    gmt.write_text("Proteasome\tdemo\tPSMA1\tPSMA2\tPSMB1\nOther\t\tTP53\n")
    sets = en.resolve_gene_sets([], gmt_files=[gmt])
    assert sets == {"my_sets": {"Proteasome": ["PSMA1", "PSMA2", "PSMB1"], "Other": ["TP53"]}}
    res = en.enrich_clusters({"c1": ["PSMA1", "PSMA2", "MYC"]}, SCREEN, sets)
    assert res.iloc[0]["library"] == "my_sets" and res.iloc[0]["term"] == "Proteasome"
    with pytest.raises(CpDistillerError, match="not found"):
        en.read_gmt(tmp_path / "missing.gmt")
    (tmp_path / "empty.gmt").write_text("just one column\n")
    with pytest.raises(CpDistillerError, match="no gene sets"):
        en.read_gmt(tmp_path / "empty.gmt")
    url, _ = enrichr_server
    with pytest.raises(CpDistillerError, match="no gene sets for library 'Not_A_Library'"):
        en.download_library("Not_A_Library", base_url=url)


def test_base_url_from_environment(monkeypatch, enrichr_server):
    url, seen = enrichr_server
    monkeypatch.setenv(en.ENRICHR_URL_ENV, url)
    en.download_library("GO_Cellular_Component_2023", force=True)
    assert seen and seen[0].startswith("/Enrichr/geneSetLibrary")


def test_demo_gene_sets_ship_with_the_package():
    if not en.DEMO_GMT.is_file():
        pytest.skip("demo gene sets not written yet")
    sets = en.read_gmt(en.DEMO_GMT)
    assert len(sets) >= 2 and all(len(v) >= 2 for v in sets.values())
