"""`cpdistiller genes`, `retrieve` and `enrichr-download` end to end (local HTTP server, no internet)."""

from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pandas as pd
import pytest

from cpdistiller_core.cli import main

MODULES = {"PROTEASOME_SET": ["PSMA1", "PSMA2", "PSMB1", "PSMB2", "PSMD1", "PSMD2"],
           "RIBOSOME_SET": ["RPL3", "RPL5", "RPS3", "RPS6", "RPS14", "RPL11"]}
FILLER = [f"GENE{i}" for i in range(24)]
COLS = ["--plate-col", "Metadata_Plate", "--well-col", "Metadata_Well", "--perturbation-col", "Metadata_gene",
        "--control-col", "Metadata_type", "--negative", "control"]


def write_screen(path: Path, seed: int = 0, signal: float = 1.0) -> Path:
    """Two functional modules with shared phenotypes, unrelated genes, compounds targeting modules, DMSO."""
    rng = np.random.default_rng(seed)
    d = 12
    rows, X = [], []
    centres = {name: rng.normal(size=d) * 5 for name in MODULES}

    def add(gene, kind, target, centre, reps=3):
        for _ in range(reps):
            rows.append({"Metadata_gene": gene, "Metadata_type": kind, "Metadata_symbol": gene if kind == "crispr" else None,
                         "Metadata_target": target})
            X.append(signal * centre + 0.4 * rng.normal(size=d))

    for name, genes in MODULES.items():
        for g in genes:
            add(g, "crispr", g, centres[name] + rng.normal(size=d) * 0.5)
    filler = {g: rng.normal(size=d) * 4 for g in FILLER}
    for g in FILLER:
        add(g, "crispr", g, filler[g])
    for g in FILLER[:8]:  # compounds with the phenotype of their target
        add(f"inhibitor-{g}", "compound", g, filler[g])
    add("bortezomib", "compound", "PSMB1|PSMB5", centres["PROTEASOME_SET"])
    add("MG-132", "compound", "PSMA1|PSMB1", centres["PROTEASOME_SET"])
    add("homoharringtonine", "compound", "RPL3", centres["RIBOSOME_SET"])
    add("aspirin", "compound", "PTGS1|PTGS2", rng.normal(size=d) * 4)
    add("DMSO", "control", None, np.zeros(d), reps=40)
    meta = pd.DataFrame(rows)
    n = len(meta)
    meta.insert(0, "Metadata_Well", [f"{chr(65 + (i // 24) % 16)}{i % 24 + 1:02d}" for i in range(n)])
    meta.insert(0, "Metadata_Plate", [f"P{i // 384}" for i in range(n)])
    feats = pd.DataFrame(np.array(X), columns=[f"Cells_AreaShape_f{j}" for j in range(d)])
    pd.concat([meta, feats], axis=1).to_csv(path, index=False)
    return path


@pytest.fixture()
def screen_csv(tmp_path) -> Path:
    return write_screen(tmp_path / "screen.csv")


@pytest.fixture()
def gmt(tmp_path) -> Path:
    path = tmp_path / "modules.gmt"
    path.write_text("".join(f"{k}\ttest\t" + "\t".join(v) + "\n" for k, v in MODULES.items()))
    return path


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_genes_clusters_and_enriches_planted_modules(screen_csv, gmt, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["genes", str(screen_csv), *COLS, "--out", str(out), "--type-col", "Metadata_type", "--type", "crispr",
               "--gmt", str(gmt), "--metric", "cosine", "--clusters", "6", "--permutations", "300"])
    assert rc == 0
    for name in ("active_screen.csv", "clusters.csv", "cluster_table.csv", "enrichment.csv",
                 "figures/active_screen.html", "figures/dendrogram.html", "figures/enrichment.html"):
        assert (out / name).is_file(), name
    clusters = pd.read_csv(out / "clusters.csv").set_index("label")["cluster"]
    for genes in MODULES.values():
        assert clusters[genes].nunique() == 1  # each module is one cluster
    table = pd.read_csv(out / "cluster_table.csv").set_index("cluster")
    enr = pd.read_csv(out / "enrichment.csv")
    for term, genes in MODULES.items():
        c = clusters[genes[0]]
        assert table.loc[c, "significant"]
        best = enr[enr["cluster"] == c].sort_values("adjusted_p_value").iloc[0]
        assert best["term"] == term and best["library"] == "modules"
    active = pd.read_csv(out / "active_screen.csv")
    assert "bortezomib" not in set(active["perturbation"])  # compounds filtered out by --type
    text = capsys.readouterr().out
    assert "PROTEASOME_SET (modules" in text and "RIBOSOME_SET (modules" in text


def test_genes_with_user_gene_groups(screen_csv, gmt, tmp_path):
    groups = tmp_path / "groups.csv"
    groups.write_text("gene,group\nPSMA1,p\nPSMA2,p\nPSMB1,p\nRPL3,r\nRPS3,r\nGENE0,x\n")
    out = tmp_path / "out"
    rc = main(["genes", str(screen_csv), *COLS, "--out", str(out), "--no-enrichment", "--metric", "cosine",
               "--clusters", "6", "--permutations", "50", "--gene-groups", str(groups)])
    assert rc == 0
    coexp = pd.read_csv(out / "coexpression.csv")
    assert coexp["coexpressed_pairs"].sum() == 4  # 3 proteasome pairs + 1 ribosome pair, all within clusters
    assert (pd.read_csv(out / "gene_groups.csv")["group"] > 0).sum() == 5


def test_genes_offline_enrichr_fails_fast_with_one_line(screen_csv, tmp_path, capsys):
    t0 = time.monotonic()
    rc = main(["genes", str(screen_csv), *COLS, "--out", str(tmp_path / "o"), "--libraries", "ChEA_2022",
               "--enrichr-url", f"http://127.0.0.1:{closed_port()}/Enrichr"])
    assert rc == 1 and time.monotonic() - t0 < 10  # includes reading the CSV; the check itself is < 2 s
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "cannot reach Enrichr" in err[0] and "--gmt" in err[0] and "enrichr-download" in err[0]


class FakeEnrichr(BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self):  # noqa: N802
        type(self).hits.append(self.path)
        q = parse_qs(urlsplit(self.path).query)
        name = q.get("libraryName", [""])[0]
        body = "".join(f"{k}\t\t" + "\t".join(f"{g},1.0" for g in v) + "\n" for k, v in MODULES.items()) \
            if name == "Test_Library_2024" else ""
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_enrichr_download_then_offline_library_dir(screen_csv, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CPDISTILLER_CACHE", str(tmp_path / "cache"))
    FakeEnrichr.hits = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeEnrichr)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/Enrichr"
    try:
        libs = tmp_path / "libs"
        assert main(["enrichr-download", "Test_Library_2024", "--out", str(libs), "--enrichr-url", url]) == 0
        assert "Test_Library_2024: 2 gene sets" in capsys.readouterr().out
        assert main(["enrichr-download", "Test_Library_2024", "--out", str(libs), "--enrichr-url", url]) == 0
        assert len(FakeEnrichr.hits) == 1  # the file was already there
        assert main(["enrichr-download", "Nope", "--out", str(libs), "--enrichr-url", url]) == 1
    finally:
        server.shutdown()
        server.server_close()
    out = tmp_path / "out"
    rc = main(["genes", str(screen_csv), *COLS, "--out", str(out), "--libraries", "Test_Library_2024",
               "--library-dir", str(libs), "--offline", "--metric", "cosine", "--clusters", "6",
               "--permutations", "50"])
    assert rc == 0
    enr = pd.read_csv(out / "enrichment.csv")
    assert set(enr.loc[enr["adjusted_p_value"] < 0.05, "term"]) == set(MODULES)


def test_retrieve_corrected_vs_uncorrected_and_query(tmp_path, capsys):
    good = write_screen(tmp_path / "good.csv", seed=0)
    bad = write_screen(tmp_path / "bad.csv", seed=0, signal=0.0)  # same layout, no biology
    out = tmp_path / "ret"
    rc = main(["retrieve", str(good), *COLS, "--uncorrected", str(bad), "--out", str(out),
               "--gene-col", "Metadata_symbol", "--target-col", "Metadata_target", "--null-size", "500",
               "--query", "PSMB1", "--top", "5"])
    assert rc == 0
    s = pd.read_csv(out / "retrieval_summary.csv").set_index(["method", "task", "metric"])["value"]
    assert s[("input", "gene_compound", "fraction_retrieved")] > s[("uncorrected", "gene_compound", "fraction_retrieved")]
    assert s[("input", "replicates", "mAP")] > s[("uncorrected", "replicates", "mAP")]
    pairs = pd.read_csv(out / "retrieval_pairs.csv")
    assert {"MG-132", "bortezomib"} <= set(pairs["b"])
    assert (out / "figures" / "fraction_retrieved.html").is_file()
    q = pd.read_csv(out / "query_PSMB1_input.csv")
    # the top 5 are the proteasome module's genes and compounds; the compounds are the known pairs
    assert set(q["perturbation"]) <= set(MODULES["PROTEASOME_SET"]) | {"MG-132", "bortezomib"}
    assert q["known_pair"].any()
    assert set(q.loc[q["known_pair"], "perturbation"]) == {"MG-132", "bortezomib"} & set(q["perturbation"])
    assert "-- PSMB1 (input): " in capsys.readouterr().out


def test_retrieve_needs_pair_columns(screen_csv, tmp_path, capsys):
    assert main(["retrieve", str(screen_csv), *COLS, "--out", str(tmp_path / "r")]) == 1
    assert "--gene-col" in capsys.readouterr().err


def test_retrieve_and_genes_on_lincs(shared_data, tmp_path):
    data = shared_data / "lincs_a549" / "SQ00015054_normalized_feature_select.csv.gz"
    out = tmp_path / "lincs"
    rc = main(["retrieve", str(data), "--perturbation-col", "Metadata_broad_sample", "--control-col",
               "Metadata_pert_type", "--negative", "control", "--out", str(out), "--gene-col", "Metadata_target",
               "--null-size", "500", "--query", "DRD2"])
    assert rc == 0
    s = pd.read_csv(out / "retrieval_summary.csv").set_index(["task", "metric"])["value"]
    assert 0 < s[("replicates", "mAP")] <= 1 and 0 <= s[("sister", "fraction_retrieved")] <= 1
    rc = main(["genes", str(data), "--perturbation-col", "Metadata_broad_sample", "--control-col",
               "Metadata_pert_type", "--negative", "control", "--out", str(tmp_path / "g"), "--no-enrichment",
               "--metric", "cosine", "--top-n", "30", "--clusters", "5", "--permutations", "100"])
    assert rc == 0
    assert len(pd.read_csv(tmp_path / "g" / "clusters.csv")) <= 30
