"""Figures for the gene-cluster and retrieval views: active-screen threshold, dendrogram + heatmap with
clusters and ARCHS4 groups, enrichment bars, fraction-retrieved bars, query ranking; export helpers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots
from scipy.cluster import hierarchy

from ..analysis.active import ActiveScreen
from ..analysis.clustering import GeneClusters
from ..errors import CpDistillerError

PALETTE = qualitative.Dark24 + qualitative.Light24
GREY = "#b0b0b0"
FORMATS = ("html", "png", "svg")


def cluster_colour(cluster: int) -> str:
    return PALETTE[(int(cluster) - 1) % len(PALETTE)]


def active_screen_figure(screen: ActiveScreen, title: str = "Active-perturbation screen") -> go.Figure:
    """Distances to the negative-control centroid: controls' own (grey) vs perturbations, threshold line."""
    t = screen.table
    fig = go.Figure()
    what = "control consensus sets" if screen.null == "consensus" else "negative-control wells"
    fig.add_trace(go.Histogram(x=screen.control_distances, name=f"{what} (n={len(screen.control_distances)})",
                               marker_color=GREY, opacity=0.75, histnorm="probability density", nbinsx=40))
    for flag, name, colour in ((False, "inactive", "#1f77b4"), (True, "active", "#d62728")):
        part = t[t["active"] == flag]
        if len(part):
            fig.add_trace(go.Histogram(x=part["distance"], name=f"{name} perturbations (n={len(part)})",
                                       marker_color=colour, opacity=0.6, histnorm="probability density",
                                       nbinsx=40))
    fig.add_vline(x=screen.threshold, line_dash="dash", line_color="black",
                  annotation_text=f"{screen.percentile:g}th pct of controls = {screen.threshold:.3g}",
                  annotation_position="top right")
    n_sel = int(t["selected"].sum())
    fig.update_layout(barmode="overlay", template="plotly_white", legend=dict(orientation="h", y=-0.2),
                      title=f"{title}: {screen.n_active} of {len(t)} active, top {n_sel} clustered",
                      xaxis_title=f"{screen.metric} distance to negative-control centroid", yaxis_title="density")
    return fig


def _link_colours(Z: np.ndarray, clusters: np.ndarray) -> dict[int, str]:
    """Colour of each linkage node: its cluster's colour when all leaves below share one cluster."""
    n = len(clusters)
    below: dict[int, set[int]] = {i: {int(clusters[i])} for i in range(n)}
    colours = {}
    for k, (a, b, _, _) in enumerate(Z):
        node = n + k
        below[node] = below[int(a)] | below[int(b)]
        colours[node] = cluster_colour(next(iter(below[node]))) if len(below[node]) == 1 else GREY
    return colours


def dendrogram_heatmap(result: GeneClusters, groups: pd.DataFrame | None = None,
                       title: str = "Gene clusters", standardize: bool = True) -> go.Figure:
    """Dendrogram (links coloured by cluster) over a heatmap of the clustered profiles (dimensions x
    genes); optional ARCHS4 / user gene-group track (``groups``: columns gene, group; 0 = none)."""
    clus = result.clustering
    labels = np.asarray(clus.labels, dtype=object)
    colours = _link_colours(clus.linkage, clus.clusters)
    dendro = hierarchy.dendrogram(clus.linkage, no_plot=True, labels=list(labels),
                                  link_color_func=lambda k: colours[k])
    leaves = np.asarray(dendro["leaves"])
    xs = 5.0 + 10.0 * np.arange(len(leaves))
    track = groups is not None
    rows = 3 if track else 2
    heights = [0.32, 0.06, 0.62] if track else [0.35, 0.65]
    fig = make_subplots(rows=rows, cols=1, shared_xaxes=True, vertical_spacing=0.01, row_heights=heights)
    for ic, dc, colour in zip(dendro["icoord"], dendro["dcoord"], dendro["color_list"]):
        fig.add_trace(go.Scatter(x=ic, y=dc, mode="lines", line=dict(color=colour, width=1.2),
                                 hoverinfo="skip", showlegend=False), row=1, col=1)
    leaf_clusters = clus.clusters[leaves]
    fig.add_trace(go.Scatter(
        x=xs, y=np.zeros(len(xs)), mode="markers", showlegend=False,
        marker=dict(color=[cluster_colour(c) for c in leaf_clusters], size=7, symbol="square"),
        text=[f"{labels[i]}<br>cluster {c}" for i, c in zip(leaves, leaf_clusters)], hoverinfo="text",
    ), row=1, col=1)
    if track:
        gmap = dict(zip(groups["gene"].astype(str).str.upper(), groups["group"].astype(int)))
        g = np.array([gmap.get(str(labels[i]).upper(), 0) for i in leaves])
        has = g > 0
        fig.add_trace(go.Scatter(
            x=xs[has], y=np.zeros(has.sum()), mode="markers", showlegend=False,
            marker=dict(color=[PALETTE[(k * 7) % len(PALETTE)] for k in g[has]], size=9, symbol="diamond"),
            text=[f"{labels[i]}<br>co-expression group {k}" for i, k in zip(leaves[has], g[has])], hoverinfo="text",
        ), row=2, col=1)
        fig.update_yaxes(showticklabels=False, title_text="ARCHS4", title_font_size=10, row=2, col=1)
    Z = result.X[leaves].astype(np.float64)
    if standardize:
        sd = Z.std(axis=0)
        Z = (Z - Z.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    dims = list(result.consensus.features)
    fig.add_trace(go.Heatmap(z=Z.T, x=xs, y=dims, colorscale="RdBu_r", zmid=0,
                             colorbar=dict(title="z" if standardize else "value", len=0.6, y=0.3),
                             customdata=np.tile(labels[leaves], (Z.shape[1], 1)),
                             hovertemplate="%{customdata}<br>%{y}: %{z:.2f}<extra></extra>"),
                  row=rows, col=1)
    fig.update_xaxes(tickvals=xs, ticktext=list(labels[leaves]), tickangle=-90, row=rows, col=1,
                     tickfont=dict(size=9 if len(xs) <= 80 else 6), range=[0, 10 * len(xs)])
    fig.update_xaxes(showticklabels=False, row=1, col=1)
    fig.update_yaxes(title_text=f"{clus.method} linkage height ({clus.metric})", row=1, col=1)
    fig.update_yaxes(showticklabels=Z.shape[1] <= 30, row=rows, col=1)
    sig = clus.table[clus.table["significant"]]["cluster"].tolist()
    fig.update_layout(template="plotly_white", height=720,
                      title=f"{title}: {len(labels)} genes, {len(clus.table)} clusters, significant: "
                            f"{', '.join(map(str, sig)) or 'none'} (p < {clus.alpha:g})")
    return fig


def enrichment_bars(results: pd.DataFrame, cluster: int | str | None = None, top: int = 10,
                    alpha: float = 0.05, title: str | None = None) -> go.Figure:
    """Horizontal bars of -log10 adjusted p of the top terms (one colour per library)."""
    df = results if cluster is None else results[results["cluster"].astype(str) == str(cluster)]
    df = df.sort_values("adjusted_p_value", kind="stable").head(top).iloc[::-1]
    fig = go.Figure()
    for lib, part in df.groupby("library", sort=False):
        fig.add_trace(go.Bar(
            x=-np.log10(part["adjusted_p_value"].astype(float).clip(lower=1e-300)),
            y=[f"{t} ({lib})" if len(df["library"].unique()) > 1 else t for t in part["term"]],
            orientation="h", name=str(lib), text=part["overlap"], textposition="auto",
            hovertemplate="%{y}<br>-log10 adj. p %{x:.2f}<br>genes: %{customdata}<extra></extra>",
            customdata=part["genes"]))
    fig.add_vline(x=-np.log10(alpha), line_dash="dash", line_color="grey",
                  annotation_text=f"adj. p = {alpha:g}")
    fig.update_layout(template="plotly_white", barmode="stack", xaxis_title="-log10 adjusted p",
                      title=title or (f"Cluster {cluster}: top enriched terms" if cluster is not None
                                      else "Top enriched terms"),
                      height=max(300, 60 + 28 * len(df)), yaxis=dict(automargin=True),
                      legend=dict(orientation="h", y=-0.25))
    return fig


def fraction_retrieved_bars(summary: pd.DataFrame, title: str = "Fraction retrieved") -> go.Figure:
    """Bars of fraction retrieved per task (sister, gene–compound), one bar per method."""
    df = summary[summary["metric"] == "fraction_retrieved"]
    fig = go.Figure()
    for method, part in df.groupby("method", sort=False):
        fig.add_trace(go.Bar(x=part["task"].str.replace("_", "–"), y=part["value"], name=str(method),
                             text=[("n/a" if pd.isna(v) else f"{v:.2f}") + f" (n={n})" for v, n in
                                   zip(part["value"], part["n"])], textposition="outside",
                             hovertext=part["note"], hoverinfo="text+y"))
    fig.update_layout(barmode="group", template="plotly_white", title=title, yaxis=dict(range=[0, 1.05],
                      title="fraction of pairs above the 95th pct of non-pairs"), legend_title_text="method")
    return fig


def query_bars(table: pd.DataFrame, query: str) -> go.Figure:
    """Ranked cosine similarities to a query; known pairs (shared gene) highlighted."""
    df = table.iloc[::-1]
    fig = go.Figure(go.Bar(
        x=df["cosine_similarity"], y=df["perturbation"], orientation="h",
        marker_color=np.where(df["known_pair"], "#d62728", "#7f7f7f"), customdata=df["symbols"],
        hovertemplate="%{y}<br>cosine %{x:.3f}<br>genes: %{customdata}<extra></extra>"))
    fig.update_layout(template="plotly_white", title=f"Most similar to {query} (red: known pair)",
                      xaxis_title="cosine similarity", height=max(300, 60 + 22 * len(df)),
                      yaxis=dict(automargin=True))
    return fig


def figure_bytes(fig: go.Figure, fmt: str) -> bytes:
    """The figure as standalone HTML, or PNG/SVG through kaleido (needs a local Chrome/Chromium)."""
    if fmt == "html":
        return fig.to_html(include_plotlyjs=True, full_html=True).encode("utf-8")
    if fmt not in FORMATS:
        raise CpDistillerError(f"unknown figure format {fmt!r}; use one of {FORMATS}.")
    try:
        return fig.to_image(format=fmt, scale=2 if fmt == "png" else 1)
    except Exception as exc:  # kaleido raises its own types when Chrome is missing
        raise CpDistillerError(f"{fmt.upper()} export failed ({exc}); HTML export works without a browser.") from exc
