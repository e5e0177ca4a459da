"""Where does the biology go? Ablation of cpDistiller's settings against uncorrected and sphering.

    .venv/bin/python benchmarks/ablation.py [--only demo,cell_injury] [--seeds 0,1,2]
                                            [--variants default,paper,...] [--out benchmarks/results/ablation.csv]

Each data set is loaded and preprocessed once (the same column mappings as ``run_benchmarks.py``),
then scored for: the uncorrected PCA, negative-control sphering, and cpDistiller with each variant
(a named set of ``CpDistillerConfig`` overrides, below). Every row is scored on several measures at
once, never one number: the field-standard scorecard (``metrics.evaluate``: technical / biological /
overall), neighbour preservation among treatment wells against the uncorrected profiles, control
collapse, replicate mAP, annotation consistency, and the retrieval measures each data set supports
(gene–compound and sister fraction retrieved, kNN overlap with the simulator's truth).

Rows are appended to ``--out`` as they finish, so a long run can be read (and resumed) while it goes.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from run_benchmarks import DATASETS  # noqa: E402

from cpdistiller_core import CpDistillerConfig, baselines, metrics  # noqa: E402
from cpdistiller_core.benchmark import run_cpdistiller  # noqa: E402
from cpdistiller_core.cli import build_parser  # noqa: E402
from cpdistiller_core.cli.evaluate import _eval_config, _load_benchmark_data, _pairs  # noqa: E402
from cpdistiller_core.datasets import make_demo_screen  # noqa: E402
from cpdistiller_core.preprocess import PreprocessConfig, preprocess  # noqa: E402
from cpdistiller_core.settings import paper_values  # noqa: E402

DATA = Path(os.environ.get("CPDISTILLER_SHARED_DATA", REPO.parent / "shared" / "data"))
PAPER = {"sphering": "none", "adversary_wells": "all", "min_steps": 0, "neighbor_space": "input"}

# name -> CpDistillerConfig overrides. "default" is whatever config.py says today.
# Variants that name neither ``epochs`` nor ``tied_effects`` follow the defaults of stop 17 (100 epochs; a
# position effect tied to the treatments left uncorrected); rows in results/*.csv written before trained
# 50 epochs and corrected every effect.
VARIANTS: dict[str, dict] = {
    "default": {},
    "default50": {"epochs": 50, "tied_effects": "correct"},  # the default of stop 16: 50 epochs everywhere
    # stop 17's first default: 100 epochs, tied effects corrected with at most 50 epochs
    "default_tied_correct": {"tied_effects": "correct"},
    "paper": PAPER,
    "paper+neutral": {**PAPER, "triplet_controls": "neutral"},
    "neutral": {"triplet_controls": "neutral"},
    "no_triplet": {"w_con_per_feature": 0.0},
    "triplet/10": {"w_con_per_feature": 1 / 350},
    "dis/10": {"w_dis_per_feature": 1 / 350},
    "dis*10": {"w_dis_per_feature": 10 / 35},  # a stronger adversary: does it remove strong gradients?
    "default+cond": {"decoder_covariates": "effects"},
    # The default before the conditional decoder became one (stop 16): mining in the negcon_linear
    # space, the paper's decoder. The rows below that name it were measured on it.
    "decoder_none": {"decoder_covariates": "none"},
    "dis*3": {"decoder_covariates": "none", "w_dis_per_feature": 3 / 35},
    # The discriminators (and the triplet head) read the posterior mean, the reported embedding, not
    # the sampled z whose noise can hide position from them.
    "adv_mean": {"decoder_covariates": "none", "adversary_view": "mean"},
    "adv_mean+trip_mean": {"decoder_covariates": "none", "adversary_view": "mean", "triplet_view": "mean"},
    "no_adversary": {"decoder_covariates": "none", "w_dis_per_feature": 0.0},
    "no_triplet@decoder_none": {"decoder_covariates": "none", "w_con_per_feature": 0.0},
    "neutral@decoder_none": {"decoder_covariates": "none", "triplet_controls": "neutral"},
    "mnn_only@decoder_none": {"decoder_covariates": "none", "triplet_knn_share": 0.0},
    "neutral+mnn_only": {"decoder_covariates": "none", "triplet_controls": "neutral", "triplet_knn_share": 0.0},
    # with the conditional decoder, does a moderately stronger adversary then remove position?
    "cond+dis*3": {"decoder_covariates": "effects", "w_dis_per_feature": 3 / 35},
    # positives only from the MNN set (partners across technical levels), none from wells that share them
    "mnn_only": {"triplet_knn_share": 0.0},
    # neighbours mined after removing the negative controls' additive batch/row/column model
    "mine_ncl": {"neighbor_space": "negcon_linear"},
    "mine_ncl+mnn_only": {"neighbor_space": "negcon_linear", "triplet_knn_share": 0.0},
    "mnn_only+cond": {"triplet_knn_share": 0.0, "decoder_covariates": "effects"},
    "mnn_only+dis*10": {"triplet_knn_share": 0.0, "w_dis_per_feature": 10 / 35},
    "mnn_only+cond+dis*10": {"triplet_knn_share": 0.0, "decoder_covariates": "effects", "w_dis_per_feature": 10 / 35},
    "confusion": {"adversary_objective": "confusion"},  # encoder pulled to uniform, not gradient-reversed  # decoder told batch/row/column: z need not carry them
    "ridge1": {"sphering_regularization": 1.0},
    "neutral+ridge1": {"triplet_controls": "neutral", "sphering_regularization": 1.0},
    "neutral+ridge0.1": {"triplet_controls": "neutral", "sphering_regularization": 0.1},
    "neutral+min_steps0": {"triplet_controls": "neutral", "min_steps": 0},
    "cond": {"triplet_controls": "neutral", "decoder_covariates": "effects"},
    "cond+batch": {"triplet_controls": "neutral", "decoder_covariates": "batch"},
    "paper+cond": {**PAPER, "triplet_controls": "neutral", "decoder_covariates": "effects"},
    "cond+ridge1": {"triplet_controls": "neutral", "decoder_covariates": "effects",
                    "sphering_regularization": 1.0},
    "hide0": {"triplet_controls": "neutral", "adversary_encoder": "all", "min_steps": 0},
    "hide0+cond": {"triplet_controls": "neutral", "adversary_encoder": "all", "min_steps": 0,
                   "decoder_covariates": "effects"},
    "hide0+ridge1": {"triplet_controls": "neutral", "adversary_encoder": "all", "min_steps": 0,
                     "sphering_regularization": 1.0},
    "nosph_hide0": {"sphering": "none", "adversary_encoder": "all", "min_steps": 0},
    "nosph_hide0+paper_triplets": {"sphering": "none", "adversary_encoder": "all", "min_steps": 0,
                                   "triplet_controls": "paper"},
    "nosph_neg0": {"sphering": "none", "min_steps": 0},
    "neutral0": {"triplet_controls": "neutral", "min_steps": 0},
    "cond0": {"triplet_controls": "neutral", "decoder_covariates": "effects", "min_steps": 0},
    "cond0+ridge1": {"triplet_controls": "neutral", "decoder_covariates": "effects", "min_steps": 0,
                     "sphering_regularization": 1.0},
    "cond0+ridge0.1": {"triplet_controls": "neutral", "decoder_covariates": "effects", "min_steps": 0,
                       "sphering_regularization": 0.1},
    "ridge0.1": {"sphering_regularization": 0.1},
    "no_sphering": {"sphering": "none"},
    "unsphered_mining": {"neighbor_space": "unsphered"},
    "all_wells_adv": {"adversary_wells": "all"},
    "min_steps0": {"min_steps": 0},
    "latent16": {"latent_dim": 16},
    "margin1": {"triplet_margin": 1.0},
    "no_pair_grad": {"pair_gradients": False},  # ~25% less time per step: does it cost biology? (yes)
    # Post-processing: the "default" embedding, then ZCA sphering on its negative controls (the field's
    # last step). In 50 dimensions the controls span the space, unlike sphering the input's features.
    "default+sphere_out": {"_post": "sphere", "_base": "default"},
    # An embedding minus the additive batch/row/column effects a ridge model fits on its negative
    # controls (the negcon_linear reference's model, in the 50 latent dimensions): no whitening.
    "default+ncl_out": {"_post": "negcon_linear", "_base": "default"},
    "decoder_none+ncl_out": {"_post": "negcon_linear", "_base": "decoder_none"},
    # Stop 17, on the conditional-decoder default: with the decoder told the levels, the reconstruction
    # no longer needs position in z, so reading the mean / a stronger adversary / longer training may now pay.
    "cond+adv_mean": {"adversary_view": "mean"},
    "cond+adv_mean+trip_mean": {"adversary_view": "mean", "triplet_view": "mean"},
    # rows measured before epochs=100 became the default: the fixed length, no cap for tied layouts
    "cond+epochs100": {"epochs": 100, "tied_layout_epochs": None},
    "cond+epochs200": {"epochs": 200, "tied_layout_epochs": None},
    # a position effect tied to the treatments left uncorrected (lincs_a549, cell_injury, sim/rows_locked:
    # the row; varchamp_b14: row and column)
    "no_row": {"_effects": ("batch", "column")},
    "no_position": {"_effects": ("batch",)},
    "no_column": {"_effects": ("batch", "row")},  # stop 20: cell_injury and lincs_a549 dose by column
    # discriminators learn from the negative controls (frozen, applied to every well): the rest follows
    # "auto" (controls as ordinary wells in the triplets, the paper's decoder)
    "negadv": {"adversary_wells": "negcon"},
    "negadv+epochs100": {"adversary_wells": "negcon", "epochs": 100, "tied_layout_epochs": None},
    # stop 18: a tied position effect's discriminator learns from the negative controls (frozen, applied
    # to every well) while the others learn from every well; then with controls as ordinary triplet wells
    "tied_controls": {"tied_effects": "controls"},
    # results/ablation_tied.csv rows "tied_controls+dec" and "tied_controls+neutral+dec" were written before the
    # decoder's "auto" rule left controls-trained effects out: they are "tied_controls+decoder" (+ neutral)
    "tied_controls+neutral": {"tied_effects": "controls", "triplet_controls": "neutral"},
    "tied_controls+decoder+neutral": {"tied_effects": "controls", "decoder_covariates": "effects",
                                      "triplet_controls": "neutral"},
    "tied_controls+epochs50": {"tied_effects": "controls", "epochs": 50},
    "tied_controls+decoder": {"tied_effects": "controls", "decoder_covariates": "effects"},
    "tied_controls+paper_triplets": {"tied_effects": "controls", "triplet_controls": "paper"},
    "default_skip": {"tied_effects": "skip"},
    # the model input minus the controls' additive batch/row/column model (input_correction). Rows
    # "ncl_in_zscored_first" in results/ablation_input_correction.csv come from a first version that
    # subtracted it after the input's z-scoring (commit efcec96)
    "ncl_in": {"input_correction": "negcon_linear"},  # the default of stop 17 (every effect tied: all-wells, 50 epochs)
    "cond+epochs100+dis/3": {"epochs": 100, "tied_layout_epochs": None, "w_dis_per_feature": 1 / 105},
    "cond+epochs100+dis/10": {"epochs": 100, "tied_layout_epochs": None, "w_dis_per_feature": 1 / 350},
    "cond+epochs400": {"epochs": 400},
    "decoder_none+epochs200": {"decoder_covariates": "none", "epochs": 200, "tied_layout_epochs": None},
    "cond+min_steps1000": {"min_steps": 1000},
    "cond+triplet/3": {"w_con_per_feature": 1 / 105},
    "cond+dis/3": {"w_dis_per_feature": 1 / 105},
    "cond+latent16": {"latent_dim": 16},
    "cond+mnn_only": {"triplet_knn_share": 0.0},
    "cond+k_mnn10": {"k_mnn": 10},
    "cond+margin1": {"triplet_margin": 1.0},
    # the embedding = the model input minus the decoder's technical shift, PCA (output="corrected_input")
    "cf": {"output": "corrected_input"},
    "cf+ncl_in": {"output": "corrected_input", "input_correction": "negcon_linear"},
    "cf+epochs50": {"output": "corrected_input", "epochs": 50},
    # Stop 20: the discriminators learn from the negative controls only, so z keeps what sets the
    # treatments at a level apart (cell_injury's columns are its doses) and the decoder's level offsets
    # hold what z may not carry: the controls' shift. The corrected input removes those offsets.
    "cf+negadv": {"output": "corrected_input", "adversary_wells": "negcon", "decoder_covariates": "effects"},
    "cf+negadv+same": {"output": "corrected_input", "adversary_wells": "negcon", "adversary_encoder": "same",
                       "decoder_covariates": "effects"},
    # stop 21: a layout that ties every corrected effect to the treatments (varchamp_b14: same-well replicates,
    # one batch). The controls' additive effects removed first, then the tied effects left to the controls'
    # discriminators, or to no discriminator at all.
    "no_input_correction": {"input_correction": "none"},  # the default before input_correction "auto"
    "ncl_in+tied_controls": {"input_correction": "negcon_linear", "tied_effects": "controls"},
    # the controls' additive model of the tied effects only (the ones "skip" leaves out; all when all are tied)
    "tied_in": {"input_correction": "tied"},
    "ncl_in+no_adversary": {"input_correction": "negcon_linear", "w_dis_per_feature": 0.0},
    "cf+no_adversary": {"w_dis_per_feature": 0.0},
    # every departure at the paper's value (``CpDistillerConfig.paper()``, what ``--paper`` runs); "paper"
    # above is the paper's settings of issue #12's first rounds, before the later departures existed
    "paper_settings": paper_values(CpDistillerConfig),
}


# The simulator grid: one knob at a time around the demo's settings (10 % controls, 3 batches,
# position effects x1, random layouts). "locked" puts every perturbation at one position on every plate.
SIM_GRID: dict[str, dict] = {
    "sim/base": {},
    "sim/negcon5": {"negcon_fraction": 0.05},
    "sim/negcon25": {"negcon_fraction": 0.25},
    "sim/negcon50": {"negcon_fraction": 0.5},
    "sim/batches1": {"n_batches": 1, "plates_per_batch": 6},
    "sim/batches6": {"n_batches": 6, "plates_per_batch": 1},
    "sim/position0.5": {"row_effect": 0.4, "column_effect": 0.4, "edge_effect": 0.4},
    "sim/position3": {"row_effect": 2.4, "column_effect": 2.4, "edge_effect": 2.4},
    "sim/locked": {"n_layouts": 1},
    "sim/locked_position3": {"n_layouts": 1, "row_effect": 2.4, "column_effect": 2.4, "edge_effect": 2.4},
    # a treatment's wells side by side in one row (dose series / replicate strips, as in lincs_a549 and
    # cell_injury, where 93 % and 99 % of replicate pairs share a row): replicates share their row effect
    "sim/rows": {"replicates_in_row": True},
    "sim/rows_locked": {"replicates_in_row": True, "n_layouts": 1},
    # ... and each treated well's dose set by its column (cell_injury's layout): the truth keeps the dose
    "sim/doses": {"replicates_in_row": True, "dose_by_column": True},
    # stop 21: one plate map, one batch, each treated well its own perturbation: replicates only across plates,
    # in the same well (varchamp_b14), so row and column are both tied and no other effect remains
    "sim/same_well": {"n_layouts": 1, "n_batches": 1, "plates_per_batch": 6, "same_well_replicates": True},
}
SIM_BASE = {"seed": 1, "n_batches": 3, "plates_per_batch": 2}  # 2,304 wells: the grid stays affordable on 2 cores


# data set -> its technical-free truth preprocessed exactly as the measured profiles (the same per-plate
# normalisation, kept features and z-score): the PCA of it is what a perfect correction would give.
ORACLE: dict = {}


def load(name: str, args: argparse.Namespace, demo: dict | None = None):
    """(preprocessed profiles, truth or None, pairs dict, eval config) for one data set."""
    if name.startswith("sim"):
        screen = make_demo_screen(**{**SIM_BASE, **SIM_GRID.get(name, {}), **(demo or {})})
        profiles, truth = screen.profiles, screen.truth
        if args.write_truth:
            from cpdistiller_core.io import write_profiles

            folder = args.write_truth / name.replace("/", "_")
            folder.mkdir(parents=True, exist_ok=True)
            write_profiles(profiles, folder / "profiles.parquet")
            write_profiles(truth, folder / "truth.parquet")
            (folder / "params.json").write_text(json.dumps(screen.params, indent=1))
        cli = ["benchmark", "demo", "--out", "/tmp/x", "--null-size", str(args.null_size),
               "--gene-col", "Metadata_Symbol", "--target-col", "Metadata_target"]
        ns = build_parser().parse_args(cli)
    else:
        inputs, extra, _ = DATASETS[name]
        paths = inputs if inputs == ["demo"] else [str(DATA / p) for p in inputs]
        ns = build_parser().parse_args(["benchmark", *paths, "--out", "/tmp/x", "--null-size",
                                        str(args.null_size), *extra])
        profiles, truth, _ = _load_benchmark_data(ns)
    cfg = PreprocessConfig(normalize=None) if ns.no_normalize else PreprocessConfig()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        profiles, report = preprocess(profiles, cfg)
        if truth is not None:
            ORACLE[name] = report.apply(truth)
    ns.treatment_technical = True
    return profiles, truth, _pairs(ns, profiles), _eval_config(ns)


SCORED = ("technical", "biological", "overall", "position", "silhouette_batch[batch]", "kbet[batch]",
          "ilisi[batch]", "graph_connectivity[perturbation]", "activity_map", "nonrep_map", "consistency_map",
          "clisi", "nmi[perturbation]", "pasw", "neighbor_preservation", "control_collapse", "variance[row]",
          "variance[column]", "variance_trt[row]", "variance_trt[column]", "leakage_trt[row]",
          "leakage_trt[column]")


def score(emb, reference, truth, pairs, eval_cfg) -> dict:
    """The field-standard scorecard plus position, retrieval and truth columns (``metrics.evaluate``)."""
    card = metrics.evaluate(emb, method="m", truth=truth, pairs=pairs, config=eval_cfg, baseline=reference)
    wide = card.wide().iloc[0].to_dict()
    row = {k: wide.get(k) for k in SCORED}
    row.update({k: v for k, v in wide.items() if k.startswith(("fraction_retrieved", "knn_overlap"))})
    return row


@functools.cache
def engine_hash() -> str:
    """A hash of the engine's source (``cpdistiller_core/**/*.py``): a cached embedding is only read back
    by the code that made it (an "auto" setting can change meaning without its value changing)."""
    digest = hashlib.sha256()
    for path in sorted((REPO / "cpdistiller_core").rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def config_tag(overrides: dict | None, epochs: int | None) -> str:
    """A short hash of a cpDistiller row's full settings and the engine's code for its cache file name, so
    that a variant whose meaning changed (``default`` after a change of defaults) is trained again, not
    read back."""
    if overrides is None or "_post" in overrides:
        return ""
    settings = CpDistillerConfig(**{k: v for k, v in overrides.items() if not k.startswith("_")}).to_dict()
    extra = {k: v for k, v in overrides.items() if k.startswith("_")}  # e.g. "_effects"
    text = json.dumps({**settings, **extra, "epochs_override": epochs, "engine": engine_hash()}, sort_keys=True,
                      default=str)
    return "_" + hashlib.sha256(text.encode()).hexdigest()[:8]


def post_process(base, how: str) -> np.ndarray:
    """The embedding ``base`` sphered on its negative controls, or minus their additive technical model."""
    if how == "sphere":
        return baselines._sphere(base.X, base.negative_mask, "ZCA", 1e-6)[0].astype("float32")
    from cpdistiller_core.preprocess import negcon_technical_effects
    use, _ = baselines.resolve_effects(base, ("batch", "row", "column"))
    labels = {e: baselines._labels(base, e) for e in use}
    tech, _ = negcon_technical_effects(base.X, labels, base.negative_mask, 1.0)
    return (base.X - tech).astype("float32")


def embedding(name: str, method: str, seed: int, overrides: dict | None, profiles, reference,
              args: argparse.Namespace):
    """The embedding of one row: computed, or read back from ``--embeddings`` (so rows can be re-scored)."""
    from cpdistiller_core.io import read_profiles, write_profiles

    path = args.embeddings / name.replace("/", "_") / \
        f"{method.replace('/', '_')}_seed{seed}{config_tag(overrides, args.epochs)}.parquet" if args.embeddings else None
    if path is not None and path.exists():
        return read_profiles(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if overrides is not None and "_post" in overrides:  # a post-processed embedding of another variant
            base_name = overrides["_base"]
            base = embedding(name, f"cpDistiller[{base_name}]", seed, VARIANTS[base_name], profiles, reference, args)
            emb = base.with_features(post_process(base, overrides["_post"]), base.features)
        elif overrides is not None:
            settings = {**overrides}
            epochs = settings.pop("epochs", args.epochs)  # a variant's own epochs win over --epochs
            effects = settings.pop("_effects", ("batch", "row", "column"))
            emb = run_cpdistiller(profiles, effects, seed=seed, epochs=epochs, **settings)
        elif method == "truth":  # the ceiling: no technical effect at all, the same preprocessing and PCA
            emb = baselines.uncorrected(ORACLE[name])
        elif method == "truth+sphering":  # ... then sphered on its negative controls: what whitening alone adds
            emb = baselines.sphering(ORACLE[name])
        elif method == "harmony":
            emb = baselines.harmony(profiles)
        elif method == "negcon_linear":
            emb = baselines.negcon_linear(profiles)
        else:
            emb = reference if method == "uncorrected" else baselines.sphering(profiles)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_profiles(emb, path)
    return emb


SUMMARY_COLUMNS = ["technical", "biological", "overall", "position", "activity_map", "nonrep_map",
                   "consistency_map", "neighbor_preservation", "control_collapse", "variance_trt[row]",
                   "variance_trt[column]", "fraction_retrieved[gene_compound]", "fraction_retrieved[sister]",
                   "knn_overlap[truth]"]


def summary_markdown(table: pd.DataFrame) -> str:
    """Mean over seeds per data set and method, uncorrected and sphering first, n seeds shown."""
    lines = ["# Ablation: where the biology goes", "",
             "Mean over seeds (n = seeds). Generated by `benchmarks/ablation.py`; column definitions in "
             "`docs/metrics.md`. Uncorrected and negative-control sphering first.", ""]
    for name, part in table.groupby("data", sort=False):
        cols = [c for c in SUMMARY_COLUMNS if c in part.columns and part[c].notna().any()]
        agg = part.groupby("method", sort=False)[cols].mean()
        agg.insert(0, "n", part.groupby("method", sort=False).size())
        order = [m for m in ("uncorrected", "sphering") if m in agg.index] + \
            [m for m in agg.index if m not in ("uncorrected", "sphering")]
        agg = agg.loc[order]
        lines += [f"## {name}", "", "| method | " + " | ".join(agg.columns) + " |",
                  "|---|" + "---|" * len(agg.columns)]
        for method, r in agg.iterrows():
            cells = [str(int(r["n"]))] + ["–" if pd.isna(v) else f"{v:.3f}" for v in r.iloc[1:]]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="demo,cell_injury,cmqtl_crispri,varchamp_b14,lincs_a549",
                    help="data sets: " + ", ".join([*DATASETS, *SIM_GRID]) + "; 'grid' = every sim/ setting")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--harmony", action="store_true", help="also score Harmony (batch, row, column)")
    ap.add_argument("--negcon-linear", action="store_true",
                    help="also score negcon_linear (the controls' additive batch/row/column effects removed)")
    ap.add_argument("--truth", action="store_true",
                    help="also score the simulator's technical-free truth, preprocessed as the measured "
                         "profiles (the ceiling a correction that invents nothing can reach)")
    ap.add_argument("--null-size", type=int, default=2000)
    ap.add_argument("--sim", default="{}", help="JSON of make_demo_screen arguments for data set 'sim'")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "ablation.csv")
    ap.add_argument("--embeddings", type=Path, default=Path("/tmp/cpdistiller_ablation"),
                    help="folder caching every embedding (re-scoring reads them back instead of training)")
    ap.add_argument("--write-truth", type=Path, help="folder: each simulator setting writes its profiles, "
                                                     "truth and parameters there")
    ap.add_argument("--summary", type=Path, help="only write this markdown summary of --out, then stop")
    args = ap.parse_args(argv)
    if args.summary:
        args.summary.write_text(summary_markdown(pd.read_csv(args.out)))
        return 0
    seeds = [int(s) for s in args.seeds.split(",")]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    done = pd.read_csv(args.out) if args.out.exists() else pd.DataFrame(columns=["data", "method", "seed"])
    have = set(zip(done["data"], done["method"], done["seed"].astype(int)))
    names = [n for item in args.only.split(",") for n in (SIM_GRID if item == "grid" else [item])]
    for name in names:
        sim = json.loads(args.sim) if name.startswith("sim") else None
        profiles, truth, pairs, eval_cfg = load(name, args, sim)
        reference = baselines.uncorrected(profiles)
        jobs = [("uncorrected", 0, None), ("sphering", 0, None)] + ([("harmony", 0, None)] if args.harmony else [])
        jobs += [("negcon_linear", 0, None)] if args.negcon_linear else []
        jobs += [("truth", 0, None), ("truth+sphering", 0, None)] if args.truth and name in ORACLE else []
        jobs += [(f"cpDistiller[{v}]", s, VARIANTS[v]) for v in variants for s in seeds]
        for method, seed, overrides in jobs:
            if (name, method, seed) in have:
                continue
            t0 = time.perf_counter()
            emb = embedding(name, method, seed, overrides, profiles, reference, args)
            t_fit = time.perf_counter() - t0
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                row = {"data": name, "method": method, "seed": seed, **score(emb, reference, truth, pairs, eval_cfg)}
            row["fit_s"] = round(t_fit, 1)
            print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
            out = pd.concat([pd.read_csv(args.out), pd.DataFrame([row])]) if args.out.exists() else pd.DataFrame([row])
            args.out.parent.mkdir(parents=True, exist_ok=True)
            out.to_csv(args.out, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
