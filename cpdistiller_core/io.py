"""Reading and writing well-level profiles: formats, role detection and mapping, validation.

``read_profiles`` reads CSV/TSV (optionally gzipped), Parquet and AnnData ``.h5ad`` files into a
:class:`~cpdistiller_core.profiles.Profiles`. What a file really holds is sniffed, not taken from its
name: magic bytes (Parquet, HDF5, gzip; workbooks and saved web pages are named as such), the text
encoding (UTF-8, else cp1252 / Latin-1), the separator and the decimal mark (:func:`sniff_dialect`). Features are the numeric CellProfiler measurement
columns (``Cells_``, ``Nuclei_``, ``Cytoplasm_``, ``Image_``… prefixes) unless a list or regex is
given; every other column is metadata and is kept untouched, in its original order. Roles (plate,
well, batch, perturbation, control status, annotation) are auto-detected from pycytominer / JUMP
naming conventions (:func:`explain_roles` says why each was chosen) and can be overridden by a
dict, a :class:`Roles`, or a small YAML/JSON mapping file.

``write_profiles`` stores roles (and an Embedding's method/provenance) with the data: in the
Parquet schema metadata, the h5ad ``uns``, or a ``<file>.cpdistiller.json`` sidecar next to a CSV,
so that reading back restores them exactly.

Row numbers in messages are 0-based data rows (the header is not counted).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io as _io
import json
import os
import re
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pandas as pd

from .errors import CpDistillerError, CpDistillerWarning, example_cells, example_rows, example_values, where
from .paths import json_default
from .profiles import Embedding, Profiles, Roles

PathLike = str | os.PathLike
InputLike = PathLike | BinaryIO

# CellProfiler object/compartment names seen in profiles (JUMP, LINCS, VarChAMP, cmQTL, cell injury...).
FEATURE_PREFIXES: tuple[str, ...] = (
    "Cells_", "Nuclei_", "Cytoplasm_", "Image_", "PreNuclei_", "Mito_", "Mitochondria_",
    "Speckles_", "Foci_", "Spots_", "Neurites_", "Nucleoli_", "Organelles_", "Cell_", "Nucleus_",
)
# Image_ columns that describe the acquisition, not the biology: they stay metadata.
_IMAGE_NON_FEATURES = re.compile(
    r"^Image_(Metadata|FileName|PathName|URL|MD5Digest|Width|Height|Scaling|Series|Frame|Group|"
    r"ExecutionTime|ModuleError|ImageNumber|ImageSet|Channel|Count|Stack|Plane|Timepoint)(_|$)"
)

_FORMAT_SUFFIXES = {
    ".csv": "csv", ".csv.gz": "csv", ".tsv": "tsv", ".tsv.gz": "tsv", ".txt": "tsv", ".txt.gz": "tsv",
    ".parquet": "parquet", ".pq": "parquet", ".h5ad": "h5ad",
}
SIDECAR_SUFFIX = ".cpdistiller.json"
_STORE_KEY = "cpdistiller"
# h5ad: roles and feature list live in uns[H5AD_STORE_KEY]; uns["cpdistiller"] is the run summary.
H5AD_STORE_KEY = "cpdistiller_io"
_STORE_VERSION = 1

# Known column names per role, in priority order; matching is case-insensitive, exact case preferred.
PLATE_NAMES = ("Metadata_Plate", "Metadata_Assay_Plate_Barcode", "Metadata_Barcode", "Metadata_PlateID",
               "Image_Metadata_Plate", "Plate", "Plate_ID", "PlateID", "Barcode")
WELL_NAMES = ("Metadata_Well", "Image_Metadata_Well", "Metadata_well_position", "Metadata_WellID",
              "Well", "Well_ID", "WellID", "WellName", "Well Name")
ROW_NAMES = ("Metadata_Row", "Image_Metadata_Row", "Metadata_WellRow", "Row")
COLUMN_NAMES = ("Metadata_Col", "Metadata_Column", "Image_Metadata_Col", "Image_Metadata_Column",
                "Metadata_WellColumn", "Col", "Column")
BATCH_NAMES = ("Metadata_Batch", "Image_Metadata_Batch", "Batch", "Metadata_Source")
PERTURBATION_NAMES = (
    "Metadata_JCP2022", "Metadata_broad_sample", "Metadata_gene_allele", "Metadata_pert_iname",
    "Metadata_Symbol", "Metadata_target_gene", "Metadata_gene_symbol", "Metadata_Gene",
    "Metadata_pert_id", "Metadata_pert_name", "Metadata_Compound", "Metadata_Treatment",
    "Metadata_Perturbation", "Metadata_sgRNA", "Compound Name", "Compound", "Treatment", "Perturbation",
)
ANNOTATION_NAMES = (
    "Metadata_moa", "Metadata_Symbol", "Metadata_gene_symbol", "Metadata_Gene", "Metadata_target",
    "Metadata_target_gene", "Metadata_pathway", "Metadata_Annotation", "injury_type", "MOA", "Target",
)
CONTROL_NAMES = (
    "Metadata_control_type", "Metadata_pert_type", "Metadata_node_type", "Metadata_broad_sample_type",
    "Metadata_Control", "Metadata_negcon", "Control Type", "Control_Type", "control_type", "Control",
)
# Control-status vocabularies (lower case).
NEGATIVE_VALUES = frozenset({
    "negcon", "negative", "negative control", "negative_control", "neg_con", "neg", "nc", "control",
    "ctrl", "dmso", "empty", "untreated", "mock", "vehicle", "non-targeting", "nontargeting",
    "non_targeting", "no_guide", "no-guide", "negcon_orf", "negcon_crispr", "negcon_compound",
})
POSITIVE_VALUES = frozenset({
    "poscon", "positive", "positive control", "positive_control", "pos_con", "pos", "pc", "cpc",
    "poscon_orf", "poscon_cp", "poscon_diverse", "poscon_crispr",
})
# In a perturbation column only unambiguous names count ('PC' is also a gene symbol).
_NEGATIVE_PERTURBATIONS = frozenset({
    "dmso", "control", "negcon", "empty", "untreated", "mock", "vehicle", "non-targeting",
    "nontargeting", "non_targeting", "no_guide", "no-guide",
})
# JUMP-CP control perturbations (Metadata_JCP2022), as listed in JUMP's perturbation_control.csv.
JUMP_NEGATIVE_CONTROLS = frozenset({
    "JCP2022_033924",  # DMSO
    "JCP2022_800001", "JCP2022_800002",  # CRISPR no-guide, non-targeting
    "JCP2022_915128", "JCP2022_915129", "JCP2022_915130", "JCP2022_915131",  # ORF BFP, HcRed, LUCIFERASE, LacZ
})
JUMP_POSITIVE_CONTROLS = frozenset({
    "JCP2022_037716", "JCP2022_025848", "JCP2022_046054", "JCP2022_035095", "JCP2022_064022",
    "JCP2022_050797", "JCP2022_012818", "JCP2022_085227", "JCP2022_805264", "JCP2022_915132",
})
_COLUMN_ROLES = ("plate", "well", "row", "column", "batch", "perturbation", "control", "annotation")


_NOTES: ContextVar[list[str] | None] = ContextVar("cpdistiller_io_notes", default=None)
# Precision of the feature matrix for the read in progress (set by read_profiles_with_report).
# float64 matters for raw CellProfiler values whose spread is below float32 resolution (e.g. Costes
# correlations near 1.0): MAD normalisation of float32 copies can then differ by many MAD units.
_DTYPE: ContextVar[type] = ContextVar("cpdistiller_io_dtype", default=np.float32)
# Separator / decimal mark given for the read in progress ({} = detect them).
_TEXT: ContextVar[Mapping[str, str] | None] = ContextVar("cpdistiller_io_text", default=None)


def _warn(message: str) -> None:
    """A CpDistillerWarning, or a note collected by the enclosing read_profiles_with_report."""
    sink = _NOTES.get()
    if sink is None:
        warnings.warn(message, CpDistillerWarning, stacklevel=3)
    else:
        sink.append(message)


# ----- reports ------------------------------------------------------------------------------------
@dataclass
class RoleDetection:
    """Detected roles and, per role, a sentence saying why that column (or nothing) was chosen."""

    roles: Roles
    reasons: dict[str, str]


@dataclass
class CombineReport:
    """What :func:`combine` kept and dropped."""

    sources: list[str]
    wells_per_source: dict[str, int]
    features_per_source: dict[str, int]
    shared_features: int
    dropped: dict[str, list[str]]
    batch_column: str | None = None
    batch_added: bool = False
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class LoadReport:
    """Everything :func:`read_profiles_with_report` learnt while loading, for `info` and the dashboard."""

    files: list[str]
    role_reasons: dict[str, str]
    combine: CombineReport | None = None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"files": self.files, "role_reasons": self.role_reasons,
                "combine": None if self.combine is None else self.combine.to_dict(),
                "warnings": self.warnings}


# ----- reading --------------------------------------------------------------------------------------
def read_profiles(
    paths: InputLike | Sequence[InputLike],
    roles: Roles | Mapping[str, Any] | PathLike | None = None,
    *,
    features: Sequence[str] | None = None,
    feature_regex: str | None = None,
    batch_from_file: bool = False,
    source: str | None = None,
    dtype: type = np.float32,
    sep: str | None = None,
    decimal: str | None = None,
) -> Profiles:
    """Read one or several profile files (or in-memory tables) into one Profiles.

    Parameters
    ----------
    paths : path, file object, pandas.DataFrame, anndata.AnnData, or a list of them
        CSV/CSV.gz/TSV, Parquet or ``.h5ad`` files; a DataFrame in pycytominer layout or an AnnData
        is read exactly like a file with the same content (same role detection, reasons, errors and
        warnings). Several inputs are stacked on their shared features.
    roles : Roles, dict, path or None
        None (auto-detect), a Roles (used as is), a dict of partial overrides merged over the
        detected roles (``{"plate": "Plate", "negative_values": ["DMSO"]}``; a value None unsets a
        role), or the path of a YAML/JSON mapping file holding such a dict.
    features, feature_regex : optional
        The feature columns (default: CellProfiler measurement names; all of X for an AnnData).
    batch_from_file : bool
        With several files, one batch per file (a new batch column) when there is no batch column.
    source : str, optional
        Names a single input in messages (e.g. an uploaded file's original name).
    dtype : float32 (default) or float64
        float64 for raw CellProfiler values that will be MAD-normalised (full precision; 2x memory).
    sep, decimal : str, optional
        Separator and decimal mark of text files (default: detected; the encoding and the real
        format behind the extension always are, see :func:`sniff_dialect`).

    Returns
    -------
    Profiles
        An Embedding when the file was written from one. Warnings from :func:`validate` are emitted
        as CpDistillerWarning.

    Examples
    --------
    >>> import cpdistiller_core as cpd
    >>> p = cpd.read_profiles("profiles.csv.gz")                                 # doctest: +SKIP
    >>> p = cpd.read_profiles(["b1.parquet", "b2.parquet"], batch_from_file=True)  # doctest: +SKIP
    >>> p = cpd.read_profiles("screen.csv", roles={"control": "Control Type",
    ...                                             "negative_values": ["Negative"]})  # doctest: +SKIP
    """
    return read_profiles_with_report(paths, roles, features=features, feature_regex=feature_regex,
                                     batch_from_file=batch_from_file, source=source, dtype=dtype,
                                     sep=sep, decimal=decimal)[0]


def read_profiles_with_report(
    paths: InputLike | Sequence[InputLike],
    roles: Roles | Mapping[str, Any] | PathLike | None = None,
    *,
    features: Sequence[str] | None = None,
    feature_regex: str | None = None,
    batch_from_file: bool = False,
    source: str | None = None,
    dtype: type = np.float32,
    emit_warnings: bool = True,
    sep: str | None = None,
    decimal: str | None = None,
) -> tuple[Profiles, LoadReport]:
    """Like :func:`read_profiles`, also returning a :class:`LoadReport` (role reasons, combine report,
    warnings). With ``emit_warnings=False`` the warnings are only collected in the report."""
    items = _as_list(paths)
    if not items:
        raise CpDistillerError("no input files given.")
    if source is not None and len(items) > 1:
        raise CpDistillerError("'source' names a single input; got several files.")
    spec: Roles | dict[str, Any] | None
    if isinstance(roles, (str, os.PathLike)):
        spec = read_mapping(roles)
        features = features if features is not None else spec.pop("features", None)
        feature_regex = feature_regex if feature_regex is not None else spec.pop("feature_regex", None)
        spec.pop("features", None)
        spec.pop("feature_regex", None)
    elif isinstance(roles, Mapping):
        spec = dict(roles)
    else:
        spec = roles
    if np.dtype(dtype) not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise CpDistillerError(f"feature dtype must be float32 or float64, not {dtype!r}.")
    text = _text_options(sep, decimal)
    collected: list[str] = []
    token = _NOTES.set(collected)  # per thread/context: safe under Streamlit's script threads
    dtoken = _DTYPE.set(np.dtype(dtype).type)
    ttoken = _TEXT.set(text)
    try:
        loaded = [_read_one(item, spec, features, feature_regex, source) for item in items]
        profiles, reasons = loaded[0]
        creport = None
        if len(loaded) > 1 or batch_from_file:
            profiles, creport = combine([p for p, _ in loaded], batch_from_file=batch_from_file)
            if creport.batch_added:
                reasons = {**reasons, "batch": f"one batch per input file, new column {creport.batch_column!r} "
                                               "(--batch-from-file)"}
    finally:
        _NOTES.reset(token)
        _DTYPE.reset(dtoken)
        _TEXT.reset(ttoken)
    collected += validate(profiles)
    if emit_warnings:
        for msg in collected:
            warnings.warn(msg, CpDistillerWarning, stacklevel=3)
    names = [_display_name(i, source) for i in items]
    return profiles, LoadReport(files=names, role_reasons=reasons, combine=creport, warnings=collected)


def _text_options(sep: str | None, decimal: str | None) -> dict[str, str]:
    """Checked --sep / --decimal values ('tab' and '\\t' name the tab)."""
    out: dict[str, str] = {}
    if sep is not None:
        sep = {"tab": "\t", "\\t": "\t", "semicolon": ";", "comma": ",", "pipe": "|"}.get(sep.lower(), sep)
        if len(sep) != 1 or sep in "\"\r\n" or sep.isalnum() or sep == ".":
            raise CpDistillerError(f"--sep must be one character such as ',', ';', 'tab' or '|', not {sep!r}.")
        out["sep"] = sep
    if decimal is not None:
        if decimal not in (".", ","):
            raise CpDistillerError(f"--decimal must be '.' or ',', not {decimal!r}.")
        out["decimal"] = decimal
    if out.get("sep") is not None and out.get("sep") == out.get("decimal"):
        raise CpDistillerError("--sep and --decimal cannot both be ','.")
    return out


def read_mapping(path: PathLike) -> dict[str, Any]:
    """Read a YAML or JSON role mapping: ``{plate: Plate, well: Well, negative_values: [Negative]}``.

    A top-level ``roles:`` key is also accepted; ``features`` / ``feature_regex`` keys select features.
    """
    import yaml

    p = Path(path)
    if not p.is_file():
        raise CpDistillerError(f"{p}: mapping file not found.")
    text = p.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if p.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise CpDistillerError(f"{p}: cannot parse the mapping file: {_one_line(exc)}") from None
    if isinstance(data, Mapping) and isinstance(data.get("roles"), Mapping):
        extra = {k: v for k, v in data.items() if k in ("features", "feature_regex")}
        data = {**data["roles"], **extra}
    if not isinstance(data, Mapping):
        raise CpDistillerError(f"{p}: the mapping must be a dict of role: column (e.g. 'plate: Plate').")
    known = {f.name for f in dataclasses.fields(Roles)} | {"features", "feature_regex"}
    unknown = sorted(set(map(str, data)) - known)
    if unknown:
        raise CpDistillerError(f"{p}: unknown role(s) {unknown} in the mapping; known: {sorted(known)}.")
    return dict(data)


def feature_columns(columns: Iterable[str], features: Sequence[str] | None = None,
                    feature_regex: str | None = None, source: str | None = None) -> list[str]:
    """Which columns are features: the given list, those matching the regex, or CellProfiler names."""
    cols = [str(c) for c in columns]
    if features is not None:
        present = set(cols)
        missing = [f for f in features if f not in present]
        if missing:
            raise CpDistillerError(
                f"{where(source)}{len(missing)} requested feature column(s) not found: {example_values(missing)}."
            )
        return list(dict.fromkeys(features))
    if feature_regex is not None:
        try:
            rx = re.compile(feature_regex)
        except re.error as exc:
            raise CpDistillerError(f"invalid feature regex {feature_regex!r}: {exc}.") from None
        return [c for c in cols if rx.search(c)]
    return [c for c in cols if is_cellprofiler_feature(c)]


def is_cellprofiler_feature(name: str) -> bool:
    """True for CellProfiler measurement names ('Cells_AreaShape_Area'), False for metadata."""
    return name.startswith(FEATURE_PREFIXES) and not _IMAGE_NON_FEATURES.match(name)


def _as_list(paths: InputLike | Sequence[InputLike]) -> list[InputLike]:
    if _in_memory_kind(paths) or isinstance(paths, (str, os.PathLike)) or hasattr(paths, "read"):
        return [paths]  # type: ignore[list-item]
    return list(paths)  # type: ignore[arg-type]


def _display_name(item: InputLike, source: str | None = None) -> str:
    if source:
        return source
    if _in_memory_kind(item):
        return _in_memory_kind(item)
    if isinstance(item, (str, os.PathLike)):
        return str(item)
    return str(getattr(item, "name", "<uploaded file>"))


def _format_of(name: str) -> str | None:
    low = name.lower()
    for suffix in sorted(_FORMAT_SUFFIXES, key=len, reverse=True):
        if low.endswith(suffix):
            return _FORMAT_SUFFIXES[suffix]
    return None


# ----- what a file really holds: magic bytes, text encoding, separator, decimal mark -----------------
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


def _real_format(name: str, head: bytes) -> tuple[str, str | None]:
    """(format, compression) from the extension checked against the first bytes: a Parquet or h5ad
    file under another name is read as what it is (with a note); a workbook or a web page saved
    under a table's name is an error saying so."""
    by_name = _format_of(name)
    kind = sniff_content(head)
    if kind == "gzip":
        import zlib

        try:
            inner = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head)
        except zlib.error:
            inner = b""
        if sniff_content(inner) == "html":
            kind = "html"
    ext = "".join(Path(name).suffixes[-2:])
    if kind in ("xlsx", "xls", "html"):
        raise _content_error(name, kind, ext, by_name is not None)
    if kind in ("parquet", "h5ad"):
        if by_name not in (None, kind):
            _warn(f"{name}: the file holds {'Parquet' if kind == 'parquet' else 'AnnData/HDF5'} data despite "
                  f"its {ext!r} name; read it as such (rename it to .{kind}).")
        return kind, None
    if by_name is None:
        raise CpDistillerError(
            f"{name}: unknown file format {ext or '(no extension)'!r}; "
            "use .csv, .csv.gz, .tsv(.gz), .parquet or .h5ad."
        )
    if by_name in ("parquet", "h5ad"):
        raise CpDistillerError(
            f"{name}: cannot read as {'Parquet' if by_name == 'parquet' else 'AnnData .h5ad'}: the file does not "
            f"start with that format's signature{'; it looks like text (a CSV?): rename it' if _looks_text(head) else ''}."
        )
    if kind != "gzip" and name.lower().endswith(".gz"):
        raise CpDistillerError(f"{name}: cannot read as {by_name.upper()}: the file is not gzip-compressed although "
                               "its name ends in .gz; remove the .gz from its name.")
    return by_name, "gzip" if kind == "gzip" else None


def _looks_text(head: bytes) -> bool:
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return b"\x00" not in head


def _read_one(item: InputLike, spec: Roles | dict[str, Any] | None, features: Sequence[str] | None,
              feature_regex: str | None, source: str | None) -> tuple[Profiles, dict[str, str]]:
    name = _display_name(item, source)
    if _in_memory_kind(item):  # a pandas DataFrame or an AnnData: same checks and roles as a file
        parts = _in_memory_parts(item, name, features, feature_regex)
    else:
        parts = _read_file(item, name, features, feature_regex)
    meta, X, feats, stored = parts
    if len(meta) == 0:
        raise CpDistillerError(f"{name}: no data rows.")
    if not feats:
        raise CpDistillerError(
            f"{name}: no feature columns found (expected numeric CellProfiler columns starting with "
            f"{', '.join(FEATURE_PREFIXES[:4])}…); pass --features-regex to choose them."
        )
    stored_roles = Roles.from_dict(stored["roles"]) if stored and stored.get("roles") else None
    roles, reasons = resolve_roles(meta, spec, source=name, stored=stored_roles)
    if stored_roles is not None:
        reasons = {**{r: "stored with the file" for r in _COLUMN_ROLES if getattr(roles, r)}, **reasons}
    kw: dict[str, Any] = dict(meta=meta, X=X, features=feats, roles=roles, source=name)
    if stored and stored.get("kind") == "embedding":
        prof: Profiles = Embedding(**kw, method=stored.get("method", "uncorrected"),
                                   provenance=dict(stored.get("provenance") or {}))
    else:
        prof = Profiles(**kw, full_precision=_DTYPE.get() is np.float64)
    check_duplicates(prof)
    return prof, reasons


def _read_file(item: InputLike, name: str, features: Sequence[str] | None, feature_regex: str | None
               ) -> tuple[pd.DataFrame, np.ndarray, list[str], dict | None]:
    if isinstance(item, (str, os.PathLike)):
        p = Path(item)
        if not p.exists():
            raise CpDistillerError(f"{name}: file not found.")
        if not p.is_file():
            raise CpDistillerError(f"{name}: not a file.")
        if p.stat().st_size == 0:
            raise CpDistillerError(f"{name}: file is empty.")
    if isinstance(item, (str, os.PathLike)):
        handle: Any = Path(item)
        with open(handle, "rb") as fh:
            head = fh.read(64)
    else:
        data = item.read()
        if not data:
            raise CpDistillerError(f"{name}: file is empty.")
        handle = _io.BytesIO(data)
        head = data[:64]
    fmt, compression = _real_format(name, head)
    if fmt in ("csv", "tsv"):
        meta, X, feats, stored = _read_delimited(handle, name, "\t" if fmt == "tsv" else ",",
                                                 features, feature_regex, compression)
    elif fmt == "parquet":
        meta, X, feats, stored = _read_parquet(handle, name, features, feature_regex)
    else:
        meta, X, feats, stored = _read_h5ad(handle, name, features, feature_regex)
    return meta, X, feats, stored


def _read_delimited(handle: Any, name: str, sep: str, features: Sequence[str] | None,
                    feature_regex: str | None, compression: str | None = None
                    ) -> tuple[pd.DataFrame, np.ndarray, list[str], dict | None]:
    stored = _read_sidecar(handle) if isinstance(handle, Path) else None
    given = _TEXT.get() or {}
    dialect, notes = sniff_dialect(handle, name, sep, sep=given.get("sep"), decimal=given.get("decimal"),
                                   compression=compression)
    for note in notes:
        _warn(note)
    label = {",": "CSV", "\t": "TSV"}.get(dialect.sep, f"{_SEPARATORS.get(dialect.sep, repr(dialect.sep))}-separated text")

    def _read(**kw: Any) -> pd.DataFrame:
        if isinstance(handle, _io.BytesIO):
            handle.seek(0)
        try:
            return pd.read_csv(handle, sep=dialect.sep, decimal=dialect.decimal, encoding=dialect.encoding,
                               compression=dialect.compression, low_memory=False, **kw)
        except pd.errors.EmptyDataError:
            raise CpDistillerError(f"{name}: file is empty (no header row).") from None
        except pd.errors.ParserError as exc:
            ragged = _ragged_row(handle, dialect)
            if ragged is not None:
                raise _ragged_error(name, dialect, ragged) from None
            raise CpDistillerError(f"{name}: cannot read as {label}: {_one_line(exc)}") from None
        except (UnicodeDecodeError, OSError, EOFError) as exc:
            raise CpDistillerError(f"{name}: cannot read as {label}: {_one_line(exc)}") from None

    header = [str(c) for c in _read(nrows=0).columns]
    raw = _raw_header(handle, dialect)
    dups = sorted(h for h, n in Counter(raw).items() if n > 1)
    if dups:
        _warn(f"{name}: duplicated column name(s) {example_values(dups)}; later copies are read as "
              f"'<name>.1', '<name>.2'…")
    if stored:
        feats = _stored_features(stored, header, features, feature_regex, name)
    else:
        feats = feature_columns(header, features, feature_regex, name)
    fset = set(feats)
    meta_cols = [c for c in header if c not in fset]
    fast = _read_delimited_arrow(handle, dialect, header, meta_cols, feats)
    if fast is not None:
        meta, X = fast
    else:
        ragged = _ragged_row(handle, dialect)  # pandas would silently make extra fields an index
        if ragged is not None:
            raise _ragged_error(name, dialect, ragged)
        # pandas: for what pyarrow rejects (text in a feature column, odd dialects, duplicate names),
        # with messages naming the column, the values and the rows.
        dtypes: dict[str, Any] = {c: str for c in meta_cols}
        try:
            df = _read(dtype={**dtypes, **{c: np.dtype(_DTYPE.get()).name for c in feats}})
        except ValueError:
            df = _read(dtype={**dtypes, **{c: object for c in feats}})
        meta = df[meta_cols]
        X = _feature_matrix(df, feats, name)
    if stored and stored.get("metadata_dtypes"):
        meta = _restore_dtypes(meta, stored["metadata_dtypes"], name)
    else:
        meta = _infer_metadata_dtypes(meta, dialect.decimal)
    return meta.reset_index(drop=True), X, feats, stored


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


def _read_delimited_arrow(handle: Any, dialect: TextDialect, header: list[str], meta_cols: list[str],
                          feats: list[str]) -> tuple[pd.DataFrame, np.ndarray] | None:
    """The fast path: pyarrow's CSV reader (2-3x faster than pandas, features parsed straight to
    float32). None when pyarrow cannot read the file as expected; the pandas path then decides."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    if len(set(header)) != len(header) or any(h.startswith("Unnamed: ") for h in header):
        return None
    if isinstance(handle, _io.BytesIO):
        handle.seek(0)
        source: Any = pa.input_stream(handle, compression=dialect.compression)
    else:
        source = pa.input_stream(str(handle), compression=dialect.compression)
    types = {**{c: pa.string() for c in meta_cols}, **{c: pa.from_numpy_dtype(_DTYPE.get()) for c in feats}}
    try:
        table = pcsv.read_csv(
            source, read_options=pcsv.ReadOptions(use_threads=False, encoding=dialect.encoding),
            parse_options=pcsv.ParseOptions(delimiter=dialect.sep, newlines_in_values=True),
            convert_options=pcsv.ConvertOptions(column_types=types, strings_can_be_null=True,
                                                decimal_point=dialect.decimal),
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError, EOFError, UnicodeDecodeError):
        return None
    if table.column_names != header:
        return None
    X = np.empty((table.num_rows, len(feats)), dtype=_DTYPE.get())
    for j, f in enumerate(feats):
        X[:, j] = table.column(f).to_numpy()
    meta = table.select(meta_cols).to_pandas()
    for c in meta.columns:  # missing text is NaN, as from pandas
        if meta[c].isna().any():
            meta[c] = meta[c].where(meta[c].notna(), np.nan)
    return meta, X


def _read_parquet(handle: Any, name: str, features: Sequence[str] | None,
                  feature_regex: str | None) -> tuple[pd.DataFrame, np.ndarray, list[str], dict | None]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(handle)
    except Exception as exc:  # pyarrow raises several types (ArrowInvalid, OSError...) for bad files
        raise CpDistillerError(f"{name}: cannot read as Parquet: {_one_line(exc)}") from None
    stored = None
    raw = (table.schema.metadata or {}).get(_STORE_KEY.encode())
    if raw:
        stored = json.loads(raw.decode("utf-8"))
    df = table.to_pandas()
    if not stored and not isinstance(df.index, pd.RangeIndex):
        df = df.reset_index()  # a stored pandas index is data too: keep it as leading column(s)
    df.columns = [str(c) for c in df.columns]
    if stored:
        feats = _stored_features(stored, df.columns, features, feature_regex, name)
    else:
        feats = feature_columns(df.columns, features, feature_regex, name)
    fset = set(feats)
    meta = df[[c for c in df.columns if c not in fset]].reset_index(drop=True)
    for c in meta.columns:  # missing text is NaN whatever the format (pyarrow gives None)
        if meta[c].dtype == object and meta[c].isna().any():
            meta[c] = meta[c].where(meta[c].notna(), np.nan)
    return meta, _feature_matrix(df, feats, name), feats, stored


def _read_h5ad(handle: Any, name: str, features: Sequence[str] | None,
               feature_regex: str | None) -> tuple[pd.DataFrame, np.ndarray, list[str], dict | None]:
    import anndata

    try:
        adata = anndata.read_h5ad(handle)
    except Exception as exc:  # h5py/anndata raise OSError, KeyError, ValueError... for bad files
        raise CpDistillerError(f"{name}: cannot read as AnnData .h5ad: {_one_line(exc)}") from None
    return _anndata_parts(adata, name, features, feature_regex)


def _anndata_parts(adata: Any, name: str, features: Sequence[str] | None,
                   feature_regex: str | None) -> tuple[pd.DataFrame, np.ndarray, list[str], dict | None]:
    """obs -> metadata, X (dense or sparse) -> features; an embedding written by cpDistiller is read
    from its ``.obsm`` key. Meaningful obs names are kept as an 'obs_names' column."""
    import scipy.sparse as sp

    stored = None
    raw = adata.uns.get(H5AD_STORE_KEY, adata.uns.get(_STORE_KEY))  # the latter: files from 0.1.0
    if isinstance(raw, str):
        stored = json.loads(raw)
    obs = adata.obs
    default_names = pd.Index([str(i) for i in range(adata.n_obs)])
    if not stored and not obs.index.equals(default_names) and "obs_names" not in obs.columns:
        obs = obs.rename_axis("obs_names").reset_index()  # meaningful obs names are kept as a column
    meta = obs.reset_index(drop=True)
    meta.columns = [str(c) for c in meta.columns]
    obsm_key = (stored or {}).get("obsm_key")
    if obsm_key and obsm_key in adata.obsm:
        X, var_names = np.asarray(adata.obsm[obsm_key]), list(stored.get("features", []))
    elif adata.X is None:
        raise CpDistillerError(f"{name}: the AnnData has no X matrix (features) to read.")
    else:
        X, var_names = adata.X, [str(v) for v in adata.var_names]
    if stored and stored.get("metadata_dtypes"):
        meta = _restore_dtypes(meta, stored["metadata_dtypes"], name)
    if stored:
        feats = _stored_features(stored, var_names, features, feature_regex, name)
    elif features is None and feature_regex is None:
        feats = list(var_names)  # an AnnData's X is the feature matrix by construction
    else:
        feats = feature_columns(var_names, features, feature_regex, name)
    pos = {v: i for i, v in enumerate(var_names)}
    X = X[:, [pos[f] for f in feats]]
    X = X.toarray() if sp.issparse(X) else np.asarray(X)
    return meta, np.ascontiguousarray(X, dtype=_DTYPE.get()), feats, stored


# ----- in-memory inputs ---------------------------------------------------------------------------------
def _in_memory_kind(item: Any) -> str | None:
    """'DataFrame' or 'AnnData' for in-memory inputs (their name in messages), None for files."""
    if isinstance(item, pd.DataFrame):
        return "DataFrame"
    if type(item).__name__ == "AnnData" and hasattr(item, "obsm"):  # no anndata import for file reads
        return "AnnData"
    return None


def _in_memory_parts(item: Any, name: str, features: Sequence[str] | None,
                     feature_regex: str | None) -> tuple[pd.DataFrame, np.ndarray, list[str], dict | None]:
    """A DataFrame in pycytominer layout (metadata + CellProfiler feature columns) or an AnnData,
    split like a file of the same content; the caller's object is never modified."""
    if _in_memory_kind(item) == "AnnData":
        return _anndata_parts(item, name, features, feature_regex)
    df = item
    if any(n is not None for n in df.index.names):
        df = df.reset_index()  # a named index is data: keep it as leading column(s)
    df = df.reset_index(drop=True)
    df.columns = [str(c) for c in df.columns]
    dups = sorted(c for c, n in Counter(df.columns).items() if n > 1)
    if dups:
        raise CpDistillerError(f"{name}: duplicated column name(s) {example_values(dups)}; rename them first.")
    feats = feature_columns(df.columns, features, feature_regex, name)
    fset = set(feats)
    meta = df[[c for c in df.columns if c not in fset]].copy()
    return meta, _feature_matrix(df, feats, name), feats, None


def _stored_features(stored: Mapping[str, Any], columns: Iterable[str], features: Sequence[str] | None,
                     feature_regex: str | None, name: str) -> list[str]:
    """The feature list written with the file, optionally narrowed by a given list or regex."""
    present = set(map(str, columns))
    feats = [f for f in stored.get("features", []) if f in present]
    if features is not None or feature_regex is not None:
        feats = feature_columns(feats, features, feature_regex, name)
    return feats


def _read_sidecar(path: Path) -> dict | None:
    side = path.with_name(path.name + SIDECAR_SUFFIX)
    if not side.is_file():
        return None
    try:
        return json.loads(side.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CpDistillerError(f"{side}: cannot parse the cpDistiller sidecar: {_one_line(exc)}") from None


def _infer_metadata_dtypes(meta: pd.DataFrame, decimal: str = ".") -> pd.DataFrame:
    """Text metadata -> numbers only where every value is a number written without leading zeros,
    so IDs like '0042', wells 'A01' and SMILES stay strings while doses and counts become numeric;
    complete True/False columns become booleans. ``decimal=","``: '0,5' is a number too."""
    out = {}
    for c in meta.columns:
        s = meta[c]
        vals = s.dropna()
        lowered = set(vals.str.strip().str.lower().unique()) if len(vals) else set()
        if lowered and lowered <= {"true", "false"} and len(vals) == len(s):
            s = vals.str.strip().str.lower() == "true"
        elif len(vals) and not vals.str.match(r"^\s*[+-]?0\d").any():
            text = s.str.replace(",", ".", regex=False) if decimal == "," else s
            num = pd.to_numeric(text, errors="coerce")
            if num.notna().sum() == len(vals):
                s = num
        out[c] = s
    return pd.DataFrame(out, index=meta.index, columns=meta.columns)


def _restore_dtypes(meta: pd.DataFrame, dtypes: Mapping[str, str], name: str) -> pd.DataFrame:
    """Cast columns back to the dtypes recorded when the file was written."""
    meta = meta.copy()
    for c, want in dtypes.items():
        if c not in meta.columns or str(meta[c].dtype) == want:
            continue
        s = meta[c]
        try:
            if want == "bool":
                mapped = s.astype(object).map({"True": True, "False": False, True: True, False: False})
                meta[c] = mapped.astype(bool) if mapped.notna().all() else mapped
            elif want.startswith(("int", "uint", "float", "Int", "UInt", "Float")):
                meta[c] = pd.to_numeric(s.astype(object)).astype(want)
            elif want.startswith("datetime"):
                meta[c] = pd.to_datetime(s.astype(object)).astype(want)
            elif want == "object":
                meta[c] = s.astype(object).where(s.notna(), np.nan)
            else:
                meta[c] = s.astype(want)
        except (TypeError, ValueError):
            _warn(f"{where(name, c)}cannot restore the recorded dtype {want}; kept {s.dtype}.")
    return meta


def _feature_matrix(df: pd.DataFrame, feats: Sequence[str], source: str) -> np.ndarray:
    """Feature columns -> float matrix (float32 unless a float64 read); text in a feature column is an
    error naming column and rows."""
    bad: list[str] = []
    X = np.empty((len(df), len(feats)), dtype=_DTYPE.get())
    for j, f in enumerate(feats):
        s = df[f]
        if not (pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s)):
            num = pd.to_numeric(s, errors="coerce")
            text = s.astype("string").str.strip()
            offending = num.isna() & s.notna() & (text != "")
            if offending.any():
                rows = df.index[offending.to_numpy(bool)]
                bad.append(f"{f!r} holds text {example_cells(s[offending.to_numpy(bool)], 3)} "
                           f"({example_rows(rows, 3)})")
                continue
            s = num
        X[:, j] = s.to_numpy(dtype=X.dtype, na_value=np.nan)
    if bad:
        more = f" (+{len(bad) - 3} more columns)" if len(bad) > 3 else ""
        raise CpDistillerError(
            f"{source}: non-numeric feature column(s): {'; '.join(bad[:3])}{more}. Fix the values or "
            "exclude the columns with --features-regex."
        )
    return X


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


# ----- roles ----------------------------------------------------------------------------------------
def detect_roles(df: pd.DataFrame, source: str | None = None) -> Roles:
    """Auto-detect roles from pycytominer / JUMP naming conventions (see :func:`explain_roles`)."""
    return explain_roles(df, source).roles


def explain_roles(df: pd.DataFrame, source: str | None = None, *,
                  given: Mapping[str, Any] | None = None) -> RoleDetection:
    """Detect roles and say why each was chosen. Raises when no plate or well column is found.

    ``given`` (a partial mapping) supplies plate / well / row+column that need not be detected;
    apply the rest of it with :func:`resolve_roles`.
    """
    cols = [str(c) for c in df.columns if not is_cellprofiler_feature(str(c))]
    reasons: dict[str, str] = {}
    found: dict[str, Any] = {}
    given = given or {}

    plate = ((_resolve_column(cols, str(given["plate"]), "plate", source), "set by the mapping")
             if given.get("plate") else _unambiguous(df, cols, PLATE_NAMES, "plate", source))
    if plate is None:
        raise CpDistillerError(
            f"{where(source)}no plate column found (looked for {', '.join(PLATE_NAMES[:3])}, 'Plate'…); "
            f"name it with --plate-col or a mapping{_suggest(cols, 'plate')}."
        )
    found["plate"], reasons["plate"] = plate[0], plate[1]

    mapped_well = bool(given.get("well") or (given.get("row") and given.get("column")))
    well = None if mapped_well else _unambiguous(df, cols, WELL_NAMES, "well", source)
    if mapped_well:
        pass  # set by the mapping
    elif well is not None:
        found["well"], reasons["well"] = well
    else:
        row, col = _match(cols, ROW_NAMES), _match(cols, COLUMN_NAMES)
        if row is None or col is None:
            raise CpDistillerError(
                f"{where(source)}no well column found (looked for 'Metadata_Well', 'Well', or "
                f"'Metadata_Row' + 'Metadata_Col'); name it with --well-col or --row-col/--column-col"
                f"{_suggest(cols, 'well', 'row', 'col')}."
            )
        found["row"], reasons["row"] = row
        found["column"], reasons["column"] = col
        reasons["well"] = "no well column; wells from separate row and column columns"

    batch = _match(cols, BATCH_NAMES)
    if batch is None:
        batch = _fuzzy_batch(df, cols, exclude={found["plate"]})
    if batch is not None:
        found["batch"], reasons["batch"] = batch
    else:
        reasons["batch"] = "no batch column found (a batch column with several values, or --batch-from-file)"

    pert = _match(cols, PERTURBATION_NAMES)
    if pert is not None:
        found["perturbation"], reasons["perturbation"] = pert
    else:
        reasons["perturbation"] = "no perturbation column found; wells are identified by position"

    ann = _match([c for c in cols if c != found.get("perturbation")], ANNOTATION_NAMES)
    if ann is not None:
        found["annotation"], reasons["annotation"] = ann
    else:
        reasons["annotation"] = "no annotation column (gene symbol, MOA, target) found"

    control = _detect_control(df, cols, found.get("perturbation"))
    found.update(control[0])
    reasons["control"] = control[1]
    return RoleDetection(Roles(**found), reasons)


def _match(cols: Sequence[str], candidates: Sequence[str]) -> tuple[str, str] | None:
    """First candidate present (exact case preferred, then case-insensitive) -> (column, reason)."""
    lower: dict[str, list[str]] = {}
    for c in cols:
        lower.setdefault(c.lower().strip(), []).append(c)
    for cand in candidates:
        hits = lower.get(cand.lower())
        if not hits:
            continue
        col = cand if cand in hits else hits[0]
        how = "known column name" if col == cand else f"case-insensitive match for {cand!r}"
        others = [h for h in hits if h != col]
        also = f" (ignored {', '.join(map(repr, others))})" if others else ""
        return col, f"{how} {col!r}{also}"
    return None


def _unambiguous(df: pd.DataFrame, cols: Sequence[str], candidates: Sequence[str], role: str,
                 source: str | None) -> tuple[str, str] | None:
    """Like :func:`_match`, but two candidate columns that group the wells differently (e.g. 'Plate'
    and 'Metadata_Plate' with other plates) are an error naming both and the flag that chooses."""
    first = _match(cols, candidates)
    if first is None:
        return None
    others = [c for c in cols if c != first[0] and _match([c], candidates) is not None]
    clash = [c for c in others if not _same_grouping(df[first[0]], df[c])]
    if not clash:
        return first
    raise _ambiguous_role(role, first[0], clash, source)


def _ambiguous_role(role: str, first: str, clash: Sequence[str], source: str | None) -> CpDistillerError:
    names = " and ".join(repr(c) for c in [first, *clash])
    return CpDistillerError(
        f"{where(source)}{len(clash) + 1} columns look like the {role} column ({names}) and they group the "
        f"wells differently; choose one with --{role}-col (e.g. --{role}-col {first!r}) or "
        f"'{role}: <column>' in a --mapping file."
    )


def _same_grouping(a: pd.Series, b: pd.Series) -> bool:
    """True when the two columns split the rows into the same groups (one is a relabelling of the other)."""
    codes_a = pd.factorize(a.astype(str), use_na_sentinel=False)[0]
    codes_b = pd.factorize(b.astype(str), use_na_sentinel=False)[0]
    pairs = len(set(zip(codes_a.tolist(), codes_b.tolist())))
    return pairs == codes_a.max(initial=-1) + 1 == codes_b.max(initial=-1) + 1


def _fuzzy_batch(df: pd.DataFrame, cols: Sequence[str], exclude: set[str]) -> tuple[str, str] | None:
    """A column whose name contains the word 'batch' and whose values look like a few labels."""
    for c in cols:
        if c in exclude or not re.search(r"(^|[^a-z])batch([^a-z]|$)", c.lower()):
            continue
        n = df[c].nunique(dropna=True)
        if 2 <= n <= max(2, len(df) // 2):
            return c, f"column name {c!r} contains 'batch' and holds {n} labels"
    return None


def _control_values(s: pd.Series, vocab: frozenset[str]) -> list[str]:
    vals = pd.unique(s.dropna().astype(str).str.strip())
    return sorted(v for v in vals if v.lower() in vocab or (vocab is NEGATIVE_VALUES and v.lower().startswith("negcon"))
                  or (vocab is POSITIVE_VALUES and v.lower().startswith("poscon")))


def _detect_control(df: pd.DataFrame, cols: Sequence[str], perturbation: str | None) -> tuple[dict[str, Any], str]:
    candidates: list[str] = []
    lower = {c.lower().strip(): c for c in reversed(cols)}
    for cand in CONTROL_NAMES:
        c = next((x for x in cols if x == cand), None) or lower.get(cand.lower())
        if c and c not in candidates:
            candidates.append(c)
    positives_only: tuple[str, list[str]] | None = None
    for c in candidates:
        neg = _control_values(df[c], NEGATIVE_VALUES)
        pos = _control_values(df[c], POSITIVE_VALUES)
        if neg:
            return ({"control": c, "negative_values": tuple(neg), "positive_values": tuple(pos)},
                    f"control column {c!r}: negative controls {neg}"
                    + (f", positive controls {pos}" if pos else "") + ", anything else a treatment")
        if pos and positives_only is None:
            positives_only = (c, pos)
    if perturbation:
        vals = pd.unique(df[perturbation].dropna().astype(str).str.strip())
        neg = sorted(v for v in vals if v.lower() in _NEGATIVE_PERTURBATIONS or v.upper() in JUMP_NEGATIVE_CONTROLS)
        pos = sorted(v for v in vals if v.upper() in JUMP_POSITIVE_CONTROLS)
        if neg:
            jump = " (JUMP control identifiers)" if any(v.upper() in JUMP_NEGATIVE_CONTROLS for v in neg) else ""
            return ({"control": perturbation, "negative_values": tuple(neg), "positive_values": tuple(pos)},
                    f"perturbation column {perturbation!r} names negative controls {neg}"
                    + (f" and positive controls {pos}" if pos else "") + jump)
    if positives_only:
        c, pos = positives_only
        return ({"control": c, "positive_values": tuple(pos)},
                f"control column {c!r} has positive controls {pos} but no negative controls")
    return {}, "no negative controls found (no control column and no DMSO/CONTROL/negcon values)"


def _suggest(cols: Sequence[str], *words: str) -> str:
    hits = [c for c in cols if any(w in c.lower() for w in words)]
    return f" (columns that might be it: {example_values(hits)})" if hits else ""


def resolve_roles(meta: pd.DataFrame, spec: Roles | Mapping[str, Any] | None, source: str | None = None,
                  stored: Roles | None = None) -> tuple[Roles, dict[str, str]]:
    """Roles for ``meta``: ``spec`` if a Roles, else stored/detected roles with ``spec`` overrides.

    Reasons cover every detected role, or with ``stored`` roles only those the overrides changed.
    """
    if isinstance(spec, Roles):
        return spec, {r: "given" for r in _COLUMN_ROLES if getattr(spec, r)}
    if stored is not None:
        base, reasons = stored, {}  # only the overrides get new reasons
    else:
        det = explain_roles(meta, source, given=spec)
        base, reasons = det.roles, det.reasons
    if not spec:
        return base, reasons
    return _apply_overrides(meta, base, dict(reasons), spec, source)


def _apply_overrides(meta: pd.DataFrame, base: Roles, reasons: dict[str, str], spec: Mapping[str, Any],
                     source: str | None) -> tuple[Roles, dict[str, str]]:
    known = {f.name for f in dataclasses.fields(Roles)}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise CpDistillerError(f"unknown role(s) {unknown} in the column mapping; known roles: {sorted(known)}.")
    kw = base.to_dict()
    cols = [str(c) for c in meta.columns]
    for role in _COLUMN_ROLES:
        if role not in spec:
            continue
        value = spec[role]
        if value is None or value == "":
            kw[role] = None
            reasons[role] = "unset by the mapping"
            continue
        kw[role] = _resolve_column(cols, str(value), role, source)
        reasons[role] = f"set by the mapping to {kw[role]!r}"
    if "well" in spec and spec["well"] and not ({"row", "column"} & set(spec)):
        kw["row"] = kw["column"] = None
    if ({"row", "column"} <= set(spec)) and spec["row"] and spec["column"] and "well" not in spec:
        kw["well"] = None
        reasons["well"] = "wells from the mapped row and column columns"
    if "plate_format" in spec and spec["plate_format"] is not None:
        try:
            kw["plate_format"] = int(spec["plate_format"])
        except (TypeError, ValueError):
            raise CpDistillerError(f"plate format must be 96, 384 or 1536, not {spec['plate_format']!r}.") from None

    neg_given = _as_values(spec.get("negative_values"))
    pos_given = _as_values(spec.get("positive_values"))
    control_changed = "control" in spec and kw["control"] != base.control
    if control_changed and kw["control"]:
        neg = _control_values(meta[kw["control"]], NEGATIVE_VALUES)
        pos = _control_values(meta[kw["control"]], POSITIVE_VALUES)
        kw["negative_values"], kw["positive_values"] = neg, pos
        reasons["control"] = (f"set by the mapping to {kw['control']!r}; negative controls {neg}"
                              + (f", positive controls {pos}" if pos else ""))
    elif (neg_given or pos_given) and (kw["control"] is None or (
            "control" not in spec and not _occurs(meta[kw["control"]], neg_given + pos_given))):
        # The given values live elsewhere than in the detected control column (e.g. DMSO in the
        # perturbation column): use the column that holds them.
        kw["control"] = _column_with_values(meta, neg_given + pos_given, kw, source)
        kw["negative_values"], kw["positive_values"] = [], []
        reasons["control"] = f"column {kw['control']!r} holds the given control values"
    elif kw["control"] is None:
        kw["negative_values"], kw["positive_values"] = [], []
    if kw["control"] and neg_given:
        kw["negative_values"] = _match_values(meta[kw["control"]], neg_given, kw["control"], source)
    if kw["control"] and pos_given:
        kw["positive_values"] = _match_values(meta[kw["control"]], pos_given, kw["control"], source)
    if kw["control"] and (neg_given or pos_given):
        reasons["control"] = (f"column {kw['control']!r}: negative controls {list(kw['negative_values'])}, "
                              f"positive controls {list(kw['positive_values'])} (given)")
    if kw["well"] is None and not (kw["row"] and kw["column"]):
        raise CpDistillerError(f"{where(source)}no well column: set --well-col, or both --row-col and --column-col.")
    return Roles.from_dict(kw), reasons


def _occurs(s: pd.Series, values: Sequence[str]) -> bool:
    present = {str(v).strip().lower() for v in pd.unique(s.dropna())}
    return any(v.lower() in present for v in values)


def _as_values(v: Any) -> list[str]:
    if v is None:
        return []
    if isinstance(v, str):
        return [x.strip() for x in v.split(",") if x.strip()]
    return [str(x).strip() for x in v if str(x).strip()]


def _resolve_column(cols: Sequence[str], name: str, role: str, source: str | None) -> str:
    if name in cols:
        return name
    hits = [c for c in cols if c.lower().strip() == name.lower().strip()]
    if len(hits) == 1:
        return hits[0]
    raise CpDistillerError(
        f"{where(source)}the {role} column {name!r} is not in the file{_suggest(cols, *name.lower().split('_')[-1:])}."
    )


def _match_values(s: pd.Series, given: Sequence[str], column: str, source: str | None) -> list[str]:
    """Given control values -> the spellings present in the column (case-insensitive)."""
    present = {v.lower(): v for v in pd.unique(s.dropna().astype(str).str.strip())}
    out, missing = [], []
    for g in given:
        if g in present.values():
            out.append(g)
        elif g.lower() in present:
            out.append(present[g.lower()])
        else:
            missing.append(g)
    if missing:
        _warn(f"{where(source, column)}control value(s) {missing} do not occur; values there include "
              f"{example_cells(list(present.values()))}.")
    return list(dict.fromkeys(out + missing))


def _column_with_values(meta: pd.DataFrame, values: Sequence[str], kw: Mapping[str, Any],
                        source: str | None) -> str:
    """The column holding the given control values: perturbation first, then any text column."""
    wanted = {v.lower() for v in values}
    order = [kw.get("perturbation")] + [c for c in meta.columns if c != kw.get("perturbation")]
    for c in order:
        if not c or c not in meta.columns or pd.api.types.is_float_dtype(meta[c]):
            continue
        vals = {str(v).strip().lower() for v in pd.unique(meta[c].dropna())}
        if wanted & vals:
            return str(c)
    raise CpDistillerError(
        f"{where(source)}no column holds the control value(s) {list(values)}; name it with --control-col."
    )


# ----- combining and checks ------------------------------------------------------------------------
def combine(profiles: Sequence[Profiles], batch_from_file: bool = False,
            batch_column: str = "Metadata_Batch") -> tuple[Profiles, CombineReport]:
    """Stack several Profiles: shared features only (in the first input's order), metadata columns
    united in order of first appearance. With ``batch_from_file`` and no batch role, adds a batch
    column named after each input's file stem."""
    if not profiles:
        raise CpDistillerError("nothing to combine: no profiles given.")
    names = [p.source or f"input {i + 1}" for i, p in enumerate(profiles)]
    if len(set(names)) < len(names):
        names = [f"{n} [{i + 1}]" for i, n in enumerate(names)]
    common = set(profiles[0].features)
    for p in profiles[1:]:
        common &= set(p.features)
    shared = [f for f in profiles[0].features if f in common]
    dropped = {n: [f for f in p.features if f not in common] for n, p in zip(names, profiles)}
    if not shared:
        raise CpDistillerError(f"no feature columns are shared by all inputs ({', '.join(names)}).")
    notes: list[str] = []
    roles = _merge_roles(profiles, names, notes)
    meta = pd.concat([p.meta for p in profiles], ignore_index=True, sort=False)
    n_total = sum(p.n_wells for p in profiles)
    X = np.empty((n_total, len(shared)), dtype=np.result_type(*[p.X.dtype for p in profiles]))
    start = 0
    for p in profiles:
        pos = {f: i for i, f in enumerate(p.features)}
        X[start:start + p.n_wells] = p.X[:, [pos[f] for f in shared]]
        start += p.n_wells
    added = False
    if batch_from_file:
        if roles.batch is None:
            col = batch_column
            while col in meta.columns:
                col += "_file"
            stems = [_file_stem(n) for n in names]
            meta[col] = np.repeat(np.array(stems, dtype=object), [p.n_wells for p in profiles])
            roles = dataclasses.replace(roles, batch=col)
            added = True
        else:
            notes.append(f"batch role already set ({roles.batch!r}); --batch-from-file added no column")
    report = CombineReport(
        sources=names, wells_per_source={n: p.n_wells for n, p in zip(names, profiles)},
        features_per_source={n: p.n_features for n, p in zip(names, profiles)},
        shared_features=len(shared), dropped=dropped, batch_column=roles.batch, batch_added=added, notes=notes,
    )
    if any(dropped.values()):
        parts = [f"{len(d)} from {n}" for n, d in dropped.items() if d]
        _warn(f"kept the {len(shared)} features shared by all {len(profiles)} inputs; dropped "
              + ", ".join(parts) + ".")
    for note in notes:
        _warn(note)
    short = [Path(n).name for n in names]
    source = " + ".join(short[:2]) + (f" + {len(short) - 2} more files" if len(short) > 2 else "")
    out = Profiles(meta=meta, X=X, features=shared, roles=roles, source=source,
                   full_precision=X.dtype == np.float64)
    check_duplicates(out, np.repeat(np.array(names, dtype=object), [p.n_wells for p in profiles]))
    return out, report


def _merge_roles(profiles: Sequence[Profiles], names: Sequence[str], notes: list[str]) -> Roles:
    first = profiles[0].roles
    for key in ("plate", "well", "row", "column"):
        vals = {getattr(p.roles, key) for p in profiles}
        if len(vals) > 1:
            detail = "; ".join(f"{n}: {getattr(p.roles, key)!r}" for n, p in zip(names, profiles))
            raise CpDistillerError(f"the inputs use different {key} columns ({detail}); map them to the same "
                                   "column names first.")
    kw = first.to_dict()
    for key in ("batch", "perturbation", "control", "annotation"):
        vals = [getattr(p.roles, key) for p in profiles if getattr(p.roles, key)]
        if vals:
            kw[key] = vals[0]
            if len(set(vals)) > 1:
                notes.append(f"inputs differ in the {key} column ({sorted(set(vals))}); using {vals[0]!r}")
    same_control = [p for p in profiles if p.roles.control == kw["control"]]
    kw["negative_values"] = list(dict.fromkeys(v for p in same_control for v in p.roles.negative_values))
    kw["positive_values"] = list(dict.fromkeys(v for p in same_control for v in p.roles.positive_values))
    formats = {p.roles.plate_format for p in profiles if p.roles.plate_format}
    kw["plate_format"] = max(formats) if formats else None
    return Roles.from_dict(kw)


def _file_stem(name: str) -> str:
    base = Path(name).name
    low = base.lower()
    for suffix in sorted(_FORMAT_SUFFIXES, key=len, reverse=True):
        if low.endswith(suffix):
            return base[: -len(suffix)]
    return Path(base).stem


def check_duplicates(profiles: Profiles, origin: np.ndarray | None = None) -> None:
    """Raise when a (plate, well) pair occurs more than once, naming the pairs and rows (and files)."""
    key = pd.DataFrame({"plate": profiles.plate, "well": profiles.well})
    dup = key.duplicated(keep=False).to_numpy()
    if not dup.any():
        return
    first = np.flatnonzero(dup)[0]
    p, w = key.iloc[first]
    same = np.flatnonzero(dup & (key["plate"].to_numpy() == p) & (key["well"].to_numpy() == w))
    files = ""
    if origin is not None:
        files = f" in {', '.join(dict.fromkeys(str(origin[i]) for i in same))}"
    n_pairs = int(key[dup].drop_duplicates().shape[0])
    raise CpDistillerError(
        f"{where(profiles.source or None, profiles.roles.well or profiles.roles.row)}{n_pairs} duplicated "
        f"(plate, well) pair(s), e.g. plate {p!r} well {w!r}{files} ({example_rows(profiles.meta.index[same])}); "
        "profiles must have one row per well — aggregate per well first."
    )


def validate(profiles: Profiles) -> list[str]:
    """Warnings about data that can still be used: bad features, inf values, missing controls, a
    single plate, labels that are all the same. Each message names the file and the column."""
    src = profiles.source or None
    out: list[str] = []
    X = profiles.X
    feats = np.asarray(profiles.features, dtype=object)
    nan = np.isnan(X)
    all_nan = nan.all(axis=0)
    if all_nan.any():
        out.append(f"{where(src)}{int(all_nan.sum())} feature(s) are all NaN: {example_values(feats[all_nan])}; "
                   "preprocessing drops them.")
    finite = np.isfinite(X)
    lo = np.where(finite, X, np.inf).min(axis=0, initial=np.inf)
    hi = np.where(finite, X, -np.inf).max(axis=0, initial=-np.inf)
    constant = (lo == hi) & finite.any(axis=0)
    if constant.any():
        out.append(f"{where(src)}{int(constant.sum())} feature(s) are constant: {example_values(feats[constant])}; "
                   "preprocessing drops them.")
    inf = np.isinf(X)
    if inf.any():
        per = inf.sum(axis=0)
        cols = np.flatnonzero(per)
        order = cols[np.argsort(-per[cols], kind="stable")]
        shown = ", ".join(f"{feats[j]!r}: {int(per[j])}" for j in order[:5])
        more = f" (+{len(cols) - 5} more columns)" if len(cols) > 5 else ""
        out.append(f"{where(src)}{int(inf.sum())} infinite value(s) in {len(cols)} feature(s) ({shown}{more}); "
                   "preprocessing treats them as missing.")
    roles = profiles.roles
    if not profiles.negative_mask.any():
        if roles.control:
            out.append(f"{where(src, roles.control)}no negative controls (values {list(roles.negative_values)} "
                       "not found); normalisation and metrics that need controls will use all wells.")
        else:
            out.append(f"{where(src)}no negative controls detected; name them with --control-col/--negative "
                       "(normalisation and metrics that need controls will use all wells).")
    elif profiles.negative_mask.all():
        out.append(f"{where(src, roles.control)}every well is a negative control "
                   f"({list(roles.negative_values)}); check the control column and values.")
    n_plates = len(pd.unique(profiles.plate))
    if n_plates == 1:
        out.append(f"{where(src, roles.plate)}a single plate ({profiles.plate[0]!r}); plate effects cannot be "
                   "estimated, only row/column effects.")
    for role in ("batch", "perturbation", "annotation"):
        col = getattr(roles, role)
        if col and profiles.meta[col].nunique(dropna=False) == 1:
            out.append(f"{where(src, col)}the {role} column holds a single value "
                       f"({example_values(profiles.meta[col].astype(str)[:1])}) for every well.")
    return out


# ----- writing --------------------------------------------------------------------------------------
def write_profiles(profiles: Profiles, path: PathLike, format: str | None = None, *,
                   input_profiles: Profiles | None = None) -> Path:
    """Write profiles: Parquet (default), CSV/TSV (+ a ``.cpdistiller.json`` sidecar) or AnnData .h5ad.

    Roles, the feature list, metadata dtypes and an Embedding's method/provenance are stored with
    the data so :func:`read_profiles` restores them. Writing is atomic (temp file + rename).
    An Embedding written as .h5ad keeps the embedding in ``.obsm`` and, when ``input_profiles``
    (the same wells) are given, their features in X (:meth:`Embedding.to_anndata`).

    Examples
    --------
    >>> import cpdistiller_core as cpd
    >>> cpd.write_profiles(profiles, "clean.parquet")                               # doctest: +SKIP
    >>> cpd.write_profiles(embedding, "embedding.h5ad", input_profiles=clean)      # doctest: +SKIP
    """
    path = Path(path)
    fmt = (format or _format_of(path.name) or ("parquet" if not path.suffix else "")).lower()
    if fmt == "pq":
        fmt = "parquet"
    if fmt not in ("parquet", "csv", "tsv", "h5ad"):
        raise CpDistillerError(f"{path}: unknown output format {format or path.suffix!r}; use parquet, csv or h5ad.")
    info = _store_info(profiles)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        if fmt == "parquet":
            _write_parquet(profiles, tmp, info)
        elif fmt in ("csv", "tsv"):
            comp = "gzip" if path.name.lower().endswith(".gz") else None
            frame = pd.concat([_writable_meta(profiles.meta).reset_index(drop=True),
                               pd.DataFrame(profiles.X, columns=profiles.features)], axis=1)
            frame.to_csv(tmp, sep="\t" if fmt == "tsv" else ",", index=False, compression=comp)
            side = path.with_name(path.name + SIDECAR_SUFFIX)
            side_tmp = side.with_name(f".{side.name}.tmp-{os.getpid()}")
            side_tmp.write_text(json.dumps(info, indent=1, default=json_default), encoding="utf-8")
            os.replace(side_tmp, side)
        else:
            _write_h5ad(profiles, tmp, info, input_profiles)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _store_info(profiles: Profiles) -> dict[str, Any]:
    info: dict[str, Any] = {
        "format": "cpdistiller-profiles", "version": _STORE_VERSION,
        "kind": "embedding" if isinstance(profiles, Embedding) else "profiles",
        "roles": profiles.roles.to_dict(), "features": list(profiles.features),
        "metadata_columns": [str(c) for c in profiles.meta.columns],
        "metadata_dtypes": {str(c): str(t) for c, t in profiles.meta.dtypes.items()},
        "source": profiles.source,
    }
    if isinstance(profiles, Embedding):
        info["method"] = profiles.method
        info["provenance"] = json.loads(json.dumps(profiles.provenance, default=json_default))
    return info



def _writable_meta(meta: pd.DataFrame, nested: str = "json") -> pd.DataFrame:
    """Object columns mixing types (e.g. int and str plates after combining) become text. Columns of
    lists / dicts (Parquet list or struct columns) stay as they are (``nested="keep"``, Parquet) or
    become JSON text (``"json"``: CSV, h5ad)."""
    out = meta.copy(deep=False)
    out.columns = [str(c) for c in out.columns]
    for c in out.columns:
        if out[c].dtype != object:
            continue
        if _is_nested(out[c]):
            if nested == "json":
                out[c] = out[c].map(_nested_text).astype(object)
            continue
        kind = pd.api.types.infer_dtype(out[c], skipna=True)
        if kind not in ("string", "empty"):
            out[c] = out[c].map(lambda v: v if pd.isna(v) else str(v)).astype(object)
    return out


_NESTED_TYPES = (list, tuple, dict, np.ndarray)


def _is_nested(s: pd.Series) -> bool:
    return any(isinstance(v, _NESTED_TYPES) for v in s.to_numpy())


def _nested_text(v: Any) -> Any:
    if isinstance(v, _NESTED_TYPES):
        return json.dumps(v, default=json_default)
    return v if v is None or pd.isna(v) else str(v)


def _write_parquet(profiles: Profiles, tmp: Path, info: dict[str, Any]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    meta = _writable_meta(profiles.meta, nested="keep").reset_index(drop=True)
    feats = pd.DataFrame(profiles.X, columns=profiles.features)
    table = pa.Table.from_pandas(pd.concat([meta, feats], axis=1), preserve_index=False)
    schema_meta = dict(table.schema.metadata or {})
    schema_meta[_STORE_KEY.encode()] = json.dumps(info, default=json_default).encode("utf-8")
    pq.write_table(table.replace_schema_metadata(schema_meta), tmp)


def _write_h5ad(profiles: Profiles, tmp: Path, info: dict[str, Any], input_profiles: Profiles | None = None) -> None:
    """Profiles: X = features. Embedding: the embedding in ``.obsm["X_cpdistiller"]`` (or
    ``X_<method>``) and X = the input features when ``input_profiles`` are given (see to_anndata)."""
    if isinstance(profiles, Embedding):
        adata = profiles.to_anndata(input_profiles)
    else:
        adata = profiles.to_anndata()
    adata.write_h5ad(tmp)

