"""Stacking several inputs into one Profiles on their shared features."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import CpDistillerError
from ..profiles import Profiles, Roles
from .common import note
from .formats import file_stem
from .validate import check_duplicates


@dataclass
class CombineReport:
    """What :func:`combine` kept and dropped."""

    sources: list[str]
    wells_per_source: dict[str, int]
    features_per_source: dict[str, int]
    shared_features: int
    dropped: dict[str, list[str]]
    batch_column: str | None = None
    batch_added: bool = False
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def combine(profiles: Sequence[Profiles], batch_from_file: bool = False,
            batch_column: str = "Metadata_Batch", *, notes: list[str] | None = None
            ) -> tuple[Profiles, CombineReport]:
    """Stack several Profiles: shared features only (in the first input's order), metadata columns
    united in order of first appearance. With ``batch_from_file`` and no batch role, adds a batch
    column named after each input's file stem. What was dropped or assumed goes to ``notes`` (a
    read's report), or is warned when it is None."""
    if not profiles:
        raise CpDistillerError("nothing to combine: no profiles given.")
    names = [p.source or f"input {i + 1}" for i, p in enumerate(profiles)]
    if len(set(names)) < len(names):
        names = [f"{n} [{i + 1}]" for i, n in enumerate(names)]
    common = set(profiles[0].features)
    for p in profiles[1:]:
        common &= set(p.features)
    shared = [f for f in profiles[0].features if f in common]
    dropped = {n: [f for f in p.features if f not in common] for n, p in zip(names, profiles)}
    if not shared:
        raise CpDistillerError(f"no feature columns are shared by all inputs ({', '.join(names)}).")
    merged: list[str] = []
    roles = _merge_roles(profiles, names, merged)
    meta = pd.concat([p.meta for p in profiles], ignore_index=True, sort=False)
    n_total = sum(p.n_wells for p in profiles)
    X = np.empty((n_total, len(shared)), dtype=np.result_type(*[p.X.dtype for p in profiles]))
    start = 0
    for p in profiles:
        pos = {f: i for i, f in enumerate(p.features)}
        X[start:start + p.n_wells] = p.X[:, [pos[f] for f in shared]]
        start += p.n_wells
    added = False
    if batch_from_file:
        if roles.batch is None:
            col = batch_column
            while col in meta.columns:
                col += "_file"
            stems = [file_stem(n) for n in names]
            meta[col] = np.repeat(np.array(stems, dtype=object), [p.n_wells for p in profiles])
            roles = dataclasses.replace(roles, batch=col)
            added = True
        else:
            merged.append(f"batch role already set ({roles.batch!r}); --batch-from-file added no column")
    report = CombineReport(
        sources=names, wells_per_source={n: p.n_wells for n, p in zip(names, profiles)},
        features_per_source={n: p.n_features for n, p in zip(names, profiles)},
        shared_features=len(shared), dropped=dropped, batch_column=roles.batch, batch_added=added, notes=merged,
    )
    if any(dropped.values()):
        parts = [f"{len(d)} from {n}" for n, d in dropped.items() if d]
        note(notes, f"kept the {len(shared)} features shared by all {len(profiles)} inputs; dropped "
             + ", ".join(parts) + ".")
    for msg in merged:
        note(notes, msg)
    short = [Path(n).name for n in names]
    source = " + ".join(short[:2]) + (f" + {len(short) - 2} more files" if len(short) > 2 else "")
    out = Profiles(meta=meta, X=X, features=shared, roles=roles, source=source,
                   full_precision=X.dtype == np.float64)
    check_duplicates(out, np.repeat(np.array(names, dtype=object), [p.n_wells for p in profiles]))
    return out, report


def _merge_roles(profiles: Sequence[Profiles], names: Sequence[str], notes: list[str]) -> Roles:
    first = profiles[0].roles
    for key in ("plate", "well", "row", "column"):
        vals = {getattr(p.roles, key) for p in profiles}
        if len(vals) > 1:
            detail = "; ".join(f"{n}: {getattr(p.roles, key)!r}" for n, p in zip(names, profiles))
            raise CpDistillerError(f"the inputs use different {key} columns ({detail}); map them to the same "
                                   "column names first.")
    kw = first.to_dict()
    for key in ("batch", "perturbation", "control", "annotation"):
        vals = [getattr(p.roles, key) for p in profiles if getattr(p.roles, key)]
        if vals:
            kw[key] = vals[0]
            if len(set(vals)) > 1:
                notes.append(f"inputs differ in the {key} column ({sorted(set(vals))}); using {vals[0]!r}")
    same_control = [p for p in profiles if p.roles.control == kw["control"]]
    kw["negative_values"] = list(dict.fromkeys(v for p in same_control for v in p.roles.negative_values))
    kw["positive_values"] = list(dict.fromkeys(v for p in same_control for v in p.roles.positive_values))
    formats = {p.roles.plate_format for p in profiles if p.roles.plate_format}
    kw["plate_format"] = max(formats) if formats else None
    return Roles.from_dict(kw)
