"""`cpdistiller evaluate` and `cpdistiller benchmark` end to end on small files."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from cpdistiller_core.cli import main
from cpdistiller_core.io import write_profiles
from cpdistiller_core.metrics import SCORE_COLUMNS
from cpdistiller_core.profiles import Embedding, Profiles, Roles


def screen(n_plates: int = 2, n_perts: int = 20, dim: int = 24, seed: int = 0, row_effect: float = 0.4) -> Profiles:
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_plates):
        perts = [f"cmp{i % n_perts}" for i in range(80)]
        rng.shuffle(perts)
        it = iter(perts)
        for r in range(8):
            for c in range(12):
                ctrl = c in (0, 11)
                pert = "DMSO" if ctrl else next(it)
                rows.append({"Metadata_Plate": f"P{p}", "Metadata_Well": f"{chr(65 + r)}{c + 1:02d}",
                             "Metadata_Batch": f"B{p}", "Metadata_pert_iname": pert,
                             "Metadata_pert_type": "control" if ctrl else "trt",
                             "Metadata_gene": None if ctrl else f"G{int(pert[3:]) // 2}"})
    meta = pd.DataFrame(rows)
    cent = {f"cmp{i}": rng.normal(size=dim) * 2 for i in range(n_perts)}
    cent["DMSO"] = np.zeros(dim)
    X = np.stack([cent[p] for p in meta["Metadata_pert_iname"]]) + rng.normal(size=(len(meta), dim))
    X += np.outer(meta["Metadata_Well"].str[0].map(ord).to_numpy() - 68.5, rng.normal(size=dim)) * row_effect
    roles = Roles(plate="Metadata_Plate", well="Metadata_Well", batch="Metadata_Batch",
                  perturbation="Metadata_pert_iname", control="Metadata_pert_type", negative_values=("control",),
                  annotation="Metadata_gene")
    return Profiles(meta=meta, X=X, features=[f"Cells_Feature_{i}" for i in range(dim)], roles=roles)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli_eval")
    p = screen()
    emb = Embedding.from_profiles(p, p.X[:, :10] * 1.0, method="mymethod")
    paths = {"emb": write_profiles(emb, d / "emb.parquet"), "truth": write_profiles(p, d / "truth.parquet")}
    p.to_frame().to_csv(d / "profiles.csv", index=False)
    paths["csv"] = d / "profiles.csv"
    return paths


def test_evaluate_prints_and_writes_scorecard(files, tmp_path, capsys):
    out = tmp_path / "scores"
    rc = main(["evaluate", str(files["emb"]), "--truth", str(files["truth"]), "--out", str(out),
               "--null-size", "200", "--sister-col", "Metadata_gene"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "== mymethod" in printed and "overall" in printed and "activity_map" in printed
    scores = pd.read_csv(out / "scores.csv")
    assert list(scores.columns) == SCORE_COLUMNS
    assert set(scores["method"]) == {"mymethod"}
    s = scores.set_index(["metric", "effect"])
    assert s.loc[("knn_overlap", "truth"), "value"] > 0.3
    assert s.loc[("fraction_retrieved", "sister"), "n"] == 10
    assert s.loc[("asw", "plate"), "value"] > 0  # two plates: computed
    data = json.loads((out / "scores.json").read_text())
    assert len(data["scores"]) == len(scores)
    act = pd.read_csv(out / "activity.csv")
    assert len(act) == 20 and (act["mean_average_precision"] > 0.5).mean() > 0.8


def test_evaluate_errors_are_one_line(files, tmp_path, capsys):
    rc = main(["evaluate", str(files["emb"]), "--out", str(tmp_path), "--sister-col", "nope"])
    assert rc == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and "nope" in err and err.count("\n") == 1
    assert main(["evaluate", str(files["emb"]), "--effects", "colour"]) == 1


def test_benchmark_writes_comparison_and_figures(files, tmp_path, capsys):
    out = tmp_path / "bench"
    rc = main(["benchmark", str(files["csv"]), "--methods", "uncorrected,negcon_linear,combat", "--out", str(out),
               "--null-size", "200", "--no-normalize", "--correct", "batch,row"])
    assert rc == 0
    table = pd.read_csv(out / "comparison.csv", index_col=0)
    assert list(table.index) == ["uncorrected", "negcon_linear", "combat"]
    assert {"overall", "technical", "biological", "runtime_s", "status", "asw[row]"} <= set(table.columns)
    assert (table["status"] == "ok").all() and (table["runtime_s"] >= 0).all()
    # the row effect is built in: a method correcting rows leaves less of it among the controls
    assert table.loc["negcon_linear", "variance[row]"] > table.loc["uncorrected", "variance[row]"]
    assert (out / "figures" / "scorecard.html").stat().st_size > 10_000
    assert (out / "figures" / "map_scatter.html").exists()
    md = (out / "comparison.md").read_text()
    assert md.startswith("Headline scores") and "| method | technical | biological | overall | position |" in md
    lines = [line for line in md.splitlines() if line.startswith("| ")]
    assert lines[2].startswith("| uncorrected |") and "(+" in lines[3] or "(-" in lines[3]  # Δ vs uncorrected
    headline = pd.read_csv(out / "headline.csv", index_col=0)
    assert list(headline.index)[0] == "uncorrected" and (headline["Δoverall"].loc["uncorrected"] == 0)
    assert "Δkbet[batch]" in headline.columns and "asw[row]" not in headline.columns
    assert "| uncorrected | ok |" in capsys.readouterr().out


def test_benchmark_with_a_truth_scores_the_truth_as_the_ceiling_row(files, tmp_path):
    truth = write_profiles(screen(row_effect=0.0), tmp_path / "clean.parquet")  # the same screen, no row effect
    out = tmp_path / "bench_truth"
    common = ["--truth", str(truth), "--null-size", "200", "--no-normalize", "--correct", "batch,row", "--no-figures"]
    assert main(["benchmark", str(files["csv"]), "--methods", "uncorrected,negcon_linear", "--out", str(out),
                 *common]) == 0
    table = pd.read_csv(out / "comparison.csv", index_col=0)
    assert list(table.index) == ["uncorrected", "truth", "negcon_linear"] and (table["status"] == "ok").all()
    assert "`truth` is the simulator's technical-free truth" in (out / "comparison.md").read_text()
    # no row effect among its controls (1 = none), and its neighbours are the truth's own
    assert table.loc["truth", "variance[row]"] > 0.95 > table.loc["uncorrected", "variance[row]"]
    assert table.loc["truth", "knn_overlap[truth]"] > table.loc["uncorrected", "knn_overlap[truth]"] + 0.1
    assert main(["benchmark", str(files["csv"]), "--methods", "uncorrected", "--out", str(tmp_path / "no_row"),
                 "--no-truth-row", *common]) == 0
    assert list(pd.read_csv(tmp_path / "no_row" / "comparison.csv", index_col=0).index) == ["uncorrected"]


def test_benchmark_keeps_failed_methods_in_the_table(tmp_path, files):
    one_plate = screen(n_plates=1)
    path = tmp_path / "one.csv"
    one_plate.to_frame().to_csv(path, index=False)
    out = tmp_path / "bench1"
    rc = main(["benchmark", str(path), "--methods", "uncorrected,well_position", "--out", str(out),
               "--null-size", "200", "--no-normalize", "--no-figures"])
    assert rc == 0
    table = pd.read_csv(out / "comparison.csv", index_col=0)
    assert table.loc["well_position", "status"].startswith("failed:")
    assert "two plates" in table.loc["well_position", "status"]
    assert np.isnan(table.loc["well_position", "overall"])
    assert main(["benchmark", str(path), "--methods", "magic", "--out", str(out)]) == 1


def test_benchmark_on_real_data(shared_data, tmp_path):
    out = tmp_path / "lincs"
    f = shared_data / "lincs_a549" / "SQ00015054_normalized_feature_select.csv.gz"
    rc = main(["benchmark", str(f), "--methods", "uncorrected,sphering,negcon_linear", "--out", str(out),
               "--no-normalize", "--null-size", "200", "--no-figures", "--correct", "row,column"])
    assert rc == 0
    table = pd.read_csv(out / "comparison.csv", index_col=0)
    assert (table["status"] == "ok").all()
    assert np.isnan(table.loc["uncorrected", "asw[plate]"])  # a single plate: missing, not 0 or 1
    assert table["activity_map"].notna().all()


def test_benchmark_runs_cpdistiller_through_the_engine(files, tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "bench_cpd"
    rc = main(["benchmark", str(files["csv"]), "--methods", "cpDistiller,uncorrected", "--epochs", "1",
               "--out", str(out), "--null-size", "200", "--no-normalize", "--no-figures", "--correct", "row,column"])
    assert rc == 0
    table = pd.read_csv(out / "comparison.csv", index_col=0)
    assert list(table.index) == ["uncorrected", "cpDistiller"]  # uncorrected first
    assert table.loc["cpDistiller", "status"] == "ok", table.loc["cpDistiller", "status"]
    assert table.loc["cpDistiller", "runtime_s"] > 0 and table.loc["cpDistiller", "overall"] > 0
    scores = pd.read_csv(out / "scores.csv")
    assert "cpDistiller" in set(scores["method"])


def test_benchmark_config_file_sets_cpdistiller(files, tmp_path, capsys):
    pytest.importorskip("torch")
    cfg = tmp_path / "settings.json"
    cfg.write_text(json.dumps({"latent_dim": 4, "min_steps": 20, "epochs": 1}))
    out = tmp_path / "bench_cfg"
    rc = main(["benchmark", str(files["csv"]), "--methods", "cpDistiller", "--config", str(cfg), "--out", str(out),
               "--null-size", "200", "--no-normalize", "--no-figures", "--correct", "row,column"])
    assert rc == 0
    info = json.loads((out / "scores.json").read_text())["info"]
    assert info["cpdistiller_config"] == {"latent_dim": 4, "min_steps": 20, "epochs": 1}

    cfg.write_text(json.dumps({"latent_dims": 4}))
    assert main(["benchmark", str(files["csv"]), "--methods", "cpDistiller", "--config", str(cfg),
                 "--out", str(tmp_path / "bad")]) == 1
    err = capsys.readouterr().err
    assert str(cfg) in err and "latent_dims" in err
    assert not (tmp_path / "bad").exists()


def test_evaluate_any_embedding_with_baseline(files, tmp_path, capsys):
    """A foreign table whose coordinates are emb_000... (not CellProfiler names) and the uncorrected
    profiles as --baseline: both scored, uncorrected first, neighbour preservation computed."""
    p = screen()
    frame = p.meta.copy()
    Z = p.X[:, :8] @ np.random.default_rng(0).normal(size=(8, 8))
    for i in range(Z.shape[1]):
        frame[f"emb_{i:03d}"] = Z[:, i]
    path = tmp_path / "other_tool.parquet"
    frame.to_parquet(path)
    out = tmp_path / "scores"
    rc = main(["evaluate", str(path), "--baseline", str(files["csv"]), "--out", str(out), "--null-size", "200"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "== uncorrected" in printed and "== other_tool" in printed
    scores = pd.read_csv(out / "scores.csv")
    assert list(dict.fromkeys(scores["method"])) == ["uncorrected", "other_tool"]
    npres = scores[scores["metric"] == "neighbor_preservation"].set_index("method")["value"]
    assert npres["uncorrected"] == pytest.approx(1.0)
    assert 0 < npres["other_tool"] < 1
    headline = pd.read_csv(out / "headline.csv", index_col=0)
    assert list(headline.index) == ["uncorrected", "other_tool"]


def test_evaluate_h5ad_obsm(tmp_path, capsys):
    import anndata as ad

    p = screen()
    adata = ad.AnnData(X=p.X.astype(np.float32), obs=p.meta.astype({"Metadata_gene": "string"}).astype(str))
    adata.obsm["X_other"] = p.X[:, :6].astype(np.float32)
    path = tmp_path / "a.h5ad"
    adata.write_h5ad(path)
    out = tmp_path / "o"
    assert main(["evaluate", str(path), "--obsm", "X_other", "--out", str(out), "--null-size", "200",
                 "--negative", "control"]) == 0
    assert "== X_other" in capsys.readouterr().out
    assert main(["evaluate", str(path), "--obsm", "X_nope", "--out", str(out)]) == 1
    assert "X_other" in capsys.readouterr().err
