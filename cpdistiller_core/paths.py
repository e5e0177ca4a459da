"""Where cpDistiller keeps caches and app data (overridable by environment variables)."""

from __future__ import annotations

import os
from pathlib import Path


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
