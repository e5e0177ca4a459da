"""Evaluation metrics and the `Scorecard`: technical-effect removal and biological conservation.

Every metric is in [0, 1] with higher = better. A metric that cannot be computed on the given data
(no negative controls, a single plate, no replicates, no annotation …) raises `MetricUnavailable`
from its function; `evaluate` records it as missing (NaN) with the reason, never as 0 or 1.

Definitions and references: docs/metrics.md. Summary:

Technical removal (per effect: batch, plate, row, column; computed among negative controls):
  * ``asw``        scib batch ASW: 1 − |silhouette| of the effect label (cosine), per homogeneous group.
  * ``variance``   1 − adjusted R² of the embedding explained by the label (one-hot OLS).
  * ``leakage``    1 − chance-corrected balanced accuracy of a cross-validated logistic regression.
  * ``graph_connectivity`` (effect "perturbation") scib graph connectivity on a sparse kNN graph.
Biological conservation:
  * ``activity_map`` / ``activity_fraction``  copairs mAP of replicates vs negative controls; fraction
    of perturbations with FDR-corrected p < 0.05.
  * ``consistency_map`` / ``consistency_fraction``  copairs mAP of perturbations sharing an annotation.
  * ``pasw``  perturbation ASW ((silhouette + 1) / 2, cosine).
  * ``nmi`` / ``ari``  Leiden clusters vs annotation, best over a small resolution sweep.
  * ``fraction_retrieved``  CPJUMP1 retrieval of known pairs (sister guides, gene–compound).
  * ``knn_overlap``  neighbourhood agreement with the simulator's clean ground truth.
Aggregates: technical mean, biological mean, overall = 0.4·technical + 0.6·biological.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .errors import CpDistillerError
from .profiles import Profiles
from .progress import ProgressCallback, no_progress

log = logging.getLogger("cpdistiller")

TECHNICAL, BIOLOGICAL, AGGREGATE = "technical", "biological", "aggregate"
POSITION = "position"  # Cell Painting position score, aggregated on its own beside the protocol
EXTRA = "extra"  # reported, never aggregated
TECHNICAL_TREATMENTS = "technical_treatments"  # former category of the within-perturbation view
EFFECTS = ("batch", "plate", "row", "column")
TECHNICAL_WEIGHT, BIOLOGICAL_WEIGHT = 0.4, 0.6
SCORE_COLUMNS = ["method", "metric", "effect", "category", "value", "n", "note"]
# Neighbour searches over all scored wells: exact up to this many rows, faiss HNSW above (`knn_search`).
KNN_EXACT_MAX_ROWS = 50_000
# Neighbour preservation / truth kNN overlap compare two spaces, one of them the full feature matrix;
# above this many wells they are measured among a seeded random sample of this many wells.
NEIGHBOUR_SAMPLE_WELLS = 30_000
# mAP: positive pairs grow with the square of a group's wells (a JUMP positive control on every plate of
# a 1M-well screen would give ~10⁸ pairs alone). When a screen's groups together have more positive pairs
# than MAP_MAX_POSITIVE_PAIRS, each group with more than MAP_MAX_REPLICATES wells takes part through a
# seeded random sample of that many; below the budget every well is scored (all shared data sets are).
MAP_MAX_REPLICATES = 100
MAP_MAX_POSITIVE_PAIRS = 20_000_000
_HNSW_M, _HNSW_EF_CONSTRUCTION, _HNSW_EF_SEARCH_MIN = 16, 40, 128
_LISI_ROWS_PER_CHUNK = 100_000

# Standardised metadata column names used for copairs.
_PERT, _REF, _WELL, _PLATE, _ANN = "Metadata_pert", "Metadata_ref", "Metadata_wellpos", "Metadata_plate", "Metadata_ann"


class MetricUnavailable(CpDistillerError):
    """A metric cannot be computed on these data; the message says why."""


# ================================================================================================
# helpers
# ================================================================================================
def _finite_rows(X: np.ndarray) -> np.ndarray:
    return np.isfinite(X).all(axis=1)


def _check_finite(emb: Profiles) -> None:
    bad = ~_finite_rows(emb.X)
    if bad.any():
        raise MetricUnavailable(f"the embedding has {int(bad.sum())} wells with NaN/inf values.")


def _l2_normalise(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    norm = np.linalg.norm(X, axis=1, keepdims=True)
    norm[norm == 0] = 1.0
    return X / norm


def _subsample_stratified(labels: np.ndarray, max_n: int, rng: np.random.Generator) -> np.ndarray:
    """Positions of at most ``max_n`` items, keeping label proportions (at least 2 per label if possible)."""
    n = len(labels)
    if n <= max_n:
        return np.arange(n)
    out = []
    frac = max_n / n
    for lab in pd.unique(labels):
        pos = np.flatnonzero(labels == lab)
        take = min(len(pos), max(2, int(round(len(pos) * frac))))
        out.append(rng.choice(pos, size=take, replace=False))
    return np.sort(np.concatenate(out))


def _drop_rare(labels: np.ndarray, min_count: int) -> np.ndarray:
    """Boolean mask of items whose label occurs at least ``min_count`` times."""
    counts = pd.Series(labels).value_counts()
    keep = set(counts.index[counts >= min_count])
    return np.array([lab in keep for lab in labels], dtype=bool)


def effect_labels(emb: Profiles, effect: str) -> np.ndarray:
    """Technical labels as strings; raises MetricUnavailable when the effect has no column."""
    try:
        labels = emb.labels(effect)
    except CpDistillerError as exc:
        raise MetricUnavailable(str(exc)) from exc
    return np.asarray(labels).astype(str)


def _negative_controls(emb: Profiles) -> np.ndarray:
    neg = emb.negative_mask
    if neg.sum() == 0:
        raise MetricUnavailable("no negative controls (set the 'control' role and its negative values).")
    return neg


# ================================================================================================
# technical removal
# ================================================================================================
def asw_effect(emb: Profiles, effect: str, *, groups: str = "negative", max_wells_per_group: int = 3000,
               min_group_size: int = 4, seed: int = 0, max_groups: int | None = None) -> tuple[float, int]:
    """scib batch ASW of an effect label: mean over groups of mean(1 − |silhouette|) (cosine).

    ``groups`` = "negative" (one group: the negative controls) or "perturbation" (each perturbation's
    wells, controls included). Within a group, labels with a single well are dropped (a singleton's
    silhouette is 0 by convention, which would read as perfect mixing). Groups larger than
    ``max_wells_per_group`` are subsampled (stratified) so memory and time stay bounded; with
    ``max_groups``, at most that many groups (a seeded random sample) are scored.
    Returns (score, number of wells used).
    """
    from sklearn.metrics import silhouette_samples

    _check_finite(emb)
    labels = effect_labels(emb, effect)
    if groups == "negative":
        group_ids = np.where(_negative_controls(emb), "negative", None)
    elif groups == "perturbation":
        group_ids = emb.perturbation.astype(object)
    else:
        raise CpDistillerError(f"unknown ASW grouping {groups!r}; use 'negative' or 'perturbation'.")
    rng = np.random.default_rng(seed)
    per_group, used = [], 0
    valid = np.flatnonzero(pd.notna(group_ids))
    groups = [valid[g] for g in _groups(group_ids[valid].astype(str))]
    if max_groups is not None and len(groups) > max_groups:
        groups = [groups[i] for i in np.sort(rng.choice(len(groups), max_groups, replace=False))]
    for pos in groups:
        pos = pos[_drop_rare(labels[pos], 2)]
        if len(pos) < min_group_size or len(np.unique(labels[pos])) < 2:
            continue
        pos = pos[_subsample_stratified(labels[pos], max_wells_per_group, rng)]
        sil = silhouette_samples(emb.X[pos].astype(np.float64), labels[pos], metric="cosine")
        per_group.append(float(np.mean(1.0 - np.abs(sil))))
        used += len(pos)
    if not per_group:
        raise MetricUnavailable(
            f"no group ({groups}) has at least two {effect} labels with two or more wells each."
        )
    return float(np.mean(per_group)), used


def _technical_wells(emb: Profiles, effect: str, groups: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Wells, labels, coordinates and number of groups for a technical metric.

    groups="negative": the negative controls, coordinates as they are. groups="perturbation": the
    treatment wells of perturbations whose wells span 2+ levels of the effect, coordinates centred per
    perturbation (the perturbation means removed, so only within-perturbation variation can carry
    the effect)."""
    labels_all = effect_labels(emb, effect)
    if groups == "negative":
        pos = np.flatnonzero(_negative_controls(emb))
        return pos, labels_all[pos], emb.X[pos].astype(np.float64), 1
    if groups != "perturbation":
        raise CpDistillerError(f"unknown grouping {groups!r}; use 'negative' or 'perturbation'.")
    pert = emb.perturbation.astype(str)
    pos = np.flatnonzero(~emb.negative_mask)
    pos = pos[_drop_rare(pert[pos], 2)]
    # only perturbations whose wells span 2+ levels of the effect say anything about it
    levels = pd.Series(labels_all[pos]).groupby(pert[pos]).transform("nunique").to_numpy()
    pos = pos[levels >= 2]
    if len(pos) == 0:
        raise MetricUnavailable(f"no perturbation has treatment wells in two or more {effect} levels "
                                "(e.g. the same layout on every plate).")
    Y = pd.DataFrame(emb.X[pos].astype(np.float64))
    Y = (Y - Y.groupby(pert[pos]).transform("mean")).to_numpy()
    return pos, labels_all[pos], Y, len(np.unique(pert[pos]))


def variance_explained_score(emb: Profiles, effect: str, *, groups: str = "negative") -> tuple[float, int]:
    """1 − adjusted R² of the embedding explained by the one-hot effect label.

    groups="negative": among the negative controls; R² pooled over embedding dimensions (sklearn
    ``r2_score(multioutput='variance_weighted')`` of a one-hot linear model), adjusted as
    1 − (1 − R²)(n − 1)/(n − k). groups="perturbation": among treatment wells, the partial R² of the
    effect after perturbation fixed effects (both centred per perturbation, Frisch–Waugh), adjusted
    with n − P − k + 1 residual degrees of freedom. Negative adjusted R² is clipped to 0.
    Returns (score, wells).
    """
    from sklearn.linear_model import LinearRegression
    from sklearn.metrics import r2_score
    from sklearn.preprocessing import OneHotEncoder

    _check_finite(emb)
    pos, labels, Y, n_groups = _technical_wells(emb, effect, groups)
    where = "negative controls" if groups == "negative" else "replicated treatment wells"
    n, k = len(labels), len(np.unique(labels))
    if k < 2:
        raise MetricUnavailable(f"{where} span a single {effect} ({labels[0]!r}).")
    dof = n - n_groups - (k - 1)
    if dof < 2:
        raise MetricUnavailable(f"too few {where} ({n}) for {k} {effect} levels.")
    design = OneHotEncoder(drop="first", sparse_output=False).fit_transform(labels.reshape(-1, 1))
    if groups == "perturbation":
        pert = emb.perturbation.astype(str)[pos]
        D = pd.DataFrame(design)
        design = (D - D.groupby(pert).transform("mean")).to_numpy()
        pred = LinearRegression(fit_intercept=False).fit(design, Y).predict(design)
    else:
        pred = LinearRegression().fit(design, Y).predict(design)
    r2 = r2_score(Y, pred, multioutput="variance_weighted")
    adj = 1.0 - (1.0 - r2) * (n - n_groups) / dof
    return float(1.0 - min(1.0, max(0.0, adj))), n


def classifier_leakage(emb: Profiles, effect: str, *, n_splits: int = 5, seed: int = 0,
                       max_wells: int = 5000, groups: str = "negative") -> tuple[float, int]:
    """1 − chance-corrected balanced accuracy of a cross-validated classifier predicting the label.

    Logistic regression on standardised embedding coordinates of the negative controls (groups=
    "perturbation": of replicated treatment wells, centred per perturbation), stratified k-fold
    predictions (labels with fewer than 2 wells are dropped); sklearn
    ``balanced_accuracy_score(adjusted=True)`` is 0 at chance and 1 when perfect; below-chance
    values are clipped to 0. Returns (score, wells).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    _check_finite(emb)
    pos, labels, Y, _ = _technical_wells(emb, effect, groups)
    keep = _drop_rare(labels, 2)
    Y, labels = Y[keep], labels[keep]
    if len(np.unique(labels)) < 2:
        raise MetricUnavailable(f"fewer than two {effect} levels with 2+ wells among the evaluated wells.")
    rng = np.random.default_rng(seed)
    sub = _subsample_stratified(labels, max_wells, rng)
    Y, labels = Y[sub], labels[sub]
    folds = int(min(n_splits, pd.Series(labels).value_counts().min()))
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pred = cross_val_predict(clf, Y, labels, cv=cv)
        bacc = balanced_accuracy_score(labels, pred, adjusted=True)
    return float(1.0 - min(1.0, max(0.0, bacc))), len(labels)


def knn_graph(X: np.ndarray, k: int = 15) -> sp.csr_matrix:
    """Sparse symmetric cosine kNN graph (binary connectivities, self included as sklearn's
    ``kneighbors_graph``), O(N·k) memory; approximate above `KNN_EXACT_MAX_ROWS` rows."""
    from sklearn.neighbors import NearestNeighbors

    k = int(min(k, len(X) - 1))
    if k < 1:
        raise MetricUnavailable("too few wells for a neighbour graph.")
    if len(X) > KNN_EXACT_MAX_ROWS:  # each row is its own first neighbour, as in kneighbors_graph
        idx = np.concatenate([np.arange(len(X))[:, None], knn_search(X, k - 1)[1]], axis=1)
        return graph_from_knn(idx, k)
    nn = NearestNeighbors(n_neighbors=k, metric="cosine").fit(X)
    A = nn.kneighbors_graph(X, mode="connectivity")
    A = ((A + A.T) > 0).astype(np.float32)
    return sp.csr_matrix(A)


def graph_from_knn(indices: np.ndarray, k: int) -> sp.csr_matrix:
    """Sparse symmetric binary graph of the first ``k`` neighbours of a kNN result (as `knn_graph`)."""
    n = len(indices)
    k = int(min(k, indices.shape[1]))
    A = sp.csr_matrix((np.ones(n * k, np.float32), (np.repeat(np.arange(n), k), indices[:, :k].ravel())),
                      shape=(n, n))
    return sp.csr_matrix(((A + A.T) > 0).astype(np.float32))


def _groups(labels: np.ndarray) -> Iterable[np.ndarray]:
    """Positions of each label's items (one pass, not one comparison per label)."""
    return (np.asarray(v) for v in pd.Series(np.arange(len(labels))).groupby(labels, sort=False).groups.values())


def graph_connectivity(emb: Profiles, labels: np.ndarray | None = None, *, k: int = 15,
                       min_wells: int = 2, graph: sp.csr_matrix | None = None) -> tuple[float, int]:
    """scib graph connectivity: mean over labels of (largest connected component / label size).

    The graph is the sparse kNN graph of all wells (or ``graph``, precomputed on the same wells),
    restricted to each label's wells (scib definition, Luecken et al. 2022). Labels default to
    perturbations; labels with fewer than ``min_wells`` wells are skipped (trivially connected).
    Returns (score, number of labels).
    """
    from scipy.sparse.csgraph import connected_components

    _check_finite(emb)
    labels = np.asarray(emb.perturbation if labels is None else labels).astype(str)
    A = knn_graph(emb.X, k) if graph is None else graph
    scores = []
    for pos in _groups(labels):
        if len(pos) < min_wells:
            continue
        _, comp = connected_components(A[pos][:, pos], directed=False)
        scores.append(np.bincount(comp).max() / len(pos))
    if not scores:
        raise MetricUnavailable(f"no label has {min_wells} or more wells.")
    return float(np.mean(scores)), len(scores)


# ================================================================================================
# biological conservation: copairs mAP
# ================================================================================================
def _copairs_cache() -> str:
    from .paths import cache_dir

    return str(cache_dir() / "copairs")


_CHUNK = "Metadata_chunk_query"


def _copairs_ap(meta: pd.DataFrame, X: np.ndarray, pos_sameby: list[str], pos_diffby: list[str],
                neg_sameby: list[str], neg_diffby: list[str]) -> pd.DataFrame:
    from copairs.map import average_precision
    from copairs.matching import UnpairedException

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return average_precision(meta.reset_index(drop=True), X.astype(np.float64), pos_sameby=pos_sameby,
                                     pos_diffby=pos_diffby, neg_sameby=neg_sameby, neg_diffby=neg_diffby,
                                     distance="cosine", progress_bar=False)
    except UnpairedException as exc:
        raise MetricUnavailable(f"copairs found no pairs: {exc}") from exc


def _estimated_pairs(meta: pd.DataFrame, query: np.ndarray, neg_sameby: list[str]) -> int:
    """Upper bound of the query–candidate pairs: queries × rows sharing their ``neg_sameby`` key."""
    if not neg_sameby:
        return int(query.sum()) * len(meta)
    key = meta[neg_sameby].astype(str).agg("|".join, axis=1)
    size = key.map(key.value_counts())
    return int(size[query].sum())


def chunked_average_precision(meta: pd.DataFrame, X: np.ndarray, pos_sameby: list[str], pos_diffby: list[str],
                              neg_sameby: list[str], neg_diffby: list[str], *, query: np.ndarray | None = None,
                              max_pairs: int = 4_000_000) -> pd.DataFrame:
    """copairs ``average_precision`` for the ``query`` rows, in chunks of whole positive groups so
    that no chunk lists more than about ``max_pairs`` pairs (copairs holds every pair in memory).

    Exact, not sampled: a chunk holds the query rows of some ``pos_sameby`` groups (all their
    positives) plus every row that can be their negative (sharing ``neg_sameby`` with a query); a
    helper column, unique per query row and shared by the other rows, is added to both diffby lists
    so copairs forms only pairs that involve a query row. Rows' AP therefore equals the AP of one
    copairs call on everything. Returns the AP table of the query rows (input order)."""
    meta = meta.reset_index(drop=True)
    query = np.ones(len(meta), bool) if query is None else np.asarray(query, bool)
    if _estimated_pairs(meta, query, neg_sameby) <= max_pairs:
        ap = _copairs_ap(meta, X, pos_sameby, pos_diffby, neg_sameby, neg_diffby)
        return ap[query].reset_index(drop=True)
    group = meta[pos_sameby].astype(str).agg("|".join, axis=1).to_numpy()
    negkey = (pd.factorize(meta[neg_sameby].astype(str).agg("|".join, axis=1))[0] if neg_sameby
              else np.zeros(len(meta), np.int64))  # integer codes: np.isin on 1M strings per chunk took seconds
    per_query = max(1, _estimated_pairs(meta, query, neg_sameby) // max(1, int(query.sum())))
    rows_per_chunk = max(1, max_pairs // per_query)
    q_groups = pd.Series(np.flatnonzero(query)).groupby(group[query])
    chunks, current, n_current = [], [], 0
    for _, pos in q_groups:
        current.append(pos.to_numpy())
        n_current += len(pos)
        if n_current >= rows_per_chunk:
            chunks.append(np.concatenate(current))
            current, n_current = [], 0
    if current:
        chunks.append(np.concatenate(current))
    out = []
    for qpos in chunks:
        outside = np.ones(len(meta), bool)
        outside[qpos] = False
        partners = np.flatnonzero(np.isin(negkey, np.unique(negkey[qpos])) & outside)
        rows = np.concatenate([qpos, partners])
        sub = meta.iloc[rows].copy()
        sub[_CHUNK] = np.r_[np.arange(len(qpos)), np.full(len(partners), -1)]
        try:
            ap = _copairs_ap(sub, X[rows], pos_sameby, pos_diffby + [_CHUNK], neg_sameby, neg_diffby + [_CHUNK])
        except MetricUnavailable:
            continue  # no pairs in this chunk (e.g. groups without different-well replicates)
        out.append(ap.iloc[: len(qpos)].drop(columns=[_CHUNK]).set_index(qpos))
    if not out:
        raise MetricUnavailable("copairs found no pairs in any chunk.")
    return pd.concat(out).sort_index().reset_index(drop=True)


def _copairs_map(meta: pd.DataFrame, X: np.ndarray, pos_sameby: list[str], pos_diffby: list[str],
                 neg_sameby: list[str], neg_diffby: list[str], group_by: list[str], *, null_size: int,
                 threshold: float, seed: int, query: np.ndarray | None = None,
                 max_pairs: int = 4_000_000) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Chunked copairs average_precision → mean_average_precision (p-values + BH FDR). Returns (ap, map)."""
    from copairs.map import mean_average_precision

    ap = chunked_average_precision(meta, X, pos_sameby, pos_diffby, neg_sameby, neg_diffby, query=query,
                                   max_pairs=max_pairs)
    valid = ap["average_precision"].notna() & (ap["n_pos_pairs"] > 0)
    if not valid.any():
        raise MetricUnavailable("no profile has both a positive and a negative pair.")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mp = mean_average_precision(ap, sameby=group_by, null_size=null_size, threshold=threshold,
                                    seed=seed, progress_bar=False, cache_dir=_copairs_cache())
    return ap, mp.drop(columns=["indices"], errors="ignore")


def _no_different_well_replicates(emb: Profiles, mask: np.ndarray) -> bool:
    pert = emb.perturbation[mask].astype(str)
    n_pos = pd.Series(emb.well[mask]).groupby(pert).nunique()
    return bool((n_pos < 2).all())


def replicate_cap(labels: np.ndarray, max_replicates: int | str | None = "auto") -> int | None:
    """The per-group well cap of the mAP functions: None (score every well), an int, or for "auto"
    `MAP_MAX_REPLICATES` when the groups' positive pairs (Σ n²) exceed `MAP_MAX_POSITIVE_PAIRS`."""
    if max_replicates != "auto":
        return max_replicates  # type: ignore[return-value]
    counts = pd.Series(np.asarray(labels)).value_counts().to_numpy(np.float64)
    return MAP_MAX_REPLICATES if float((counts * counts).sum()) > MAP_MAX_POSITIVE_PAIRS else None


def cap_per_group(labels: np.ndarray, max_per_group: int | None, seed: int = 0) -> np.ndarray:
    """Boolean mask: every row of a group with at most ``max_per_group`` rows, and a seeded random
    ``max_per_group`` rows of each larger group (one sort, whatever the number of groups)."""
    keep = np.ones(len(labels), bool)
    if max_per_group is None or len(labels) == 0:
        return keep
    codes = pd.factorize(np.asarray(labels))[0]
    if np.bincount(codes).max() <= max_per_group:
        return keep
    order = np.lexsort((np.random.default_rng(seed).random(len(codes)), codes))
    sorted_codes = codes[order]
    start = np.r_[0, np.flatnonzero(np.diff(sorted_codes)) + 1]
    rank = np.arange(len(codes)) - np.repeat(start, np.diff(np.r_[start, len(codes)]))
    keep[order[rank >= max_per_group]] = False
    return keep


def _capped_note(labels: np.ndarray, max_per_group: int | None, what: str) -> str:
    if max_per_group is None:
        return ""
    n = int((pd.Series(labels).value_counts() > max_per_group).sum())
    return f"{n} {what} with > {max_per_group} wells: a random {max_per_group} of each" if n else ""


def phenotypic_activity(emb: Profiles, *, replicates_in_different_wells: bool = True,
                        null_size: int = 10000, threshold: float = 0.05, seed: int = 0,
                        include_positive_controls: bool = True, negatives: str = "auto",
                        max_negative_pairs: int = 20_000_000,
                        max_replicates: int | str | None = "auto") -> pd.DataFrame:
    """Phenotypic activity: mAP of each perturbation's replicate wells retrieved against negative controls.

    copairs ``average_precision`` with positives = wells of the same perturbation (in different well
    positions when ``replicates_in_different_wells``, so a shared position effect cannot create the
    match) and negatives = negative-control wells; then ``mean_average_precision`` (null of
    ``null_size`` random rankings, Benjamini–Hochberg FDR).

    ``negatives``: "all" (every negative control), "same_plate" (the controls of the query's plate,
    as in the JUMP pipelines; pairs stay linear in wells), or "auto": "all" unless that would exceed
    ``max_negative_pairs`` treatment–control pairs. The choice is in ``result.attrs["negatives"]``.
    ``max_replicates``: a perturbation with more wells is scored on a seeded random sample of that many
    (`cap_per_group`; ``result.attrs["sampled"]`` says how many were); None scores every well; "auto"
    caps at `MAP_MAX_REPLICATES` only when the positive pairs exceed `MAP_MAX_POSITIVE_PAIRS`.

    Returns one row per perturbation with columns: perturbation, n_replicates, mean_average_precision,
    mean_normalized_average_precision, p_value, corrected_p_value, below_p, below_corrected_p.
    Raises MetricUnavailable without negative controls or replicated perturbations.
    """
    _check_finite(emb)
    neg = _negative_controls(emb)
    keep = np.ones(emb.n_wells, bool) if include_positive_controls else (emb.control != "positive")
    pert = emb.perturbation.astype(str)
    cap = replicate_cap(pert[~neg & keep], max_replicates)
    sampled = _capped_note(pert[~neg & keep], cap, "perturbations")
    keep[~neg] &= cap_per_group(pert[~neg], cap, seed)
    meta = pd.DataFrame({_PERT: np.where(neg, "__negative_control__", pert), _WELL: emb.well,
                         _PLATE: emb.plate.astype(str)})
    meta[_REF] = np.where(neg, np.arange(len(meta)), -1)
    meta = meta[keep]
    X = emb.X[keep]
    pos_diffby = [_WELL] if replicates_in_different_wells else []
    if negatives not in ("auto", "all", "same_plate"):
        raise CpDistillerError("negatives must be 'auto', 'all' or 'same_plate'.")
    if negatives == "auto":
        n_ctrl = int(neg[keep].sum())
        negatives = "all" if (len(meta) - n_ctrl) * n_ctrl <= max_negative_pairs else "same_plate"
    neg_sameby = [_PLATE] if negatives == "same_plate" else []
    query = ~neg[keep]
    if replicates_in_different_wells and _no_different_well_replicates(emb, ~neg & keep):
        raise MetricUnavailable("no perturbation has replicates in two or more well positions (same layout "
                                "on every plate?); --same-well-replicates scores them, outside the headline.")
    ap, mp = _copairs_map(meta, X, pos_sameby=[_PERT, _REF], pos_diffby=pos_diffby, neg_sameby=neg_sameby,
                          neg_diffby=[_PERT, _REF], group_by=[_PERT], null_size=null_size,
                          threshold=threshold, seed=seed, query=query)
    n_rep = meta.loc[~neg[keep], _PERT].value_counts()
    mp = mp[mp[_PERT] != "__negative_control__"].rename(columns={_PERT: "perturbation"})
    mp.insert(1, "n_replicates", mp["perturbation"].map(n_rep).astype(int))
    out = mp.sort_values("mean_average_precision", ascending=False).reset_index(drop=True)
    out.attrs["negatives"] = negatives
    out.attrs["sampled"] = sampled
    return out


def phenotypic_distinctness(emb: Profiles, *, null_size: int = 10000, threshold: float = 0.05,
                            seed: int = 0, include_positive_controls: bool = True,
                            max_replicates: int | str | None = "auto") -> pd.DataFrame:
    """mAP against non-replicates (Arevalo et al. 2024 ``average_precision_nonrep``).

    Queries: wells of replicated perturbations (negative controls excluded). copairs positives: wells
    of the same perturbation in a different well position (Arevalo et al. allow the same position;
    we do not, so a shared position effect cannot create the match); negatives: wells of other
    perturbations on the query's plate. Computed in exact chunks (`chunked_average_precision`). A
    perturbation with more than ``max_replicates`` wells takes part (as query, positive and negative)
    through a seeded random sample of that many ("auto", None: as `phenotypic_activity`). Returns one
    row per perturbation like `phenotypic_activity`.
    """
    _check_finite(emb)
    keep = ~emb.negative_mask
    if not include_positive_controls:
        keep &= emb.control != "positive"
    cap = replicate_cap(emb.perturbation[keep].astype(str), max_replicates)
    sampled = _capped_note(emb.perturbation[keep].astype(str), cap, "perturbations")
    keep[keep] &= cap_per_group(emb.perturbation[keep].astype(str), cap, seed)
    if keep.sum() < 3:
        raise MetricUnavailable("fewer than 3 treatment wells.")
    if _no_different_well_replicates(emb, keep):
        raise MetricUnavailable("no perturbation has replicates in two or more well positions.")
    meta = pd.DataFrame({_PERT: emb.perturbation[keep].astype(str), _WELL: emb.well[keep],
                         _PLATE: emb.plate[keep].astype(str)})
    _, mp = _copairs_map(meta, emb.X[keep], pos_sameby=[_PERT], pos_diffby=[_WELL], neg_sameby=[_PLATE],
                         neg_diffby=[_PERT], group_by=[_PERT], null_size=null_size, threshold=threshold,
                         seed=seed)
    n_rep = meta[_PERT].value_counts()
    mp = mp.rename(columns={_PERT: "perturbation"})
    mp.insert(1, "n_replicates", mp["perturbation"].map(n_rep).astype(int))
    out = mp.sort_values("mean_average_precision", ascending=False).reset_index(drop=True)
    out.attrs["sampled"] = sampled
    return out


def same_position_test(emb: Profiles, *, null_size: int = 10000, threshold: float = 0.05,
                       seed: int = 0, max_replicates: int | str | None = "auto") -> tuple[float, int, str]:
    """Same-position control test (cf. the CPJUMP1 DMSO position test).

    Queries: negative-control wells. copairs positives: negative controls at the same well position
    on other plates; negatives: negative controls at other positions on the query's plate. A position
    "retrieves" its controls when its mAP is significant (BH FDR < ``threshold``). Score = 1 − the
    fraction of positions that do (1 = no position signature left among controls). A position with
    more than ``max_replicates`` control wells takes part through a seeded random sample of that many
    ("auto", None: as `phenotypic_activity`).
    Returns (score, positions tested, note with the mean mAP)."""
    _check_finite(emb)
    neg = _negative_controls(emb).copy()
    cap = replicate_cap(emb.well[neg], max_replicates)
    sampled = _capped_note(emb.well[neg], cap, "positions")
    neg[neg] &= cap_per_group(emb.well[neg], cap, seed)
    meta = pd.DataFrame({_WELL: emb.well[neg], _PLATE: emb.plate[neg].astype(str)})
    plates_per_pos = meta.groupby(_WELL)[_PLATE].nunique()
    if (plates_per_pos < 2).all():
        raise MetricUnavailable("no negative-control position is used on two or more plates.")
    _, mp = _copairs_map(meta, emb.X[neg], pos_sameby=[_WELL], pos_diffby=[_PLATE], neg_sameby=[_PLATE],
                         neg_diffby=[_WELL], group_by=[_WELL], null_size=null_size, threshold=threshold,
                         seed=seed)
    mp = mp.dropna(subset=["mean_average_precision"])
    frac = float(mp["below_corrected_p"].mean())
    note = f"mAP {mp['mean_average_precision'].mean():.3f}; {frac:.0%} of positions retrieved"
    return 1.0 - frac, len(mp), note + (f"; {sampled}" if sampled else "")


def consensus_profiles(emb: Profiles, *, exclude_negative: bool = True, how: str = "median",
                       extra: Sequence[str] = ()) -> pd.DataFrame:
    """One profile per perturbation (median or mean over its wells); columns: perturbation,
    n_wells, the ``extra`` metadata columns (first value), then the embedding coordinates."""
    _check_finite(emb)
    mask = ~emb.negative_mask if exclude_negative else np.ones(emb.n_wells, bool)
    df = pd.DataFrame(emb.X[mask], columns=emb.features)
    df.insert(0, "perturbation", emb.perturbation[mask].astype(str))
    grouped = df.groupby("perturbation", sort=True)
    prof = grouped.median() if how == "median" else grouped.mean()
    out = prof.reset_index()
    out.insert(1, "n_wells", grouped.size().to_numpy())
    for i, col in enumerate(extra):
        first = pd.Series(emb.meta[col].to_numpy()[mask]).groupby(df["perturbation"].to_numpy()).first()
        out.insert(2 + i, col, out["perturbation"].map(first).to_numpy())
    return out


def phenotypic_consistency(emb: Profiles, annotation_col: str | None = None, *, null_size: int = 10000,
                           threshold: float = 0.05, seed: int = 0, sep: str | None = None,
                           how: str = "median") -> pd.DataFrame:
    """Phenotypic consistency: mAP of consensus profiles of perturbations sharing an annotation.

    Consensus = median per perturbation (negative controls excluded). copairs positives = other
    perturbations with the same annotation value (gene, MOA, target), negatives = perturbations
    with a different one. ``annotation_col`` defaults to the annotation role; with ``sep`` (e.g.
    "|"), multi-valued annotations are split and copairs' multilabel AP is used.

    Returns one row per annotation value: annotation, n_perturbations, mean_average_precision,
    mean_normalized_average_precision, p_value, corrected_p_value, below_p, below_corrected_p.
    """
    col = annotation_col or emb.roles.annotation
    if not col:
        raise MetricUnavailable("no annotation column (set the 'annotation' role or pass annotation_col).")
    if col not in emb.meta.columns:
        raise CpDistillerError(f"annotation column {col!r} not found in the metadata.")
    cons = consensus_profiles(emb, how=how, extra=[col])
    ann = cons[col].astype("string")
    ok = ann.notna() & (ann.str.strip() != "")
    cons = cons[ok.to_numpy()].reset_index(drop=True)
    feats = [c for c in cons.columns if c in emb.features]
    if sep:
        values = cons[col].astype(str).map(lambda s: [v.strip() for v in s.split(sep) if v.strip()])
        meta = pd.DataFrame({_ANN: values, _PERT: cons["perturbation"]})
        exploded = meta.explode(_ANN)
        counts = exploded[_ANN].value_counts()
    else:
        meta = pd.DataFrame({_ANN: cons[col].astype(str), _PERT: cons["perturbation"]})
        counts = meta[_ANN].value_counts()
    if (counts >= 2).sum() == 0:
        raise MetricUnavailable(f"no {col!r} value is shared by two or more perturbations.")
    X = cons[feats].to_numpy(np.float64)
    if sep:
        from copairs.map import mean_average_precision
        from copairs.map.multilabel import average_precision as ap_multilabel

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ap = ap_multilabel(meta, X, pos_sameby=[_ANN], pos_diffby=[], neg_sameby=[], neg_diffby=[_ANN],
                               multilabel_col=_ANN, distance="cosine", progress_bar=False)
            mp = mean_average_precision(ap, sameby=[_ANN], null_size=null_size, threshold=threshold,
                                        seed=seed, progress_bar=False, cache_dir=_copairs_cache())
        mp = mp.drop(columns=["indices"], errors="ignore")
    else:
        _, mp = _copairs_map(meta, X, pos_sameby=[_ANN], pos_diffby=[_PERT], neg_sameby=[], neg_diffby=[_ANN],
                             group_by=[_ANN], null_size=null_size, threshold=threshold, seed=seed)
    mp = mp.rename(columns={_ANN: "annotation"})
    mp.insert(1, "n_perturbations", mp["annotation"].map(counts).astype(int))
    return mp.sort_values("mean_average_precision", ascending=False).reset_index(drop=True)


# ================================================================================================
# biological conservation: retrieval of known pairs (CPJUMP1)
# ================================================================================================
def _split_values(value: object, sep: str | None) -> list[str]:
    if value is None or pd.isna(value):
        return []
    parts = str(value).split(sep) if sep else [str(value)]
    return [v.strip().upper() for v in parts if v.strip()]


def pairs_from_annotation(emb: Profiles, annotation_col: str | None = None, sep: str | None = "|") -> pd.DataFrame:
    """Known pairs from a shared annotation: every pair (a, b) of distinct non-control perturbations
    sharing a value of ``annotation_col`` (gene of two guides/ORFs, MoA, injury class, target).

    The one definition of "sister" pairs used by `evaluate`, `cpdistiller retrieve` and the Retrieval
    page. Values are split on ``sep`` (None: whole values) and compared case-insensitively; a
    perturbation's values are the union over its wells. Columns a, b (a < b), annotation (the first
    shared value). ``attrs["null"] = "union"``: the null of `fraction_retrieved` for such symmetric
    pairs is every other pair among the perturbations named."""
    col = annotation_col or emb.roles.annotation
    if not col:
        raise MetricUnavailable("no annotation column to build pairs from.")
    if col not in emb.meta.columns:
        raise CpDistillerError(f"column {col!r} not found in the metadata.")
    mask = ~emb.negative_mask
    pert = emb.perturbation[mask].astype(str)
    by_value: dict[str, set[str]] = {}
    for p, v in zip(pert.tolist(), emb.meta[col].to_numpy()[mask]):
        for val in _split_values(v, sep):
            by_value.setdefault(val, set()).add(p)
    rows = [(a, b, val) for val, perts in sorted(by_value.items())
            for i, a in enumerate(sorted(perts)) for b in sorted(perts)[i + 1:]]
    out = pd.DataFrame(rows, columns=["a", "b", "annotation"]).drop_duplicates(["a", "b"]).reset_index(drop=True)
    out.attrs["null"] = "union"
    return out


def fraction_retrieved(emb: Profiles, pairs: pd.DataFrame, *, percentile: float = 95.0,
                       tails: str = "upper", how: str = "median", max_null: int = 200_000,
                       null: str | None = None, seed: int = 0) -> tuple[float, pd.DataFrame]:
    """CPJUMP1 "fraction retrieved" (Chandrasekaran et al. 2024).

    ``pairs``: DataFrame with columns ``a`` and ``b`` (perturbation names; extra columns are kept).
    Consensus profiles (median per perturbation) are compared by cosine similarity. The null is the
    similarity of non-pairs: with ``null="cross"`` (gene–compound) every (x, y) with x among the ``a``
    perturbations and y among the ``b`` ones that is not a listed pair; with ``null="union"`` (sister
    perturbations, where a/b order is arbitrary) every pair of distinct perturbations named anywhere
    in the table that is not a listed pair. ``null=None`` takes the pair table's own
    ``attrs["null"]`` (`pairs_from_annotation` sets "union", gene–compound tables "cross"), else
    "cross" — so `evaluate` and `retrieve` score the same pairs against the same null. Uniformly subsampled to ``max_null`` pairs. A pair is retrieved
    when its similarity exceeds the ``percentile`` of the null (``tails="both"``: or falls below the
    100 − percentile, for anti-correlated gene–compound pairs).

    Returns (fraction of found pairs retrieved, per-pair table with columns a, b, …, found,
    cosine_similarity, retrieved). Pairs naming a perturbation absent from ``emb`` get found=False
    and are not counted. Raises MetricUnavailable when no pair is found or the null is empty.
    """
    if not {"a", "b"} <= set(pairs.columns):
        raise CpDistillerError("pairs must have columns 'a' and 'b' (perturbation names).")
    if tails not in ("upper", "both"):
        raise CpDistillerError("tails must be 'upper' or 'both'.")
    null = null or pairs.attrs.get("null", "cross")
    if null not in ("cross", "union"):
        raise CpDistillerError("null must be 'cross' or 'union'.")
    cons = consensus_profiles(emb, how=how)
    names = cons["perturbation"].to_numpy()
    index = {p: i for i, p in enumerate(names)}
    Z = _l2_normalise(cons[[c for c in cons.columns if c in emb.features]].to_numpy())
    table = pairs.copy().reset_index(drop=True)
    table["a"], table["b"] = table["a"].astype(str), table["b"].astype(str)
    ia = table["a"].map(index)
    ib = table["b"].map(index)
    found = ia.notna() & ib.notna() & (table["a"] != table["b"])
    table["found"] = found.to_numpy()
    sims = np.full(len(table), np.nan)
    fi, fj = ia[found].astype(int).to_numpy(), ib[found].astype(int).to_numpy()
    sims[found.to_numpy()] = np.einsum("ij,ij->i", Z[fi], Z[fj])
    table["cosine_similarity"] = sims
    if not found.any():
        raise MetricUnavailable("none of the pairs' perturbations are in the embedding.")
    if null == "cross":
        A, B = np.unique(fi), np.unique(fj)
    else:
        A = B = np.unique(np.concatenate([fi, fj]))
    true = {(int(x), int(y)) for x, y in zip(fi, fj)} | {(int(y), int(x)) for x, y in zip(fi, fj)}
    rng = np.random.default_rng(seed)
    total = len(A) * len(B)
    if total <= max_null:
        xa, xb = np.repeat(A, len(B)), np.tile(B, len(A))
    else:
        xa, xb = rng.choice(A, size=max_null), rng.choice(B, size=max_null)
    keep = (xa != xb) & np.array([(int(x), int(y)) not in true for x, y in zip(xa, xb)], dtype=bool)
    if null == "union":
        keep &= xa < xb  # each unordered pair once
    xa, xb = xa[keep], xb[keep]
    if len(xa) < 20:
        raise MetricUnavailable(f"only {len(xa)} non-pairs to build the null from (need 20+).")
    null = np.einsum("ij,ij->i", Z[xa], Z[xb])
    hi = np.percentile(null, percentile)
    retrieved = sims > hi
    if tails == "both":
        retrieved |= sims < np.percentile(null, 100.0 - percentile)
    table["retrieved"] = np.where(found, retrieved, False)
    table.attrs.update({"null_size": int(len(null)), "threshold_upper": float(hi)})
    return float(table.loc[found, "retrieved"].mean()), table


# ================================================================================================
# biological conservation: clustering and silhouettes
# ================================================================================================
def perturbation_asw(emb: Profiles, *, max_wells: int = 5000, seed: int = 0) -> tuple[float, int]:
    """Perturbation ASW: (silhouette + 1) / 2 of perturbation labels (cosine) over replicated
    treatments (negative controls excluded, perturbations with one well dropped; subsampled,
    stratified, to at most ``max_wells``). Returns (score, wells)."""
    from sklearn.metrics import silhouette_score

    _check_finite(emb)
    pos = np.flatnonzero(~emb.negative_mask)
    labels = emb.perturbation[pos].astype(str)
    keep = _drop_rare(labels, 2)
    pos, labels = pos[keep], labels[keep]
    if len(np.unique(labels)) < 2:
        raise MetricUnavailable("fewer than two perturbations with replicate wells.")
    sub = _subsample_stratified(labels, max_wells, np.random.default_rng(seed))
    pos, labels = pos[sub], labels[sub]
    s = silhouette_score(emb.X[pos].astype(np.float64), labels, metric="cosine")
    return float((s + 1.0) / 2.0), len(pos)


def leiden_nmi_ari(emb: Profiles, annotation_col: str | None = None, *, k: int = 15,
                   resolutions: Sequence[float] = (0.25, 0.5, 1.0, 1.5, 2.0), seed: int = 0
                   ) -> dict[str, Any]:
    """NMI and ARI of Leiden clusters against an annotation, best over a resolution sweep (scib).

    Wells: non-control wells with a non-empty annotation. Graph: the sparse symmetric cosine kNN graph
    (``knn_graph``, ``k`` neighbours); clusters: scanpy ``tl.leiden`` (igraph flavour) on it at each
    resolution. NMI is sklearn's arithmetic-mean NMI, ARI is clipped at 0. Returns a dict with nmi,
    ari, their resolutions and the number of wells.
    """
    _check_finite(emb)
    col = annotation_col or emb.roles.annotation
    if not col:
        raise MetricUnavailable("no annotation column (set the 'annotation' role).")
    ann = emb.meta[col].astype("string").str.strip()
    mask = (~emb.negative_mask) & ann.notna().to_numpy() & (ann != "").fillna(False).to_numpy()
    labels = ann.to_numpy()[mask].astype(str)
    if len(np.unique(labels)) < 2 or mask.sum() < 10:
        raise MetricUnavailable(f"need 10+ annotated treatment wells in 2+ {col!r} classes.")
    return _label_leiden(emb.X[mask], labels, k=k, resolutions=resolutions, seed=seed)


def knn_overlap(emb: Profiles, truth: Profiles, *, k: int = 15, standardize_truth: bool = True,
                max_wells: int | None = NEIGHBOUR_SAMPLE_WELLS, seed: int = 0) -> tuple[float, int]:
    """Mean fraction of each well's k cosine nearest neighbours in ``emb`` that are also among its
    k nearest neighbours in ``truth`` (wells matched by plate + well). The truth (raw-scale clean
    features) is z-scored per feature first unless ``standardize_truth`` is False, so that no
    single large-valued feature dominates its cosine neighbourhoods. Above ``max_wells`` shared
    wells, measured among a seeded random sample of that many (as `neighbor_preservation`).
    Returns (score, wells)."""
    from sklearn.neighbors import NearestNeighbors

    _check_finite(emb)
    key_e = pd.Index(pd.Series(emb.plate).astype(str) + "|" + pd.Series(emb.well).astype(str))
    key_t = pd.Index(pd.Series(truth.plate).astype(str) + "|" + pd.Series(truth.well).astype(str))
    if not key_e.is_unique or not key_t.is_unique:
        raise MetricUnavailable("plate + well does not identify wells uniquely; cannot align the truth.")
    pos = key_t.get_indexer(key_e)
    ok = np.zeros(len(pos), bool)
    ok[_sample_positions(pos >= 0, max_wells, seed)] = True
    if ok.sum() < k + 2:
        raise MetricUnavailable(f"only {int(ok.sum())} wells shared with the truth.")
    T = truth.X[pos[ok]]
    E = emb.X[ok]
    if not (_finite_rows(T).all()):
        raise MetricUnavailable("the truth has NaN/inf values.")
    if standardize_truth:
        T = T.astype(np.float64)
        sd = T.std(axis=0)
        T = (T - T.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    kk = int(min(k, ok.sum() - 1))
    ne = NearestNeighbors(n_neighbors=kk + 1, metric="cosine").fit(E).kneighbors(E, return_distance=False)
    nt = NearestNeighbors(n_neighbors=kk + 1, metric="cosine").fit(T).kneighbors(T, return_distance=False)
    overlap = [len(set(a[1:]) & set(b[1:])) / kk for a, b in zip(ne, nt)]
    return float(np.mean(overlap)), int(ok.sum())


# ================================================================================================
# Arevalo et al. 2024 protocol: LISI, kBET, silhouette of batch, mAP against non-replicates
# ================================================================================================
def label_wells(emb: Profiles) -> np.ndarray:
    """Wells scored by the label-based metrics of the field protocol (Arevalo et al. 2024): every well
    that is not a negative control (positive controls included, as theirs) whose perturbation has 2+
    wells (a singleton label says nothing about mixing or clustering). Boolean mask."""
    pos = np.flatnonzero(~emb.negative_mask)
    pert = emb.perturbation[pos].astype(str)
    mask = np.zeros(emb.n_wells, bool)
    mask[pos[_drop_rare(pert, 2)]] = True
    return mask


def batch_effect(emb: Profiles) -> str:
    """The label the protocol's batch metrics mix over: 'batch' when a batch column has 2+ levels, else
    'plate' (plates are the batches of a single-batch screen); raises MetricUnavailable otherwise."""
    for eff in ("batch", "plate"):
        try:
            if len(np.unique(effect_labels(emb, eff))) > 1:
                return eff
        except MetricUnavailable:
            continue
    raise MetricUnavailable("a single plate and no batch column: nothing to mix.")


def knn_search(X: np.ndarray, k: int, *, cosine: bool = True,
               exact_max_rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """k nearest neighbours of every row among the rows, self excluded: (distances, indices), each
    n × k. Cosine geometry via L2-normalised rows (Euclidean distance on the unit sphere, a monotone
    function of cosine distance).

    Up to ``exact_max_rows`` rows (default `KNN_EXACT_MAX_ROWS`, 50,000) the search is exact
    (sklearn's chunked brute force: memory O(n·k), time O(n²)). Above it, one faiss HNSW graph
    (M=16, efConstruction=40, efSearch=max(128, 2k), built single-threaded so results are
    reproducible) makes the cost O(n·log n); recall of the exact neighbours is measured in
    tests/test_metrics_scale.py and benchmarks/README.md (≈0.99 on a 100k-well embedding).
    """
    from sklearn.neighbors import NearestNeighbors

    Y = _l2_normalise(X) if cosine else np.asarray(X, np.float64)
    k = int(min(k, len(Y) - 1))
    if k < 1:
        raise MetricUnavailable("too few wells for a neighbour search.")
    limit = KNN_EXACT_MAX_ROWS if exact_max_rows is None else exact_max_rows
    if len(Y) > limit:
        dist, idx = _hnsw_search(Y, k + 1)
    else:
        dist, idx = NearestNeighbors(n_neighbors=k + 1, algorithm="brute").fit(Y).kneighbors(Y)
    # drop self (usually column 0; with exact duplicates it may sit elsewhere)
    is_self = idx == np.arange(len(Y))[:, None]
    drop = np.where(is_self.any(axis=1), is_self.argmax(axis=1), k)
    keep = np.ones_like(idx, dtype=bool)
    keep[np.arange(len(Y)), drop] = False
    return dist[keep].reshape(len(Y), k), idx[keep].reshape(len(Y), k)


def _hnsw_search(Y: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Approximate k nearest rows of every row of Y (self included): Euclidean distances and indices.
    Rows for which the graph returns fewer than k hits are searched exactly."""
    import faiss

    Y32 = np.ascontiguousarray(Y, np.float32)
    index = faiss.IndexHNSWFlat(Y32.shape[1], _HNSW_M, faiss.METRIC_L2)
    index.hnsw.efConstruction = _HNSW_EF_CONSTRUCTION
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # multi-threaded HNSW insertion is not reproducible
    try:
        index.add(Y32)
    finally:
        faiss.omp_set_num_threads(threads)
    index.hnsw.efSearch = max(_HNSW_EF_SEARCH_MIN, 2 * k)
    sq, idx = index.search(Y32, k)
    short = np.flatnonzero((idx < 0).any(axis=1))
    if len(short):
        sq[short], idx[short] = faiss.knn(Y32[short], Y32, k)
    return np.sqrt(np.maximum(sq, 0.0)).astype(np.float64), idx.astype(np.int64)


def _small_knn(X: np.ndarray, k: int, max_rows: int = 3000) -> np.ndarray:
    """Cosine kNN indices (self excluded) within a small group: one dense similarity block (memory
    O(rows²), bounded by ``max_rows``; larger groups go through `knn_search`)."""
    if len(X) > max_rows:
        return knn_search(X, k)[1]
    Z = _l2_normalise(X)
    S = Z @ Z.T
    np.fill_diagonal(S, -np.inf)
    idx = np.argpartition(-S, k - 1, axis=1)[:, :k] if k < len(X) - 1 else np.argsort(-S, axis=1)[:, :k]
    return idx


def lisi(distances: np.ndarray, indices: np.ndarray, labels: np.ndarray, *, perplexity: float = 30.0,
         tol: float = 1e-5, n_iter: int = 50) -> np.ndarray:
    """Local inverse Simpson index per row (Korsunsky et al. 2019), from a kNN result.

    The algorithm of harmonypy's ``compute_lisi`` / the R ``lisi`` package, vectorised over rows: a
    Gaussian kernel on each row's neighbour distances whose bandwidth is found by bisection so that
    the kernel's entropy is log(perplexity); LISI = 1 / Σ_c (kernel mass on label c)². ``distances``
    and ``indices`` are n × k (self excluded; k = 3·perplexity as in harmonypy). Memory O(n·k).
    """
    if len(distances) > _LISI_ROWS_PER_CHUNK:  # rows are independent: bound the float64 temporaries
        return np.concatenate([
            lisi(distances[s:s + _LISI_ROWS_PER_CHUNK], indices[s:s + _LISI_ROWS_PER_CHUNK], labels,
                 perplexity=perplexity, tol=tol, n_iter=n_iter)
            for s in range(0, len(distances), _LISI_ROWS_PER_CHUNK)])
    D = np.asarray(distances, np.float64)
    n = len(D)
    beta = np.ones(n)
    lo, hi = np.full(n, -np.inf), np.full(n, np.inf)
    log_u = math.log(perplexity)

    def entropy(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        P = np.exp(-D * b[:, None])
        s = P.sum(axis=1)
        safe = np.where(s > 0, s, 1.0)
        H = np.where(s > 0, np.log(safe) + b * (D * P).sum(axis=1) / safe, 0.0)
        return H, P / safe[:, None]

    H, P = entropy(beta)
    for _ in range(n_iter):
        diff = H - log_u
        todo = np.abs(diff) >= tol
        if not todo.any():
            break
        up = todo & (diff > 0)
        down = todo & (diff <= 0)
        lo[up] = beta[up]
        beta[up] = np.where(np.isfinite(hi[up]), (beta[up] + hi[up]) / 2, beta[up] * 2)
        hi[down] = beta[down]
        beta[down] = np.where(np.isfinite(lo[down]), (beta[down] + lo[down]) / 2, beta[down] / 2)
        H, P = entropy(beta)
    codes = pd.factorize(np.asarray(labels))[0]
    simpson = _simpson(codes[np.asarray(indices)], P)
    simpson[H == 0] = -1.0  # no usable neighbours (harmonypy's convention)
    return 1.0 / simpson


def _simpson(neigh: np.ndarray, P: np.ndarray) -> np.ndarray:
    """Σ_c (Σ_{j: neigh[i, j] = c} P[i, j])² per row: sort each row's labels, sum the kernel mass of
    each run of equal labels. O(n·k·log k) whatever the number of labels (a pass per label was
    O(n·k·L) and dominated the scorecard on screens with thousands of perturbations)."""
    n, k = neigh.shape
    order = np.argsort(neigh, axis=1, kind="stable")
    labels = np.take_along_axis(neigh, order, axis=1)
    mass = np.take_along_axis(P, order, axis=1).ravel()
    starts = np.ones((n, k), bool)
    starts[:, 1:] = labels[:, 1:] != labels[:, :-1]
    first = np.flatnonzero(starts.ravel())
    per_label = np.add.reduceat(mass, first)
    return np.bincount(first // k, weights=per_label * per_label, minlength=n)


def _label_knn(emb: Profiles, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mask = label_wells(emb)
    if mask.sum() < 3:
        raise MetricUnavailable("fewer than 3 replicated treatment wells.")
    d, i = knn_search(emb.X[mask], k)
    return mask, d, i


def ilisi_score(emb: Profiles, effect: str | None = None, *, perplexity: float = 30.0,
                knn: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> tuple[float, int]:
    """iLISI of a technical label, scaled as scib: (median LISI − 1) / (B − 1), 1 = perfectly mixed.

    Wells: `label_wells` (replicated treatments, as Arevalo et al. score non-DMSO wells); neighbours:
    the 3·perplexity cosine nearest wells. ``effect`` defaults to `batch_effect`. Returns (score, wells)."""
    _check_finite(emb)
    effect = effect or batch_effect(emb)
    mask, d, i = knn or _label_knn(emb, int(3 * perplexity))
    labels = effect_labels(emb, effect)[mask]
    B = len(np.unique(labels))
    if B < 2:
        raise MetricUnavailable(f"the scored wells span a single {effect}.")
    med = float(np.nanmedian(lisi(d, i, labels, perplexity=min(perplexity, d.shape[1] / 3))))
    return (med - 1.0) / (B - 1.0), int(mask.sum())


def clisi_score(emb: Profiles, *, perplexity: float = 30.0,
                knn: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> tuple[float, int]:
    """cLISI of perturbation labels, scaled as scib: (L − median LISI) / (L − 1), 1 = each well's
    neighbourhood holds its own perturbation only. Wells as `ilisi_score`. Returns (score, wells)."""
    _check_finite(emb)
    mask, d, i = knn or _label_knn(emb, int(3 * perplexity))
    labels = emb.perturbation[mask].astype(str)
    L = len(np.unique(labels))
    if L < 2:
        raise MetricUnavailable("fewer than two replicated perturbations.")
    med = float(np.nanmedian(lisi(d, i, labels, perplexity=min(perplexity, d.shape[1] / 3))))
    return (L - med) / (L - 1.0), int(mask.sum())


def kbet_score(emb: Profiles, effect: str | None = None, *, alpha: float = 0.05,
               min_wells: int = 10) -> tuple[float, int]:
    """kBET acceptance (Büttner et al. 2019) per perturbation label, scib style: 1 − mean rejection rate.

    For each replicated perturbation with ``min_wells``+ wells in 2+ levels of the effect: k0 =
    min(70, max(10, ⌊mean wells per level / 4⌋)) (scib's choice), capped at the label's wells; each
    well's neighbourhood is itself plus its k0 − 1 cosine nearest wells of the same label; a Pearson
    χ² test (df = levels − 1) compares the neighbourhood's level counts with k0 × the label's level
    frequencies; the rejection rate is the fraction of wells with p < ``alpha``. Every well is tested
    (R kBET tests random 10% subsets repeatedly; the expectation is the same). Labels too small or
    in one level are skipped, as in scib. Returns (score, labels tested).
    """
    from scipy.stats import chi2

    _check_finite(emb)
    effect = effect or batch_effect(emb)
    mask = label_wells(emb)
    levels = pd.factorize(effect_labels(emb, effect))[0]
    pert = emb.perturbation.astype(str)
    rates = []
    for _, pos in pd.Series(np.flatnonzero(mask)).groupby(pert[mask]):
        pos = pos.to_numpy()
        lv = levels[pos]
        counts = np.bincount(lv)
        present = np.flatnonzero(counts)
        if len(pos) < min_wells or len(present) < 2:
            continue
        k0 = int(min(70, max(10, np.floor(counts[present].mean() / 4)), len(pos)))
        nn = _small_knn(emb.X[pos], k0 - 1)
        hood = np.concatenate([np.arange(len(pos))[:, None], nn], axis=1)
        obs = np.stack([(lv[hood] == c).sum(axis=1) for c in present], axis=1)
        exp = k0 * counts[present] / len(pos)
        stat = ((obs - exp) ** 2 / exp).sum(axis=1)
        rates.append(float((chi2.sf(stat, len(present) - 1) < alpha).mean()))
    if not rates:
        raise MetricUnavailable(f"no perturbation has {min_wells}+ wells in two or more {effect} levels.")
    return 1.0 - float(np.mean(rates)), len(rates)


def silhouette_batch(emb: Profiles, effect: str | None = None, *, max_labels: int = 2000,
                     seed: int = 0) -> tuple[float, int]:
    """scib silhouette of batch: per replicated perturbation, mean(1 − |silhouette of the effect|)
    (cosine) over its wells, then the mean over perturbations (`asw_effect` grouped by perturbation on
    `label_wells`). At most ``max_labels`` perturbations (a seeded random sample) are scored.
    Returns (score, wells)."""
    _check_finite(emb)
    effect = effect or batch_effect(emb)
    sub = emb.subset(label_wells(emb))
    return asw_effect(sub, effect, groups="perturbation", min_group_size=2, seed=seed, max_groups=max_labels)


def _label_leiden(X: np.ndarray, labels: np.ndarray, *, k: int, resolutions: Sequence[float],
                  seed: int, graph: sp.csr_matrix | None = None) -> dict[str, Any]:
    """Best NMI and ARI of Leiden clusters of X against labels over a resolution sweep."""
    import anndata as ad
    import scanpy as sc
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    adata = ad.AnnData(X=np.zeros((len(X), 0), np.float32))
    A = knn_graph(X, k) if graph is None else graph
    best = {"nmi": -1.0, "ari": -1.0, "nmi_resolution": None, "ari_resolution": None}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for r in resolutions:
            sc.tl.leiden(adata, resolution=r, key_added="leiden", flavor="igraph", n_iterations=2,
                         directed=False, random_state=seed, adjacency=A)
            cl = adata.obs["leiden"].to_numpy()
            nmi = normalized_mutual_info_score(labels, cl, average_method="arithmetic")
            ari = max(0.0, adjusted_rand_score(labels, cl))
            if nmi > best["nmi"]:
                best.update(nmi=float(nmi), nmi_resolution=r)
            if ari > best["ari"]:
                best.update(ari=float(ari), ari_resolution=r)
    best["n"] = len(X)
    return best


def perturbation_leiden(emb: Profiles, *, k: int = 15,
                        resolutions: Sequence[float] = (0.25, 0.5, 1.0, 1.5, 2.0, 4.0, 8.0),
                        seed: int = 0, graph: sp.csr_matrix | None = None) -> dict[str, Any]:
    """Leiden NMI / ARI against perturbation labels (Arevalo et al.'s label key) on `label_wells`,
    best over the resolution sweep (scib's optimal-resolution NMI/ARI)."""
    _check_finite(emb)
    mask = label_wells(emb)
    labels = emb.perturbation[mask].astype(str)
    if len(np.unique(labels)) < 2 or mask.sum() < 10:
        raise MetricUnavailable("need 10+ wells of 2+ replicated perturbations.")
    return _label_leiden(emb.X[mask], labels, k=k, resolutions=resolutions, seed=seed, graph=graph)


def _well_mask(emb: Profiles, wells: str) -> np.ndarray:
    if wells == "treatment":
        return ~emb.negative_mask
    if wells == "negative":
        return _negative_controls(emb)
    if wells == "all":
        return np.ones(emb.n_wells, bool)
    raise CpDistillerError(f"unknown well selection {wells!r}; use 'treatment', 'negative' or 'all'.")


def _match_rows(emb: Profiles, reference: Profiles) -> np.ndarray:
    """Position in ``reference`` of each well of ``emb``: by plate + well when that key is unique in
    both and covers every well of ``emb``, else by row order when the lengths match."""
    key_e = pd.Index(pd.Series(emb.plate).astype(str) + "|" + pd.Series(emb.well).astype(str))
    key_r = pd.Index(pd.Series(reference.plate).astype(str) + "|" + pd.Series(reference.well).astype(str))
    if key_e.is_unique and key_r.is_unique:
        pos = key_r.get_indexer(key_e)
        if (pos >= 0).all():
            return pos
    if emb.n_wells == reference.n_wells:
        return np.arange(emb.n_wells)
    raise MetricUnavailable(
        f"cannot match wells to the reference: plate + well is not a unique shared key and the row counts "
        f"differ ({emb.n_wells} vs {reference.n_wells})."
    )


def _knn_indices(X: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` cosine nearest neighbours of each row among the rows (self excluded)."""
    from sklearn.neighbors import NearestNeighbors

    X = _l2_normalise(X)  # Euclidean on unit vectors ranks like cosine and allows tree/BLAS search
    nn = NearestNeighbors(n_neighbors=k + 1).fit(X)
    idx = nn.kneighbors(X, return_distance=False)
    out = np.empty((len(X), k), dtype=np.int64)
    for i, row in enumerate(idx):  # drop self (not always first when duplicates tie)
        row = row[row != i]
        out[i] = row[:k]
    return out


def _sample_positions(mask: np.ndarray, max_wells: int | None, seed: int) -> np.ndarray:
    """Positions of the True entries of ``mask``, or a seeded random ``max_wells`` of them (sorted)."""
    pos = np.flatnonzero(mask)
    if max_wells is None or len(pos) <= max_wells:
        return pos
    return np.sort(np.random.default_rng(seed).choice(pos, size=max_wells, replace=False))


def neighbor_preservation(emb: Profiles, reference: Profiles, *, k: int = 15, wells: str = "treatment",
                          max_wells: int | None = NEIGHBOUR_SAMPLE_WELLS, seed: int = 0) -> tuple[float, int]:
    """Neighbour preservation: mean over wells of |kNN_emb ∩ kNN_ref| / k (cosine).

    ``reference`` is usually the uncorrected profiles. ``wells`` selects the wells scored and among
    which neighbours are sought: "treatment" (every well that is not a negative control, the
    default), "negative" or "all"; the selection is taken from ``emb``'s roles. Wells are matched
    to the reference by plate + well (or by row order when that key is not unique/shared but the
    row counts match). kNN are exact, computed on L2-normalised rows with sklearn NearestNeighbors
    (O(N·k) memory, never N×N). 1 = every well keeps its neighbourhood; a random embedding scores
    about k / N. Above ``max_wells`` selected wells (default `NEIGHBOUR_SAMPLE_WELLS`, 30,000) the
    score is measured among a ``seed``-ed random sample of that many of them (neighbours sought
    within the sample in both spaces): the reference is usually the full feature matrix, where an
    exact or graph search over a million wells would take hours. The same wells are sampled for
    every embedding of the same screen. Returns (score, wells scored).
    """
    _check_finite(emb)
    rows = _sample_positions(_well_mask(emb, wells), max_wells, seed)
    pos_ref = _match_rows(emb, reference)[rows]
    E, R = emb.X[rows], reference.X[pos_ref]
    if not _finite_rows(R).all():
        raise MetricUnavailable("the reference has NaN/inf values in the selected wells.")
    n = len(E)
    kk = int(min(k, n - 1))
    if kk < 1 or n < 3:
        raise MetricUnavailable(f"only {n} {wells} wells; need 3 or more.")
    ne, nr = _knn_indices(E, kk), _knn_indices(R, kk)
    # overlap per row: sort both neighbour lists and count shared entries without Python sets
    both = np.concatenate([ne, nr], axis=1)
    both.sort(axis=1)
    shared = (both[:, 1:] == both[:, :-1]).sum(axis=1)
    return float(shared.mean() / kk), n


def control_collapse(emb: Profiles) -> tuple[float, int]:
    """Control collapse: how tightly the negative controls are packed relative to replicate noise.

    score = min(1, s_neg / s_rep), where
      * s_neg = median Euclidean distance of negative-control wells to the negative-control centroid,
      * s_rep = median Euclidean distance of treatment wells of replicated perturbations (2+ wells;
        positive controls included) to their own perturbation's centroid,
    each distance multiplied by sqrt(n / (n − 1)) for its group of n wells, so a centroid estimated
    from few replicates does not make replicates look tighter than controls. Controls that vary as
    much as treatment replicates do score 1; controls collapsed to a point score 0. Scale-invariant.
    Returns (score, number of negative controls).
    """
    _check_finite(emb)
    neg = _negative_controls(emb)
    if neg.sum() < 2:
        raise MetricUnavailable("fewer than two negative-control wells.")
    pos = np.flatnonzero(~neg)
    pert = emb.perturbation[pos].astype(str)
    pos, pert = pos[_drop_rare(pert, 2)], pert[_drop_rare(pert, 2)]
    if len(pos) == 0:
        raise MetricUnavailable("no perturbation has two or more wells to measure replicate spread.")
    X = emb.X.astype(np.float64)
    Xn = X[neg]
    n_neg = len(Xn)
    d_neg = np.linalg.norm(Xn - Xn.mean(axis=0), axis=1) * math.sqrt(n_neg / (n_neg - 1))
    T = pd.DataFrame(X[pos])
    grp = T.groupby(pert)
    sizes = grp[0].transform("size").to_numpy(np.float64)
    d_rep = np.linalg.norm((T - grp.transform("mean")).to_numpy(), axis=1) * np.sqrt(sizes / (sizes - 1))
    s_neg, s_rep = float(np.median(d_neg)), float(np.median(d_rep))
    if s_rep <= 0:
        raise MetricUnavailable("treatment replicates are identical (zero spread); the ratio is undefined.")
    return float(min(1.0, s_neg / s_rep)), int(n_neg)


# ================================================================================================
# Scorecard
# ================================================================================================
# Headline columns, in order: aggregates, the protocol's batch (technical) and bio metrics, then the
# Cell Painting position metrics. Everything else (extras) is in the full tables only.
HEADLINE_TECHNICAL = ("silhouette_batch", "graph_connectivity", "kbet", "ilisi")
HEADLINE_BIOLOGICAL = ("clisi", "activity_map", "nonrep_map", "nmi", "ari", "pasw")
HEADLINE_POSITION = ("same_position", "neighbor_preservation", "control_collapse")
AGGREGATES = ("technical", "biological", "overall", "position")


@dataclass
class EvaluationConfig:
    """Settings of `evaluate`.

    ``effects``: position effects for the position score (row, column) and technical effects shown
    among controls (batch, plate); None = every effect the data have. ``replicates_in_different_wells``
    False (CLI ``--same-well-replicates``) adds an extra ``activity_map_same_well`` row; the headline
    mAPs always use different-well replicates. ``treatment_technical`` is kept for compatibility: the
    within-perturbation view is always part of the position score now.
    """

    effects: tuple[str, ...] | None = None
    k: int = 15
    null_size: int = 10000
    threshold: float = 0.05
    replicates_in_different_wells: bool = True
    asw_per_perturbation: bool = False
    treatment_technical: bool = True
    leiden_resolutions: tuple[float, ...] = (0.25, 0.5, 1.0, 1.5, 2.0, 4.0, 8.0)
    perplexity: float = 30.0
    max_pairs: int = 4_000_000
    max_wells_classifier: int = 2000  # leakage classifiers: stratified subsample (CV cost grows fast)
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _column_name(metric: pd.Series, effect: pd.Series) -> pd.Series:
    eff = effect.fillna("").astype(str)
    return metric + np.where(eff != "", "[" + eff + "]", "")


@dataclass
class Scorecard:
    """Tidy scores (columns: method, metric, effect, category, value, n, note) plus detail tables
    (e.g. ``details['activity']`` per-perturbation mAP) keyed by name, per method."""

    scores: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=SCORE_COLUMNS))
    details: dict[str, dict[str, pd.DataFrame]] = field(default_factory=dict)
    runtimes: dict[str, float] = field(default_factory=dict)

    @classmethod
    def concat(cls, cards: Iterable[Scorecard]) -> Scorecard:
        cards = list(cards)
        out = cls(pd.concat([c.scores for c in cards], ignore_index=True) if cards else
                  pd.DataFrame(columns=SCORE_COLUMNS))
        for c in cards:
            out.details.update(c.details)
            out.runtimes.update(c.runtimes)
        return out

    @property
    def methods(self) -> list[str]:
        return list(dict.fromkeys(self.scores["method"]))

    def wide(self, include_aggregates: bool = True, with_runtime: bool = True) -> pd.DataFrame:
        """Method × metric table of values; columns named ``metric`` or ``metric[effect]``."""
        df = self.scores
        if not include_aggregates:
            df = df[df["category"] != AGGREGATE]
        name = _column_name(df["metric"], df["effect"])
        wide = df.assign(column=name).pivot_table(index="method", columns="column", values="value",
                                                  aggfunc="first", dropna=False, sort=False)
        order = list(dict.fromkeys(name))
        aggs = [c for c in AGGREGATES if c in order]
        wide = wide.reindex(index=self.methods, columns=aggs + [c for c in order if c not in aggs])
        if with_runtime and self.runtimes:
            wide["runtime_s"] = [self.runtimes.get(m, np.nan) for m in wide.index]
        wide.columns.name = None
        return wide

    def headline_columns(self) -> list[str]:
        """The headline columns present: aggregates, every technical and biological (protocol) metric,
        and the position headline (same-position test, neighbour preservation, control collapse)."""
        df = self.scores
        names = _column_name(df["metric"], df["effect"])
        head = (df["category"].isin([TECHNICAL, BIOLOGICAL]) | df["metric"].isin(HEADLINE_POSITION)).to_numpy()
        present = set(names)
        return [a for a in AGGREGATES if a in present] + list(dict.fromkeys(names[head]))

    def comparison(self, reference: str = "uncorrected", columns: Sequence[str] | None = None,
                   deltas: bool = True) -> pd.DataFrame:
        """Method × metric with the ``reference`` method first and, for every other method, a
        ``Δ<metric>`` column = value − reference value ("did it help?"). ``columns`` default to
        `headline_columns`. Without the reference the Δ columns are left out."""
        wide = self.wide(with_runtime=False)
        cols = list(columns) if columns is not None else self.headline_columns()
        wide = wide.reindex(columns=cols)
        order = ([reference] if reference in wide.index else []) + [m for m in wide.index if m != reference]
        wide = wide.reindex(order)
        if not deltas or reference not in wide.index:
            return wide
        delta = wide - wide.loc[reference]
        out = pd.concat([wide, delta.add_prefix("Δ")], axis=1)
        inter = [c for col in cols for c in (col, f"Δ{col}")]
        return out[inter]

    def summary(self) -> pd.DataFrame:
        """Method × (technical, biological, overall, position, n_technical, n_biological, n_position)."""
        agg = self.scores[self.scores["category"] == AGGREGATE]
        out = agg.pivot_table(index="method", columns="metric", values="value", aggfunc="first",
                              dropna=False, sort=False)
        n = agg.pivot_table(index="method", columns="metric", values="n", aggfunc="first", dropna=False)
        out = out.reindex(columns=[a for a in AGGREGATES if a in out.columns])
        for m in ("technical", "biological", "position"):
            if m in n.columns:
                out[f"n_{m}"] = n[m]
        out.columns.name = None
        return out.reindex(self.methods)

    def to_json_dict(self) -> dict[str, Any]:
        s = self.scores.astype(object).where(self.scores.notna(), None)
        return {"scores": s.to_dict(orient="records"), "runtimes": self.runtimes}

    def format(self) -> str:
        """Plain-text rendering for the terminal: one block per method, headline categories first."""
        lines = []
        rank = {AGGREGATE: 0, TECHNICAL: 1, BIOLOGICAL: 2, POSITION: 3}
        for method in self.methods:
            sub = self.scores[self.scores["method"] == method]
            sub = sub.iloc[np.argsort([rank.get(c, 4) for c in sub["category"]], kind="stable")]
            lines.append(f"== {method}" + (f"  (run time {self.runtimes[method]:.1f} s)" if method in self.runtimes else ""))
            for _, r in sub.iterrows():
                name = r["metric"] + (f"[{r['effect']}]" if r["effect"] else "")
                val = "missing" if pd.isna(r["value"]) else f"{r['value']:.3f}"
                n = "" if pd.isna(r["n"]) else f"n={int(r['n'])}"
                lines.append(f"  {r['category']:<10} {name:<32} {val:>8}  {n:<8} {r['note'] or ''}".rstrip())
        return "\n".join(lines)


def format_comparison(table: pd.DataFrame, digits: int = 3) -> str:
    """Markdown of a `Scorecard.comparison` table: each cell 'value (Δ)', missing as '–'."""
    cols = [c for c in table.columns if not str(c).startswith("Δ")]
    lines = ["| method | " + " | ".join(cols) + " |", "|---|" + "|".join("---" for _ in cols) + "|"]
    for method, row in table.iterrows():
        cells = []
        for c in cols:
            v, d = row[c], row.get(f"Δ{c}", np.nan)
            if pd.isna(v):
                cells.append("–")
            elif pd.isna(d) or method == table.index[0]:
                cells.append(f"{v:.{digits}f}")
            else:
                cells.append(f"{v:.{digits}f} ({d:+.{digits}f})")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _aggregate_rows(method: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    means = {}
    for cat in (TECHNICAL, BIOLOGICAL, POSITION):
        vals = [r["value"] for r in rows if r["category"] == cat]
        avail = [v for v in vals if v is not None and not (isinstance(v, float) and math.isnan(v))]
        means[cat] = float(np.mean(avail)) if avail else math.nan
        out.append(dict(method=method, metric=cat, effect="", category=AGGREGATE, value=means[cat],
                        n=len(avail), note=f"mean of {len(avail)} of {len(vals)} {cat} metrics"
                        + ("" if avail else "; none available")))
    t, b = means[TECHNICAL], means[BIOLOGICAL]
    ok = not (math.isnan(t) or math.isnan(b))
    out.insert(2, dict(method=method, metric="overall", effect="", category=AGGREGATE,
                       value=TECHNICAL_WEIGHT * t + BIOLOGICAL_WEIGHT * b if ok else math.nan,
                       n=out[0]["n"] + out[1]["n"],
                       note="0.4·technical + 0.6·biological (Arevalo et al. 2024)" if ok else
                       "missing: needs both a technical and a biological score"))
    return out


def available_effects(emb: Profiles) -> list[str]:
    """Effects with a label column and at least two levels (batch only with a batch role)."""
    out = []
    for e in EFFECTS:
        try:
            lab = effect_labels(emb, e)
        except MetricUnavailable:
            continue
        if len(np.unique(lab)) > 1:
            out.append(e)
    return out


class _Recorder:
    """Collects score rows; a MetricUnavailable becomes a missing row with its reason."""

    def __init__(self, method: str, progress: ProgressCallback, steps: int) -> None:
        self.method, self.progress, self.steps, self.done = method, progress, steps, 0
        self.rows: list[dict[str, Any]] = []

    def missing(self, metric: str, effect: str, category: str, reason: str) -> None:
        self.rows.append(dict(method=self.method, metric=metric, effect=effect, category=category,
                              value=math.nan, n=None, note=f"missing: {reason}"))

    def __call__(self, metric: str, effect: str, category: str, fn: Callable[[], Any]) -> Any:
        try:
            res = fn()
        except MetricUnavailable as exc:
            self.missing(metric, effect, category, str(exc))
            return None
        value, n, note = res if len(res) == 3 else (*res, "")
        value = float(value)
        if not math.isnan(value):
            value = min(1.0, max(0.0, value))
        self.rows.append(dict(method=self.method, metric=metric, effect=effect, category=category,
                              value=value, n=n, note=note))
        return res

    def tick(self, msg: str) -> None:
        self.done += 1
        self.progress(min(1.0, self.done / self.steps), f"{self.method}: {msg}")


def _technical(emb: Profiles, cfg: EvaluationConfig, rec: _Recorder, knn: Any) -> None:
    try:
        eff = batch_effect(emb)
    except MetricUnavailable as exc:
        for m in ("silhouette_batch", "kbet", "ilisi"):
            rec.missing(m, "batch", TECHNICAL, str(exc))
        eff = None
    if eff:
        rec("silhouette_batch", eff, TECHNICAL, lambda: silhouette_batch(emb, eff, seed=cfg.seed))
        rec("kbet", eff, TECHNICAL, lambda: kbet_score(emb, eff))
        rec("ilisi", eff, TECHNICAL, lambda: ilisi_score(emb, eff, perplexity=cfg.perplexity, knn=knn()))
    rec.tick("batch mixing")

    def _gc():
        mask, _, idx = knn()
        return (*graph_connectivity(emb.subset(mask), k=cfg.k, graph=graph_from_knn(idx, cfg.k)),
                "replicated treatments")
    rec("graph_connectivity", "perturbation", TECHNICAL, _gc)
    rec.tick("graph connectivity")


def _biological(emb: Profiles, cfg: EvaluationConfig, rec: _Recorder, knn: Any,
                details: dict[str, pd.DataFrame]) -> None:
    rec("clisi", "", BIOLOGICAL, lambda: (*clisi_score(emb, perplexity=cfg.perplexity, knn=knn()),
                                         "perturbation labels"))
    map_kw = dict(null_size=cfg.null_size, threshold=cfg.threshold, seed=cfg.seed)

    def _act(same_well: bool = False):
        tab = phenotypic_activity(emb, replicates_in_different_wells=not same_well, negatives="same_plate",
                                  include_positive_controls=False, **map_kw)
        details["activity_same_well" if same_well else "activity"] = tab
        return tab

    act = rec("activity_map", "", BIOLOGICAL,
              lambda: _summary(_act(), "replicates in different wells vs same-plate negative controls"))
    nonrep = rec("nonrep_map", "", BIOLOGICAL, lambda: _summary(
        _store(details, "nonrep", phenotypic_distinctness(emb, **map_kw)),
        "replicates in different wells vs same-plate other perturbations"))
    rec.tick("mAP")
    try:
        lr = perturbation_leiden(emb, k=cfg.k, resolutions=cfg.leiden_resolutions, seed=cfg.seed,
                                 graph=graph_from_knn(knn()[2], cfg.k))
        rec("nmi", "perturbation", BIOLOGICAL, lambda: (lr["nmi"], lr["n"], f"Leiden resolution {lr['nmi_resolution']}"))
        rec("ari", "perturbation", BIOLOGICAL, lambda: (lr["ari"], lr["n"], f"Leiden resolution {lr['ari_resolution']}"))
    except MetricUnavailable as exc:
        for m in ("nmi", "ari"):
            rec.missing(m, "perturbation", BIOLOGICAL, str(exc))
    rec("pasw", "", BIOLOGICAL, lambda: (*perturbation_asw(emb, seed=cfg.seed), "replicated treatments"))
    rec.tick("clustering")
    for name, res in (("activity", act), ("nonrep", nonrep)):
        if res is None:
            rec.missing(f"{name}_fraction", "", EXTRA, f"{name}_map is missing")
            continue
        tab = details[name]
        rec(f"{name}_fraction", "", EXTRA, lambda tab=tab: (tab["below_corrected_p"].mean(), len(tab),
                                                          f"FDR < {cfg.threshold}"))
    if not cfg.replicates_in_different_wells:
        rec("activity_map_same_well", "", EXTRA,
            lambda: _summary(_act(same_well=True), "replicates in any well (not a headline score)"))


def _summary(tab: pd.DataFrame, note: str) -> tuple[float, int, str]:
    sampled = tab.attrs.get("sampled")
    return float(tab["mean_average_precision"].mean()), len(tab), note + (f"; {sampled}" if sampled else "")


def _store(details: dict[str, pd.DataFrame], name: str, tab: pd.DataFrame) -> pd.DataFrame:
    details[name] = tab
    return tab


def _position(emb: Profiles, cfg: EvaluationConfig, rec: _Recorder, effects: list[str],
              baseline: Profiles | None) -> None:
    for eff in effects:
        cat = POSITION if eff in ("row", "column") else EXTRA
        if cfg.asw_per_perturbation:
            rec("asw", eff, cat, lambda eff=eff: (*asw_effect(emb, eff, groups="perturbation", seed=cfg.seed),
                                                  "per perturbation"))
        else:
            rec("asw", eff, cat, lambda eff=eff: (*asw_effect(emb, eff, seed=cfg.seed), "negative controls"))
        rec("variance", eff, cat, lambda eff=eff: (*variance_explained_score(emb, eff), "negative controls"))
        rec("leakage", eff, cat, lambda eff=eff: (*classifier_leakage(emb, eff, seed=cfg.seed, max_wells=cfg.max_wells_classifier),
                                                   "negative controls"))
        if eff in ("row", "column"):
            rec("asw_trt", eff, cat, lambda eff=eff: (*asw_effect(emb, eff, groups="perturbation", seed=cfg.seed,
                                                                  max_groups=2000), "within perturbations"))
            rec("variance_trt", eff, cat, lambda eff=eff: (*variance_explained_score(emb, eff, groups="perturbation"),
                                                           "within perturbations"))
            rec("leakage_trt", eff, cat, lambda eff=eff: (*classifier_leakage(emb, eff, seed=cfg.seed, groups="perturbation",
                                                                              max_wells=cfg.max_wells_classifier),
                                                          "within perturbations"))
        rec.tick(f"position {eff}")
    rec("same_position", "", POSITION, lambda: same_position_test(emb, null_size=cfg.null_size,
                                                                  threshold=cfg.threshold, seed=cfg.seed))

    def _np():
        if baseline is None:
            raise MetricUnavailable("no uncorrected profiles to compare with (pass a baseline).")
        score, n = neighbor_preservation(emb, baseline, k=cfg.k, max_wells=NEIGHBOUR_SAMPLE_WELLS,
                                         seed=cfg.seed)
        sampled = " (a random sample)" if n < (~emb.negative_mask).sum() else ""
        return score, n, f"k={cfg.k}, treatment wells{sampled}"
    rec("neighbor_preservation", "", POSITION, _np)
    rec("control_collapse", "", POSITION, lambda: (*control_collapse(emb), "negative-control vs replicate spread"))
    rec.tick("position")


def _extras(emb: Profiles, cfg: EvaluationConfig, rec: _Recorder, details: dict[str, pd.DataFrame],
            pairs: dict[str, pd.DataFrame] | None, truth: Profiles | None) -> None:
    map_kw = dict(null_size=cfg.null_size, threshold=cfg.threshold, seed=cfg.seed)
    cons = rec("consistency_map", "", EXTRA, lambda: _summary(
        _store(details, "consistency", phenotypic_consistency(emb, **map_kw)), f"annotation {emb.roles.annotation}"))
    if cons is not None:
        tab = details["consistency"]
        rec("consistency_fraction", "", EXTRA, lambda: (tab["below_corrected_p"].mean(), len(tab),
                                                        f"FDR < {cfg.threshold}"))
    else:
        rec.missing("consistency_fraction", "", EXTRA, "consistency_map is missing")
    try:
        lr = leiden_nmi_ari(emb, k=cfg.k, resolutions=cfg.leiden_resolutions, seed=cfg.seed)
        rec("nmi", "annotation", EXTRA, lambda: (lr["nmi"], lr["n"], f"Leiden resolution {lr['nmi_resolution']}"))
        rec("ari", "annotation", EXTRA, lambda: (lr["ari"], lr["n"], f"Leiden resolution {lr['ari_resolution']}"))
    except MetricUnavailable as exc:
        for m in ("nmi", "ari"):
            rec.missing(m, "annotation", EXTRA, str(exc))
    for name, tab in (pairs or {}).items():
        def _fr(tab=tab, name=name):
            frac, per_pair = fraction_retrieved(emb, tab, seed=cfg.seed)
            details[f"retrieval_{name}"] = per_pair
            return frac, int(per_pair["found"].sum()), f"{name} pairs, > 95th percentile of non-pairs"
        rec("fraction_retrieved", name, EXTRA, _fr)
    if truth is not None:
        rec("knn_overlap", "truth", EXTRA, lambda: (*knn_overlap(emb, truth, k=cfg.k, max_wells=NEIGHBOUR_SAMPLE_WELLS,
                                                                     seed=cfg.seed), f"k={cfg.k}"))
    rec.tick("extras")


def evaluate(emb: Profiles, *, method: str | None = None, truth: Profiles | None = None,
             pairs: dict[str, pd.DataFrame] | None = None, config: EvaluationConfig | None = None,
             baseline: Profiles | None = None, progress: ProgressCallback = no_progress) -> Scorecard:
    """Score one embedding with the field protocol plus the Cell Painting position score.

    * technical (Arevalo et al. 2024 "batch correction"): silhouette of batch, graph connectivity,
      kBET, iLISI — on replicated treatment wells, batch = the batch column, else plates;
    * biological ("bio metrics"): cLISI, mAP vs negative controls, mAP vs non-replicates, Leiden
      NMI and ARI against perturbations, perturbation silhouette;
    * overall = 0.4·technical + 0.6·biological;
    * position (reported beside it, own aggregate): row/column silhouette, variance explained and
      leakage among negative controls and within perturbations, the same-position control test,
      neighbour preservation against ``baseline`` (the uncorrected profiles) and control collapse;
    * extras (not aggregated): FDR fractions, annotation consistency and NMI/ARI, batch/plate
      effects among controls, ``pairs`` retrieval, ``truth`` kNN overlap, same-well-replicate mAP.

    Metrics the data cannot support are missing (NaN) with the reason. Definitions: docs/metrics.md.
    """
    cfg = config or EvaluationConfig()
    method = method or getattr(emb, "method", None) or "embedding"
    effects = [e for e in (cfg.effects or EFFECTS) if e in EFFECTS]
    rec = _Recorder(method, progress, steps=len(effects) + 8)
    details: dict[str, pd.DataFrame] = {}
    cache: dict[str, Any] = {}

    def knn():  # one cosine kNN of the replicated treatments: LISI, graph connectivity, Leiden
        if "knn" not in cache:
            cache["knn"] = _label_knn(emb, int(max(3 * cfg.perplexity, cfg.k)))
        return cache["knn"]

    _technical(emb, cfg, rec, knn)
    _biological(emb, cfg, rec, knn, details)
    _position(emb, cfg, rec, effects, baseline)
    _extras(emb, cfg, rec, details, pairs, truth)
    rows = rec.rows + _aggregate_rows(method, rec.rows)
    scores = pd.DataFrame(rows, columns=SCORE_COLUMNS)
    scores["n"] = scores["n"].astype("Int64")
    scores["note"] = scores["note"].fillna("")
    progress(1.0, f"{method}: done")
    return Scorecard(scores=scores, details={method: details})
