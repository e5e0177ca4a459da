"""`cpdistiller correct`: read -> preprocess -> fit -> transform into a run directory."""

from __future__ import annotations

import argparse
import signal
import sys

import numpy as np

from ..config import CpDistillerConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    from .common import add_input_arguments

    p = subparsers.add_parser(
        "correct", help="remove batch / row / column effects (train cpDistiller, write a run directory)",
        description="Train cpDistiller on the profiles and write RUN_DIR with embedding.parquet "
                    "(every input metadata column + cpd_0..cpd_49), model/, train_log.csv, report.json.")
    add_input_arguments(p)
    p.add_argument("--out", required=True, metavar="RUN_DIR",
                   help="run directory to write (must be new or empty, unless --overwrite)")
    p.add_argument("--overwrite", action="store_true",
                   help="empty an existing run directory given as --out first (its old model, embedding "
                        "and preprocessing are deleted)")
    p.add_argument("--effects", default="row,column", metavar="LIST",
                   help="technical effects to remove, comma-separated from batch,row,column "
                        "(default row,column; the paper's two settings are row,column and batch,row,column)")
    p.add_argument("--config", metavar="FILE", help="JSON/YAML file of CpDistillerConfig settings")
    p.add_argument("--epochs", type=int, help="training epochs (default 50)")
    p.add_argument("--batch-size", type=int, help="mini-batch size (default 256)")
    p.add_argument("--min-steps", type=int,
                   help="at least this many training steps in total (default 0 = the paper's 50 epochs only)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), help="device (default auto: CUDA > MPS > CPU)")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--sphering", choices=("auto", "none", "negcon"),
                   help="whiten the model input on negative controls first (default none = the paper; auto: "
                        "when there are >= 10 negative controls)")
    p.add_argument("--adversary-wells", choices=("auto", "all", "negcon"),
                   help="wells the batch/row/column discriminators learn from (default all = the paper; auto: "
                        "the negative controls when there are >= 10 at 2+ levels of every effect)")
    p.add_argument("--adversary-encoder", choices=("same", "all"),
                   help="with controls-trained discriminators: hide batch/position from the controls only "
                        "(same) or from every well through the frozen discriminators (all)")
    p.add_argument("--triplet-controls", choices=("auto", "paper", "neutral"),
                   help="how negative controls enter the triplet loss: paper (every control pulled onto the "
                        "others), neutral (like any well), auto (paper with --adversary-wells all)")
    p.add_argument("--no-amp", action="store_true",
                   help="no mixed precision (bf16/fp16 autocast on CUDA, bf16 on CPUs with native bf16)")
    p.add_argument("--no-preprocess", action="store_true",
                   help="the files are already normalised and feature-selected: skip preprocessing")
    p.add_argument("--warm-start", metavar="MODEL_DIR", help="fine-tune a saved model (RUN_DIR/model)")
    p.add_argument("--format", choices=("parquet", "h5ad"), default="parquet",
                   help="h5ad: also write RUN_DIR/embedding.h5ad (AnnData: metadata in .obs, the preprocessed "
                        "features in X, the embedding in .obsm['X_cpdistiller']); embedding.parquet is always written")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> CpDistillerConfig:
    cfg = CpDistillerConfig.from_file(args.config) if args.config else CpDistillerConfig()
    changes = {k: v for k, v in (("epochs", args.epochs), ("batch_size", args.batch_size), ("min_steps", args.min_steps),
                                 ("device", args.device), ("seed", args.seed), ("sphering", args.sphering),
                                 ("adversary_wells", args.adversary_wells),
                                 ("adversary_encoder", args.adversary_encoder),
                                 ("triplet_controls", args.triplet_controls))
               if v is not None}
    if args.no_amp:
        changes["amp"] = False
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
    from ..runs import load_run, prepare_run_dir, run_correction
    from .common import profiles_from_args

    lock = prepare_run_dir(args.out, overwrite=args.overwrite)  # before any input is read
    try:
        _stop_on_sigterm()
        cfg = config_from_args(args)
        # raw values keep full precision until the run's preprocessing normalises them
        profiles = profiles_from_args(args, dtype=np.float32 if args.no_preprocess else np.float64)
        with TerminalProgress("correct", disable=True if args.quiet else None) as bar:
            run_dir = run_correction(profiles, args.out, cfg, args.effects, progress=bar,
                                     preprocess=not args.no_preprocess, warm_start=args.warm_start)
    finally:
        lock.release()
    r = load_run(run_dir)
    if args.format == "h5ad":
        print(f"wrote {_write_h5ad(r, profiles, preprocessed=not args.no_preprocess)}", file=sys.stderr)
    last = r.report.get("final_epoch") or {}
    acc = ", ".join(f"{k[4:]} {v:.2f}" for k, v in last.items() if k.startswith("acc_"))
    print(f"wrote {run_dir}: {r.report['output']['wells']} wells x {r.report['output']['dimensions']} dimensions "
          f"in {r.report['timings']['total_s']:.0f} s on {r.report['device']}"
          + (f" (final discriminator accuracy: {acc})" if acc else ""), file=sys.stderr)
    verdict = r.verdict()
    if verdict is not None:
        print(verdict.format(), file=sys.stderr)
    return 0


def _write_h5ad(run, profiles, preprocessed: bool):
    """RUN_DIR/embedding.h5ad with the model's input features in X: the input profiles with the run's
    stored preprocessing applied again (same wells, same values as in training)."""
    import warnings

    from ..io import write_profiles
    from ..preprocess import PreprocessReport
    from ..runs import MODEL_DIR, PREPROCESS_FILE

    emb = run.embedding()
    inputs = profiles
    prep = run.path / MODEL_DIR / PREPROCESS_FILE
    if preprocessed and prep.is_file():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # shown once already by the run itself
            inputs = PreprocessReport.load(prep).apply(profiles)
    return write_profiles(emb, run.path / "embedding.h5ad", input_profiles=inputs)
