"""The one exception type users can cause, and helpers that make its messages useful."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

import pandas as pd

# Set while reading files the user did not upload (the dashboard's server paths): messages then name
# the file, the column and the rows, but never quote what the cells hold.
_HIDE_CELLS: ContextVar[bool] = ContextVar("cpdistiller_hide_cells", default=False)


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


def example_cells(values: Sequence | pd.Series, limit: int = 5) -> str:
    """Like :func:`example_values`, for cell contents: hidden (only counted) inside :func:`hide_cell_values`."""
    if _HIDE_CELLS.get():
        n = len(dict.fromkeys(str(v) for v in values))
        return f"{n} value{'s' if n != 1 else ''} (not shown for files on the server)"
    return example_values(values, limit)


@contextmanager
def hide_cell_values() -> Iterator[None]:
    """Within this block, error messages built with :func:`example_cells` do not quote cell contents."""
    token = _HIDE_CELLS.set(True)
    try:
        yield
    finally:
        _HIDE_CELLS.reset(token)


def cells_hidden() -> bool:
    """Whether cell contents must stay out of messages (inside :func:`hide_cell_values`)."""
    return _HIDE_CELLS.get()


def where(source: str | None, column: str | None = None) -> str:
    """Prefix naming the file and column an error is about: "plate1.csv, column 'Metadata_Well': "."""
    parts = []
    if source:
        parts.append(str(source))
    if column:
        parts.append(f"column {column!r}")
    return (", ".join(parts) + ": ") if parts else ""
