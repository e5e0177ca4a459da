"""ARCHS4 co-expression groups through gget, against a local server that answers like ARCHS4's API."""

from __future__ import annotations

import json
import socket
import time
from http.server import BaseHTTPRequestHandler

import pandas as pd
import pytest

from cpdistiller_core import CpDistillerError
from cpdistiller_core.analysis import archs4

# Correlation lists as ARCHS4's matrixapi/coltop returns them: the gene itself first.
CORRELATIONS = {
    "PSMA1": [("PSMA1", 1.0), ("PSMB1", 0.91), ("PSMA2", 0.85), ("NOTSCREENED", 0.95), ("MYC", 0.3)],
    "PSMA2": [("PSMA2", 1.0), ("PSMA1", 0.85), ("PSMB2", 0.7)],
    "PSMB1": [("PSMB1", 1.0), ("PSMA1", 0.91)],
    "PSMB2": [("PSMB2", 1.0), ("PSMA2", 0.7)],
    "NDUFA1": [("NDUFA1", 1.0), ("NDUFB2", 0.8)],
    "NDUFB2": [("NDUFB2", 1.0), ("NDUFA1", 0.8)],
    "MYC": [("MYC", 1.0), ("PSMA1", 0.3)],
}


class FakeArchs4(BaseHTTPRequestHandler):
    bodies: list[dict] = []

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).bodies.append(body)
        gene = body["id"]
        if self.path != "/matrixapi/coltop":
            self.send_response(404)
            self.end_headers()
            return
        if gene in CORRELATIONS:
            rows = CORRELATIONS[gene][: int(body["count"])]
            out = {"rowids": [r[0] for r in rows], "values": [r[1] for r in rows]}
        else:
            out = {"error": f"{gene} not in colids"}
        data = json.dumps(out).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CPDISTILLER_CACHE", str(tmp_path / "cache"))


@pytest.fixture()
def archs4_server(local_http_server):
    FakeArchs4.bodies = []
    _, base = local_http_server(FakeArchs4)
    return f"{base}/matrixapi/coltop", FakeArchs4.bodies


SCREEN = ["PSMA1", "PSMA2", "PSMB1", "PSMB2", "NDUFA1", "NDUFB2", "MYC", "UNKNOWN1"]


def test_edges_threshold_screen_intersection_and_cache(archs4_server):
    url, bodies = archs4_server
    edges = archs4.archs4_edges(SCREEN, threshold=0.6, top=100, base_url=url)
    assert {b["id"] for b in bodies} == set(SCREEN)
    assert all(b["count"] == 101 for b in bodies)  # gget asks for top + 1 (the gene itself)
    pairs = {(a, b) for a, b in zip(edges["gene"], edges["partner"])}
    assert ("PSMA1", "PSMB1") in pairs and ("PSMA2", "PSMB2") in pairs
    assert not any("NOTSCREENED" in p for p in pairs)  # not on the screen
    assert ("PSMA1", "MYC") not in pairs  # below the 0.6 threshold
    # one file per gene in the cache; a second run (any threshold) needs no network
    n = len(bodies)
    cached = sorted(p.name for p in (archs4.cache_dir() / "archs4").iterdir())
    assert len(cached) == len(SCREEN)
    low = archs4.archs4_edges(SCREEN, threshold=0.2, top=100, base_url=url)
    assert len(bodies) == n
    assert ("PSMA1", "MYC") in set(zip(low["gene"], low["partner"]))
    # offline mode works from the cache alone
    again = archs4.archs4_edges(SCREEN, threshold=0.6, top=100, offline=True)
    pd.testing.assert_frame_equal(again, edges)


def test_groups_are_connected_components(archs4_server):
    url, _ = archs4_server
    edges = archs4.archs4_edges(SCREEN, base_url=url)
    groups = archs4.gene_groups(edges, SCREEN).set_index("gene")["group"]
    assert groups["PSMA1"] == groups["PSMA2"] == groups["PSMB1"] == groups["PSMB2"] == 1
    assert groups["NDUFA1"] == groups["NDUFB2"] == 2
    assert groups["MYC"] == 0 and groups["UNKNOWN1"] == 0


def test_coexpression_by_cluster(archs4_server):
    url, _ = archs4_server
    edges = archs4.archs4_edges(SCREEN, base_url=url)
    assign = pd.DataFrame({"label": SCREEN, "cluster": [1, 1, 1, 1, 2, 2, 3, 3]})
    res = archs4.coexpression_by_cluster(assign, edges).set_index("cluster")
    # cluster 1: PSMA1-PSMB1, PSMA1-PSMA2, PSMA2-PSMB2 of 6 pairs; cluster 2: 1 of 1
    assert res.loc[1, "coexpressed_pairs"] == 3 and res.loc[1, "pairs"] == 6
    assert res.loc[2, "fraction"] == 1.0 and res.loc[3, "coexpressed_pairs"] == 0
    assert res.loc[1, "p_value"] < res.loc[3, "p_value"] == 1.0


def test_offline_is_fast_and_says_what_to_do():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    t0 = time.monotonic()
    with pytest.raises(CpDistillerError) as info:
        archs4.archs4_edges(["PSMA1"], base_url=f"http://127.0.0.1:{port}/matrixapi/coltop")
    assert time.monotonic() - t0 < 2.0
    assert "ARCHS4" in str(info.value) and "--gene-groups" in str(info.value)
    with pytest.raises(CpDistillerError, match="offline mode"):
        archs4.archs4_edges(["PSMA1"], offline=True)


def test_user_tables_replace_archs4(tmp_path):
    edges_csv = tmp_path / "edges.csv"
    edges_csv.write_text("gene,partner,correlation\nPSMA1,PSMB1,0.9\nNDUFA1,NDUFB2,0.8\n")
    e = archs4.read_gene_groups(edges_csv)
    assert list(e.columns) == archs4.EDGE_COLUMNS and len(e) == 2
    groups_tsv = tmp_path / "groups.tsv"
    groups_tsv.write_text("Gene\tGroup\nPSMA1\tproteasome\nPSMA2\tproteasome\nPSMB1\tproteasome\nMYC\tmyc\n")
    g = archs4.read_gene_groups(groups_tsv)
    assert len(g) == 3  # all pairs within 'proteasome'; a one-gene group has none
    groups = archs4.gene_groups(g, SCREEN).set_index("gene")["group"]
    assert groups["PSMA1"] == groups["PSMB1"] == 1 and groups["MYC"] == 0
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(CpDistillerError, match="expected columns"):
        archs4.read_gene_groups(bad)
