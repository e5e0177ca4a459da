"""cpDistiller dashboard: Home page and navigation (`streamlit run app.py`, or `make demo`).

Pages live in ``pages/`` (numbered ``1_…`` to ``6_…``) and are listed here in file order, so pages
added by other modules appear without editing this file. Run with ``-- --demo`` to open on the built-in
demo screen.

Access (docs/deployment.md): the app binds to 127.0.0.1 (.streamlit/config.toml). Bound to any other
address it stops unless authentication is configured; with a password configured
(``CPDISTILLER_PASSWORD`` or ``password`` in secrets.toml) every session must enter it, with an
identity provider (``[auth]`` in secrets.toml) every user logs in with ``st.login``. Each session
works in its own workspace (uploads and runs).
"""

from __future__ import annotations

import contextlib
import importlib
import re
import sys
import threading
from pathlib import Path

import streamlit as st

from cpdistiller_core import jobs
from cpdistiller_core.errors import CpDistillerError
from cpdistiller_core.runs import Run
from dashboard import state as ds
from dashboard.gate import VIA_APP_KEY, configure_page, require_access, session_workspace
from dashboard.widgets import verdict_panel

ROOT = Path(__file__).resolve().parent
ICONS = {"Load profiles": ":material/upload_file:", "Correct": ":material/tune:",
         "Embedding explorer": ":material/scatter_plot:", "Plate maps": ":material/grid_on:",
         "Gene clusters": ":material/hub:", "Retrieval": ":material/travel_explore:"}


@st.cache_resource(show_spinner="Simulating the demo screen…")
def _demo(seed: int = 0) -> ds.Dataset:
    return ds.load_demo(seed)


# Imported by the first PCA of the Explorer and Plate maps pages: ~2-3.5 s once per server process on a
# 2-core machine. Importing them in the background while the user is on Home or Load hides that cost.
WARM_IMPORTS = ("sklearn.decomposition",)


@st.cache_resource(show_spinner=False)
def _warm_imports() -> threading.Thread:
    """Start importing `WARM_IMPORTS` in a daemon thread, once per server process."""
    def work() -> None:
        for name in WARM_IMPORTS:
            with contextlib.suppress(ImportError):
                importlib.import_module(name)
    thread = threading.Thread(target=work, name="cpdistiller-warm-imports", daemon=True)
    thread.start()
    return thread


def load_demo_into_session() -> None:
    """Put the built-in demo screen in this session (the cached copy is shared, never mutated)."""
    st.session_state[ds.DATASET_KEY] = _demo(0)
    st.session_state.pop(ds.RUN_KEY, None)


def home() -> None:
    st.title("cpDistiller")
    st.markdown(
        "cpDistiller removes **technical variation** from well-level Cell Painting profiles: differences "
        "between **batches** and the **gradient-shaped row and column (well-position) effects** that "
        "plates pick up in the incubator and the imager. It trains a Gaussian-mixture variational "
        "autoencoder whose latent space is stripped of batch, row and column information by gradient-reversal "
        "discriminators while a contrastive term keeps wells with the same biology together "
        "(Yan et al., *Nat Commun* 16:6886, 2025). "
        "Load profiles, run a correction, then check in the explorer and on plate maps that the technical "
        "effects are gone and the biology is still there."
    )
    dataset: ds.Dataset | None = st.session_state.get(ds.DATASET_KEY)
    left, right = st.columns(2)
    with left:
        st.subheader("Dataset")
        if dataset is None:
            st.info("No dataset loaded yet.")
        else:
            cur = dataset.current
            st.markdown(f"**{dataset.name}**")
            a, b, c = st.columns(3)
            a.metric("Plates", len(set(cur.plate)))
            b.metric("Wells", f"{cur.n_wells:,}")
            c.metric("Features", cur.n_features)
            if dataset.preprocessed is not None:
                st.caption(f"Preprocessed: {dataset.raw.n_features} → {dataset.preprocessed.n_features} features.")
        if st.button("Load the built-in demo screen", type="primary", key="home_demo",
                     help="A simulated 384-well screen with known batch, row and column effects."):
            try:
                load_demo_into_session()
                st.rerun()
            except CpDistillerError as exc:
                st.error(str(exc))
            except ImportError:
                st.error("The built-in demo screen is not available in this installation (cpdistiller_core.datasets).")
        st.page_link("pages/1_Load_profiles.py", label="Load your own profiles", icon=":material/upload_file:")
    with right:
        st.subheader("Run")
        run_dir = st.session_state.get(ds.RUN_KEY)
        if not run_dir:
            st.info("No correction run selected.")
        else:
            run_summary(Path(run_dir))
        st.page_link("pages/2_Correct.py", label="Correct", icon=":material/tune:")
        st.page_link("pages/3_Embedding_explorer.py", label="Embedding explorer", icon=":material/scatter_plot:")
        st.page_link("pages/4_Plate_maps.py", label="Plate maps", icon=":material/grid_on:")


def run_summary(run_dir: Path) -> None:
    """The selected run: status and progress (refreshed every second while it runs), then its verdict."""
    try:
        state = jobs.status(run_dir)
    except CpDistillerError as exc:
        st.error(str(exc))
        return
    st.markdown(f"**{run_dir.name}** — {state.status}")
    if not state.finished:
        st.fragment(run_every=1.0)(_progress_bar)(run_dir)
        return
    verdict = Run.open(run_dir).verdict() if state.status == jobs.DONE else None
    if verdict is not None:
        verdict_panel(verdict)


def _progress_bar(run_dir: Path) -> None:
    state = jobs.status(run_dir)
    st.progress(state.fraction, text=state.message or state.status)
    if state.finished:
        st.rerun()  # show the verdict


def _title(path: Path) -> str:
    return re.sub(r"^\d+[_ ]*", "", path.stem).replace("_", " ").strip().capitalize() or path.stem


def sidebar_status() -> None:
    dataset: ds.Dataset | None = st.session_state.get(ds.DATASET_KEY)
    with st.sidebar:
        if dataset is not None:
            st.caption(f"Dataset: **{dataset.name}** · {dataset.current.n_wells:,} wells · "
                       f"{dataset.current.n_features} features")
        run_dir = st.session_state.get(ds.RUN_KEY)
        if run_dir:
            try:
                st.caption(f"Run: **{Path(run_dir).name}** ({jobs.status(Path(run_dir)).status})")
            except CpDistillerError:
                st.caption(f"Run: {Path(run_dir).name}")


def main() -> None:
    configure_page()
    require_access()
    css = ROOT / "assets" / "style.css"
    if css.is_file():
        st.html(f"<style>{css.read_text()}</style>")
    logo = ROOT / "assets" / "logo.svg"
    if logo.is_file():
        st.logo(str(logo))
    session_workspace()
    _warm_imports()
    if "--demo" in sys.argv[1:] and ds.DATASET_KEY not in st.session_state and not st.session_state.get("_demo_tried"):
        st.session_state["_demo_tried"] = True
        try:
            load_demo_into_session()
        except (CpDistillerError, ImportError) as exc:
            st.warning(f"Could not load the demo screen: {exc}")
    pages = [st.Page(home, title="Home", icon=":material/home:", default=True)]
    for path in sorted((ROOT / "pages").glob("*.py"), key=lambda p: (int(m.group()) if (m := re.match(r"\d+", p.stem)) else 99, p.stem)):
        title = _title(path)
        pages.append(st.Page(str(path.relative_to(ROOT)), title=title, icon=ICONS.get(title)))
    nav = st.navigation(pages)
    st.session_state[VIA_APP_KEY] = True  # the pages' gate: this run passed the access check above
    try:
        nav.run()
    finally:  # after the page, so a dataset or run chosen on it shows at once (also when it stops early)
        st.session_state.pop(VIA_APP_KEY, None)
        sidebar_status()


main()
