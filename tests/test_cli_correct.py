"""`cpdistiller correct` and the run directory (runs.run_correction / load_run)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from engine_screens import small_screen

from cpdistiller_core.api import CpDistiller
from cpdistiller_core.cli import main
from cpdistiller_core.errors import CpDistillerError
from cpdistiller_core.io import read_profiles
from cpdistiller_core.runs import RunSpec, load_run, run_correction

FAST = ["--epochs", "2", "--batch-size", "64", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def screen_csv(tmp_path_factory):
    p = small_screen(n_plates=3, n_features=24, seed=4)
    path = tmp_path_factory.mktemp("in") / "screen.csv"
    p.to_frame().to_csv(path, index=False)
    return path, p


def test_cli_writes_a_complete_run_dir(screen_csv, tmp_path, capsys):
    path, p = screen_csv
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"hidden_dim": 32, "latent_dim": 50, "min_steps": 0}))
    out = tmp_path / "run"
    rc = main(["correct", str(path), "--effects", "batch,row,col", "--out", str(out), "--config", str(cfg),
               "--negative", "DMSO", "--control-col", "Metadata_pert", "--no-preprocess",
               "--adversary-wells", "all", *FAST])
    assert rc == 0, capsys.readouterr().err
    for name in ("config.json", "report.json", "progress.json", "train_log.csv", "embedding.parquet",
                 "model/weights.pt", "model/model.json"):
        assert (out / name).is_file(), name
    run = load_run(out)
    assert run.status == "finished" and run.error is None
    assert run.progress["status"] == "finished" and run.progress["fraction"] == 1.0
    assert run.config["effects"] == ["batch", "row", "column"] and run.config["config"]["hidden_dim"] == 32
    assert run.config["config"]["epochs"] == 2  # the flag overrides the file
    assert run.config["config"]["adversary_wells"] == "all"
    assert len(run.train_log) == 2
    assert {"epoch", "loss", "elbo", "discriminator", "triplet", "lambda", "acc_batch", "acc_row",
            "acc_column"} <= set(run.train_log.columns)
    rep = run.report
    assert rep["device"] == "cpu" and "torch" in rep["versions"]
    assert {"read_s", "neighbors_s", "train_s", "total_s"} <= set(rep["timings"])
    emb = run.embedding()
    src = pd.read_csv(path)
    meta_cols = [c for c in src.columns if c.startswith("Metadata_")]
    assert list(emb.meta.columns) == meta_cols
    # the principal components of the corrected input: 50, or one per feature when there are fewer
    assert emb.features == [f"cpd_{i}" for i in range(min(50, len(run.model().features)))]
    assert (emb.meta["Metadata_note"].to_numpy() == src["Metadata_note"].to_numpy()).all()
    # The saved model reproduces the written embedding.
    again = run.model().transform(read_profiles(path, {"negative_values": ["DMSO"], "control": "Metadata_pert"}))
    np.testing.assert_allclose(again.X, emb.X, rtol=1e-5, atol=1e-5)
    assert "wrote" in capsys.readouterr().err


def test_run_with_preprocessing_stores_its_parameters(screen_csv, tmp_path):
    _, p = screen_csv
    out = run_correction(p, tmp_path / "run", RunSpec.build(
        {"epochs": 1, "batch_size": 64, "hidden_dim": 16, "device": "cpu", "min_steps": 0}, "row,column"))
    run = load_run(out)
    assert run.status == "finished"
    assert (out / "model" / "preprocess.json").is_file()
    assert run.report["preprocess"]["features_in"] == 24
    assert run.config["preprocess"] is not None


def test_failed_run_records_its_error(screen_csv, tmp_path, capsys):
    _, p = screen_csv
    one_plate = p.subset(rows=p.plate == "P0")
    with pytest.raises(CpDistillerError):
        run_correction(one_plate, tmp_path / "bad",
                       RunSpec.build({"epochs": 1, "device": "cpu", "min_steps": 0}, "batch", preprocess=False))
    run = load_run(tmp_path / "bad")
    assert run.status == "failed" and "nothing to correct" in run.error
    assert run.progress["status"] == "failed" and "nothing to correct" in run.progress["error"]
    assert (tmp_path / "bad" / "config.json").is_file()
    assert "traceback" in run.report
    # The CLI turns it into one line and exit code 1.
    path, _ = screen_csv
    sub = tmp_path / "one.csv"
    pd.read_csv(path).query("Metadata_Plate == 'P0'").to_csv(sub, index=False)
    rc = main(["correct", str(sub), "--effects", "batch", "--out", str(tmp_path / "bad2"), "--no-preprocess", *FAST])
    err = capsys.readouterr().err
    assert rc == 1 and "error:" in err and "nothing to correct" in err


def test_load_run_rejects_other_directories(tmp_path):
    with pytest.raises(CpDistillerError, match="not a cpDistiller run directory"):
        load_run(tmp_path)


def test_run_dir_model_is_a_cpdistiller(screen_csv, tmp_path):
    _, p = screen_csv
    out = run_correction(p, tmp_path / "r", RunSpec.build(
        {"epochs": 1, "batch_size": 64, "hidden_dim": 16, "device": "cpu", "min_steps": 0}, ("row", "column"),
        preprocess=False))
    assert isinstance(load_run(out).model(), CpDistiller)
