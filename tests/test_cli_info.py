"""`cpdistiller info`: readable and JSON summaries, role reasons, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cpdistiller_core.cli import main


def plates_csv(tmp_path: Path, name: str = "screen.csv", plates=("P1", "P2"), batch: bool = True) -> Path:
    rng = np.random.default_rng(0)
    wells = [f"{r}{c:02d}" for r in "ABCD" for c in range(1, 7)]
    n = len(wells)
    df = pd.DataFrame({
        "Metadata_Plate": np.repeat(plates, n),
        "Metadata_Well": wells * len(plates),
        "Metadata_broad_sample": (["DMSO", "BRD-1", "BRD-2", "BRD-3"] * n)[:n] * len(plates),
        "Metadata_pert_type": (["control", "trt", "trt", "trt"] * n)[:n] * len(plates),
        "Metadata_moa": (["none", "a", "b", "b"] * n)[:n] * len(plates),
        "Cells_AreaShape_Area": rng.normal(size=n * len(plates)),
        "Nuclei_Intensity_Mean": rng.normal(size=n * len(plates)),
    })
    if batch:
        df.insert(2, "Metadata_Batch", np.repeat([f"B{i}" for i in range(len(plates))], n))
    df.loc[3, "Nuclei_Intensity_Mean"] = np.nan
    df.loc[4, "Cells_AreaShape_Area"] = np.inf
    path = tmp_path / name
    df.to_csv(path, index=False)
    return path


def test_info_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = plates_csv(tmp_path)
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"Profiles: {path}" in out
    assert "wells           48" in out
    assert "features        2" in out
    assert "plate format    96-well (8 rows x 12 columns)" in out
    assert "batches         2 in 'Metadata_Batch': B0, B1" in out
    assert "perturbations   3 in 'Metadata_broad_sample'" in out
    assert "controls        12 negative ['control']" in out
    assert "1 NaN in 1 features, 1 inf in 1 features" in out
    assert "P1" in out and "P2" in out and "negative" in out  # per-plate table
    assert "plate         'Metadata_Plate': known column name 'Metadata_Plate'" in out
    assert "control       'Metadata_pert_type': control column 'Metadata_pert_type'" in out
    assert "Warnings:" in out and "1 infinite value(s) in 1 feature(s)" in out


def test_info_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = plates_csv(tmp_path)
    assert main(["info", str(path), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert (d["wells"], d["features"], d["plates"], d["batches"]) == (48, 2, 2, 2)
    assert d["plate_format"] == {"wells": 96, "rows": 8, "columns": 12}
    assert d["negative_controls"] == 12 and d["perturbations"] == 3 and d["annotations"] == 3
    assert d["per_plate"] == [{"plate": "P1", "batch": "B0", "wells": 24, "negative": 6, "positive": 0},
                              {"plate": "P2", "batch": "B1", "wells": 24, "negative": 6, "positive": 0}]
    assert (d["nan_values"], d["inf_values"]) == (1, 1)
    assert d["roles"]["perturbation"] == "Metadata_broad_sample"
    assert set(d["role_reasons"]) >= {"plate", "well", "batch", "perturbation", "control", "annotation"}
    assert d["metadata_columns"][:3] == ["Metadata_Plate", "Metadata_Well", "Metadata_Batch"]
    assert any("infinite" in w for w in d["warnings"])


def test_info_combines_files_with_batch_from_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = plates_csv(tmp_path, "run1.csv", plates=("P1",), batch=False)
    b = plates_csv(tmp_path, "run2.csv.gz", plates=("P2",), batch=False)
    assert main(["info", str(a), str(b), "--batch-from-file", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["batch_labels"] == ["run1", "run2"] and d["roles"]["batch"] == "Metadata_Batch"
    assert d["combine"]["shared_features"] == 2 and d["combine"]["batch_added"]
    assert "--batch-from-file" in d["role_reasons"]["batch"]


@pytest.mark.filterwarnings("ignore::cpdistiller_core.errors.CpDistillerWarning")
def test_info_on_a_written_embedding(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cpdistiller_core.io import read_profiles, write_profiles
    from cpdistiller_core.profiles import Embedding

    p = read_profiles(plates_csv(tmp_path))
    emb = Embedding.from_profiles(p, np.ones((p.n_wells, 3), np.float32) * np.arange(48)[:, None], "cpDistiller",
                                  provenance={"seed": 0})
    path = write_profiles(emb, tmp_path / "run" / "embedding.parquet")
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "embedding       method 'cpDistiller'" in out and "features        3" in out
    assert "stored with the file" in out


def test_info_column_flag_none_unsets_a_role(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(plates_csv(tmp_path)), "--batch-col", "none", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["roles"]["batch"] is None and d["batches"] is None
    assert d["role_reasons"]["batch"] == "unset by the mapping"


def test_info_with_mapping_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    df = pd.DataFrame({"Barcode Name": ["X"] * 4 + ["Y"] * 4, "Pos": ["A1", "A2", "B1", "B2"] * 2,
                       "Drug": ["dmso", "t1", "t2", "t1"] * 2, "Cells_a": np.arange(8.0),
                       "Nuclei_b": np.arange(8.0) ** 2})
    path = tmp_path / "odd.tsv"
    df.to_csv(path, sep="\t", index=False)
    argv = ["info", str(path), "--plate-col", "Barcode Name", "--well-col", "Pos", "--perturbation-col",
            "Drug", "--negative", "DMSO", "--json"]
    assert main(argv) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["roles"]["plate"] == "Barcode Name" and d["roles"]["control"] == "Drug"
    assert d["roles"]["negative_values"] == ["dmso"] and d["negative_controls"] == 2
    assert d["role_reasons"]["plate"] == "set by the mapping to 'Barcode Name'"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "file not found"),
        ("", "file is empty"),
        ("Metadata_Plate,Metadata_Well,Notes\nP,A01,x\n", "no feature columns"),
        ("Metadata_Plate,Metadata_Well,Cells_a\nP,A01,1\nP,A01,2\n", "duplicated (plate, well)"),
        ("Metadata_Plate,Metadata_Well,Cells_a\nP,A01,text\n", "'Cells_a' holds text 'text'"),
        ("Plate_map,Metadata_Well,Cells_a\nP,A01,1\n", "no plate column"),
    ],
)
def test_info_bad_input_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       content: str | None, expected: str) -> None:
    path = tmp_path / "bad.csv"
    if content is not None:
        path.write_text(content)
    assert main(["info", str(path)]) == 1
    captured = capsys.readouterr()
    err_lines = [ln for ln in captured.err.splitlines() if ln.startswith("error:")]
    assert len(err_lines) == 1 and expected in err_lines[0] and "bad.csv" in err_lines[0]
    assert "Traceback" not in captured.err and captured.out == ""


def test_info_unknown_format_exit_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "x.xlsx"
    path.write_bytes(b"PK")
    assert main(["info", str(path)]) == 1
    assert "unknown file format" in capsys.readouterr().err


def test_info_on_real_data(shared_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = shared_data / "cell_injury" / "fs_plate_holdout.csv.gz"
    assert main(["info", str(path), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert (d["wells"], d["features"], d["plates"], d["batches"]) == (1948, 352, 9, 2)
    assert d["negative_controls"] == 1072 and d["positive_controls"] == 217
    assert sum(r["negative"] for r in d["per_plate"]) == 1072
    assert d["roles"]["annotation"] == "injury_type"
    assert len(d["metadata_columns"]) == 33
