"""Per-well values laid out on plates, per-row/column profiles and variance explained by a label.

These are the numbers behind the dashboard's plate maps (and usable from reports): a value per well
(a feature, a principal component, an embedding dimension, the distance to the plate's negative-control
centroid, or a metadata column such as the cell count), the (rows x columns) grid of one plate for any
plate geometry, the mean and spread of the value along rows and columns (where gradients show), and
the fraction of variance of the top principal components explained by batch / plate / row / column.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from .errors import CpDistillerError
from .layout import row_letters
from .profiles import Profiles

VALUE_KINDS = ("feature", "pc", "dimension", "control_distance", "metadata")
EFFECT_ORDER = ("batch", "plate", "row", "column")


def numeric_metadata_columns(profiles: Profiles) -> list[str]:
    """Numeric metadata columns that vary (candidates for 'cell count' and similar), count-like first."""
    cols = []
    for c in profiles.meta.columns:
        s = pd.to_numeric(profiles.meta[c], errors="coerce")
        if s.notna().mean() >= 0.5 and s.nunique(dropna=True) > 1:
            cols.append(str(c))
    return sorted(cols, key=lambda c: (("count" not in c.lower()), cols.index(c)))


def well_values(profiles: Profiles, kind: str, which: str | int | None = None, seed: int = 0) -> np.ndarray:
    """One float per well.

    kind: ``feature`` (``which`` = feature name), ``dimension`` (same, for an embedding's ``cpd_k``),
    ``pc`` (``which`` = 0-based principal component of ``X``), ``control_distance`` (Euclidean distance
    of each well to the centroid of its plate's negative controls, NaN on plates without any) or
    ``metadata`` (``which`` = a numeric metadata column, e.g. a cell count).
    """
    if kind in ("feature", "dimension"):
        if which not in profiles.features:
            raise CpDistillerError(f"unknown {kind} {which!r}; pick one of {profiles.features[:5]}…")
        return profiles.X[:, profiles.features.index(which)].astype(np.float64)
    if kind == "pc":
        from .reduce import pca

        k = int(which or 0)
        scores, _ = pca(profiles.X, k + 1, seed=seed)
        if k >= scores.shape[1]:
            raise CpDistillerError(f"only {scores.shape[1]} principal components exist (asked for PC{k + 1}).")
        return scores[:, k].astype(np.float64)
    if kind == "control_distance":
        return control_distance(profiles)
    if kind == "metadata":
        if which not in profiles.meta.columns:
            raise CpDistillerError(f"no metadata column {which!r}.")
        values = pd.to_numeric(profiles.meta[which], errors="coerce").to_numpy(dtype=np.float64)
        if np.isnan(values).all():
            raise CpDistillerError(f"metadata column {which!r} holds no numbers.")
        return values
    raise CpDistillerError(f"unknown value kind {kind!r}; use one of {list(VALUE_KINDS)}.")


def control_distance(profiles: Profiles) -> np.ndarray:
    """Distance of every well to the centroid of its own plate's negative controls."""
    neg = profiles.negative_mask
    if not neg.any():
        raise CpDistillerError("no negative controls: set the 'control' role and its negative values "
                               "to map distances to the control centroid.")
    out = np.full(profiles.n_wells, np.nan)
    X = profiles.X.astype(np.float64)
    for plate in pd.unique(profiles.plate):
        on = profiles.plate == plate
        ref = on & neg
        if not ref.any():
            continue
        centroid = np.nanmean(X[ref], axis=0)
        out[on] = np.sqrt(np.nansum((X[on] - centroid) ** 2, axis=1))
    return out


def plate_grid(profiles: Profiles, values: np.ndarray, plate: str) -> np.ndarray:
    """(n_rows x n_cols) array of one plate's values (mean of duplicate wells), NaN where no well."""
    geo = profiles.geometry
    on = np.flatnonzero(profiles.plate == str(plate))
    if not len(on):
        raise CpDistillerError(f"no plate {plate!r}.")
    sums = np.zeros((geo.n_rows, geo.n_cols))
    counts = np.zeros((geo.n_rows, geo.n_cols))
    v = np.asarray(values, dtype=np.float64)[on]
    ok = np.isfinite(v)
    np.add.at(sums, (profiles.row[on][ok], profiles.col[on][ok]), v[ok])
    np.add.at(counts, (profiles.row[on][ok], profiles.col[on][ok]), 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / counts, np.nan)


def layout_grid(profiles: Profiles, plate: str) -> np.ndarray:
    """(n_rows x n_cols) object array of control status ('negative'/'positive'/'treatment', '' if empty)."""
    geo = profiles.geometry
    grid = np.full((geo.n_rows, geo.n_cols), "", dtype=object)
    on = profiles.plate == str(plate)
    grid[profiles.row[on], profiles.col[on]] = profiles.control[on]
    return grid


def position_profile(profiles: Profiles, values: np.ndarray, axis: str, by: str | None = None) -> pd.DataFrame:
    """Mean, std and count of ``values`` per row (``axis='row'``) or column, optionally per group.

    Columns: position (0-based), label ('A'/'1'), group, mean, std, sem, n. ``by`` is None, 'plate'
    or 'batch'. Non-finite values are ignored.
    """
    if axis not in ("row", "column"):
        raise CpDistillerError(f"axis must be 'row' or 'column' (got {axis!r}).")
    pos = profiles.row if axis == "row" else profiles.col
    group = np.full(profiles.n_wells, "all", dtype=object) if by is None else np.asarray(profiles.labels(by), object)
    df = pd.DataFrame({"position": pos, "group": group.astype(str), "value": np.asarray(values, np.float64)})
    df = df[np.isfinite(df["value"])]
    out = (df.groupby(["group", "position"], sort=True)["value"]
           .agg(mean="mean", std="std", n="count").reset_index())
    out["std"] = out["std"].fillna(0.0)
    out["sem"] = out["std"] / np.sqrt(out["n"].clip(lower=1))
    out["label"] = [row_letters(int(p)) if axis == "row" else str(int(p) + 1) for p in out["position"]]
    return out[["group", "position", "label", "mean", "std", "sem", "n"]]


def gradient_strength(profile: pd.DataFrame) -> float:
    """Slope-free gradient summary: std of the per-position means divided by the mean within-position std."""
    within = float(np.nanmean(profile["std"])) if len(profile) else np.nan
    between = float(np.nanstd(profile["mean"])) if len(profile) else np.nan
    return between / within if within and np.isfinite(within) and within > 0 else np.nan


def variance_explained(profiles: Profiles, label: str | np.ndarray, n_pcs: int = 30,
                       wells: str = "all", seed: int = 0) -> float:
    """Fraction of the variance of the top ``n_pcs`` PCs explained by a label (between-group SS / total SS).

    ``label``: an effect ('batch', 'plate', 'row', 'column') or an array of labels. ``wells``: 'all' or
    'negative' (negative controls only, where technical effects are not confounded with treatments).
    """
    labels = np.asarray(profiles.labels(label) if isinstance(label, str) else label).astype(str)
    mask, scores = _top_pcs(profiles, n_pcs, wells, seed)
    return _between_share(scores, labels[mask])


def _top_pcs(profiles: Profiles, n_pcs: int, wells: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(mask of the wells used, their centred top-PC scores in float64)."""
    from .reduce import pca

    mask = np.ones(profiles.n_wells, bool)
    if wells == "negative":
        mask = profiles.negative_mask
        if mask.sum() < 3:
            raise CpDistillerError("fewer than 3 negative controls: set the control role or use all wells.")
    elif wells != "all":
        raise CpDistillerError(f"wells must be 'all' or 'negative' (got {wells!r}).")
    scores, _ = pca(profiles.X if wells == "all" else profiles.X[mask], n_pcs, seed=seed)  # no copy of all
    return mask, scores.astype(np.float64) - scores.mean(axis=0)


def _between_share(scores: np.ndarray, labels: np.ndarray) -> float:
    """Between-group sum of squares / total sum of squares of centred ``scores`` grouped by ``labels``."""
    total = float((scores ** 2).sum())
    if total <= 0:
        return 0.0
    codes, uniq = pd.factorize(labels)
    if len(uniq) < 2:
        return 0.0
    counts = np.bincount(codes).astype(np.float64)
    means = np.zeros((len(uniq), scores.shape[1]))
    np.add.at(means, codes, scores)
    means /= counts[:, None]
    between = float((counts[:, None] * means ** 2).sum())
    return between / total


def variance_table(sides: dict[str, Profiles], effects: Sequence[str] = EFFECT_ORDER, n_pcs: int = 30,
                   wells: str = "all") -> pd.DataFrame:
    """Variance explained per effect for each side ('uncorrected', 'cpDistiller', …): long table.

    Effects a side cannot label (no batch role) or with a single level are skipped. The top PCs are
    computed once per side (the PCA is the cost; every effect reuses it).
    """
    rows = []
    for side, prof in sides.items():
        labelled = {}
        for effect in effects:
            try:
                labels = np.asarray(prof.labels(effect)).astype(str)
            except CpDistillerError:
                continue
            sub = labels[prof.negative_mask] if wells == "negative" else labels
            if len(np.unique(sub)) >= 2:
                labelled[effect] = labels
        if not labelled:
            continue
        mask, scores = _top_pcs(prof, n_pcs, wells)
        rows += [{"side": side, "effect": effect, "variance_explained": _between_share(scores, labels[mask])}
                 for effect, labels in labelled.items()]
    return pd.DataFrame(rows, columns=["side", "effect", "variance_explained"])


def default_wells(profiles: Profiles, min_controls: int = 3, threshold: float = 0.5) -> tuple[str, str]:
    """Which wells plate maps should show by default, and why, in one sentence.

    ``"negative"`` when the layout ties treatments to positions (``layout.position_confounding`` of
    row or column >= ``threshold`` among treated wells) and there are at least ``min_controls``
    negative controls: there, a row or column difference among all wells is partly biology, and only
    the controls show the technical effect. ``"all"`` otherwise."""
    from .layout import position_ties, same_map_share, tied_effects

    neg = profiles.negative_mask
    if int(neg.sum()) < min_controls:
        return "all", "all wells: fewer than 3 negative controls to look at on their own."
    tied = tied_effects(position_ties(profiles), threshold)
    same_map = same_map_share(profiles.plate, profiles.well, profiles.perturbation, ~neg)
    if tied:
        which = " and ".join(f"{a} ({v:.0%} of treated wells)" for a, v in tied.items())
        reason = f"the layout ties treatments to their {which}"
    elif np.isfinite(same_map) and same_map >= 0.9:
        reason = f"every plate uses the same plate map ({same_map:.0%} of positions hold the same treatment)"
    else:
        return "all", "all wells: treatments move between positions from plate to plate."
    return "negative", (f"negative controls: {reason}, so among all wells a position difference is partly "
                        "biology; the controls show the technical effect alone.")


def restrict_values(profiles: Profiles, values: np.ndarray, wells: str) -> np.ndarray:
    """``values`` with every well outside ``wells`` ('all' or 'negative') set to NaN (left blank on maps)."""
    if wells == "all":
        return values
    if wells != "negative":
        raise CpDistillerError(f"wells must be 'all' or 'negative' (got {wells!r}).")
    return np.where(profiles.negative_mask, np.asarray(values, np.float64), np.nan)


def align(before: Profiles, after: Profiles) -> tuple[Profiles, Profiles]:
    """Match two profiles of the same wells (e.g. input vs embedding read back from disk).

    Same length and the same (plate, well) in the same order: returned as they are. Otherwise wells are
    matched on (plate, well), which a profiles table holds once each.
    """
    same_order = (before.n_wells == after.n_wells and np.array_equal(before.plate, after.plate)
                  and np.array_equal(before.well, after.well))
    if same_order:
        return before, after
    kb = pd.MultiIndex.from_arrays([before.plate, before.well])
    ka = pd.MultiIndex.from_arrays([after.plate, after.well])
    if kb.has_duplicates or ka.has_duplicates:
        raise CpDistillerError("cannot match wells before and after correction: duplicated (plate, well) pairs.")
    shared = kb.intersection(ka, sort=False)
    if not len(shared):
        raise CpDistillerError("the corrected embedding shares no wells with the input profiles.")
    return before.subset(kb.get_indexer(shared)), after.subset(ka.get_indexer(shared))
