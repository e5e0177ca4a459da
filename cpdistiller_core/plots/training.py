"""Training curves of a correction run (its ``train_log.csv``): loss terms, discriminator accuracies, schedule."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

SCHEDULE = ("lambda", "temperature", "lr")
SKIP = ("epoch", "triplets", "seconds")


def training_curves(log: pd.DataFrame) -> go.Figure:
    """Left: every loss term per epoch (log scale when positive); right: discriminator accuracies and λ.

    Accuracies near chance mean the discriminators can no longer tell batches / rows / columns apart.
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
    for c in losses:
        fig.add_trace(go.Scatter(x=x, y=log[c], mode="lines+markers", name=c, marker=dict(size=4)), row=1, col=1)
    for c in accs + (["lambda"] if "lambda" in log else []):
        fig.add_trace(go.Scatter(x=x, y=log[c], mode="lines+markers", name=c, marker=dict(size=4),
                                 line=dict(dash="dot" if c == "lambda" else "solid")), row=1, col=2)
    if losses and (log[losses] > 0).all().all():
        fig.update_yaxes(type="log", row=1, col=1)
    fig.update_yaxes(range=[0, 1.05], row=1, col=2)
    fig.update_xaxes(title_text="epoch", dtick=1 if len(log) <= 20 else None)
    fig.update_layout(height=320, margin=dict(l=10, r=10, t=30, b=10), plot_bgcolor="white",
                      legend=dict(orientation="h", y=-0.25))
    return fig
