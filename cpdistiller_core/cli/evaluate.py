"""`cpdistiller evaluate` (score one embedding) and `cpdistiller benchmark` (cpDistiller vs reference methods)."""

from __future__ import annotations

import argparse
import json
import re
import sys
import warnings
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
                   help="also report activity_map_same_well (replicate positives may share a well position); "
                        "an extra, never a headline score")
    g.add_argument("--treatment-technical", action="store_true",
                   help="(kept for compatibility: the within-perturbation position metrics are always scored)")
    g.add_argument("--null-size", type=int, default=10000, help="copairs null size for mAP p-values (default 10000)")
    g.add_argument("--seed", type=int, default=0)


def register(sub: argparse._SubParsersAction) -> None:
    from .common import add_input_arguments

    ev = sub.add_parser("evaluate", help="score an embedding: technical-effect removal and biological conservation",
                        description="Print the scorecard of one embedding and write scores.csv / scores.json.")
    ev.add_argument("embedding", metavar="EMBEDDING",
                    help="any embedding: a Parquet/CSV whose non-Metadata_ numeric columns are the coordinates "
                         "(emb_000..., X_pca_..., PC1...), an .h5ad (X, or --obsm KEY), or a cpDistiller run "
                         "directory")
    ev.add_argument("--obsm", metavar="KEY", help=".h5ad input: score adata.obsm[KEY] (e.g. X_scVI) instead of X")
    ev.add_argument("--baseline", metavar="FILE",
                    help="the uncorrected profiles of the same wells: scored alongside as 'uncorrected' "
                         "(first, with the difference to it) and the reference of neighbour preservation")
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
                         "well_position, negcon_linear, jump_chain, scanorama, scvi (default all); a method "
                         "that cannot run is kept in the tables with its reason")
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
    bm.add_argument("--no-truth-row", action="store_true",
                    help="with a ground truth (--truth, or DATA = demo): leave out the 'truth' row, the truth's "
                         "PCA preprocessed as the profiles (what removing every technical effect would score)")
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
                            replicates_in_different_wells=not args.same_well_replicates)


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


_META_PREFIX = "Metadata_"


def _embedding_columns(path: Path, args: argparse.Namespace) -> list[str]:
    """Non-Metadata_ numeric columns of a Parquet/CSV (the coordinates of a foreign embedding),
    minus columns named by the role flags."""
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            schema = pq.read_schema(path)
            numeric = [f.name for f in schema if _pa_numeric(f.type)]
        else:
            head = pd.read_csv(path, nrows=500, sep="\t" if ".tsv" in path.name.lower() else ",")
            numeric = [str(c) for c in head.columns if pd.api.types.is_numeric_dtype(head[c])]
    except (OSError, ValueError) as exc:
        raise CpDistillerError(f"{path}: cannot read the column list ({exc}).") from None
    named = {v for k, v in vars(args).items() if k.endswith("_col") and isinstance(v, str)}
    return [c for c in numeric if not c.startswith(_META_PREFIX) and c not in named]


def _pa_numeric(t) -> bool:
    import pyarrow.types as pt

    return pt.is_floating(t) or pt.is_integer(t)


def _read_h5ad_obsm(args: argparse.Namespace, path: Path):
    import anndata

    from ..io import resolve_roles
    from ..profiles import Embedding
    from .common import role_overrides_from_args

    try:
        adata = anndata.read_h5ad(path, backed="r")
    except Exception as exc:  # h5py/anndata raise many kinds for a bad file
        raise CpDistillerError(f"{path}: cannot read as AnnData .h5ad ({type(exc).__name__}).") from None
    if args.obsm not in adata.obsm:
        raise CpDistillerError(f"{path}: no obsm key {args.obsm!r}; available: {sorted(adata.obsm.keys())}.")
    X = np.asarray(adata.obsm[args.obsm], dtype=np.float32)
    meta = adata.obs.reset_index(drop=True)
    meta.columns = [str(c) for c in meta.columns]
    roles, _ = resolve_roles(meta, role_overrides_from_args(args) or None, str(path))
    return Embedding(meta=meta, X=X, features=[f"{args.obsm}_{i}" for i in range(X.shape[1])], roles=roles,
                     source=str(path), method=args.obsm)


def read_embedding(args: argparse.Namespace, target: str):
    """Read any embedding: run directory, .h5ad (``--obsm``), or a table whose coordinates are either
    CellProfiler-named, named by --features-regex, or (failing both) its non-Metadata_ numeric columns."""
    path = Path(target)
    if path.is_dir():
        from ..runs import load_run

        return load_run(path).embedding()
    if args.obsm:
        if path.suffix.lower() != ".h5ad":
            raise CpDistillerError(f"--obsm needs an .h5ad file, not {path.name}.")
        return _read_h5ad_obsm(args, path)
    try:
        return _read(args, [target])
    except CpDistillerError as exc:
        if "no feature columns found" not in str(exc) or args.features_regex or path.suffix.lower() == ".h5ad":
            raise
    cols = _embedding_columns(path, args)
    if not cols:
        raise CpDistillerError(f"{path}: no numeric non-Metadata_ columns to use as the embedding; name them "
                               "with --features-regex.")
    ns = argparse.Namespace(**vars(args))
    ns.features_regex = "^(" + "|".join(re.escape(c) for c in cols) + ")$"
    return _read(ns, [target])


def _evaluate(args: argparse.Namespace) -> int:
    from ..metrics import Scorecard, evaluate, format_comparison
    from ..paths import atomic_write_text

    emb = read_embedding(args, args.embedding)
    truth = _read_truth(args)
    baseline = read_embedding(argparse.Namespace(**{**vars(args), "obsm": None}), args.baseline) \
        if args.baseline else None
    method = args.method or getattr(emb, "method", None) or Path(args.embedding).name.split(".")[0]
    if baseline is not None and method == "uncorrected":
        method = "embedding"
    cfg = _eval_config(args)
    cards = []
    with TerminalProgress("evaluate") as bar:
        if baseline is not None:
            cards.append(evaluate(baseline, method="uncorrected", truth=truth, pairs=_pairs(args, baseline),
                                  config=cfg, baseline=baseline, progress=bar))
        cards.append(evaluate(emb, method=method, truth=truth, pairs=_pairs(args, emb), config=cfg,
                              baseline=baseline, progress=bar))
    card = Scorecard.concat(cards)
    print(card.format())
    print()
    print(format_comparison(card.comparison("uncorrected")))
    out = Path(args.out) if args.out else Path(args.embedding).resolve().parent
    try:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "scores.csv", card.scores.to_csv(index=False))
        atomic_write_text(out / "scores.json", json.dumps(card.to_json_dict(), indent=2, default=str))
        atomic_write_text(out / "headline.csv", card.comparison("uncorrected").to_csv())
        for m, tables in card.details.items():
            for name, tab in tables.items():
                prefix = "" if m == method else f"{m}_"
                atomic_write_text(out / f"{prefix}{name}.csv", tab.to_csv(index=False))
    except OSError as exc:
        raise CpDistillerError(f"cannot write the scores to {out} ({exc.strerror or exc}); choose a folder "
                               "with --out.") from exc
    print(f"wrote {out / 'scores.csv'}, scores.json and headline.csv", file=sys.stderr)
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
    from ..benchmark import comparison_markdown, parse_methods, run_benchmark, write_benchmark

    methods = parse_methods(args.methods)
    effects = _split(args.correct) or ()
    overrides = _config_overrides(args.config)
    profiles, truth, desc = _load_benchmark_data(args)
    comparable = truth is not None and set(profiles.features) <= set(truth.features)
    truth_preprocessed = truth.subset(features=profiles.features) if comparable else None
    if not args.no_preprocess:
        from ..preprocess import PreprocessConfig, preprocess

        cfg = PreprocessConfig(normalize=None) if args.no_normalize else PreprocessConfig()
        with TerminalProgress("preprocess") as bar:
            profiles, report = preprocess(profiles, cfg, progress=bar)
        if comparable:  # the same per-plate normalisation, kept features and z-score
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # its warnings are the measured profiles' own
                truth_preprocessed = report.apply(truth)
    with TerminalProgress("benchmark") as bar:
        result = run_benchmark(profiles, methods, effects, seed=args.seed, epochs=args.epochs, truth=truth,
                               pairs=_pairs(args, profiles), eval_config=_eval_config(args),
                               cpdistiller_config=overrides, progress=bar,
                               truth_preprocessed=None if args.no_truth_row else truth_preprocessed)
    result.info["data"] = desc
    result.info["cpdistiller_config"] = overrides
    try:
        paths = write_benchmark(result, args.out, figures=not args.no_figures)
    except OSError as exc:
        raise CpDistillerError(f"cannot write to {args.out} ({exc.strerror or exc}).") from exc
    print(comparison_markdown(result))
    print(f"wrote {len(paths)} files to {args.out}", file=sys.stderr)
    return 0 if any(s == "ok" for s in result.status.values()) else 1
