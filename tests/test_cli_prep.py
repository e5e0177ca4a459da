"""`cpdistiller preprocess` and `cpdistiller demo-data` end to end (in process, real files)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from cpdistiller_core.cli import main
from cpdistiller_core.cli.prep import demo_paths, report_path
from cpdistiller_core.datasets import gmt_text, make_demo_screen
from cpdistiller_core.io import read_profiles
from cpdistiller_core.preprocess import PreprocessConfig, PreprocessReport, preprocess


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("demo")
    assert main(["demo-data", str(d / "demo.parquet"), "--batches", "2", "--plates", "2", "--seed", "7"]) == 0
    return d


def test_demo_data_writes_profiles_truth_gmt_and_table(demo_dir):
    paths = demo_paths(demo_dir / "demo.parquet")
    assert all(p.exists() for p in paths.values())
    prof, truth = read_profiles(paths["profiles"]), read_profiles(paths["truth"])
    ref = make_demo_screen(seed=7, n_batches=2, plates_per_batch=2)
    assert np.array_equal(prof.X, ref.profiles.X) and np.array_equal(truth.X, ref.truth.X)
    assert list(prof.meta.columns) == list(ref.profiles.meta.columns)
    assert prof.roles == ref.profiles.roles  # stored with the file, annotation included
    assert paths["gmt"].read_text() == gmt_text()
    table = pd.read_csv(paths["perturbations"])
    assert {"perturbation", "pathway", "active", "strength"} <= set(table.columns)


def test_demo_data_csv_by_extension(tmp_path):
    assert main(["demo-data", str(tmp_path / "d.csv.gz"), "--batches", "1", "--plates", "1",
                 "--features", "50"]) == 0
    assert (tmp_path / "d_truth.csv.gz").exists() and (tmp_path / "d_gene_sets.gmt").exists()
    p = read_profiles(tmp_path / "d.csv.gz")
    assert p.n_wells == 384 and p.n_features == 50


def test_preprocess_cli_matches_the_api_and_writes_the_report(demo_dir, tmp_path):
    src = demo_dir / "demo.parquet"
    out = tmp_path / "pre.parquet"
    assert main(["preprocess", str(src), str(out), "-q", "--corr-threshold", "0.8", "--clip", "20"]) == 0
    got = read_profiles(out)
    rep = PreprocessReport.load(report_path(out))
    assert report_path(out) == tmp_path / "pre.report.json"
    assert rep.config.corr_threshold == 0.8 and rep.config.clip == 20.0
    expected, exp_rep = preprocess(read_profiles(src), PreprocessConfig(corr_threshold=0.8, clip=20.0))
    assert got.features == expected.features == rep.kept_features
    np.testing.assert_array_equal(got.X, expected.X)
    assert list(got.meta.columns) == list(expected.meta.columns)
    assert {d["feature"] for d in rep.dropped_features} == {d["feature"] for d in exp_rep.dropped_features}
    # --apply on the ground truth: same kept features, report of the application
    out2 = tmp_path / "truth_pre.parquet"
    assert main(["preprocess", str(demo_dir / "demo_truth.parquet"), str(out2), "-q",
                 "--apply", str(report_path(out))]) == 0
    applied = read_profiles(out2)
    assert applied.features == got.features
    assert json.loads((tmp_path / "truth_pre.report.json").read_text())["applied_report"] == str(report_path(out))


def test_preprocess_cli_settings_file_and_flags(demo_dir, tmp_path):
    cfg = tmp_path / "settings.yaml"
    cfg.write_text("operations: [drop_na_columns, variance_threshold]\nzscore: false\nclip: null\n")
    out = tmp_path / "p.parquet"
    assert main(["preprocess", str(demo_dir / "demo.parquet"), str(out), "-q", "--config", str(cfg),
                 "--report", str(tmp_path / "r.json")]) == 0
    rep = PreprocessReport.load(tmp_path / "r.json")
    assert rep.config.operations == ("drop_na_columns", "variance_threshold")
    assert rep.config.zscore is False and rep.config.clip is None and rep.zscore_mean is None


@pytest.mark.parametrize("argv, message", [
    (["--clip", "abc"], "--clip expects a number"),
    (["--operations", "variance_threshold,magic"], "unknown feature-selection operation"),
    (["--normalize-samples", "Metadata_nope == 1"], "cannot evaluate"),
    (["--corr-threshold", "2"], "corr_threshold must be between 0 and 1"),
])
def test_preprocess_cli_one_line_errors(demo_dir, tmp_path, capsys, argv, message):
    rc = main(["preprocess", str(demo_dir / "demo.parquet"), str(tmp_path / "x.parquet"), "-q", *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and err[-1].startswith("error: ") and message in err[-1]


def test_preprocess_cli_refuses_plates_without_controls_and_bad_files(tmp_path, capsys):
    screen = make_demo_screen(seed=2, n_batches=1, plates_per_batch=2, n_features=40)
    df = screen.profiles.to_frame()
    df.loc[df["Metadata_Plate"] == "B1_P02", "Metadata_pert_type"] = "trt"
    src = tmp_path / "in.csv"
    df.to_csv(src, index=False)
    assert main(["preprocess", str(src), str(tmp_path / "o.parquet")]) == 1
    err = capsys.readouterr().err
    assert "B1_P02" in err and 'normalize_samples="all"' in err
    assert main(["preprocess", str(src), str(src)]) == 1
    assert "overwrite an input" in capsys.readouterr().err
    assert main(["demo-data", str(tmp_path / "d.parquet"), "--plates", "0"]) == 1
    assert "--plates must be at least 1" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["preprocess", "demo-data"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert "usage: cpdistiller " + command in capsys.readouterr().out
