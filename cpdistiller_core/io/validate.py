"""Checks of loaded profiles: duplicated wells (an error) and data that can still be used (warnings)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import CpDistillerError, cells_hidden, example_rows, example_values, where
from ..profiles import Profiles


def check_duplicates(profiles: Profiles, origin: np.ndarray | None = None) -> None:
    """Raise when a (plate, well) pair occurs more than once, naming the pairs and rows (and files)."""
    key = pd.DataFrame({"plate": profiles.plate, "well": profiles.well})
    dup = key.duplicated(keep=False).to_numpy()
    if not dup.any():
        return
    first = np.flatnonzero(dup)[0]
    p, w = key.iloc[first]
    same = np.flatnonzero(dup & (key["plate"].to_numpy() == p) & (key["well"].to_numpy() == w))
    files = f"in {', '.join(dict.fromkeys(str(origin[i]) for i in same))}" if origin is not None else ""
    pair = "" if cells_hidden() else f"plate {p!r} well {w!r}"  # server files: rows only, no cell contents
    example = " ".join(part for part in (pair, files, f"({example_rows(profiles.meta.index[same])})") if part)
    n_pairs = int(key[dup].drop_duplicates().shape[0])
    raise CpDistillerError(
        f"{where(profiles.source or None, profiles.roles.well or profiles.roles.row)}{n_pairs} duplicated "
        f"(plate, well) pair(s), e.g. {example}; profiles must have one row per well — aggregate per well first."
    )


def _column_stats(X: np.ndarray, chunk: int = 16384
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per feature: all NaN, finite min and max, any finite, count of infinities; in row chunks, so the
    temporary masks stay a chunk's size whatever the number of wells."""
    d = X.shape[1]
    all_nan = np.ones(d, dtype=bool)
    any_finite = np.zeros(d, dtype=bool)
    lo, hi = np.full(d, np.inf, dtype=X.dtype), np.full(d, -np.inf, dtype=X.dtype)
    n_inf = np.zeros(d, dtype=np.int64)
    for s in range(0, X.shape[0], chunk):
        blk = X[s:s + chunk]
        all_nan &= np.isnan(blk).all(axis=0)
        finite = np.isfinite(blk)
        any_finite |= finite.any(axis=0)
        np.minimum(lo, np.where(finite, blk, np.inf).min(axis=0, initial=np.inf), out=lo)
        np.maximum(hi, np.where(finite, blk, -np.inf).max(axis=0, initial=-np.inf), out=hi)
        n_inf += np.isinf(blk).sum(axis=0)
    return all_nan, lo, hi, any_finite, n_inf


def validate(profiles: Profiles) -> list[str]:
    """Warnings about data that can still be used: bad features, inf values, missing controls, a
    single plate, labels that are all the same. Each message names the file and the column."""
    src = profiles.source or None
    out: list[str] = []
    feats = np.asarray(profiles.features, dtype=object)
    all_nan, lo, hi, any_finite, per = _column_stats(profiles.X)
    if all_nan.any():
        out.append(f"{where(src)}{int(all_nan.sum())} feature(s) are all NaN: {example_values(feats[all_nan])}; "
                   "preprocessing drops them.")
    constant = (lo == hi) & any_finite
    if constant.any():
        out.append(f"{where(src)}{int(constant.sum())} feature(s) are constant: {example_values(feats[constant])}; "
                   "preprocessing drops them.")
    if per.any():
        cols = np.flatnonzero(per)
        order = cols[np.argsort(-per[cols], kind="stable")]
        shown = ", ".join(f"{feats[j]!r}: {int(per[j])}" for j in order[:5])
        more = f" (+{len(cols) - 5} more columns)" if len(cols) > 5 else ""
        out.append(f"{where(src)}{int(per.sum())} infinite value(s) in {len(cols)} feature(s) ({shown}{more}); "
                   "preprocessing treats them as missing.")
    roles = profiles.roles
    if not profiles.negative_mask.any():
        if roles.control:
            out.append(f"{where(src, roles.control)}no negative controls (values {list(roles.negative_values)} "
                       "not found); normalisation and metrics that need controls will use all wells.")
        else:
            out.append(f"{where(src)}no negative controls detected; name them with --control-col/--negative "
                       "(normalisation and metrics that need controls will use all wells).")
    elif profiles.negative_mask.all():
        out.append(f"{where(src, roles.control)}every well is a negative control "
                   f"({list(roles.negative_values)}); check the control column and values.")
    n_plates = len(pd.unique(profiles.plate))
    if n_plates == 1:
        out.append(f"{where(src, roles.plate)}a single plate ({profiles.plate[0]!r}); plate effects cannot be "
                   "estimated, only row/column effects.")
    for role in ("batch", "perturbation", "annotation"):
        col = getattr(roles, role)
        if col and profiles.meta[col].nunique(dropna=False) == 1:
            out.append(f"{where(src, col)}the {role} column holds a single value "
                       f"({example_values(profiles.meta[col].astype(str)[:1])}) for every well.")
    return out
