"""Consensus profiles: one row per perturbation (optionally per batch), the mean or median of its wells."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import CpDistillerError
from ..profiles import NEGATIVE, Profiles

AGGREGATES = ("median", "mean")


@dataclass(frozen=True, eq=False)
class Consensus:
    """Perturbation-level profiles.

    ``table`` has one row per consensus profile with columns ``perturbation``, ``control``
    (negative/positive/treatment), ``n_wells``, ``batch`` (when computed per batch) and any kept
    metadata columns (the first value within the group); ``X`` is the matching float32 matrix.
    """

    table: pd.DataFrame
    X: np.ndarray
    features: list[str]
    aggregate: str = "median"

    @property
    def labels(self) -> np.ndarray:
        """Perturbation name per row ('name @ batch' when computed per batch)."""
        if "batch" in self.table:
            return (self.table["perturbation"] + " @ " + self.table["batch"]).to_numpy(dtype=object)
        return self.table["perturbation"].to_numpy(dtype=object)

    @property
    def negative_mask(self) -> np.ndarray:
        return (self.table["control"] == NEGATIVE).to_numpy()

    def __len__(self) -> int:
        return len(self.table)

    def subset(self, rows: np.ndarray | Sequence[int]) -> Consensus:
        """Rows by boolean mask or positions."""
        rows = np.asarray(rows)
        pos = np.flatnonzero(rows) if rows.dtype == bool else rows
        return Consensus(self.table.iloc[pos].reset_index(drop=True), self.X[pos], self.features,
                         self.aggregate)

    def column(self, name: str) -> np.ndarray:
        """A kept metadata column as strings ('' where missing)."""
        if name not in self.table:
            raise CpDistillerError(f"column {name!r} was not kept in the consensus profiles; "
                                   f"available: {list(self.table.columns)}.")
        return self.table[name].astype("string").fillna("").to_numpy(dtype=object)


def select_type(profiles: Profiles, column: str, values: Sequence[str]) -> Profiles:
    """Wells whose ``column`` is one of ``values`` (e.g. one perturbation type), plus negative controls:
    those of the same type when the column labels some (non-targeting guides for CRISPR, DMSO for
    compounds), else all of them."""
    if column not in profiles.meta.columns:
        raise CpDistillerError(f"column {column!r} not found; available: {list(profiles.meta.columns)[:20]}.")
    col = profiles.meta[column].astype("string").fillna("").to_numpy(dtype=object)
    chosen = np.isin(col, [str(v) for v in values])
    neg = profiles.negative_mask
    mask = chosen | (neg & chosen if (neg & chosen).any() else neg)
    if not (mask & ~profiles.negative_mask).any():
        raise CpDistillerError(f"no wells with {column} in {list(values)}; values present: "
                               f"{sorted(set(col))[:10]}.")
    return profiles.subset(mask)


def consensus(profiles: Profiles, aggregate: str = "median", per_batch: bool = False,
              keep: Sequence[str] = (), by: str | None = None) -> Consensus:
    """Aggregate replicate wells into one profile per perturbation (and batch when ``per_batch``).

    Wells are grouped by perturbation label (or the metadata column ``by``, e.g. a gene symbol column
    to pool alleles or guides of one gene) and control status, so a negative control named like a
    treatment never merges with it. ``keep`` names metadata columns to carry along (first value).
    """
    if aggregate not in AGGREGATES:
        raise CpDistillerError(f"unknown aggregate {aggregate!r}; use one of {AGGREGATES}.")
    missing = [c for c in keep if c not in profiles.meta.columns]
    if missing:
        raise CpDistillerError(f"metadata column(s) {missing} not found; available: "
                               f"{list(profiles.meta.columns)[:20]}.")
    if by is not None and by not in profiles.meta.columns:
        raise CpDistillerError(f"column {by!r} not found; available: {list(profiles.meta.columns)[:20]}.")
    label = profiles.perturbation.astype(str)
    if by is not None:
        values = profiles.meta[by].astype("string").to_numpy(dtype=object)
        label = np.where(pd.isna(values) | profiles.negative_mask, label, values.astype(str)).astype(object)
    keys = pd.DataFrame({"perturbation": label, "control": profiles.control})
    if per_batch:
        batch = profiles.batch
        if batch is None:
            raise CpDistillerError("consensus per batch needs a batch column: set the 'batch' role.")
        keys["batch"] = batch.astype(str)
    key_cols = list(keys.columns)
    codes, uniques = pd.MultiIndex.from_frame(keys).factorize()
    n = len(uniques)
    X = profiles.X
    if aggregate == "mean":
        sums = np.zeros((n, X.shape[1]), dtype=np.float64)
        np.add.at(sums, codes, X)
        counts = np.bincount(codes, minlength=n)
        out = (sums / counts[:, None]).astype(np.float32)
    else:
        order = np.argsort(codes, kind="stable")
        bounds = np.flatnonzero(np.diff(codes[order])) + 1
        out = np.vstack([np.median(X[idx], axis=0) for idx in np.split(order, bounds)]).astype(np.float32)
        counts = np.bincount(codes, minlength=n)
    table = pd.DataFrame(list(uniques), columns=key_cols)
    table["n_wells"] = counts
    if keep:
        first = profiles.meta[list(keep)].reset_index(drop=True).groupby(codes, sort=True).first()
        for c in keep:
            table[c] = first[c].to_numpy()
    return Consensus(table, out, list(profiles.features), aggregate)
