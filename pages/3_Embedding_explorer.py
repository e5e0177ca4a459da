"""Embedding explorer: UMAP or PCA of uncorrected vs corrected (and reference methods) side by side,
coloured by a technical or biological label, with marginal densities, search and hover."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import streamlit as st

from cpdistiller_core import jobs
from cpdistiller_core.errors import CpDistillerError
from cpdistiller_core.plots.embedding import available_colorings, embedding_figure
from cpdistiller_core.reduce import (
    UMAP_DEFAULTS,
    ReduceParams,
    cache_key,
    explained_variance,
    is_cached,
    reduce,
)
from dashboard import state as ds
from dashboard.gate import through_app

through_app()


@st.cache_data(show_spinner=False, max_entries=64)
def _coords(key: str, _X: np.ndarray, params: ReduceParams) -> np.ndarray:
    """2-D coordinates; ``key`` (content hash + parameters) is the cache key, the disk cache backs it."""
    return reduce(_X, params, key=key)


st.title("Embedding explorer")
dataset: ds.Dataset | None = st.session_state.get(ds.DATASET_KEY)
run_dir = st.session_state.get(ds.RUN_KEY)

spaces: dict[str, object] = {}
base = None
try:
    if run_dir and jobs.status(Path(run_dir)).status == jobs.DONE:
        spaces = ds.run_spaces(run_dir)
        base = spaces["uncorrected"]
        st.caption(f"Run **{Path(run_dir).name}**: {base.n_wells:,} wells.")
    elif dataset is not None:
        base = dataset.current
        spaces = {"uncorrected": base}
        st.info("No finished correction selected: showing the uncorrected profiles only. Run one on the Correct page.")
except CpDistillerError as exc:
    st.error(str(exc))
if base is None:
    st.info("Load a dataset (or the demo) and run a correction to explore embeddings.")
    st.page_link("pages/1_Load_profiles.py", label="Load profiles", icon=":material/upload_file:")
    st.stop()

c = st.columns([1, 1, 2, 1, 1])
method = c[0].radio("Projection", ["PCA", "UMAP"], horizontal=True, key="explorer_method",
                    help="UMAP (umap-learn; n_neighbors 15, min_dist 0.1, random_state 9000) is computed once per "
                         "embedding and cached on disk. The first UMAP in a fresh server also compiles umap-learn, "
                         "which takes a minute or two on a small CPU.")
colorings = available_colorings(base)
color_by = c[1].selectbox("Colour by", colorings, index=0, key="explorer_color")
names = list(spaces)
shown = c[2].multiselect("Panels", names, default=names[:3], key="explorer_panels")
marginals = c[3].checkbox("Marginal densities", value=True, key="explorer_marginals")
kind = c[4].radio("Draw", ["points", "density"], index=1 if base.n_wells > 50_000 else 0, key="explorer_kind",
                  help="points: every well, in a random order so no group hides the others; density: contours "
                       "per group (or a binned map), readable on large screens")
perts = sorted(set(base.perturbation.astype(str)))
highlight = st.multiselect("Highlight perturbations (type to search)", perts, key="explorer_highlight",
                           max_selections=12)
with st.expander("UMAP settings"):
    u = st.columns(3)
    n_neighbors = u[0].number_input("n_neighbors", 2, 200, UMAP_DEFAULTS["n_neighbors"], key="explorer_nn")
    min_dist = u[1].number_input("min_dist", 0.0, 1.0, UMAP_DEFAULTS["min_dist"], 0.05, key="explorer_md")
    random_state = u[2].number_input("random_state", 0, 2**31 - 1, UMAP_DEFAULTS["random_state"], key="explorer_rs")
params = ReduceParams(method=method.lower(), n_neighbors=int(n_neighbors), min_dist=float(min_dist),
                      random_state=int(random_state))

if not shown:
    st.warning("Choose at least one panel.")
    st.stop()


@st.fragment(run_every=3)
def _wait_for_background(states: dict[str, jobs.JobState]) -> None:
    """Progress of the background UMAPs; the page redraws itself when they are done."""
    registry = st.session_state.setdefault("explorer_umap_jobs", {})
    now = {name: ds.background_umap(spaces[name].X, params, registry) for name in states}
    failed = {name: s.error or s.status for name, s in now.items() if s.finished and s.status != jobs.DONE}
    for name, error in failed.items():
        st.error(f"UMAP of {name} failed: {error}")
    if not failed and all(s.status == jobs.DONE for s in now.values()):
        st.rerun()
    for name, s in now.items():
        if s.status != jobs.DONE:
            st.info(f"UMAP of **{name}** ({spaces[name].n_wells:,} wells) is computing in the background "
                    f"({s.message or s.status}); this page updates when it is ready. PCA is available meanwhile.")


if params.method == "umap":
    slow = [n for n in shown if spaces[n].n_wells > ds.BACKGROUND_UMAP_WELLS and not is_cached(spaces[n].X, params)]
    if slow:
        registry = st.session_state.setdefault("explorer_umap_jobs", {})
        _wait_for_background({n: ds.background_umap(spaces[n].X, params, registry) for n in slow})
        st.stop()
panels: dict[str, np.ndarray] = {}
try:
    keys = {n: cache_key(spaces[n].X, params) for n in shown}  # one content hash per matrix and visit
    todo = [n for n in shown if not is_cached(spaces[n].X, params, key=keys[n])]
    progress = st.progress(0.0, text="Computing projections…") if todo else None
    t0 = time.perf_counter()
    for name in shown:
        X = spaces[name].X
        if progress is not None and name in todo:
            done = todo.index(name)
            progress.progress(done / len(todo), text=f"{method} {done + 1} of {len(todo)}: {name} "
                              f"({X.shape[0]:,} wells × {X.shape[1]}) · {time.perf_counter() - t0:.0f} s so far"
                              + (" · the first UMAP in a fresh server also compiles umap-learn (about a minute)"
                                 if params.method == "umap" and done == 0 else ""))
        panels[name] = _coords(keys[name], X, params)
    if progress is not None:
        progress.empty()
    variance = ({name: explained_variance(spaces[name].X, params.n_components, key=keys[name]) for name in panels}
                if params.method == "pca" else None)
    fig = embedding_figure(panels, base, color_by=color_by, highlight=highlight, marginals=marginals,
                           kind="density" if kind == "density" else "scatter", projection=method, variance=variance)
    st.plotly_chart(fig, width="stretch", key="explorer_fig")
    st.caption(f"{method} computed once per embedding and cached on disk (key: content hash + parameters). "
               "Rows and columns use a continuous colour scale so gradients show; curves above and right of each "
               "panel are the densities per group. Axes cover 99 % of the wells; double-click a panel to see "
               "the outliers too.")
except CpDistillerError as exc:
    st.error(str(exc))
