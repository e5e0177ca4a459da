"""Training curves of a correction run (its ``train_log.csv``): loss terms, discriminator accuracies, schedule."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

SCHEDULE = ("lambda", "temperature", "lr")
SKIP = ("epoch", "triplets", "seconds")
PALETTE = qualitative.Plotly + qualitative.D3
LABEL_GAP = 0.075  # least distance between chance labels, in accuracy units (axis 0..1.05)
PLURALS = {"batch": "batches", "plate": "plates", "row": "rows", "column": "columns", "col": "columns"}


def chance_label(effect: str, n_levels: int) -> str:
    """'chance (3 batches)', 'chance (16 rows)'; other effects: 'chance (5 levels of site)'."""
    plural = PLURALS.get(effect)
    return f"chance ({n_levels} {plural})" if plural else f"chance ({n_levels} levels of {effect})"


def _level_count(value: int | Sequence[object]) -> int:
    """A level count, or the length of a level list (``model.json``'s ``levels`` holds lists)."""
    return int(value) if isinstance(value, (int, float)) else len(value)


def training_curves(log: pd.DataFrame, levels: Mapping[str, int | Sequence[object]] | None = None) -> go.Figure:
    """Left: every loss term per epoch (log scale when positive); right: discriminator accuracies and λ.

    Accuracies near chance mean the discriminators can no longer tell batches / rows / columns apart.

    Parameters
    ----------
    log
        The run's ``train_log.csv`` (one row per epoch; ``acc_<effect>`` columns are accuracies).
    levels
        Number of levels per effect (``{"batch": 3, "row": 16}``), or the level lists themselves as in
        ``model/model.json``'s ``"levels"``. Each ``acc_<effect>`` with a count of 2+ gets a dashed line
        at chance, 1 / levels, labelled e.g. "chance (3 batches)" (chance for balanced levels; a level
        holding most wells lets a discriminator score above it by always guessing that level). Without
        ``levels`` no chance line is drawn: the figure does not guess the counts.
    """
    fig = make_subplots(rows=1, cols=2, subplot_titles=("losses", "discriminator accuracy and λ"),
                        horizontal_spacing=0.1)
    if log is None or log.empty or "epoch" not in log:
        fig.update_layout(height=300, annotations=[dict(text="no epoch finished yet", showarrow=False,
                                                        xref="paper", yref="paper", x=0.5, y=0.5)])
        return fig
    x = log["epoch"]
    numeric = [c for c in log.columns if c not in SKIP and pd.api.types.is_numeric_dtype(log[c])]
    accs = [c for c in numeric if c.startswith("acc_")]
    losses = [c for c in numeric if c not in accs and c not in SCHEDULE]
    colors = {c: PALETTE[i % len(PALETTE)] for i, c in enumerate(losses + accs + ["lambda"])}
    for c in losses:
        fig.add_trace(go.Scatter(x=x, y=log[c], mode="lines+markers", name=c, marker=dict(size=4),
                                 line=dict(color=colors[c])), row=1, col=1)
    for c in accs + (["lambda"] if "lambda" in log else []):
        fig.add_trace(go.Scatter(x=x, y=log[c], mode="lines+markers", name=c, marker=dict(size=4),
                                 line=dict(dash="dot" if c == "lambda" else "solid", color=colors[c])), row=1, col=2)
    labelled = _chance_lines(fig, accs, levels or {}, colors)
    if losses and (log[losses] > 0).all().all():
        fig.update_yaxes(type="log", row=1, col=1)
    fig.update_yaxes(range=[0, 1.05], row=1, col=2)
    fig.update_xaxes(title_text="epoch", dtick=1 if len(log) <= 20 else None)
    fig.update_layout(height=320, margin=dict(l=10, r=125 if labelled else 10, t=30, b=10), plot_bgcolor="white",
                      legend=dict(orientation="h", y=-0.25), hoverlabel=dict(namelength=-1))
    return fig


def _chance_lines(fig: go.Figure, accs: Sequence[str], levels: Mapping[str, int | Sequence[object]],
                  colors: Mapping[str, str]) -> bool:
    """One dashed line at 1 / levels per accuracy column whose effect has a known level count, labelled
    right of the panel (labels of close lines, 1/16 and 1/24, are nudged apart). Whether any was drawn."""
    chance = []
    for c in accs:
        effect = c[len("acc_"):]
        n = _level_count(levels[effect]) if effect in levels else 0
        if n >= 2:
            chance.append((1.0 / n, c, chance_label(effect, n)))
    label_y = -1.0
    for y, c, text in sorted(chance):
        fig.add_hline(y=y, row=1, col=2, line=dict(dash="dash", width=1.2, color=colors[c]))
        label_y = max(y, label_y + LABEL_GAP)
        fig.add_annotation(text=text, x=1.0, xref="x2 domain", xanchor="left", y=label_y, yref="y2",
                           yanchor="middle", showarrow=False, font=dict(size=10, color=colors[c]))
    return bool(chance)
