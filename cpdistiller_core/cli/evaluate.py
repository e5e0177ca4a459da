"""`cpdistiller evaluate` (score one embedding) and `cpdistiller benchmark` (cpDistiller vs reference methods)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import CpDistillerError
from ..progress import TerminalProgress


def _eval_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("evaluation")
    g.add_argument("--truth", metavar="FILE", help="clean ground-truth profiles (simulator) for kNN overlap")
    g.add_argument("--effects", default=None,
                   help="technical effects to score, comma-separated (default: batch,plate,row,column)")
    g.add_argument("--pairs", metavar="FILE", action="append",
                   help="CSV with columns a,b (perturbation names) for fraction retrieved; repeatable; "
                        "named by the file stem")
    g.add_argument("--sister-col", metavar="COL",
                   help="metadata column (e.g. gene) whose shared values define sister perturbation pairs")
    g.add_argument("--gene-col", metavar="COL",
                   help="gene column of genetic perturbations; with --target-col scores gene–compound retrieval")
    g.add_argument("--target-col", metavar="COL",
                   help="compound target column (pipe-separated gene symbols allowed)")
    g.add_argument("--same-well-replicates", action="store_true",
                   help="phenotypic activity: allow replicate positives in the same well position "
                        "(default: different wells only)")
    g.add_argument("--treatment-technical", action="store_true",
                   help="also score technical effects within perturbations (treatment wells; asw_trt, "
                        "variance_trt, leakage_trt), a view not fitted on the controls; not aggregated")
    g.add_argument("--null-size", type=int, default=10000, help="copairs null size for mAP p-values (default 10000)")
    g.add_argument("--seed", type=int, default=0)


def register(sub: argparse._SubParsersAction) -> None:
    from .common import add_input_arguments

    ev = sub.add_parser("evaluate", help="score an embedding: technical-effect removal and biological conservation",
                        description="Print the scorecard of one embedding and write scores.csv / scores.json.")
    ev.add_argument("embedding", metavar="EMBEDDING", help="embedding or profiles file (Parquet, CSV, h5ad)")
    ev.add_argument("--out", metavar="DIR", help="output folder for scores.csv/scores.json "
                                                 "(default: the embedding's folder)")
    ev.add_argument("--method", help="method name in the tables (default: the embedding's own, or the file stem)")
    _eval_options(ev)
    add_input_arguments(ev, positional=False)
    ev.set_defaults(func=_evaluate)

    bm = sub.add_parser("benchmark", help="run cpDistiller and reference methods on the same data and compare",
                        description="Preprocess DATA once, run each method, score each embedding and write "
                                    "comparison.csv/.md, scores.csv/.json and plotly HTML figures to --out.")
    bm.add_argument("inputs", nargs="+", metavar="DATA",
                    help="profile file(s), or 'demo' for the built-in simulated screen (with its ground truth)")
    bm.add_argument("--methods", default="all",
                    help="comma-separated: all, cpDistiller, uncorrected, harmony, combat, sphering, "
                         "well_position, negcon_linear (default all)")
    bm.add_argument("--out", metavar="DIR", required=True, help="output folder")
    bm.add_argument("--epochs", type=int, help="cpDistiller training epochs (default: the config's)")
    bm.add_argument("--config", metavar="FILE",
                    help="JSON/YAML file of cpDistiller settings (CpDistillerConfig fields), e.g. to compare "
                         "settings; --epochs (if given) and --seed override the file")
    bm.add_argument("--correct", default="batch,row,column",
                    help="effects the methods correct, in order (default batch,row,column)")
    bm.add_argument("--no-preprocess", action="store_true",
                    help="use DATA as already preprocessed (no normalisation, feature selection or scaling)")
    bm.add_argument("--no-normalize", action="store_true",
                    help="skip MAD normalisation (data already normalised) but still select features and scale")
    bm.add_argument("--demo-seed", type=int, default=0, help="seed of the demo screen (DATA = demo)")
    bm.add_argument("--no-figures", action="store_true", help="skip the HTML figures")
    _eval_options(bm)
    add_input_arguments(bm, positional=False)
    bm.set_defaults(func=_benchmark)


# ------------------------------------------------------------------------------------------------
def _split(text: str | None) -> tuple[str, ...] | None:
    if not text:
        return None
    return tuple(s.strip() for s in text.split(",") if s.strip())


def _eval_config(args: argparse.Namespace):
    from ..metrics import EFFECTS, EvaluationConfig

    effects = _split(args.effects)
    if effects:
        bad = [e for e in effects if e not in EFFECTS]
        if bad:
            raise CpDistillerError(f"unknown effect(s) {bad}; use {', '.join(EFFECTS)}.")
    if args.null_size < 100:
        raise CpDistillerError("--null-size must be at least 100.")
    return EvaluationConfig(effects=effects, null_size=args.null_size, seed=args.seed,
                            replicates_in_different_wells=not args.same_well_replicates,
                            treatment_technical=args.treatment_technical)


def _pairs(args: argparse.Namespace, profiles) -> dict[str, pd.DataFrame]:
    from ..metrics import pairs_from_annotation

    out: dict[str, pd.DataFrame] = {}
    for f in args.pairs or []:
        path = Path(f)
        try:
            tab = pd.read_csv(path)
        except (OSError, ValueError) as exc:
            raise CpDistillerError(f"{path}: cannot read pairs CSV ({exc}).") from exc
        if not {"a", "b"} <= set(tab.columns):
            raise CpDistillerError(f"{path}: pairs CSV needs columns 'a' and 'b'.")
        out[path.name.split(".")[0]] = tab
    if args.sister_col:
        if args.sister_col not in profiles.meta.columns:
            raise CpDistillerError(f"--sister-col {args.sister_col!r} is not a metadata column.")
        pairs = pairs_from_annotation(profiles, args.sister_col)
        if pairs.empty:
            raise CpDistillerError(f"no two perturbations share a value of {args.sister_col!r}.")
        out["sister"] = pairs
    if bool(args.gene_col) != bool(args.target_col):
        raise CpDistillerError("gene–compound retrieval needs both --gene-col and --target-col.")
    if args.gene_col:
        from ..analysis.retrieval import gene_compound_pairs

        pairs = gene_compound_pairs(profiles, args.gene_col, args.target_col)
        if pairs.empty:
            raise CpDistillerError(f"no compound in {args.target_col!r} targets a gene in {args.gene_col!r}.")
        out["gene_compound"] = pairs
    return out


def _read(args: argparse.Namespace, inputs: list[str], dtype: type = np.float32):
    from .common import load_from_args

    ns = argparse.Namespace(**vars(args))
    ns.inputs = inputs
    return load_from_args(ns, dtype=dtype)[0]


def _read_truth(args: argparse.Namespace):
    if not args.truth:
        return None
    return _read(args, [args.truth])


def _evaluate(args: argparse.Namespace) -> int:
    from ..metrics import evaluate
    from ..paths import atomic_write_text

    emb = _read(args, [args.embedding])
    truth = _read_truth(args)
    method = args.method or getattr(emb, "method", None) or Path(args.embedding).name.split(".")[0]
    cfg = _eval_config(args)
    with TerminalProgress("evaluate") as bar:
        card = evaluate(emb, method=method, truth=truth, pairs=_pairs(args, emb), config=cfg, progress=bar)
    print(card.format())
    out = Path(args.out) if args.out else Path(args.embedding).resolve().parent
    try:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "scores.csv", card.scores.to_csv(index=False))
        atomic_write_text(out / "scores.json", json.dumps(card.to_json_dict(), indent=2, default=str))
        for name, tab in card.details.get(method, {}).items():
            atomic_write_text(out / f"{name}.csv", tab.to_csv(index=False))
    except OSError as exc:
        raise CpDistillerError(f"cannot write the scores to {out} ({exc.strerror or exc}); choose a folder "
                               "with --out.") from exc
    print(f"wrote {out / 'scores.csv'} and {out / 'scores.json'}", file=sys.stderr)
    return 0


def _load_benchmark_data(args: argparse.Namespace) -> tuple[Any, Any, str]:
    """(profiles, truth or None, description) for DATA; 'demo' uses the built-in simulator."""
    if len(args.inputs) == 1 and args.inputs[0].lower() == "demo":
        from ..datasets import make_demo_screen

        screen = make_demo_screen(args.demo_seed)
        truth = screen.truth if not args.truth else _read_truth(args)
        if not args.gene_col and not args.target_col:
            args.gene_col, args.target_col = "Metadata_Symbol", "Metadata_target"
        return screen.profiles, truth, f"demo screen (seed {args.demo_seed})"
    # raw values keep full precision until the benchmark's preprocessing normalises them
    dtype = np.float32 if args.no_normalize else np.float64
    return _read(args, list(args.inputs), dtype), _read_truth(args), ", ".join(args.inputs)


def _config_overrides(path: str | None) -> dict[str, Any]:
    """The settings a --config file changes (validated now, before any data is read)."""
    if not path:
        return {}
    from ..config import CpDistillerConfig

    full = CpDistillerConfig.from_file(path).to_dict()
    default = CpDistillerConfig().to_dict()
    return {k: v for k, v in full.items() if v != default[k] and k != "seed"}


def _benchmark(args: argparse.Namespace) -> int:
    from ..benchmark import parse_methods, run_benchmark, to_markdown, write_benchmark

    methods = parse_methods(args.methods)
    effects = _split(args.correct) or ()
    overrides = _config_overrides(args.config)
    profiles, truth, desc = _load_benchmark_data(args)
    if not args.no_preprocess:
        from ..preprocess import PreprocessConfig, preprocess

        cfg = PreprocessConfig(normalize=None) if args.no_normalize else PreprocessConfig()
        with TerminalProgress("preprocess") as bar:
            profiles, report = preprocess(profiles, cfg, progress=bar)
    with TerminalProgress("benchmark") as bar:
        result = run_benchmark(profiles, methods, effects, seed=args.seed, epochs=args.epochs, truth=truth,
                               pairs=_pairs(args, profiles), eval_config=_eval_config(args),
                               cpdistiller_config=overrides, progress=bar)
    result.info["data"] = desc
    result.info["cpdistiller_config"] = overrides
    try:
        paths = write_benchmark(result, args.out, figures=not args.no_figures)
    except OSError as exc:
        raise CpDistillerError(f"cannot write to {args.out} ({exc.strerror or exc}).") from exc
    summary = result.scorecard.summary() if len(result.scorecard.scores) else pd.DataFrame()
    table = result.table[["status", "runtime_s"]].join(summary)
    print(to_markdown(table))
    print(f"wrote {len(paths)} files to {args.out}", file=sys.stderr)
    return 0 if any(s == "ok" for s in result.status.values()) else 1
