"""ARCHS4 co-expression gene groups (gget ``archs4``, ``which="correlation"``), cached one file per gene.

For each screened gene, ARCHS4's most correlated genes (top 100 by default) above a Pearson threshold
(0.6) that are also on the screen become edges; connected components of those edges are gene groups.
A user-supplied table (gene, partner[, correlation]) or (gene, group) works in place of ARCHS4.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.stats import hypergeom

from ..errors import CpDistillerError
from ..paths import atomic_write_text, cache_dir
from ..progress import ProgressCallback, no_progress
from . import netcheck

ARCHS4_URL = "https://maayanlab.cloud/matrixapi/coltop"  # gget.constants.GENECORR_URL
ARCHS4_URL_ENV = "CPDISTILLER_ARCHS4_URL"
OFFLINE_HINT = ("Supply your own gene groups instead: a CSV/TSV with columns gene,partner[,correlation] "
                "or gene,group (--gene-groups FILE). Genes fetched once are cached and need no network.")
EDGE_COLUMNS = ["gene", "partner", "correlation"]
_GGET_LOCK = threading.Lock()


def archs4_url(base_url: str | None = None) -> str:
    """ARCHS4 gene-correlation endpoint: the argument, else $CPDISTILLER_ARCHS4_URL, else the public one."""
    return base_url or os.environ.get(ARCHS4_URL_ENV) or ARCHS4_URL


def _cache_path(gene: str, top: int) -> Path:
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in gene.upper())
    return cache_dir() / "archs4" / f"{safe}.top{int(top)}.csv"


def _fetch(gene: str, top: int, url: str) -> pd.DataFrame:
    """One gget.archs4 call against ``url`` (gget reads its endpoint from a module constant)."""
    import gget
    import gget.gget_archs4 as mod

    with _GGET_LOCK:
        old = mod.GENECORR_URL
        mod.GENECORR_URL = url
        try:
            res = gget.archs4(gene, which="correlation", gene_count=int(top), verbose=False)
        except Exception as exc:  # gget raises RuntimeError on HTTP errors, requests errors otherwise
            raise CpDistillerError(f"ARCHS4 request for {gene} failed: {exc}") from exc
        finally:
            mod.GENECORR_URL = old
    if res is None:  # gget logs and returns None when ARCHS4 does not know the gene
        return pd.DataFrame(columns=["gene_symbol", "pearson_correlation"])
    return pd.DataFrame(res)[["gene_symbol", "pearson_correlation"]]


def require_archs4(base_url: str | None = None, gene: str = "ACTB", top: int = 100) -> None:
    """Fail fast unless ARCHS4 answers: a TCP check, then one query as gget sends it (no retries,
    bounded time; gget's own request has no timeout). HTTP 4xx/5xx is "no access to ARCHS4"."""
    url = archs4_url(base_url)
    netcheck.require(url, "ARCHS4", OFFLINE_HINT,
                     probe={"method": "POST", "json": {"id": gene.upper(), "count": int(top) + 1}})


def correlated_genes(genes: Sequence[str], top: int = 100, base_url: str | None = None,
                     offline: bool = False, progress: ProgressCallback = no_progress) -> dict[str, pd.DataFrame]:
    """ARCHS4's ``top`` most correlated genes for each gene (gene_symbol, pearson_correlation), cached."""
    genes = list(dict.fromkeys(str(g).upper() for g in genes if str(g)))
    out: dict[str, pd.DataFrame] = {}
    todo = []
    for g in genes:
        p = _cache_path(g, top)
        if p.is_file():
            out[g] = pd.read_csv(p, keep_default_na=False, na_values=[""])
        else:
            todo.append(g)
    if todo:
        url = archs4_url(base_url)
        if offline:
            raise CpDistillerError(f"{len(todo)} gene(s) are not in the ARCHS4 cache (e.g. {todo[0]}) and "
                                   f"offline mode is on. {OFFLINE_HINT}")
        require_archs4(url, todo[0], top)
        for i, g in enumerate(todo):
            df = _fetch(g, top, url)
            atomic_write_text(_cache_path(g, top), df.to_csv(index=False))
            out[g] = df
            progress((i + 1) / len(todo), f"ARCHS4 {g}")
    return out


def archs4_edges(genes: Sequence[str], threshold: float = 0.6, top: int = 100, base_url: str | None = None,
                 offline: bool = False, progress: ProgressCallback = no_progress) -> pd.DataFrame:
    """Co-expression edges among ``genes``: partner in gene's ARCHS4 top list with correlation >= threshold."""
    screen = {str(g).upper(): str(g) for g in genes}
    rows = []
    for g, df in correlated_genes(list(screen), top, base_url, offline, progress).items():
        for partner, r in zip(df["gene_symbol"].astype(str).str.upper(), df["pearson_correlation"]):
            if partner in screen and partner != g and float(r) >= threshold:
                rows.append((screen[g], screen[partner], float(r)))
    return pd.DataFrame(rows, columns=EDGE_COLUMNS)


def read_gene_groups(path: str | Path) -> pd.DataFrame:
    """A user table of edges (gene, partner[, correlation]) or memberships (gene, group) -> edges."""
    path = Path(path)
    if not path.is_file():
        raise CpDistillerError(f"gene-group table not found: {path}.")
    sep = "\t" if path.suffix.lower() in (".tsv", ".txt") else ","
    df = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
    cols = {c.lower().strip(): c for c in df.columns}
    if "gene" in cols and "partner" in cols:
        corr = pd.to_numeric(df[cols["correlation"]], errors="coerce") if "correlation" in cols else 1.0
        return pd.DataFrame({"gene": df[cols["gene"]], "partner": df[cols["partner"]], "correlation": corr})
    if "gene" in cols and "group" in cols:
        rows = []
        for _, grp in df.groupby(cols["group"], sort=False):
            members = list(dict.fromkeys(grp[cols["gene"]]))
            rows += [(a, b, 1.0) for i, a in enumerate(members) for b in members[i + 1:]]
        return pd.DataFrame(rows, columns=EDGE_COLUMNS)
    raise CpDistillerError(f"{path}: expected columns gene,partner[,correlation] or gene,group; "
                           f"found {list(df.columns)}.")


def gene_groups(edges: pd.DataFrame, genes: Sequence[str]) -> pd.DataFrame:
    """Connected components of the co-expression edges among ``genes``: gene, group (0 = no partner)."""
    genes = [str(g) for g in genes]
    pos = {g.upper(): i for i, g in enumerate(genes)}
    e = [(pos[a.upper()], pos[b.upper()]) for a, b in zip(edges["gene"].astype(str), edges["partner"].astype(str))
         if a.upper() in pos and b.upper() in pos]
    n = len(genes)
    group = np.zeros(n, dtype=int)
    if e:
        i, j = np.array(e).T
        graph = coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n))
        _, comp = connected_components(graph, directed=False)
        sizes = np.bincount(comp)
        multi = [c for c in dict.fromkeys(comp) if sizes[c] > 1]  # numbered in order of first gene
        remap = {c: k for k, c in enumerate(multi, start=1)}
        group = np.array([remap.get(c, 0) for c in comp], dtype=int)
    return pd.DataFrame({"gene": genes, "group": group})


def coexpression_by_cluster(assignments: pd.DataFrame, edges: pd.DataFrame) -> pd.DataFrame:
    """Per cluster: co-expressed gene pairs inside it vs. all screened pairs (hypergeometric p-value).

    ``assignments`` has columns label (gene) and cluster, as from ``Clustering.assignments()``.
    """
    labels = assignments["label"].astype(str).str.upper().to_numpy()
    cluster_of = dict(zip(labels, assignments["cluster"]))
    pairs = {tuple(sorted((a.upper(), b.upper()))) for a, b in zip(edges["gene"].astype(str),
                                                                     edges["partner"].astype(str))
             if a.upper() in cluster_of and b.upper() in cluster_of and a.upper() != b.upper()}
    n = len(labels)
    total_pairs, total_coexp = n * (n - 1) // 2, len(pairs)
    rows = []
    for c, size in assignments.groupby("cluster")["label"].size().items():
        k = size * (size - 1) // 2
        x = sum(1 for a, b in pairs if cluster_of[a] == c and cluster_of[b] == c)
        p = float(hypergeom.sf(x - 1, total_pairs, total_coexp, k)) if k and total_pairs else float("nan")
        rows.append({"cluster": c, "pairs": k, "coexpressed_pairs": x,
                     "fraction": x / k if k else float("nan"),
                     "screen_fraction": total_coexp / total_pairs if total_pairs else float("nan"),
                     "p_value": p})
    return pd.DataFrame(rows)
