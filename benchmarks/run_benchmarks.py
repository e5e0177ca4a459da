"""Run `cpdistiller benchmark` on the demo simulator and on every ../shared/data set.

    .venv/bin/python benchmarks/run_benchmarks.py [--epochs N] [--methods all] [--only demo,lincs_a549]
                                                  [--seeds 0,1,2] [--work-dir DIR] [--data DIR]

Each data set goes through the same command line a user would type (`cpdistiller benchmark …`, with
the column mapping it needs): once for the reference methods (uncorrected first), then once per seed
and cpDistiller variant (``defaults``; ``paper`` = ``CpDistillerConfig.paper()``, the published method;
``controls`` = the negative-control family). ``--reuse-references`` keeps the reference methods' rows of
the last full run and re-runs only cpDistiller. The scorecard is the field protocol (Arevalo et al. 2024) plus the position
score (docs/metrics.md). Full outputs go to ``--work-dir`` (default /tmp/cpdistiller_benchmarks);
``benchmarks/results/<dataset>.csv`` holds every metric of every run (uncorrected first),
``<dataset>_scores.csv`` the tidy scores, and ``summary.md`` the headline tables with the difference
to uncorrected and cpDistiller's mean ± sd over seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cpdistiller_core.benchmark import to_markdown  # noqa: E402
from cpdistiller_core.cli import main as cli_main  # noqa: E402
from cpdistiller_core.config import CpDistillerConfig  # noqa: E402
from cpdistiller_core.metrics import Scorecard, format_comparison  # noqa: E402
from cpdistiller_core.settings import paper_values  # noqa: E402

# cpDistiller variants: name -> CpDistillerConfig overrides (written to a --config file)
VARIANTS: dict[str, dict] = {
    "defaults": {},
    "paper": paper_values(CpDistillerConfig),  # every departure in docs/model.md at the paper's value
    # The negative-control departures (the previous default family): sphering on the controls,
    # discriminators trained on the controls and hiding batch/position from every well.
    "controls": {"sphering": "auto", "adversary_wells": "auto", "adversary_encoder": "all", "min_steps": 0},
}

RESULTS = REPO / "benchmarks" / "results"
DATA = Path(os.environ.get("CPDISTILLER_SHARED_DATA", REPO.parent / "shared" / "data"))

CELL_INJURY = ["--plate-col", "Plate", "--well-col", "Well",
               "--batch-col", "Experimental Condition [Experimental Batch]",
               "--perturbation-col", "Compound Name", "--control-col", "Control Type", "--negative", "Negative",
               "--positive", "Positive", "--annotation-col", "injury_type"]

# name -> (inputs, extra CLI arguments, description)
DATASETS: dict[str, tuple[list[str], list[str], str]] = {
    "demo": (["demo"], [],
             "built-in simulator, 12 plates x 384 wells in 3 batches, raw scale -> MAD-normalised; ground truth "
             "for kNN overlap; gene-compound pairs from Metadata_Symbol / Metadata_target"),
    "cell_injury": (["cell_injury/fs_plate_holdout.csv.gz"], CELL_INJURY + ["--no-normalize"],
                    "9 plates, 2 batches, already normalised (feature selection + z-score only); annotation "
                    "injury_type"),
    "cmqtl_crispri": (["cmqtl_crispri/cmQTL_CRISPRi_plate1_normalized_feature_select_batch.csv.gz",
                       "cmqtl_crispri/MT_rerun_20220919_normalized_feature_select_batch.csv.gz"],
                      ["--batch-from-file", "--perturbation-col", "Metadata_sample_id",
                       "--control-col", "Metadata_target_gene", "--negative", "CONTROL",
                       "--annotation-col", "Metadata_target_gene", "--sister-col", "Metadata_target_gene",
                       "--no-normalize"],
                      "same layout imaged in 2 batches (one file each, 362 shared features), already normalised; "
                      "perturbation = sample (2 guides per gene), sister pairs = guides of one gene"),
    "varchamp_b14": ([f"varchamp_b14/2025_01_28_B14A7A8P2_T{i}_augmented.csv.gz" for i in range(1, 5)],
                     ["--perturbation-col", "Metadata_gene_allele", "--control-col", "Metadata_node_type",
                      "--negative", "NC", "--positive", "PC,cPC", "--annotation-col", "Metadata_symbol",
                      "--same-well-replicates"],
                     "4 technical-replicate plates of ONE layout, raw features -> plate-wise MAD normalisation; "
                     "replicates share their well position (activity uses same-well replicates: position "
                     "effects can inflate the uncorrected mAP), annotation = gene symbol"),
    "lincs_a549": (["lincs_a549/SQ00015054_normalized_feature_select.csv.gz"], ["--no-normalize"],
                   "1 plate, already normalised; perturbation = compound (doses as replicates), annotation = MOA; "
                   "plate/batch metrics and well-position correction not applicable"),
}


def _bench(name: str, args: argparse.Namespace, methods: str, seed: int, tag: str,
           config: dict | None = None) -> tuple[int, Path, list[str]]:
    inputs, extra, _ = DATASETS[name]
    paths = inputs if inputs == ["demo"] else [str(args.data / p) for p in inputs]
    out = args.work_dir / name / tag
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    cmd = ["benchmark", *paths, "--methods", methods, "--out", str(out), "--seed", str(seed),
           "--null-size", str(args.null_size), "--no-figures", *extra]
    if args.epochs and "cpDistiller" in methods:
        cmd += ["--epochs", str(args.epochs)]
    if tag != "references":  # the demo's truth row is scored once, with the references
        cmd += ["--no-truth-row"]
    if config:
        cfg_path = out / "cpdistiller_config.json"
        cfg_path.write_text(json.dumps(config))
        cmd += ["--config", str(cfg_path)]
    print(f"\n### {name} [{tag}]: cpdistiller {' '.join(cmd)}", flush=True)
    return cli_main(cmd), out, cmd


def _split_methods(methods: str) -> tuple[str, bool]:
    from cpdistiller_core.benchmark import parse_methods

    names = parse_methods(methods)
    refs = [m for m in names if m != "cpDistiller"]
    if "uncorrected" not in refs:
        refs.insert(0, "uncorrected")  # the reference of every Δ
    return ",".join(refs), "cpDistiller" in names


def run_one(name: str, args: argparse.Namespace) -> dict:
    """References once (seed ``seeds[0]``), then cpDistiller per variant and seed; one combined table."""
    desc = DATASETS[name][2]
    t0 = time.perf_counter()
    refs, with_cpd = _split_methods(args.methods)
    saved = _saved_references(name) if args.reuse_references else None
    runs = [] if saved is not None else [("references", args.seeds[0], None, refs)]
    if with_cpd:
        runs += [(f"{v}_s{s}", s, cfg, "cpDistiller") for v, cfg in VARIANTS.items() if v in args.variants
                 for s in args.seeds]
    scores, status, commands = [], {}, []
    if saved is not None:
        scores.append(saved["scores"])
        status.update(saved["status"])
        commands += saved["commands"]
    for tag, seed, cfg, methods in runs:
        rc, out, cmd = _bench(name, args, methods, seed, tag, cfg)
        commands.append("cpdistiller " + " ".join(cmd))
        if not (out / "scores.csv").exists():
            status[tag] = f"failed (exit {rc})"
            continue
        sc = pd.read_csv(out / "scores.csv", keep_default_na=False, na_values=[""])
        run_status = json.loads((out / "scores.json").read_text()).get("status", {})
        if tag != "references":
            sc["method"] = sc["method"].replace({"cpDistiller": f"cpDistiller[{tag}]"})
            run_status = {f"cpDistiller[{tag}]": v for k, v in run_status.items() if k == "cpDistiller"}
        status.update(run_status)
        scores.append(sc)
    wall = time.perf_counter() - t0
    if not scores:
        return {"name": name, "desc": desc, "rc": 1, "wall": wall, "table": None}
    card = Scorecard(pd.concat(scores, ignore_index=True))
    table = card.wide(with_runtime=False)
    order = [m for m in table.index if m == "uncorrected"] + [m for m in table.index if m != "uncorrected"]
    table = table.reindex(order)
    table.insert(0, "status", [status.get(m, "ok") for m in table.index])
    table.index.name = "method"
    RESULTS.mkdir(parents=True, exist_ok=True)
    table.to_csv(RESULTS / f"{name}.csv")
    card.scores.to_csv(RESULTS / f"{name}_scores.csv", index=False)
    info = {"wall_s": round(wall, 1), "commands": commands, "commit": _commit(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "methods": args.methods,
            "epochs": args.epochs, "seeds": args.seeds, "variants": args.variants, "null_size": args.null_size,
            "failed": {k: v for k, v in status.items() if v != "ok"}}
    if saved is not None:
        info["references_from"] = saved["provenance"]
    (RESULTS / f"{name}_run.json").write_text(json.dumps(info, indent=1) + "\n")
    return {"name": name, "desc": desc, "rc": 0, "wall": wall, "table": table, "scores": card.scores, "info": info}


def _saved_references(name: str) -> dict:
    """The reference methods' rows of a data set's last full run, to re-run only cpDistiller against them."""
    saved = load_saved(name)
    if saved["scores"] is None or not saved["info"]:
        raise SystemExit(f"--reuse-references: no saved results for {name} in {RESULTS}")
    scores = saved["scores"]
    scores = scores[~scores["method"].astype(str).str.startswith("cpDistiller")]
    info = saved["info"]
    failed = info.get("failed", {})
    methods = scores["method"].unique()
    return {"scores": scores, "status": {m: failed.get(m, "ok") for m in methods},
            "commands": [c for c in info.get("commands", []) if "--methods cpDistiller" not in c],
            "provenance": info.get("references_from") or {"date": info.get("date"), "commit": info.get("commit")}}


def _commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout.strip()
        return head + (" (+ uncommitted changes in the working tree)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def load_saved(name: str) -> dict:
    """A data set's last results from benchmarks/results (for --summary-only)."""
    path = RESULTS / f"{name}.csv"
    info_path = RESULTS / f"{name}_run.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    table = pd.read_csv(path, index_col=0) if path.exists() else None
    spath = RESULTS / f"{name}_scores.csv"
    scores = pd.read_csv(spath, keep_default_na=False, na_values=[""]) if spath.exists() else None
    return {"name": name, "desc": DATASETS[name][2], "rc": 0 if table is not None else None,
            "wall": info.get("wall_s", float("nan")), "table": table, "scores": scores, "info": info}


def seed_table(scores: pd.DataFrame) -> pd.DataFrame:
    """cpDistiller variants: mean ± sd over seeds of the aggregates and their mean Δ to uncorrected."""
    agg = scores[scores["category"] == "aggregate"].pivot_table(index="method", columns="metric", values="value",
                                                                 aggfunc="first")
    if "uncorrected" not in agg.index:
        return pd.DataFrame()
    rows = {}
    for variant in VARIANTS:
        names = [m for m in agg.index if m.startswith(f"cpDistiller[{variant}_s")]
        if not names:
            continue
        sub = agg.loc[names]
        row = {"seeds": len(names)}
        for col in ("technical", "biological", "overall", "position"):
            if col in sub.columns:
                row[col] = f"{sub[col].mean():.3f} ± {sub[col].std(ddof=1) if len(sub) > 1 else 0:.3f}"
                row[f"Δ{col}"] = f"{sub[col].mean() - agg.loc['uncorrected', col]:+.3f}"
        rows[f"cpDistiller ({variant})"] = row
    return pd.DataFrame.from_dict(rows, orient="index")


def _references_note(runs: list[dict]) -> str:
    origins = {json.dumps(r["info"]["references_from"], sort_keys=True) for r in runs
               if r.get("info", {}).get("references_from")}
    if not origins:
        return ""
    dates = sorted({json.loads(o).get("date") or "?" for o in origins})
    return (f"; their rows are kept from the full run of {', '.join(dates)} (`--reuse-references`; "
            "`references_from` in `<dataset>_run.json`), only cpDistiller was re-run")


def summary_markdown(runs: list[dict], args: argparse.Namespace, date: str | None = None) -> str:
    date = date or time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = ["# Benchmark results", "",
             f"Generated by `benchmarks/run_benchmarks.py` on {date} "
             f"({platform.machine()}, {os.cpu_count()} CPUs visible, CPU only; methods `{args.methods}`, "
             f"cpDistiller epochs: {args.epochs or 'config default'}, seeds {args.seeds}, copairs null size "
             f"{args.null_size}).",
             "",
             "All scores in [0, 1], higher is better; `–` = missing (the reason is in `<dataset>_scores.csv`). "
             "**technical / biological / overall follow Arevalo et al. 2024** (technical: silhouette of batch, "
             "graph connectivity, kBET, iLISI; biological: cLISI, mAP vs negative controls, mAP vs "
             "non-replicates, Leiden NMI/ARI against perturbations, perturbation silhouette; overall = 0.4 "
             "technical + 0.6 biological). **position** is the Cell Painting position score beside it "
             "(row/column effects among controls and within perturbations, same-position control test, "
             "neighbour preservation vs the uncorrected profiles, control collapse). Uncorrected is the first "
             "row; in brackets the difference to it. Definitions: `docs/metrics.md`. Every metric: "
             "`<dataset>.csv`; how each was run: `<dataset>_run.json`.", "",
             "Read with these caveats:", "",
             "- cpDistiller rows are `cpDistiller[<variant>_s<seed>]`: `defaults` (the engine's defaults: the "
             "embedding is the model input minus the technical shift the conditional decoder learnt; a row or "
             "column tied to the treatments is not given to the discriminators, and with negative controls on "
             "2+ plates the controls' additive effect of it is removed from the input instead; every departure "
             "from the paper is in "
             "`docs/model.md`), `paper` (`CpDistillerConfig.paper()`: the published settings, the posterior "
             "mean as embedding) and `controls` (the negative-control family: sphering and discriminators on "
             "the controls, batch/position hidden from every well). Reference methods ran once (seed "
             f"{args.seeds[0]}){_references_note(runs)}.",
             "- Position metrics among negative controls are partly in-sample for methods fitted on the controls "
             "(sphering, negcon_linear, jump_chain, cpDistiller's discriminators); the within-perturbation "
             "(`*_trt`) rows and the same-position test are the checks no method is fitted on.",
             "- `well_position` and `jump_chain` on data whose plates share one layout (varchamp_b14, "
             "cmqtl_crispri) subtract the perturbation signal along with the position effect.",
             "- Small sets (lincs_a549: one plate; cmqtl_crispri: 10 samples) give noisy metrics; differences "
             "of a few hundredths are not meaningful.",
             "- `truth` (demo only) is the simulator's technical-free truth, preprocessed as the measured "
             "profiles, then PCA-50: what removing every technical effect would score. A row above it on a "
             "measure scores more than perfect correction there (sphering's whitening, on the mAP-based "
             "measures).",
             "- Run times are wall-clock on the 2-core CPU.", ""]
    for r in runs:
        lines += [f"## {r['name']}", "", r["desc"], ""]
        if r["table"] is None or r.get("scores") is None:
            lines += [f"**benchmark failed** (exit code {r['rc']}); see the log.", ""]
            continue
        t = r["table"]
        card = Scorecard(r["scores"])
        comp = card.comparison("uncorrected")
        comp = comp.reindex([m for m in t.index if m in comp.index])
        lines += [format_comparison(comp), ""]
        failed = t[t["status"].astype(str) != "ok"] if "status" in t.columns else t.iloc[:0]
        for m, row in failed.iterrows():
            lines.append(f"- {m}: {row['status']}")
        seeds = seed_table(r["scores"])
        if len(seeds):
            lines += ["", "cpDistiller over seeds (mean ± sd; Δ = mean − uncorrected):", "", to_markdown(seeds)]
        what = ("the cpDistiller runs + scoring; reference rows reused" if r.get("info", {}).get("references_from")
                else "all methods + scoring")
        lines += ["", f"wall time for the whole data set ({what}): {r['wall']:.0f} s", ""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default="all")
    ap.add_argument("--epochs", type=int, default=None, help="cpDistiller epochs (default: the config's)")
    ap.add_argument("--only", help="comma-separated subset of: " + ", ".join(DATASETS))
    ap.add_argument("--work-dir", type=Path, default=Path("/tmp/cpdistiller_benchmarks"))
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--results", type=Path, default=RESULTS,
                    help="where the tables and summary go (default benchmarks/results; use another folder for "
                         "smoke runs)")
    ap.add_argument("--seeds", default="0,1,2", help="cpDistiller seeds, comma-separated (default 0,1,2); the "
                    "reference methods run with the first")
    ap.add_argument("--variants", default=",".join(VARIANTS),
                    help=f"cpDistiller variants, comma-separated from {', '.join(VARIANTS)}")
    ap.add_argument("--null-size", type=int, default=10000)
    ap.add_argument("--reuse-references", action="store_true",
                    help="keep the reference methods' rows from the saved benchmarks/results tables and re-run "
                         "only the cpDistiller variants")
    ap.add_argument("--summary-only", action="store_true",
                    help="only rebuild summary.md from the saved benchmarks/results tables")
    args = ap.parse_args(argv)
    globals()["RESULTS"] = args.results  # every writer below uses the module-level RESULTS
    args.seeds = [int(x) for x in str(args.seeds).split(",") if x.strip()]
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if not args.seeds or any(v not in VARIANTS for v in args.variants):
        ap.error(f"--seeds needs at least one seed; --variants from {', '.join(VARIANTS)}")
    names = [n.strip() for n in args.only.split(",")] if args.only else list(DATASETS)
    unknown = [n for n in names if n not in DATASETS]
    if unknown:
        ap.error(f"unknown data set(s) {unknown}")
    if args.summary_only:
        runs = [load_saved(n) for n in names]
        info = next((r["info"] for r in runs if r["info"]), {})
        for key in ("methods", "epochs", "seeds", "null_size"):
            if key in info:
                setattr(args, key, info[key])
        (RESULTS / "summary.md").write_text(summary_markdown(runs, args, info.get("date")))
        return 0
    if any(n != "demo" for n in names) and not args.data.is_dir():
        ap.error(f"shared data not found at {args.data}")
    runs = [run_one(n, args) for n in names]
    if not args.only:
        (RESULTS / "summary.md").write_text(summary_markdown(runs, args))
    else:  # partial run: write a partial summary next to the others
        (RESULTS / f"summary_{'_'.join(names)}.md").write_text(summary_markdown(runs, args))
    return 0 if all(r["table"] is not None for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
