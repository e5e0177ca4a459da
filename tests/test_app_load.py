"""Home and Load profiles pages (AppTest): demo, server paths with role mapping, uploads and their safety."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from cpdistiller_core.errors import CpDistillerError
from cpdistiller_core.paths import app_data_dir
from dashboard import state as ds

APP = str(Path(__file__).resolve().parents[1] / "app.py")
LOAD = "pages/1_Load_profiles.py"
CELL_INJURY = "cell_injury/fs_plate_holdout.csv.gz"


def _app() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=180)
    at.run()
    assert not at.exception
    return at


def _errors(at: AppTest) -> list[str]:
    return [e.value for e in at.error]


def test_home_loads_the_demo_in_one_click():
    from cpdistiller_core.datasets import load_demo

    at = _app()
    assert at.title[0].value == "cpDistiller"
    assert "No dataset loaded yet." in [i.value for i in at.info]
    at.button(key="home_demo").click().run()
    assert not at.exception and not _errors(at)
    dataset = at.session_state[ds.DATASET_KEY]
    truth = load_demo(0).profiles
    assert dataset.origin == "demo" and dataset.raw.n_wells == truth.n_wells
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Wells"] == f"{truth.n_wells:,}" and metrics["Features"] == str(truth.n_features)


def test_load_page_shows_roles_qc_and_preprocessing_for_the_demo():
    at = _app()
    at.switch_page(LOAD).run()
    assert "Load a dataset" in at.info[0].value
    at.button(key="load_demo").click().run()
    assert not at.exception and not _errors(at)
    raw = at.session_state[ds.DATASET_KEY].raw
    roles = at.dataframe[0].value.set_index("role")["column"]
    assert roles["plate"] == raw.roles.plate and roles["batch"] == raw.roles.batch
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Plates"] == str(len(set(raw.plate)))
    assert metrics["Negative controls"] == str(int(raw.negative_mask.sum()))
    assert len(at.get("plotly_chart")) == 1  # plate-layout thumbnails
    from cpdistiller_core.preprocess import PreprocessConfig
    from cpdistiller_core.settings import settings_of

    for s in settings_of(PreprocessConfig):  # the form comes from the settings schema, defaults included
        assert f"load_pp_{s.name}" in at.session_state, s.name
    at.button(key="FormSubmitter:load_preprocess-Run preprocessing").click().run()
    assert not at.exception and not _errors(at)
    dataset = at.session_state[ds.DATASET_KEY]
    assert dataset.preprocessed is not None and dataset.preprocess_report is not None
    assert dataset.preprocess_config == PreprocessConfig()  # untouched form = the defaults
    kept = {m.label: m.value for m in at.metric}["Features kept"]
    assert kept == f"{dataset.preprocessed.n_features} / {raw.n_features}"
    # switching preprocessing off is remembered for the correction
    at.checkbox(key="load_pp_enabled").uncheck()
    at.button(key="FormSubmitter:load_preprocess-Run preprocessing").click().run()
    assert at.session_state[ds.DATASET_KEY].preprocess_enabled is False
    assert any("Preprocessing is off" in i.value for i in at.info)


def test_server_path_detects_and_remaps_roles_on_cell_injury(shared_data, monkeypatch):
    monkeypatch.setenv("CPDISTILLER_DATA_ROOT", str(shared_data))
    path = shared_data / CELL_INJURY
    at = _app()
    at.switch_page(LOAD).run()
    at.text_area(key="load_paths").input(str(path))
    at.button(key="load_read_paths").click().run()
    assert not at.exception and not _errors(at)
    raw = at.session_state[ds.DATASET_KEY].raw
    assert raw.n_wells == 1948 and raw.roles.plate == "Plate" and raw.roles.well == "Well"
    assert any("look already normalised" in i.value for i in at.info)  # a normalised, feature-selected file
    frame = pd.read_csv(path, usecols=["Control Type", "Compound Name", "injury_type"])
    # remap: annotation off, perturbation = compound class, negatives = the 'Negative' control type
    at.selectbox(key="load_role_annotation").set_value("(none)")
    at.selectbox(key="load_role_control").set_value("Control Type").run()
    at.multiselect(key="load_neg_values").set_value(["Negative"])
    at.multiselect(key="load_pos_values").set_value(["Positive"])
    at.selectbox(key="load_role_perturbation").set_value("Compound Class")
    at.button(key="load_apply_roles").click().run()
    assert not at.exception and not _errors(at)
    roles = at.session_state[ds.DATASET_KEY].raw.roles
    assert roles.annotation is None and roles.perturbation == "Compound Class"
    assert roles.control == "Control Type" and roles.negative_values == ("Negative",)
    remapped = at.session_state[ds.DATASET_KEY].raw
    assert int(remapped.negative_mask.sum()) == int((frame["Control Type"] == "Negative").sum())
    assert {m.label: m.value for m in at.metric}["Negative controls"] == str(int(remapped.negative_mask.sum()))
    # an impossible mapping is a readable error, the dataset is kept
    at.selectbox(key="load_role_well").set_value("Compound Name")
    at.button(key="load_apply_roles").click().run()
    assert not at.exception
    assert any("well" in e.lower() for e in _errors(at))
    assert at.session_state[ds.DATASET_KEY].raw.roles.well == "Well"


def test_missing_server_path_is_a_message(tmp_path, monkeypatch):
    monkeypatch.delenv("CPDISTILLER_DATA_ROOT", raising=False)
    at = _app()
    at.switch_page(LOAD).run()
    at.text_area(key="load_paths").input("/no/such/file.csv")
    at.button(key="load_read_paths").click().run()
    assert not at.exception
    assert _errors(at) and "reading files on the server is turned off" in _errors(at)[0]  # no data root set
    monkeypatch.setenv("CPDISTILLER_DATA_ROOT", str(tmp_path))
    at.text_area(key="load_paths").input(str(tmp_path / "file.csv"))
    at.button(key="load_read_paths").click().run()
    assert not at.exception
    assert _errors(at) == [f"{tmp_path / 'file.csv'}: no such file under the data root."]


def test_malformed_upload_shows_an_error_not_an_exception():
    at = _app()
    at.switch_page(LOAD).run()
    at.file_uploader(key="load_files").set_value([("broken.csv", b"this is,not\na profile\x00\x01,,\n", "text/csv")])
    at.run()
    at.button(key="load_read_upload").click().run()
    assert not at.exception
    assert len(_errors(at)) == 1 and "broken.csv" in _errors(at)[0]
    assert ds.DATASET_KEY not in at.session_state


def test_uploaded_names_cannot_escape_the_upload_folder():
    rows = [{"Metadata_Plate": "P1", "Metadata_Well": f"A{c:02d}", "Cells_f1": float(c), "Nuclei_f2": float(c * c % 7)}
            for c in range(1, 13)]
    data = pd.DataFrame(rows).to_csv(index=False).encode()
    at = _app()
    at.switch_page(LOAD).run()
    at.file_uploader(key="load_files").set_value([("../../../escape.csv", data, "text/csv")])
    at.run()
    at.button(key="load_read_upload").click().run()
    assert not at.exception and not _errors(at)
    dataset = at.session_state[ds.DATASET_KEY]
    saved = Path(dataset.files[0]).resolve()
    sessions = (app_data_dir() / "sessions").resolve()
    assert saved.parent.name == "uploads" and saved.parent.parent.parent == sessions and saved.name == "escape.csv"
    assert not (app_data_dir().parent / "escape.csv").exists()
    assert dataset.raw.n_wells == 12


@pytest.mark.parametrize("name, expected", [
    ("../../etc/passwd.csv", "passwd.csv"),
    ("..\\..\\windows\\x.parquet", "x.parquet"),
    ("/abs/path/plate 1 (final).csv.gz", "plate_1_final_.csv.gz"),
    ("..", "upload"),
    ("", "upload"),
    (".hidden.csv", "hidden.csv"),
    ("plaque_été.csv", "plaque_ete.csv"),
    ("a" * 300 + ".csv.gz", "a" * 113 + ".csv.gz"),  # 120 characters, extension kept
])
def test_sanitize_filename(name, expected):
    assert ds.sanitize_filename(name) == expected


def test_save_uploads_keeps_everything_inside_the_session_folder():
    paths = ds.save_uploads([("../x.csv", b"a"), ("x.csv", b"b"), ("sub/dir/x.csv", b"c")], "../../session")
    folder = (app_data_dir() / "sessions" / "session" / "uploads").resolve()
    assert [p.parent for p in paths] == [folder] * 3
    assert [p.name for p in paths] == ["x.csv", "x-2.csv", "x-3.csv"]
    assert [p.read_bytes() for p in paths] == [b"a", b"b", b"c"]
    with pytest.raises(CpDistillerError, match="unsupported file type"):
        ds.save_uploads([("evil.sh", b"rm -rf /")], "s")


def test_upload_of_several_files_combines_them_with_a_batch_per_file():
    def plate(name: str, shift: float) -> bytes:
        rows = [{"Metadata_Plate": name, "Metadata_Well": f"{r}{c:02d}", "Metadata_pert_type":
                 "negcon" if c == 1 else "trt", "Cells_A": shift + c, "Cells_B": float(np.sin(c))}
                for r in "ABCDEFGH" for c in range(1, 13)]
        return pd.DataFrame(rows).to_csv(index=False).encode()

    at = _app()
    at.switch_page(LOAD).run()
    at.file_uploader(key="load_files").set_value([("b1.csv", plate("P1", 0), "text/csv"),
                                                  ("b2.csv", plate("P2", 5), "text/csv")])
    at.run()
    at.checkbox(key="load_batch_from_file_upload").check()
    at.button(key="load_read_upload").click().run()
    assert not at.exception and not _errors(at)
    raw = at.session_state[ds.DATASET_KEY].raw
    assert raw.n_wells == 192 and raw.batch is not None and len(set(raw.batch)) == 2
