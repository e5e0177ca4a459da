"""`cpdistiller correct`: read -> preprocess -> fit -> transform into a run directory."""

from __future__ import annotations

import argparse
import signal
import sys

import numpy as np

from ..config import CpDistillerConfig
from ..settings import add_arguments, changes_from_args, paper_values


def register(subparsers: argparse._SubParsersAction) -> None:
    from .common import add_image_features_argument, add_input_arguments

    p = subparsers.add_parser(
        "correct", help="remove batch / row / column effects (train cpDistiller, write a run directory)",
        description="Train cpDistiller on the profiles and write RUN_DIR with embedding.parquet "
                    "(every input metadata column + cpd_0..cpd_49, one per feature if fewer), corrected_profiles.parquet "
                    "(the profiles minus each well's technical shift, same features and units; not with "
                    "--output latent), model/, train_log.csv, report.json.")
    add_input_arguments(p)
    p.add_argument("--out", required=True, metavar="RUN_DIR",
                   help="run directory to write (must be new or empty, unless --overwrite)")
    p.add_argument("--overwrite", action="store_true",
                   help="empty an existing run directory given as --out first (its old model, embedding "
                        "and preprocessing are deleted)")
    p.add_argument("--effects", default="row,column", metavar="LIST",
                   help="technical effects to remove, comma-separated from batch,row,column "
                        "(default row,column; the paper's two settings are row,column and batch,row,column)")
    p.add_argument("--config", metavar="FILE", help="JSON/YAML file of CpDistillerConfig settings; the flags "
                   "below override it")
    p.add_argument("--paper", action="store_true",
                   help="start from the paper's settings: every departure of docs/model.md set to the paper's "
                        "value (after --config); the setting flags given still override")
    p.add_argument("--no-preprocess", action="store_true",
                   help="the files are already normalised and feature-selected: skip preprocessing")
    p.add_argument("--warm-start", metavar="MODEL_DIR", help="fine-tune a saved model (RUN_DIR/model)")
    add_image_features_argument(p, "train the joint module on them with the CellProfiler features")
    p.add_argument("--format", choices=("parquet", "h5ad"), default="parquet",
                   help="h5ad: also write RUN_DIR/embedding.h5ad (AnnData: metadata in .obs, the preprocessed "
                        "features in X, the embedding in .obsm['X_cpdistiller'], the corrected profiles in "
                        ".layers['cpdistiller_corrected']); embedding.parquet is always written")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_arguments(p, CpDistillerConfig, "model settings (CpDistillerConfig; docs/model.md)")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> CpDistillerConfig:
    """--config FILE (or the defaults), --paper's values, then the setting flags given on the command line."""
    cfg = CpDistillerConfig.from_file(args.config) if args.config else CpDistillerConfig()
    if getattr(args, "paper", False):
        cfg = cfg.replace(**paper_values(CpDistillerConfig))
    changes = changes_from_args(args, CpDistillerConfig)
    return cfg.replace(**changes) if changes else cfg


def _stop_on_sigterm() -> None:
    """SIGTERM (kill, a scheduler's cancel) ends the run like Ctrl-C: recorded as interrupted."""
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (e.g. called from a test runner's worker)
        pass


def run(args: argparse.Namespace) -> int:
    from ..progress import TerminalProgress
    from ..runs import Run, RunSpec
    from .common import image_features_from_args, profiles_from_args

    with Run.create(args.out, overwrite=args.overwrite) as run:  # checked and locked before any input is read
        _stop_on_sigterm()
        spec = RunSpec.build(config_from_args(args), args.effects, not args.no_preprocess,
                             warm_start=args.warm_start)
        # raw values keep full precision until the run's preprocessing normalises them
        profiles = profiles_from_args(args, dtype=np.float32 if args.no_preprocess else np.float64)
        extractor = image_features_from_args(args)
        with TerminalProgress("correct", disable=True if args.quiet else None) as bar:
            run = run.correct(profiles, spec, progress=bar, extractor=extractor)
    if args.format == "h5ad":
        print(f"wrote {run.write_h5ad()}", file=sys.stderr)
    last = run.report.get("final_epoch") or {}
    acc = ", ".join(f"{k[4:]} {v:.2f}" for k, v in last.items() if k.startswith("acc_"))
    print(f"wrote {run.path}: {run.report['output']['wells']} wells x {run.report['output']['dimensions']} "
          f"dimensions in {run.report['timings']['total_s']:.0f} s on {run.report['device']}"
          + (f" (final discriminator accuracy: {acc})" if acc else ""), file=sys.stderr)
    verdict = run.verdict()
    if verdict is not None:
        print(verdict.format(), file=sys.stderr)
    return 0
