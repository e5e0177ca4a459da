"""Active-perturbation screen (as in the cpDistiller paper).

Each perturbation's consensus profile is compared with the centroid of the negative-control wells.
The threshold is the 95th percentile of the negative controls' own distances to that centroid;
perturbations above it are active, and the top-N most divergent are kept for clustering.

The controls' own distances are taken at the level the perturbations are compared at
(``null="consensus"``, default): consensus profiles of random sets of control wells, as many as a
perturbation's median replicate count, aggregated the same way. ``null="wells"`` uses single control
wells, which are noisier than any consensus and so set a threshold few perturbations pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import CpDistillerError
from ..profiles import NEGATIVE, Profiles
from .consensus import Consensus

METRICS = ("euclidean", "cosine")


def distances_to(X: np.ndarray, centre: np.ndarray, metric: str = "euclidean") -> np.ndarray:
    """Distance of each row of ``X`` to ``centre`` (Euclidean or cosine distance 1 - cos)."""
    if metric not in METRICS:
        raise CpDistillerError(f"unknown distance {metric!r}; use one of {METRICS}.")
    X = np.asarray(X, dtype=np.float64)
    c = np.asarray(centre, dtype=np.float64)
    if metric == "euclidean":
        return np.sqrt(((X - c) ** 2).sum(axis=1))
    norms = np.linalg.norm(X, axis=1) * np.linalg.norm(c)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = (X @ c) / norms
    return 1.0 - np.nan_to_num(cos, nan=0.0)


@dataclass(frozen=True)
class ActiveScreen:
    """Result of :func:`active_screen`.

    ``table``: one row per (non-control) consensus profile, sorted by decreasing distance, with
    columns perturbation, distance, active, consensus_row (row in the consensus), rank, selected
    (in the top-N active). ``control_distances`` are the negative controls' own distances (of control
    consensus profiles or wells, per ``null``); ``threshold`` their percentile.
    """

    table: pd.DataFrame
    control_distances: np.ndarray
    threshold: float
    metric: str
    percentile: float
    null: str = "consensus"

    @property
    def selected(self) -> pd.DataFrame:
        return self.table[self.table["selected"]]

    @property
    def n_active(self) -> int:
        return int(self.table["active"].sum())


NULLS = ("consensus", "wells")


def control_null(Xneg: np.ndarray, centre: np.ndarray, metric: str, replicates: int, aggregate: str,
                 n_null: int = 1000, seed: int = 0) -> np.ndarray:
    """Distances to ``centre`` of consensus profiles of ``n_null`` random sets of ``replicates`` control wells."""
    n = len(Xneg)
    k = int(max(1, min(replicates, n // 2)))
    rng = np.random.default_rng(seed)
    agg = np.median if aggregate == "median" else np.mean
    sets = np.stack([agg(Xneg[rng.choice(n, size=k, replace=False)], axis=0) for _ in range(n_null)])
    return distances_to(sets, centre, metric)


def active_screen(profiles: Profiles, cons: Consensus, metric: str = "euclidean",
                  percentile: float = 95.0, top_n: int | None = 200, null: str = "consensus",
                  n_null: int = 1000, seed: int = 0) -> ActiveScreen:
    """Screen consensus profiles ``cons`` (made from ``profiles``) against the negative controls.

    ``top_n=None`` keeps every active perturbation; ``null`` chooses the controls' own distances
    (see the module docstring).
    """
    if null not in NULLS:
        raise CpDistillerError(f"unknown null {null!r}; use one of {NULLS}.")
    neg = profiles.negative_mask
    if neg.sum() < 2:
        raise CpDistillerError("the active screen needs at least 2 negative-control wells; "
                               "set the 'control' role and its negative values.")
    if not 0 < percentile < 100:
        raise CpDistillerError(f"percentile must be between 0 and 100, got {percentile}.")
    if list(cons.features) != list(profiles.features):
        raise CpDistillerError("consensus profiles and well profiles have different features.")
    Xneg = profiles.X[neg].astype(np.float64)
    centre = Xneg.mean(axis=0)
    keep = (cons.table["control"] != NEGATIVE).to_numpy()
    sub = cons.subset(keep)
    if null == "wells":
        ctrl_d = distances_to(Xneg, centre, metric)
    else:
        reps = int(np.median(sub.table["n_wells"])) if len(sub) else 1
        ctrl_d = control_null(Xneg, centre, metric, reps, cons.aggregate, n_null, seed)
    threshold = float(np.percentile(ctrl_d, percentile))
    d = distances_to(sub.X, centre, metric)
    table = sub.table.copy()
    table.insert(1, "distance", d)
    table["active"] = d > threshold
    table["consensus_row"] = np.flatnonzero(keep)
    table = table.sort_values("distance", ascending=False, kind="stable").reset_index(drop=True)
    table["rank"] = np.arange(1, len(table) + 1)
    limit = len(table) if top_n is None else int(top_n)
    table["selected"] = table["active"] & (table["rank"] <= limit)
    return ActiveScreen(table, ctrl_d, threshold, metric, float(percentile), null)
