"""Plate geometry and well names: parse 'A01', 'A1', 'a01', 'r01c01' or separate row/column values."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .errors import CpDistillerError, example_cells, example_rows, where

if TYPE_CHECKING:
    from .profiles import Profiles

TIED_SHARE = 0.5  # position_confounding at or above which a position effect is tied to the treatments
COVARIATE_TIED_SHARE = 0.8  # share of treated wells whose covariate value is their level's (covariate_ties)


@dataclass(frozen=True)
class PlateGeometry:
    """A plate format: number of rows and columns."""

    n_wells: int
    n_rows: int
    n_cols: int

    def row_letter(self, row: int) -> str:
        """0-based row index -> letter(s): 0 -> 'A', 25 -> 'Z', 26 -> 'AA' (1536-well plates)."""
        return row_letters(row)

    def well_name(self, row: int, col: int) -> str:
        """0-based (row, col) -> zero-padded well name 'A01'."""
        return f"{row_letters(row)}{col + 1:02d}"


GEOMETRIES = (PlateGeometry(96, 8, 12), PlateGeometry(384, 16, 24), PlateGeometry(1536, 32, 48))

_LETTER_WELL = re.compile(r"^\s*([A-Za-z]{1,2})\s*0*(\d{1,3})\s*$")
_RC_WELL = re.compile(r"^\s*[Rr]0*(\d{1,3})\s*[Cc]0*(\d{1,3})\s*$")


def row_letters(row: int) -> str:
    """0-based row index -> 'A'…'Z', 'AA'…'AF'."""
    if row < 26:
        return chr(ord("A") + row)
    return "A" + chr(ord("A") + row - 26)


def _letters_to_row(letters: str) -> int:
    letters = letters.upper()
    if len(letters) == 1:
        return ord(letters) - ord("A")
    if letters[0] != "A":
        return -1
    return 26 + ord(letters[1]) - ord("A")


def parse_wells(
    wells: pd.Series, source: str | None = None, column: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Parse well names into 0-based (row, col) integer arrays.

    Accepts 'A01', 'A1', 'a01', 'AF48' and Phenix-style 'r01c01'. Raises CpDistillerError naming
    the file, the column and example rows for anything else.
    """
    text = wells.astype("string").fillna("")
    uniq = pd.unique(text.to_numpy())
    lookup: dict[str, tuple[int, int]] = {}
    for w in uniq:
        m = _LETTER_WELL.match(w)
        if m:
            lookup[w] = (_letters_to_row(m.group(1)), int(m.group(2)) - 1)
            continue
        m = _RC_WELL.match(w)
        if m:
            lookup[w] = (int(m.group(1)) - 1, int(m.group(2)) - 1)
    bad = ~text.isin(list(lookup)).to_numpy()
    if not bad.any():
        pairs = np.array([lookup[w] for w in text.to_numpy()], dtype=np.int64).reshape(-1, 2)
        bad = (pairs < 0).any(axis=1)
        if not bad.any():
            return pairs[:, 0], pairs[:, 1]
    idx = wells.index[bad]
    raise CpDistillerError(
        f"{where(source, column)}cannot parse well names {example_cells(wells[bad])} "
        f"({example_rows(idx)}); expected names like 'A01', 'A1' or 'r01c01'."
    )


def infer_geometry(
    rows: np.ndarray, cols: np.ndarray, declared: int | None = None, source: str | None = None,
    index: pd.Index | None = None, column: str | None = None,
) -> PlateGeometry:
    """The smallest standard plate (96/384/1536) holding every well, or the declared one (checked)."""
    max_row, max_col = int(rows.max(initial=0)), int(cols.max(initial=0))
    if declared is not None:
        geo = next((g for g in GEOMETRIES if g.n_wells == declared), None)
        if geo is None:
            raise CpDistillerError(f"{where(source)}unknown plate format {declared}; use 96, 384 or 1536.")
        candidates = [geo]
    else:
        candidates = list(GEOMETRIES)
    for geo in candidates:
        if max_row < geo.n_rows and max_col < geo.n_cols and rows.min(initial=0) >= 0 and cols.min(initial=0) >= 0:
            return geo
    geo = candidates[-1]
    bad = (rows < 0) | (rows >= geo.n_rows) | (cols < 0) | (cols >= geo.n_cols)
    at = f" ({example_rows(index[bad])})" if index is not None and bad.any() else ""
    raise CpDistillerError(
        f"{where(source, column)}wells outside a {geo.n_wells}-well plate ({geo.n_rows} rows x {geo.n_cols} columns): "
        f"found row {row_letters(max_row)} / column {max_col + 1}{at}."
    )


def check_in_geometry(
    rows: np.ndarray, cols: np.ndarray, geometry: PlateGeometry, index: pd.Index, source: str | None = None,
    column: str | None = None,
) -> None:
    """Raise if any well falls outside the plate."""
    bad = (rows < 0) | (rows >= geometry.n_rows) | (cols < 0) | (cols >= geometry.n_cols)
    if bad.any():
        raise CpDistillerError(
            f"{where(source, column)}{int(bad.sum())} wells outside a {geometry.n_wells}-well plate "
            f"({example_rows(index[bad])})."
        )


def well_names(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """0-based rows/cols -> standard zero-padded names ('A01')."""
    return np.array([f"{row_letters(int(r))}{int(c) + 1:02d}" for r, c in zip(rows, cols)], dtype=object)


def position_confounding(perturbation: np.ndarray, level: np.ndarray, include: np.ndarray | None = None) -> float:
    """Share of replicated wells whose perturbation sits at a single level of a position effect.

    For each perturbation with 2+ wells (among ``include``, e.g. the non-control wells), its wells
    are *confounded* when they all share one ``level`` (one row, or one column). The result is the
    fraction of those wells that are confounded: ~1 when every plate uses the same map (position
    predicts the perturbation, so removing position information removes biology too), ~0 with
    shuffled layouts. NaN when no perturbation has replicates.
    """
    frame = pd.DataFrame({"p": np.asarray(perturbation, dtype=object), "l": np.asarray(level, dtype=object)})
    if include is not None:
        frame = frame[np.asarray(include, dtype=bool)]
    groups = frame.groupby("p", sort=False)["l"]
    size, distinct = groups.size(), groups.nunique(dropna=False)
    replicated = size >= 2
    if not replicated.any():
        return float("nan")
    return float(size[replicated & (distinct == 1)].sum() / size[replicated].sum())


def position_ties(profiles: Profiles, effects: Sequence[str] = ("row", "column")) -> dict[str, float | None]:
    """``position_confounding`` among the treated wells for each of ``effects`` that is a row or column.

    None where it says nothing: no treatment has replicates, or there is no perturbation column (wells
    are then named by their position, so every "treatment" would look tied to its row).
    """
    out: dict[str, float | None] = {}
    for e in effects:
        if e not in ("row", "column"):
            continue
        if not profiles.roles.perturbation:
            out[e] = None
            continue
        v = position_confounding(profiles.perturbation, profiles.labels(e), ~profiles.negative_mask)
        out[e] = None if np.isnan(v) else round(v, 3)
    return out


@dataclass(frozen=True)
class CovariateTie:
    """A position effect whose level sets a treatment covariate, e.g. each column one dose."""

    effect: str
    column: str    # the metadata column the level sets
    share: float   # treated wells whose value is the most common one of their level
    values: int    # distinct values the levels set


def covariate_ties(profiles: Profiles, effects: Sequence[str] = ("row", "column"),
                   threshold: float = COVARIATE_TIED_SHARE) -> dict[str, CovariateTie]:
    """Row or column effects that set a covariate of the treatments (a dose series laid out by column).

    A metadata column that no role uses is set by the level of ``effect`` when, among the treated wells,
    at least ``threshold`` of them hold their level's most common value and the levels set two or more
    values; it is a *covariate* of the treatments when it changes within most replicated perturbations
    (a compound at six doses) and is the same for every negative control (empty, or the vehicle's 0).
    Columns derived from the well itself vary among the controls and are not counted. Correcting such
    an effect removes the covariate's biology (the dose response) along with the technical shift.
    """
    from .profiles import TREATMENT  # profiles imports this module

    treated = profiles.control == TREATMENT
    if not profiles.roles.perturbation or treated.sum() < 4:
        return {}
    negative = profiles.negative_mask
    perturbation = np.asarray(profiles.perturbation, dtype=object)[treated]
    replicated = pd.Series(perturbation).map(pd.Series(perturbation).value_counts()).to_numpy() >= 2
    levels = {e: np.asarray(profiles.labels(e), dtype=object)[treated] for e in effects if e in ("row", "column")}
    out: dict[str, CovariateTie] = {}
    for column in (c for c in profiles.meta.columns if c not in profiles.roles.columns()):
        values = profiles.meta[column].astype("string").fillna("<NA>").to_numpy(dtype=object)
        for effect, level in levels.items():
            tie = _covariate_tie(effect, column, values[treated], values[negative], level, perturbation,
                                 replicated)
            if tie is not None and tie.share >= threshold and tie.share > getattr(out.get(effect), "share", 0):
                out[effect] = tie
    return out


def _covariate_tie(effect: str, column: str, treated_values: np.ndarray, control_values: np.ndarray,
                   level: np.ndarray, perturbation: np.ndarray, replicated: np.ndarray) -> CovariateTie | None:
    distinct = len(set(treated_values))
    if distinct < 2 or distinct > len(treated_values) // 2 or len(set(control_values)) > 1:
        return None
    frame = pd.DataFrame({"level": level, "value": treated_values})
    modes = frame.groupby("level", sort=False)["value"].agg(lambda v: v.value_counts().index[0])
    share = float((frame["value"].to_numpy() == frame["level"].map(modes).to_numpy()).mean())
    if not replicated.any() or modes.nunique() < 2:
        return None
    per_perturbation = pd.DataFrame({"p": perturbation[replicated], "value": treated_values[replicated]})
    if (per_perturbation.groupby("p", sort=False)["value"].nunique() > 1).mean() < 0.5:
        return None  # a property of the perturbation (its target, its class), not a covariate
    return CovariateTie(effect, column, round(share, 3), int(modes.nunique()))


def tied_effects(ties: Mapping[str, float | None], threshold: float = TIED_SHARE) -> dict[str, float]:
    """The position effects of ``ties`` (``position_ties``) that hold most replicated treatments in one level."""
    return {e: v for e, v in ties.items() if v is not None and v >= threshold}


def same_map_share(plate: np.ndarray, well: np.ndarray, perturbation: np.ndarray,
                   include: np.ndarray | None = None) -> float:
    """Share of well positions (used on 2+ plates, among ``include``) that hold the same perturbation on
    every plate: ~1 when every plate uses one plate map, ~0 with shuffled maps. NaN with one plate."""
    frame = pd.DataFrame({"plate": np.asarray(plate, dtype=object), "well": np.asarray(well, dtype=object),
                          "p": np.asarray(perturbation, dtype=object)})
    if include is not None:
        frame = frame[np.asarray(include, dtype=bool)]
    groups = frame.groupby("well", sort=False)
    plates, perts = groups["plate"].nunique(), groups["p"].nunique(dropna=False)
    shared = plates >= 2
    if not shared.any():
        return float("nan")
    return float((perts[shared] == 1).mean())
