"""Where cpDistiller keeps caches and app data (overridable by environment variables), and how it writes files."""

from __future__ import annotations

import math
import os
import stat
import tempfile
from pathlib import Path
from typing import Any


def cache_dir() -> Path:
    """Cache for network downloads and computed results: $CPDISTILLER_CACHE or ~/.cache/cpdistiller."""
    path = Path(os.environ.get("CPDISTILLER_CACHE") or Path.home() / ".cache" / "cpdistiller")
    path.mkdir(parents=True, exist_ok=True)
    return path


def app_data_dir() -> Path:
    """The dashboard's data directory (uploads, run directories): $CPDISTILLER_HOME or ./.cpdistiller."""
    path = Path(os.environ.get("CPDISTILLER_HOME") or Path.cwd() / ".cpdistiller")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _nearest_existing(path: Path) -> Path:
    for parent in (path, *path.parents):
        if os.path.lexists(parent):
            return parent
    return Path.cwd()


def _probe_writable(folder: Path, shown: Path) -> None:
    from .errors import CpDistillerError

    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise CpDistillerError(f"{shown}: cannot write there ({exc.strerror or type(exc).__name__}).") from None


def ensure_output_dir(path: str | os.PathLike) -> Path:
    """Create (if needed) an output directory and check it can be written, before any input is read.

    A path that exists as a file or a special file (device, FIFO, socket), or whose folder cannot be
    created or written, is a one-line :class:`CpDistillerError`.
    """
    from .errors import CpDistillerError

    path = Path(path).expanduser()
    if os.path.lexists(path) and not path.is_dir():
        kind = "a file" if path.is_file() else "a special file (device, pipe or socket)"
        raise CpDistillerError(f"{path}: exists and is {kind}, not a directory; choose another output directory.")
    base = _nearest_existing(path)
    if not base.is_dir():
        raise CpDistillerError(f"{path}: {base} is not a directory, so nothing can be written under it.")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CpDistillerError(f"{path}: cannot create the directory ({exc.strerror or type(exc).__name__}).") from None
    _probe_writable(path, path)
    return path


def check_output_file(path: str | os.PathLike) -> Path:
    """Check an output file path before any input is read: its folder must exist or be creatable and
    be writable; an existing directory or special file is refused (an existing regular file is replaced)."""
    from .errors import CpDistillerError

    path = Path(path).expanduser()
    if path.is_dir():
        raise CpDistillerError(f"{path}: is a directory; give a file name (e.g. {path / 'profiles.parquet'}).")
    if os.path.lexists(path) and not stat.S_ISREG(os.stat(path).st_mode if path.exists() else 0):
        raise CpDistillerError(f"{path}: is a special file (device, pipe, socket or broken link), not a regular file.")
    base = _nearest_existing(path.parent)
    if not base.is_dir():
        raise CpDistillerError(f"{path}: {base} is not a directory, so nothing can be written under it.")
    _probe_writable(base, path)
    return path


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temporary file + rename, so a killed process never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def json_default(obj: Any) -> Any:
    """``json.dumps(default=...)`` for numpy scalars/arrays, pandas NA, paths and sets (NaN -> null)."""
    import numpy as np
    import pandas as pd

    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return None if math.isnan(obj) else float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if obj is pd.NA or obj is pd.NaT:
        return None
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    return str(obj)  # Path, Timestamp, anything else: its text


def zip_directory(path: Path) -> bytes:
    """A zip archive (bytes) of a directory; entries are named ``<dir name>/<relative path>``."""
    import io
    import zipfile

    from .errors import CpDistillerError

    path = Path(path)
    if not path.is_dir():
        raise CpDistillerError(f"{path}: no such directory.")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(path.rglob("*")):
            if f.is_file():
                zf.write(f, arcname=str(Path(path.name) / f.relative_to(path)))
    return buf.getvalue()
