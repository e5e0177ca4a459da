"""Reading, role detection, mapping, combining and round trips of profile files."""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import pytest

from cpdistiller_core.cli.common import add_input_arguments, load_from_args, profiles_from_args
from cpdistiller_core.errors import CpDistillerError, CpDistillerWarning
from cpdistiller_core.io import (
    combine,
    detect_roles,
    explain_roles,
    feature_columns,
    read_profiles,
    read_profiles_with_report,
    validate,
    write_profiles,
)
from cpdistiller_core.profiles import NEGATIVE, POSITIVE, TREATMENT, Embedding, Profiles, Roles

FEATURES = ["Cells_AreaShape_Area", "Nuclei_Intensity_MeanIntensity_DNA", "Cytoplasm_Texture_Contrast_AGP",
            "Image_Granularity_1_Mito"]


def make_frame(plates=("P1", "P2"), n_wells: int = 24, seed: int = 0) -> pd.DataFrame:
    """pycytominer-style well-level profiles: metadata columns around CellProfiler features."""
    rng = np.random.default_rng(seed)
    wells = [f"{r}{c:02d}" for r in "ABCDEFGH" for c in range(1, 13)][:n_wells]
    recs = []
    for p in plates:
        for i, w in enumerate(wells):
            recs.append({
                "Metadata_Plate": p, "Metadata_Well": w,
                "Metadata_pert_type": "control" if i % 6 == 0 else "trt",
                "Metadata_broad_sample": "DMSO" if i % 6 == 0 else f"BRD-K{i % 5:04d}",
                "Metadata_moa": "none" if i % 6 == 0 else f"moa{i % 3}",
                "Metadata_ID": f"{i:04d}",
                "Metadata_SMILES": "CC(=O)Oc1ccccc1C(=O)O",
                "Metadata_URL": "https://pubchem.ncbi.nlm.nih.gov/compound/2244",
                "Metadata_dose": 0.5 * (i % 3),
            })
    df = pd.DataFrame(recs)
    for f in FEATURES:
        df[f] = rng.normal(size=len(df)).astype(np.float32)
    df["Metadata_note"] = "last column"  # metadata after the features keeps its place among metadata
    return df


META_COLS = ["Metadata_Plate", "Metadata_Well", "Metadata_pert_type", "Metadata_broad_sample", "Metadata_moa",
             "Metadata_ID", "Metadata_SMILES", "Metadata_URL", "Metadata_dose", "Metadata_note"]


def quiet_read(*args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CpDistillerWarning)
        return read_profiles(*args, **kw)


# ----- reading and detection ------------------------------------------------------------------------
def test_autodetects_pycytominer_csv(tmp_path: Path) -> None:
    df = make_frame()
    path = tmp_path / "plates.csv"
    df.to_csv(path, index=False)
    p = read_profiles(path)
    assert p.features == FEATURES
    assert list(p.meta.columns) == META_COLS
    assert p.roles == Roles(plate="Metadata_Plate", well="Metadata_Well", perturbation="Metadata_broad_sample",
                            control="Metadata_pert_type", negative_values=("control",), annotation="Metadata_moa")
    np.testing.assert_array_equal(p.X, df[FEATURES].to_numpy(np.float32))
    assert p.X.dtype == np.float32
    # Strings stay strings: zero-padded IDs, wells, SMILES, URLs; numbers stay numbers.
    assert p.meta["Metadata_ID"].tolist()[:3] == ["0000", "0001", "0002"]
    assert p.meta["Metadata_Well"].iloc[0] == "A01"
    assert p.meta["Metadata_SMILES"].iloc[0] == "CC(=O)Oc1ccccc1C(=O)O"
    assert p.meta["Metadata_URL"].iloc[0] == "https://pubchem.ncbi.nlm.nih.gov/compound/2244"
    assert pd.api.types.is_float_dtype(p.meta["Metadata_dose"])
    assert p.negative_mask.sum() == 8 and p.geometry.n_wells == 96
    assert p.source == str(path)


@pytest.mark.parametrize("suffix", ["csv.gz", "tsv", "tsv.gz", "parquet", "h5ad"])
def test_reads_every_format(tmp_path: Path, suffix: str) -> None:
    df = make_frame()
    path = tmp_path / f"plates.{suffix}"
    if suffix.startswith("csv"):
        df.to_csv(path, index=False)
    elif suffix.startswith("tsv"):
        df.to_csv(path, sep="\t", index=False)
    elif suffix == "parquet":
        df.to_parquet(path)
    else:
        obs = df[META_COLS].copy()
        obs.index = obs.index.astype(str)
        anndata.AnnData(X=df[FEATURES].to_numpy(np.float32), obs=obs,
                        var=pd.DataFrame(index=FEATURES)).write_h5ad(path)
    p = read_profiles(path)
    assert p.features == FEATURES
    assert list(p.meta.columns) == META_COLS
    assert p.roles.control == "Metadata_pert_type" and p.roles.perturbation == "Metadata_broad_sample"
    np.testing.assert_allclose(p.X, df[FEATURES].to_numpy(np.float32))
    assert (p.meta["Metadata_Well"].astype(str) == df["Metadata_Well"]).all()


def test_reads_an_uploaded_buffer_with_source_name(tmp_path: Path) -> None:
    import io

    buf = io.BytesIO(make_frame().to_csv(index=False).encode())
    p = read_profiles(buf, source="upload.csv")
    assert p.source == "upload.csv" and p.n_wells == 48
    import gzip

    gz = io.BytesIO(gzip.compress(make_frame().to_csv(sep="\t", index=False).encode()))
    p = read_profiles(gz, source="upload.tsv.gz")
    assert p.features == FEATURES and p.n_wells == 48
    pq = io.BytesIO()
    make_frame().to_parquet(pq)
    pq.seek(0)
    assert read_profiles(pq, source="upload.parquet").features == FEATURES


def test_free_text_survives_quotes_commas_newlines(tmp_path: Path) -> None:
    df = make_frame()
    df["Metadata_comment"] = 'a "quoted", multi\nline note'
    df.loc[5, "Metadata_comment"] = None
    df["Metadata_NA_gene"] = "NAT1"
    df["Metadata_is_dmso"] = df["Metadata_broad_sample"] == "DMSO"
    df["Metadata_code"] = "007"
    df.to_csv(tmp_path / "free.csv.gz", index=False)
    p = read_profiles(tmp_path / "free.csv.gz")
    assert p.meta["Metadata_is_dmso"].dtype == bool and p.meta["Metadata_is_dmso"].sum() == 8
    assert (p.meta["Metadata_code"] == "007").all()
    assert p.meta["Metadata_comment"].iloc[0] == 'a "quoted", multi\nline note'
    assert pd.isna(p.meta["Metadata_comment"].iloc[5]) and p.n_wells == 48
    assert (p.meta["Metadata_NA_gene"] == "NAT1").all()


def test_duplicate_and_unnamed_headers_read_like_pandas(tmp_path: Path) -> None:
    df = make_frame()
    df.to_csv(tmp_path / "indexed.csv")  # written with its index: an unnamed first column
    p = read_profiles(tmp_path / "indexed.csv")
    assert p.meta.columns[0] == "Unnamed: 0" and p.features == FEATURES
    text = (tmp_path / "indexed.csv").read_text().replace("Cytoplasm_Texture_Contrast_AGP", "Cells_AreaShape_Area")
    (tmp_path / "dup.csv").write_text(text)
    with pytest.warns(CpDistillerWarning, match="duplicated column name.*'Cells_AreaShape_Area'"):
        p = read_profiles(tmp_path / "dup.csv")
    assert p.features[:3] == ["Cells_AreaShape_Area", "Nuclei_Intensity_MeanIntensity_DNA", "Cells_AreaShape_Area.1"]


def test_indexes_of_foreign_parquet_and_h5ad_are_kept(tmp_path: Path) -> None:
    df = make_frame().set_index("Metadata_ID")
    df.to_parquet(tmp_path / "indexed.parquet")
    p = read_profiles(tmp_path / "indexed.parquet")
    assert p.meta.columns[0] == "Metadata_ID" and p.meta["Metadata_ID"].iloc[1] == "0001"
    obs = df[[c for c in META_COLS if c != "Metadata_ID"]].copy()
    obs.index = [f"well_{i}" for i in range(len(obs))]
    anndata.AnnData(X=df[FEATURES].to_numpy(np.float32), obs=obs,
                    var=pd.DataFrame(index=FEATURES)).write_h5ad(tmp_path / "named.h5ad")
    p = read_profiles(tmp_path / "named.h5ad")
    assert p.meta.columns[0] == "obs_names" and p.meta["obs_names"].iloc[2] == "well_2"


def test_write_after_combining_mixed_types(tmp_path: Path) -> None:
    a = make_frame(plates=("P1",))
    b = make_frame(plates=("P2",))
    a["Metadata_Plate"] = 7  # an integer plate in one file, text in the other
    a.to_csv(tmp_path / "a.csv", index=False)
    b.to_csv(tmp_path / "b.csv", index=False)
    p = quiet_read([tmp_path / "a.csv", tmp_path / "b.csv"])
    assert sorted(set(p.plate)) == ["7", "P2"]
    for name in ("c.parquet", "c.h5ad", "c.csv"):
        q = quiet_read(write_profiles(p, tmp_path / name))
        assert sorted(set(q.plate)) == ["7", "P2"] and q.roles == p.roles
        assert list(q.meta.columns) == list(p.meta.columns)


def test_image_acquisition_columns_stay_metadata() -> None:
    cols = ["Image_Metadata_Plate", "Image_FileName_DNA", "Image_PathName_DNA", "Image_Count_Cells",
            "Image_Granularity_1_DNA", "Cells_AreaShape_Area", "Metadata_Plate", "Compound SMILES"]
    assert feature_columns(cols) == ["Image_Granularity_1_DNA", "Cells_AreaShape_Area"]
    assert feature_columns(cols, feature_regex="^Cells_") == ["Cells_AreaShape_Area"]
    assert feature_columns(cols, features=["Image_Count_Cells"]) == ["Image_Count_Cells"]


def test_feature_regex_and_list_select_features(tmp_path: Path) -> None:
    df = make_frame()
    df["Extra_score"] = 1.0
    path = tmp_path / "p.csv"
    df.to_csv(path, index=False)
    p = quiet_read(path, feature_regex=r"^(Cells|Extra)_")
    assert p.features == ["Cells_AreaShape_Area", "Extra_score"]
    assert "Nuclei_Intensity_MeanIntensity_DNA" in p.meta.columns  # not a feature now: kept as metadata
    p = read_profiles(path, features=["Nuclei_Intensity_MeanIntensity_DNA"])
    assert p.features == ["Nuclei_Intensity_MeanIntensity_DNA"]


def test_case_insensitive_matching_prefers_exact_case() -> None:
    df = pd.DataFrame({"metadata_plate": ["a"], "Metadata_plate": [2], "Metadata_Plate": ["P"],
                       "METADATA_WELL": ["A01"], "Cells_x": [1.0]})
    det = explain_roles(df)
    assert det.roles.plate == "Metadata_Plate" and det.roles.well == "METADATA_WELL"
    assert "ignored" in det.reasons["plate"] and "'Metadata_plate'" in det.reasons["plate"]
    assert "case-insensitive" in det.reasons["well"]


@pytest.mark.parametrize(
    ("column", "values", "neg", "pos"),
    [
        ("Metadata_node_type", ["NC", "PC", "cPC", "TC", "allele", "disease_wt"], ("NC",), ("PC", "cPC")),
        ("Metadata_pert_type", ["negcon", "poscon", "trt", "trt", "trt", "trt"], ("negcon",), ("poscon",)),
        ("Metadata_control_type", ["negcon", "poscon_orf", "", "", "", ""], ("negcon",), ("poscon_orf",)),
        ("Control Type", ["Negative", "Positive", None, None, None, None], ("Negative",), ("Positive",)),
    ],
)
def test_control_detection(column: str, values: list, neg: tuple, pos: tuple) -> None:
    df = pd.DataFrame({"Metadata_Plate": "P", "Metadata_Well": ["A01", "A02", "A03", "A04", "A05", "A06"],
                       column: values, "Cells_x": np.arange(6.0)})
    det = explain_roles(df)
    assert det.roles.control == column
    assert det.roles.negative_values == neg and det.roles.positive_values == pos
    assert column in det.reasons["control"]


def test_negative_controls_from_perturbation_names() -> None:
    df = pd.DataFrame({"Metadata_Plate": "P", "Metadata_Well": ["A01", "A02", "A03"],
                       "Metadata_target_gene": ["CONTROL", "WASF2", "EMPTY"], "Cells_x": [1.0, 2.0, 3.0]})
    roles = detect_roles(df)
    assert roles.perturbation == roles.control == "Metadata_target_gene"
    assert set(roles.negative_values) == {"CONTROL", "EMPTY"}


def test_jump_control_identifiers() -> None:
    df = pd.DataFrame({"Metadata_Source": "source_4", "Metadata_Plate": "BR1", "Metadata_Well": ["A01", "A02", "A03"],
                       "Metadata_JCP2022": ["JCP2022_033924", "JCP2022_037716", "JCP2022_012345"],
                       "Cells_x": [1.0, 2.0, 3.0]})
    det = explain_roles(df)
    assert det.roles.batch == "Metadata_Source" and det.roles.perturbation == "Metadata_JCP2022"
    assert det.roles.negative_values == ("JCP2022_033924",)
    assert det.roles.positive_values == ("JCP2022_037716",)
    assert "JUMP" in det.reasons["control"]


def test_phenix_and_row_column_wells(tmp_path: Path) -> None:
    df = pd.DataFrame({"Metadata_Plate": ["P"] * 3, "Metadata_Well": ["r01c01", "r02c03", "r16c24"],
                       "Cells_x": [1.0, 2.0, 3.0]})
    df.to_csv(tmp_path / "a.csv", index=False)
    p = quiet_read(tmp_path / "a.csv")
    assert list(p.well) == ["A01", "B03", "P24"] and p.geometry.n_wells == 384
    df = pd.DataFrame({"Metadata_Plate": ["P"] * 3, "Metadata_Row": ["A", "B", "H"], "Metadata_Col": [1, 3, 12],
                       "Cells_x": [1.0, 2.0, 3.0]})
    df.to_csv(tmp_path / "b.csv", index=False)
    p = quiet_read(tmp_path / "b.csv")
    assert p.roles.well is None and (p.roles.row, p.roles.column) == ("Metadata_Row", "Metadata_Col")
    assert list(p.well) == ["A01", "B03", "H12"] and p.geometry.n_wells == 96


# ----- mapping ----------------------------------------------------------------------------------------
def cell_injury_like(tmp_path: Path) -> Path:
    """Non-pycytominer names, like the cell-injury screen."""
    rng = np.random.default_rng(1)
    n = 12
    df = pd.DataFrame({
        "Assay Plate": ["BR1"] * 6 + ["BR2"] * 6,
        "Position": [f"B{i + 2}" for i in range(6)] * 2,
        "Run": ["1"] * 6 + ["2"] * 6,
        "Drug": ["DMSO", "Taxol", "Drug A", "Drug B", "DMSO", "Drug C"] * 2,
        "Kind": ["Negative", "Positive", None, None, "Negative", None] * 2,
        "Class": ["Control", "Cytoskeletal", "Kinase", "Kinase", "Control", "Genotoxin"] * 2,
        "Cells_a": rng.normal(size=n), "Nuclei_b": rng.normal(size=n),
    })
    path = tmp_path / "injury.csv"
    df.to_csv(path, index=False)
    return path


INJURY_ROLES = Roles(plate="Assay Plate", well="Position", batch="Run", perturbation="Drug", control="Kind",
                     negative_values=("Negative",), positive_values=("Positive",), annotation="Class")
INJURY_MAPPING = {"plate": "Assay Plate", "well": "Position", "batch": "Run", "perturbation": "Drug",
                  "control": "Kind", "annotation": "Class"}


def test_mapping_dict(tmp_path: Path) -> None:
    p, report = read_profiles_with_report(cell_injury_like(tmp_path), INJURY_MAPPING)
    assert p.roles == INJURY_ROLES  # control values detected from the vocabulary in the mapped column
    assert report.role_reasons["plate"].startswith("set by the mapping")
    assert list(p.control[:3]) == [NEGATIVE, POSITIVE, TREATMENT]


@pytest.mark.parametrize("kind", ["yaml", "json"])
def test_mapping_file(tmp_path: Path, kind: str) -> None:
    path = cell_injury_like(tmp_path)
    mapping = {**INJURY_MAPPING, "negative_values": ["dmso"]}  # values match case-insensitively
    mapping["control"] = "Drug"
    file = tmp_path / f"map.{kind}"
    if kind == "yaml":
        import yaml

        file.write_text(yaml.safe_dump(mapping))
    else:
        file.write_text(json.dumps(mapping))
    p = read_profiles(path, file)
    assert p.roles.control == "Drug" and p.roles.negative_values == ("DMSO",)
    assert p.roles.positive_values == ()
    assert p.negative_mask.sum() == 4


def test_partial_override_keeps_detected_roles(tmp_path: Path) -> None:
    df = make_frame()
    df["Metadata_run"] = np.where(df["Metadata_Plate"] == "P1", "b1", "b2")
    df.to_csv(tmp_path / "p.csv", index=False)
    p, report = read_profiles_with_report(tmp_path / "p.csv", {"batch": "metadata_RUN", "annotation": None})
    assert p.roles.batch == "Metadata_run" and p.roles.annotation is None
    assert p.roles.control == "Metadata_pert_type"  # still detected
    assert report.role_reasons["control"].startswith("control column")


def test_negative_values_pick_the_column_holding_them(tmp_path: Path) -> None:
    make_frame().to_csv(tmp_path / "p.csv", index=False)
    # Detected control column is Metadata_pert_type ('control'/'trt'); DMSO lives in the perturbation column.
    p, report = read_profiles_with_report(tmp_path / "p.csv", {"negative_values": "dmso"}, emit_warnings=False)
    assert p.roles.control == "Metadata_broad_sample" and p.roles.negative_values == ("DMSO",)
    assert p.roles.positive_values == () and p.negative_mask.sum() == 8
    assert "(given)" in report.role_reasons["control"]


def test_cli_flags_map_columns(tmp_path: Path) -> None:
    path = cell_injury_like(tmp_path)
    parser = argparse.ArgumentParser()
    add_input_arguments(parser)
    args = parser.parse_args([str(path), "--plate-col", "Assay Plate", "--well-col", "Position",
                              "--batch-col", "Run", "--perturbation-col", "Drug", "--control-col", "Kind",
                              "--negative", "Negative", "--positive", "Positive", "--annotation-col", "Class",
                              "--plate-format", "384"])
    p = profiles_from_args(args)
    assert p.roles == dataclass_replace(INJURY_ROLES, plate_format=384)
    assert p.geometry.n_wells == 384


def test_cli_mapping_file_with_flag_override(tmp_path: Path) -> None:
    path = cell_injury_like(tmp_path)
    file = tmp_path / "map.json"
    file.write_text(json.dumps(INJURY_MAPPING))
    parser = argparse.ArgumentParser()
    add_input_arguments(parser)
    args = parser.parse_args([str(path), "--mapping", str(file), "--batch-col", "Assay Plate",
                              "--negative", "DMSO,Negative", "--features-regex", "^Cells_"])
    p, report = load_from_args(args, emit_warnings=False)
    assert p.roles.batch == "Assay Plate" and p.roles.plate == "Assay Plate"
    assert p.features == ["Cells_a"]
    # 'DMSO' is not a value of the control column 'Kind': named in a warning, 'Negative' still used.
    assert p.negative_mask.sum() == 4
    assert any("'DMSO'" in w and "'Kind'" in w for w in report.warnings)


def dataclass_replace(roles: Roles, **kw) -> Roles:
    import dataclasses

    return dataclasses.replace(roles, **kw)


# ----- combine -------------------------------------------------------------------------------------
def test_combine_keeps_shared_features_and_reports_dropped(tmp_path: Path) -> None:
    a = make_frame(plates=("P1",))
    b = make_frame(plates=("P2",), seed=2).drop(columns=["Image_Granularity_1_Mito"])
    b["Cells_only_in_b"] = 1.0
    b["Metadata_extra"] = "x"
    a.to_csv(tmp_path / "batch_a.csv", index=False)
    b.to_csv(tmp_path / "batch_b.csv.gz", index=False)
    pa_, pb = quiet_read(tmp_path / "batch_a.csv"), quiet_read(tmp_path / "batch_b.csv.gz")
    with pytest.warns(CpDistillerWarning, match="kept the 3 features shared"):
        out, report = combine([pa_, pb], batch_from_file=True)
    assert out.features == FEATURES[:3]
    assert report.shared_features == 3
    assert report.dropped == {str(tmp_path / "batch_a.csv"): ["Image_Granularity_1_Mito"],
                              str(tmp_path / "batch_b.csv.gz"): ["Cells_only_in_b"]}
    assert report.features_per_source == {str(tmp_path / "batch_a.csv"): 4, str(tmp_path / "batch_b.csv.gz"): 4}
    assert out.roles.batch == "Metadata_Batch" and report.batch_added
    assert list(pd.unique(out.batch)) == ["batch_a", "batch_b"]
    assert list(out.meta.columns) == META_COLS + ["Metadata_extra", "Metadata_Batch"]
    np.testing.assert_array_equal(out.X[24:], pb.X[:, :3])
    assert out.meta["Metadata_extra"].isna().sum() == 24


def test_batch_from_file_does_not_replace_a_batch_role(tmp_path: Path) -> None:
    a, b = make_frame(plates=("P1",)), make_frame(plates=("P2",))
    a["Metadata_Batch"], b["Metadata_Batch"] = "B1", "B2"
    a.to_csv(tmp_path / "a.csv", index=False)
    b.to_csv(tmp_path / "b.csv", index=False)
    p, report = read_profiles_with_report([tmp_path / "a.csv", tmp_path / "b.csv"], batch_from_file=True,
                                          emit_warnings=False)
    assert p.roles.batch == "Metadata_Batch" and not report.combine.batch_added
    assert "Metadata_Batch_file" not in p.meta.columns
    assert any("already set" in n for n in report.combine.notes)
    assert sorted(pd.unique(p.batch)) == ["B1", "B2"]


# ----- round trips --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["out.parquet", "out.csv", "out.csv.gz", "out.h5ad", "out"])
def test_round_trip_keeps_metadata_order_dtypes_and_roles(tmp_path: Path, name: str) -> None:
    df = make_frame()
    df.insert(2, "Metadata_flag", [True, False] * 24)
    df.insert(3, "Metadata_count", np.arange(48))
    df.loc[3, "Metadata_moa"] = None
    df.to_csv(tmp_path / "in.csv", index=False)
    mapping = {"batch": "Metadata_ID", "control": "Metadata_broad_sample", "negative_values": ["DMSO"]}
    p = quiet_read(tmp_path / "in.csv", mapping)
    written = write_profiles(p, tmp_path / name)
    q = quiet_read(written)
    assert q.roles == p.roles  # includes roles no detection would choose
    assert q.features == p.features
    pd.testing.assert_frame_equal(q.meta, p.meta)
    np.testing.assert_array_equal(q.X, p.X)
    assert not list(tmp_path.glob(".*tmp*"))  # atomic write leaves no temp file


@pytest.mark.parametrize("name", ["embedding.parquet", "embedding.csv", "embedding.h5ad"])
def test_embedding_round_trip(tmp_path: Path, name: str) -> None:
    df = make_frame()
    df.to_csv(tmp_path / "in.csv", index=False)
    p = read_profiles(tmp_path / "in.csv")
    Z = np.random.default_rng(0).normal(size=(p.n_wells, 50)).astype(np.float32)
    emb = Embedding.from_profiles(p, Z, "cpDistiller", provenance={"seed": np.int64(7), "epochs": [1, 2]})
    q = read_profiles(write_profiles(emb, tmp_path / name))
    assert isinstance(q, Embedding)
    assert q.method == "cpDistiller" and q.provenance == {"seed": 7, "epochs": [1, 2]}
    assert q.features == [f"cpd_{i}" for i in range(50)]
    assert list(q.meta.columns) == META_COLS and q.roles == p.roles
    np.testing.assert_array_equal(q.X, Z)


def test_feature_regex_narrows_stored_features(tmp_path: Path) -> None:
    make_frame().to_csv(tmp_path / "in.csv", index=False)
    p = read_profiles(tmp_path / "in.csv")
    for name in ("s.parquet", "s.csv", "s.h5ad"):
        q = read_profiles(write_profiles(p, tmp_path / name), feature_regex="^(Cells|Nuclei)_")
        assert q.features == FEATURES[:2]


def test_write_rejects_unknown_format(tmp_path: Path) -> None:
    make_frame().to_csv(tmp_path / "in.csv", index=False)
    p = read_profiles(tmp_path / "in.csv")
    with pytest.raises(CpDistillerError, match="unknown output format"):
        write_profiles(p, tmp_path / "out.xlsx")


def test_validate_clean_profiles_has_no_warnings(tmp_path: Path) -> None:
    df = make_frame()
    df["Metadata_Batch"] = np.where(df["Metadata_Plate"] == "P1", "b1", "b2")
    df.to_csv(tmp_path / "in.csv", index=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CpDistillerWarning)
        p = read_profiles(tmp_path / "in.csv")
    assert validate(p) == []


# ----- the real data sets ---------------------------------------------------------------------------
def test_cell_injury_autodetect(shared_data: Path) -> None:
    p, report = read_profiles_with_report(shared_data / "cell_injury" / "fs_plate_holdout.csv.gz",
                                          emit_warnings=False)
    r = p.roles
    assert (r.plate, r.well, r.batch) == ("Plate", "Well", "Experimental Condition [Experimental Batch]")
    assert (r.perturbation, r.control, r.annotation) == ("Compound Name", "Control Type", "injury_type")
    assert r.negative_values == ("Negative",) and r.positive_values == ("Positive",)
    assert p.n_wells == 1948 and p.n_features == 352
    assert len(set(p.plate)) == 9 and len(set(p.batch)) == 2 and p.geometry.n_wells == 384
    assert p.negative_mask.sum() == 1072 and (p.control == POSITIVE).sum() == 217
    assert set(p.meta.loc[p.negative_mask, "Compound Name"]) == {"DMSO"}
    assert p.meta["Compound SMILES"].map(type).eq(str).all()  # free text untouched
    assert p.meta["Well"].iloc[0] == pd.read_csv(shared_data / "cell_injury" / "fs_plate_holdout.csv.gz",
                                                 usecols=["Well"], nrows=1)["Well"].iloc[0]
    assert "contains 'batch'" in report.role_reasons["batch"]


def test_cell_injury_by_mapping_file(shared_data: Path, tmp_path: Path) -> None:
    mapping = tmp_path / "cell_injury.yaml"
    mapping.write_text(
        "plate: Plate\nwell: Well\nbatch: 'Experimental Condition [Experimental Batch]'\n"
        "perturbation: Compound Name\ncontrol: Control Type\nnegative_values: [Negative]\n"
        "positive_values: [Positive]\nannotation: injury_type\n"
    )
    p = read_profiles(shared_data / "cell_injury" / "fs_plate_holdout.csv.gz", mapping)
    assert p.negative_mask.sum() == 1072 and p.roles.annotation == "injury_type"


def test_lincs_single_plate(shared_data: Path) -> None:
    with pytest.warns(CpDistillerWarning, match="a single plate"):
        p = read_profiles(shared_data / "lincs_a549" / "SQ00015054_normalized_feature_select.csv.gz")
    assert (p.n_wells, p.n_features) == (384, 454)
    assert p.roles.perturbation == "Metadata_broad_sample" and p.roles.control == "Metadata_pert_type"
    assert p.roles.annotation == "Metadata_moa"
    assert set(p.meta.loc[p.negative_mask, "Metadata_broad_sample"]) == {"DMSO"} and p.negative_mask.sum() == 24


def test_varchamp_four_plates(shared_data: Path) -> None:
    files = sorted((shared_data / "varchamp_b14").glob("*_augmented.csv.gz"))
    assert len(files) == 4
    p, report = read_profiles_with_report(files, emit_warnings=False)
    assert p.n_wells == 4 * 330 and p.n_features == 3903 and len(set(p.plate)) == 4
    assert p.roles.control == "Metadata_node_type"
    assert p.roles.negative_values == ("NC",) and set(p.roles.positive_values) == {"PC", "cPC"}
    assert p.roles.perturbation == "Metadata_gene_allele" and p.roles.annotation == "Metadata_symbol"
    assert p.roles.plate == "Metadata_Plate"  # not the integer 'Metadata_plate'
    assert int(np.isnan(p.X).sum()) > 0  # raw features with a few NaNs survive as NaN
    treated = p.meta.loc[p.control == TREATMENT, "Metadata_node_type"].dropna()
    assert set(treated) == {"TC", "allele", "disease_wt"}
    assert report.combine is not None and report.combine.shared_features == 3903


def test_cmqtl_two_batches_shared_features(shared_data: Path) -> None:
    files = sorted((shared_data / "cmqtl_crispri").glob("*.csv.gz"))
    p, report = read_profiles_with_report(files, batch_from_file=True, emit_warnings=False)
    assert p.n_features == 362 and p.n_wells == 768
    assert sorted(report.combine.features_per_source.values()) == [592, 635]
    assert sorted(len(d) for d in report.combine.dropped.values()) == [592 - 362, 635 - 362]
    assert p.roles.batch == "Metadata_Batch" and len(set(p.batch)) == 2
    assert p.negative_mask.sum() == 208 and p.roles.negative_values == ("CONTROL",)


def test_jump_metadata_is_not_profiles(shared_data: Path) -> None:
    with pytest.raises(CpDistillerError, match="no feature columns"):
        read_profiles(shared_data / "jump_metadata" / "plate.csv.gz")


def test_concurrent_loads_keep_their_own_warnings(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    one = make_frame(plates=("P1",))
    one.to_csv(tmp_path / "one.csv", index=False)
    inf = make_frame()
    inf.loc[0, "Cells_AreaShape_Area"] = np.inf
    inf.to_csv(tmp_path / "inf.csv", index=False)
    paths = [tmp_path / "one.csv", tmp_path / "inf.csv"] * 4
    with ThreadPoolExecutor(4) as pool:
        reports = list(pool.map(lambda p: read_profiles_with_report(p, emit_warnings=False)[1], paths))
    for path, report in zip(paths, reports):
        if path.name == "one.csv":
            assert any("single plate" in w for w in report.warnings)
            assert not any("infinite" in w for w in report.warnings)
        else:
            assert any("infinite" in w for w in report.warnings)
            assert not any("single plate" in w for w in report.warnings)


# ----- the format table -------------------------------------------------------------------------------
def test_every_format_in_the_table_round_trips_through_its_own_suffixes(tmp_path: Path) -> None:
    from cpdistiller_core.io import FORMATS, format_of

    make_frame().to_csv(tmp_path / "in.csv", index=False)
    p = read_profiles(tmp_path / "in.csv")
    for fmt in FORMATS:
        for suffix in fmt.suffixes:
            assert format_of(f"plate{suffix.upper()}") == fmt.name
            back = read_profiles(write_profiles(p, tmp_path / f"out_{fmt.name}{suffix}"))
            assert back.features == p.features and np.array_equal(back.X, p.X), suffix
            assert list(back.meta.columns) == list(p.meta.columns) and back.roles == p.roles


def test_format_messages_and_file_stems_come_from_the_table(tmp_path: Path) -> None:
    from cpdistiller_core.io import FORMATS
    from cpdistiller_core.io.formats import file_stem

    (tmp_path / "plates.xyz").write_text("Metadata_Plate,Cells_A\nP1,1\n")
    with pytest.raises(CpDistillerError) as read_err:
        read_profiles(tmp_path / "plates.xyz")
    make_frame().to_csv(tmp_path / "in.csv", index=False)
    with pytest.raises(CpDistillerError) as write_err:
        write_profiles(read_profiles(tmp_path / "in.csv"), tmp_path / "out.xyz")
    for fmt in FORMATS:
        assert fmt.shown in str(read_err.value) and fmt.name in str(write_err.value)
        assert all(file_stem(f"dir/plate_1{s}") == "plate_1" for s in fmt.suffixes)
    assert file_stem("plate.v2.unknown") == "plate.v2"


def test_notes_go_to_the_given_list_instead_of_warnings(tmp_path: Path) -> None:
    from cpdistiller_core.io import resolve_roles

    a, b = make_frame(plates=("P1",)), make_frame(plates=("P2",)).drop(columns=["Cells_AreaShape_Area"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CpDistillerWarning)
        pa_, pb = Profiles.from_frame(a, source="a.csv"), Profiles.from_frame(b, source="b.csv")
    notes: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("error", CpDistillerWarning)  # nothing may be warned when a list is given
        combine([pa_, pb], notes=notes)
        resolve_roles(a, {"negative_values": ["control", "Mock"]}, source="a", notes=notes)
    assert any("kept the 3 features shared" in n for n in notes)
    assert any("'Mock'" in n and "do not occur" in n for n in notes)
    with pytest.warns(CpDistillerWarning, match="do not occur"):
        resolve_roles(a, {"negative_values": ["control", "Mock"]}, source="a")


def test_read_options_reach_every_reader(tmp_path: Path) -> None:
    df = make_frame()
    df.to_csv(tmp_path / "semi.csv", sep=";", decimal=",", index=False)
    df.to_parquet(tmp_path / "p.parquet")
    as_text = pd.read_csv(tmp_path / "semi.csv", sep=";", decimal=",")  # the float32 values' decimal text
    for path, want in ((tmp_path / "semi.csv", as_text), (tmp_path / "p.parquet", df)):
        p = quiet_read(path, dtype=np.float64, feature_regex="^Cells_")
        assert p.X.dtype == np.float64 and p.full_precision and p.features == ["Cells_AreaShape_Area"]
        np.testing.assert_array_equal(p.X[:, 0], want["Cells_AreaShape_Area"].to_numpy(np.float64))
    given = quiet_read(tmp_path / "semi.csv", sep="semicolon", decimal=",")
    assert given.X.dtype == np.float32 and given.features == FEATURES
