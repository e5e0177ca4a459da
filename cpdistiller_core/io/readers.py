"""One reader per format (delimited text, Parquet, AnnData) and for in-memory tables; each returns
(metadata, feature matrix, feature names, the cpDistiller metadata stored with the file or None)."""

from __future__ import annotations

import io as _io
import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import CpDistillerError, example_cells, example_rows, example_values, where
from .common import _STORE_KEY, H5AD_STORE_KEY, SIDECAR_SUFFIX, ReadOptions, note, one_line
from .features import feature_columns
from .sniff import _SEPARATORS, TextDialect, _ragged_error, _ragged_row, _raw_header, sniff_dialect

# (metadata, feature matrix, feature names, what cpDistiller stored with the file or None)
Parts = tuple[pd.DataFrame, np.ndarray, list[str], dict | None]


def _read_delimited(handle: Any, name: str, options: ReadOptions, notes: list[str] | None,
                    compression: str | None = None, *, default_sep: str) -> Parts:
    """Delimited text; ``default_sep`` is the format's separator (',' for CSV, tab for TSV)."""
    stored = _read_sidecar(handle) if isinstance(handle, Path) else None
    dialect, found = sniff_dialect(handle, name, default_sep, sep=options.sep, decimal=options.decimal,
                                   compression=compression)
    for msg in found:
        note(notes, msg)
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
            raise CpDistillerError(f"{name}: cannot read as {label}: {one_line(exc)}") from None
        except (UnicodeDecodeError, OSError, EOFError) as exc:
            raise CpDistillerError(f"{name}: cannot read as {label}: {one_line(exc)}") from None

    header = [str(c) for c in _read(nrows=0).columns]
    raw = _raw_header(handle, dialect)
    dups = sorted(h for h, n in Counter(raw).items() if n > 1)
    if dups:
        note(notes, f"{name}: duplicated column name(s) {example_values(dups)}; later copies are read as "
              f"'<name>.1', '<name>.2'…")
    if stored:
        feats = _stored_features(stored, header, options, name)
    else:
        feats = feature_columns(header, options.features, options.feature_regex, name)
    fset = set(feats)
    meta_cols = [c for c in header if c not in fset]
    fast = _read_delimited_arrow(handle, dialect, header, meta_cols, feats, options.dtype)
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
            df = _read(dtype={**dtypes, **{c: np.dtype(options.dtype).name for c in feats}})
        except ValueError:
            df = _read(dtype={**dtypes, **{c: object for c in feats}})
        meta = df[meta_cols]
        X = _feature_matrix(df, feats, name, options.dtype)
    if stored and stored.get("metadata_dtypes"):
        meta = _restore_dtypes(meta, stored["metadata_dtypes"], name, notes)
    else:
        meta = _infer_metadata_dtypes(meta, dialect.decimal)
    return meta.reset_index(drop=True), X, feats, stored


def _read_delimited_arrow(handle: Any, dialect: TextDialect, header: list[str], meta_cols: list[str],
                          feats: list[str], dtype: type) -> tuple[pd.DataFrame, np.ndarray] | None:
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
    types = {**{c: pa.string() for c in meta_cols}, **{c: pa.from_numpy_dtype(dtype) for c in feats}}
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
    X = np.empty((table.num_rows, len(feats)), dtype=dtype)
    for j, f in enumerate(feats):
        X[:, j] = table.column(f).to_numpy()
    meta = table.select(meta_cols).to_pandas()
    for c in meta.columns:  # missing text is NaN, as from pandas
        if meta[c].isna().any():
            meta[c] = meta[c].where(meta[c].notna(), np.nan)
    return meta, X


def _read_parquet(handle: Any, name: str, options: ReadOptions, notes: list[str] | None,
                  compression: str | None = None) -> Parts:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(handle)
        streamed = _read_parquet_streamed(pf, name, options)
        table = None if streamed is not None else pf.read()
    except CpDistillerError:
        raise
    except Exception as exc:  # pyarrow raises several types (ArrowInvalid, OSError...) for bad files
        raise CpDistillerError(f"{name}: cannot read as Parquet: {one_line(exc)}") from None
    if streamed is not None:
        return streamed
    stored = _parquet_store(table.schema)
    df = table.to_pandas()
    if not stored and not isinstance(df.index, pd.RangeIndex):
        df = df.reset_index()  # a stored pandas index is data too: keep it as leading column(s)
    df.columns = [str(c) for c in df.columns]
    if stored:
        feats = _stored_features(stored, df.columns, options, name)
    else:
        feats = feature_columns(df.columns, options.features, options.feature_regex, name)
    fset = set(feats)
    meta = _missing_as_nan(df[[c for c in df.columns if c not in fset]].reset_index(drop=True))
    return meta, _feature_matrix(df, feats, name, options.dtype), feats, stored


def _parquet_store(schema: Any) -> dict | None:
    raw = (schema.metadata or {}).get(_STORE_KEY.encode())
    return json.loads(raw.decode("utf-8")) if raw else None


def _missing_as_nan(meta: pd.DataFrame) -> pd.DataFrame:
    for c in meta.columns:  # missing text is NaN whatever the format (pyarrow gives None)
        if meta[c].dtype == object and meta[c].isna().any():
            meta[c] = meta[c].where(meta[c].notna(), np.nan)
    return meta


def _read_parquet_streamed(pf: Any, name: str, options: ReadOptions, block_cols: int = 64) -> Parts | None:
    """The bounded-memory path: feature columns read ``block_cols`` at a time straight into one float
    matrix, metadata columns on their own (never the whole table as Arrow plus pandas plus the matrix;
    Arrow's reader over all ~1,500 columns at once also buffers several times the data it returns).
    None when the file needs the general path: a stored pandas index column, duplicated or
    non-numeric feature columns (whose errors that path words)."""
    import pyarrow as pa

    schema = pf.schema_arrow
    names = [str(c) for c in schema.names]
    pandas_meta = json.loads((schema.metadata or {}).get(b"pandas", b"{}") or b"{}")
    if any(isinstance(c, str) for c in pandas_meta.get("index_columns", [])) or len(set(names)) != len(names):
        return None
    stored = _parquet_store(schema)
    if stored:
        feats = _stored_features(stored, names, options, name)
    else:
        feats = feature_columns(names, options.features, options.feature_regex, name)
    numeric = (pa.types.is_integer, pa.types.is_floating)
    if any(not any(ok(schema.field(f).type) for ok in numeric) for f in feats):
        return None
    fset = set(feats)
    meta_cols = [c for c in names if c not in fset]
    meta = pf.read(columns=meta_cols).to_pandas() if meta_cols else \
        pd.DataFrame(index=pd.RangeIndex(pf.metadata.num_rows))
    meta.columns = [str(c) for c in meta.columns]
    X = np.empty((pf.metadata.num_rows, len(feats)), dtype=options.dtype)
    for j0 in range(0, len(feats), block_cols):
        block = pf.read(columns=feats[j0:j0 + block_cols], use_threads=False, use_pandas_metadata=False)
        for j, f in enumerate(feats[j0:j0 + block_cols]):  # by name: a read keeps the file's column order
            X[:, j0 + j] = block.column(f).to_numpy()
        del block
    pa.default_memory_pool().release_unused()  # return the blocks' pages rather than keep them pooled
    return _missing_as_nan(meta.reset_index(drop=True)), X, feats, stored


def _read_h5ad(handle: Any, name: str, options: ReadOptions, notes: list[str] | None,
               compression: str | None = None) -> Parts:
    import anndata

    try:
        adata = anndata.read_h5ad(handle)
    except Exception as exc:  # h5py/anndata raise OSError, KeyError, ValueError... for bad files
        raise CpDistillerError(f"{name}: cannot read as AnnData .h5ad: {one_line(exc)}") from None
    return _anndata_parts(adata, name, options, notes)


def _anndata_parts(adata: Any, name: str, options: ReadOptions, notes: list[str] | None) -> Parts:
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
        meta = _restore_dtypes(meta, stored["metadata_dtypes"], name, notes)
    if stored:
        feats = _stored_features(stored, var_names, options, name)
    elif options.features is None and options.feature_regex is None:
        feats = list(var_names)  # an AnnData's X is the feature matrix by construction
    else:
        feats = feature_columns(var_names, options.features, options.feature_regex, name)
    pos = {v: i for i, v in enumerate(var_names)}
    X = X[:, [pos[f] for f in feats]]
    X = X.toarray() if sp.issparse(X) else np.asarray(X)
    return meta, np.ascontiguousarray(X, dtype=options.dtype), feats, stored


# ----- in-memory inputs ---------------------------------------------------------------------------------
def _in_memory_kind(item: Any) -> str | None:
    """'DataFrame' or 'AnnData' for in-memory inputs (their name in messages), None for files."""
    if isinstance(item, pd.DataFrame):
        return "DataFrame"
    if type(item).__name__ == "AnnData" and hasattr(item, "obsm"):  # no anndata import for file reads
        return "AnnData"
    return None


def _in_memory_parts(item: Any, name: str, options: ReadOptions, notes: list[str] | None) -> Parts:
    """A DataFrame in pycytominer layout (metadata + CellProfiler feature columns) or an AnnData,
    split like a file of the same content; the caller's object is never modified."""
    if _in_memory_kind(item) == "AnnData":
        return _anndata_parts(item, name, options, notes)
    df = item
    if any(n is not None for n in df.index.names):
        df = df.reset_index()  # a named index is data: keep it as leading column(s)
    df = df.reset_index(drop=True)
    df.columns = [str(c) for c in df.columns]
    dups = sorted(c for c, n in Counter(df.columns).items() if n > 1)
    if dups:
        raise CpDistillerError(f"{name}: duplicated column name(s) {example_values(dups)}; rename them first.")
    feats = feature_columns(df.columns, options.features, options.feature_regex, name)
    fset = set(feats)
    meta = df[[c for c in df.columns if c not in fset]].copy()
    return meta, _feature_matrix(df, feats, name, options.dtype), feats, None


def _stored_features(stored: Mapping[str, Any], columns: Iterable[str], options: ReadOptions,
                     name: str) -> list[str]:
    """The feature list written with the file, optionally narrowed by a given list or regex."""
    present = set(map(str, columns))
    feats = [f for f in stored.get("features", []) if f in present]
    if options.features is not None or options.feature_regex is not None:
        feats = feature_columns(feats, options.features, options.feature_regex, name)
    return feats


def _read_sidecar(path: Path) -> dict | None:
    side = path.with_name(path.name + SIDECAR_SUFFIX)
    if not side.is_file():
        return None
    try:
        return json.loads(side.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CpDistillerError(f"{side}: cannot parse the cpDistiller sidecar: {one_line(exc)}") from None


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


def _restore_dtypes(meta: pd.DataFrame, dtypes: Mapping[str, str], name: str,
                    notes: list[str] | None = None) -> pd.DataFrame:
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
            note(notes, f"{where(name, c)}cannot restore the recorded dtype {want}; kept {s.dtype}.")
    return meta


def _feature_matrix(df: pd.DataFrame, feats: Sequence[str], source: str, dtype: type = np.float32) -> np.ndarray:
    """Feature columns -> float matrix (float32 unless a float64 read); text in a feature column is an
    error naming column and rows."""
    bad: list[str] = []
    X = np.empty((len(df), len(feats)), dtype=dtype)
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
