"""Bad input: each case gives a CpDistillerError (or CpDistillerWarning) naming file, column and rows."""

from __future__ import annotations

import gzip
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cpdistiller_core.errors import CpDistillerError, CpDistillerWarning, hide_cell_values
from cpdistiller_core.io import combine, read_mapping, read_profiles, read_profiles_with_report, validate


def frame(n: int = 12, plates: tuple[str, ...] = ("P1", "P2")) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    wells = [f"{r}{c:02d}" for r in "ABCDEFGH" for c in range(1, 13)][:n]
    df = pd.DataFrame({
        "Metadata_Plate": np.repeat(plates, n),
        "Metadata_Well": wells * len(plates),
        "Metadata_Batch": np.repeat([f"b{i}" for i in range(len(plates))], n),
        "Metadata_pert_type": (["negcon", "trt", "trt"] * n)[:n] * len(plates),
        "Cells_AreaShape_Area": rng.normal(size=n * len(plates)),
        "Nuclei_Intensity_Mean": rng.normal(size=n * len(plates)),
    })
    return df


def write(df: pd.DataFrame, path: Path) -> Path:
    df.to_csv(path, index=False)
    return path


def error_of(*args, **kw) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CpDistillerWarning)
        with pytest.raises(CpDistillerError) as exc:
            read_profiles(*args, **kw)
    msg = str(exc.value)
    assert "\n" not in msg  # shown as one line by the CLI
    return msg


def warnings_of(path: Path, **kw) -> list[str]:
    return read_profiles_with_report(path, emit_warnings=False, **kw)[1].warnings


# ----- files ----------------------------------------------------------------------------------------
def test_missing_file(tmp_path: Path) -> None:
    msg = error_of(tmp_path / "nope.csv")
    assert "nope.csv" in msg and "not found" in msg


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty.csv").write_text("")
    assert "empty.csv: file is empty" in error_of(tmp_path / "empty.csv")
    (tmp_path / "blank.csv").write_text("\n\n")
    assert "blank.csv" in error_of(tmp_path / "blank.csv")


def test_header_only(tmp_path: Path) -> None:
    (tmp_path / "header.csv").write_text("Metadata_Plate,Metadata_Well,Cells_x\n")
    assert "header.csv: no data rows" in error_of(tmp_path / "header.csv")


def test_unknown_format(tmp_path: Path) -> None:
    (tmp_path / "plates.xlsx").write_bytes(b"PK\x03\x04 not really")
    msg = error_of(tmp_path / "plates.xlsx")
    assert "plates.xlsx" in msg and "unknown file format '.xlsx'" in msg


def test_not_a_file(tmp_path: Path) -> None:
    (tmp_path / "dir.csv").mkdir()
    assert "not a file" in error_of(tmp_path / "dir.csv")


def test_corrupt_files(tmp_path: Path) -> None:
    (tmp_path / "bad.csv.gz").write_bytes(b"this is not gzip")
    msg = error_of(tmp_path / "bad.csv.gz")
    assert "bad.csv.gz: cannot read as CSV" in msg and "not gzip-compressed" in msg
    (tmp_path / "bad.parquet").write_bytes(b"nope")
    assert "bad.parquet: cannot read as Parquet" in error_of(tmp_path / "bad.parquet")
    (tmp_path / "bad.h5ad").write_bytes(b"nope")
    assert "bad.h5ad: cannot read as AnnData" in error_of(tmp_path / "bad.h5ad")
    (tmp_path / "ragged.csv").write_text("Metadata_Plate,Metadata_Well,Cells_x\nP,A01,1\nP,A02,1,2,3\n")
    msg = error_of(tmp_path / "ragged.csv")
    assert "ragged.csv: row 1 has 5 fields but the header has 3" in msg and "unquoted comma" in msg


def test_truncated_gzip(tmp_path: Path) -> None:
    data = gzip.compress(frame(96).to_csv(index=False).encode())
    (tmp_path / "cut.csv.gz").write_bytes(data[: len(data) // 2])
    assert "cut.csv.gz: cannot read as CSV" in error_of(tmp_path / "cut.csv.gz")


# ----- roles ----------------------------------------------------------------------------------------
def test_no_plate_column(tmp_path: Path) -> None:
    df = frame().rename(columns={"Metadata_Plate": "Metadata_plate_map_name"})
    msg = error_of(write(df, tmp_path / "noplate.csv"))
    assert "noplate.csv" in msg and "no plate column" in msg and "--plate-col" in msg
    assert "'Metadata_plate_map_name'" in msg  # suggested


def test_no_well_column(tmp_path: Path) -> None:
    df = frame().rename(columns={"Metadata_Well": "Metadata_position"})
    msg = error_of(write(df, tmp_path / "nowell.csv"))
    assert "nowell.csv" in msg and "no well column" in msg and "--well-col" in msg


def test_unparseable_wells(tmp_path: Path) -> None:
    df = frame()
    df.loc[[3, 7], "Metadata_Well"] = ["well-3", "??"]
    msg = error_of(write(df, tmp_path / "wells.csv"))
    assert "wells.csv" in msg and "'Metadata_Well'" in msg
    assert "'well-3'" in msg and "rows 3, 7" in msg


def test_wells_outside_declared_plate(tmp_path: Path) -> None:
    df = frame()
    df.loc[5, "Metadata_Well"] = "P24"
    msg = error_of(write(df, tmp_path / "big.csv"), {"plate_format": 96})
    assert "big.csv" in msg and "'Metadata_Well'" in msg and "96-well" in msg and "row 5" in msg


def test_wells_outside_any_plate(tmp_path: Path) -> None:
    df = frame()
    df.loc[2, "Metadata_Well"] = "A99"
    msg = error_of(write(df, tmp_path / "huge.csv"))
    assert "huge.csv" in msg and "1536-well" in msg and "row 2" in msg


def test_duplicated_plate_well(tmp_path: Path) -> None:
    df = frame()
    df.loc[4, "Metadata_Well"] = df.loc[1, "Metadata_Well"]
    msg = error_of(write(df, tmp_path / "dup.csv"))
    assert "dup.csv" in msg and "duplicated (plate, well)" in msg
    assert "plate 'P1' well 'A02'" in msg and "rows 1, 4" in msg


def test_duplicated_plate_well_of_a_server_file_names_rows_not_cells(tmp_path: Path) -> None:
    df = frame()
    df.loc[4, "Metadata_Well"] = df.loc[1, "Metadata_Well"]
    with hide_cell_values():
        msg = error_of(write(df, tmp_path / "dup.csv"))
    assert "dup.csv" in msg and "duplicated (plate, well)" in msg and "rows 1, 4" in msg
    assert "P1" not in msg and "A02" not in msg


def test_duplicates_across_files_name_both(tmp_path: Path) -> None:
    a = write(frame(plates=("P1",)), tmp_path / "a.csv")
    b = write(frame(plates=("P1",)), tmp_path / "b.csv")
    msg = error_of([a, b])
    assert "duplicated (plate, well)" in msg and "a.csv" in msg and "b.csv" in msg


def test_mapping_names_a_missing_column(tmp_path: Path) -> None:
    msg = error_of(write(frame(), tmp_path / "m.csv"), {"batch": "Metadata_Run"})
    assert "m.csv" in msg and "batch column 'Metadata_Run' is not in the file" in msg


def test_mapping_with_unknown_role(tmp_path: Path) -> None:
    (tmp_path / "map.yaml").write_text("plate: Metadata_Plate\ncompound: X\n")
    with pytest.raises(CpDistillerError, match=r"map.yaml: unknown role\(s\) \['compound'\]"):
        read_mapping(tmp_path / "map.yaml")
    with pytest.raises(CpDistillerError, match="unknown role"):
        read_profiles(write(frame(), tmp_path / "m.csv"), {"dose": "x"})
    (tmp_path / "bad.yaml").write_text("plate: [unclosed\n")
    with pytest.raises(CpDistillerError, match="bad.yaml: cannot parse"):
        read_mapping(tmp_path / "bad.yaml")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(CpDistillerError, match="list.json: the mapping must be a dict"):
        read_mapping(tmp_path / "list.json")
    with pytest.raises(CpDistillerError, match="mapping file not found"):
        read_mapping(tmp_path / "absent.yaml")


def test_control_values_found_nowhere(tmp_path: Path) -> None:
    df = frame().drop(columns=["Metadata_pert_type"])
    msg = error_of(write(df, tmp_path / "c.csv"), {"negative_values": ["DMSO"]})
    assert "c.csv" in msg and "DMSO" in msg and "--control-col" in msg


# ----- features -----------------------------------------------------------------------------------------
def test_no_feature_columns(tmp_path: Path) -> None:
    df = frame().drop(columns=["Cells_AreaShape_Area", "Nuclei_Intensity_Mean"])
    df["score"] = 1.0
    msg = error_of(write(df, tmp_path / "nofeat.csv"))
    assert "nofeat.csv: no feature columns" in msg and "--features-regex" in msg


def test_non_numeric_feature_column(tmp_path: Path) -> None:
    df = frame()
    df["Cells_AreaShape_Area"] = df["Cells_AreaShape_Area"].astype(object)
    df.loc[[2, 9], "Cells_AreaShape_Area"] = ["big", "n/a?"]
    msg = error_of(write(df, tmp_path / "text.csv"))
    assert "text.csv" in msg and "'Cells_AreaShape_Area'" in msg and "'big'" in msg and "rows 2, 9" in msg
    assert "Nuclei_Intensity_Mean" not in msg
    df["Cells_AreaShape_Area"] = df["Cells_AreaShape_Area"].astype(str)  # a text column in Parquet
    df.to_parquet(tmp_path / "text.parquet")
    assert "'Cells_AreaShape_Area'" in error_of(tmp_path / "text.parquet")


def test_requested_features_missing_and_bad_regex(tmp_path: Path) -> None:
    path = write(frame(), tmp_path / "f.csv")
    msg = error_of(path, features=["Cells_AreaShape_Area", "Cells_Nope"])
    assert "f.csv" in msg and "'Cells_Nope'" in msg
    assert "invalid feature regex" in error_of(path, feature_regex="Cells_(")


def test_no_shared_features(tmp_path: Path) -> None:
    a = write(frame(plates=("P1",)).drop(columns=["Nuclei_Intensity_Mean"]), tmp_path / "a.csv")
    b = write(frame(plates=("P2",)).drop(columns=["Cells_AreaShape_Area"]), tmp_path / "b.csv")
    assert "no feature columns are shared" in error_of([a, b])


def test_different_plate_columns_cannot_combine(tmp_path: Path) -> None:
    a = write(frame(plates=("P1",)), tmp_path / "a.csv")
    b = write(frame(plates=("P2",)).rename(columns={"Metadata_Plate": "Plate"}), tmp_path / "b.csv")
    msg = error_of([a, b])
    assert "different plate columns" in msg and "'Plate'" in msg and "'Metadata_Plate'" in msg
    with pytest.raises(CpDistillerError, match="nothing to combine"):
        combine([])


def test_empty_plate_names(tmp_path: Path) -> None:
    df = frame()
    df.loc[6, "Metadata_Plate"] = None
    msg = error_of(write(df, tmp_path / "np.csv"))
    assert "np.csv" in msg and "'Metadata_Plate'" in msg and "row 6" in msg


# ----- warnings: usable data --------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore::cpdistiller_core.errors.CpDistillerWarning")
def test_all_nan_and_constant_features_warn(tmp_path: Path) -> None:
    df = frame()
    df["Cells_empty"] = np.nan
    df["Cells_flat"] = 3.0
    path = write(df, tmp_path / "w.csv")
    with pytest.warns(CpDistillerWarning, match=r"1 feature\(s\) are all NaN: 'Cells_empty'"):
        p = read_profiles(path)
    assert "Cells_empty" in p.features  # kept: preprocessing drops it
    ws = validate(p)
    assert any("constant: 'Cells_flat'" in w and "w.csv" in w for w in ws)
    assert not any("Cells_AreaShape_Area" in w for w in ws)


def test_inf_values_warn_with_counts(tmp_path: Path) -> None:
    df = frame()
    df.loc[[1, 2, 3], "Nuclei_Intensity_Mean"] = np.inf
    df.loc[4, "Cells_AreaShape_Area"] = -np.inf
    ws = warnings_of(write(df, tmp_path / "inf.csv"))
    msg = next(w for w in ws if "infinite" in w)
    assert "inf.csv" in msg and "4 infinite value(s) in 2 feature(s)" in msg
    assert "'Nuclei_Intensity_Mean': 3" in msg and "'Cells_AreaShape_Area': 1" in msg


def test_no_negative_controls_warn(tmp_path: Path) -> None:
    df = frame()
    df["Metadata_pert_type"] = "trt"
    ws = warnings_of(write(df, tmp_path / "noctl.csv"))
    assert any("noctl.csv" in w and "no negative controls" in w for w in ws)
    df = frame().drop(columns=["Metadata_pert_type"])
    ws = warnings_of(write(df, tmp_path / "noctl2.csv"))
    assert any("no negative controls detected" in w and "--negative" in w for w in ws)


def test_all_wells_negative_warns(tmp_path: Path) -> None:
    df = frame()
    df["Metadata_pert_type"] = "negcon"
    ws = warnings_of(write(df, tmp_path / "allneg.csv"))
    assert any("allneg.csv" in w and "every well is a negative control" in w for w in ws)


def test_given_negative_value_absent_warns(tmp_path: Path) -> None:
    ws = warnings_of(write(frame(), tmp_path / "v.csv"), roles={"negative_values": ["DMSO", "negcon"]})
    assert any("'DMSO'" in w and "'Metadata_pert_type'" in w and "do not occur" in w for w in ws)


def test_single_plate_and_single_batch_warn(tmp_path: Path) -> None:
    df = frame(plates=("P1",))
    ws = warnings_of(write(df, tmp_path / "one.csv"))
    assert any("a single plate ('P1')" in w and "'Metadata_Plate'" in w for w in ws)
    assert any("'Metadata_Batch'" in w and "single value" in w and "'b0'" in w for w in ws)
    # Two plates in one batch: the batch warning remains, the plate warning does not.
    df = frame()
    df["Metadata_Batch"] = "only"
    ws = warnings_of(write(df, tmp_path / "two.csv"))
    assert not any("single plate" in w for w in ws)
    assert any("batch column holds a single value" in w for w in ws)


@pytest.mark.filterwarnings("ignore::cpdistiller_core.errors.CpDistillerWarning")
def test_warnings_are_emitted_as_cpdistiller_warnings(tmp_path: Path) -> None:
    with pytest.warns(CpDistillerWarning, match="a single plate"):
        read_profiles(write(frame(plates=("P1",)), tmp_path / "one.csv"))
