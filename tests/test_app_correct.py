"""Correct, Embedding explorer and Plate maps pages (AppTest) on real short runs through the job runner."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from cpdistiller_core import jobs
from cpdistiller_core.config import CpDistillerConfig
from cpdistiller_core.profiles import Profiles, Roles
from cpdistiller_core.runs import Run, add_references
from cpdistiller_core.settings import settings_of
from dashboard import state as ds

APP = str(Path(__file__).resolve().parents[1] / "app.py")
CORRECT, EXPLORER, PLATES = "pages/2_Correct.py", "pages/3_Embedding_explorer.py", "pages/4_Plate_maps.py"
START = "FormSubmitter:correct_form-Start correction"

pytestmark = pytest.mark.slow


def _errors(at: AppTest) -> list[str]:
    """Error messages of the page, except the "did it help?" verdict (a 2-epoch run may rightly be 'bad')."""
    return [e.value for e in at.error if not e.value.startswith("Did it help?")]


def _demo_app() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=240)
    at.run()
    at.button(key="home_demo").click().run()
    assert not at.exception and not _errors(at)
    return at


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One short demo correction run from the Correct page.

    Module-scoped fixtures are set up before conftest's autouse one, so point the app and cache
    directories at the same temporary folders here (never the user's real ones)."""
    base = tmp_path_factory.getbasetemp()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CPDISTILLER_CACHE", str(base / "cache"))
        mp.setenv("CPDISTILLER_HOME", str(base / "home"))
        yield _short_run()


def _short_run() -> tuple[AppTest, Path]:
    at = _demo_app()
    at.switch_page(CORRECT).run()
    assert not at.exception
    assert any("GPU" in x.value or "CPU" in x.value for x in list(at.info) + list(at.success))
    for s in settings_of(CpDistillerConfig):  # the form is generated from the settings schema: one widget each
        assert at.session_state[f"correct_{s.name}"] == s.default, s.name
    assert at.number_input(key="correct_epochs").value == 100  # the engine's defaults are offered
    assert at.number_input(key="correct_tied_layout_epochs").value == 50
    assert at.number_input(key="correct_batch_size").value == 256
    at.number_input(key="correct_epochs").set_value(2)
    at.multiselect(key="correct_effects").set_value(["batch", "row", "column"])
    assert at.selectbox(key="correct_adversary_wells").value == CpDistillerConfig().adversary_wells
    assert at.selectbox(key="correct_adversary_encoder").value == CpDistillerConfig().adversary_encoder
    at.selectbox(key="correct_adversary_wells").set_value("auto")
    at.button(key=START).click().run()
    assert not at.exception and not _errors(at)
    run_dir = Path(at.session_state[ds.RUN_KEY])
    state = jobs.wait(run_dir, timeout=600)
    assert state.status == jobs.DONE, jobs.read_log(run_dir)
    at.run()
    assert str(run_dir).startswith(str(Path(__import__("os").environ["CPDISTILLER_HOME"])))
    return at, run_dir


def test_a_run_goes_through_the_job_runner_and_shows_results(finished):
    at, run_dir = finished
    assert not at.exception and not _errors(at)
    spec = jobs.job_spec(run_dir)
    assert spec["target"] == ds.CORRECTION_TARGET
    run_spec = spec["kwargs"]["spec"]
    assert run_spec["config"]["epochs"] == 2 and run_spec["effects"] == ["batch", "row", "column"]
    assert run_spec["config"]["adversary_wells"] == "auto"
    state = jobs.status(run_dir)
    assert state.pid != __import__("os").getpid()  # trained in another process
    for name in ("config.json", "progress.json", "train_log.csv", "embedding.parquet", "report.json"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "model").is_dir()
    assert len(pd.read_csv(run_dir / "train_log.csv")) == 2
    assert any("Finished" in s.value for s in at.success)
    labels = [b.label for b in at.get("download_button")]
    assert labels == ["Embedding (parquet)", "Embedding (csv)", "Embedding (h5ad)", "Model (zip)"]
    assert len(at.get("plotly_chart")) >= 1  # loss curves
    assert (run_dir / "verdict.json").is_file()
    assert any(h.value == "Did it help?" for h in at.subheader)
    verdict = at.dataframe[0].value  # the verdict table comes first, then the history
    assert {"replicates", "neighbours", "controls", "row", "column"} <= set(verdict["check"])
    assert set(verdict["status"]) <= {"good", "warn", "bad"}
    # every sentence in full, which the table may cut
    said = " ".join(m.value for e in at.expander if e.label == "What each check says" for m in e.markdown)
    assert said and all(sentence in said for sentence in verdict["what it means"])
    history = at.dataframe[1].value
    assert run_dir.name in history["run_id"].tolist()


def test_reference_methods_are_computed_into_the_run(finished):
    at, run_dir = finished
    at.switch_page(CORRECT).run()
    at.multiselect(key="correct_refs").set_value(["uncorrected", "harmony"])
    at.button(key="correct_refs_go").click().run()
    assert not at.exception and not _errors(at)
    job = Path(at.session_state["correct_ref_jobs"][str(run_dir)])
    assert job != run_dir and jobs.job_spec(job)["target"] == ds.REFERENCE_TARGET
    state = jobs.wait(job, timeout=600)
    assert state.status == jobs.DONE, jobs.read_log(job)
    assert state.extra["result"] == ["uncorrected", "harmony"]
    at.run()
    assert not at.exception and not _errors(at)
    assert "Available: harmony, uncorrected." in " ".join(c.value for c in at.caption)
    assert sorted(p.name for p in (run_dir / "references").glob("*.parquet")) == ["harmony.parquet",
                                                                                  "uncorrected.parquet"]


def test_explorer_switches_colourings_and_highlights(finished):
    at, run_dir = finished
    at.session_state["explorer_method"] = "PCA"
    at.switch_page(EXPLORER).run()
    assert not at.exception and not _errors(at)
    panels = at.multiselect(key="explorer_panels")
    assert panels.value[:2] == ["uncorrected", "cpDistiller"]
    for colour in at.selectbox(key="explorer_color").options:
        at.selectbox(key="explorer_color").set_value(colour).run()
        assert not at.exception and not _errors(at), colour
        assert len(at.get("plotly_chart")) == 1
    pert = sorted(set(at.session_state[ds.DATASET_KEY].raw.perturbation))[3]
    at.multiselect(key="explorer_highlight").set_value([pert]).run()
    assert not at.exception and not _errors(at)
    # PCA coordinates were cached on disk, keyed by content + parameters
    from cpdistiller_core.reduce import ReduceParams, is_cached

    corrected = Run.open(run_dir).spaces()["cpDistiller"]
    assert is_cached(corrected.X, ReduceParams(method="pca"))
    assert not is_cached(corrected.X, ReduceParams(method="umap"))


def test_plate_maps_render_every_value_kind_and_variance(finished):
    at, run_dir = finished
    at.switch_page(PLATES).run()
    assert not at.exception and not _errors(at)
    # before vs after by default: a value both sides have
    assert at.selectbox(key="plates_kind").value == "Distance to the plate's negative-control centroid"
    for kind in at.selectbox(key="plates_kind").options:
        at.selectbox(key="plates_kind").set_value(kind).run()
        assert not at.exception and not _errors(at), kind
        assert len(at.get("plotly_chart")) == 4, kind  # heatmaps, row profile, column profile, variance
    # the demo's plate maps are shuffled between plates: all wells by default, controls one click away
    assert at.radio(key="plates_wells_all").value == "all"
    at.radio(key="plates_wells_all").set_value("negative").run()
    assert not at.exception and not _errors(at)
    assert len(at.get("plotly_chart")) == 4


def test_cancel_stops_the_process_and_keeps_the_run(tmp_path):
    at = _demo_app()
    at.switch_page(CORRECT).run()
    at.number_input(key="correct_epochs").set_value(2000)
    at.button(key=START).click().run()
    run_dir = Path(at.session_state[ds.RUN_KEY])
    at.run()
    at.button(key=f"cancel_{run_dir.name}").click().run()
    assert not at.exception
    state = jobs.status(run_dir)
    assert state.status == jobs.CANCELLED
    assert any("cancelled" in w.value for w in at.warning)
    assert (run_dir / jobs.JOB_FILE).is_file()  # kept


def test_a_failed_run_shows_its_error_and_log():
    meta = pd.DataFrame({"Metadata_Plate": ["P1"] * 96,
                         "Metadata_Well": [f"{r}{c:02d}" for r in "ABCDEFGH" for c in range(1, 13)]})
    X = np.ones((96, 4), np.float32)  # constant features: preprocessing can keep none
    raw = Profiles(meta=meta, X=X, features=["Cells_a", "Cells_b", "Cells_c", "Cells_d"],
                   roles=Roles(plate="Metadata_Plate", well="Metadata_Well"), source="constant.csv")
    at = AppTest.from_file(APP, default_timeout=240)
    at.session_state[ds.DATASET_KEY] = ds.Dataset(name="constant", raw=raw, origin="upload")
    at.session_state[ds.SESSION_ID_KEY] = "t"
    at.run()
    at.switch_page(CORRECT).run()
    assert at.multiselect(key="correct_effects").options == ["row", "column"]  # no batch column
    at.number_input(key="correct_epochs").set_value(2)
    at.button(key=START).click().run()
    run_dir = Path(at.session_state[ds.RUN_KEY])
    state = jobs.wait(run_dir, timeout=300)
    assert state.status == jobs.FAILED
    at.run()
    assert not at.exception
    shown = _errors(at)
    assert len(shown) == 1 and shown[0].startswith("The run failed:") and state.error in shown[0]
    assert any("error" in c.value.lower() for c in at.code)  # the log
    assert (run_dir / "config.json").is_file() and (run_dir / "report.json").is_file()  # what it wrote is kept


def test_batch_correction_without_a_batch_column_is_refused_before_starting():
    meta = pd.DataFrame({"Metadata_Plate": ["P1"] * 96,
                         "Metadata_Well": [f"{r}{c:02d}" for r in "ABCDEFGH" for c in range(1, 13)]})
    raw = Profiles(meta=meta, X=np.random.default_rng(0).normal(size=(96, 5)).astype(np.float32),
                   features=[f"Cells_{i}" for i in range(5)], roles=Roles(plate="Metadata_Plate", well="Metadata_Well"))
    with pytest.raises(ds.CpDistillerError, match="no batch column"):
        ds.launch_correction(ds.Dataset(name="x", raw=raw), {"epochs": 1}, ["batch"])
    with pytest.raises(ds.CpDistillerError, match="at least one"):
        ds.launch_correction(ds.Dataset(name="x", raw=raw), {"epochs": 1}, [])
    with pytest.raises(ds.CpDistillerError, match="epochs"):
        ds.launch_correction(ds.Dataset(name="x", raw=raw), {"epochs": 0}, ["row"])


def test_downloads_round_trip_the_embedding_and_zip_the_model(finished, tmp_path):
    import io
    import zipfile

    from cpdistiller_core.io import read_profiles
    from cpdistiller_core.runs import load_run

    _, run_dir = finished
    emb = load_run(run_dir).embedding()
    for fmt in ("parquet", "csv", "h5ad"):
        data = ds.export_embedding(emb, fmt, tmp_path)
        path = tmp_path / f"download.{fmt}"
        path.write_bytes(data)
        if fmt == "csv":  # the sidecar with roles travels separately; give the roles explicitly
            back = read_profiles(str(path), emb.roles, features=emb.features)
        else:
            back = read_profiles(str(path))
        assert back.features == emb.features
        np.testing.assert_allclose(back.X, emb.X, rtol=1e-5, atol=1e-6)
    names = zipfile.ZipFile(io.BytesIO(Run.open(run_dir).model_archive())).namelist()
    assert names and all(n.startswith("model/") for n in names)
    assert {Path(n).name for n in names} >= {p.name for p in (run_dir / "model").iterdir() if p.is_file()}


def test_reference_jobs_report_failed_methods_and_keep_the_others(finished):
    _, run_dir = finished
    with pytest.raises(ds.CpDistillerError, match="launch|choose reference methods"):
        ds.launch_references(run_dir, ["no_such_method"])
    with pytest.raises(ds.CpDistillerError) as info:
        add_references(str(run_dir), ["sphering", "no_such_method"])
    assert "no_such_method" in str(info.value) and "computed: sphering" in str(info.value)
    assert (run_dir / "references" / "sphering.parquet").is_file()


def test_apply_a_saved_model_to_the_loaded_dataset(finished):
    """The Correct page's "Apply a saved model" section: a job running runs.run_apply into a new run that
    records where its model came from and that the Explorer shows like any run."""
    at, run_dir = finished
    at.switch_page(CORRECT).run()
    at.selectbox(key="apply_run").set_value(run_dir.name)
    at.button(key="FormSubmitter:apply_form-Apply to the loaded dataset").click().run()
    assert not at.exception and not _errors(at)
    applied = Path(at.session_state[ds.RUN_KEY])
    assert applied != run_dir and jobs.job_spec(applied)["target"] == ds.APPLY_TARGET
    state = jobs.wait(applied, timeout=600)
    assert state.status == jobs.DONE, jobs.read_log(applied)
    run = Run.open(applied)
    assert run.applied_from == str(run_dir.resolve())
    # Same demo, same model and preprocessing: the embedding the run wrote is reproduced.
    np.testing.assert_allclose(run.embedding().X, Run.open(run_dir).embedding().X, atol=1e-4)
    at.run()
    assert not at.exception and not _errors(at)
    assert applied.name in at.dataframe[-1].value["run_id"].tolist()
    assert any(f"model of {run_dir.name}, no training" in p.text for p in at.get("progress"))
    at.switch_page(EXPLORER).run()
    assert not at.exception and not _errors(at)
    at.session_state[ds.RUN_KEY] = str(run_dir)  # later tests look at the trained run


def test_image_features_go_to_the_job_and_train_the_joint_module(tmp_path):
    from cpdistiller_core.datasets import make_demo_screen

    raw = make_demo_screen(seed=2, n_batches=1, plates_per_batch=2, n_features=40).profiles
    rng = np.random.default_rng(0)
    table = pd.concat([raw.meta[["Metadata_Plate", "Metadata_Well"]].reset_index(drop=True),
                       pd.DataFrame(rng.normal(size=(raw.n_wells, 324)), columns=[f"mesmer_{i}" for i in range(324)])],
                      axis=1)
    buf = __import__("io").BytesIO()
    table.to_parquet(buf)
    sid = ds.new_session_id()
    images = ds.load_image_features(upload=("plate_features.parquet", buf.getvalue()), session_id=sid)
    assert images.features == [f"mesmer_{i}" for i in range(324)] and images.source == "plate_features.parquet"
    assert ds.load_image_features("", None, session_id=sid) is None
    with pytest.raises(ds.CpDistillerError, match="Parquet"):
        ds.load_image_features(upload=("features.csv", b"a,b\n"), session_id=sid)
    dataset = ds.Dataset(name="demo", raw=raw)
    run_dir = ds.launch_correction(dataset, {"epochs": 1, "hidden_dim": 32, "device": "cpu"}, ["row", "column"],
                                   session_id=sid, extractor=images)
    assert "extractor" in jobs.job_spec(run_dir)["inputs"]
    state = jobs.wait(run_dir, timeout=600)
    assert state.status == jobs.DONE, jobs.read_log(run_dir)
    run = Run.open(run_dir)
    assert run.config["extractor"] == "plate_features.parquet"
    assert run.model().extractor_features == images.features


def test_a_finished_run_shows_what_the_fit_warned_about(finished):
    """The fit's warnings (an effect left out, a column that sets the dose, ...) are shown with the run;
    the verdict's own are not repeated."""
    import json

    at, run_dir = finished
    report_path = run_dir / "report.json"
    original = report_path.read_text()
    report = json.loads(original)
    note = "demo.csv: not corrected: row (100% of replicated treated wells in one row)."
    report["warnings"] = [note, "did it help? row: Row still explains 33% of the controls' variation."]
    try:
        report_path.write_text(json.dumps(report))
        at.switch_page(CORRECT).run()
        assert not at.exception
        shown = [w.value for w in at.warning]
        assert note in shown and not any(w.startswith("did it help?") for w in shown)
    finally:
        report_path.write_text(original)
