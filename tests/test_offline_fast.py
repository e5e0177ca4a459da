"""Offline, really fast: reachability before any computation, no hanging resolver, proxies that refuse.

Everything runs against servers on 127.0.0.1 (the "proxy" below is a local server that answers every
request with 403, as intercepting proxies do); a hanging name lookup is simulated in a subprocess.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from cpdistiller_core.analysis import archs4, enrichment
from cpdistiller_core.cli import main
from cpdistiller_core.net import NoAccessError, OfflineError, check_reachable

REPO = Path(__file__).resolve().parents[1]


class RefusingProxy(BaseHTTPRequestHandler):
    """Answers every request (any method, any URL) with 403, like a corporate proxy's block page."""

    hits: list[str] = []

    def _refuse(self) -> None:
        type(self).hits.append(f"{self.command} {self.path}")
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            self.rfile.read(n)
        body = b"<html><body>Blocked by proxy policy</body></html>"
        self.send_response(403, "Forbidden")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_HEAD = do_CONNECT = _refuse  # noqa: N815

    def log_message(self, *args):
        pass


@pytest.fixture
def refusing_proxy(local_http_server, monkeypatch):
    RefusingProxy.hits = []
    _, base = local_http_server(RefusingProxy)
    for var in ("no_proxy", "NO_PROXY", "HTTP_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("http_proxy", base)
    return RefusingProxy.hits


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# ----- a proxy answering every request with 403 -------------------------------------------------------
def test_enrichr_behind_a_refusing_proxy_is_no_access_not_a_wrong_name(refusing_proxy):
    with pytest.raises(NoAccessError) as exc:
        enrichment.resolve_gene_sets(["ChEA_2022"], base_url="http://enrichr.example/Enrichr")
    msg = str(exc.value)
    assert msg.startswith("no access to Enrichr") and "HTTP 403" in msg and "proxy" in msg
    assert "--gmt" in msg and "check the name" not in msg
    assert len(refusing_proxy) == 2  # the library, one probe: no retries


def test_https_through_a_proxy_refusing_the_tunnel_is_no_access(refusing_proxy, monkeypatch):
    monkeypatch.setenv("https_proxy", os.environ["http_proxy"])
    t0 = time.monotonic()
    with pytest.raises(NoAccessError, match="no access to ARCHS4: the proxy answers HTTP 403"):
        archs4.archs4_edges(["PSMA1"], base_url="https://archs4.example/matrixapi/coltop")
    assert time.monotonic() - t0 < 5
    assert refusing_proxy == ["CONNECT archs4.example:443"]
    with pytest.raises(NoAccessError, match="no access to Enrichr: the proxy answers HTTP 403.*--gmt"):
        enrichment.resolve_gene_sets(["ChEA_2022"], base_url="https://enrichr.example/Enrichr")


def test_archs4_behind_a_refusing_proxy_is_no_access(refusing_proxy):
    t0 = time.monotonic()
    with pytest.raises(NoAccessError, match="no access to ARCHS4.*HTTP 403.*--gene-groups"):
        archs4.archs4_edges(["PSMA1", "PSMB1", "PSMA2"], base_url="http://archs4.example/matrixapi/coltop")
    assert time.monotonic() - t0 < 5
    assert refusing_proxy == ["POST http://archs4.example/matrixapi/coltop"]  # one request, then stop


@pytest.mark.parametrize("service", ["enrichr", "archs4"])
def test_genes_cli_stops_before_any_computation_behind_a_refusing_proxy(refusing_proxy, tmp_path, capsys,
                                                                         service):
    out = tmp_path / "out"
    extra = (["--libraries", "ChEA_2022", "--enrichr-url", "http://enrichr.example/Enrichr"] if service == "enrichr"
             else ["--gmt", "demo", "--archs4", "--archs4-url", "http://archs4.example/matrixapi/coltop"])
    t0 = time.monotonic()
    assert main(["genes", "demo", "--out", str(out), "--permutations", "20", *extra]) == 1
    assert time.monotonic() - t0 < 5
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    name = "Enrichr" if service == "enrichr" else "ARCHS4"
    assert len(err) == 1 and f"no access to {name}" in err[0]
    assert not out.exists()  # nothing was computed or written


def test_genes_cli_checks_archs4_before_clustering(tmp_path, capsys):
    out = tmp_path / "out"
    url = f"http://127.0.0.1:{closed_port()}/matrixapi/coltop"
    t0 = time.monotonic()
    assert main(["genes", "demo", "--out", str(out), "--gmt", "demo", "--archs4", "--archs4-url", url]) == 1
    assert time.monotonic() - t0 < 5
    err = capsys.readouterr().err
    assert "cannot reach ARCHS4" in err and "--offline" in err and "--gene-groups" in err
    assert not out.exists()


# ----- a name lookup that never returns ---------------------------------------------------------------
def test_check_reachable_gives_up_on_a_hanging_resolver_and_leaves_no_thread_to_wait_for():
    script = textwrap.dedent("""
        import socket, sys, time
        def hang(*args, **kwargs):
            time.sleep(60)
        socket.getaddrinfo = hang  # a resolver that never answers
        from cpdistiller_core.net import OfflineError, check_reachable
        t0 = time.monotonic()
        try:
            check_reachable("https://maayanlab.cloud/Enrichr", timeout=0.5, what="Enrichr")
        except OfflineError as exc:
            print(f"{time.monotonic() - t0:.2f}", exc)
            sys.exit(3)
    """)
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env["PYTHONPATH"] = str(REPO)
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=50)
    took = time.monotonic() - t0
    assert proc.returncode == 3, proc.stderr
    waited, _, message = proc.stdout.partition(" ")
    assert float(waited) < 1.5 and "cannot reach Enrichr" in message and "no answer within 0.5 s" in message
    assert took < 20  # the process exits at once: the lookup thread is a daemon, not joined at exit


def test_genes_cli_exits_promptly_with_a_hanging_resolver(tmp_path):
    script = textwrap.dedent(f"""
        import socket, sys, time
        socket.getaddrinfo = lambda *a, **k: time.sleep(120)
        from cpdistiller_core.cli import main
        sys.exit(main(["genes", "demo", "--out", {str(tmp_path / "out")!r}, "--libraries", "ChEA_2022",
                       "--enrichr-url", "https://enrichr.example/Enrichr"]))
    """)
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env["PYTHONPATH"] = str(REPO)
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=100)
    assert proc.returncode == 1, proc.stderr
    assert time.monotonic() - t0 < 60  # imports included; the hang would be 120 s
    assert "cannot reach Enrichr" in proc.stderr and "no answer within" in proc.stderr


def test_check_reachable_on_a_closed_port_is_fast():
    t0 = time.monotonic()
    with pytest.raises(OfflineError, match="cannot reach the server"):
        check_reachable(f"http://127.0.0.1:{closed_port()}/")
    assert time.monotonic() - t0 < 2
