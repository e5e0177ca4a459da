"""One writer per format; each stores roles, features and dtypes with the data (see ``_store_info``)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import CpDistillerError
from ..paths import json_default
from ..profiles import Embedding, Profiles
from .common import _STORE_KEY, _STORE_VERSION, SIDECAR_SUFFIX


def _store_info(profiles: Profiles) -> dict[str, Any]:
    """What is stored with the data so that reading back restores roles, features and dtypes."""
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


def _write_delimited(profiles: Profiles, tmp: Path, path: Path, info: dict[str, Any],
                     input_profiles: Profiles | None = None, *, sep: str) -> None:
    """CSV/TSV (gzipped when ``path`` ends in .gz) and the ``<file>.cpdistiller.json`` sidecar next to it."""
    comp = "gzip" if path.name.lower().endswith(".gz") else None
    frame = pd.concat([_writable_meta(profiles.meta).reset_index(drop=True),
                       pd.DataFrame(profiles.X, columns=profiles.features)], axis=1)
    frame.to_csv(tmp, sep=sep, index=False, compression=comp)
    side = path.with_name(path.name + SIDECAR_SUFFIX)
    side_tmp = side.with_name(f".{side.name}.tmp-{os.getpid()}")
    side_tmp.write_text(json.dumps(info, indent=1, default=json_default), encoding="utf-8")
    os.replace(side_tmp, side)


PARQUET_ROWS_PER_GROUP = 65536  # rows written at a time: the Arrow copy is one row group, not the matrix


def _write_parquet(profiles: Profiles, tmp: Path, path: Path, info: dict[str, Any],
                   input_profiles: Profiles | None = None) -> None:
    """Parquet; ``info`` goes into the schema metadata (nested metadata columns stay nested).

    Written one row group of ``PARQUET_ROWS_PER_GROUP`` wells at a time, features column by column from
    the matrix: Arrow holds one row group's copy, never the whole matrix (at a million wells a full
    copy is ~5 GB next to the matrix itself). The pandas metadata lists the features as a
    ``from_pandas`` table would."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    meta = pa.Table.from_pandas(_writable_meta(profiles.meta, nested="keep").reset_index(drop=True),
                                preserve_index=False)
    schema_meta = _parquet_schema_metadata(meta, profiles, info)
    n, writer = profiles.n_wells, None
    try:
        for s in range(0, max(n, 1), PARQUET_ROWS_PER_GROUP):
            rows = slice(s, min(s + PARQUET_ROWS_PER_GROUP, n))
            table = meta.slice(s, rows.stop - s)
            for j, f in enumerate(profiles.features):
                table = table.append_column(f, pa.array(profiles.X[rows, j]))
            table = table.replace_schema_metadata(schema_meta)
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema)
            writer.write_table(table)
            del table
    finally:
        if writer is not None:
            writer.close()
    pa.default_memory_pool().release_unused()  # Arrow's pool would keep the row groups' pages for the run


def _parquet_schema_metadata(meta: Any, profiles: Profiles, info: dict[str, Any]) -> dict[bytes, bytes]:
    """The schema metadata: pandas' (metadata columns, then the features) and cpDistiller's ``info``."""
    schema_meta = dict(meta.schema.metadata or {})
    pandas_meta = json.loads(schema_meta[b"pandas"])
    dtype = str(profiles.X.dtype)
    for f in profiles.features:
        pandas_meta["columns"].append({"name": f, "field_name": f, "pandas_type": dtype, "numpy_type": dtype,
                                       "metadata": None})
    schema_meta[b"pandas"] = json.dumps(pandas_meta).encode("utf-8")
    schema_meta[_STORE_KEY.encode()] = json.dumps(info, default=json_default).encode("utf-8")
    return schema_meta


def _write_h5ad(profiles: Profiles, tmp: Path, path: Path, info: dict[str, Any],
                input_profiles: Profiles | None = None, layers: Mapping[str, Profiles] | None = None) -> None:
    """Profiles: X = features. Embedding: the embedding in ``.obsm["X_cpdistiller"]`` (or
    ``X_<method>``), X = the input features when ``input_profiles`` are given and ``layers`` in
    ``.layers`` (see to_anndata)."""
    if isinstance(profiles, Embedding):
        adata = profiles.to_anndata(input_profiles, layers=layers)
    elif layers:
        raise CpDistillerError(f"{path}: layers are written beside an embedding only.")
    else:
        adata = profiles.to_anndata()
    adata.write_h5ad(tmp)
