"""Run `cpdistiller benchmark` on the demo simulator and on every ../shared/data set.

    .venv/bin/python benchmarks/run_benchmarks.py [--epochs N] [--methods all] [--only demo,lincs_a549]
                                                  [--work-dir DIR] [--data DIR]

Each data set goes through the same command line a user would type (`cpdistiller benchmark …`, with
the column mapping it needs). Full outputs (scores, per-perturbation mAP, HTML figures) go to
``--work-dir`` (default /tmp/cpdistiller_benchmarks); the comparison tables are copied to
``benchmarks/results/<dataset>.csv`` and summarised in ``benchmarks/results/summary.md``.
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


def run_one(name: str, args: argparse.Namespace) -> dict:
    inputs, extra, desc = DATASETS[name]
    paths = inputs if inputs == ["demo"] else [str(args.data / p) for p in inputs]
    out = args.work_dir / name
    if out.exists():
        shutil.rmtree(out)
    cmd = ["benchmark", *paths, "--methods", args.methods, "--out", str(out), "--seed", str(args.seed),
           "--null-size", str(args.null_size), "--treatment-technical", *extra]
    if args.epochs:
        cmd += ["--epochs", str(args.epochs)]
    print(f"\n### {name}: cpdistiller {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    rc = cli_main(cmd)
    wall = time.perf_counter() - t0
    if rc != 0 or not (out / "comparison.csv").exists():
        return {"name": name, "desc": desc, "rc": rc, "wall": wall, "table": None}
    table = pd.read_csv(out / "comparison.csv", index_col=0)
    RESULTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(out / "comparison.csv", RESULTS / f"{name}.csv")
    shutil.copyfile(out / "scores.csv", RESULTS / f"{name}_scores.csv")
    info = {"wall_s": round(wall, 1), "command": "cpdistiller " + " ".join(cmd), "commit": _commit(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "methods": args.methods,
            "epochs": args.epochs, "seed": args.seed, "null_size": args.null_size}
    (RESULTS / f"{name}_run.json").write_text(json.dumps(info, indent=1) + "\n")
    return {"name": name, "desc": desc, "rc": rc, "wall": wall, "table": table}


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
    return {"name": name, "desc": DATASETS[name][2], "rc": 0 if table is not None else None,
            "wall": info.get("wall_s", float("nan")), "table": table, "info": info}


def summary_markdown(runs: list[dict], args: argparse.Namespace, date: str | None = None) -> str:
    date = date or time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = ["# Benchmark results", "",
             f"Generated by `benchmarks/run_benchmarks.py` on {date} "
             f"({platform.machine()}, {os.cpu_count()} CPUs visible, CPU only; methods `{args.methods}`, "
             f"cpDistiller epochs: {args.epochs or 'config default'}, seed {args.seed}, copairs null size "
             f"{args.null_size}).",
             "",
             "All scores in [0, 1], higher is better; `–` = missing (the reason is in `<dataset>_scores.csv`). "
             "technical / biological = mean of the available metrics of each category; overall = 0.4 technical "
             "+ 0.6 biological. Definitions: `docs/metrics.md`. Full per-metric tables: `<dataset>.csv`; "
             "how each was run: `<dataset>_run.json`.", "",
             "Read with these caveats:", "",
             "- Technical metrics are computed among the negative controls. `sphering` and `negcon_linear` are "
             "*fitted* on those same wells, and cpDistiller (defaults) spheres its input on them and trains "
             "its discriminators on them, so their technical scores are partly in-sample; Harmony and ComBat "
             "do not see the control labels. The `*_trt` columns score the "
             "same effects within perturbations (treatment wells, perturbation means removed), which no "
             "method is fitted on; they are shown but not part of the aggregates.",
             "- Public profiles normalised per plate against their controls have controls centred per plate: "
             "plate/batch metrics are near 1 before any correction (cell_injury, lincs_a549).",
             "- `well_position` on data whose plates share one layout (varchamp_b14, cmqtl_crispri) subtracts "
             "the perturbation signal along with the position effect; its scores there are not a fair "
             "verdict on position correction.",
             "- Small sets (lincs_a549: 24 controls on one plate; cmqtl_crispri: 5 sister pairs, 10 samples) "
             "give noisy metrics; differences of a few hundredths are not meaningful.",
             "- Run times are wall-clock on the 2-core CPU (cpDistiller trains under bf16 autocast there).", ""]
    key = ["status", "runtime_s", "technical", "biological", "overall", "activity_map", "activity_fraction",
           "consistency_map", "variance[row]", "variance[column]", "leakage[row]", "leakage[column]",
           "variance_trt[row]", "variance_trt[column]", "leakage_trt[row]", "leakage_trt[column]"]
    for r in runs:
        lines += [f"## {r['name']}", "", r["desc"], ""]
        if r["table"] is None:
            lines += [f"**benchmark failed** (exit code {r['rc']}); see the log.", ""]
            continue
        t = r["table"]
        if "overall" in t.columns and t["overall"].notna().any():
            ranked = t["overall"].dropna().sort_values(ascending=False)
            line = f"Best overall: **{ranked.index[0]}** ({ranked.iloc[0]:.3f})"
            if "cpDistiller" in ranked.index:
                pos = list(ranked.index).index("cpDistiller") + 1
                line += f"; cpDistiller ranks {pos} of {len(ranked)} ({ranked['cpDistiller']:.3f})"
            lines += [line + ".", ""]
        cols = [c for c in key if c in t.columns]
        extra = [c for c in t.columns if c.startswith(("fraction_retrieved", "knn_overlap"))]
        lines += [to_markdown(t[cols + extra]), "",
                  f"wall time for the whole data set (all methods + scoring): {r['wall']:.0f} s", ""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default="all")
    ap.add_argument("--epochs", type=int, default=None, help="cpDistiller epochs (default: the config's)")
    ap.add_argument("--only", help="comma-separated subset of: " + ", ".join(DATASETS))
    ap.add_argument("--work-dir", type=Path, default=Path("/tmp/cpdistiller_benchmarks"))
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--null-size", type=int, default=10000)
    ap.add_argument("--summary-only", action="store_true",
                    help="only rebuild summary.md from the saved benchmarks/results tables")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.only.split(",")] if args.only else list(DATASETS)
    unknown = [n for n in names if n not in DATASETS]
    if unknown:
        ap.error(f"unknown data set(s) {unknown}")
    if args.summary_only:
        runs = [load_saved(n) for n in names]
        info = next((r["info"] for r in runs if r["info"]), {})
        for key in ("methods", "epochs", "seed", "null_size"):
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
