"""`cpdistiller info FILE...`: what is in a profile file, which columns play which role, and why."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import numpy as np
import pandas as pd

from ..io import LoadReport
from ..paths import json_default
from ..profiles import NEGATIVE, POSITIVE, Embedding, Profiles
from .common import add_input_arguments, load_from_args

_ROLE_ORDER = ("plate", "well", "row", "column", "batch", "perturbation", "control", "annotation")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "info", help="summarise profile file(s): plates, wells, features, roles and problems",
        description="Summarise profile file(s): plates, wells, features, batches, plate format, "
                    "perturbations, controls per plate, NaN/inf counts, and the detected roles with the "
                    "reason each was chosen.",
    )
    add_input_arguments(p)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run_info)


def info_dict(profiles: Profiles, report: LoadReport) -> dict[str, Any]:
    """Everything `info` shows, as plain JSON-able data."""
    summary = profiles.summary()
    per_plate = plate_table(profiles)
    X = profiles.X
    nan_cols = np.isnan(X).any(axis=0)
    inf_cols = np.isinf(X).any(axis=0)
    roles = profiles.roles
    out: dict[str, Any] = {
        "files": report.files,
        "source": profiles.source,
        "wells": summary["wells"],
        "features": summary["features"],
        "metadata_columns": [str(c) for c in profiles.meta.columns],
        "plates": summary["plates"],
        "plate_format": {"wells": profiles.geometry.n_wells, "rows": profiles.geometry.n_rows,
                         "columns": profiles.geometry.n_cols},
        "batches": summary["batches"],
        "batch_labels": None if profiles.batch is None else sorted(map(str, pd.unique(profiles.batch))),
        "perturbations": summary["perturbations"],
        "annotations": None if roles.annotation is None
        else int(profiles.meta[roles.annotation].nunique(dropna=True)),
        "negative_controls": summary["negative_controls"],
        "positive_controls": summary["positive_controls"],
        "per_plate": per_plate.to_dict(orient="records"),
        "nan_values": summary["nan_values"],
        "features_with_nan": int(nan_cols.sum()),
        "inf_values": summary["inf_values"],
        "features_with_inf": int(inf_cols.sum()),
        "roles": roles.to_dict(),
        "role_reasons": report.role_reasons,
        "combine": None if report.combine is None else report.combine.to_dict(),
        "warnings": report.warnings,
        "embedding": ({"method": profiles.method, "provenance": profiles.provenance}
                      if isinstance(profiles, Embedding) else None),
    }
    return json.loads(json.dumps(out, default=json_default))


def plate_table(profiles: Profiles) -> pd.DataFrame:
    """Wells, negative and positive controls per plate (plates in order of appearance)."""
    df = pd.DataFrame({"plate": profiles.plate, "neg": profiles.control == NEGATIVE,
                       "pos": profiles.control == POSITIVE})
    if profiles.batch is not None:
        df["batch"] = profiles.batch
    g = df.groupby("plate", sort=False)
    out = pd.DataFrame({"plate": list(g.groups), "wells": g.size().to_numpy(),
                        "negative": g["neg"].sum().to_numpy().astype(int),
                        "positive": g["pos"].sum().to_numpy().astype(int)})
    if "batch" in df:
        out.insert(1, "batch", g["batch"].agg(lambda s: ",".join(map(str, pd.unique(s)))).to_numpy())
    return out


def format_info(d: dict[str, Any]) -> str:
    """The human-readable summary."""
    roles = d["roles"]
    lines = [f"Profiles: {', '.join(d['files'])}"]

    def row(label: str, value: str) -> None:
        lines.append(f"  {label:<16}{value}")

    geo = d["plate_format"]
    if d.get("embedding"):
        row("embedding", f"method {d['embedding']['method']!r}")
    row("wells", f"{d['wells']:,}")
    row("features", f"{d['features']:,}")
    row("metadata", f"{len(d['metadata_columns'])} columns")
    row("plates", f"{d['plates']}")
    row("plate format", f"{geo['wells']}-well ({geo['rows']} rows x {geo['columns']} columns)")
    if d["batches"] is None:
        row("batches", "none (no batch column)")
    else:
        labels = ", ".join(d["batch_labels"][:6]) + (" …" if len(d["batch_labels"]) > 6 else "")
        row("batches", f"{d['batches']} in {roles['batch']!r}: {labels}")
    row("perturbations", f"{d['perturbations']:,}" + (f" in {roles['perturbation']!r}" if roles["perturbation"]
                                                        else " (no perturbation column)"))
    if roles["annotation"]:
        row("annotation", f"{d['annotations']:,} values in {roles['annotation']!r}")
    if roles["control"]:
        ctl = (f"{d['negative_controls']:,} negative {roles['negative_values']}, "
               f"{d['positive_controls']:,} positive {roles['positive_values']} in {roles['control']!r}")
    else:
        ctl = "none detected"
    row("controls", ctl)
    row("missing values", f"{d['nan_values']:,} NaN in {d['features_with_nan']} features, "
                          f"{d['inf_values']:,} inf in {d['features_with_inf']} features")

    lines += ["", "Per plate:"]
    table = pd.DataFrame(d["per_plate"])
    lines += ["  " + s for s in table.to_string(index=False).splitlines()]

    lines += ["", "Roles (column: why):"]
    for role in _ROLE_ORDER:
        col = roles.get(role)
        why = d["role_reasons"].get(role, "")
        if col or why:
            lines.append(f"  {role:<13} {repr(col) if col else '—'}: {why}")
    if roles.get("plate_format"):
        lines.append(f"  {'plate_format':<13} {roles['plate_format']}")

    c = d["combine"]
    if c:
        lines += ["", f"Combined {len(c['sources'])} inputs on {c['shared_features']} shared features:"]
        for s in c["sources"]:
            lines.append(f"  {s}: {c['wells_per_source'][s]:,} wells, {c['features_per_source'][s]:,} features, "
                         f"{len(c['dropped'][s]):,} dropped")
        lines += [f"  note: {n}" for n in c["notes"]]
    if d["warnings"]:
        lines += ["", "Warnings:"] + [f"  - {w}" for w in d["warnings"]]
    return "\n".join(lines)


def run_info(args: argparse.Namespace) -> int:
    profiles, report = load_from_args(args, emit_warnings=False)
    d = info_dict(profiles, report)
    if args.json:
        json.dump(d, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(format_info(d))
    return 0

