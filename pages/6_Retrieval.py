"""Retrieval: the scorecard of methods, per-perturbation mAP corrected vs uncorrected, fraction retrieved of
sister and gene–compound pairs, and a query box ranking the perturbations most similar to a gene or compound."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from cpdistiller_core.analysis import retrieval
from cpdistiller_core.errors import CpDistillerError
from cpdistiller_core.metrics import SCORE_COLUMNS, EvaluationConfig, Scorecard, evaluate
from cpdistiller_core.plots import genes as gp
from cpdistiller_core.plots.scores import map_scatter, scorecard_bars, summary_bars
from cpdistiller_core.runs import Run
from dashboard import state as ds
from dashboard.gate import through_app
from dashboard.widgets import source_picker

through_app()

STATE = "retrieval_results"
CARD = "retrieval_scorecard"


def _none_or_column(columns: list[str], words: tuple[str, ...]) -> int:
    """Select-box index: the guessed column (options start with "(none)"), else "(none)"."""
    i = ds.guess_column(columns, words)
    return 0 if i is None else i + 1


st.title("Retrieval")
spaces, source, run_dir = source_picker("retrieval_source")
base = next(iter(spaces.values()))
cols = list(base.meta.columns)
none = "(none)"
c = st.columns(4)
gene_col = c[0].selectbox("Gene column (ORF / guide / allele → gene)", [none] + cols,
                          index=_none_or_column(cols, ("symbol", "gene")), key="retrieval_gene_col")
target_col = c[1].selectbox("Compound target column (gene symbols, '|'-separated)", [none] + cols,
                            index=_none_or_column(cols, ("target",)), key="retrieval_target_col")
pairs_col = c[2].selectbox("Annotation column (MoA, injury class…: shared values are known pairs)", [none] + cols,
                           index=_none_or_column(cols, ("moa", "injury", "mechanism")), key="retrieval_pairs_col")
sep = c[3].text_input("Separator", "|", key="retrieval_sep")
gene_col = None if gene_col == none else gene_col
target_col = None if target_col == none else target_col
pairs_col = None if pairs_col == none else pairs_col

# ----- scorecard ---------------------------------------------------------------------------------
st.subheader("Scorecard of methods")
card: Scorecard | None = st.session_state.get(CARD, {}).get(source)
if card is None and run_dir is not None:
    card = Run(run_dir).scores()
c = st.columns([2, 1, 1])
path = c[0].text_input("…or open a scores.csv (e.g. from `cpdistiller benchmark --out DIR`)", key="retrieval_scores_path")
if c[1].button("Open", key="retrieval_scores_open") and path:
    p = Path(path.strip())
    try:
        tab = ds.read_server_file(path, lambda f: pd.read_csv(f, keep_default_na=False, na_values=[""]))
        if not set(SCORE_COLUMNS) <= set(tab.columns):
            raise CpDistillerError(f"{p}: not a scorecard (expected columns {', '.join(SCORE_COLUMNS)}).")
        card = Scorecard(tab)
        st.session_state.setdefault(CARD, {})[source] = card
    except (OSError, ValueError) as exc:
        st.error(f"{p}: cannot read ({exc}).")
    except CpDistillerError as exc:
        st.error(str(exc))
if c[2].button("Compute scorecard", key="retrieval_scores_go",
               help="every technical and biological metric for each embedding (minutes on large screens)"):
    cards = []
    with st.status("Scoring…") as status:
        for name, emb in spaces.items():
            pairs = {}
            for task in retrieval.TASKS:
                try:
                    t = retrieval.task_pairs(emb, task, gene_col, target_col, sep, pairs_col)
                    if len(t):
                        pairs[task] = t
                except CpDistillerError:
                    pass  # the task needs columns this dataset lacks: fraction retrieved is then not scored
            bar = st.progress(0.0, text=name)
            cards.append(evaluate(emb, method=name, pairs=pairs, config=EvaluationConfig(null_size=1000),
                                  baseline=spaces.get("uncorrected"),
                                  progress=lambda f, m, bar=bar, name=name: bar.progress(min(f, 1.0), f"{name}: {m}")))
        status.update(label="Scored", state="complete")
    card = Scorecard.concat(cards)
    st.session_state.setdefault(CARD, {})[source] = card
    if run_dir is not None:
        Run(run_dir).save_scores(card)
if card is None:
    st.caption("No scorecard yet for this source.")
else:
    st.caption("Headline scores, uncorrected first; Δ = difference to uncorrected (did it help?). technical / "
               "biological / overall follow Arevalo et al. 2024; position is the Cell Painting position score.")
    st.dataframe(card.comparison("uncorrected"), key="retrieval_scorecard_headline")
    with st.expander("Every metric (with the reason for each missing one in scores.csv)"):
        st.dataframe(card.wide(), key="retrieval_scorecard_table")
    st.download_button("Scorecard (CSV)", card.scores.to_csv(index=False).encode(), "scores.csv", "text/csv",
                       key="retrieval_scores_csv")
    left, right = st.columns(2)
    left.plotly_chart(summary_bars(card), key="retrieval_summary_bars")
    right.plotly_chart(scorecard_bars(card), key="retrieval_scorecard_bars")

# ----- retrieval ---------------------------------------------------------------------------------
st.subheader("Known relationships")
with st.form("retrieval_form"):
    c = st.columns(3)
    chosen = c[0].multiselect("Embeddings", list(spaces), default=[m for m in ("cpDistiller", "uncorrected")
                                                                   if m in spaces], key="retrieval_spaces")
    replicates = c[1].checkbox("Replicate mAP per perturbation", True, key="retrieval_activity",
                               help="copairs over all wells; the slow part on large screens")
    null_size = c[2].number_input("mAP null size", 100, 100000, 2000, step=500, key="retrieval_null")
    go = st.form_submit_button("Evaluate retrieval", type="primary", key="retrieval_go")
if go:
    if not gene_col and not target_col and not pairs_col:
        st.error("Choose a gene, compound target or annotation column: they define the known pairs.")
    else:
        try:
            bar = st.progress(0.0, text="retrieval")
            res = retrieval.evaluate_retrieval({m: spaces[m] for m in chosen}, gene_col, target_col, sep,
                                               int(null_size), activity=replicates,
                                               progress=lambda f, m: bar.progress(min(f, 1.0), m),
                                               annotation_col=pairs_col)
            st.session_state[STATE] = {"source": source, **res}
        except CpDistillerError as exc:
            st.error(str(exc))
res = st.session_state.get(STATE)
if res and res["source"] == source:
    st.dataframe(res["summary"], hide_index=True, key="retrieval_summary")
    st.download_button("Retrieval summary (CSV)", res["summary"].to_csv(index=False).encode(),
                       "retrieval_summary.csv", "text/csv", key="retrieval_summary_csv")
    left, right = st.columns(2)
    left.plotly_chart(gp.fraction_retrieved_bars(res["summary"]), key="retrieval_fraction")
    scatters = {}
    if not res["activity"].empty:
        scatters["replicate mAP (per perturbation)"] = res["activity"]
    if not res["shared_gene"].empty:
        scatters["shared-gene mAP (per gene)"] = res["shared_gene"].rename(columns={"annotation": "perturbation"})
    methods = set(res["summary"]["method"])
    if scatters and "uncorrected" in methods and len(methods) > 1:
        kind = right.radio("mAP scatter", list(scatters), horizontal=True, key="retrieval_scatter_kind")
        tab = scatters[kind]
        right.plotly_chart(map_scatter({m: t for m, t in tab.groupby("method")}, max_cols=2),
                           key="retrieval_map_scatter")
    elif scatters:
        right.caption("The mAP scatter compares a corrected embedding with the uncorrected one: choose both.")
    if not res["pairs"].empty:
        with st.expander("Pairs (cosine similarity, retrieved above the 95th percentile of non-pairs)"):
            st.dataframe(res["pairs"], hide_index=True, key="retrieval_pairs")

# ----- query -------------------------------------------------------------------------------------
st.subheader("Query")
names = sorted(set(base.perturbation[~base.negative_mask].astype(str)))
symbols = sorted({g for col in (gene_col, target_col) if col
                  for genes in retrieval.perturbation_symbols(base, col, sep).values() for g in genes})
options = list(dict.fromkeys(symbols + names))
c = st.columns([2, 1])
q = c[0].selectbox("Gene or compound (type to search)", options, index=None, placeholder="e.g. a gene symbol",
                   key="retrieval_query")
top = c[1].number_input("Show", 5, 200, 20, key="retrieval_top")
if q:
    shown = [m for m in ("cpDistiller", "uncorrected") if m in spaces] or list(spaces)[:1]
    for col, m in zip(st.columns(len(shown)), shown):
        with col:
            try:
                table = retrieval.query(spaces[m], q, gene_col, target_col, sep, int(top))
            except CpDistillerError as exc:
                st.error(str(exc))
                continue
            st.markdown(f"**{m}** — known pairs in the top {len(table)}: {int(table['known_pair'].sum())}")
            st.plotly_chart(gp.query_bars(table, q), key=f"retrieval_query_fig_{m}")
            st.dataframe(table, hide_index=True, key=f"retrieval_query_table_{m}")
            st.download_button("CSV", table.to_csv(index=False).encode(), f"query_{q}_{m}.csv", "text/csv",
                               key=f"retrieval_query_csv_{m}")
