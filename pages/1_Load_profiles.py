"""Load profiles: upload files or give server paths (or the demo), check and fix roles, QC, preprocess."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from cpdistiller_core.access import DATA_ROOT_ENV, data_root
from cpdistiller_core.errors import CpDistillerError
from cpdistiller_core.io.formats import readable_hint
from cpdistiller_core.plots.plates import plate_layout_thumbnails
from cpdistiller_core.preprocess import PreprocessConfig
from dashboard import state as ds
from dashboard.gate import through_app
from dashboard.widgets import settings_form

through_app()

NONE = "(none)"


def _fail(exc: Exception) -> None:
    """A readable message for the user; never a traceback."""
    if isinstance(exc, CpDistillerError):
        st.error(str(exc))
    else:
        st.error(f"Could not read the data: {type(exc).__name__}: {exc}")


def _set_dataset(dataset: ds.Dataset) -> None:
    st.session_state[ds.DATASET_KEY] = dataset
    st.session_state.pop(ds.RUN_KEY, None)


@st.cache_resource(show_spinner="Simulating the demo screen…")
def _demo(seed: int) -> ds.Dataset:
    return ds.load_demo(seed)


st.title("Load profiles")
st.caption("Well-level CellProfiler profiles: one row per well, metadata columns plus numeric features. "
           "Several files are combined on their shared features.")

regex = st.text_input("Feature columns (regular expression, optional)", key="load_feature_regex",
                      placeholder="^(Cells|Nuclei|Cytoplasm|Image)_", help="Leave empty to use CellProfiler-named "
                      "numeric columns (Cells_, Nuclei_, Cytoplasm_, Image_…).")
tab_upload, tab_path, tab_jump, tab_demo = st.tabs(["Upload", "Server path", "From JUMP", "Demo"])

with tab_upload:
    st.markdown(f"{readable_hint()}; several files at once; **up to {ds.MAX_UPLOAD_MB} MB per file**. "
                "Uploads stay in this session's workspace and are deleted after a day.")
    files = st.file_uploader("Profile files", accept_multiple_files=True, key="load_files",
                             type=ds.UPLOAD_TYPES)
    per_file = st.checkbox("Each file is one batch", key="load_batch_from_file_upload",
                           help="Adds a batch column named after the file (e.g. two imaging batches in two files).")
    if st.button("Read uploaded files", type="primary", disabled=not files, key="load_read_upload"):
        try:
            with st.spinner("Reading…"):
                session_id = st.session_state.setdefault(ds.SESSION_ID_KEY, ds.new_session_id())
                saved = ds.save_uploads([(f.name, f.getvalue()) for f in files], session_id)
                _set_dataset(ds.load_files(saved, batch_from_file=per_file, origin="upload", feature_regex=regex,
                                           source=files[0].name if len(files) == 1 else None))
            st.success(f"Loaded {len(saved)} file(s).")
        except Exception as exc:  # noqa: BLE001 - every failure is shown as a message
            _fail(exc)

with tab_path:
    root = data_root()
    st.caption(f"Files under the data root **{root}** (absolute paths, or relative to it)." if root else
               f"Reading files on the server is off: the administrator can set {DATA_ROOT_ENV} to a data folder.")
    text = st.text_area("Paths on the server (one per line)", key="load_paths",
                        placeholder="/data/screen/plate1.csv.gz\n/data/screen/plate2.csv.gz")
    per_file_p = st.checkbox("Each file is one batch", key="load_batch_from_file_path")
    if st.button("Read files", type="primary", key="load_read_paths"):
        try:
            with st.spinner("Reading…"):
                paths = ds.server_paths(text)
                _set_dataset(ds.load_files(paths, batch_from_file=per_file_p, origin="path", feature_regex=regex))
            st.success(f"Loaded {len(paths)} file(s).")
        except Exception as exc:  # noqa: BLE001
            _fail(exc)

with tab_jump:
    st.markdown("Well-level CellProfiler profiles of **JUMP** from the public Cell Painting Gallery, joined with "
                "the consortium's plate, gene, compound and control tables. Downloads are cached; cached plates "
                "load without network. The pilot (CPJUMP1: A549 and U2OS; compounds, CRISPR guides and ORFs) "
                "holds the cpDistiller paper's retrieval tasks.")
    jump_set = st.radio("Data set", list(ds.JUMP_DATASETS), format_func=ds.JUMP_DATASETS.get, horizontal=True,
                        key="jump_dataset")
    meta_dir = st.text_input("Local folder with JUMP metadata tables (optional)", key="jump_metadata_dir",
                             help="cpg0016: plate.csv.gz, well.csv.gz, orf.csv.gz, crispr.csv.gz, compound.csv.gz, "
                                  "perturbation_control.csv from github.com/jump-cellpainting/datasets; cpg0000: "
                                  "experiment-metadata.tsv and the JUMP-Target-1_* tables from "
                                  "github.com/jump-cellpainting/2024_Chandrasekaran_NatureMethods. Tables "
                                  "missing there are downloaded and cached.")
    if st.button("List JUMP plates", key="jump_list"):
        try:
            with st.spinner("Reading JUMP's plate table…"):
                st.session_state[f"jump_table_{jump_set}"] = ds.jump_client(meta_dir or None, jump_set).list_plates()
        except Exception as exc:  # noqa: BLE001 - offline or bad folder: a message, not a traceback
            _fail(exc)
    table = st.session_state.get(f"jump_table_{jump_set}")
    if table is not None:
        client = ds.jump_client(meta_dir or None, jump_set)
        c1, c2, c3 = st.columns(3)
        sources = sorted(table["Metadata_Source"].unique(), key=lambda s: (len(s), s))
        source = c1.selectbox("Source", sources, key="jump_source",
                              index=sources.index("source_4") if "source_4" in sources else 0)
        in_source = table[table["Metadata_Source"] == source]
        ptype = c2.selectbox("Plate type", sorted(in_source["Metadata_PlateType"].unique()), key="jump_type")
        of_type = in_source[in_source["Metadata_PlateType"] == ptype]
        batches = c3.multiselect("Batches", sorted(of_type["Metadata_Batch"].unique()), key="jump_batches")
        candidates = of_type[of_type["Metadata_Batch"].isin(batches)] if batches else of_type
        plate_label = ({} if "Metadata_Cell_type" not in candidates.columns else {  # the pilot: cell type, hours
            p: f"{p} · {c} {t} h" for p, c, t in candidates[["Metadata_Plate", "Metadata_Cell_type",
                                                              "Metadata_Time"]].itertuples(index=False)})
        chosen = st.multiselect(f"Plates ({len(candidates)} available)", list(dict.fromkeys(candidates["Metadata_Plate"])),
                                key="jump_plates", max_selections=50, format_func=lambda p: plate_label.get(p, p))
        selection = candidates[candidates["Metadata_Plate"].isin(chosen)].reset_index(drop=True)
        b1, b2 = st.columns(2)
        if b1.button("Estimate download", disabled=not chosen, key="jump_plan"):
            try:
                st.info(client.plan(selection).describe())
            except Exception as exc:  # noqa: BLE001
                _fail(exc)
        if b2.button("Fetch and load", type="primary", disabled=not chosen, key="jump_fetch"):
            bar = st.progress(0.0, text="Checking the cache…")
            try:
                _set_dataset(ds.load_jump(client, selection,
                                          progress=lambda f, m: bar.progress(min(max(f, 0.0), 1.0), text=m)))
                st.success(f"Loaded {len(selection)} JUMP plate(s).")
            except Exception as exc:  # noqa: BLE001
                _fail(exc)

with tab_demo:
    st.markdown("A simulated 384-well screen with known batch, row and column effects and known biology.")
    if st.button("Load the demo screen", type="primary", key="load_demo"):
        try:
            _set_dataset(_demo(0))
        except Exception as exc:  # noqa: BLE001
            _fail(exc)

dataset: ds.Dataset | None = st.session_state.get(ds.DATASET_KEY)
if dataset is None:
    st.info("Load a dataset to see its roles, quality summary and preprocessing.")
    st.stop()

raw = dataset.raw
st.divider()
st.subheader(f"Dataset: {dataset.name}")
for w in dataset.warnings:
    st.warning(w)

# ----- roles ------------------------------------------------------------------------------------
st.markdown("#### Roles")
columns = [str(c) for c in raw.meta.columns]
roles = raw.roles
role_table = pd.DataFrame([{"role": r, "column": getattr(roles, r) or "—", "why": dataset.role_reasons.get(r, "")}
                           for r in ds.ROLE_FIELDS])
st.dataframe(role_table, hide_index=True, width="stretch")

with st.expander("Fix roles and the negative-control definition", expanded=False):
    choice: dict[str, object] = {}
    cols = st.columns(4)
    for i, r in enumerate(ds.ROLE_FIELDS):
        current = getattr(roles, r)
        options = [NONE] + columns
        choice[r] = cols[i % 4].selectbox(r, options, index=options.index(current) if current in columns else 0,
                                          key=f"load_role_{r}")
    control_col = choice["control"] if choice["control"] != NONE else None
    neg_default: list[str] = []
    values: list[str] = []
    if control_col:
        values = sorted(raw.meta[control_col].dropna().astype(str).str.strip().unique().tolist())[:500]
        neg_default = [v for v in roles.negative_values if v in values] if control_col == roles.control else []
    c1, c2, c3 = st.columns([2, 2, 1])
    neg = c1.multiselect("Negative-control values", values, default=neg_default, key="load_neg_values",
                         help="Wells whose control column holds one of these values are negative controls (e.g. DMSO).")
    pos = c2.multiselect("Positive-control values", values,
                         default=[v for v in roles.positive_values if v in values] if control_col == roles.control else [],
                         key="load_pos_values")
    fmt = c3.selectbox("Plate format", ["auto", "96", "384", "1536"],
                       index=["auto", "96", "384", "1536"].index(str(roles.plate_format) if roles.plate_format else "auto"),
                       key="load_plate_format")
    if st.button("Apply roles", key="load_apply_roles"):
        overrides = {r: (None if v == NONE else v) for r, v in choice.items()}
        if overrides["well"]:
            overrides["row"] = overrides["column"] = None  # a well column wins over separate row/column
        overrides["negative_values"] = list(neg)
        overrides["positive_values"] = list(pos)
        overrides["plate_format"] = None if fmt == "auto" else int(fmt)
        try:
            _set_dataset(ds.with_roles(dataset, overrides))
            st.rerun()
        except Exception as exc:  # noqa: BLE001
            _fail(exc)

# ----- preview and QC ---------------------------------------------------------------------------
st.markdown("#### Preview")
head = raw.meta[roles.columns()].head(50)
preview = pd.concat([head, pd.DataFrame(raw.X[:50, :12], columns=raw.features[:12], index=head.index)], axis=1)
st.dataframe(preview, width="stretch", height=240)
st.caption(f"First 50 of {raw.n_wells:,} wells; role columns and the first 12 of {raw.n_features} features.")

st.markdown("#### Quality summary")
memo = st.session_state.setdefault("load_summary_memo", {})
if memo.get("profiles") is not raw:  # count NaN/inf over a large matrix once per dataset, not per rerun
    memo.clear()
    memo.update(profiles=raw, summary=raw.summary())
summary = memo["summary"]
m = st.columns(6)
m[0].metric("Plates", summary["plates"])
m[1].metric("Wells", f"{summary['wells']:,}")
m[2].metric("Features", summary["features"])
m[3].metric("Negative controls", summary["negative_controls"])
m[4].metric("NaN values", f"{summary['nan_values']:,}")
m[5].metric("Inf values", f"{summary['inf_values']:,}")
left, right = st.columns([2, 5])
with left:
    per_plate = pd.DataFrame({"plate": list(summary["negative_controls_per_plate"]),
                              "negative controls": list(summary["negative_controls_per_plate"].values())})
    wells = pd.Series(raw.plate).value_counts()
    per_plate["wells"] = per_plate["plate"].map(wells).fillna(0).astype(int)
    st.dataframe(per_plate.rename(columns={"negative controls": "neg. controls"}), hide_index=True, width="stretch",
                 column_config={"plate": st.column_config.TextColumn(width="medium")})
    st.caption(f"{summary['plate_format']}-well plates · batches: {summary['batches'] or '—'} · "
               f"perturbations: {summary['perturbations']}")
with right:
    st.plotly_chart(plate_layout_thumbnails(raw), width="stretch", key="load_thumbs")

# ----- preprocessing ----------------------------------------------------------------------------
st.markdown("#### Preprocessing")
st.caption("Plate-wise robust (MAD) normalisation to the negative controls, pycytominer feature selection, "
           "clipping and z-scoring (the paper's pipeline). Skip it for profiles that are already normalised.")
if dataset.already_normalized:
    st.info(dataset.already_normalized[0].upper() + dataset.already_normalized[1:], icon=":material/info:")
with st.form("load_preprocess"):
    enabled = st.checkbox("Preprocess before correction", value=dataset.preprocess_enabled, key="load_pp_enabled")
    by_options = ["plate"] + (["batch"] if raw.batch is not None else [])
    settings = settings_form(PreprocessConfig, "load_pp", columns=4,
                             choices={"normalize_by": by_options, "normalize_samples": ["negcon", "all"]},
                             titles={"more": "More settings (pycytominer's defaults)"})
    submitted = st.form_submit_button("Run preprocessing", type="primary")
if submitted:
    try:
        config = PreprocessConfig.from_dict(settings) if enabled else None
        with st.spinner("Preprocessing…"):
            _set_dataset(ds.apply_preprocessing(dataset, config))
        dataset = st.session_state[ds.DATASET_KEY]
    except Exception as exc:  # noqa: BLE001
        _fail(exc)

report = dataset.preprocess_report
if report is not None:
    s = report.summary()
    m = st.columns(4)
    m[0].metric("Features kept", f"{s['features_kept']} / {s['features_in']}")
    m[1].metric("Wells kept", f"{s['wells_out']} / {s['wells_in']}")
    m[2].metric("Clipped values", s["clipped_values"])
    m[3].metric("Imputed values", s["imputed_values"])
    if s["clipped_values"]:
        share = s["clipped_values"] / max(1, s["wells_out"] * s["features_kept"])
        st.warning(f"Clipping to ±{report.config.clip:g} changed {s['clipped_values']:,} values ({share:.2%}); "
                   "raise the limit, or set it to 0 to keep every value.")
    for w in report.warnings:
        st.warning(w)
    t1, t2 = st.tabs(["Dropped features", "Dropped wells"])
    t1.dataframe(report.dropped_features_table(), hide_index=True, width="stretch", height=260)
    t2.dataframe(report.dropped_rows_table(), hide_index=True, width="stretch", height=260)
    st.success("Ready to correct: the Correct page trains on these preprocessed profiles.")
elif not dataset.preprocess_enabled:
    st.info("Preprocessing is off: the correction trains on the profiles as loaded.")
else:
    st.info("Not previewed yet: the correction will preprocess with the default settings shown above.")
st.page_link("pages/2_Correct.py", label="Go to Correct", icon=":material/arrow_forward:")
