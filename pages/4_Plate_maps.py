"""Plate maps: per-plate heatmaps before vs after correction, row/column profiles and the variance
explained by batch / plate / row / column."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from cpdistiller_core import jobs, platemap
from cpdistiller_core.errors import CpDistillerError
from cpdistiller_core.plots.plates import plate_heatmaps, position_profile_figure, variance_bars
from cpdistiller_core.reduce import content_hash
from cpdistiller_core.runs import UNCORRECTED_PCA, Run
from dashboard import state as ds
from dashboard.gate import through_app

through_app()

KINDS = {"feature": "A feature (uncorrected)", "dimension": "An embedding dimension (corrected)",
         "pc": "A principal component", "control_distance": "Distance to the plate's negative-control centroid",
         "metadata": "Cell count / a numeric metadata column"}


@st.cache_data(show_spinner="Computing variance explained…", max_entries=16)
def _variance(token: str, _sides: dict, wells: str, n_pcs: int) -> pd.DataFrame:
    return platemap.variance_table(_sides, n_pcs=n_pcs, wells=wells)


@st.cache_data(show_spinner=False, max_entries=16)
def _default_wells(token: str, _base) -> tuple[str, str]:
    return platemap.default_wells(_base)  # a group-by over every well: once per dataset or run, not per click


@st.cache_data(show_spinner=False, max_entries=64)
def _values(token: str, side: str, _profiles, kind: str, which) -> np.ndarray:
    return platemap.well_values(_profiles, kind, which)


st.title("Plate maps")
dataset: ds.Dataset | None = st.session_state.get(ds.DATASET_KEY)
run_dir = st.session_state.get(ds.RUN_KEY)
sides: dict = {}
token = ""
try:
    if run_dir and jobs.status(Path(run_dir)).status == jobs.DONE:
        sides = {k: v for k, v in ds.run_spaces(run_dir).items() if k != UNCORRECTED_PCA}
        token = f"{run_dir}:{Run(run_dir).stamp()}"
        st.caption(f"Run **{Path(run_dir).name}**")
    elif dataset is not None:
        sides = {"uncorrected": dataset.current}
        token = f"dataset:{content_hash(dataset.current.X)}:{dataset.name}"
        st.info("No finished correction selected: showing the uncorrected profiles only.")
except CpDistillerError as exc:
    st.error(str(exc))
if not sides:
    st.info("Load a dataset (or the demo) and run a correction to see plate maps.")
    st.page_link("pages/1_Load_profiles.py", label="Load profiles", icon=":material/upload_file:")
    st.stop()

base = sides["uncorrected"]
default, why = _default_wells(token, base)
wells = st.radio("Wells", ["all", "negative"], index=["all", "negative"].index(default), horizontal=True,
                 key=f"plates_wells_{default}", format_func={"all": "all wells", "negative": "negative controls"}.get,
                 help="Every plot on this page uses these wells.")
st.caption(f"Default: {why}")
c = st.columns([3, 2, 3])
kinds = [k for k in KINDS if k != "dimension" or len(sides) > 1]
labels = [KINDS[k] for k in kinds]
picked = c[0].selectbox("Value", labels, key="plates_kind",
                        index=kinds.index("control_distance") if len(sides) > 1 and base.negative_mask.any() else 0)
kind = kinds[labels.index(picked)]
which = None
if kind == "feature":
    which = c[1].selectbox("Feature", base.features, key="plates_feature")
    use = {"uncorrected": base}
elif kind == "dimension":
    emb = sides["cpDistiller"]
    which = c[1].selectbox("Dimension", emb.features, key="plates_dimension")
    use = {"cpDistiller": emb}
elif kind == "pc":
    which = int(c[1].number_input("Principal component", 1, 50, 1, key="plates_pc")) - 1
    use = sides
elif kind == "control_distance":
    use = sides
else:
    numeric = platemap.numeric_metadata_columns(base)
    if not numeric:
        st.warning("No numeric metadata column (such as a cell count) in this dataset.")
        st.stop()
    which = c[1].selectbox("Column", numeric, key="plates_meta")
    use = {"metadata": base}
plates = list(pd.unique(base.plate))
chosen = c[2].multiselect("Plates", plates, default=plates[:2], key="plates_plates")
standardise = st.toggle("Standardise each side (robust z-score, one colour scale)", value=len(use) > 1,
                        key="plates_standardise")

label = f"PC{int(which) + 1}" if kind == "pc" else "distance to control centroid" if kind == "control_distance" \
    else str(which)
try:
    values = {side: platemap.restrict_values(prof, _values(token, side, prof, kind, which), wells)
              for side, prof in use.items()}
    if chosen:
        grids = {side: {p: platemap.plate_grid(use[side], v, p) for p in chosen} for side, v in values.items()}
        st.plotly_chart(plate_heatmaps(grids, base.geometry, label, standardise=standardise), width="stretch",
                        key="plates_heatmaps")
    else:
        st.info("Choose plates to map.")
    st.markdown("#### Row and column profiles")
    st.caption(f"Mean ± standard deviation of the value per row and per column over all plates ({wells} wells); "
               "a slope or a curve is a position gradient. Sides are standardised to be comparable.")
    left, right = st.columns(2)
    for col, axis in ((left, "row"), (right, "column")):
        profs = {side: platemap.position_profile(use[side], v, axis) for side, v in values.items()}
        strength = {side: platemap.gradient_strength(p) for side, p in profs.items()}
        col.plotly_chart(position_profile_figure(profs, axis, label, standardise=True), width="stretch",
                         key=f"plates_profile_{axis}")
        col.caption(f"{axis} gradient (spread of {axis} means / within-{axis} spread): "
                    + ", ".join(f"{s} {g:.2f}" for s, g in strength.items()))
except CpDistillerError as exc:
    st.error(str(exc))

st.markdown("#### Variance explained by technical labels")
n_pcs = int(st.columns([1, 4])[0].number_input("Top PCs", 2, 100, 30, key="plates_var_pcs"))
try:
    table = _variance(token, sides, wells, n_pcs)
    if table.empty:
        st.info("No technical label with two or more levels among these wells.")
    else:
        st.plotly_chart(variance_bars(table), width="stretch", key="plates_variance")
        st.caption(f"Fraction of the variance of the top principal components explained by each label among "
                   f"{wells} wells (between-group sum of squares / total). Lower after correction = effect removed.")
except CpDistillerError as exc:
    st.error(str(exc))
