"""Side-by-side 2-D embeddings (uncorrected vs corrected vs reference methods) with marginal densities.

The paper's Fig. 2 view: each panel is a scatter (WebGL ``Scattergl`` from a few thousand wells on, smooth
with 100k points) with density curves per group along both axes, so a batch or a row/column gradient that
survives correction shows as shifted curves. Points are drawn in a shuffled order (fixed seed) so the last
group does not hide the others; a density view (contours per group) reads better for very large screens.
Row and column colourings use a continuous scale so gradients read as colour ramps. Axes are cut to the
bulk of the points (robust range) and titled 'PC1 (23.4 % variance)' or 'UMAP 1'. Hover shows plate, well
and perturbation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

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
WEBGL_MIN_POINTS = 5000  # fewer wells: SVG (browsers allow few WebGL contexts per page)
DENSITY_BINS = 90
HDR_LEVELS = (0.2, 0.5, 0.8)  # density view: lines enclosing the densest 20 / 50 / 80 % of a group's wells


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


def draw_order(n: int, seed: int = 0) -> np.ndarray:
    """The order in which ``n`` points are drawn: a permutation fixed by ``seed`` (reproducible views).

    Drawing groups one after the other lets the last group hide the others where they overlap; a
    shuffled order shows which groups really share a region.
    """
    return np.random.default_rng(seed).permutation(n)


def robust_range(values: np.ndarray, low: float = 0.5, high: float = 99.5, margin: float = 0.1,
                 tail: float = 0.5) -> tuple[float, float]:
    """Axis range around the bulk of ``values``, so a few outliers no longer squash it.

    The bulk spans the ``low``–``high`` percentiles (width w). On each side the range reaches the most
    extreme value when that lies within ``tail`` * w of the bulk (ordinary tails stay in view); beyond
    that it stops ``margin`` * w past the bulk. A small pad (3 % of w) keeps edge points off the frame.
    """
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if not len(v):
        return -1.0, 1.0
    plo, phi = (float(q) for q in np.percentile(v, [low, high]))
    vmin, vmax = float(v.min()), float(v.max())
    width = (phi - plo) or (vmax - vmin) or 1.0
    lo = vmin if plo - vmin <= tail * width else plo - margin * width
    hi = vmax if vmax - phi <= tail * width else phi + margin * width
    return lo - 0.03 * width, hi + 0.03 * width


def _full_range(values: np.ndarray) -> tuple[float, float]:
    v = np.asarray(values, dtype=np.float64)
    pad = 0.05 * float(np.ptp(v)) or 1.0
    return float(v.min()) - pad, float(v.max()) + pad


def axis_titles(projection: str | None, ratios: Sequence[float] | None = None) -> tuple[str, str]:
    """'PC1 (23.4 % variance)' / 'PC2 (…)' for PCA with explained-variance ratios, 'UMAP 1' / 'UMAP 2'."""
    proj = (projection or "").upper()
    if proj == "PCA":
        if ratios is not None and len(ratios) >= 2:
            return tuple(f"PC{i + 1} ({100 * float(ratios[i]):.1f} % variance)" for i in range(2))  # type: ignore[return-value]
        return "PC1", "PC2"
    if proj:
        return f"{proj} 1", f"{proj} 2"
    return "", ""


@dataclass
class _Colouring:
    """What every panel shares: colour per well, the groups, hover data and the highlighted wells."""

    color_by: str
    values: np.ndarray
    svalues: np.ndarray
    continuous: bool
    groups: list[str]
    colors: dict[str, str]
    custom: np.ndarray
    hover: str
    highlight: list[str]
    hl_mask: np.ndarray
    pert: np.ndarray
    trace: type = go.Scattergl

    @cached_property
    def codes(self) -> np.ndarray:
        """Group index per well (position in ``groups``)."""
        return pd.Categorical(self.svalues, categories=self.groups).codes.astype(np.int64)

    @property
    def legend(self) -> bool:
        return len(self.groups) <= MAX_GROUPS_WITH_LEGEND and not self.continuous

    @property
    def dim(self) -> bool:
        return bool(self.highlight)


def _colouring(profiles: Profiles, color_by: str, highlight: Sequence[str] | None, webgl: bool | None) -> _Colouring:
    values, continuous = color_values(profiles, color_by)
    groups = _order_groups(values, continuous)
    svalues = values.astype(str)
    pert = profiles.perturbation.astype(str)
    custom = np.stack([profiles.plate.astype(str), profiles.well.astype(str), pert, svalues], axis=1)
    hover = ("plate %{customdata[0]}<br>well %{customdata[1]}<br>%{customdata[2]}"
             f"<br>{color_by}: " + "%{customdata[3]}<extra></extra>")
    highlight = [h for h in (highlight or []) if h]
    hl_mask = np.isin(pert, highlight) if highlight else np.zeros(profiles.n_wells, bool)
    use_gl = profiles.n_wells >= WEBGL_MIN_POINTS if webgl is None else webgl
    return _Colouring(color_by, values, svalues, continuous, groups, _group_colors(groups, continuous), custom,
                      hover, highlight, hl_mask, pert, go.Scattergl if use_gl else go.Scatter)


def embedding_figure(panels: Mapping[str, np.ndarray], profiles: Profiles, color_by: str = "batch",
                     highlight: Sequence[str] | None = None, marginals: bool = True,
                     point_size: float = 4.0, height: int = 560, *, kind: str = "scatter", order: str = "random",
                     seed: int = 0, projection: str | None = None,
                     variance: Mapping[str, Sequence[float]] | None = None, axis_range: str = "robust",
                     webgl: bool | None = None) -> go.Figure:
    """Scatter panels (one per method) of the same wells, coloured by ``color_by``, with marginals.

    Parameters
    ----------
    panels
        Title ('uncorrected', 'cpDistiller', 'Harmony'…) -> (n_wells x 2) array whose rows follow ``profiles``.
    profiles
        The wells (colours, hover: plate, well, perturbation).
    color_by
        One of :data:`COLOR_OPTIONS`; row and column use a continuous scale.
    highlight
        Perturbations drawn on top as stars (others greyed out), listed in a second legend.
    marginals
        Density curves per group above and right of each panel.
    kind
        'scatter' (points) or 'density' for large screens: per group, lines enclosing the densest 20 %,
        50 % and 80 % of its wells; for row/column colourings (or too many groups) a binned map whose
        colour is the mean row/column (or the well count) per bin.
    order
        'random': every well in one trace, drawn in a shuffled order (``seed``), so no group hides the
        others; the legend then only names the colours. 'group': one trace per group (a legend click
        hides a group; the last group is drawn on top).
    seed
        Seed of the random drawing order.
    projection
        'PCA' or 'UMAP' (axis titles 'PC1 (23.4 % variance)', 'UMAP 1'); None: no axis titles.
    variance
        Panel title -> explained-variance ratios of its PCA (``reduce.explained_variance``).
    axis_range
        'robust': each axis spans the 0.5–99.5 percentiles plus a margin, so a few outliers do not squash
        the bulk (they stay in the figure: zoom out or double-click twice; the panel says how many).
        'full': every point in view.
    webgl
        WebGL (``Scattergl``) or SVG; None: WebGL from :data:`WEBGL_MIN_POINTS` wells on.
    """
    if not panels:
        raise CpDistillerError("nothing to plot: no embeddings.")
    if kind not in ("scatter", "density") or order not in ("random", "group") or axis_range not in ("robust", "full"):
        raise CpDistillerError(f"unknown option (kind={kind!r}, order={order!r}, axis_range={axis_range!r}); use kind "
                               "'scatter'/'density', order 'random'/'group', axis_range 'robust'/'full'.")
    for name, xy in panels.items():
        if np.asarray(xy).shape != (profiles.n_wells, 2):
            raise CpDistillerError(f"panel {name!r}: coordinates of shape {np.asarray(xy).shape}, "
                                   f"expected ({profiles.n_wells}, 2).")
    c = _colouring(profiles, color_by, highlight, webgl)
    perm = draw_order(profiles.n_wells, seed) if order == "random" else None
    n = len(panels)
    if marginals:
        widths = [0.8 / n, 0.2 / n] * n
        specs = [[{}, None] * n, [{}, {}] * n]
        fig = make_subplots(rows=2, cols=2 * n, row_heights=[0.18, 0.82], column_widths=widths, specs=specs,
                            horizontal_spacing=0.012, vertical_spacing=0.02)
    else:
        fig = make_subplots(rows=1, cols=n, horizontal_spacing=0.04)
    marginal_groups = c.groups if len(c.groups) <= MAX_MARGINAL_GROUPS else []
    # legend-only entries: the shuffled trace has no per-group traces to list (markers; a click could not
    # hide the points, so clicks are off); with highlights the points are grey and lines name the colours
    # of the marginal curves (a click hides a group's curves and, drawn by group, its points)
    proxies = None
    if kind == "scatter" and c.legend:
        proxies = "lines" if c.dim and marginals else "markers" if perm is not None and not c.dim else None

    for p, (title, xy) in enumerate(panels.items()):
        xy = np.asarray(xy, dtype=np.float64)
        col = 2 * p + 1 if marginals else p + 1
        row = 2 if marginals else 1
        ranges = [robust_range(xy[:, i]) if axis_range == "robust" else _full_range(xy[:, i]) for i in (0, 1)]
        if kind == "density":
            _density_panel(fig, xy, c, ranges, p, row, col)
        elif perm is not None:
            _scatter_shuffled(fig, xy, c, perm, p, row, col, point_size)
        else:
            _scatter_by_group(fig, xy, c, p, row, col, point_size)
        if proxies and p == 0:
            for g in c.groups:
                fig.add_trace(c.trace(x=[None], y=[None], mode=proxies, name=g,
                                      legendgroup=g, showlegend=True, line=dict(color=c.colors[g], width=2),
                                      marker=dict(size=point_size * 2, color=c.colors[g])), row=row, col=col)
        _highlights(fig, xy, c, p, row, col, point_size)
        if marginals:
            _add_marginals(fig, xy, c.svalues, marginal_groups, c.colors, p, title, ranges)
        else:
            fig.layout.annotations += (go.layout.Annotation(
                text=f"<b>{title}</b>", x=(p + 0.5) / n, y=1.06, xref="paper", yref="paper", showarrow=False),)
        _frame_panel(fig, xy, ranges, row, col, axis_titles(projection, (variance or {}).get(title)))
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=40, b=60 if c.highlight else 10),
                      plot_bgcolor="white", hoverlabel=dict(namelength=-1),
                      uirevision=f"{color_by}|{projection}|{kind}",  # a user's zoom lasts until the view changes
                      legend=dict(itemsizing="constant", title=color_by, orientation="v",
                                  # proxies cannot hide their points: clicking them would mislead
                                  itemclick=False if proxies == "markers" else "toggle",
                                  itemdoubleclick=False if proxies == "markers" else "toggleothers"),
                      legend2=dict(title="highlighted", orientation="h", x=0, xanchor="left", y=-0.04,
                                   yanchor="top", itemsizing="constant"))
    return fig


def _scatter_shuffled(fig: go.Figure, xy: np.ndarray, c: _Colouring, perm: np.ndarray, p: int, row: int,
                      col: int, size: float) -> None:
    """Every non-highlighted well in one trace, in the shuffled order ``perm``; colour per point."""
    idx = perm[~c.hl_mask[perm]]
    marker: dict = dict(size=size, opacity=0.35 if c.dim else 0.8)
    if c.dim:
        marker["color"] = "#c8c8c8"
    elif c.continuous:
        marker.update(color=c.values[idx], colorscale=CONTINUOUS_SCALE, cmin=float(c.values.min()),
                      cmax=float(c.values.max()), showscale=p == 0,
                      colorbar=dict(title=c.color_by, len=0.6, y=0.4, thickness=12))
    else:
        palette = [c.colors[g] for g in c.groups] if len(c.groups) <= len(PALETTE) else list(PALETTE)
        codes = c.codes[idx] % len(palette)
        marker.update(color=codes.astype(np.int16), colorscale=_discrete_scale(palette), cmin=-0.5,
                      cmax=len(palette) - 0.5, showscale=False)
    fig.add_trace(c.trace(x=xy[idx, 0], y=xy[idx, 1], mode="markers", name=c.color_by, showlegend=False,
                          customdata=c.custom[idx], hovertemplate=c.hover, marker=marker), row=row, col=col)


def _scatter_by_group(fig: go.Figure, xy: np.ndarray, c: _Colouring, p: int, row: int, col: int,
                      size: float) -> None:
    """One trace per group (legend clicks hide groups); continuous colourings and very many groups: one trace."""
    base = ~c.hl_mask
    if c.legend:
        for g in c.groups:
            m = base & (c.svalues == g)
            if m.any():
                fig.add_trace(c.trace(
                    x=xy[m, 0], y=xy[m, 1], mode="markers", name=g, legendgroup=g, showlegend=p == 0 and not c.dim,
                    customdata=c.custom[m], hovertemplate=c.hover,
                    marker=dict(size=size, color="#c8c8c8" if c.dim else c.colors[g], opacity=0.35 if c.dim else 0.8)),
                    row=row, col=col)
        return
    _scatter_shuffled(fig, xy, c, np.arange(len(xy)), p, row, col, size)


def _highlights(fig: go.Figure, xy: np.ndarray, c: _Colouring, p: int, row: int, col: int, size: float) -> None:
    """Highlighted perturbations as stars on top, listed in the second legend ('highlighted')."""
    for i, h in enumerate(c.highlight):
        m = c.hl_mask & (c.pert == h)
        if m.any():
            fig.add_trace(c.trace(
                x=xy[m, 0], y=xy[m, 1], mode="markers", name=h, legendgroup=f"hl-{h}", legend="legend2",
                showlegend=p == 0, customdata=c.custom[m], hovertemplate=c.hover,
                marker=dict(symbol="star", size=size * 2.5, color=PALETTE[i % len(PALETTE)],
                            line=dict(width=0.8, color="black"))),
                row=row, col=col)


def _density_panel(fig: go.Figure, xy: np.ndarray, c: _Colouring, ranges: Sequence[tuple[float, float]], p: int,
                   row: int, col: int) -> None:
    """Binned view: contour lines per group, or one map of the mean colour value / well count per bin."""
    from scipy.ndimage import gaussian_filter

    edges = [np.linspace(lo, hi, DENSITY_BINS + 1) for lo, hi in ranges]
    centers = [(e[:-1] + e[1:]) / 2 for e in edges]
    if not c.continuous and len(c.groups) <= MAX_MARGINAL_GROUPS:
        for g in c.groups:
            m = c.svalues == g
            if m.sum() < 5:
                continue
            counts, _, _ = np.histogram2d(xy[m, 0], xy[m, 1], bins=edges)
            mass = _hdr_mass(gaussian_filter(counts, sigma=_bandwidth_bins(xy[m], edges)))
            fig.add_trace(go.Contour(
                x=centers[0], y=centers[1], z=mass.T, name=g, legendgroup=g, showlegend=p == 0, showscale=False,
                colorscale=[[0, c.colors[g]], [1, c.colors[g]]], line=dict(width=1.6),
                contours=dict(coloring="lines", start=HDR_LEVELS[0], end=HDR_LEVELS[-1],
                              size=HDR_LEVELS[1] - HDR_LEVELS[0]),
                hovertemplate=f"{g}: densest %{{z:.0%}} of its wells<extra></extra>"), row=row, col=col)
        return
    bins = int(np.clip(np.sqrt(len(xy) / 5), 20, DENSITY_BINS))  # ~5+ wells per bin where the data are
    edges = [np.linspace(lo, hi, bins + 1) for lo, hi in ranges]
    centers = [(e[:-1] + e[1:]) / 2 for e in edges]
    counts, _, _ = np.histogram2d(xy[:, 0], xy[:, 1], bins=edges)
    if c.continuous:
        sums, _, _ = np.histogram2d(xy[:, 0], xy[:, 1], bins=edges, weights=c.values.astype(np.float64))
        z, title = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan), f"mean {c.color_by}"
        scale, lo, hi = CONTINUOUS_SCALE, float(c.values.min()), float(c.values.max())
    else:
        z, title = np.where(counts > 0, np.log10(np.maximum(counts, 1)), np.nan), "log10 wells"
        scale, lo, hi = "Blues", 0.0, float(np.nanmax(np.log10(np.maximum(counts, 1)))) or 1.0
    fig.add_trace(go.Heatmap(x=centers[0], y=centers[1], z=z.T, colorscale=scale, zmin=lo, zmax=hi,
                             showscale=p == 0, colorbar=dict(title=title, len=0.6, y=0.4, thickness=12),
                             hovertemplate=f"{title}: %{{z:.3g}}<extra></extra>"), row=row, col=col)


def _bandwidth_bins(xy: np.ndarray, edges: Sequence[np.ndarray]) -> list[float]:
    """Scott's rule (robust spread x n^-1/6) per axis, in bins: smooth contours for small groups too."""
    out = []
    for i, e in enumerate(edges):
        q25, q75 = np.percentile(xy[:, i], [25, 75])
        spread = min(float(np.std(xy[:, i])), float(q75 - q25) / 1.349) or float(np.std(xy[:, i]))
        out.append(max(1.0, spread * len(xy) ** (-1 / 6) / float(e[1] - e[0])))
    return out


def _hdr_mass(density: np.ndarray) -> np.ndarray:
    """Per bin: the share of all wells in bins at least as dense. Its contour at q encloses the densest q."""
    flat = density.ravel().astype(np.float64)
    total = flat.sum()
    if total <= 0:
        return np.ones_like(density, dtype=np.float64)
    order = np.argsort(flat)[::-1]
    mass = np.empty_like(flat)
    mass[order] = np.cumsum(flat[order]) / total
    return mass.reshape(density.shape)


def _frame_panel(fig: go.Figure, xy: np.ndarray, ranges: Sequence[tuple[float, float]], row: int, col: int,
                 titles: tuple[str, str]) -> None:
    """Axis ranges and titles of a panel; says how many wells lie outside the shown range."""
    fig.update_xaxes(range=list(ranges[0]), title=dict(text=titles[0], font=dict(size=11), standoff=4),
                     row=row, col=col)
    fig.update_yaxes(range=list(ranges[1]), title=dict(text=titles[1], font=dict(size=11), standoff=4),
                     row=row, col=col)
    (x0, x1), (y0, y1) = ranges
    outside = int(((xy[:, 0] < x0) | (xy[:, 0] > x1) | (xy[:, 1] < y0) | (xy[:, 1] > y1)).sum())
    if outside:
        sub = fig.get_subplot(row, col)
        xa, ya = sub.xaxis.plotly_name.replace("axis", ""), sub.yaxis.plotly_name.replace("axis", "")
        fig.add_annotation(text=f"{outside:,} well{'s' if outside > 1 else ''} outside the view (double-click twice "
                                "to show all)", xref=f"{xa} domain", yref=f"{ya} domain", x=1, y=0, xanchor="right",
                           yanchor="bottom", showarrow=False, font=dict(size=10, color="#666"),
                           bgcolor="rgba(255,255,255,0.8)")


def _add_marginals(fig: go.Figure, xy: np.ndarray, svalues: np.ndarray, groups: Sequence[str],
                   colors: Mapping[str, str], p: int, title: str,
                   ranges: Sequence[tuple[float, float]] | None = None) -> None:
    """Density per group along x (above the scatter) and y (right of it); axes matched to the scatter."""
    main = fig.get_subplot(2, 2 * p + 1)
    top = fig.get_subplot(1, 2 * p + 1)
    right = fig.get_subplot(2, 2 * p + 2)
    main_x, main_y = main.xaxis.plotly_name.replace("axis", ""), main.yaxis.plotly_name.replace("axis", "")
    fig.update_layout({top.xaxis.plotly_name: dict(matches=main_x),
                       right.yaxis.plotly_name: dict(matches=main_y)})
    (xlo, xhi), (ylo, yhi) = ranges or (_full_range(xy[:, 0]), _full_range(xy[:, 1]))
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
