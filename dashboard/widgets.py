"""Widgets shared by the pages: the settings form (from the settings schema), the verdict panel, the
run picker. Pages call these and lay them out; the engine (``cpdistiller_core``) knows nothing of them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import streamlit as st

from cpdistiller_core.errors import CpDistillerError
from cpdistiller_core.settings import GROUPS, Setting, group_title, settings_of

from . import state as ds


def format_seconds(seconds: float | None) -> str:
    """``1m05s`` / ``2h03m``; an em dash when unknown."""
    if seconds is None or seconds != seconds:  # None, or NaN (a table column of a run not started yet)
        return "—"
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def setting_input(container: Any, s: Setting, key_prefix: str, choices: Sequence[Any] | None = None) -> Any:
    """One widget for one setting: a multiselect (several choices), a select box (choices), a checkbox
    (on/off), a number box (range; its ``off`` value means None) or a text box."""
    key, help_text = f"{key_prefix}_{s.name}", f"{s.help} ({s.describe_default()})"
    options = list(choices if choices is not None else s.choices or ())
    if s.multiple:
        return tuple(container.multiselect(s.label, options, default=list(s.default), key=key, help=help_text))
    if options:
        index = options.index(s.default) if s.default in options else 0
        return container.selectbox(s.label, options, index=index, key=key, help=help_text,
                                   format_func=lambda v: "none" if v is None else str(v))
    if s.type is bool:
        return container.checkbox(s.label, value=bool(s.default), key=key, help=help_text)
    if s.type is str:
        return container.text_input(s.label, value=s.default, key=key, help=help_text)
    lo, hi = s.range or (None, None)
    cast = float if s.type is float else int
    start = s.off if s.default is None else s.default
    value = cast(container.number_input(s.label, None if lo is None else cast(lo), None if hi is None else cast(hi),
                                        cast(start), key=key, help=help_text, format=s.fmt))
    return None if s.off is not None and value == s.off else value


def settings_form(config_cls: type, key_prefix: str, columns: int = 5,
                  choices: dict[str, Sequence[Any]] | None = None,
                  titles: dict[str, str] | None = None) -> dict[str, Any]:
    """Every setting of ``config_cls``, grouped as the schema says (main settings first, then
    expanders); returns {name: value}. Call inside ``st.form``. ``choices`` narrows or sets a
    setting's options (e.g. the devices this server has); ``titles`` renames the expanders."""
    values: dict[str, Any] = {}
    by_group: dict[str, list[Setting]] = {}
    for s in settings_of(config_cls):
        by_group.setdefault(s.group, []).append(s)
    for group in GROUPS:
        items = by_group.get(group, [])
        if not items:
            continue
        box = st.container() if group == "basic" else st.expander((titles or {}).get(group, group_title(config_cls, group)))
        single = [s for s in items if not s.multiple]
        with box:
            for start in range(0, len(single), columns):
                cols = st.columns(columns)
                for col, s in zip(cols, single[start:start + columns]):
                    values[s.name] = setting_input(col, s, key_prefix, (choices or {}).get(s.name))
            for s in items:  # lists of choices get a row of their own
                if s.multiple:
                    values[s.name] = setting_input(st, s, key_prefix, (choices or {}).get(s.name))
    return values


def offline_message(exc: Exception) -> str:
    """A network error in the dashboard's words: the engine's command-line hints become the page's options."""
    from cpdistiller_core.analysis import archs4, enrichment

    text = str(exc).replace(enrichment.OFFLINE_HINT, "").replace(archs4.OFFLINE_HINT, "").strip()
    text = text.replace(" Genes already in the ARCHS4 cache work with --offline.", "")
    return (f"{text} Working offline: choose **Demo gene sets** or **Local .gmt files / library folder** for "
            "gene sets, and **My table** for co-expression groups. Libraries and ARCHS4 genes fetched once are "
            "cached and work without a network.")


def verdict_panel(verdict: Any, link_scorecard: bool = True) -> None:
    """"Did it help?": the run against the uncorrected profiles, worst problem first."""
    show = {"good": st.success, "warn": st.warning, "bad": st.error}
    problems = verdict.problems()
    if problems:
        show[problems[0].status]("Did it help? " + " ".join(c.sentence for c in problems))
    else:
        show["good"]("Did it help? Corrected vs uncorrected: no check got worse.")
    st.dataframe(verdict.table(), hide_index=True, width="stretch",
                 column_config={"corrected": st.column_config.NumberColumn(format="%.3f"),
                                "uncorrected": st.column_config.NumberColumn(format="%.3f")})
    with st.expander("What each check says"):  # the table cuts long sentences (caveats come last)
        st.markdown("\n".join(f"- **{c.name}** ({c.status}): {c.sentence}" for c in verdict.checks))
    if link_scorecard:
        st.page_link("pages/6_Retrieval.py", label="Full scorecard (Retrieval page)", icon=":material/leaderboard:")


def source_picker(key: str, references: bool = True) -> tuple[dict[str, Any], str, Path | None]:
    """A "Source" select box over the session's finished runs and the loaded dataset.

    Returns the embeddings to compare (``Run.spaces``; the loaded dataset gives its uncorrected
    profiles only), a label for captions, and the run directory (None for the dataset). With nothing
    to show, or a run that cannot be read, it says so and stops the page."""
    dataset: ds.Dataset | None = st.session_state.get(ds.DATASET_KEY)
    runs = ds.finished_runs(st.session_state.get(ds.SESSION_ID_KEY))
    options = [r["run_dir"] for r in runs] + (["dataset"] if dataset is not None else [])
    if not options:
        st.info("Load a dataset (or the demo) and, ideally, run a correction first.")
        st.page_link("pages/1_Load_profiles.py", label="Load profiles", icon=":material/upload_file:")
        st.stop()
    current = st.session_state.get(ds.RUN_KEY)
    label = {r["run_dir"]: r["run_id"] for r in runs} | {"dataset": "loaded dataset (uncorrected only)"}
    pick = st.selectbox("Source", options, index=options.index(current) if current in options else 0,
                        format_func=label.get, key=key)
    if pick == "dataset":
        return {"uncorrected": dataset.current}, dataset.name, None
    try:
        return ds.run_spaces(pick, references=references), Path(pick).name, Path(pick)
    except CpDistillerError as exc:
        st.error(str(exc))
        st.stop()
