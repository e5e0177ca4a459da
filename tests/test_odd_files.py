"""Odd but real files: each case is built at test time from a real shared data set (skips without it).

Encodings, European separators and decimal marks, content that is not what the extension says,
nested Parquet metadata, screens without negative controls and two plate/well-like columns.
"""

from __future__ import annotations

import json
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cpdistiller_core.cli import main
from cpdistiller_core.errors import CpDistillerError, CpDistillerWarning
from cpdistiller_core.io import read_profiles, read_profiles_with_report, write_profiles

CELL_INJURY = "cell_injury/fs_plate_holdout.csv.gz"
LINCS = "lincs_a549/SQ00015054_normalized_feature_select.csv.gz"


@pytest.fixture(scope="module")
def injury(shared_data: Path) -> pd.DataFrame:
    """The first 3 plates of the cell-injury screen (free-text compound columns, 'Plate'/'Well' names)."""
    df = pd.read_csv(shared_data / CELL_INJURY, low_memory=False)
    return df[df["Plate"].isin(pd.unique(df["Plate"])[:3])].reset_index(drop=True)


@pytest.fixture(scope="module")
def lincs(shared_data: Path) -> pd.DataFrame:
    return pd.read_csv(shared_data / LINCS, low_memory=False)


def features_of(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if c.startswith(("Cells_", "Nuclei_", "Cytoplasm_"))]


def load(path: Path, **kw):
    """(profiles, load notes) without emitting warnings."""
    return read_profiles_with_report(path, emit_warnings=False, **kw)


def error_of(path: Path, **kw) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CpDistillerWarning)
        with pytest.raises(CpDistillerError) as exc:
            read_profiles(path, **kw)
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


# ----- 1. encodings -------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".csv", ".csv.gz"])
def test_cp1252_compound_names_are_read_and_the_encoding_is_named(injury, tmp_path, suffix):
    df = injury.copy()
    treated = df["Compound Name"].notna()
    # accents, the micro sign and an en dash: cp1252 has all three, latin-1 has no en dash
    df.loc[treated, "Compound Name"] = df.loc[treated, "Compound Name"] + " – 10 µM (éther)"
    path = tmp_path / f"accents{suffix}"
    df.to_csv(path, index=False, encoding="cp1252")
    with pytest.raises(UnicodeDecodeError):
        pd.read_csv(path)  # what users got before: "'utf-8' codec can't decode"
    prof, rep = load(path)
    assert prof.meta["Compound Name"].fillna("").tolist() == df["Compound Name"].fillna("").tolist()
    assert any("not UTF-8" in w and "cp1252" in w for w in rep.warnings)
    assert np.allclose(prof.X, df[prof.features].to_numpy(np.float32), equal_nan=True)


def test_latin1_bytes_undefined_in_cp1252_are_read_as_latin1(injury, tmp_path):
    df = injury.head(60).copy()
    df["Compound Name"] = df["Compound Name"].fillna("DMSO") + " \x81"  # a C1 control: latin-1 only
    path = tmp_path / "latin1.csv"
    df.to_csv(path, index=False, encoding="latin-1")
    prof, rep = load(path)
    assert prof.meta["Compound Name"].tolist() == df["Compound Name"].tolist()
    assert any("Latin-1" in w for w in rep.warnings)


# ----- 2. European exports: ';' and decimal commas ----------------------------------------------------
def test_semicolon_and_decimal_commas_are_detected(injury, tmp_path):
    path = tmp_path / "europe.csv"
    injury.to_csv(path, index=False, sep=";", decimal=",")
    prof, rep = load(path)
    feats = features_of(injury)
    assert prof.features == feats
    assert np.array_equal(prof.X, injury[feats].to_numpy(np.float32), equal_nan=True)
    assert any("semicolons" in w for w in rep.warnings) and any("decimal commas" in w for w in rep.warnings)
    conc = "Compound Concentration (microMolar)"
    assert pd.api.types.is_numeric_dtype(prof.meta[conc])  # '0,5' metadata are numbers too
    assert np.allclose(prof.meta[conc], injury[conc], equal_nan=True)


def test_sep_and_decimal_can_be_given_on_the_command_line(lincs, tmp_path, capsys):
    path = tmp_path / "europe.txt"  # .txt: tab by its extension, so detection alone would be wrong-footed
    lincs.to_csv(path, index=False, sep=";", decimal=",")
    out = tmp_path / "prep.parquet"
    assert main(["preprocess", str(path), str(out), "--sep", ";", "--decimal", ",", "-q"]) == 0
    assert len(pq.read_table(out)) == len(lincs)
    assert main(["preprocess", str(path), str(out), "--sep", "::", "-q"]) == 1
    assert "--sep must be one character" in capsys.readouterr().err


def test_comma_separated_decimal_commas_name_the_problem_and_the_flags(lincs, tmp_path):
    feats = features_of(lincs)[:5]
    df = lincs[["Metadata_Plate", "Metadata_Well", "Metadata_broad_sample", *feats]]
    lines = [",".join(df.columns)] + [
        ",".join(str(v).replace(".", ",") if isinstance(v, float) else str(v) for v in row)
        for row in df.itertuples(index=False)]
    path = tmp_path / "commas.csv"
    path.write_text("\n".join(lines) + "\n")
    msg = error_of(path)
    assert "row 0 has 13 fields but the header has 8" in msg
    assert "unquoted comma" in msg and "--sep" in msg and "--decimal" in msg


# ----- 3. content that is not what the extension says ------------------------------------------------
def test_parquet_named_csv_is_read_as_parquet(lincs, tmp_path):
    path = tmp_path / "plate.csv"
    lincs.to_parquet(path)
    prof, rep = load(path)
    assert prof.n_wells == len(lincs) and prof.features == features_of(lincs)
    assert any("Parquet data despite its '.csv' name" in w for w in rep.warnings)


def _xlsx(df: pd.DataFrame, path: Path) -> None:
    """A minimal Office Open XML workbook (the ZIP layout Excel writes) holding the table."""
    def cell(v):
        return f"<c t=\"inlineStr\"><is><t>{v}</t></is></c>"
    rows = "".join("<row>" + "".join(cell(v) for v in r) + "</row>" for r in [list(df.columns), *df.values.tolist()])
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("[Content_Types].xml", "<Types xmlns=\"http://schemas.openxmlformats.org/package/2006/"
                                          "content-types\"/>")
        z.writestr("xl/workbook.xml", "<workbook><sheets><sheet name=\"plate\" sheetId=\"1\"/></sheets></workbook>")
        z.writestr("xl/worksheets/sheet1.xml", f"<worksheet><sheetData>{rows}</sheetData></worksheet>")


def test_xlsx_named_csv_says_it_is_a_workbook(lincs, tmp_path):
    path = tmp_path / "plate.csv"
    _xlsx(lincs.iloc[:20, :30], path)
    msg = error_of(path)
    assert "plate.csv: this is an Excel workbook" in msg and "save the sheet as CSV" in msg
    assert "codec" not in msg and "tokeniz" not in msg.lower()


@pytest.mark.parametrize("gz", [False, True])
def test_html_error_page_saved_as_csv(tmp_path, gz, shared_data):
    page = ("<!DOCTYPE html>\n<html><head><title>403 Forbidden</title></head><body><h1>Access denied</h1>"
            f"<p>{LINCS}</p></body></html>\n").encode()
    path = tmp_path / ("download.csv.gz" if gz else "download.csv")
    if gz:
        import gzip

        page = gzip.compress(page)
    path.write_bytes(page)
    msg = error_of(path)
    assert "HTML web page" in msg and "download the file again" in msg
    assert "Forbidden" not in msg  # never quote the contents


def test_ragged_csv_names_the_row_and_the_unquoted_commas(injury, tmp_path):
    with_commas = injury["Compound IUPAC"].fillna("").str.contains(",")
    df = pd.concat([injury[~with_commas].head(20), injury[with_commas].head(20)])
    cols = ["Plate", "Well", "Compound Name", "Compound IUPAC", *features_of(df)[:4]]
    text = [",".join(cols)] + [",".join("" if pd.isna(v) else str(v) for v in r)
                               for r in df[cols].itertuples(index=False)]
    path = tmp_path / "ragged.csv"
    path.write_text("\n".join(text) + "\n")
    iupac = df["Compound IUPAC"].astype(str)
    first = int(np.flatnonzero(iupac.str.contains(",").to_numpy() & df["Compound IUPAC"].notna().to_numpy())[0])
    msg = error_of(path)
    n = len(cols) + iupac.iloc[first].count(",")
    assert f"row {first} has {n} fields but the header has {len(cols)}" in msg
    assert "unquoted comma" in msg and iupac.iloc[first] not in msg


# ----- 4. list / struct metadata in Parquet -----------------------------------------------------------
def _nested_parquet(lincs: pd.DataFrame, path: Path) -> pd.DataFrame:
    df = lincs.copy()
    targets = df["Metadata_target"].fillna("").str.split("|").map(lambda v: [t for t in v if t])
    dose = df["Metadata_mmoles_per_liter"].astype(float)
    table = pa.Table.from_pandas(df, preserve_index=False)
    table = table.append_column("Metadata_targets", pa.array(targets.tolist(), pa.list_(pa.string())))
    table = table.append_column("Metadata_dose", pa.array(
        [{"value": v, "unit": "mM"} for v in dose], pa.struct([("value", pa.float64()), ("unit", pa.string())])))
    pq.write_table(table, path)
    return pd.DataFrame({"targets": targets, "dose": dose})


def test_list_and_struct_metadata_pass_through_preprocess(lincs, tmp_path):
    src = tmp_path / "nested.parquet"
    nested = _nested_parquet(lincs, src)
    for out in (tmp_path / "prep.parquet", tmp_path / "prep.csv", tmp_path / "prep.h5ad"):
        assert main(["preprocess", str(src), str(out), "-q"]) == 0, out
        back = read_profiles(out)
        got = back.meta["Metadata_targets"].tolist()
        if out.suffix == ".parquet":
            assert [list(v) for v in got] == nested["targets"].tolist()
            assert [d["value"] for d in back.meta["Metadata_dose"]] == nested["dose"].tolist()
        else:  # text formats hold them as JSON
            assert [json.loads(v) for v in got] == nested["targets"].tolist()
            assert [json.loads(v)["unit"] for v in back.meta["Metadata_dose"]] == ["mM"] * len(lincs)


def test_list_metadata_pass_through_correct(lincs, tmp_path):
    src = tmp_path / "nested.parquet"
    nested = _nested_parquet(lincs, src)
    run = tmp_path / "run"
    rc = main(["correct", str(src), "--out", str(run), "--epochs", "1", "--min-steps", "2", "--device", "cpu",
               "--effects", "row,column", "--quiet"])
    assert rc == 0
    emb = pq.read_table(run / "embedding.parquet").to_pandas()
    assert [list(v) for v in emb["Metadata_targets"]] == nested["targets"].tolist()
    assert [d["unit"] for d in emb["Metadata_dose"]] == ["mM"] * len(lincs)


def test_nested_metadata_written_by_write_profiles_round_trips(lincs, tmp_path):
    src = tmp_path / "nested.parquet"
    _nested_parquet(lincs, src)
    prof = read_profiles(src)
    sub = prof.subset(rows=np.arange(prof.n_wells) % 2 == 0)
    back = read_profiles(write_profiles(sub, tmp_path / "half.parquet"))
    assert [list(v) for v in back.meta["Metadata_targets"]] == [list(v) for v in sub.meta["Metadata_targets"]]


# ----- 5. no negative controls ------------------------------------------------------------------------
def test_zero_negative_controls_normalise_against_all_wells(lincs, tmp_path, capsys):
    no_dmso = lincs[lincs["Metadata_broad_sample"] != "DMSO"]
    path = tmp_path / "no_controls.csv"
    no_dmso.to_csv(path, index=False)
    out = tmp_path / "prep.parquet"
    assert main(["preprocess", str(path), str(out), "-q"]) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "no negative controls" in err and "all wells of each plate" in err
    report = json.loads((tmp_path / "prep.report.json").read_text())
    assert report["config"]["normalize_samples"] == "all"
    assert len(pq.read_table(out)) == len(no_dmso)


# ----- 6. two plate-like (or well-like) columns ---------------------------------------------------------
def test_two_plate_columns_that_disagree_are_an_error_naming_both(injury, tmp_path):
    df = injury.copy()
    df.insert(3, "Metadata_Plate", df["Experimental Condition [Experimental Batch]"].astype(str))
    path = tmp_path / "two_plates.csv"
    df.to_csv(path, index=False)
    msg = error_of(path)
    assert "'Metadata_Plate' and 'Plate'" in msg and "--plate-col" in msg
    prof = read_profiles(path, {"plate": "Plate"})  # the flag's choice
    assert prof.roles.plate == "Plate" and "Metadata_Plate" in prof.meta.columns


def test_two_well_columns_that_disagree_are_an_error_naming_both(injury, tmp_path):
    df = injury.copy()
    df["Metadata_Well"] = np.roll(df["Well"].to_numpy(), 1)
    path = tmp_path / "two_wells.csv"
    df.to_csv(path, index=False)
    msg = error_of(path)
    assert "'Metadata_Well' and 'Well'" in msg and "--well-col" in msg
    assert read_profiles(path, {"well": "Well"}).roles.well == "Well"


def test_a_relabelled_copy_of_the_plate_column_is_not_ambiguous(injury, tmp_path):
    df = injury.copy()
    df["Metadata_Plate"] = "barcode-" + df["Plate"].astype(str)
    df["Metadata_Well"] = df["Well"].str[0] + df["Well"].str[1:].str.zfill(2)  # 'B2' -> 'B02'
    path = tmp_path / "copies.csv"
    df.to_csv(path, index=False)
    prof = read_profiles(path)
    assert prof.roles.plate == "Metadata_Plate" and prof.roles.well == "Metadata_Well"


# ----- uploads (the dashboard reads bytes, not paths) -----------------------------------------------------
def test_uploaded_bytes_are_sniffed_like_files(injury, lincs, tmp_path):
    import io

    df = injury.head(120).copy()
    df["Compound Name"] = df["Compound Name"].fillna("") + " (µM, éther)"
    text = df.to_csv(index=False, sep=";", decimal=",").encode("cp1252")
    prof, rep = read_profiles_with_report(io.BytesIO(text), source="export.csv", emit_warnings=False)
    assert prof.n_wells == 120 and prof.features == features_of(injury)
    assert prof.meta["Compound Name"].tolist() == df["Compound Name"].tolist()
    assert any("cp1252" in w for w in rep.warnings) and any("semicolons" in w for w in rep.warnings)
    buf = io.BytesIO()
    lincs.to_parquet(buf)
    prof, rep = read_profiles_with_report(io.BytesIO(buf.getvalue()), source="plate.csv", emit_warnings=False)
    assert prof.n_wells == len(lincs) and any("Parquet data" in w for w in rep.warnings)
