"""Retrieval of known relationships: sister perturbations of one gene and gene–compound pairs.

Pairs are built from metadata: a gene column (the gene each ORF/guide/allele perturbs) and a
target column (compound targets, pipe-separated gene symbols allowed). The scores come from
:mod:`cpdistiller_core.metrics` (copairs mAP, CPJUMP1 fraction retrieved); :func:`query` ranks
perturbations by cosine similarity of consensus profiles to a gene or compound.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from .. import metrics
from ..errors import CpDistillerError
from ..metrics import MetricUnavailable
from ..profiles import Profiles
from ..progress import ProgressCallback, no_progress
from .consensus import consensus

TASKS = ("sister", "gene_compound", "annotation")
# Column presets for published retrieval tasks: name -> the metadata columns that define known pairs.
RECIPES: dict[str, dict[str, str]] = {
    # The JUMP pilot as `cpdistiller jump fetch --dataset cpg0000` annotates it: sister guides / ORFs share
    # Metadata_Symbol; a compound and a gene pair when the gene is in the compound's Metadata_target_list.
    "cpjump1": {"gene_col": "Metadata_Symbol", "target_col": "Metadata_target_list", "sep": "|"},
}
_SYMBOLS = "Metadata_cpd_symbols"


def symbols(values: Sequence[object], sep: str = "|") -> list[frozenset[str]]:
    """Upper-case gene-symbol sets from values like 'EGFR' or 'EGFR|ERBB2' (empty for missing)."""
    out = []
    for v in values:
        if v is None or pd.isna(v):
            out.append(frozenset())
            continue
        out.append(frozenset(s.strip().upper() for s in str(v).split(sep) if s.strip()))
    return out


def perturbation_symbols(emb: Profiles, column: str, sep: str = "|") -> dict[str, frozenset[str]]:
    """Gene symbols per (non-control) perturbation from a metadata column (union over its wells)."""
    if column not in emb.meta.columns:
        raise CpDistillerError(f"column {column!r} not found; available: {list(emb.meta.columns)[:20]}.")
    mask = ~emb.negative_mask
    pert = emb.perturbation[mask].astype(str)
    sets = symbols(emb.meta[column].to_numpy()[mask], sep)
    out: dict[str, frozenset[str]] = {}
    for p, s in zip(pert.tolist(), sets):
        out[p] = out.get(p, frozenset()) | s
    return out


def sister_pairs(emb: Profiles, gene_col: str, sep: str = "|") -> pd.DataFrame:
    """Pairs (a, b) of distinct perturbations of the same gene (or any shared annotation value);
    columns a, b, annotation. The one definition: :func:`metrics.pairs_from_annotation`."""
    return metrics.pairs_from_annotation(emb, gene_col, sep)


def gene_compound_pairs(emb: Profiles, gene_col: str, target_col: str, sep: str = "|") -> pd.DataFrame:
    """Pairs (a = genetic perturbation, b = compound) where the compound's targets include the gene.

    Genetic perturbations are those with a value in ``gene_col``; compounds those with one in
    ``target_col`` (pipe-separated symbols allowed) and none in ``gene_col``. Columns a, b, annotation (shared gene).
    """
    genes = {p: s for p, s in perturbation_symbols(emb, gene_col, sep).items() if s}
    targets = {p: s for p, s in perturbation_symbols(emb, target_col, sep).items() if s and p not in genes}
    by_target: dict[str, list[str]] = {}
    for c, ts in targets.items():
        for t in ts:
            by_target.setdefault(t, []).append(c)
    rows = [(g, c, sym) for g, gs in sorted(genes.items()) for sym in sorted(gs)
            for c in sorted(by_target.get(sym, [])) if c != g]
    out = pd.DataFrame(rows, columns=["a", "b", "annotation"]).drop_duplicates(["a", "b"]).reset_index(drop=True)
    out.attrs["null"] = "cross"  # genes × compounds: the null pairs a gene with a compound
    return out


def task_pairs(emb: Profiles, task: str, gene_col: str | None, target_col: str | None,
               sep: str = "|", annotation_col: str | None = None) -> pd.DataFrame:
    """The pair table for ``task``: 'sister' (perturbations of one gene), 'gene_compound' (a gene and
    a compound targeting it) or 'annotation' (perturbations sharing a value of ``annotation_col``,
    e.g. MoA or injury class: the same definition as sister pairs, on another column)."""
    if task == "sister":
        if not gene_col:
            raise CpDistillerError("the sister task needs a gene column (e.g. Metadata_symbol).")
        return sister_pairs(emb, gene_col, sep)
    if task == "gene_compound":
        if not gene_col or not target_col:
            raise CpDistillerError("the gene–compound task needs a gene column and a compound target column.")
        return gene_compound_pairs(emb, gene_col, target_col, sep)
    if task == "annotation":
        if not annotation_col:
            raise CpDistillerError("the annotation task needs an annotation column (e.g. MoA, injury class).")
        return metrics.pairs_from_annotation(emb, annotation_col, sep)
    raise CpDistillerError(f"unknown retrieval task {task!r}; use one of {TASKS}.")


def _with_symbols(emb: Profiles, gene_col: str | None, target_col: str | None, sep: str) -> Profiles:
    """A copy with one column holding each well's gene symbols (gene column, else compound targets)."""
    n = emb.n_wells
    g = emb.meta[gene_col].astype("string").fillna("").to_numpy(dtype=object) if gene_col else np.full(n, "", object)
    t = emb.meta[target_col].astype("string").fillna("").to_numpy(dtype=object) if target_col else np.full(n, "", object)
    combined = np.where(g != "", g, t)
    meta = emb.meta.copy()
    meta[_SYMBOLS] = pd.array([sep.join(sorted(s)) if s else pd.NA for s in symbols(combined, sep)],
                              dtype="string")
    return emb.replace(meta=meta)


def shared_gene_map(emb: Profiles, gene_col: str | None, target_col: str | None = None, sep: str = "|",
                    null_size: int = 10000, seed: int = 0) -> pd.DataFrame:
    """Per gene: copairs mAP of perturbations that share it (sisters, and compounds targeting it).

    Uses :func:`metrics.phenotypic_consistency` on a column combining ``gene_col`` and ``target_col``
    (multi-label when targets are pipe-separated).
    """
    if not gene_col and not target_col:
        raise CpDistillerError("name a gene column and/or a compound target column.")
    tagged = _with_symbols(emb, gene_col, target_col, sep)
    return metrics.phenotypic_consistency(tagged, _SYMBOLS, null_size=null_size, seed=seed, sep=sep)


def _annotation_map(emb: Profiles, annotation_col: str | None, sep: str, null_size: int, seed: int) -> pd.DataFrame:
    if not annotation_col:
        raise CpDistillerError("name a gene column, a compound target column or an annotation column.")
    return metrics.phenotypic_consistency(emb, annotation_col, null_size=null_size, seed=seed, sep=sep)


def evaluate_retrieval(embeddings: dict[str, Profiles], gene_col: str | None, target_col: str | None = None,
                       sep: str = "|", null_size: int = 10000, seed: int = 0,
                       tasks: Sequence[str] = TASKS, activity: bool = True,
                       progress: ProgressCallback = no_progress,
                       annotation_col: str | None = None) -> dict[str, pd.DataFrame]:
    """Retrieval of each named embedding (e.g. corrected and uncorrected).

    Known pairs come from ``gene_col`` (sister perturbations), ``gene_col`` + ``target_col``
    (gene–compound) and ``annotation_col`` (perturbations sharing a MoA, injury class, target…);
    a task whose columns are not given is reported missing with the reason. The replicate mAP and
    the pairs' null are those of `metrics.evaluate` (same-plate negative controls, different-well
    replicates; the null stored with each pair table).

    Returns tables: ``summary`` (method, task, metric, value, n, note), ``activity`` (per
    perturbation mAP vs controls), ``shared_gene`` (per gene mAP), ``pairs`` (per pair similarity
    and retrieved flag), each with a ``method`` column. Unavailable scores are NaN with the reason.
    ``activity=False`` skips the replicate mAP (copairs over all wells: the slow part on big screens).
    """
    for name, emb in embeddings.items():  # a misspelt column is an error, not a traceback mid-run
        missing = [c for c in (gene_col, target_col, annotation_col) if c and c not in emb.meta.columns]
        if missing:
            raise CpDistillerError(f"{emb.source or name}: column(s) {missing} not found; available: "
                                   f"{[c for c in emb.meta.columns][:20]}.")
    summary, activity_tables, shared, pairs_out = [], [], [], []
    for i, (name, emb) in enumerate(embeddings.items()):
        progress(i / len(embeddings), f"retrieval: {name}")

        def add(task: str, metric: str, value: float, n: int, note: str = "", _m: str = name) -> None:
            summary.append({"method": _m, "task": task, "metric": metric, "value": value, "n": n, "note": note})

        if activity:
            try:
                act = metrics.phenotypic_activity(emb, null_size=null_size, seed=seed, negatives="same_plate",
                                                  include_positive_controls=False)
                activity_tables.append(act.assign(method=name))
                add("replicates", "mAP", float(act["mean_average_precision"].mean()), len(act))
                add("replicates", "fraction_significant", float(act["below_corrected_p"].mean()), len(act))
            except MetricUnavailable as exc:
                add("replicates", "mAP", np.nan, 0, str(exc))
        try:
            if gene_col or target_col:
                sg = shared_gene_map(emb, gene_col, target_col, sep, null_size, seed)
            else:  # an annotation column only (compound screens): mAP of perturbations sharing a value
                sg = _annotation_map(emb, annotation_col, sep, null_size, seed)
            shared.append(sg.assign(method=name))
            add("shared_gene", "mAP", float(sg["mean_average_precision"].mean()), len(sg))
            add("shared_gene", "fraction_significant", float(sg["below_corrected_p"].mean()), len(sg))
        except (MetricUnavailable, CpDistillerError) as exc:
            add("shared_gene", "mAP", np.nan, 0, str(exc))
        for task in tasks:
            try:
                pairs = task_pairs(emb, task, gene_col, target_col, sep, annotation_col)
                if pairs.empty:
                    raise MetricUnavailable(f"no {task.replace('_', '–')} pairs in the metadata.")
                frac, table = metrics.fraction_retrieved(emb, pairs, seed=seed)
                pairs_out.append(table.assign(method=name, task=task))
                add(task, "fraction_retrieved", frac, int(table["found"].sum()))
            except (MetricUnavailable, CpDistillerError) as exc:
                add(task, "fraction_retrieved", np.nan, 0, str(exc))

    progress(1.0, "retrieval done")

    def cat(parts: list[pd.DataFrame]) -> pd.DataFrame:
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()

    return {"summary": pd.DataFrame(summary, columns=["method", "task", "metric", "value", "n", "note"]),
            "activity": cat(activity_tables), "shared_gene": cat(shared), "pairs": cat(pairs_out)}


def paired_scores(table: pd.DataFrame, key: str, value: str = "mean_average_precision",
                  corrected: str | None = None, uncorrected: str = "uncorrected") -> pd.DataFrame:
    """Wide table key, <corrected>, <uncorrected> of ``value`` for a corrected-vs-uncorrected scatter."""
    if table.empty:
        return pd.DataFrame(columns=[key])
    wide = table.pivot_table(index=key, columns="method", values=value, aggfunc="first")
    cols = [c for c in ([corrected] if corrected else [m for m in wide.columns if m != uncorrected]) + [uncorrected]
            if c in wide.columns]
    return wide[cols].reset_index()


def query(emb: Profiles, name: str, gene_col: str | None = None, target_col: str | None = None,
          sep: str = "|", top: int = 25, aggregate: str = "median") -> pd.DataFrame:
    """Perturbations most similar (cosine of consensus profiles) to a perturbation or gene symbol.

    ``name`` is matched to a perturbation first, else to a gene symbol: the perturbations of that gene
    (gene column), or when there are none those targeting it (target column); several matching
    perturbations are averaged (unit vectors) into one query. Returns
    rank, perturbation, cosine_similarity, known_pair (shares a gene symbol with the query),
    shared (the shared symbols), symbols.
    """
    cons = consensus(emb, aggregate=aggregate)
    cons = cons.subset(~cons.negative_mask)
    perts = cons.table["perturbation"].astype(str).to_numpy()
    by_col = {col: perturbation_symbols(emb, col, sep) for col in (gene_col, target_col) if col}
    sym = {p: frozenset().union(*(d.get(p, frozenset()) for d in by_col.values())) for p in perts}
    key = name.strip()
    hits = np.flatnonzero(perts == key)
    if len(hits):
        query_syms = frozenset().union(*(sym[p] for p in perts[hits]))
    else:  # a gene symbol: its genetic perturbations when there are any, else what targets it
        query_syms = frozenset({key.upper()})
        for d in by_col.values():
            hits = np.flatnonzero([key.upper() in d.get(p, frozenset()) for p in perts])
            if len(hits):
                break
    if len(hits) == 0:
        raise CpDistillerError(f"{name!r} is neither a perturbation nor a gene symbol in these data.")
    X = cons.X.astype(np.float64)
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    Z = np.divide(X, norms, out=np.zeros_like(X), where=norms > 0)
    q = Z[hits].mean(axis=0)
    q /= np.linalg.norm(q) or 1.0
    sims = Z @ q
    others = np.setdiff1d(np.arange(len(perts)), hits)
    order = others[np.argsort(-sims[others], kind="stable")][:top]
    shared = [sorted(sym[perts[i]] & query_syms) for i in order]
    return pd.DataFrame({
        "rank": np.arange(1, len(order) + 1), "perturbation": perts[order], "cosine_similarity": sims[order],
        "known_pair": [bool(s) for s in shared], "shared": ["|".join(s) for s in shared],
        "symbols": ["|".join(sorted(sym[perts[i]])) for i in order],
    })
