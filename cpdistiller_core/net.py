"""Network access with an offline-first contract: fast reachability checks, resumable checksummed downloads.

Everything that touches the network (the JUMP gallery client, Enrichr/ARCHS4) goes through here:
- ``check_reachable`` answers in under ``timeout`` seconds (DNS included) so an offline machine gets a
  clear message at once instead of a library's retry loop;
- ``download`` streams to ``<dest>.part``, resumes with an HTTP Range request after an interruption,
  verifies size and MD5 (S3 ETags of single-part uploads are the MD5) and only then renames into place.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import requests

from .errors import CpDistillerError

CHUNK = 1 << 16  # bytes per read while streaming a download
DEFAULT_TIMEOUT = 1.5  # seconds for the reachability check: the whole "offline" verdict stays < 2 s
_MD5_ETAG = re.compile(r'^"?([0-9a-fA-F]{32})"?$')


class OfflineError(CpDistillerError):
    """A remote service cannot be reached (no network, DNS failure, firewall)."""


class RemoteFileMissing(CpDistillerError):
    """The server answered 404 for a file."""


@dataclass(frozen=True)
class RemoteFile:
    url: str
    size: int | None
    md5: str | None  # from the ETag when it is a plain MD5


def _proxy_for(url: str) -> str | None:
    scheme = urlsplit(url).scheme
    host = urlsplit(url).hostname or ""
    no_proxy = os.environ.get("no_proxy") or os.environ.get("NO_PROXY") or ""
    if host in {h.strip() for h in no_proxy.split(",") if h.strip()} or host in ("127.0.0.1", "localhost"):
        return None
    return os.environ.get(f"{scheme}_proxy") or os.environ.get(f"{scheme.upper()}_PROXY")


def check_reachable(url: str, timeout: float = DEFAULT_TIMEOUT, what: str = "the server") -> None:
    """Raise OfflineError within ~``timeout`` s unless a TCP connection to the URL's host (or proxy) opens.

    The attempt runs in a daemon thread: a name lookup that hangs (getaddrinfo has no timeout of its
    own) is abandoned, and never keeps the process alive after the error (no join at exit).
    """
    target = _proxy_for(url) or url
    parts = urlsplit(target)
    host = parts.hostname
    if not host:
        raise CpDistillerError(f"not a URL: {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    outcome: list[BaseException | None] = []
    done = threading.Event()

    def connect() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                pass
            outcome.append(None)
        except OSError as exc:
            outcome.append(exc)
        finally:
            done.set()

    threading.Thread(target=connect, name="cpdistiller-reachability", daemon=True).start()
    if not done.wait(timeout + 0.2):
        raise OfflineError(f"cannot reach {what} at {host}:{port} (no answer within {timeout:g} s, name lookup "
                           "included); are you offline?")
    exc = outcome[0]
    if exc is not None:
        reason = str(exc) or type(exc).__name__
        raise OfflineError(f"cannot reach {what} at {host}:{port} ({reason}); are you offline?")


class NoAccessError(OfflineError):
    """The network answers, but every request to a service is refused (HTTP 4xx/5xx), e.g. by a proxy."""


def check_http(url: str, what: str, *, method: str = "GET", timeout: float = 5.0, **kwargs) -> None:
    """One request to ``url`` (no retries, bounded time): raise :class:`NoAccessError` when it is answered
    with HTTP 4xx/5xx (an intercepting proxy or firewall answers so for every request), OfflineError
    when it fails or gets no answer in time."""
    host = urlsplit(url).hostname or url
    try:
        resp = requests.request(method, url, timeout=(min(timeout, DEFAULT_TIMEOUT * 2), timeout), **kwargs)
    except requests.Timeout:
        raise OfflineError(f"no access to {what}: {host} did not answer within {timeout:g} s.") from None
    except requests.exceptions.ProxyError as exc:  # e.g. an HTTPS tunnel (CONNECT) refused with 403
        code = re.search(r"Tunnel connection failed: ([45]\d\d)", str(exc))
        answer = f"answers HTTP {code.group(1)}" if code else "refuses the connection"
        raise NoAccessError(f"no access to {what}: the proxy {answer} for {host} (a proxy or firewall may be "
                            "blocking it).") from None
    except requests.RequestException as exc:
        raise OfflineError(f"no access to {what}: the request to {host} failed ({type(exc).__name__}).") from None
    if resp.status_code >= 400:
        via = " through the proxy" if _proxy_for(url) else ""
        raise NoAccessError(f"no access to {what}: requests to {host}{via} are answered HTTP {resp.status_code} "
                            f"{resp.reason or ''}".rstrip() + " (a proxy or firewall may be blocking it).")


def make_session(retries: int = 2) -> requests.Session:
    """A requests session with connection-level retries (not for 4xx)."""
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    session = requests.Session()
    retry = Retry(total=retries, connect=retries, read=0, backoff_factor=0.2,
                  status_forcelist=(500, 502, 503, 504), allowed_methods=("GET", "HEAD"))
    adapter = HTTPAdapter(max_retries=retry, pool_maxsize=16)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def remote_info(session: requests.Session, url: str, timeout: float = 30.0) -> RemoteFile:
    """HEAD a URL: size and MD5 (when the ETag is one)."""
    try:
        resp = session.head(url, timeout=timeout, allow_redirects=True)
    except requests.RequestException as exc:
        raise OfflineError(f"cannot reach {url}: {exc}") from None
    if resp.status_code == 404:
        raise RemoteFileMissing(f"not found on the server: {url}")
    if resp.status_code >= 400:
        raise CpDistillerError(f"{url}: HTTP {resp.status_code}")
    size = resp.headers.get("Content-Length")
    m = _MD5_ETAG.match(resp.headers.get("ETag", "").strip())
    return RemoteFile(url, int(size) if size and size.isdigit() else None, m.group(1).lower() if m else None)


def _md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _meta_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".meta.json")


def is_cached(dest: Path) -> bool:
    """True when ``dest`` was downloaded and verified earlier (a sidecar records the check)."""
    meta = _meta_path(dest)
    if not (dest.is_file() and meta.is_file()):
        return False
    try:
        info = json.loads(meta.read_text())
    except (OSError, ValueError):
        return False
    return info.get("size") == dest.stat().st_size


def download(
    url: str,
    dest: Path,
    *,
    session: requests.Session | None = None,
    expected: RemoteFile | None = None,
    attempts: int = 3,
    timeout: float = 60.0,
    on_bytes: Callable[[int], None] | None = None,
) -> Path:
    """Download ``url`` to ``dest`` (resumable, verified); returns ``dest``. A verified cached copy is reused."""
    dest = Path(dest)
    if is_cached(dest):
        return dest
    session = session or make_session()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    last_error = ""
    for _attempt in range(attempts):
        have = part.stat().st_size if part.exists() else 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        try:
            with session.get(url, headers=headers, stream=True, timeout=timeout) as resp:
                if resp.status_code == 404:
                    raise RemoteFileMissing(f"not found on the server: {url}")
                if resp.status_code == 416:  # range past the end: the part file is complete or bad
                    pass
                elif resp.status_code >= 400:
                    raise CpDistillerError(f"{url}: HTTP {resp.status_code}")
                else:
                    mode = "ab" if resp.status_code == 206 and have else "wb"
                    with open(part, mode) as fh:
                        for chunk in resp.iter_content(chunk_size=CHUNK):
                            fh.write(chunk)
                            if on_bytes:
                                on_bytes(len(chunk))
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
            last_error = f"interrupted ({type(exc).__name__})"
            time.sleep(0.1)
            continue  # keep the part file: the next attempt resumes from it
        problem = _verify(part, expected)
        if problem is None:
            md5 = _md5(part)
            os.replace(part, dest)
            _meta_path(dest).write_text(json.dumps({"url": url, "size": dest.stat().st_size, "md5": md5}))
            return dest
        last_error = problem
        part.unlink(missing_ok=True)  # corrupt: start over
    raise CpDistillerError(f"download of {url} failed after {attempts} attempts: {last_error}")


def _verify(part: Path, expected: RemoteFile | None) -> str | None:
    if not part.exists():
        return "no data received"
    if expected is None:
        return None
    size = part.stat().st_size
    if expected.size is not None and size != expected.size:
        return f"size {size} bytes, expected {expected.size}"
    if expected.md5 is not None:
        got = _md5(part)
        if got != expected.md5:
            return f"checksum mismatch (MD5 {got}, server says {expected.md5}): corrupt file"
    return None
