"""Plotly figure builders shared by the dashboard pages, the CLI and reports (one module per view)."""
