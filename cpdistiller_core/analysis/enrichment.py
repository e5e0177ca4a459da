"""Gene-set enrichment per cluster with gseapy, on Enrichr libraries or local ``.gmt`` files.

Enrichr libraries are fetched once from Enrichr's ``geneSetLibrary`` endpoint (the one gseapy's
``download_library`` uses) and kept as ``.gmt`` under ``cache_dir()/enrichr``; enrichment itself is
gseapy's hypergeometric test (``gseapy.enrich``) with the genes on the screen as background, so gene
sets are restricted to screened genes exactly as Enrichr's background mode does. Nothing needs the
network once the libraries are cached, or when local ``.gmt`` files / a library directory are given.
Results are cached too, keyed by the gene lists, the background and the library contents.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from ..errors import CpDistillerError
from ..paths import atomic_write_text, cache_dir
from . import netcheck

DEFAULT_LIBRARIES = ("GO_Cellular_Component_2023", "ChEA_2022", "Enrichr_Submissions_TF-Gene_Coocurrence")
ENRICHR_URL = "https://maayanlab.cloud/Enrichr"
ENRICHR_URL_ENV = "CPDISTILLER_ENRICHR_URL"
DEMO_GMT = Path(__file__).resolve().parents[1] / "datasets" / "demo_gene_sets.gmt"
RESULT_COLUMNS = ["cluster", "library", "term", "overlap", "p_value", "adjusted_p_value", "odds_ratio",
                  "combined_score", "genes"]
OFFLINE_HINT = (
    "Use local gene sets instead: pass .gmt files (--gmt FILE.gmt) or a directory of "
    "<library>.gmt files (--library-dir DIR); download them on a connected machine with "
    "`cpdistiller enrichr-download --out DIR`. The demo's gene sets are in " + str(DEMO_GMT) + "."
)

GeneSets = dict[str, list[str]]


def enrichr_url(base_url: str | None = None) -> str:
    """Enrichr base URL: the argument, else $CPDISTILLER_ENRICHR_URL, else the public service."""
    return (base_url or os.environ.get(ENRICHR_URL_ENV) or ENRICHR_URL).rstrip("/")


def library_cache_dir() -> Path:
    path = cache_dir() / "enrichr"
    path.mkdir(parents=True, exist_ok=True)
    return path


def read_gmt(path: str | Path) -> GeneSets:
    """Read a ``.gmt`` file (term, description, genes…) with gseapy's parser."""
    from gseapy.parser import read_gmt as _read

    path = Path(path)
    if not path.is_file():
        raise CpDistillerError(f"gene set file not found: {path}.")
    try:
        sets = _read(str(path))
    except ValueError as exc:
        raise CpDistillerError(f"{path}: {exc}") from exc
    sets = {k: [g for g in v if g] for k, v in sets.items()}
    if not sets:
        raise CpDistillerError(f"{path}: no gene sets found (expected tab-separated term, description, genes).")
    return sets


def write_gmt(sets: Mapping[str, Sequence[str]], path: Path, description: str = "") -> Path:
    text = "".join(f"{term}\t{description}\t" + "\t".join(genes) + "\n" for term, genes in sets.items())
    atomic_write_text(path, text)
    return path


def _parse_enrichr_text(text: str) -> GeneSets:
    sets: GeneSets = {}
    for line in text.splitlines():
        parts = line.strip().split("\t")
        if len(parts) < 3:
            continue
        genes = [g.split(",")[0] for g in parts[2:] if g]
        if genes:
            sets[parts[0]] = genes
    return sets


_LIBRARY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_+-]*(?:\.[A-Za-z0-9_+-]+)*$")


def check_library_name(name: str) -> str:
    """An Enrichr library name safe to join into a cache path (letters, digits, ``_+-`` and single dots;
    no ``/``, ``\\`` or ``..``), else a CpDistillerError: names come from users, e.g. the dashboard."""
    text = str(name).strip()
    if len(text) > 120 or not _LIBRARY_NAME.match(text):
        raise CpDistillerError(f"{str(name)[:60]!r} is not an Enrichr library name (letters, digits, '_', '-', "
                               "'+' and '.' only); pass local files with --gmt instead.")
    return text


def download_library(name: str, out_dir: str | Path | None = None, base_url: str | None = None,
                     force: bool = False, timeout: float = 120.0) -> Path:
    """Fetch an Enrichr library as ``<out_dir>/<name>.gmt`` (default: the cache); reuse it unless ``force``."""
    import requests

    name = check_library_name(name)
    out = Path(out_dir) if out_dir else library_cache_dir()
    path = out / f"{name}.gmt"
    if path.is_file() and not force:
        return path
    base = enrichr_url(base_url)
    netcheck.require(base, "Enrichr", OFFLINE_HINT)
    try:
        resp = requests.get(f"{base}/geneSetLibrary", params={"mode": "text", "libraryName": name},
                            timeout=(3.0, timeout))
    except requests.RequestException as exc:
        if isinstance(exc, requests.exceptions.ProxyError):
            netcheck.require(base, "Enrichr", OFFLINE_HINT, probe={"url": f"{base}/datasetStatistics"})
        raise CpDistillerError(f"downloading Enrichr library {name!r} failed: {exc}. {OFFLINE_HINT}") from exc
    sets = _parse_enrichr_text(resp.text) if resp.ok else {}
    if not sets and resp.status_code >= 400:  # a wrong name, or a proxy refusing every request?
        netcheck.require(base, "Enrichr", OFFLINE_HINT, probe={"url": f"{base}/datasetStatistics"})
    if not sets:
        raise CpDistillerError(
            f"Enrichr returned no gene sets for library {name!r} (HTTP {resp.status_code}); check the "
            "name against https://maayanlab.cloud/Enrichr/#libraries."
        )
    return write_gmt(sets, path, name)


def resolve_gene_sets(libraries: Sequence[str] = DEFAULT_LIBRARIES, gmt_files: Sequence[str | Path] = (),
                      library_dir: str | Path | None = None, base_url: str | None = None,
                      offline: bool = False) -> dict[str, GeneSets]:
    """Gene sets by library name: ``.gmt`` files (named by their stem), then each Enrichr library from
    ``library_dir``, the cache, or (unless ``offline``) a download."""
    out: dict[str, GeneSets] = {}
    for f in gmt_files:
        out[Path(f).stem] = read_gmt(f)
    for name in libraries:
        name = check_library_name(name)
        candidates = [Path(library_dir) / f"{name}.gmt"] if library_dir else []
        candidates.append(library_cache_dir() / f"{name}.gmt")
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            if offline:
                raise CpDistillerError(f"Enrichr library {name!r} is not available offline. {OFFLINE_HINT}")
            found = download_library(name, base_url=base_url)
        out[name] = read_gmt(found)
    if not out:
        raise CpDistillerError("no gene sets given: name Enrichr libraries or pass .gmt files.")
    return out


def _cache_key(genes: Sequence[str], background: Sequence[str], library: str, sets: GeneSets) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([sorted(genes), sorted(background), library,
                         sorted((k, sorted(v)) for k, v in sets.items())]).encode())
    return h.hexdigest()[:32]


def enrich_genes(genes: Sequence[str], background: Sequence[str], library: str, sets: GeneSets) -> pd.DataFrame:
    """gseapy hypergeometric enrichment of ``genes`` in one library against ``background`` (cached)."""
    import gseapy

    genes = sorted({str(g) for g in genes if str(g)})
    background = sorted({str(g) for g in background if str(g)} | set(genes))
    path = cache_dir() / "enrichment" / f"{_cache_key(genes, background, library, sets)}.csv"
    if path.is_file():
        return pd.read_csv(path, keep_default_na=False, na_values=[""])
    cols = RESULT_COLUMNS[1:]
    res = None
    if any(set(genes).intersection(v) for v in sets.values()):  # gseapy logs an error on no hits
        enr = gseapy.enrich(gene_list=genes, gene_sets=sets, background=background, outdir=None,
                            no_plot=True, verbose=False)
        res = enr.res2d
    if res is None or len(res) == 0:
        table = pd.DataFrame(columns=cols)
    else:
        table = pd.DataFrame({
            "library": library, "term": res["Term"], "overlap": res["Overlap"], "p_value": res["P-value"],
            "adjusted_p_value": res["Adjusted P-value"], "odds_ratio": res["Odds Ratio"],
            "combined_score": res["Combined Score"], "genes": res["Genes"],
        }).sort_values(["adjusted_p_value", "p_value"], kind="stable").reset_index(drop=True)
    buf = io.StringIO()
    table.to_csv(buf, index=False)
    atomic_write_text(path, buf.getvalue())
    return table


def enrich_clusters(clusters: Mapping[str | int, Sequence[str]], background: Sequence[str],
                    gene_sets: Mapping[str, GeneSets]) -> pd.DataFrame:
    """Enrichment of every cluster in every library; one table sorted by cluster then adjusted p."""
    parts = []
    for cluster, genes in clusters.items():
        for library, sets in gene_sets.items():
            t = enrich_genes(genes, background, library, sets)
            if len(t):
                t.insert(0, "cluster", cluster)
                parts.append(t)
    if not parts:
        return pd.DataFrame(columns=RESULT_COLUMNS)
    return pd.concat(parts, ignore_index=True)[RESULT_COLUMNS]


def top_terms(results: pd.DataFrame, n: int = 3, alpha: float = 0.05) -> pd.DataFrame:
    """The ``n`` best significant terms per cluster and library."""
    sig = results[results["adjusted_p_value"] < alpha]
    return (sig.sort_values("adjusted_p_value", kind="stable").groupby(["cluster", "library"], sort=True)
            .head(n).sort_values(["cluster", "library", "adjusted_p_value"]).reset_index(drop=True))
