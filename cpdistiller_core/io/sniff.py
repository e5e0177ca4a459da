"""What a file really holds: magic bytes, text encoding, separator, decimal mark, ragged rows."""

from __future__ import annotations

import contextlib
import dataclasses
import io as _io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..errors import CpDistillerError

_HTML_STARTS = (b"<!doctype html", b"<html", b"<head", b"<body", b"<?xml", b"<!--")
_CP1252_UNDEFINED = b"\x81\x8d\x8f\x90\x9d"  # bytes with no cp1252 character: then it is latin-1
_SEPARATORS = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}
_DECIMAL_COMMA = re.compile(r"^\s*[+-]?\d+,\d+(?:[eE][+-]?\d+)?\s*$")
_DECIMAL_POINT = re.compile(r"^\s*[+-]?\d*\.\d+(?:[eE][+-]?\d+)?\s*$")
_SNIFF_CHARS = 4 << 20  # decoded text examined for the separator and the decimal mark


@dataclass(frozen=True)
class TextDialect:
    """How a delimited text file is written: separator, decimal mark, encoding and compression."""

    sep: str = ","
    decimal: str = "."
    encoding: str = "utf-8"
    compression: str | None = None


def sniff_content(head: bytes) -> str | None:
    """What the first bytes of a file say it is: 'parquet', 'h5ad', 'gzip', 'xlsx', 'xls', 'html',
    'utf-16', or None (plain text or unknown)."""
    if head[:4] == b"PAR1":
        return "parquet"
    if head[:8] == b"\x89HDF\r\n\x1a\n":
        return "h5ad"
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if head[:4] == b"PK\x03\x04":
        return "xlsx"
    if head[:8] == b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1":
        return "xls"
    if head[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return "utf-16"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith(_HTML_STARTS):
        return "html"
    return None


def _content_error(name: str, kind: str, ext: str, known_ext: bool) -> CpDistillerError:
    what = {
        "xlsx": "an Excel workbook (.xlsx, or another ZIP archive)",
        "xls": "an old-style Excel workbook (.xls)",
        "html": "an HTML web page (often an error or login page saved instead of the data)",
    }[kind]
    fix = ("open it in the spreadsheet program and save the sheet as CSV (UTF-8)" if kind != "html"
           else "download the file again and check that it opens as a table")
    if not known_ext:
        return CpDistillerError(f"{name}: unknown file format {ext or '(no extension)'!r}: this is {what}; {fix}.")
    return CpDistillerError(f"{name}: this is {what}, not a {ext} file as its name says; {fix}.")


@contextlib.contextmanager
def _open_binary(handle: Any, compression: str | None) -> Iterator[Any]:
    """The (decompressed) bytes of a path or of the caller's BytesIO, which is left open and rewound."""
    import gzip

    if isinstance(handle, _io.BytesIO):
        handle.seek(0)
        fh = gzip.GzipFile(fileobj=handle) if compression == "gzip" else handle
        try:
            yield fh
        finally:
            if fh is not handle:
                fh.close()  # a GzipFile leaves the BytesIO it reads open
            handle.seek(0)
    else:
        with (gzip.open(handle) if compression == "gzip" else open(handle, "rb")) as fh:
            yield fh


def detect_encoding(handle: Any, compression: str | None = None) -> str:
    """'utf-8' when the whole (decompressed) file decodes as UTF-8, else 'cp1252' (Windows
    spreadsheets' Western encoding), or 'latin-1' when it holds bytes cp1252 leaves undefined.
    Streams the file in 1 MiB chunks."""
    import codecs
    import itertools

    decoder = codecs.getincrementaldecoder("utf-8")()
    utf8, undefined = True, False
    try:
        with _open_binary(handle, compression) as fh:
            first = fh.read(1 << 20)
            if first[:2] in (b"\xff\xfe", b"\xfe\xff"):
                return "utf-16"  # Excel's 'Unicode text'; the BOM gives the byte order
            for chunk in itertools.chain([first], iter(lambda: fh.read(1 << 20), b"")):
                if chunk.isascii():
                    continue
                if utf8:
                    try:
                        decoder.decode(chunk)
                    except UnicodeDecodeError:
                        utf8 = False
                if not utf8 and any(b in chunk for b in _CP1252_UNDEFINED):
                    undefined = True
                    break
            if utf8:
                decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        utf8 = False
    except (OSError, EOFError):
        return "utf-8"  # unreadable: the reader reports it
    if utf8:
        return "utf-8"
    return "latin-1" if undefined else "cp1252"


def _text_sample(handle: Any, dialect: TextDialect) -> str:
    try:
        with _open_binary(handle, dialect.compression) as fh:
            text = _io.TextIOWrapper(fh, encoding=dialect.encoding, errors="replace", newline="")
            try:
                return text.read(_SNIFF_CHARS)
            finally:
                text.detach()
    except (OSError, EOFError):
        return ""


def _records(sample: str, sep: str, limit: int = 50) -> list[list[str]]:
    """Up to ``limit`` complete records of the sample (the last, possibly cut, record is dropped)."""
    import csv
    import itertools

    cut = sample.rfind("\n")
    if cut < 0:
        return []
    try:
        return list(itertools.islice(csv.reader(_io.StringIO(sample[:cut + 1]), delimiter=sep), limit))
    except csv.Error:
        return []


def sniff_dialect(handle: Any, name: str, default_sep: str, *, sep: str | None = None,
                  decimal: str | None = None, compression: str | None = None,
                  encoding: str | None = None) -> tuple[TextDialect, list[str]]:
    """The dialect of a delimited text file and notes saying what was detected.

    The separator is the extension's (',' or tab) unless the first records do not fit it and another
    (';', tab, ',', '|') gives every record the header's field count; the decimal mark is ',' when
    ';'/tab-separated numbers are written with decimal commas. Given values are used as they are.
    """
    notes: list[str] = []
    enc = encoding or detect_encoding(handle, compression)
    if enc != "utf-8":
        label = {"cp1252": "Windows-1252 (cp1252)", "latin-1": "Latin-1 (ISO-8859-1)"}.get(enc, enc)
        notes.append(f"{name}: the text is not UTF-8; read it as {label}, the usual encoding of Windows "
                     "spreadsheet exports (save as 'CSV UTF-8' to avoid this note).")
    dialect = TextDialect(sep or default_sep, decimal or ".", enc, compression)
    if sep is not None and decimal is not None:
        return dialect, notes
    sample = _text_sample(handle, dialect)
    if sep is None:
        chosen = _choose_separator(sample, default_sep)
        if chosen != default_sep:
            notes.append(f"{name}: the values are separated by {_SEPARATORS[chosen]}s ({chosen!r}), not "
                         f"{_SEPARATORS[default_sep]}s; read it so (pass --sep to choose another).")
        dialect = dataclasses.replace(dialect, sep=chosen)
    if decimal is None and dialect.sep != "," and _decimal_commas(_records(sample, dialect.sep)):
        dialect = dataclasses.replace(dialect, decimal=",")
        notes.append(f"{name}: numbers are written with decimal commas (e.g. 0,25, as European "
                     "spreadsheets export them); read them so (pass --decimal . to turn this off).")
    return dialect, notes


def _choose_separator(sample: str, default: str) -> str:
    for cand in dict.fromkeys([default, ";", "\t", ",", "|"]):
        recs = _records(sample, cand)
        if len(recs) >= 1 and len(recs[0]) > 1 and all(len(r) == len(recs[0]) for r in recs if r):
            return cand
    return default


def _decimal_commas(records: list[list[str]]) -> bool:
    comma = point = 0
    for rec in records[1:]:
        for v in rec:
            if _DECIMAL_COMMA.match(v):
                comma += 1
            elif _DECIMAL_POINT.match(v):
                point += 1
    return comma > 0 and point == 0


def _ragged_row(handle: Any, dialect: TextDialect) -> tuple[int, int, int] | None:
    """(0-based data row, its field count, the header's) of the first record with more fields than
    the header, streaming through the file; None when every record fits."""
    import csv

    try:
        with _open_binary(handle, dialect.compression) as fh:
            text = _io.TextIOWrapper(fh, encoding=dialect.encoding, errors="replace", newline="")
            try:
                reader = csv.reader(text, delimiter=dialect.sep)
                header = next(reader, [])
                for i, rec in enumerate(reader):
                    if len(rec) > len(header):
                        return i, len(rec), len(header)
            finally:
                text.detach()
    except (OSError, EOFError, csv.Error):
        return None
    return None


def _ragged_error(name: str, dialect: TextDialect, found: tuple[int, int, int]) -> CpDistillerError:
    row, n, n_header = found
    sep = _SEPARATORS.get(dialect.sep, repr(dialect.sep))
    return CpDistillerError(
        f"{name}: row {row} has {n} fields but the header has {n_header}: a value there holds an unquoted "
        f"{sep} ({dialect.sep!r}) that shifts the columns (text such as compound names, or numbers with "
        "decimal commas). Put such values in double quotes, or export the file with another separator "
        "and pass --sep (and --decimal , for decimal commas)."
    )


def _looks_text(head: bytes) -> bool:
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return b"\x00" not in head


def _raw_header(handle: Any, dialect: TextDialect) -> list[str]:
    """The header row exactly as written (pandas renames duplicates)."""
    import csv

    try:
        with _open_binary(handle, dialect.compression) as fh:
            text = _io.TextIOWrapper(fh, encoding=dialect.encoding, errors="replace", newline="")
            try:
                return next(csv.reader(text, delimiter=dialect.sep), [])
            finally:
                text.detach()
    except (OSError, EOFError, csv.Error):
        return []
