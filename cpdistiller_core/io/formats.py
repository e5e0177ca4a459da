"""The one table of supported profile file formats: suffixes, reader, writer, description.

Everything that lists formats (suffix lookup, the reader and writer dispatch, help texts, error
messages, file stems) derives from :data:`FORMATS`; add a format here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from .readers import _read_delimited, _read_h5ad, _read_parquet
from .writers import _write_delimited, _write_h5ad, _write_parquet


@dataclass(frozen=True)
class FileFormat:
    """One supported format.

    ``reader(handle, name, options, notes, compression)`` returns (metadata, X, features, stored);
    ``writer(profiles, tmp, path, info, input_profiles)`` writes ``tmp`` (renamed to ``path`` after).
    ``binary`` formats are recognised by their signature (:func:`~.sniff.sniff_content` names them);
    text formats may be gzipped (a ``.gz`` suffix). ``shown`` is how messages list the suffixes.
    """

    name: str
    suffixes: tuple[str, ...]
    label: str
    description: str
    reader: Callable[..., tuple]
    writer: Callable[..., None]
    shown: str
    binary: bool = False
    content_label: str = ""  # what the signature says the data are, when it differs from label
    aliases: tuple[str, ...] = ()


FORMATS: tuple[FileFormat, ...] = (
    FileFormat("csv", (".csv", ".csv.gz"), "CSV", "comma-separated text, optionally gzipped",
               partial(_read_delimited, default_sep=","), partial(_write_delimited, sep=","), ".csv, .csv.gz"),
    FileFormat("tsv", (".tsv", ".tsv.gz", ".txt", ".txt.gz"), "TSV", "tab-separated text, optionally gzipped",
               partial(_read_delimited, default_sep="\t"), partial(_write_delimited, sep="\t"), ".tsv(.gz)"),
    FileFormat("parquet", (".parquet", ".pq"), "Parquet", "Apache Parquet (the default output)",
               _read_parquet, _write_parquet, ".parquet", binary=True, aliases=("pq",)),
    FileFormat("h5ad", (".h5ad",), "AnnData .h5ad", "AnnData (scanpy) HDF5 file",
               _read_h5ad, _write_h5ad, ".h5ad", binary=True, content_label="AnnData/HDF5"),
)
BY_NAME: dict[str, FileFormat] = {f.name: f for f in FORMATS}
DEFAULT_OUTPUT = "parquet"
# Longest first, so that '.csv.gz' wins over '.gz'-less matches.
_SUFFIXES: tuple[tuple[str, FileFormat], ...] = tuple(sorted(
    ((s, f) for f in FORMATS for s in f.suffixes), key=lambda sf: len(sf[0]), reverse=True))
SUFFIXES: tuple[str, ...] = tuple(s for f in FORMATS for s in f.suffixes)


def format_of(name: str) -> str | None:
    """The format a file name says (by its suffix, case-insensitive), or None."""
    low = name.lower()
    for suffix, fmt in _SUFFIXES:
        if low.endswith(suffix):
            return fmt.name
    return None


def get_format(name: str) -> FileFormat | None:
    """A format by its name or alias ('csv', 'pq'...), case-insensitive; None when unknown."""
    low = name.lower()
    return next((f for f in FORMATS if low == f.name or low in f.aliases), None)


def split_suffix(name: str) -> tuple[str, str]:
    """(name without its format suffix, the suffix as written): 'a/x.CSV.gz' -> ('a/x', '.CSV.gz');
    ('a/x.xyz', '') when no format's suffix ends the name."""
    low = name.lower()
    for suffix, _ in _SUFFIXES:
        if low.endswith(suffix):
            return name[: -len(suffix)], name[-len(suffix):]
    return name, ""


def file_stem(name: str) -> str:
    """The file name without its format suffix: 'a/plate1.csv.gz' -> 'plate1'."""
    stem, suffix = split_suffix(Path(name).name)
    return stem if suffix else Path(stem).stem


def _or_list(items: list[str]) -> str:
    return ", ".join(items[:-1]) + " or " + items[-1] if len(items) > 1 else "".join(items)


def readable_hint() -> str:
    """The readable suffixes for messages: '.csv, .csv.gz, .tsv(.gz), .parquet or .h5ad'."""
    return _or_list([f.shown for f in FORMATS])


def writable_hint() -> str:
    """The output format names for messages, the default first: 'parquet, csv, tsv or h5ad'."""
    names = [DEFAULT_OUTPUT] + [f.name for f in FORMATS if f.name != DEFAULT_OUTPUT]
    return _or_list(names)
