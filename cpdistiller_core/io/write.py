"""Writing profiles atomically in any format of the table, with roles and features stored alongside."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from ..errors import CpDistillerError
from ..profiles import Profiles
from .common import PathLike
from .formats import DEFAULT_OUTPUT, format_of, get_format, writable_hint
from .writers import _store_info


def write_profiles(profiles: Profiles, path: PathLike, format: str | None = None, *,
                   input_profiles: Profiles | None = None, layers: Mapping[str, Profiles] | None = None) -> Path:
    """Write profiles: Parquet (default), CSV/TSV (+ a ``.cpdistiller.json`` sidecar) or AnnData .h5ad.

    Roles, the feature list, metadata dtypes and an Embedding's method/provenance are stored with
    the data so :func:`read_profiles` restores them. Writing is atomic (temp file + rename).
    An Embedding written as .h5ad keeps the embedding in ``.obsm`` and, when ``input_profiles``
    (the same wells) are given, their features in X, and ``layers`` (the same wells and features as
    ``input_profiles``, e.g. the corrected profiles) in ``.layers`` (:meth:`Embedding.to_anndata`).

    Examples
    --------
    >>> import cpdistiller_core as cpd
    >>> cpd.write_profiles(profiles, "clean.parquet")                               # doctest: +SKIP
    >>> cpd.write_profiles(embedding, "embedding.h5ad", input_profiles=clean)      # doctest: +SKIP
    """
    path = Path(path)
    name = format or format_of(path.name) or (DEFAULT_OUTPUT if not path.suffix else "")
    fmt = get_format(name)
    if fmt is None:
        raise CpDistillerError(f"{path}: unknown output format {format or path.suffix!r}; use {writable_hint()}.")
    if layers and fmt.name != "h5ad":
        raise CpDistillerError(f"{path}: layers ({', '.join(layers)}) can only be written to an AnnData .h5ad file.")
    info = _store_info(profiles)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        fmt.writer(profiles, tmp, path, info, input_profiles, **({"layers": layers} if layers else {}))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
