"""Shared fixtures: the real data sets in ../shared/data (tests using them skip when it is absent)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CPDISTILLER_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to ../shared/data; skips the test when it is not there (a user's fresh clone)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data sets not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _isolated_dirs(tmp_path_factory, monkeypatch):
    """Never write to the user's real cache or app directory from tests."""
    base = tmp_path_factory.getbasetemp()
    monkeypatch.setenv("CPDISTILLER_CACHE", str(base / "cache"))
    monkeypatch.setenv("CPDISTILLER_HOME", str(base / "home"))


@pytest.fixture
def local_http_server() -> Iterator[Callable[[type[BaseHTTPRequestHandler]], tuple[ThreadingHTTPServer, str]]]:
    """Start HTTP servers on 127.0.0.1 (never the internet): ``server, base_url = start(Handler)``.

    Servers are stopped when the test ends (a test may also stop one itself to go "offline")."""
    servers: list[ThreadingHTTPServer] = []

    def start(handler: type[BaseHTTPRequestHandler]) -> tuple[ThreadingHTTPServer, str]:
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server, f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()
