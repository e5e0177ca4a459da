"""`cpdistiller preprocess IN... OUT` and `cpdistiller demo-data OUT`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CpDistillerError
from ..paths import atomic_write_bytes, check_output_file
from ..preprocess import PreprocessConfig
from ..settings import add_arguments, changes_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    from .common import add_input_arguments

    p = subparsers.add_parser(
        "preprocess", help="MAD-normalise per plate, select features, clip and z-score profiles",
        description="Preprocess well-level profiles as in the cpDistiller paper (pycytominer semantics): "
                    "robust MAD normalisation per plate against its negative controls, feature selection "
                    "(NaN-heavy, low-variance, near-constant, correlated > 0.9, blocklisted), clipping and "
                    "z-scoring. Writes the profiles (Parquet, CSV or .h5ad by OUT's extension) and a JSON "
                    "report of every dropped feature and well with its reason (OUT's name + .report.json). "
                    "With --apply REPORT, repeats an earlier preprocessing on new plates.",
    )
    add_input_arguments(p)
    p.add_argument("output", metavar="OUT", help="output profiles file (.parquet, .csv, .csv.gz or .h5ad)")
    p.add_argument("--report", metavar="FILE", help="report path (default: OUT without extension + .report.json)")
    p.add_argument("--apply", metavar="REPORT",
                   help="apply a saved preprocessing report (same kept features, stored z-score) instead of fitting")
    g = p.add_argument_group("preprocessing settings (PreprocessConfig; defaults: the paper's)")
    g.add_argument("--config", metavar="FILE", help="YAML/JSON file of settings; the flags below override it")
    add_arguments(g, PreprocessConfig)
    g.add_argument("--keep-zero-mad", dest="drop_zero_mad", action="store_false", default=argparse.SUPPRESS,
                   help="the same as --no-drop-zero-mad")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_preprocess)

    d = subparsers.add_parser(
        "demo-data", help="write the built-in simulated demo screen (profiles, ground truth, gene sets)",
        description="Write the simulated demo Cell Painting screen: OUT (profiles with batch, plate, "
                    "row/column-gradient and edge effects), OUT_truth (the same wells without technical "
                    "effects), OUT_gene_sets.gmt (the simulated functional groups) and "
                    "OUT_perturbations.csv (which perturbations have a phenotype). Format by OUT's "
                    "extension: .parquet (default), .csv, .csv.gz or .h5ad.",
    )
    d.add_argument("output", metavar="OUT", help="output profiles file")
    d.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    d.add_argument("--batches", type=int, default=3, help="number of batches (default 3)")
    d.add_argument("--plates", type=int, default=4, help="384-well plates per batch (default 4)")
    d.add_argument("--features", type=int, default=300, help="number of CellProfiler features (default 300)")
    d.set_defaults(func=run_demo_data)


# ----- preprocess --------------------------------------------------------------------------------------
def config_from_args(args: argparse.Namespace) -> Any:
    """PreprocessConfig from --config and the flags (flags win)."""
    settings: dict[str, Any] = {}
    if args.config:
        settings.update(_read_settings(args.config))
    settings.update(changes_from_args(args, PreprocessConfig))
    return PreprocessConfig.from_dict(settings, source=args.config)


def _read_settings(path: str) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise CpDistillerError(f"{path}: cannot read the settings file ({exc.strerror}).") from exc
    except yaml.YAMLError as exc:
        raise CpDistillerError(f"{path}: not valid YAML/JSON ({' '.join(str(exc).split())}).") from exc
    if isinstance(data, dict) and isinstance(data.get("config"), dict):
        data = data["config"]  # a saved preprocessing report holds its settings under "config"
    if not isinstance(data, dict):
        raise CpDistillerError(f"{path}: expected a mapping of settings such as 'na_cutoff: 0.05'.")
    return data


def _stem(path: Path) -> tuple[Path, str]:
    """(path without its profile suffix, the suffix) — 'a/x.csv.gz' -> ('a/x', '.csv.gz')."""
    from ..io.formats import split_suffix

    stem, suffix = split_suffix(path.name)
    return path.with_name(stem), suffix


def check_output_profiles(path: Path) -> None:
    """A profiles output path: a known format (by its extension) in a writable place."""
    from ..io.formats import format_of, readable_hint

    check_output_file(path)
    if Path(path).suffix and format_of(Path(path).name) is None:
        raise CpDistillerError(f"{path}: unknown output format {''.join(Path(path).suffixes)!r}; "
                               f"use {readable_hint()}.")


def report_path(output: str | Path) -> Path:
    base, _ = _stem(Path(output))
    return base.with_name(base.name + ".report.json")


def run_preprocess(args: argparse.Namespace) -> int:
    from ..io import write_profiles
    from ..preprocess import PreprocessReport, preprocess
    from ..progress import TerminalProgress
    from .common import profiles_from_args

    out_path = Path(args.output)
    if any(Path(i).resolve() == out_path.resolve() for i in args.inputs):
        raise CpDistillerError(f"{out_path}: the output would overwrite an input file; choose another name.")
    check_output_profiles(out_path)  # before any input is read: a bad OUT fails in a second, in one line
    check_output_file(Path(args.report) if args.report else report_path(out_path))
    profiles = profiles_from_args(args, dtype=np.float64)  # raw values at full precision until normalised
    with TerminalProgress("preprocess", disable=True if args.quiet else None) as bar:
        if args.apply:
            out, report = PreprocessReport.load(args.apply).apply_with_report(profiles, progress=bar)
        else:
            out, report = preprocess(profiles, config_from_args(args), progress=bar)
    write_profiles(out, out_path)
    rpath = Path(args.report) if args.report else report_path(out_path)
    rep = report.to_dict()
    if args.apply:
        rep["applied_report"] = str(args.apply)
    atomic_write_bytes(rpath, json.dumps(rep, indent=1, default=str).encode())
    s = report.summary()
    how = f" (preprocessing from {args.apply})" if args.apply else ""
    print(f"wrote {out_path}: {s['wells_out']} wells x {s['features_kept']} features{how}; "
          f"{s['features_in'] - s['features_kept']} features and {s['wells_dropped']} wells dropped, "
          f"reasons in {rpath}", file=sys.stderr)
    return 0


# ----- demo-data ---------------------------------------------------------------------------------------
def demo_paths(output: str | Path) -> dict[str, Path]:
    """Where demo-data writes: profiles, truth, GMT, perturbation table."""
    base, suffix = _stem(Path(output))
    suffix = suffix or ".parquet"
    return {"profiles": base.with_name(base.name + suffix), "truth": base.with_name(base.name + "_truth" + suffix),
            "gmt": base.with_name(base.name + "_gene_sets.gmt"),
            "perturbations": base.with_name(base.name + "_perturbations.csv")}


def run_demo_data(args: argparse.Namespace) -> int:
    from ..datasets import make_demo_screen, write_gmt
    from ..io import write_profiles

    for name, value in (("--batches", args.batches), ("--plates", args.plates)):
        if value < 1:
            raise CpDistillerError(f"{name} must be at least 1 (got {value}).")
    paths = demo_paths(args.output)
    check_output_profiles(paths["profiles"])
    for key in ("truth", "gmt", "perturbations"):
        check_output_file(paths[key])
    screen = make_demo_screen(seed=args.seed, n_batches=args.batches, plates_per_batch=args.plates,
                              n_features=args.features)
    write_profiles(screen.profiles, paths["profiles"])
    write_profiles(screen.truth, paths["truth"])
    paths["gmt"].parent.mkdir(parents=True, exist_ok=True)
    write_gmt(paths["gmt"])
    atomic_write_bytes(paths["perturbations"], screen.perturbations.to_csv(index=False).encode())
    p = screen.profiles
    print(f"wrote {paths['profiles']}: {p.n_wells} wells x {p.n_features} features, "
          f"{len(set(p.plate))} plates in {args.batches} batches (seed {args.seed}); ground truth in "
          f"{paths['truth'].name}, gene sets in {paths['gmt'].name}, perturbations in {paths['perturbations'].name}",
          file=sys.stderr)
    return 0
