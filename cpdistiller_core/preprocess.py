"""Preprocessing of well-level profiles: plate-wise robust MAD normalisation, feature selection,
outlier clipping and z-scoring, with a report of everything dropped and why.

Defaults follow the cpDistiller paper, which preprocesses with pycytominer:

1. ``mad_robustize`` per plate against that plate's negative controls:
   ``(x - median) / (MAD * 1.4826 + 1e-18)`` (pycytominer's ``RobustMAD``; NaNs are ignored).
   Features whose MAD is 0 on some plate would be blown up to ~1e18 there and are dropped.
2. feature selection with pycytominer's operations: ``drop_na_columns`` (NaN in > 5 % of wells),
   ``variance_threshold`` (variance < 1e-6), ``frequency_threshold`` (near-constant: 2nd/1st most
   common value ratio < 0.05 or unique values / wells < 0.01), ``correlation_threshold``
   (Pearson > 0.9) and the packaged ``blocklist``, fitted on the wells without missing values.
   Wells with missing values in a kept feature are then dropped (or set to 0) and reported.
3. clipping to ``[-clip, clip]`` and z-scoring every kept feature over all wells.

pycytominer's ``normalize`` works on one DataFrame per call; we vectorise it per plate in numpy
(float64 arithmetic, identical formula; the tests check it against pycytominer on real plates).
``correlation_threshold``, ``frequency_threshold`` and ``variance_threshold`` are re-implemented with
pycytominer's decision rules but vectorised and chunked (pycytominer builds a long pair table with a
per-pair ``apply``, runs one ``value_counts`` per feature, and sklearn's variance copies the matrix to
float64: 10-25 s each and GBs of memory on 100k wells x 1,500 features); the tests check they select
the same features as pycytominer. ``drop_na_columns`` and ``blocklist`` call pycytominer itself.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np
import pandas as pd

from .errors import CpDistillerError, CpDistillerWarning, example_rows, example_values, where
from .paths import atomic_write_bytes, json_default
from .profiles import Profiles
from .progress import ProgressCallback, no_progress
from .settings import config_from_dict, setting

MAD_SCALE = 1.4826  # makes the MAD a consistent estimator of the standard deviation (normal data)
FEATURE_OPERATIONS = (
    "drop_na_columns", "variance_threshold", "frequency_threshold", "correlation_threshold", "blocklist",
)
_NORMALIZE_METHODS = ("mad_robustize",)
_NAN_ROW_POLICIES = ("drop", "zero")

# The name a saved model directory keeps its fitted preprocessing under (run directories and
# ``cpd.correct(save_model=...)`` both write it, ``PreprocessReport.load`` reads it back).
MODEL_PREPROCESS_FILE = "preprocess.json"


@dataclass
class PreprocessConfig:
    """Preprocessing settings; the defaults are the paper's (pycytominer's defaults where it has them).

    Examples
    --------
    >>> from cpdistiller_core import PreprocessConfig
    >>> PreprocessConfig(normalize_samples="all", nan_rows="zero").clip
    30.0

    normalize: ``"mad_robustize"`` (plate-wise robust MAD) or None to skip normalisation.
    normalize_by: the grouping for normalisation, a role (``"plate"``, ``"batch"``) or a metadata column.
    normalize_samples: reference wells: ``"negcon"`` (negative controls), ``"all"`` (every well of the
        group; a fallback, warns), or a pandas query on the metadata such as ``"Metadata_node_type == 'NC'"``.
    mad_epsilon: pycytominer's ``mad_robustize_epsilon``.
    drop_zero_mad: drop features whose reference MAD is 0 on any plate (their values explode there).
    operations: pycytominer feature-selection operations, applied in this order.
    nan_rows: what to do with wells that still hold NaN after NaN-heavy features are dropped:
        ``"drop"`` them, or set the missing values to ``"zero"`` (the control median after normalisation).
    clip: clip normalised values to ``[-clip, clip]``; None disables.
    zscore: standardise each kept feature over all wells (mean/std kept in the report).
    """

    normalize: str | None = setting("mad_robustize", "normalisation (none: skip it)", label="Normalisation",
                                    group="basic", choices=("mad_robustize", None))
    normalize_by: str = setting("plate", "normalise per plate, batch, or a metadata column", label="Normalise per",
                                group="basic")
    normalize_samples: str = setting("negcon", "reference wells: negcon, all, or a pandas query such as "
                                     "\"Metadata_node_type == 'NC'\"", label="Reference wells", group="basic")
    mad_epsilon: float = setting(1e-18, "pycytominer's mad_robustize_epsilon", label="MAD epsilon", fmt="%.1e",
                                 range=(0.0, 1.0))
    drop_zero_mad: bool = setting(True, "drop features whose control MAD is 0 on some plate (they take extreme "
                                  "values)", label="Drop zero-MAD features")
    operations: tuple[str, ...] = setting(FEATURE_OPERATIONS, "feature selection, in this order", group="basic",
                                          label="Feature selection", choices=FEATURE_OPERATIONS, multiple=True)
    na_cutoff: float = setting(0.05, "drop features NaN in more than this share of wells",
                               label="Max NaN fraction per feature", range=(0.0, 1.0), fmt="%.2f")
    min_variance: float = setting(1e-6, "variance cut", label="Minimum variance", range=(0.0, 1e6), fmt="%.1e")
    freq_cut: float = setting(0.05, "2nd / 1st most common value ratio cut", label="Frequency cut",
                              range=(0.0, 1.0), fmt="%.2f")
    unique_cut: float = setting(0.01, "unique values / wells cut", label="Unique cut", range=(0.0, 1.0), fmt="%.2f")
    corr_threshold: float = setting(0.9, "Pearson correlation cut", label="Correlation threshold",
                                    range=(0.0, 1.0), fmt="%.2f")
    blocklist: tuple[str, ...] | None = None  # None: pycytominer's packaged default blocklist
    nan_rows: str = setting("drop", "wells with missing values in kept features: drop them or set them to 0",
                            label="Wells still with NaN", choices=_NAN_ROW_POLICIES)
    clip: float | None = setting(30.0, "clip normalised values to [-C, C] (none: no clipping)",
                                 label="Clip at ± (0 = off)", range=(0.0, 1000.0), off=0.0)
    zscore: bool = setting(True, "z-score every kept feature over all wells", label="z-score features")

    def __post_init__(self) -> None:
        self.operations = tuple(self.operations)
        if self.blocklist is not None:
            self.blocklist = tuple(self.blocklist)
        if self.normalize is not None and self.normalize not in _NORMALIZE_METHODS:
            raise CpDistillerError(f"unknown normalisation {self.normalize!r}; use one of {list(_NORMALIZE_METHODS)} or None.")
        unknown = [op for op in self.operations if op not in FEATURE_OPERATIONS]
        if unknown:
            raise CpDistillerError(f"unknown feature-selection operation(s) {unknown}; use {list(FEATURE_OPERATIONS)}.")
        if self.nan_rows not in _NAN_ROW_POLICIES:
            raise CpDistillerError(f"unknown nan_rows policy {self.nan_rows!r}; use one of {list(_NAN_ROW_POLICIES)}.")
        for name in ("na_cutoff", "freq_cut", "unique_cut", "corr_threshold"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise CpDistillerError(f"{name} must be between 0 and 1 (got {value}).")
        if self.clip is not None and not self.clip > 0:
            raise CpDistillerError(f"clip must be positive or None (got {self.clip}).")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["operations"] = list(self.operations)
        d["blocklist"] = None if self.blocklist is None else list(self.blocklist)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str | None = None) -> PreprocessConfig:
        return config_from_dict(cls, d, source)


# ----- normalisation ---------------------------------------------------------------------------------
def mad_normalize_array(X: np.ndarray, groups: np.ndarray, reference: np.ndarray, eps: float = 1e-18,
                        dtype: type = np.float64, overwrite: bool = False) -> tuple[np.ndarray, dict[Any, np.ndarray]]:
    """pycytominer's ``RobustMAD`` fitted on the reference rows of each group, applied to the group.

    Arithmetic is float64; the result is stored as ``dtype``. Returns it and, per group, a boolean mask of features whose reference
    MAD is 0. NaNs are ignored when fitting (pandas ``median`` / scipy ``median_abs_deviation`` with
    ``nan_policy="omit"``) and stay NaN. Groups without reference rows raise. ``overwrite``: write the
    result into ``X`` when it already has ``dtype`` (each group is read in full before it is written).
    """
    X = np.asarray(X)
    codes, uniques = pd.factorize(pd.Series(groups), sort=False)
    reference = np.asarray(reference, dtype=bool)
    out = X if overwrite and X.dtype == dtype else np.empty(X.shape, dtype=dtype)
    zero_mad: dict[Any, np.ndarray] = {}
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(len(uniques) + 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices give NaN, as in pycytominer
        for g, name in enumerate(uniques):
            rows = order[bounds[g]:bounds[g + 1]]
            if rows[-1] - rows[0] == len(rows) - 1:  # a plate's rows are usually contiguous: no gather copy
                rows = slice(int(rows[0]), int(rows[-1]) + 1)
            block = X[rows]
            ref = block[reference[rows]].astype(np.float64)
            if len(ref) == 0:
                raise CpDistillerError(f"group {name!r} has no reference wells to normalise against.")
            median = _median(ref)
            # scipy divides by scale=1/1.4826; do the same so results agree to the last bit
            mad = _median(np.abs(ref - median)) / (1 / MAD_SCALE)
            with np.errstate(over="ignore"):  # float32 overflow becomes inf, reported by the caller
                out[rows] = (block.astype(np.float64) - median) / (mad + eps)
            zero_mad[name] = mad == 0
    return out, zero_mad


def _median(a: np.ndarray) -> np.ndarray:
    """Column medians ignoring NaN (np.median gives the same numbers and is far faster without NaN)."""
    return np.nanmedian(a, axis=0) if np.isnan(a).any() else np.median(a, axis=0)


def reference_mask(profiles: Profiles, samples: str = "negcon") -> np.ndarray:
    """Boolean mask of reference wells: ``"negcon"``, ``"all"`` or a pandas query on the metadata."""
    if samples == "all":
        return np.ones(profiles.n_wells, dtype=bool)
    if samples == "negcon":
        if not profiles.roles.control or not profiles.roles.negative_values:
            raise CpDistillerError(
                f"{where(profiles.source or None)}cannot normalise against negative controls: no control column "
                "/ negative-control values are set (the 'control' and 'negative_values' roles). Set them, or "
                "use normalize_samples=\"all\" to normalise against all wells of each plate."
            )
        return profiles.negative_mask.copy()
    try:
        hits = profiles.meta.reset_index(drop=True).query(samples).index.to_numpy()
    except Exception as exc:  # pandas raises many types for a bad expression
        raise CpDistillerError(
            f"{where(profiles.source or None)}cannot evaluate the reference-sample query {samples!r}: {exc}"
        ) from exc
    mask = np.zeros(profiles.n_wells, dtype=bool)
    mask[hits] = True
    return mask


def _group_labels(profiles: Profiles, by: str) -> np.ndarray:
    if by in ("plate", "batch"):
        return profiles.labels(by)
    if by in profiles.meta.columns:
        return profiles.meta[by].astype("string").fillna("NA").to_numpy(dtype=object)
    raise CpDistillerError(
        f"{where(profiles.source or None)}cannot normalise by {by!r}: not a role ('plate', 'batch') nor a metadata column."
    )


def _check_references(profiles: Profiles, groups: np.ndarray, ref: np.ndarray, by: str, samples: str) -> None:
    counts = pd.Series(ref).groupby(groups, sort=False).sum()
    empty = counts.index[counts.to_numpy() == 0].tolist()
    if empty:
        what = "negative controls" if samples == "negcon" else f"wells matching {samples!r}"
        raise CpDistillerError(
            f"{where(profiles.source or None)}{len(empty)} {by}(s) have no {what} to normalise against: "
            f"{example_values(empty)}. Use normalize_samples=\"all\" to normalise against all wells of each "
            f"{by}, or remove those {by}s."
        )


def _no_controls_message(profiles: Profiles, by: str) -> str:
    roles = profiles.roles
    why = (f"none of the values {list(roles.negative_values)} occurs in the control column"
           if roles.control and roles.negative_values else "no control column / negative-control values are set")
    return (f"{where(profiles.source or None, roles.control)}no negative controls ({why}): normalising against "
            f"all wells of each {by} instead; plates with many strong or unevenly placed perturbations get a "
            "shifted reference (name the controls with --control-col/--negative to use them).")


def _all_samples_message(by: str) -> str:
    return (f"normalising against all wells of each {by}, not negative controls: plates with many strong or "
            "unevenly placed perturbations get a shifted reference.")


def _warn(message: str) -> None:
    warnings.warn(message, CpDistillerWarning, stacklevel=3)  # points at the caller of the step function


@dataclass
class MadStats:
    """What :func:`mad_normalize` did: the reference wells actually used (``"all"`` when ``"negcon"``
    found no negative control) and, per group, a boolean mask of features whose reference MAD is 0."""

    samples: str
    zero_mad: dict[Any, np.ndarray]


@overload
def mad_normalize(profiles: Profiles, by: str = ..., samples: str = ..., eps: float = ..., *,
                  warn: Callable[[str], None] | None = ..., return_stats: Literal[False] = ...,
                  overwrite: bool = ...) -> Profiles: ...
@overload
def mad_normalize(profiles: Profiles, by: str = ..., samples: str = ..., eps: float = ..., *,
                  warn: Callable[[str], None] | None = ..., return_stats: Literal[True],
                  overwrite: bool = ...) -> tuple[Profiles, MadStats]: ...
def mad_normalize(profiles: Profiles, by: str = "plate", samples: str = "negcon", eps: float = 1e-18, *,
                  warn: Callable[[str], None] | None = None,
                  return_stats: bool = False, overwrite: bool = False) -> Profiles | tuple[Profiles, MadStats]:
    """Robust MAD normalisation per ``by`` group against its reference wells (pycytominer ``mad_robustize``).

    Computed in float64, stored as float32 like every Profiles; infinite inputs count as missing.
    Raises naming the plates without reference wells; ``samples="all"`` (every well) warns, and so
    does ``"negcon"`` on profiles with no negative control at all, which then normalises against all
    wells. ``warn`` receives the warnings instead of :func:`warnings.warn`; ``return_stats`` also
    returns a :class:`MadStats`. ``overwrite``: normalise ``profiles.X`` in place when it is float32 (saves
    a copy of the matrix; ``profiles`` then holds the normalised values).
    """
    say = warn or _warn
    if samples == "negcon" and not profiles.negative_mask.any():
        say(_no_controls_message(profiles, by))
        samples = "all"
    elif samples == "all":
        say(_all_samples_message(by))
    groups = _group_labels(profiles, by)
    ref = reference_mask(profiles, samples)
    _check_references(profiles, groups, ref, by, samples)
    Z, zero_mad = mad_normalize_array(_finite_or_nan(profiles.X), groups, ref, eps, dtype=np.float32,
                                      overwrite=overwrite)
    out = profiles.with_features(Z, profiles.features)
    return (out, MadStats(samples, zero_mad)) if return_stats else out


def _finite_or_nan(X: np.ndarray) -> np.ndarray:
    inf = np.isinf(X)
    if inf.any():
        X = X.copy()
        X[inf] = np.nan
    return X


# ----- feature selection -----------------------------------------------------------------------------
def correlation_threshold(X: np.ndarray, features: Sequence[str], threshold: float = 0.9,
                          chunk_rows: int = 4096, block_bytes: int = 128 << 20) -> list[str]:
    """Features to exclude so no kept pair has Pearson correlation above ``threshold``.

    pycytominer's ``correlation_threshold`` rule: for every pair with correlation > threshold (signed,
    as in pycytominer), exclude the member with the larger sum of absolute correlations to all
    features. Vectorised: the feature x feature correlation accumulated over row chunks of centred
    float64 values, no per-pair Python. X must be free of NaN. Float64 products matter: with float32
    GEMM the summation order (BLAS thread count) can flip near-tied pairs and so which feature is dropped.

    When the p x p float64 matrix would exceed ``block_bytes`` (e.g. 20,000 features: 3.2 GB, and
    several temporaries of that size), it is never held whole: row blocks of its lower triangle, each
    ``block_bytes`` at most, give the absolute sums (rows and mirrored columns) and the pairs.
    """
    X = np.asarray(X)
    n, p = X.shape
    if p < 2 or n < 2:
        return []
    mean = X.mean(axis=0, dtype=np.float64)
    rows = max(1, block_bytes // (8 * p))
    if rows >= p:
        return _correlation_threshold_full(X, features, threshold, mean, chunk_rows)
    d = np.zeros(p)
    for C in _centred_chunks(X, mean, chunk_rows):
        d += np.einsum("ij,ij->j", C, C)
    d = np.sqrt(d)
    # One pass over the lower triangle (symmetry: half the products): absolute sums by row and by
    # column, and the pairs above the threshold (kept unless there are very many: then a 2nd pass).
    abs_sum = np.zeros(p)
    pairs: list[tuple[np.ndarray, np.ndarray]] | None = []
    n_pairs, max_pairs = 0, block_bytes // 8
    for j0, corr in _correlation_blocks(X, mean, d, rows, chunk_rows):
        if pairs is not None:
            a, b = _pairs_above(corr, j0, threshold)
            n_pairs += len(a)
            pairs = pairs + [(a, b)] if n_pairs <= max_pairs else None
        _add_abs_sums(abs_sum, corr, j0)  # overwrites the block
    rank = _pycytominer_rank(abs_sum)
    if pairs is None:
        pairs = [_pairs_above(corr, j0, threshold) for j0, corr in _correlation_blocks(X, mean, d, rows, chunk_rows)]
    excluded = np.zeros(p, dtype=bool)
    for a, b in pairs:
        excluded[np.where(rank[a] > rank[b], a, b)] = True
    return [features[i] for i in np.flatnonzero(excluded)]


def _add_abs_sums(abs_sum: np.ndarray, corr: np.ndarray, j0: int) -> None:
    """Add a lower-triangle block's |correlations| to the sums of its rows and (mirrored) columns
    (in place: the block is overwritten)."""
    A = np.abs(corr, out=corr)
    np.nan_to_num(A, copy=False, nan=0.0)
    abs_sum[j0:j0 + len(A)] += A.sum(axis=1)
    abs_sum[:j0] += A[:, :j0].sum(axis=0)  # the block's columns j0.. are its own rows: counted above


def _pairs_above(corr: np.ndarray, j0: int, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """pycytominer's (pair_a, pair_b) with a > b and correlation > threshold, in a lower-triangle block."""
    with np.errstate(invalid="ignore"):
        r, b = np.nonzero(corr > threshold)
    a = (r + j0).astype(np.int32)
    lower = b < a
    return a[lower], b[lower].astype(np.int32)


def _centred_chunks(X: np.ndarray, mean: np.ndarray, chunk_rows: int):
    n, p = X.shape
    buf = np.empty((min(chunk_rows, n), p), dtype=np.float64)  # reused: no fresh pages per chunk
    for s in range(0, n, chunk_rows):
        C = buf[:min(chunk_rows, n - s)]
        np.subtract(X[s:s + chunk_rows], mean, out=C)
        yield C


def _correlation_blocks(X: np.ndarray, mean: np.ndarray, d: np.ndarray, rows: int, chunk_rows: int):
    """(j0, correlations of features j0..j1 with features 0..j1) for row blocks of the lower triangle."""
    p = X.shape[1]
    for j0 in range(0, p, rows):
        j1 = min(p, j0 + rows)
        gram = np.empty((j1 - j0, j1))
        for k, C in enumerate(_centred_chunks(X, mean, chunk_rows)):
            if k == 0:
                np.matmul(C[:, j0:j1].T, C[:, :j1], out=gram)  # no block-sized temporary
            else:
                gram += C[:, j0:j1].T @ C[:, :j1]
        dj = d[:j1]
        with np.errstate(divide="ignore", invalid="ignore"):
            for i in range(j0, j1, 64):  # the full path's formula, without a block-sized temporary
                gram[i - j0:min(j1, i + 64) - j0] /= np.outer(d[i:min(j1, i + 64)], dj)
        gram[:, dj == 0] = np.nan
        gram[d[j0:j1] == 0, :] = np.nan
        idx = np.arange(j1 - j0)
        gram[idx, idx + j0] = np.where(d[j0:j1] == 0, np.nan, 1.0)
        yield j0, gram


def _pycytominer_rank(abs_sum: np.ndarray) -> np.ndarray:
    # pandas' sort (quicksort on the sums) decides ties exactly as pycytominer does
    rank = np.empty(len(abs_sum), dtype=np.int64)
    rank[pd.Series(abs_sum).sort_values().index.to_numpy()] = np.arange(len(abs_sum))
    return rank


def _correlation_threshold_full(X: np.ndarray, features: Sequence[str], threshold: float,
                                mean: np.ndarray, chunk_rows: int) -> list[str]:
    """The whole p x p matrix at once (small p)."""
    p = X.shape[1]
    gram = np.zeros((p, p))
    for C in _centred_chunks(X, mean, chunk_rows):
        gram += C.T @ C
    d = np.sqrt(np.diag(gram))
    with np.errstate(divide="ignore", invalid="ignore"):
        corr = gram / np.outer(d, d)
    corr[:, d == 0] = np.nan
    corr[d == 0, :] = np.nan
    np.fill_diagonal(corr, np.where(d == 0, np.nan, 1.0))
    rank = _pycytominer_rank(np.nansum(np.abs(corr), axis=0))
    with np.errstate(invalid="ignore"):
        a, b = np.nonzero(np.tril(corr > threshold, k=-1))  # a > b: pycytominer's (pair_a, pair_b)
    excluded = np.unique(np.where(rank[a] > rank[b], a, b))
    return [features[i] for i in excluded]


def variance_threshold(X: np.ndarray, features: Sequence[str], min_variance: float = 1e-6) -> list[str]:
    """Low-variance features, pycytominer's ``variance_threshold`` rule (sklearn ``VarianceThreshold``:
    population variance <= ``min_variance``; with 0, the peak-to-peak range decides constant columns).

    Computed in float64 over row chunks: sklearn first copies the matrix to float64 and ``nanvar``
    adds temporaries, about 4x the data in memory and ~15 s on 100k wells x 1,500 features.
    """
    X = np.asarray(X)
    if X.shape[0] == 0:
        return list(features)
    var = _mean_std(X)[1] ** 2
    if min_variance == 0:
        var = np.minimum(var, np.ptp(X, axis=0))
    bad = ~(var > min_variance)
    return [f for f, b in zip(features, bad) if b]


def frequency_threshold(X: np.ndarray, features: Sequence[str], freq_cut: float = 0.05,
                        unique_cut: float = 0.01, chunk_cols: int = 128) -> list[str]:
    """Near-constant features, pycytominer's ``frequency_threshold`` rule: exclude a feature when
    (count of its 2nd most common value) / (count of its most common value) < ``freq_cut`` (0 when it
    has a single value) or (number of distinct values) / wells < ``unique_cut``.

    Vectorised with column-chunk sorts instead of one pandas ``value_counts`` per feature (about 8x
    faster on 100k wells). X must be free of NaN.
    """
    X = np.asarray(X)
    n, p = X.shape
    excluded: list[str] = []
    if n == 0:
        return list(features)
    for j0 in range(0, p, chunk_cols):
        S = np.array(X[:, j0:j0 + chunk_cols].T, order="C")  # a copy (sorted in place), one feature per row
        S.sort(axis=1)
        new = np.ones(S.shape, dtype=bool)
        np.not_equal(S[:, 1:], S[:, :-1], out=new[:, 1:])
        n_unique = new.sum(axis=1)
        ratio = np.ones(len(S))  # all values distinct: 2nd/1st most common = 1/1
        rep = np.flatnonzero(n_unique < n)
        if len(rep):
            nu = n_unique[rep]
            starts = np.flatnonzero(new[rep].ravel())  # run starts; each feature starts a run at its first value
            lengths = np.diff(starts, append=len(rep) * n)
            seg = np.concatenate([[0], np.cumsum(nu)[:-1]])  # first run of each feature
            top1 = np.maximum.reduceat(lengths, seg)
            is_top = lengths == np.repeat(top1, nu)
            n_top = np.add.reduceat(is_top.astype(np.int64), seg)
            top2 = np.where(n_top >= 2, top1, np.maximum.reduceat(np.where(is_top, 0, lengths), seg))
            ratio[rep] = np.where(nu >= 2, top2, 0) / top1
        bad = (ratio < freq_cut) | (n_unique / n < unique_cut)
        excluded += [features[j0 + i] for i in np.flatnonzero(bad)]
    return excluded


def _frame(X: np.ndarray, features: Sequence[str]) -> pd.DataFrame:
    return pd.DataFrame(X, columns=list(features), copy=False)


def select_features(profiles: Profiles, operations: Sequence[str] = FEATURE_OPERATIONS, *,
                    na_cutoff: float = 0.05, min_variance: float = 1e-6, freq_cut: float = 0.05,
                    unique_cut: float = 0.01, corr_threshold: float = 0.9,
                    blocklist: Sequence[str] | None = None,
                    progress: ProgressCallback | None = None) -> tuple[Profiles, list[dict[str, str]]]:
    """pycytominer feature selection, one operation after another on the features still kept.

    Returns the profiles with the kept features and one ``{feature, step, reason}`` record per dropped
    feature. Operations needing complete data (variance, frequency, correlation) raise when NaN remain:
    drop NaN-heavy features and incomplete wells first (``preprocess`` does).
    """
    from pycytominer.cyto_utils.blocklist import get_blocklist_features
    from pycytominer.operations import get_na_columns

    progress = progress or no_progress
    unknown = [op for op in operations if op not in FEATURE_OPERATIONS]
    if unknown:
        raise CpDistillerError(f"unknown feature-selection operation(s) {unknown}; use {list(FEATURE_OPERATIONS)}.")
    X, names = profiles.X, list(profiles.features)
    cols = np.arange(len(names))  # positions of the kept features in profiles.X
    dropped: list[dict[str, str]] = []
    for k, op in enumerate(operations):
        progress(k / max(len(operations), 1), f"feature selection: {op}")
        if not names:
            break
        if op != "drop_na_columns" and op != "blocklist" and not np.isfinite(X).all():
            raise CpDistillerError(
                f"{where(profiles.source or None)}{op} needs complete data, but {int((~np.isfinite(X)).sum())} "
                "values are NaN/inf; run drop_na_columns and drop incomplete wells first."
            )
        df = _frame(X, names)
        pos = {f: i for i, f in enumerate(names)}
        reasons: dict[str, str] = {}
        if op == "drop_na_columns":
            frac = np.isnan(X).mean(axis=0)
            for f in get_na_columns(df, features=names, cutoff=na_cutoff):
                reasons[f] = f"NaN in {frac[pos[f]]:.1%} of wells (> {na_cutoff:.0%})"
        elif op == "variance_threshold":
            var = _mean_std(X)[1] ** 2
            for f in variance_threshold(X, names, min_variance=min_variance):
                reasons[f] = ("constant (variance 0)" if var[pos[f]] == 0
                              else f"variance {var[pos[f]]:.3g} < {min_variance:g}")
        elif op == "frequency_threshold":
            for f in frequency_threshold(X, names, freq_cut=freq_cut, unique_cut=unique_cut):
                reasons[f] = (f"near-constant: 2nd/1st most common value ratio < {freq_cut:g} or "
                              f"unique values / wells < {unique_cut:g}")
        elif op == "correlation_threshold":
            for f in correlation_threshold(X, names, corr_threshold):
                reasons[f] = f"Pearson correlation > {corr_threshold:g} with another feature"
        elif op == "blocklist":
            block = get_blocklist_features(blocklist=None if blocklist is None else list(blocklist),
                                           population_df=df)
            src = "pycytominer default blocklist" if blocklist is None else "blocklist"
            for f in block:
                reasons[f] = f"in the {src}"
        if reasons:
            dropped += [{"feature": f, "step": op, "reason": reasons[f]} for f in names if f in reasons]
            keep = np.array([f not in reasons for f in names])
            cols = cols[keep]
            names = [f for f, k_ in zip(names, keep) if k_]
            del df
            X = None  # drop the previous selection before copying the next: one copy at a time
            X = profiles.X[:, cols]
    progress(1.0, "feature selection done")
    if X is not profiles.X:  # the same values, C-ordered (X[:, cols] is not: Profiles would copy it again)
        X = None
        X = np.take(profiles.X, cols, axis=1)
    return profiles.with_features(X, names), dropped


# ----- clipping and scaling --------------------------------------------------------------------------
@overload
def clip_outliers(profiles: Profiles, clip: float = ..., *, copy: bool = ...,
                  return_count: Literal[False] = ...) -> Profiles: ...
@overload
def clip_outliers(profiles: Profiles, clip: float = ..., *, copy: bool = ...,
                  return_count: Literal[True]) -> tuple[Profiles, int]: ...
def clip_outliers(profiles: Profiles, clip: float = 30.0, *, copy: bool = True,
                  return_count: bool = False) -> Profiles | tuple[Profiles, int]:
    """Clip every value to ``[-clip, clip]`` (after normalisation, so in MAD units).

    ``copy=False`` clips the profiles' own matrix in place; ``return_count`` also returns how many
    values were changed.
    """
    X = profiles.X
    n = int(np.count_nonzero(X > clip) + np.count_nonzero(X < -clip)) if return_count else 0
    out = profiles.with_features(np.clip(X, -clip, clip, out=None if copy else X), profiles.features)
    return (out, n) if return_count else out


def zscore(profiles: Profiles, mean: np.ndarray | Sequence[float] | None = None,
           std: np.ndarray | Sequence[float] | None = None, *, copy: bool = True
           ) -> tuple[Profiles, np.ndarray, np.ndarray]:
    """Standardise each feature; fits mean/std (float64, ddof=0) over all wells unless given.

    ``copy=False`` standardises the profiles' own matrix in place.
    """
    X = profiles.X
    if mean is None or std is None:
        mean, std = _mean_std(X)
    mean, std = np.asarray(mean, dtype=np.float64), np.asarray(std, dtype=np.float64)
    if mean.shape != (X.shape[1],) or std.shape != (X.shape[1],):
        raise CpDistillerError(f"z-score parameters for {mean.shape} features, data have {X.shape[1]}.")
    safe = np.where(std > 0, std, 1.0)  # constant features are centred only (feature selection drops them)
    Z = np.subtract(X, mean.astype(np.float32), out=None if copy else X)
    np.divide(Z, safe.astype(np.float32), out=Z)
    return profiles.with_features(Z, profiles.features), mean, std


def _mean_std(X: np.ndarray, chunk_rows: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """Column mean and population std in float64, two passes over row chunks (no float64 copy of X)."""
    n = max(X.shape[0], 1)
    mean = X.sum(axis=0, dtype=np.float64) / n
    ss = np.zeros(X.shape[1])
    buf = np.empty((min(chunk_rows, X.shape[0]), X.shape[1]), dtype=X.dtype)
    for s in range(0, X.shape[0], chunk_rows):
        d = buf[:min(chunk_rows, X.shape[0] - s)]
        np.subtract(X[s:s + chunk_rows], mean.astype(X.dtype), out=d)
        np.multiply(d, d, out=d)
        ss += d.sum(axis=0, dtype=np.float64)
    return mean, np.sqrt(ss / n)


# ----- the report ------------------------------------------------------------------------------------
@dataclass
class PreprocessReport:
    """What ``preprocess`` did: kept and dropped features and wells (with reasons), warnings and the
    fitted z-score parameters; JSON-serialisable, and ``apply`` repeats it on new plates.

    Examples
    --------
    >>> clean, report = cpd.preprocess(profiles)                   # doctest: +SKIP
    >>> report.save("preprocess.json")                             # doctest: +SKIP
    >>> PreprocessReport.load("preprocess.json").apply(new_plates)  # doctest: +SKIP
    """

    config: PreprocessConfig
    input_features: list[str]
    kept_features: list[str]
    dropped_features: list[dict[str, str]] = field(default_factory=list)
    dropped_rows: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    zscore_mean: list[float] | None = None
    zscore_std: list[float] | None = None
    n_wells_in: int = 0
    n_wells_out: int = 0
    n_imputed_values: int = 0
    n_clipped_values: int = 0
    seconds: float = 0.0

    # tables --------------------------------------------------------------------------------------
    def features_table(self) -> pd.DataFrame:
        """One row per input feature: kept or the step and reason that dropped it."""
        drop = {d["feature"]: d for d in self.dropped_features}
        rows = [{"feature": f, "kept": f not in drop, "step": drop.get(f, {}).get("step", ""),
                 "reason": drop.get(f, {}).get("reason", "")} for f in self.input_features]
        return pd.DataFrame(rows, columns=["feature", "kept", "step", "reason"])

    def dropped_features_table(self) -> pd.DataFrame:
        return pd.DataFrame(self.dropped_features, columns=["feature", "step", "reason"])

    def dropped_rows_table(self) -> pd.DataFrame:
        return pd.DataFrame(self.dropped_rows, columns=["row", "position", "plate", "well", "step", "reason"])

    def zscore_table(self) -> pd.DataFrame:
        if self.zscore_mean is None:
            return pd.DataFrame(columns=["feature", "mean", "std"])
        return pd.DataFrame({"feature": self.kept_features, "mean": self.zscore_mean, "std": self.zscore_std})

    def summary(self) -> dict[str, Any]:
        steps = pd.Series([d["step"] for d in self.dropped_features], dtype=object).value_counts()
        return {"features_in": len(self.input_features), "features_kept": len(self.kept_features),
                "features_dropped_by_step": {str(k): int(v) for k, v in steps.items()},
                "wells_in": self.n_wells_in, "wells_out": self.n_wells_out,
                "wells_dropped": len(self.dropped_rows), "imputed_values": self.n_imputed_values,
                "clipped_values": self.n_clipped_values, "warnings": len(self.warnings),
                "seconds": round(self.seconds, 3)}

    # serialisation -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["config"] = self.config.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PreprocessReport:
        kw = dict(d)
        kw["config"] = PreprocessConfig.from_dict(kw["config"])
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in kw.items() if k in known})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, default=json_default)

    @classmethod
    def from_json(cls, text: str) -> PreprocessReport:
        return cls.from_dict(json.loads(text))

    def save(self, path: str | Path) -> None:
        atomic_write_bytes(Path(path), self.to_json().encode())

    @classmethod
    def load(cls, path: str | Path) -> PreprocessReport:
        try:
            return cls.from_json(Path(path).read_text())
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CpDistillerError(f"{path}: not a readable preprocessing report ({exc}).") from exc

    # re-application ------------------------------------------------------------------------------
    def apply(self, profiles: Profiles, progress: ProgressCallback | None = None) -> Profiles:
        """The same preprocessing for new plates with the same features: per-plate MAD on their own
        reference wells, the kept features, the same NaN handling, clipping and stored z-score."""
        return self.apply_with_report(profiles, progress)[0]

    def apply_with_report(self, profiles: Profiles, progress: ProgressCallback | None = None
                          ) -> tuple[Profiles, PreprocessReport]:
        """``apply``, also returning the report of this application (wells dropped, warnings)."""
        missing = [f for f in self.kept_features if f not in set(profiles.features)]
        if missing:
            raise CpDistillerError(
                f"{where(profiles.source or None)}{len(missing)} feature(s) used by this preprocessing are "
                f"missing: {example_values(missing)}. New data must measure the same features."
            )
        return _run(profiles.subset(features=self.kept_features), self.config, progress,
                    select=False, zscore_params=(self.zscore_mean, self.zscore_std))



# ----- the pipeline ----------------------------------------------------------------------------------
def preprocess(profiles: Profiles, config: PreprocessConfig | None = None,
               progress: ProgressCallback | None = None, *,
               overwrite_input: bool = False) -> tuple[Profiles, PreprocessReport]:
    """Normalise, select features, handle incomplete wells, clip and z-score.

    Parameters
    ----------
    profiles : Profiles
        Raw or normalised well-level profiles.
    config : PreprocessConfig, optional
        The settings (default: the paper's).
    progress : callable, optional
        ``progress(fraction, message)``.
    overwrite_input : bool
        Normalise and scale in ``profiles.X`` itself when it is float32, saving a copy of the matrix
        (one copy fewer at the peak); only for callers that do not use ``profiles`` afterwards.

    Returns
    -------
    (Profiles, PreprocessReport)
        The new profiles (every metadata column kept; dropped wells removed) and the report of what
        was dropped and why; ``report.apply(new_profiles)`` repeats it on new plates.

    Examples
    --------
    >>> import cpdistiller_core as cpd
    >>> clean, report = cpd.preprocess(cpd.read_profiles("raw.parquet"))          # doctest: +SKIP
    >>> report.summary()["wells_dropped"]                                           # doctest: +SKIP
    0
    >>> new_clean = report.apply(cpd.read_profiles("new_plates.parquet"))         # doctest: +SKIP
    """
    return _run(profiles, config or PreprocessConfig(), progress, select=True, zscore_params=None,
                overwrite=overwrite_input)


def _run(profiles: Profiles, config: PreprocessConfig, progress: ProgressCallback | None, *, select: bool,
         zscore_params: tuple[Sequence[float] | None, Sequence[float] | None] | None, overwrite: bool = False
         ) -> tuple[Profiles, PreprocessReport]:
    """The pipeline: the step functions in order, each reporting into one PreprocessReport."""
    progress = progress or no_progress
    t0 = time.perf_counter()
    src = profiles.source or None
    report = PreprocessReport(config=config, input_features=list(profiles.features),
                              kept_features=list(profiles.features), n_wells_in=profiles.n_wells)

    base = _stack_depth()

    def warn(msg: str) -> None:  # from any step: blamed on the line that called preprocess / apply
        report.warnings.append(msg)
        warnings.warn(msg, CpDistillerWarning, stacklevel=_stack_depth() - base + 3)

    if profiles.n_features == 0:
        raise CpDistillerError(f"{where(src)}no feature columns to preprocess.")
    X = profiles.X
    n_inf = int(np.isinf(X).sum())
    if n_inf:
        X = _finite_or_nan(X)
        warn(f"{n_inf} infinite value(s) treated as missing.")
    n_all_nan = int(np.isnan(X).all(axis=0).sum())
    cur = profiles.with_features(X, profiles.features)
    dropped_feats: list[dict[str, str]] = []

    progress(0.02, "normalising")
    if config.normalize == "mad_robustize":
        cur = _normalize_step(cur, report, warn, dropped_feats, select, overwrite)
        config = report.config
    if cur.X.dtype != np.float32:  # full-precision input without normalisation: store like every output
        cur = cur.with_features(cur.X.astype(np.float32), cur.features)

    progress(0.3, "selecting features")
    if select:
        cur = _select_step(cur, config, dropped_feats, n_all_nan, progress)
    cur = _handle_incomplete_rows(cur, config, report, warn)
    report.dropped_features = dropped_feats
    report.kept_features = list(cur.features)

    progress(0.92, "clipping and scaling")
    # from here on, work in place on a matrix this function owns (saves two copies of the data)
    if not overwrite and np.may_share_memory(cur.X, profiles.X):
        cur = cur.with_features(cur.X.copy(), cur.features)
    cur = _scale_step(cur, config, report, warn, zscore_params)
    report.n_wells_out = cur.n_wells
    report.seconds = time.perf_counter() - t0
    progress(1.0, "preprocessing done")
    return cur, report


def _normalize_step(cur: Profiles, report: PreprocessReport, warn: Callable[[str], None],
                    dropped: list[dict[str, str]], select: bool, overwrite: bool = False) -> Profiles:
    """:func:`mad_normalize`, then the pipeline's policies: features with MAD 0 are dropped (or
    warned about), values beyond float32 range become missing. Sets ``report.config`` to the
    settings used (``normalize_samples="all"`` when there is no negative control at all)."""
    config = report.config
    # of the input: all-NaN features are reported by drop_na_columns (taken before an in-place normalisation)
    input_all_nan = np.isnan(cur.X).all(axis=0) if overwrite and config.drop_zero_mad and select else None
    normed, stats = mad_normalize(cur, config.normalize_by, config.normalize_samples, config.mad_epsilon,
                                  warn=warn, return_stats=True, overwrite=overwrite)
    if stats.samples != config.normalize_samples:  # as the load warning promised: all wells are the reference
        report.config = dataclasses.replace(config, normalize_samples=stats.samples)
    zero = np.zeros(cur.n_features, dtype=bool)
    for m in stats.zero_mad.values():
        zero |= m
    names = cur.features
    if zero.any() and config.drop_zero_mad and select:
        all_nan = input_all_nan if input_all_nan is not None else np.isnan(cur.X).all(axis=0)
        for j in np.flatnonzero(zero & ~all_nan):
            plates = [str(g) for g, m in stats.zero_mad.items() if m[j]]
            dropped.append({"feature": names[j], "step": "normalize",
                            "reason": f"MAD 0 among reference wells of {config.normalize_by}(s) "
                                      f"{example_values(plates, 3)}"})
        keep = ~zero | all_nan
        normed = normed.with_features(np.take(normed.X, np.flatnonzero(keep), axis=1),
                                      [f for f, k in zip(names, keep) if k])
    elif zero.any():
        bad = [names[j] for j in np.flatnonzero(zero)]
        warn(f"{len(bad)} feature(s) have MAD 0 among reference wells on some {config.normalize_by}(s) "
             f"and take extreme values there: {example_values(bad)}.")
    with np.errstate(over="ignore"):
        over = np.isinf(normed.X)  # beyond float32 range (or eps=0 with MAD 0)
    if over.any():
        X = normed.X.copy()
        X[over] = np.nan
        normed = normed.with_features(X, normed.features)
        warn(f"{int(over.sum())} normalised value(s) are infinite in float32 and are treated as missing.")
    return normed


def _select_step(cur: Profiles, config: PreprocessConfig, dropped: list[dict[str, str]], n_all_nan: int,
                 progress: ProgressCallback) -> Profiles:
    """NaN-heavy features first, then :func:`select_features` fitted on the complete wells; constant
    features are never kept. Wells incomplete in a kept feature are handled afterwards."""
    src = cur.source or None
    ops = list(config.operations)
    if "drop_na_columns" in ops:
        cur, d = select_features(cur, ["drop_na_columns"], na_cutoff=config.na_cutoff)
        dropped += d
        ops.remove("drop_na_columns")
    elif n_all_nan:
        all_nan = np.isnan(cur.X).all(axis=0)
        dropped += [{"feature": f, "step": "drop_na_columns", "reason": "all values NaN"}
                    for f, a in zip(cur.features, all_nan) if a]
        cur = cur.subset(features=[f for f, a in zip(cur.features, all_nan) if not a])
    complete = np.isfinite(cur.X).all(axis=1)
    fit = cur if complete.all() else cur.subset(rows=complete)
    if fit.n_wells < 2:
        raise CpDistillerError(
            f"{where(src)}fewer than 2 wells are complete after dropping NaN-heavy features; "
            "raise na_cutoff or fix the missing values."
        )
    before_const = _constant_features(fit)
    fit, d = select_features(fit, ops, min_variance=config.min_variance, freq_cut=config.freq_cut,
                             unique_cut=config.unique_cut, corr_threshold=config.corr_threshold,
                             blocklist=config.blocklist, progress=lambda f, m: progress(0.3 + 0.6 * f, m))
    dropped += d
    kept = set(fit.features)
    del fit  # its matrix is a copy; free it before cur.subset makes the kept one
    left_const = [f for f in before_const if f in kept]
    if left_const:  # constant features carry nothing and break z-scoring; never keep them silently
        dropped += [{"feature": f, "step": "constant", "reason": "constant (variance 0)"} for f in left_const]
        kept -= set(left_const)
    if not kept:
        raise CpDistillerError(
            f"{where(src)}preprocessing dropped every feature ({len(dropped)} dropped); "
            "loosen the configuration (e.g. fewer operations)."
        )
    return cur.subset(features=[f for f in cur.features if f in kept])


def _scale_step(cur: Profiles, config: PreprocessConfig, report: PreprocessReport, warn: Callable[[str], None],
                zscore_params: tuple[Sequence[float] | None, Sequence[float] | None] | None) -> Profiles:
    """:func:`clip_outliers` and :func:`zscore` in place on ``cur``'s matrix (the caller owns it)."""
    if config.clip is not None:
        cur, report.n_clipped_values = clip_outliers(cur, config.clip, copy=False, return_count=True)
        if report.n_clipped_values > 0.01 * cur.X.size:
            warn(f"clipping to ±{config.clip:g} changed {report.n_clipped_values / cur.X.size:.1%} of all values; "
                 "are the profiles normalised? (clip=None disables clipping)")
    if config.zscore:
        mean = std = None
        if zscore_params is not None:
            mean, std = zscore_params
            if mean is None or std is None:
                raise CpDistillerError("this preprocessing report has no z-score parameters to apply.")
        cur, fitted_mean, fitted_std = zscore(cur, mean, std, copy=False)
        report.zscore_mean, report.zscore_std = fitted_mean.tolist(), fitted_std.tolist()
    return cur


def _stack_depth() -> int:
    """How many frames are above the caller's (so that warnings from nested steps point at one place)."""
    frame, n = sys._getframe(1), 0
    while frame is not None:
        frame, n = frame.f_back, n + 1
    return n


def _constant_features(p: Profiles) -> list[str]:
    if p.n_wells == 0:
        return []
    X = p.X
    const = (X == X[0]).all(axis=0)
    return [f for f, c in zip(p.features, const) if c]


def _handle_incomplete_rows(cur: Profiles, config: PreprocessConfig, report: PreprocessReport, warn) -> Profiles:
    bad = ~np.isfinite(cur.X)
    rows = np.flatnonzero(bad.any(axis=1))
    if len(rows) == 0:
        return cur
    names = np.asarray(cur.features, dtype=object)
    if config.nan_rows == "zero":
        X = cur.X.copy()
        X[bad] = 0.0
        report.n_imputed_values = int(bad.sum())
        warn(f"{int(bad.sum())} missing value(s) in {len(rows)} well(s) set to 0 (the control median) "
             f"({example_rows(cur.meta.index[rows])}).")
        return cur.with_features(X, cur.features)
    for r in rows:
        feats = names[bad[r]].tolist()
        report.dropped_rows.append({
            "row": _json_scalar(cur.meta.index[r]), "position": int(r), "plate": str(cur.plate[r]),
            "well": str(cur.well[r]), "step": "nan_rows",
            "reason": f"missing value(s) in {len(feats)} kept feature(s): {example_values(feats, 3)}",
        })
    warn(f"dropped {len(rows)} well(s) with missing values in kept features ({example_rows(cur.meta.index[rows])}); "
         "set nan_rows=\"zero\" to keep them.")
    keep = np.ones(cur.n_wells, dtype=bool)
    keep[rows] = False
    if not keep.any():
        raise CpDistillerError(f"{where(cur.source or None)}every well has missing values; nothing left to preprocess.")
    return cur.subset(rows=keep)


def _json_scalar(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    return v if isinstance(v, (int, float, str)) else str(v)


def looks_normalized(profiles: Profiles, sample: int = 5000, seed: int = 0) -> str | None:
    """A sentence when the features already look normalised, else None.

    Normalised profiles (pycytominer's normalised or feature-selected outputs) have every feature
    centred near 0 relative to its spread, and spreads on one common scale. Raw CellProfiler features
    sit far from 0 relative to their spread (an area of 900 ± 150, an intensity of 0.12 ± 0.02) on
    scales spanning orders of magnitude. Judged on up to ``sample`` wells and every feature."""
    X = profiles.X
    if X.shape[0] > sample:
        X = X[np.sort(np.random.default_rng(seed).choice(X.shape[0], sample, replace=False))]
    X = np.asarray(X, dtype=np.float64)
    with np.errstate(all="ignore"):
        med = np.nanmedian(X, axis=0)
        spread = 1.4826 * np.nanmedian(np.abs(X - med), axis=0)
    ok = np.isfinite(med) & np.isfinite(spread) & (spread > 0)
    if ok.sum() < 5:
        return None
    centred = float(np.mean(np.abs(med[ok]) <= 1.5 * spread[ok]))
    lo, hi = np.percentile(spread[ok], [10, 90])
    if centred < 0.9 or hi > 20 * lo:
        return None
    return (f"these profiles look already normalised: {centred:.0%} of the features are centred near 0 and "
            "their spreads share one scale. Normalising them again changes little but clips their tails; "
            "consider turning preprocessing off.")



@dataclass
class NegconTechnicalModel:
    """Additive technical effects fitted on the negative controls (:func:`fit_negcon_technical`)."""

    coef: np.ndarray                     # levels (all effects, stacked) x features
    codes: np.ndarray                    # wells x effects: each well's row of ``coef`` (-1: level without controls)
    levels_without_controls: dict[str, int]
    levels: dict[str, list[str]] = field(default_factory=dict)  # effect -> levels with controls, in ``coef`` order

    def effects(self, rows: slice = slice(None)) -> np.ndarray:
        """The effects of the wells ``rows`` (the sum of their levels' coefficients)."""
        codes = self.codes[rows]
        out = np.zeros((len(codes), self.coef.shape[1]), dtype=self.coef.dtype)
        for j in range(codes.shape[1]):
            has = codes[:, j] >= 0
            out[has] += self.coef[codes[has, j]]
        return out

    def corrected(self, X: np.ndarray) -> CorrectedRows:
        """``X`` minus the effects, computed a block of rows at a time when read."""
        return CorrectedRows(X, self)

    def subtract_from(self, X: np.ndarray, chunk: int = 8192) -> np.ndarray:
        """``X`` minus the effects, in place, a block of rows at a time (``X`` must be writable)."""
        for s in range(0, X.shape[0], chunk):
            X[s:s + chunk] -= self.effects(slice(s, s + chunk)).astype(X.dtype, copy=False)
        return X

    def restrict(self, effects: Sequence[str]) -> NegconTechnicalModel:
        """The same fit keeping only ``effects``' coefficients: the others are not removed (their levels
        were fitted alongside, so the kept coefficients are adjusted for them)."""
        rows, columns, offset = [], [], 0
        for j, (effect, known) in enumerate(self.levels.items()):
            if effect in effects:
                rows.append(np.arange(offset, offset + len(known)))
                columns.append(j)
            offset += len(known)
        keep = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
        remap = np.full(len(self.coef), -1, dtype=np.int64)
        remap[keep] = np.arange(len(keep))
        codes = self.codes[:, columns]
        codes = np.where(codes >= 0, remap[np.maximum(codes, 0)], -1)
        return NegconTechnicalModel(self.coef[keep], codes,
                                    {e: k for e, k in self.levels_without_controls.items() if e in effects},
                                    {e: v for e, v in self.levels.items() if e in effects})

    def for_wells(self, labels: Mapping[str, np.ndarray]) -> tuple[NegconTechnicalModel, dict[str, int]]:
        """The same coefficients for other wells, given their levels (effect -> one level per well), and
        per effect the number of those wells at a level the controls did not cover (they keep its effect)."""
        codes, offset, unseen = [], 0, {}
        for effect, known in self.levels.items():
            lab = _level_strings(labels[effect])
            code = _codes_in(lab, np.asarray(known, dtype=str), offset)
            codes.append(code)
            unseen[effect] = int((code < 0).sum())
            offset += len(known)
        wells = len(next(iter(labels.values()))) if labels else 0
        codes_arr = np.column_stack(codes).astype(np.int64) if codes else np.zeros((wells, 0), dtype=np.int64)
        return NegconTechnicalModel(self.coef, codes_arr, self.levels_without_controls, self.levels), unseen


def _level_strings(labels: np.ndarray) -> np.ndarray:
    return pd.Series(np.asarray(labels, dtype=object)).astype("string").fillna("<NA>").to_numpy(dtype=str)


def _codes_in(lab: np.ndarray, levels: np.ndarray, offset: int) -> np.ndarray:
    """Each well's row of ``coef``: ``offset`` + its position in the sorted ``levels``, or -1 if absent."""
    if not len(levels):
        return np.full(len(lab), -1, dtype=np.int64)
    pos = np.minimum(np.searchsorted(levels, lab), len(levels) - 1)
    return np.where(levels[pos] == lab, offset + pos, -1)


class CorrectedRows:
    """``X - model.effects()`` read by row slices, without a second wells x features matrix.

    It has ``shape``, ``ndim`` and ``dtype``; ``rows[a:b]`` is an array; ``np.asarray`` makes the whole copy.
    """

    def __init__(self, X: np.ndarray, model: NegconTechnicalModel) -> None:
        if X.shape[0] != model.codes.shape[0]:
            raise ValueError(f"{X.shape[0]} wells, but the model was fitted on {model.codes.shape[0]}")
        self.X, self.model = X, model
        self.shape, self.ndim = X.shape, X.ndim
        self.dtype = np.result_type(X.dtype, model.coef.dtype)

    def __len__(self) -> int:
        return int(self.shape[0])

    def __getitem__(self, rows: slice) -> np.ndarray:
        if not isinstance(rows, slice) or rows.step not in (None, 1):
            raise TypeError("CorrectedRows is read by contiguous row slices")
        return self.X[rows] - self.model.effects(rows)

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        out = self.model.subtract_from(np.array(self.X, dtype=self.dtype))  # one copy, effects a block at a time
        return out if dtype is None else out.astype(dtype, copy=False)


def fit_negcon_technical(X: np.ndarray, labels: Mapping[str, np.ndarray], negative_mask: np.ndarray,
                         alpha: float = 1.0) -> NegconTechnicalModel:
    """Fit additive technical effects on the negative controls.

    A ridge regression of the controls' features on one-hot technical levels (batch, row, column...)
    with an intercept; a well's effect is the sum of its levels' coefficients (the intercept is not
    part of it). Levels without any negative control get no effect.

    Parameters
    ----------
    X
        Features, wells x features.
    labels
        Effect name -> one level per well.
    negative_mask
        Boolean per well: negative control.
    alpha
        Ridge penalty.

    Returns
    -------
    NegconTechnicalModel
        Coefficients in ``X``'s precision (at least float32) and each well's levels.
    """
    from sklearn.linear_model import Ridge

    neg = np.asarray(negative_mask, dtype=bool)
    if neg.sum() < 3:
        raise CpDistillerError("the negative-control technical model needs 3+ negative-control wells.")
    codes, unseen, n_levels, known = [], {}, 0, {}
    for effect, lab in labels.items():
        lab = _level_strings(lab)
        levels = np.unique(lab[neg])
        codes.append(_codes_in(lab, levels, n_levels))
        unseen[effect] = int(len(np.unique(lab)) - len(levels))
        known[effect] = levels.tolist()
        n_levels += len(levels)
    codes_arr = np.column_stack(codes).astype(np.int64)
    D = np.zeros((int(neg.sum()), n_levels))
    for j in range(codes_arr.shape[1]):
        D[np.arange(D.shape[0]), codes_arr[neg, j]] = 1.0
    dtype = np.result_type(X.dtype, np.float32)
    coef = Ridge(alpha=alpha).fit(D, X[neg]).coef_.T.astype(dtype)
    return NegconTechnicalModel(coef=coef, codes=codes_arr, levels_without_controls=unseen, levels=known)


def negcon_technical_effects(X: np.ndarray, labels: Mapping[str, np.ndarray], negative_mask: np.ndarray,
                             alpha: float = 1.0) -> tuple[np.ndarray, dict[str, int]]:
    """Every well's additive technical effects (:func:`fit_negcon_technical`) and, per effect, the number of
    levels without a negative control (their wells keep that effect)."""
    model = fit_negcon_technical(X, labels, negative_mask, alpha)
    return model.effects(), model.levels_without_controls
