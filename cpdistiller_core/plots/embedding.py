"""Side-by-side 2-D embeddings (uncorrected vs corrected vs reference methods) with marginal densities.

The paper's Fig. 2 view: each panel is a WebGL scatter (``Scattergl``, smooth with 100k points) with
density curves per group along both axes, so a batch or a row/column gradient that survives correction
shows as shifted curves. Row and column colourings use a continuous scale so gradients read as colour
ramps; categorical colourings get one trace per group. Hover shows plate, well and perturbation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative, sample_colorscale
from plotly.subplots import make_subplots

from ..errors import CpDistillerError
from ..profiles import Profiles

COLOR_OPTIONS = ("batch", "row", "column", "plate", "perturbation", "control", "annotation")
CONTINUOUS = ("row", "column")
PALETTE = qualitative.Plotly + qualitative.D3[1:] + qualitative.Set2 + qualitative.Dark24 + qualitative.Light24
CONTROL_COLORS = {"negative": "#1f77b4", "positive": "#d62728", "treatment": "#b0b0b0"}
CONTINUOUS_SCALE = "Viridis"
MAX_GROUPS_WITH_LEGEND = 40
MAX_MARGINAL_GROUPS = 24


def available_colorings(profiles: Profiles) -> list[str]:
    """Colourings this dataset supports (batch/annotation only when their role is set)."""
    out = []
    for c in COLOR_OPTIONS:
        if c == "batch" and profiles.batch is None:
            continue
        if c == "annotation" and profiles.annotation is None:
            continue
        out.append(c)
    return out


def color_values(profiles: Profiles, color_by: str) -> tuple[np.ndarray, bool]:
    """Per-well colour values and whether they are continuous (rows/columns, 1-based)."""
    if color_by == "row":
        return profiles.row + 1, True
    if color_by == "column":
        return profiles.col + 1, True
    if color_by == "plate":
        return profiles.plate.astype(str), False
    if color_by == "batch":
        return np.asarray(profiles.labels("batch")).astype(str), False
    if color_by == "perturbation":
        return profiles.perturbation.astype(str), False
    if color_by == "control":
        return profiles.control.astype(str), False
    if color_by == "annotation":
        ann = profiles.annotation
        if ann is None:
            raise CpDistillerError("no annotation column: set the 'annotation' role.")
        return pd.Series(ann).fillna("NA").astype(str).to_numpy(), False
    raise CpDistillerError(f"unknown colouring {color_by!r}; use one of {list(COLOR_OPTIONS)}.")


def _density(values: np.ndarray, lo: float, hi: float, bins: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Smoothed histogram density (area 1) on a fixed grid: fast for 100k points."""
    from scipy.ndimage import gaussian_filter1d

    hist, edges = np.histogram(values, bins=bins, range=(lo, hi), density=True)
    centers = (edges[:-1] + edges[1:]) / 2
    return centers, gaussian_filter1d(hist.astype(np.float64), sigma=2.0, mode="constant")


def _group_colors(groups: Sequence[str], continuous: bool, numeric: np.ndarray | None = None) -> dict[str, str]:
    if continuous:
        vals = np.asarray([float(g) for g in groups])
        lo, hi = float(vals.min()), float(vals.max())
        pos = (vals - lo) / (hi - lo) if hi > lo else np.zeros_like(vals)
        return dict(zip(groups, sample_colorscale(CONTINUOUS_SCALE, list(pos))))
    if set(groups) <= set(CONTROL_COLORS):
        return {g: CONTROL_COLORS[g] for g in groups}
    return {g: PALETTE[i % len(PALETTE)] for i, g in enumerate(groups)}


def _discrete_scale(colors: Sequence[str]) -> list[list]:
    """A stepwise colorscale: code k (0-based, over cmin=-0.5..cmax=n-0.5) gets colors[k]."""
    n = len(colors)
    scale: list[list] = []
    for k, c in enumerate(colors):
        scale += [[k / n, c], [(k + 1) / n, c]]
    return scale


def _order_groups(values: np.ndarray, continuous: bool) -> list[str]:
    if continuous:
        return [str(v) for v in sorted(np.unique(values))]
    counts = pd.Series(values).value_counts()
    return [str(g) for g in counts.index]


def embedding_figure(panels: Mapping[str, np.ndarray], profiles: Profiles, color_by: str = "batch",
                     highlight: Sequence[str] | None = None, marginals: bool = True,
                     point_size: float = 4.0, height: int = 560) -> go.Figure:
    """Scatter panels (one per method) of the same wells, coloured by ``color_by``, with marginals.

    ``panels`` maps a title ('uncorrected', 'cpDistiller', 'Harmony'…) to an (n_wells x 2) array whose
    rows follow ``profiles``. ``highlight`` lists perturbations drawn on top (others greyed out).
    """
    if not panels:
        raise CpDistillerError("nothing to plot: no embeddings.")
    for name, xy in panels.items():
        if np.asarray(xy).shape != (profiles.n_wells, 2):
            raise CpDistillerError(f"panel {name!r}: coordinates of shape {np.asarray(xy).shape}, "
                                   f"expected ({profiles.n_wells}, 2).")
    values, continuous = color_values(profiles, color_by)
    groups = _order_groups(values, continuous)
    colors = _group_colors(groups, continuous)
    svalues = values.astype(str)
    pert = profiles.perturbation.astype(str)
    custom = np.stack([profiles.plate.astype(str), profiles.well.astype(str), pert, svalues], axis=1)
    hover = ("plate %{customdata[0]}<br>well %{customdata[1]}<br>%{customdata[2]}"
             f"<br>{color_by}: " + "%{customdata[3]}<extra></extra>")
    highlight = [h for h in (highlight or []) if h]
    hl_mask = np.isin(pert, highlight) if highlight else np.zeros(profiles.n_wells, bool)

    n = len(panels)
    if marginals:
        widths = [0.8 / n, 0.2 / n] * n
        specs = [[{}, None] * n, [{}, {}] * n]
        fig = make_subplots(rows=2, cols=2 * n, row_heights=[0.18, 0.82], column_widths=widths, specs=specs,
                            horizontal_spacing=0.012, vertical_spacing=0.02)
    else:
        fig = make_subplots(rows=1, cols=n, horizontal_spacing=0.04)
    legend_groups = len(groups) <= MAX_GROUPS_WITH_LEGEND or continuous
    marginal_groups = groups if len(groups) <= MAX_MARGINAL_GROUPS else []

    for p, (title, xy) in enumerate(panels.items()):
        xy = np.asarray(xy, dtype=np.float64)
        col = 2 * p + 1 if marginals else p + 1
        row = 2 if marginals else 1
        base = ~hl_mask
        dim = bool(highlight)
        if continuous:
            fig.add_trace(go.Scattergl(
                x=xy[base, 0], y=xy[base, 1], mode="markers", name=color_by, showlegend=False,
                customdata=custom[base], hovertemplate=hover,
                marker=dict(size=point_size, color=values[base], colorscale=CONTINUOUS_SCALE,
                            cmin=float(values.min()), cmax=float(values.max()), opacity=0.25 if dim else 0.8,
                            showscale=p == 0, colorbar=dict(title=color_by, len=0.6, y=0.4, thickness=12))),
                row=row, col=col)
        elif legend_groups:
            for g in groups:
                m = base & (svalues == g)
                if not m.any():
                    continue
                fig.add_trace(go.Scattergl(
                    x=xy[m, 0], y=xy[m, 1], mode="markers", name=g, legendgroup=g, showlegend=p == 0,
                    customdata=custom[m], hovertemplate=hover,
                    marker=dict(size=point_size, color="#c8c8c8" if dim else colors[g], opacity=0.35 if dim else 0.8)),
                    row=row, col=col)
        else:  # too many groups for a legend: one trace, palette cycled by group (numeric codes: fast)
            codes = pd.Categorical(svalues[base], categories=groups).codes % len(PALETTE)
            fig.add_trace(go.Scattergl(
                x=xy[base, 0], y=xy[base, 1], mode="markers", name=color_by, showlegend=False,
                customdata=custom[base], hovertemplate=hover,
                marker=dict(size=point_size, opacity=0.35 if dim else 0.8,
                            color="#c8c8c8" if dim else codes.astype(np.int16),
                            colorscale=None if dim else _discrete_scale(PALETTE), cmin=-0.5,
                            cmax=len(PALETTE) - 0.5, showscale=False)),
                row=row, col=col)
        if highlight:
            for i, h in enumerate(highlight):
                m = hl_mask & (pert == h)
                if not m.any():
                    continue
                fig.add_trace(go.Scattergl(
                    x=xy[m, 0], y=xy[m, 1], mode="markers", name=f"★ {h}", legendgroup=f"hl-{h}",
                    showlegend=p == 0, customdata=custom[m], hovertemplate=hover,
                    marker=dict(size=point_size * 2.2, color=PALETTE[i % len(PALETTE)],
                                line=dict(width=1, color="black"))),
                    row=row, col=col)
        if marginals:
            _add_marginals(fig, xy, svalues, marginal_groups, colors, p, title)
        else:
            fig.layout.annotations += (go.layout.Annotation(
                text=f"<b>{title}</b>", x=(p + 0.5) / n, y=1.06, xref="paper", yref="paper", showarrow=False),)
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=40, b=10), plot_bgcolor="white",
                      legend=dict(itemsizing="constant", title=color_by, orientation="v"),
                      hoverlabel=dict(namelength=-1), uirevision=color_by)
    return fig


def _add_marginals(fig: go.Figure, xy: np.ndarray, svalues: np.ndarray, groups: Sequence[str],
                   colors: Mapping[str, str], p: int, title: str) -> None:
    """Density per group along x (above the scatter) and y (right of it); axes matched to the scatter."""
    main = fig.get_subplot(2, 2 * p + 1)
    top = fig.get_subplot(1, 2 * p + 1)
    right = fig.get_subplot(2, 2 * p + 2)
    main_x, main_y = main.xaxis.plotly_name.replace("axis", ""), main.yaxis.plotly_name.replace("axis", "")
    fig.update_layout({top.xaxis.plotly_name: dict(matches=main_x),
                       right.yaxis.plotly_name: dict(matches=main_y)})
    pad = lambda v: (float(v.min()) - 0.05 * np.ptp(v), float(v.max()) + 0.05 * np.ptp(v))  # noqa: E731
    xlo, xhi = pad(xy[:, 0])
    ylo, yhi = pad(xy[:, 1])
    todo = [(g, svalues == g) for g in groups] if groups else [("all", np.ones(len(svalues), bool))]
    for g, m in todo:
        if m.sum() < 2:
            continue
        color = colors.get(g, "#555555")
        gx, dx = _density(xy[m, 0], xlo, xhi)
        gy, dy = _density(xy[m, 1], ylo, yhi)
        fig.add_trace(go.Scatter(x=gx, y=dx, mode="lines", line=dict(color=color, width=1.4), showlegend=False,
                                 legendgroup=g, hoverinfo="skip"), row=1, col=2 * p + 1)
        fig.add_trace(go.Scatter(x=dy, y=gy, mode="lines", line=dict(color=color, width=1.4), showlegend=False,
                                 legendgroup=g, hoverinfo="skip"), row=2, col=2 * p + 2)
    fig.add_annotation(text=f"<b>{title}</b>", xref=f"{top.xaxis.plotly_name.replace('axis', '')} domain",
                       yref=f"{top.yaxis.plotly_name.replace('axis', '')} domain", x=0.5, y=1.25,
                       showarrow=False, font=dict(size=14))
