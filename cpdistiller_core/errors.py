"""The one exception type users can cause, and helpers that make its messages useful."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import pandas as pd


class CpDistillerError(Exception):
    """An error caused by the user's input or settings.

    The message is written to be shown as is: the CLI prints it on one line and exits 1,
    the dashboard shows it with ``st.error``. It names the file, the column and a few
    offending rows where those exist.

    Examples
    --------
    >>> import cpdistiller_core as cpd
    >>> try:
    ...     cpd.read_profiles("missing.csv")
    ... except cpd.CpDistillerError as exc:
    ...     print(exc)
    missing.csv: file not found.
    """


class CpDistillerWarning(UserWarning):
    """Data can still be used, but something was dropped, replaced or assumed.

    Examples
    --------
    >>> import warnings, cpdistiller_core as cpd
    >>> warnings.simplefilter("error", cpd.CpDistillerWarning)   # doctest: +SKIP
    """


def example_rows(index: Iterable, limit: int = 5) -> str:
    """Render a few row labels as 'rows 3, 17, 42 (+12 more)' for error messages."""
    items = list(index)
    shown = ", ".join(str(i) for i in items[:limit])
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return f"row{'s' if len(items) != 1 else ''} {shown}{more}"


def example_values(values: Sequence | pd.Series, limit: int = 5) -> str:
    """Render a few distinct offending values, quoted."""
    uniq = list(dict.fromkeys(str(v) for v in values))
    shown = ", ".join(repr(v) for v in uniq[:limit])
    more = f" (+{len(uniq) - limit} more)" if len(uniq) > limit else ""
    return shown + more


def where(source: str | None, column: str | None = None) -> str:
    """Prefix naming the file and column an error is about: "plate1.csv, column 'Metadata_Well': "."""
    parts = []
    if source:
        parts.append(str(source))
    if column:
        parts.append(f"column {column!r}")
    return (", ".join(parts) + ": ") if parts else ""
