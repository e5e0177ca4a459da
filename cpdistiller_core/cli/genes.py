"""`cpdistiller genes` (active screen, clusters, enrichment, ARCHS4), `cpdistiller retrieve` (sister and
gene–compound retrieval, query) and `cpdistiller enrichr-download` (Enrichr libraries to .gmt)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import CpDistillerError
from ..progress import TerminalProgress


def _inputs(p: argparse.ArgumentParser) -> None:
    from .common import add_input_arguments

    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="a run directory (corrected embedding; the uncorrected PCA of its input is compared), "
                        "embedding/profile file(s), or 'demo' for the built-in screen")
    p.add_argument("--uncorrected", metavar="FILE", nargs="+",
                   help="uncorrected embedding/profile file(s) to compare with; for a run directory: its "
                        "input file(s), preprocessed as the run was, then PCA-50 (default: found by the run)")
    p.add_argument("--out", metavar="DIR", required=True, help="output folder for tables and figures")
    p.add_argument("--type-col", metavar="COL", help="perturbation-type column to filter on (e.g. Metadata_pert_type)")
    p.add_argument("--type", metavar="VALUE[,VALUE]", help="keep these perturbation types (plus negative controls)")
    p.add_argument("--png", action="store_true", help="also write PNG figures (kaleido; needs Chromium)")
    p.add_argument("--svg", action="store_true", help="also write SVG figures (kaleido; needs Chromium)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--demo-seed", type=int, default=0, help="seed of the demo screen (INPUT = demo)")
    add_input_arguments(p, positional=False)


def register(sub: argparse._SubParsersAction) -> None:
    from ..analysis.clustering import LINKAGES, METRICS
    from ..analysis.enrichment import DEFAULT_LIBRARIES
    from ..analysis.retrieval import RECIPES

    g = sub.add_parser(
        "genes", help="active-perturbation screen, gene clusters with permutation p-values, enrichment, ARCHS4",
        description="Consensus profiles -> active screen against negative controls -> hierarchical clustering "
                    "of the top-N active perturbations (permutation test per cluster) -> gene-set enrichment "
                    "per cluster (Enrichr libraries or local .gmt) -> optional ARCHS4 co-expression groups. "
                    "Writes CSV tables and HTML figures to --out.")
    _inputs(g)
    a = g.add_argument_group("screen and clustering")
    a.add_argument("--by", metavar="COL", help="cluster consensus profiles of this column's values (e.g. the gene "
                                               "symbol column, pooling alleles/guides); default: perturbation")
    a.add_argument("--aggregate", choices=("median", "mean"), default="median")
    a.add_argument("--metric", choices=METRICS, default="cosine", help="clustering distance (cosine)")
    a.add_argument("--screen-distance", choices=METRICS, default="euclidean",
                   help="active-screen distance to the negative-control centroid (euclidean)")
    a.add_argument("--screen-null", choices=("consensus", "wells"), default="consensus",
                   help="controls' own distances: consensus profiles of random control sets with the "
                        "perturbations' replicate count (default), or single control wells")
    a.add_argument("--linkage", choices=LINKAGES, default="average")
    a.add_argument("--top-n", type=int, default=200, help="cluster the N most divergent active perturbations (200)")
    a.add_argument("--percentile", type=float, default=95.0, help="control-distance percentile threshold (95)")
    a.add_argument("--clusters", type=int, default=8, help="number of clusters (8)")
    a.add_argument("--height", type=float, help="cut the tree at this height instead of --clusters")
    a.add_argument("--permutations", type=int, default=1000, help="random sets per cluster (1000)")
    a.add_argument("--alpha", type=float, default=0.05)
    e = g.add_argument_group("enrichment (gseapy)")
    e.add_argument("--libraries", help=f"Enrichr libraries, comma-separated (default {','.join(DEFAULT_LIBRARIES)}; "
                                       "'none' for only --gmt files)")
    e.add_argument("--gmt", metavar="FILE", action="append", help="local .gmt gene sets (repeatable); "
                                                                  "'demo' = the demo screen's gene sets")
    e.add_argument("--library-dir", metavar="DIR", help="folder of <library>.gmt files (from enrichr-download)")
    e.add_argument("--offline", action="store_true", help="never use the network (cached or local gene sets only)")
    e.add_argument("--enrichr-url", help="Enrichr base URL (default $CPDISTILLER_ENRICHR_URL or the public one)")
    e.add_argument("--no-enrichment", action="store_true")
    r = g.add_argument_group("co-expression groups")
    r.add_argument("--archs4", action="store_true", help="fetch ARCHS4 co-expressed genes (gget; cached per gene)")
    r.add_argument("--gene-groups", metavar="FILE", help="your own groups: CSV/TSV gene,partner[,correlation] or gene,group")
    r.add_argument("--archs4-threshold", type=float, default=0.6)
    r.add_argument("--archs4-top", type=int, default=100)
    r.add_argument("--archs4-url", help="ARCHS4 correlation endpoint (default $CPDISTILLER_ARCHS4_URL or the public one)")
    g.set_defaults(func=_genes)

    rt = sub.add_parser(
        "retrieve", help="retrieval of sister perturbations and gene–compound pairs; query similar perturbations",
        description="Per-perturbation mAP (replicates vs controls), per-gene mAP of perturbations sharing a "
                    "gene, fraction retrieved of sister and gene–compound pairs, corrected vs uncorrected; "
                    "--query ranks the perturbations most similar to a gene or compound.")
    _inputs(rt)
    rt.add_argument("--recipe", choices=sorted(RECIPES),
                    help="preset columns of a published task: cpjump1 = the JUMP pilot as `jump fetch --dataset "
                         "cpg0000` writes it (sister guides/ORFs, gene–compound pairs; the cpDistiller paper's tasks)")
    rt.add_argument("--gene-col", metavar="COL", help="gene perturbed by each ORF/guide/allele (e.g. Metadata_symbol)")
    rt.add_argument("--target-col", metavar="COL", help="compound targets, gene symbols (e.g. Metadata_target)")
    rt.add_argument("--pairs-col", metavar="COL",
                    help="annotation column whose shared values define known pairs, e.g. a MoA or injury "
                         "class of a compound screen (task 'annotation'; default: the --annotation-col role "
                         "when no gene/target column is given)")
    rt.add_argument("--symbol-sep", default="|",
                    help="separator of several symbols in one value (default '|'; --sep is the file's separator)")
    rt.add_argument("--query", metavar="NAME", action="append", help="gene symbol or perturbation (repeatable)")
    rt.add_argument("--top", type=int, default=25, help="rows per query (25)")
    rt.add_argument("--null-size", type=int, default=10000, help="copairs null size (10000)")
    rt.set_defaults(func=_retrieve)

    dl = sub.add_parser("enrichr-download", help="download Enrichr libraries as .gmt files for offline enrichment",
                        description="Fetch Enrichr gene-set libraries and write <out>/<library>.gmt; pass the "
                                    "folder to `cpdistiller genes --library-dir` on an offline machine.")
    dl.add_argument("libraries", nargs="*", metavar="LIBRARY", help=f"default: {' '.join(DEFAULT_LIBRARIES)}")
    dl.add_argument("--out", metavar="DIR", required=True)
    dl.add_argument("--enrichr-url", help="Enrichr base URL (default $CPDISTILLER_ENRICHR_URL or the public one)")
    dl.add_argument("--force", action="store_true", help="download again even if the file exists")
    dl.set_defaults(func=_download)


# ------------------------------------------------------------------------------------------------
def _read(args: argparse.Namespace, inputs: list[str]):
    from .common import load_from_args

    ns = argparse.Namespace(**vars(args))
    ns.inputs = inputs
    return load_from_args(ns)[0]


def load_pair(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """{'corrected'/'input': profiles, 'uncorrected': profiles (when known)} and a description."""
    from ..profiles import Embedding

    inputs = list(args.inputs)
    out: dict[str, Any] = {}
    if len(inputs) == 1 and inputs[0].lower() == "demo":
        from ..datasets import make_demo_screen
        from ..preprocess import PreprocessConfig, preprocess

        out["input"], _ = preprocess(make_demo_screen(args.demo_seed).profiles, PreprocessConfig())
        desc = f"demo screen (seed {args.demo_seed}), preprocessed, uncorrected"
    elif len(inputs) == 1 and Path(inputs[0]).is_dir():
        from ..runs import Run

        run = Run.open(inputs[0])
        spaces = run.spaces(references=False) if not args.uncorrected else {"cpDistiller": run.embedding()}
        out["corrected"] = _with_role_flags(spaces["cpDistiller"], args)
        if args.uncorrected:  # the given files, with the run's preprocessing applied
            prep = run.preprocessing()
            raw = _read(args, list(args.uncorrected))
            out["uncorrected"] = prep.apply(raw) if prep is not None else raw
        else:
            out["uncorrected"] = spaces["uncorrected"]
        desc = f"run {run.path.name}"
    else:
        emb = _read(args, inputs)
        if isinstance(emb, Embedding):
            out[emb.method if emb.method and emb.method != "uncorrected" else "corrected"] = emb
        else:
            out["input"] = emb
        desc = ", ".join(inputs)
    if args.uncorrected and "uncorrected" not in out:
        out["uncorrected"] = _read(args, list(args.uncorrected))
    if args.type_col or args.type:
        if not (args.type_col and args.type):
            raise CpDistillerError("--type-col and --type go together.")
        from ..analysis.consensus import select_type

        values = [v.strip() for v in args.type.split(",") if v.strip()]
        out = {k: select_type(v, args.type_col, values) for k, v in out.items()}
    return out, desc


def _with_role_flags(profiles, args: argparse.Namespace):
    """Apply the column flags (--perturbation-col, --negative, …) over a run embedding's stored roles."""
    from ..profiles import Roles
    from .common import role_overrides_from_args

    spec = {k: v for k, v in role_overrides_from_args(args).items() if k not in ("features", "feature_regex")}
    if not spec:
        return profiles
    return profiles.replace(roles=Roles.from_dict({**profiles.roles.to_dict(), **spec}))


def _write_table(df: pd.DataFrame, path: Path) -> Path:
    from ..paths import atomic_write_text

    atomic_write_text(path, df.to_csv(index=False))
    return path


def _write_figure(fig, path: Path, args: argparse.Namespace) -> list[Path]:
    from ..paths import atomic_write_bytes
    from ..plots.genes import figure_bytes

    written = []
    for fmt, on in (("html", True), ("png", args.png), ("svg", args.svg)):
        if on:
            p = path.with_suffix(f".{fmt}")
            atomic_write_bytes(p, figure_bytes(fig, fmt))
            written.append(p)
    return written


def _gene_sets(args: argparse.Namespace, demo: bool):
    from ..analysis.enrichment import DEFAULT_LIBRARIES, DEMO_GMT, resolve_gene_sets

    gmts = [str(DEMO_GMT) if g == "demo" else g for g in (args.gmt or [])]
    if args.libraries:
        libs = [] if args.libraries.strip().lower() == "none" else [s.strip() for s in args.libraries.split(",") if s.strip()]
    elif demo and not gmts and not args.library_dir:
        gmts, libs = [str(DEMO_GMT)], []
        print(f"gene sets: the demo screen's own ({DEMO_GMT.name}); pass --libraries for Enrichr", file=sys.stderr)
    else:
        libs = [] if gmts and not args.library_dir else list(DEFAULT_LIBRARIES)
    return resolve_gene_sets(libs, gmts, args.library_dir, args.enrichr_url, args.offline)


def _require_archs4(url: str | None) -> None:
    from ..analysis.archs4 import require_archs4
    from ..net import OfflineError

    try:
        require_archs4(url)
    except OfflineError as exc:
        raise type(exc)(f"{exc} Genes already in the ARCHS4 cache work with --offline.") from None


def _genes(args: argparse.Namespace) -> int:
    from ..analysis.archs4 import archs4_edges, coexpression_by_cluster, gene_groups, read_gene_groups
    from ..analysis.clustering import gene_clusters
    from ..analysis.enrichment import enrich_clusters, top_terms
    from ..plots import genes as gp

    demo = len(args.inputs) == 1 and args.inputs[0].lower() == "demo"
    # the network first: an unreachable or refusing service fails in seconds, before any computation
    sets = None if args.no_enrichment else _gene_sets(args, demo)
    if args.archs4 and not args.gene_groups and not args.offline:
        _require_archs4(args.archs4_url)
    embs, desc = load_pair(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for i, (name, emb) in enumerate(embs.items()):
        folder = out if i == 0 else out / name
        (folder / "figures").mkdir(parents=True, exist_ok=True)
        with TerminalProgress(f"genes ({name})") as bar:
            res = gene_clusters(emb, by=args.by, aggregate=args.aggregate, metric=args.metric,
                                method=args.linkage, screen_metric=args.screen_distance,
                                screen_null=args.screen_null, top_n=args.top_n, percentile=args.percentile,
                                n_clusters=None if args.height is not None else args.clusters, height=args.height,
                                n_permutations=args.permutations, alpha=args.alpha, seed=args.seed, progress=bar)
        _write_table(res.screen.table, folder / "active_screen.csv")
        _write_table(res.clustering.assignments(), folder / "clusters.csv")
        _write_table(res.clustering.table, folder / "cluster_table.csv")
        _write_figure(gp.active_screen_figure(res.screen, f"Active screen ({name})"),
                      folder / "figures" / "active_screen", args)
        groups = None
        if args.gene_groups or args.archs4:
            edges = read_gene_groups(args.gene_groups) if args.gene_groups else archs4_edges(
                res.clustering.labels, args.archs4_threshold, args.archs4_top, args.archs4_url, args.offline)
            groups = gene_groups(edges, res.clustering.labels)
            _write_table(edges, folder / "gene_group_edges.csv")
            _write_table(groups, folder / "gene_groups.csv")
            _write_table(coexpression_by_cluster(res.clustering.assignments(), edges), folder / "coexpression.csv")
        _write_figure(gp.dendrogram_heatmap(res, groups, f"Gene clusters ({name})"),
                      folder / "figures" / "dendrogram", args)
        t = res.clustering.table
        print(f"== {name} ({desc}): {res.screen.n_active} of {len(res.screen.table)} perturbations active "
              f"(threshold {res.screen.threshold:.3g}); {len(res.clustering.labels)} clustered into {len(t)} clusters")
        enr = None
        if sets is not None:
            enr = enrich_clusters(res.gene_lists(), res.background, sets)
            _write_table(enr, folder / "enrichment.csv")
            if len(enr):
                _write_figure(gp.enrichment_bars(enr, top=15, title=f"Top enriched terms ({name})"),
                              folder / "figures" / "enrichment", args)
        best = top_terms(enr, n=1) if enr is not None and len(enr) else pd.DataFrame(columns=["cluster", "term"])
        for _, row in t.iterrows():
            terms = best[best["cluster"] == row["cluster"]]
            term = "; ".join(f"{r.term} ({r.library}, adj. p {r.adjusted_p_value:.2g})" for r in terms.itertuples())
            p = "n/a" if pd.isna(row["p_value"]) else f"{row['p_value']:.3g}"
            print(f"  cluster {row['cluster']:>2}  size {row['size']:>3}  p {p:>7}"
                  + ("  *" if row["significant"] else "   ") + (f"  {term}" if term else ""))
    print(f"wrote tables and figures to {out}", file=sys.stderr)
    return 0


def _retrieve(args: argparse.Namespace) -> int:
    from ..analysis.retrieval import evaluate_retrieval, paired_scores, query
    from ..plots import genes as gp

    _apply_recipe(args)
    pairs_col = args.pairs_col or (None if args.gene_col or args.target_col else args.annotation_col)
    if not args.gene_col and not args.target_col and not pairs_col:
        raise CpDistillerError("name --gene-col, --target-col and/or --pairs-col: the metadata that define "
                               "known pairs.")
    embs, desc = load_pair(args)
    out = Path(args.out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    res = evaluate_retrieval(embs, args.gene_col, args.target_col, args.symbol_sep, args.null_size, args.seed,
                             annotation_col=pairs_col)
    for key in ("summary", "activity", "shared_gene", "pairs"):
        _write_table(res[key], out / f"retrieval_{key}.csv")
    _write_figure(gp.fraction_retrieved_bars(res["summary"]), out / "figures" / "fraction_retrieved", args)
    if "uncorrected" in embs and len(embs) > 1 and not res["activity"].empty:
        from ..plots.scores import map_scatter

        act = {m: t for m, t in res["activity"].groupby("method")}
        if len(act) > 1:
            _write_figure(map_scatter(act), out / "figures" / "map_scatter", args)
        _write_table(paired_scores(res["activity"], "perturbation"), out / "map_corrected_vs_uncorrected.csv")
    print(f"== retrieval ({desc})")
    with pd.option_context("display.width", 160, "display.max_colwidth", 60):
        print(res["summary"].to_string(index=False))
    for name in args.query or []:
        for method, emb in embs.items():
            q = query(emb, name, args.gene_col, args.target_col, args.symbol_sep, args.top)
            safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
            _write_table(q, out / f"query_{safe}_{method}.csv")
            print(f"-- {name} ({method}): " + ", ".join(
                f"{r.perturbation}{'*' if r.known_pair else ''} {r.cosine_similarity:.2f}" for r in q.head(10).itertuples()))
    print(f"wrote tables and figures to {out}", file=sys.stderr)
    return 0


def _apply_recipe(args: argparse.Namespace) -> None:
    """Fill --gene-col / --target-col / --symbol-sep from --recipe where the user did not set them."""
    from ..analysis.retrieval import RECIPES

    if not args.recipe:
        return
    preset = RECIPES[args.recipe]
    args.gene_col = args.gene_col or preset["gene_col"]
    args.target_col = args.target_col or preset["target_col"]
    if args.symbol_sep == "|":
        args.symbol_sep = preset["sep"]


def _download(args: argparse.Namespace) -> int:
    from ..analysis.enrichment import DEFAULT_LIBRARIES, download_library, read_gmt

    for name in args.libraries or DEFAULT_LIBRARIES:
        path = download_library(name, out_dir=args.out, base_url=args.enrichr_url, force=args.force)
        print(f"{name}: {len(read_gmt(path))} gene sets -> {path}")
    return 0
