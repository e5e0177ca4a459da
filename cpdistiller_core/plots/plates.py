"""Plate-map figures: per-plate heatmaps (any geometry), layout thumbnails, row/column profiles and
variance-explained bars, each comparing sides (e.g. uncorrected vs cpDistiller)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..layout import PlateGeometry, row_letters
from ..profiles import Profiles

SIDE_COLORS = ("#636efa", "#ef553b", "#00cc96", "#ab63fa", "#ffa15a", "#19d3f3")
LAYOUT_CODES = {"": 0, "treatment": 1, "negative": 2, "positive": 3}
LAYOUT_COLORS = ["#f2f2f2", "#c9d3e0", "#1f77b4", "#d62728"]


def _robust_z(grid: np.ndarray) -> np.ndarray:
    med = np.nanmedian(grid)
    mad = np.nanmedian(np.abs(grid - med)) * 1.4826
    return (grid - med) / mad if mad and np.isfinite(mad) and mad > 0 else grid - med


def plate_heatmaps(grids: Mapping[str, Mapping[str, np.ndarray]], geometry: PlateGeometry,
                   value_label: str = "value", standardise: bool = False, height_per_plate: int = 260) -> go.Figure:
    """Rows = plates, columns = sides. ``grids[side][plate]`` is an (n_rows x n_cols) array.

    Each side has its own colour scale shared by its plates (plates comparable within a side). With
    ``standardise`` every side is robust-z-scored over all its plates, so sides in different units
    (a feature vs an embedding dimension) share one diverging scale.
    """
    sides = list(grids)
    plates = list(dict.fromkeys(p for side in sides for p in grids[side]))
    fig = make_subplots(rows=len(plates), cols=len(sides), horizontal_spacing=0.03 if standardise else 0.14,
                        vertical_spacing=min(0.15, 0.35 / max(1, len(plates))),
                        subplot_titles=[wrap_name(f"{side} · {plate}", 40) for plate in plates for side in sides])
    ylabels = [row_letters(r) for r in range(geometry.n_rows)]
    xlabels = [str(c + 1) for c in range(geometry.n_cols)]
    bar_len = min(1.0, 0.9 / max(1, len(plates)) * 2)
    for s, side in enumerate(sides):
        stack = np.stack([grids[side][p] for p in plates if p in grids[side]])
        if standardise:
            flat = _robust_z(stack)
            lo, hi = -3.0, 3.0
            per = {p: flat[i] for i, p in enumerate(p for p in plates if p in grids[side])}
        else:
            lo, hi = (float(np.nanpercentile(stack, 2)), float(np.nanpercentile(stack, 98))) \
                if np.isfinite(stack).any() else (0.0, 1.0)
            per = dict(grids[side])
        # standardised sides share one diverging scale (one colour bar); otherwise one bar right of each side
        axis = "coloraxis" if s == 0 or standardise else f"coloraxis{s + 1}"
        if s == 0 or not standardise:
            right = fig.get_subplot(1, len(sides) if standardise else s + 1).xaxis.domain[1]
            title = "z (per side)" if standardise else f"{side}<br>{value_label}"
            fig.update_layout({axis: dict(colorscale="RdBu_r" if standardise else "Viridis", cmin=lo, cmax=hi,
                                          colorbar=dict(title=dict(text=title, side="top"), x=right + 0.008,
                                                        xanchor="left", len=bar_len, y=1.0, yanchor="top",
                                                        thickness=10))})
        for r, plate in enumerate(plates):
            if plate not in per:
                continue
            z = per[plate]
            raw = np.asarray(grids[side][plate], dtype=float)  # hover shows the value itself, colour may be z
            text = np.vectorize(lambda v: "" if not np.isfinite(v) else f"{v:.3g}")(raw)
            zhover = "<br>z %{z:.2f}" if standardise else ""
            fig.add_trace(go.Heatmap(z=z, x=xlabels, y=ylabels, coloraxis=axis, text=text, xgap=1, ygap=1,
                                     hovertemplate=f"{plate} %{{y}}%{{x}}<br>{value_label}: %{{text}}{zhover}"
                                                   f"<extra>{side}</extra>"),
                          row=r + 1, col=s + 1)
    fig.update_yaxes(autorange="reversed", tickfont=dict(size=8))
    fig.update_xaxes(tickfont=dict(size=8), side="bottom", dtick=1 if geometry.n_cols <= 24 else 2)
    fig.update_layout(height=max(320, height_per_plate * len(plates)), margin=dict(l=10, r=40, t=40, b=10),
                      plot_bgcolor="white", hoverlabel=dict(namelength=-1))
    return fig


def axis_ticks(n: int, letters: bool = False, max_labels: int = 16) -> list[str]:
    """Labels to print on a plate axis of ``n`` rows (letters: A…P, AA…AF) or columns (1…48).

    All of them when they fit (``max_labels``), else the first, every k-th and the last
    (1, 4, 8, … 24), so the plate's edges are always named.
    """
    name = row_letters if letters else (lambda i: str(i + 1))
    if n <= max_labels:
        return [name(i) for i in range(n)]
    step = int(np.ceil(n / (max_labels - 1) / 2) * 2)  # even steps: 4, 8 land on 4, 8, 12…
    keep = sorted({0, n - 1, *range(step - 1, n, step)})
    return [name(i) for i in keep]


def wrap_name(name: str, width: int = 22) -> str:
    """A long plate name split over lines (at '_', '-', '.' or ' ' where possible) instead of overflowing."""
    lines, rest = [], str(name)
    while len(rest) > width:
        cut = max(rest.rfind(ch, 0, width + 1) for ch in "_-. ")
        cut = cut + 1 if cut > width // 3 else width
        lines.append(rest[:cut])
        rest = rest[cut:]
    return "<br>".join(lines + [rest])


def plate_layout_thumbnails(profiles: Profiles, max_plates: int = 24, per_row: int = 4,
                            tick_labels: bool = True) -> go.Figure:
    """Small maps of every plate's layout: empty / treatment / negative control / positive control.

    With ``tick_labels`` the axes name rows (A…P; AA…AF on 1536-well plates) and columns (1…24),
    thinned to every k-th label plus the last when they would not fit. Long plate names wrap.
    """
    from ..platemap import layout_grid

    plates = list(pd.unique(profiles.plate))[:max_plates]
    rows = int(np.ceil(len(plates) / per_row))
    cols = min(per_row, len(plates))
    titles = [wrap_name(p) for p in plates]
    lines = max((t.count("<br>") + 1 for t in titles), default=1)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=titles,
                        horizontal_spacing=0.05 if tick_labels else 0.03,
                        vertical_spacing=(0.12 + 0.05 * lines) / max(1, rows) + 0.04)
    geo = profiles.geometry
    n = len(LAYOUT_CODES)
    scale = []
    for i, c in enumerate(LAYOUT_COLORS):
        scale += [[i / n, c], [(i + 1) / n, c]]
    names = {v: k or "empty" for k, v in LAYOUT_CODES.items()}
    for i, plate in enumerate(plates):
        grid = layout_grid(profiles, plate)
        z = np.vectorize(LAYOUT_CODES.get)(grid).astype(float)
        label = np.vectorize(names.get)(z.astype(int))
        fig.add_trace(go.Heatmap(
            z=z, zmin=-0.5, zmax=n - 0.5, colorscale=scale, showscale=i == 0, text=label, xgap=1, ygap=1,
            x=[str(c + 1) for c in range(geo.n_cols)], y=[row_letters(r) for r in range(geo.n_rows)],
            hovertemplate=f"{plate} %{{y}}%{{x}}: %{{text}}<extra></extra>",
            colorbar=dict(tickvals=list(range(n)), ticktext=[names[k] for k in range(n)], thickness=10, len=0.8)),
            row=i // per_row + 1, col=i % per_row + 1)
    fig.update_annotations(font=dict(size=11))  # the subplot titles (plate names)
    if tick_labels:
        ys, xs = axis_ticks(geo.n_rows, letters=True), axis_ticks(geo.n_cols, max_labels=12)
        fig.update_yaxes(tickmode="array", tickvals=ys, ticktext=ys, tickfont=dict(size=7), ticklen=0)
        fig.update_xaxes(tickmode="array", tickvals=xs, ticktext=xs, tickfont=dict(size=7), ticklen=0)
    fig.update_yaxes(autorange="reversed", showticklabels=tick_labels, type="category")
    fig.update_xaxes(showticklabels=tick_labels, type="category")
    fig.update_layout(height=(200 + 14 * lines) * rows + 40, margin=dict(l=10, r=10, t=30 + 12 * lines, b=10),
                      plot_bgcolor="white")
    return fig


def position_profile_figure(profiles_by_side: Mapping[str, pd.DataFrame], axis: str,
                            value_label: str = "value", standardise: bool = True) -> go.Figure:
    """Mean ± std of a value per row (or column), one line and band per side (and group).

    Inputs are ``platemap.position_profile`` tables. With ``standardise`` each side's means and spreads
    are divided by its overall spread so sides in different units compare on one axis.
    """
    fig = go.Figure()
    i = 0
    for side, df in profiles_by_side.items():
        for group, g in df.groupby("group", sort=False):
            g = g.sort_values("position")
            mean, std = g["mean"].to_numpy(float), g["std"].to_numpy(float)
            if standardise:
                center = float(np.average(mean, weights=g["n"]))
                scale = float(np.sqrt(np.average(std ** 2 + (mean - center) ** 2, weights=g["n"]))) or 1.0
                mean, std = (mean - center) / scale, std / scale
            color = SIDE_COLORS[i % len(SIDE_COLORS)]
            name = side if group == "all" else f"{side} · {group}"
            x = g["label"].tolist()
            fig.add_trace(go.Scatter(x=x + x[::-1], y=list(mean + std) + list((mean - std)[::-1]), fill="toself",
                                     fillcolor=color, opacity=0.15, line=dict(width=0), hoverinfo="skip",
                                     showlegend=False, legendgroup=name))
            fig.add_trace(go.Scatter(x=x, y=mean, mode="lines+markers", name=name, legendgroup=name,
                                     line=dict(color=color, width=2),
                                     customdata=np.stack([std, g["n"]], axis=1),
                                     hovertemplate=f"{axis} %{{x}}: %{{y:.3g}} ± %{{customdata[0]:.3g}} "
                                                   f"(n=%{{customdata[1]}})<extra>{name}</extra>"))
            i += 1
    fig.update_layout(xaxis_title=axis, yaxis_title=f"{value_label}{' (standardised)' if standardise else ''}",
                      height=340, margin=dict(l=10, r=10, t=30, b=10), plot_bgcolor="white",
                      legend=dict(orientation="h", y=1.12), xaxis=dict(type="category"),
                      hoverlabel=dict(namelength=-1))
    fig.update_yaxes(gridcolor="#eee", zerolinecolor="#ccc")
    return fig


def variance_bars(table: pd.DataFrame, sides: Sequence[str] | None = None) -> go.Figure:
    """Grouped bars: variance explained by each effect (x), one bar per side (``variance_table`` output)."""
    fig = go.Figure()
    sides = list(sides or pd.unique(table["side"]))
    for i, side in enumerate(sides):
        t = table[table["side"] == side]
        fig.add_trace(go.Bar(x=t["effect"], y=t["variance_explained"], name=side,
                             marker_color=SIDE_COLORS[i % len(SIDE_COLORS)],
                             text=[f"{v:.2f}" for v in t["variance_explained"]], textposition="outside",
                             hovertemplate="%{x}: %{y:.3f}<extra>" + side + "</extra>"))
    top = float(table["variance_explained"].max()) if len(table) else 1.0
    fig.update_layout(barmode="group", yaxis=dict(title="fraction of variance (top PCs)", range=[0, min(1.0, top * 1.25 + 0.02)]),
                      height=320, margin=dict(l=10, r=10, t=30, b=10), plot_bgcolor="white",
                      legend=dict(orientation="h", y=1.15), hoverlabel=dict(namelength=-1))
    return fig
