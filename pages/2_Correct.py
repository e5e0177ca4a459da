"""Correct: choose effects and settings, run cpDistiller in a separate process, follow it, cancel it,
browse run history, compute reference methods and download the results."""

from __future__ import annotations

import tempfile
from functools import partial
from pathlib import Path

import pandas as pd
import streamlit as st

from cpdistiller_core import jobs
from cpdistiller_core.baselines import BASELINES
from cpdistiller_core.config import CpDistillerConfig
from cpdistiller_core.errors import CpDistillerError
from cpdistiller_core.plots.training import training_curves
from cpdistiller_core.preprocess import PreprocessConfig
from cpdistiller_core.runs import Run
from dashboard import state as ds
from dashboard.gate import through_app
from dashboard.widgets import format_seconds, settings_form, verdict_panel

through_app()

POLL_SECONDS = 1.0


@st.cache_resource
def _gpu() -> tuple[bool, str]:
    return ds.cuda_available()


@st.cache_data(show_spinner="Preparing the download…", max_entries=16)
def _export(run_dir: str, fmt: str, stamp: tuple, corrected: bool = False) -> bytes:
    run = Run.open(run_dir)
    with tempfile.TemporaryDirectory() as tmp:
        if fmt == "h5ad":  # the whole run: metadata, input features, embedding, corrected profiles
            return run.write_h5ad(Path(tmp) / "embedding.h5ad").read_bytes()
        return ds.export_embedding(run.corrected_profiles() if corrected else run.embedding(), fmt, Path(tmp))


@st.cache_data(show_spinner="Zipping the model…", max_entries=8)
def _model_zip(run_dir: str, stamp: tuple) -> bytes:
    return Run.open(run_dir).model_archive()


def image_features_fields(key: str) -> tuple[str, object]:
    """Where the optional per-well image features come from: a server path or an uploaded Parquet file."""
    with st.expander("Image features (extractor output)", expanded=False):
        st.caption("Optional: per-well image features written by `cpdistiller extract` (Metadata_Plate, "
                   "Metadata_Well, mesmer_* columns), joined on plate + well. A model trained with them "
                   "needs them again when applied to new plates.")
        path = st.text_input("Server path (a Parquet file or a folder of them)", key=f"{key}_img_path")
        upload = st.file_uploader("…or upload a Parquet file", type=["parquet"], key=f"{key}_img_upload")
    return path, upload


def image_features(fields: tuple[str, object]) -> object:
    path, upload = fields
    return ds.load_image_features(path, (upload.name, upload.getvalue()) if upload is not None else None,
                                  session_id=session_id)


st.title("Correct")
dataset: ds.Dataset | None = st.session_state.get(ds.DATASET_KEY)
session_id: str | None = st.session_state.get(ds.SESSION_ID_KEY)

if dataset is None:
    st.info("Load a dataset first (or the built-in demo) to start a correction. Past runs are listed below.")
    st.page_link("pages/1_Load_profiles.py", label="Load profiles", icon=":material/upload_file:")
else:
    st.caption(f"Dataset **{dataset.name}**: {dataset.raw.n_wells:,} wells, {dataset.raw.n_features} features; "
               + ("preprocessing: " + ("custom settings from the Load page"
                                  if dataset.preprocess_config not in (None, PreprocessConfig()) else "defaults")
                  if dataset.preprocess_enabled else "no preprocessing"))
    gpu, gpu_msg = _gpu()
    (st.success if gpu else st.info)(f"GPU: {gpu_msg}" if gpu else gpu_msg, icon=":material/memory:")
    with st.form("correct_form"):
        has_batch = dataset.raw.batch is not None
        options = (["batch"] if has_batch else []) + ["row", "column"]
        effects = st.multiselect("Effects to remove", options, default=options, key="correct_effects",
                                 help="Batch needs a batch column (set it on the Load page).")
        config = settings_form(CpDistillerConfig, "correct", choices={"device": ["auto", "cpu"] + (["cuda"] if gpu else [])})
        img_fields = image_features_fields("correct")
        launch = st.form_submit_button("Start correction", type="primary")
    if launch:
        try:
            run_dir = ds.launch_correction(dataset, config, effects, session_id=session_id,
                                           extractor=image_features(img_fields))
            st.session_state[ds.RUN_KEY] = str(run_dir)
            st.toast(f"Started {run_dir.name}")
        except CpDistillerError as exc:
            st.error(str(exc))


    finished = ds.finished_runs(session_id)
    with st.expander("Apply a saved model to the loaded dataset", expanded=False):
        st.caption("Incremental correction: a finished run's model, with its stored preprocessing, embeds the "
                   "loaded plates without retraining. The result is a new run (it records which run it was "
                   "applied from) that the Embedding explorer and Plate maps show.")
        if not finished:
            st.caption("No finished run in this session yet.")
        else:
            with st.form("apply_form"):
                names = [r["run_id"] for r in finished]
                pick = st.selectbox("Model of run", names, key="apply_run")
                apply_img = image_features_fields("apply")
                go = st.form_submit_button("Apply to the loaded dataset")
            if go:
                try:
                    chosen = finished[names.index(pick)]["run_dir"]
                    run_dir = ds.launch_apply(dataset, chosen, session_id=session_id,
                                              extractor=image_features(apply_img))
                    st.session_state[ds.RUN_KEY] = str(run_dir)
                    st.toast(f"Started {run_dir.name}")
                except CpDistillerError as exc:
                    st.error(str(exc))


def run_panel(run_dir: Path) -> None:
    """Progress, losses, cancel, errors and downloads of one run; polls while it runs."""
    try:
        state = jobs.status(run_dir)
    except CpDistillerError as exc:
        st.error(str(exc))
        return
    run = None
    try:
        run = Run.open(run_dir)
    except CpDistillerError:
        pass  # the child has not written config.json yet
    prog = run.progress if run else {}
    epoch, n_epochs = prog.get("epoch") or 0, prog.get("epochs") or (jobs.job_spec(run_dir).get("kwargs") or {}).get(
        "spec", {}).get("config", {}).get("epochs")
    elapsed = prog.get("elapsed_s") if prog.get("elapsed_s") is not None else state.elapsed
    eta = prog.get("eta_s") if not state.finished else 0
    fraction = 1.0 if state.status == jobs.DONE else float(prog.get("fraction", state.fraction) or 0.0)
    stage = prog.get("stage") or state.message
    st.markdown(f"**{run_dir.name}** · {state.status}")
    applied = run.applied_from if run is not None else None
    step = f"model of {Path(applied).name}, no training" if applied else f"epoch {epoch}/{n_epochs or '?'}"
    left = format_seconds(eta) if eta is not None else "—" if applied else "estimated after the first epoch"
    st.progress(min(1.0, fraction), text=f"{stage} · {step} · elapsed {format_seconds(elapsed)} · remaining {left}")
    if not state.finished:
        if st.button("Cancel run", key=f"cancel_{run_dir.name}", icon=":material/stop_circle:"):
            jobs.cancel(run_dir)
            st.rerun()
    if run is not None and run.train_log is not None:
        st.plotly_chart(training_curves(run.train_log, levels=run.levels), width="stretch", key=f"curves_{run_dir.name}")
        if prog.get("losses"):
            st.caption("Latest: " + " · ".join(f"{k} {v:.3g}" for k, v in prog["losses"].items()
                                                if isinstance(v, (int, float)) and k not in ("seconds", "triplets")))
    if state.status == jobs.FAILED:
        st.error(f"The run failed: {state.error or (run.error if run else 'see the log')}")
    elif state.status == jobs.CANCELLED:
        st.warning("The run was cancelled; the files it wrote are kept.")
    elif state.status == jobs.INTERRUPTED:
        st.warning(f"The run was interrupted: {state.error} The files it wrote are kept.")
    if state.status in (jobs.FAILED, jobs.CANCELLED, jobs.INTERRUPTED):
        with st.expander("Log and files written", expanded=state.status == jobs.FAILED):
            st.code(jobs.read_log(run_dir, 6000) or "(empty log)", language="text")
            st.write(Run(run_dir).files())
    if state.status == jobs.DONE:
        st.success(f"Finished in {format_seconds(elapsed)}. Open the Embedding explorer or Plate maps to look at it.")
        for note in run.notes if run is not None else []:  # effects left out, dose columns, ...
            st.warning(note, icon=":material/info:")
        verdict = run.verdict() if run is not None else None
        if verdict is not None:
            st.subheader("Did it help?")
            verdict_panel(verdict)
        stamp = run.stamp() if run is not None else ()
        c = st.columns(4)
        for i, fmt in enumerate(ds.EXPORT_FORMATS):  # files are built when the button is clicked
            c[i].download_button(f"Embedding ({fmt})", partial(_export, str(run_dir), fmt, stamp),
                                 file_name=f"{run_dir.name}_embedding.{fmt}", key=f"dl_{fmt}_{run_dir.name}",
                                 on_click="ignore", icon=":material/download:")
        c[3].download_button("Model (zip)", partial(_model_zip, str(run_dir), stamp),
                             file_name=f"{run_dir.name}_model.zip", mime="application/zip",
                             key=f"dl_model_{run_dir.name}", on_click="ignore", icon=":material/download:")
        if run is not None and run.has_corrected_profiles:
            c = st.columns(4)
            for i, fmt in enumerate(("parquet", "csv")):
                c[i].download_button(f"Corrected profiles ({fmt})", partial(_export, str(run_dir), fmt, stamp, True),
                                     file_name=f"{run_dir.name}_corrected_profiles.{fmt}",
                                     key=f"dl_corrected_{fmt}_{run_dir.name}", on_click="ignore",
                                     icon=":material/download:",
                                     help="Every input metadata column and the model's features minus each "
                                          "well's batch, row and column shift, in the input's units.")
    seen = st.session_state.setdefault("correct_seen_status", {})
    if seen.get(str(run_dir)) not in (None, state.status) and state.finished:
        seen[str(run_dir)] = state.status
        st.rerun()  # stop polling: redraw the page once with the final state
    seen[str(run_dir)] = state.status


st.subheader("Current run")
current = st.session_state.get(ds.RUN_KEY)
if not current:
    st.info("No run selected: start one above or open one from the history.")
else:
    current = Path(current)
    try:
        current_status = jobs.status(current).status
    except CpDistillerError:
        current_status = jobs.UNREADABLE  # run_panel shows why
    running = current_status not in (*jobs.TERMINAL, jobs.UNREADABLE)
    st.fragment(run_every=POLL_SECONDS if running else None)(run_panel)(current)

    if current_status == jobs.DONE:
        st.markdown("##### Reference methods")
        have = Run(current).reference_names()
        st.caption("Computed on the same preprocessed input, for side-by-side comparison in the explorer. "
                   + (f"Available: {', '.join(have)}." if have else "None computed yet."))
        c1, c2 = st.columns([3, 1], vertical_alignment="bottom")
        chosen = c1.multiselect("Methods", [m for m in BASELINES if m not in have],
                                default=[m for m in ("uncorrected", "harmony") if m not in have][:2], key="correct_refs")
        jobs_by_run = st.session_state.setdefault("correct_ref_jobs", {})
        ref_job = jobs_by_run.get(str(current))
        try:
            busy = ref_job is not None and not jobs.status(Path(ref_job)).finished
        except CpDistillerError:  # an unreadable reference job: shown by ref_panel, not running
            busy = False
        if c2.button("Compute", disabled=not chosen or busy, key="correct_refs_go"):
            try:
                jobs_by_run[str(current)] = str(ds.launch_references(current, chosen, session_id=session_id))
                st.rerun()
            except CpDistillerError as exc:
                st.error(str(exc))

        def ref_panel(job_dir: Path) -> None:
            try:
                state = jobs.status(job_dir)
            except CpDistillerError as exc:
                st.error(f"Reference methods: {exc}")
                return
            if not state.finished:
                st.progress(state.fraction, text=f"Reference methods: {state.message} (elapsed {format_seconds(state.elapsed)})")
            elif state.status in (jobs.FAILED, jobs.INTERRUPTED):
                st.error(f"Reference methods: {state.error}")
            seen = st.session_state.setdefault("correct_ref_seen", {})
            if seen.get(str(job_dir)) not in (None, state.status) and state.finished:
                seen[str(job_dir)] = state.status
                st.rerun()  # list the new references
            seen[str(job_dir)] = state.status

        if ref_job:
            st.fragment(run_every=POLL_SECONDS if busy else None)(ref_panel)(Path(ref_job))

def history_table(session_id: str | None, columns: list[str]) -> None:
    """The session's runs; re-read every two seconds while one of them is queued or running."""
    table = pd.DataFrame(ds.session_runs(session_id))
    table["error"] = table["error"].fillna("")
    table["started"] = pd.to_datetime(table["created"], unit="s").dt.strftime("%Y-%m-%d %H:%M:%S")
    table["elapsed"] = table["elapsed"].map(format_seconds)
    st.dataframe(table[[c for c in columns if c in table]].rename(columns=lambda c: c.replace("meta.", "")),
                 hide_index=True, width="stretch")


st.subheader("Run history")
rows = ds.session_runs(session_id)  # this session's runs only; unreadable ones are listed with their reason
if not rows:
    st.caption("No runs yet.")
else:
    table = pd.DataFrame(rows)
    show = ["run_id", "status", "started", "elapsed", "meta.dataset", "meta.effects", "meta.epochs", "error"]
    busy_runs = bool((~table["status"].isin([*jobs.TERMINAL, jobs.UNREADABLE])).any())
    st.fragment(run_every=POLL_SECONDS * 2 if busy_runs else None)(history_table)(session_id, show)
    ids = table["run_id"].tolist()
    pick = st.selectbox("Open a run", ids, index=ids.index(Path(current).name) if current and Path(current).name in ids
                        else 0, key="correct_open")
    if st.button("Open", key="correct_open_go"):
        st.session_state[ds.RUN_KEY] = table.loc[table["run_id"] == pick, "run_dir"].iloc[0]
        st.rerun()
