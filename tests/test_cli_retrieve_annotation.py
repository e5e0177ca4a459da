"""`cpdistiller retrieve --pairs-col`: a compound screen scored through an annotation column."""

from __future__ import annotations

import pandas as pd

from cpdistiller_core.cli import main
from tests.test_analysis_retrieval import screen


def test_retrieve_with_annotation_pairs(tmp_path, capsys):
    p = screen()
    frame = p.to_frame().rename(columns=lambda c: c.replace("f", "Cells_f", 1) if c.startswith("f") else c)
    frame["Metadata_moa"] = frame["Metadata_target"].str.split("|").str[0]
    path = tmp_path / "cpd.csv"
    frame.drop(columns=["Metadata_gene", "Metadata_target"]).to_csv(path, index=False)
    out = tmp_path / "r"
    rc = main(["retrieve", str(path), "--plate-col", "Metadata_Plate", "--well-col", "Metadata_Well",
               "--perturbation-col", "Metadata_pert", "--control-col", "Metadata_pert", "--negative", "DMSO",
               "--pairs-col", "Metadata_moa", "--null-size", "300", "--out", str(out)])
    assert rc == 0
    summary = pd.read_csv(out / "retrieval_summary.csv").set_index(["task", "metric"])
    assert summary.loc[("annotation", "fraction_retrieved"), "value"] > 0.8  # shared signatures per class
    assert summary.loc[("annotation", "fraction_retrieved"), "n"] == 6
    assert "gene column" in summary.loc[("sister", "fraction_retrieved"), "note"]
    assert "annotation" in capsys.readouterr().out


def test_retrieve_names_a_missing_recipe_column(tmp_path, capsys):
    assert main(["retrieve", "demo", "--recipe", "cpjump1", "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert "Metadata_Symbol" in err and "not found" in err and "Traceback" not in err
