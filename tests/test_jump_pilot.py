"""The JUMP pilot (cpg0000, CPJUMP1) in `jump list/fetch` and the paper's retrieval tasks (`retrieve
--recipe cpjump1`), against a local server with the gallery's and the metadata repository's layout.

The served tables have the real files' columns (experiment-metadata.tsv, JUMP-Target-1_* tables) and
plate CSVs the shape of pycytominer's output; the profiles carry planted gene signatures, so sister guides
and a gene's compound are retrievable only if the wells are annotated correctly.
"""

from __future__ import annotations

import gzip
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from cpdistiller_core.cli import main
from cpdistiller_core.errors import CpDistillerError
from cpdistiller_core.jump import PILOT_METADATA_FILES, PILOT_PROFILE_KEY, PilotClient
from tests.test_jump import _Handler

MAIN, DAY1, DL = "2020_11_04_CPJUMP1", "2020_11_18_CPJUMP1_TimepointDay1", "2020_11_04_CPJUMP1_DL"
GENES = [f"GENE{i}" for i in range(6)]
WELLS = [f"{r}{c:02d}" for r in "ABCD" for c in range(1, 7)]  # 24 wells per plate
N_FEATURES = 30
LEVEL = "normalized_feature_select_negcon_batch"


def _experiment() -> pd.DataFrame:
    rows = [  # Batch, Plate_Map_Name, barcode, Perturbation, Cell_type, Time, Time_delay
        (MAIN, "JUMP-Target-1_crispr_platemap", "BR0001", "crispr", "A549", "144", "Day0"),
        (MAIN, "JUMP-Target-1_crispr_platemap", "BR0002", "crispr", "A549", "144", "Day0"),
        (MAIN, "JUMP-Target-1_compound_platemap", "BR0003", "compound", "A549", "48", "Day0"),
        (MAIN, "JUMP-Target-1_crispr_platemap", "BR0004", "crispr", "U2OS", "144", "Day0"),
        (DAY1, "JUMP-Target-1_crispr_platemap", "BR0001", "crispr", "A549", "144", "Day1"),
        (DL, "JUMP-Target-1_crispr_platemap", "BR0001", "crispr", "A549", "144", "Day0"),
    ]
    df = pd.DataFrame(rows, columns=["Batch", "Plate_Map_Name", "Assay_Plate_Barcode", "Perturbation",
                                     "Cell_type", "Time", "Time_delay"])
    for col, value in (("Density", "100"), ("Antibiotics", "absent"), ("Cell_line", "Cas9"),
                       ("Times_imaged", "1"), ("Anomaly", "none"), ("Number_of_images", "27648")):
        df[col] = value
    return df


def _tables() -> dict[str, pd.DataFrame]:
    guides = [(f"BRDN{g}{k}", gene, "trt", "") for g, gene in enumerate(GENES) for k in range(2)]
    guides += [("BRDN_NT1", "", "control", "negcon"), ("BRDN_NT2", "", "control", "negcon")]
    crispr = pd.DataFrame(guides, columns=["broad_sample", "gene", "pert_type", "control_type"])
    crispr["target_sequence"] = "ACGT"
    compound = pd.DataFrame({
        "broad_sample": [f"BRD-K{i:05d}" for i in range(6)] + ["BRD-POS"],
        "InChIKey": "X", "pert_iname": [f"cpd-{i}" for i in range(6)] + ["poscon-cpd"],
        "pubchem_cid": "1", "target": GENES + ["PLK1"],
        "target_list": [f"{g}|UNRELATED{i}" for i, g in enumerate(GENES)] + ["PLK1"],
        "pert_type": ["trt"] * 6 + ["control"], "control_type": [""] * 6 + ["poscon_diverse"], "smiles": "C"})
    orf = pd.DataFrame({"broad_sample": ["ccsbBroad304_1"], "gene": ["GENE0"], "pert_type": ["trt"],
                        "control_type": [""]})
    return {"crispr": crispr, "compound": compound, "orf": orf}


def _crispr_plate(barcode: str, signatures: dict[str, np.ndarray], rng) -> pd.DataFrame:
    samples = [f"BRDN{g}{k}" for g in range(6) for k in range(2)] + ["BRDN_NT1", "BRDN_NT2"] * 6
    genes = [GENES[g] for g in range(6) for _ in range(2)] + [""] * 12
    X = np.stack([signatures.get(g, np.zeros(N_FEATURES)) for g in genes]) + rng.normal(0, 0.3, (24, N_FEATURES))
    return _frame(barcode, samples, genes, X)


def _compound_plate(barcode: str, signatures: dict[str, np.ndarray], rng) -> pd.DataFrame:
    samples = [f"BRD-K{i:05d}" for i in range(6) for _ in range(2)] + ["BRD-POS"] + [""] * 11  # '' = DMSO
    genes = [GENES[i] for i in range(6) for _ in range(2)] + ["PLK1"] + [""] * 11
    X = np.stack([signatures.get(g, np.zeros(N_FEATURES)) for g in genes]) + rng.normal(0, 0.3, (24, N_FEATURES))
    return _frame(barcode, samples, genes, X)


def _frame(barcode: str, samples: list[str], genes: list[str], X: np.ndarray) -> pd.DataFrame:
    df = pd.DataFrame({"Metadata_Plate": barcode, "Metadata_Well": WELLS, "Metadata_broad_sample": samples,
                       "Metadata_gene": genes, "Metadata_Lab_Note": f"note-{barcode}"})
    feats = pd.DataFrame(X, columns=[f"Cells_AreaShape_Feature{i}" for i in range(N_FEATURES)])
    return pd.concat([df, feats], axis=1)


def _gz(df: pd.DataFrame) -> bytes:
    return gzip.compress(df.to_csv(index=False).encode())


@pytest.fixture
def pilot(local_http_server, monkeypatch):
    """A served pilot: 3 A549 plates + 1 U2OS plate in the main batch, BR0001 again in a Day1 batch."""
    rng = np.random.default_rng(0)
    signatures = {g: rng.normal(0, 2, N_FEATURES) for g in GENES + ["PLK1"]}
    files = {f"pilotmeta/{PILOT_METADATA_FILES['plate']}": _experiment().to_csv(sep="\t", index=False).encode()}
    for name, table in _tables().items():
        files[f"pilotmeta/{PILOT_METADATA_FILES[name]}"] = table.to_csv(sep="\t", index=False).encode()
    for batch, barcode in ((MAIN, "BR0001"), (MAIN, "BR0002"), (MAIN, "BR0004"), (DAY1, "BR0001")):
        key = PILOT_PROFILE_KEY.format(source="source_4", batch=batch, plate=barcode, level=LEVEL)
        files[key] = _gz(_crispr_plate(barcode, signatures, rng))
    key = PILOT_PROFILE_KEY.format(source="source_4", batch=MAIN, plate="BR0003", level=LEVEL)
    files[key] = _gz(_compound_plate("BR0003", signatures, rng))
    server, base = local_http_server(_Handler)
    server.files, server.corrupt, server.truncate_once = files, {}, set()
    server.requests, server.ranges = Counter(), []
    monkeypatch.setenv("CPDISTILLER_GALLERY_URL", base)
    monkeypatch.setenv("CPDISTILLER_PILOT_METADATA_URL", f"{base}/pilotmeta")
    return server, base


def _client(tmp_path, **kw) -> PilotClient:
    return PilotClient(cache=tmp_path / "jump", **kw)


def test_list_filters_by_cell_type_time_and_type_and_leaves_out_deepprofiler(pilot, tmp_path):
    client = _client(tmp_path)
    plates = client.list_plates()
    assert DL not in set(plates["Metadata_Batch"]) and len(plates) == 5
    a549_long = client.list_plates(plate_type="crispr", cell_type="a549", time=144, batch=MAIN)
    assert list(a549_long["Metadata_Plate"]) == ["BR0001", "BR0002"]
    assert set(plates["Metadata_PlateType"]) == {"CRISPR", "COMPOUND"}
    assert (plates["Metadata_Source"] == "source_4").all()


def test_fetch_annotates_guides_compounds_and_controls(pilot, tmp_path):
    profiles = _client(tmp_path).fetch(batch=MAIN, cell_type="A549")
    meta = profiles.meta
    assert profiles.n_wells == 3 * 24 and profiles.n_features == N_FEATURES
    guide = meta[meta["Metadata_broad_sample"] == "BRDN31"].iloc[0]
    assert guide["Metadata_Symbol"] == "GENE3" and pd.isna(guide["Metadata_target_list"])
    cpd = meta[meta["Metadata_broad_sample"] == "BRD-K00002"].iloc[0]
    assert pd.isna(cpd["Metadata_Symbol"]) and cpd["Metadata_target_list"] == "GENE2|UNRELATED2"
    assert cpd["Metadata_pert_iname"] == "cpd-2" and cpd["Metadata_Time"] == "48"
    # DMSO (empty broad_sample) and non-targeting guides are the negative controls; the poscon is positive
    assert profiles.negative_mask.sum() == 12 + 12 + 11
    assert set(meta.loc[profiles.negative_mask, "Metadata_broad_sample"]) == {"DMSO", "BRDN_NT1", "BRDN_NT2"}
    assert (profiles.control == "positive").sum() == 1
    # every column of the plate files and of the plate table survives
    assert meta["Metadata_Lab_Note"].notna().all() and (meta["Metadata_Cell_type"] == "A549").all()
    assert {"Metadata_gene", "Metadata_Anomaly", "Metadata_Plate_Map_Name"} <= set(meta.columns)
    # one gallery batch: the plates are the batches the correction sees
    assert profiles.roles.batch == "Metadata_Plate" and profiles.roles.perturbation == "Metadata_broad_sample"


def test_a_barcode_imaged_in_two_batches_gets_two_plate_names(pilot, tmp_path):
    profiles = _client(tmp_path).fetch(plates=["BR0001"])
    meta = profiles.meta
    assert set(meta["Metadata_Plate"]) == {"BR0001_Day0", "BR0001_Day1"}
    assert (meta["Metadata_Assay_Plate_Barcode"] == "BR0001").all()
    assert profiles.roles.batch == "Metadata_Batch" and set(profiles.batch) == {MAIN, DAY1}


def test_unknown_level_and_unknown_plate_are_clear_errors(pilot, tmp_path):
    with pytest.raises(CpDistillerError, match="normalized_negcon"):
        PilotClient(level="spherized")
    with pytest.raises(CpDistillerError, match="BR9999.*not in JUMP's plate table"):
        _client(tmp_path).fetch(plates=["BR9999"])


def test_pilot_filters_need_the_pilot(capsys):
    assert main(["jump", "list", "--cell-type", "A549"]) == 1
    assert "--dataset cpg0000" in capsys.readouterr().err


def test_paper_retrieval_tasks_from_the_cli(pilot, tmp_path, capsys):
    out = tmp_path / "cpjump1.parquet"
    assert main(["jump", "fetch", "--dataset", "cpg0000", "--batch", MAIN, "--cell-type", "A549",
                 "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]) == 0
    assert main(["jump", "list", "--dataset", "cpg0000", "--cache-dir", str(tmp_path / "cache")]) == 0
    assert "U2OS" in capsys.readouterr().out
    rdir = tmp_path / "retrieval"
    assert main(["retrieve", str(out), "--recipe", "cpjump1", "--null-size", "300", "--out", str(rdir)]) == 0
    summary = pd.read_csv(rdir / "retrieval_summary.csv").set_index(["task", "metric"])
    sister = summary.loc[("sister", "fraction_retrieved")]
    gene_compound = summary.loc[("gene_compound", "fraction_retrieved")]
    assert sister["n"] == 6 and sister["value"] >= 0.8  # two guides per gene, planted shared signature
    assert gene_compound["n"] == 6 * 2 and gene_compound["value"] >= 0.8  # each guide with its gene's compound


def test_load_page_fetches_pilot_plates(pilot, tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from dashboard import state as ds
    from tests.test_jump import APP

    monkeypatch.setenv("CPDISTILLER_CACHE", str(tmp_path))
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    at.switch_page("pages/1_Load_profiles.py").run()
    at.radio(key="jump_dataset").set_value("cpg0000").run()
    at.button(key="jump_list").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    at.selectbox(key="jump_type").set_value("CRISPR").run()
    at.multiselect(key="jump_batches").set_value([MAIN]).run()
    assert "BR0001 · A549 144 h" in at.multiselect(key="jump_plates").options
    at.multiselect(key="jump_plates").set_value(["BR0001", "BR0002"]).run()
    at.button(key="jump_fetch").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    dataset = at.session_state[ds.DATASET_KEY]
    assert dataset.raw.n_wells == 48 and dataset.name.startswith("JUMP cpg0000")
    assert dataset.raw.roles.annotation == "Metadata_Symbol" and dataset.raw.negative_mask.sum() == 24
