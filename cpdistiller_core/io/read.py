"""Reading profiles: ``read_profiles`` and its report, role mappings, and the per-input dispatch."""

from __future__ import annotations

import dataclasses
import io as _io
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CpDistillerError, CpDistillerWarning
from ..profiles import Embedding, Profiles, Roles
from .combine import CombineReport, combine
from .common import InputLike, PathLike, ReadOptions, note, one_line
from .features import FEATURE_PREFIXES
from .formats import BY_NAME, format_of, readable_hint
from .readers import Parts, _in_memory_kind, _in_memory_parts
from .roles import _COLUMN_ROLES, resolve_roles
from .sniff import _content_error, _looks_text, sniff_content
from .validate import check_duplicates, validate


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
    options = ReadOptions.checked(features, feature_regex, dtype, sep, decimal)
    collected: list[str] = []
    loaded = [_read_one(item, spec, options, source, collected) for item in items]
    profiles, reasons = loaded[0]
    creport = None
    if len(loaded) > 1 or batch_from_file:
        profiles, creport = combine([p for p, _ in loaded], batch_from_file=batch_from_file, notes=collected)
        if creport.batch_added:
            reasons = {**reasons, "batch": f"one batch per input file, new column {creport.batch_column!r} "
                                           "(--batch-from-file)"}
    collected += validate(profiles)
    if emit_warnings:
        for msg in collected:
            warnings.warn(msg, CpDistillerWarning, stacklevel=3)
    names = [_display_name(i, source) for i in items]
    return profiles, LoadReport(files=names, role_reasons=reasons, combine=creport, warnings=collected)


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
        raise CpDistillerError(f"{p}: cannot parse the mapping file: {one_line(exc)}") from None
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


def _real_format(name: str, head: bytes, notes: list[str] | None = None) -> tuple[str, str | None]:
    """(format, compression) from the extension checked against the first bytes: a binary format
    (Parquet, h5ad) under another name is read as what it is (with a note); a workbook or a web page
    saved under a table's name is an error saying so."""
    by_name = format_of(name)
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
    if kind in BY_NAME and BY_NAME[kind].binary:
        if by_name not in (None, kind):
            what = BY_NAME[kind].content_label or BY_NAME[kind].label
            note(notes, f"{name}: the file holds {what} data despite "
                        f"its {ext!r} name; read it as such (rename it to .{kind}).")
        return kind, None
    if by_name is None:
        raise CpDistillerError(f"{name}: unknown file format {ext or '(no extension)'!r}; use {readable_hint()}.")
    if BY_NAME[by_name].binary:
        raise CpDistillerError(
            f"{name}: cannot read as {BY_NAME[by_name].label}: the file does not "
            f"start with that format's signature{'; it looks like text (a CSV?): rename it' if _looks_text(head) else ''}."
        )
    if kind != "gzip" and name.lower().endswith(".gz"):
        raise CpDistillerError(f"{name}: cannot read as {BY_NAME[by_name].label}: the file is not gzip-compressed although "
                               "its name ends in .gz; remove the .gz from its name.")
    return by_name, "gzip" if kind == "gzip" else None


def _read_one(item: InputLike, spec: Roles | dict[str, Any] | None, options: ReadOptions, source: str | None,
              notes: list[str] | None = None) -> tuple[Profiles, dict[str, str]]:
    name = _display_name(item, source)
    if _in_memory_kind(item):  # a pandas DataFrame or an AnnData: same checks and roles as a file
        parts = _in_memory_parts(item, name, options, notes)
    else:
        parts = _read_file(item, name, options, notes)
    meta, X, feats, stored = parts
    if len(meta) == 0:
        raise CpDistillerError(f"{name}: no data rows.")
    if not feats:
        raise CpDistillerError(
            f"{name}: no feature columns found (expected numeric CellProfiler columns starting with "
            f"{', '.join(FEATURE_PREFIXES[:4])}…); pass --features-regex to choose them."
        )
    stored_roles = Roles.from_dict(stored["roles"]) if stored and stored.get("roles") else None
    roles, reasons = resolve_roles(meta, spec, source=name, stored=stored_roles, notes=notes)
    if stored_roles is not None:
        reasons = {**{r: "stored with the file" for r in _COLUMN_ROLES if getattr(roles, r)}, **reasons}
    kw: dict[str, Any] = dict(meta=meta, X=X, features=feats, roles=roles, source=name)
    if stored and stored.get("kind") == "embedding":
        prof: Profiles = Embedding(**kw, method=stored.get("method", "uncorrected"),
                                   provenance=dict(stored.get("provenance") or {}))
    else:
        prof = Profiles(**kw, full_precision=options.full_precision)
    check_duplicates(prof)
    return prof, reasons


def _read_file(item: InputLike, name: str, options: ReadOptions, notes: list[str] | None = None) -> Parts:
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
    fmt, compression = _real_format(name, head, notes)
    return BY_NAME[fmt].reader(handle, name, options, notes, compression)
