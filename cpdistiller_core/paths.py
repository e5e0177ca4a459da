"""Where cpDistiller keeps caches and app data (overridable by environment variables), and how it writes files."""

from __future__ import annotations

import math
import os
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
