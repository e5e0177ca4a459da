"""Gene clusters: active-perturbation screen, hierarchical clusters with permutation p-values, gene-set
enrichment per cluster and ARCHS4 co-expression groups, corrected vs uncorrected side by side."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from cpdistiller_core.analysis import archs4, enrichment
from cpdistiller_core.analysis.clustering import LINKAGES, METRICS, gene_clusters
from cpdistiller_core.analysis.consensus import select_type
from cpdistiller_core.errors import CpDistillerError
from cpdistiller_core.net import OfflineError
from cpdistiller_core.plots import genes as gp
from dashboard import state as ds
from dashboard.gate import through_app
from dashboard.widgets import offline_message, source_picker

through_app()

STATE = "genes_results"


def _gene_sets(choice: str, sources: list[str], libraries: list[str], local: str) -> dict | None:
    """The gene sets chosen in the form (demo, Enrichr libraries, local files under the data root) or None."""
    if choice == sources[0]:
        return enrichment.resolve_gene_sets([], [enrichment.DEMO_GMT])
    if choice == sources[1]:
        return enrichment.resolve_gene_sets(libraries)
    if choice == sources[2]:
        items = [s.strip() for s in local.splitlines() if s.strip()]
        if not items:
            raise CpDistillerError("give at least one .gmt file or library folder in the box above.")
        paths = [ds.under_data_root(item, "any") for item in items]  # only under the data root
        gmts = [p for p in paths if p.is_file()]
        dirs = [p for p in paths if p.is_dir()]
        return ds.read_server_file(items[0], lambda _: enrichment.resolve_gene_sets(
            libraries if dirs else [], gmts, dirs[0] if dirs else None, offline=True), "any")
    return None


def _download_figure(fig, name: str, key: str) -> None:
    c = st.columns(3)
    c[0].download_button("HTML", lambda: gp.figure_bytes(fig, "html"), f"{name}.html", "text/html",
                         key=f"{key}_html", on_click="ignore")  # built on click: several MB each
    for i, fmt in ((1, "png"), (2, "svg")):
        if c[i].button(f"Prepare {fmt.upper()}", key=f"{key}_{fmt}_prep"):
            try:
                st.session_state[f"{key}_{fmt}"] = gp.figure_bytes(fig, fmt)
            except CpDistillerError as exc:
                c[i].error(str(exc))
        if f"{key}_{fmt}" in st.session_state:
            c[i].download_button(fmt.upper(), st.session_state[f"{key}_{fmt}"], f"{name}.{fmt}", key=f"{key}_{fmt}_dl")


def _csv(df: pd.DataFrame, label: str, name: str, key: str) -> None:
    st.download_button(label, df.to_csv(index=False).encode(), f"{name}.csv", "text/csv", key=key)


st.title("Gene clusters")
st.caption("Consensus profile per perturbation → active screen against the negative controls (95th percentile "
           "of the controls' own distances to their centroid) → hierarchical clustering of the top-N active ones, each cluster "
           "tested against 1,000 random sets of the same size → gene-set enrichment per cluster.")
spaces, source, _ = source_picker("genes_source", references=False)
base = next(iter(spaces.values()))
meta_cols = [c for c in base.meta.columns]
few = [c for c in meta_cols if 1 < base.meta[c].nunique(dropna=True) <= 20]
dataset: ds.Dataset | None = st.session_state.get(ds.DATASET_KEY)
is_demo = bool(dataset is not None and dataset.origin == "demo")

with st.form("genes_form"):
    c = st.columns(3)
    type_col = c[0].selectbox("Perturbation type column", ["(all perturbations)"] + few,
                              index=1 + (ds.guess_column(few, ("modality", "pert_type", "type")) or 0) if few else 0, key="genes_type_col")
    values = sorted(base.meta[type_col].dropna().astype(str).unique()) if type_col in meta_cols else []
    default_types = [v for v in values if v.lower() in ("crispr", "orf", "gene", "trt")][:1] or values[:1]
    types = c[1].multiselect("Types", values, default=default_types, key="genes_types")
    by_options = ["(perturbation)"] + meta_cols
    by = c[2].selectbox("Cluster by", by_options, index=0, key="genes_by",
                        help="pool wells by this column (e.g. gene symbol, to pool alleles or guides of one gene)")
    c = st.columns(5)
    compare = c[0].multiselect("Embeddings", list(spaces), default=list(spaces), key="genes_spaces")
    screen_metric = c[1].selectbox("Screen distance", METRICS, index=METRICS.index("euclidean"),
                                   key="genes_screen_metric", help="distance to the negative-control centroid")
    metric = c[2].selectbox("Cluster distance", METRICS, index=METRICS.index("cosine"), key="genes_metric")
    linkage = c[3].selectbox("Linkage", LINKAGES, key="genes_linkage")
    aggregate = c[4].selectbox("Consensus", ["median", "mean"], key="genes_aggregate")
    c = st.columns(6)
    top_n = c[0].number_input("Top N active", 3, 5000, 200, key="genes_top_n")
    percentile = c[1].number_input("Control percentile", 50.0, 99.9, 95.0, key="genes_pct")
    null = c[2].selectbox("Control null", ["consensus", "wells"], key="genes_null",
                          help="consensus: random sets of control wells with the perturbations' replicate "
                               "count; wells: single control wells (stricter)")
    n_clusters = c[3].number_input("Clusters", 2, 100, 8, key="genes_k")
    n_perm = c[4].number_input("Permutations", 0, 10000, 1000, step=100, key="genes_perm")
    seed = c[5].number_input("Seed", 0, 2**31 - 1, 0, key="genes_seed")
    st.markdown("**Gene sets**")
    sources = ["Demo gene sets", "Enrichr libraries (online, cached)", "Local .gmt files / library folder", "None"]
    gs_source = st.radio("Gene sets", sources, index=0 if is_demo else 1, horizontal=True,
                         label_visibility="collapsed", key="genes_gs_source")
    c = st.columns(2)
    libraries = c[0].multiselect("Enrichr libraries", list(enrichment.DEFAULT_LIBRARIES),
                                 default=list(enrichment.DEFAULT_LIBRARIES), accept_new_options=True,
                                 key="genes_libs")
    local = c[1].text_area("Local .gmt files or a folder of <library>.gmt (one path per line)", key="genes_local",
                           help="download Enrichr libraries on a connected machine with `cpdistiller enrichr-download`")
    st.markdown("**Co-expression groups**")
    c = st.columns(3)
    group_source = c[0].radio("Groups", ["None", "ARCHS4 (online, cached per gene)", "My table"],
                              key="genes_group_source")
    threshold = c[1].number_input("ARCHS4 correlation ≥", 0.0, 1.0, 0.6, 0.05, key="genes_archs4_t")
    table_path = c[2].text_input("Table path (gene,partner[,correlation] or gene,group)", key="genes_group_table")
    go = st.form_submit_button("Run analysis", type="primary", key="genes_go")

if go:
    st.session_state.pop(STATE, None)  # results on screen are always those of the settings above
    results: dict[str, dict] = {}
    try:
        if group_source.startswith("ARCHS4"):
            archs4.require_archs4()  # network first: fail in seconds, before any clustering
        sets = _gene_sets(gs_source, sources, libraries, local)
        with st.status("Clustering…", expanded=False) as status:
            for name in compare:
                emb = spaces[name]
                if type_col in meta_cols and types:
                    emb = select_type(emb, type_col, types)
                bar = st.progress(0.0, text=name)
                res = gene_clusters(emb, by=None if by == by_options[0] else by, aggregate=aggregate,
                                    metric=metric, method=linkage, screen_metric=screen_metric, screen_null=null,
                                    top_n=int(top_n), percentile=float(percentile),
                                    n_clusters=int(n_clusters), n_permutations=int(n_perm), seed=int(seed),
                                    progress=lambda f, m, bar=bar, name=name: bar.progress(min(f, 1.0), f"{name}: {m}"))
                results[name] = {"result": res}
            status.update(label="Clustered", state="complete")
        for out in results.values():  # annotation: a failure here keeps the clustering
            res = out["result"]
            if sets is not None:
                out["enrichment"] = enrichment.enrich_clusters(res.gene_lists(), res.background, sets)
            if group_source != "None":
                edges = (ds.read_server_file(table_path, archs4.read_gene_groups) if group_source == "My table"
                         else archs4.archs4_edges(res.clustering.labels, threshold=float(threshold)))
                out["groups"] = archs4.gene_groups(edges, res.clustering.labels)
                out["coexpression"] = archs4.coexpression_by_cluster(res.clustering.assignments(), edges)
    except OfflineError as exc:
        st.error(offline_message(exc))
    except CpDistillerError as exc:
        st.error(str(exc))
    if results:
        st.session_state[STATE] = {"source": source, "results": results}

saved = st.session_state.get(STATE)
if not saved:
    st.stop()
results = saved["results"]
st.caption(f"Results for {saved['source']}: {', '.join(results)}.")
tabs = st.tabs(list(results))  # one full-width tab per embedding: cluster members are long lists
for col, (name, out) in zip(tabs, results.items()):
    res = out["result"]
    with col:
        st.subheader(name)
        fig = gp.active_screen_figure(res.screen, f"Active screen ({name})")
        st.plotly_chart(fig, key=f"genes_active_{name}")
        _download_figure(fig, f"active_screen_{name}", f"genes_fig_active_{name}")
        _csv(res.screen.table, "Active screen (CSV)", f"active_screen_{name}", f"genes_csv_active_{name}")
        fig = gp.dendrogram_heatmap(res, out.get("groups"), f"Gene clusters ({name})")
        st.plotly_chart(fig, key=f"genes_dendro_{name}")
        _download_figure(fig, f"gene_clusters_{name}", f"genes_fig_dendro_{name}")
        table = res.clustering.table.copy()
        if "coexpression" in out:
            table = table.merge(out["coexpression"][["cluster", "coexpressed_pairs", "fraction", "p_value"]]
                                .rename(columns={"fraction": "coexpressed_fraction", "p_value": "coexpression_p"}),
                                on="cluster", how="left")
        st.markdown("**Clusters** (permutation p-value: rank of the cluster's merge height among random sets)")
        st.dataframe(table, hide_index=True, key=f"genes_table_{name}", width="stretch",
                     column_config={"members": st.column_config.TextColumn(width="large")})
        _csv(table, "Cluster table (CSV)", f"clusters_{name}", f"genes_csv_clusters_{name}")
        _csv(res.clustering.assignments(), "Assignments (CSV)", f"assignments_{name}", f"genes_csv_assign_{name}")
        enr = out.get("enrichment")
        if enr is not None:
            st.markdown("**Enrichment** (gseapy, background = perturbations on the screen)")
            _csv(enr, "Enrichment (CSV)", f"enrichment_{name}", f"genes_csv_enr_{name}")
            clusters_with = sorted(set(enr["cluster"])) if len(enr) else []
            if not clusters_with:
                st.info("No gene set overlaps any cluster.")
                continue
            pick = st.selectbox("Cluster", clusters_with, key=f"genes_enr_cluster_{name}")
            sub = enr[enr["cluster"] == pick]
            tabs = st.tabs(list(dict.fromkeys(sub["library"])))
            for tab, lib in zip(tabs, dict.fromkeys(sub["library"])):
                with tab:
                    part = sub[sub["library"] == lib]
                    st.plotly_chart(gp.enrichment_bars(part, pick, top=10, title=f"Cluster {pick}: {lib}"),
                                    key=f"genes_enr_fig_{name}_{lib}")
                    st.dataframe(part.drop(columns=["cluster"]), hide_index=True, key=f"genes_enr_tab_{name}_{lib}")
