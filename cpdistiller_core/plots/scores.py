"""Scorecard figures: grouped bars of every metric per method, and per-perturbation mAP against
the uncorrected embedding (one panel per method, identity line)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..metrics import AGGREGATE, BIOLOGICAL, EXTRA, POSITION, TECHNICAL, TECHNICAL_TREATMENTS, Scorecard

_CATEGORY_ORDER = (AGGREGATE, TECHNICAL, BIOLOGICAL, POSITION, EXTRA, TECHNICAL_TREATMENTS)


def _label(metric: str, effect: str | None) -> str:
    return f"{metric}[{effect}]" if effect else metric


def scorecard_bars(card: Scorecard, metrics: Sequence[str] | None = None,
                   title: str = "Scorecard (higher is better)") -> go.Figure:
    """Grouped bars: x = metric (aggregates first, then technical, then biological), one bar group per
    method. Missing metrics show no bar; the hover names the reason."""
    df = card.scores.copy()
    df["label"] = [_label(m, e) for m, e in zip(df["metric"], df["effect"].fillna(""))]
    if metrics is not None:
        df = df[df["metric"].isin(metrics) | df["label"].isin(metrics)]
    order = []
    for cat in _CATEGORY_ORDER:
        order += list(dict.fromkeys(df.loc[df["category"] == cat, "label"]))
    fig = go.Figure()
    for method in card.methods:
        sub = df[df["method"] == method].set_index("label").reindex(order)
        values = sub["value"].astype(float)
        hover = [
            f"{method}<br>{lab}: " + ("missing" if math.isnan(v) else f"{v:.3f}")
            + (f"<br>{note}" if isinstance(note, str) and note else "")
            for lab, v, note in zip(order, values, sub["note"])
        ]
        fig.add_trace(go.Bar(name=method, x=order, y=values, hovertext=hover, hoverinfo="text"))
    n_agg = int((pd.Series(order).isin(df.loc[df["category"] == AGGREGATE, "label"])).sum())
    if n_agg:
        fig.add_vline(x=n_agg - 0.5, line_dash="dot", line_color="grey")
    fig.update_layout(barmode="group", title=title, yaxis=dict(range=[0, 1.02], title="score"),
                      xaxis=dict(tickangle=-45), legend_title_text="method", template="plotly_white")
    return fig


def summary_bars(card: Scorecard) -> go.Figure:
    """Technical / biological / overall (Arevalo et al. 2024) and position aggregates per method."""
    return scorecard_bars(card, metrics=["technical", "biological", "overall", "position"], title="Aggregate scores")


def map_scatter(activity: Mapping[str, pd.DataFrame], reference: str = "uncorrected",
                value: str = "mean_average_precision", max_cols: int = 3) -> go.Figure:
    """Per-perturbation phenotypic-activity mAP of each method (y) against ``reference`` (x).

    ``activity``: {method: table from `metrics.phenotypic_activity`}. Points above the identity line
    are perturbations whose replicates are better retrieved after correction. Colour marks
    significance (FDR < threshold) in the corrected method."""
    if reference not in activity:
        raise KeyError(f"reference method {reference!r} has no activity table")
    others = [m for m in activity if m != reference]
    if not others:
        raise ValueError("need at least one method besides the reference")
    ref = activity[reference].set_index("perturbation")[value]
    ncols = min(max_cols, len(others))
    nrows = int(np.ceil(len(others) / ncols))
    fig = make_subplots(rows=nrows, cols=ncols, subplot_titles=others, shared_xaxes=False,
                        horizontal_spacing=0.06, vertical_spacing=0.12)
    for i, m in enumerate(others):
        r, c = i // ncols + 1, i % ncols + 1
        tab = activity[m].set_index("perturbation")
        joined = pd.DataFrame({"x": ref, "y": tab[value]}).dropna()
        sig = tab["below_corrected_p"].reindex(joined.index).fillna(False).astype(bool) \
            if "below_corrected_p" in tab else pd.Series(False, index=joined.index)
        for flag, colour, name in ((True, "#d62728", "FDR < 0.05"), (False, "#7f7f7f", "not significant")):
            part = joined[sig.to_numpy() == flag]
            fig.add_trace(go.Scattergl(
                x=part["x"], y=part["y"], mode="markers", name=name, legendgroup=name, showlegend=(i == 0),
                marker=dict(color=colour, size=6, opacity=0.7), text=part.index,
                hovertemplate="%{text}<br>" + reference + ": %{x:.3f}<br>" + m + ": %{y:.3f}<extra></extra>",
            ), row=r, col=c)
        fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(color="black", dash="dash", width=1),
                                 showlegend=False, hoverinfo="skip"), row=r, col=c)
        above = float((joined["y"] > joined["x"]).mean()) if len(joined) else float("nan")
        fig.layout.annotations[i].text = f"{m} ({above:.0%} above identity, n={len(joined)})"
        fig.update_xaxes(range=[0, 1.02], title_text=f"mAP {reference}", row=r, col=c)
        fig.update_yaxes(range=[0, 1.02], title_text="mAP", row=r, col=c)
    fig.update_layout(title="Per-perturbation phenotypic activity (mAP) vs uncorrected",
                      template="plotly_white", height=max(380, 330 * nrows))
    return fig
