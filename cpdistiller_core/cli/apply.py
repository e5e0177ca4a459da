"""`cpdistiller apply`: a trained run's model, with its stored preprocessing, applied to new plates."""

from __future__ import annotations

import argparse
import sys

import numpy as np


def register(subparsers: argparse._SubParsersAction) -> None:
    from .common import add_image_features_argument, add_input_arguments

    p = subparsers.add_parser(
        "apply", help="apply a trained run's model to new plates (incremental correction, no retraining)",
        description="Preprocess the new plates with RUN_DIR's stored preprocessing (per-plate "
                    "normalisation on their own controls, the same features, the stored z-score) and embed "
                    "them with RUN_DIR's model. OUT is a run directory like `correct` writes "
                    "(input.parquet, embedding.parquet with every input metadata column + cpd_*, "
                    "corrected_profiles.parquet when the model's embedding is the corrected input, "
                    "verdict.json, a copy of model/; config.json records applied_from), so `evaluate`, "
                    "the dashboard and a later `apply` read it as any run.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a finished run directory (written by `correct` or `apply`)")
    add_input_arguments(p)
    p.add_argument("--out", required=True, metavar="OUT", help="run directory to write (new or empty, "
                   "unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="empty an existing run directory given as --out first")
    p.add_argument("--format", choices=("parquet", "h5ad"), default="parquet",
                   help="h5ad: also write OUT/embedding.h5ad (AnnData); embedding.parquet is always written")
    add_image_features_argument(p, "needed when RUN_DIR's model was trained with image features")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..runs import Run, run_apply
    from .common import image_features_from_args, profiles_from_args

    source = Run.open(args.run_dir)  # fail before reading anything when RUN_DIR is not a run
    with Run.create(args.out, overwrite=args.overwrite) as out:
        profiles = profiles_from_args(args, dtype=np.float64)  # raw values: the stored preprocessing normalises
        run_apply(source.path, profiles, out.path, extractor=image_features_from_args(args))
    applied = Run.open(args.out)
    if args.format == "h5ad":
        print(f"wrote {applied.write_h5ad()}", file=sys.stderr)
    out_info = applied.report.get("output") or {}
    print(f"wrote {applied.path}: {out_info.get('wells')} wells x {out_info.get('dimensions')} dimensions with the "
          f"model of {source.path}", file=sys.stderr)
    verdict = applied.verdict()
    if verdict is not None:
        print(verdict.format(), file=sys.stderr)
    return 0
