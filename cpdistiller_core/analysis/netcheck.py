"""Reachability of Enrichr / ARCHS4 before a library call that would retry for tens of seconds.

gseapy and gget retry or wait when offline; this asks :func:`cpdistiller_core.net.check_reachable`
(one TCP connection, name lookup included, hard deadline) so callers fail in well under 2 seconds
with a message that says how to work with local files instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..net import DEFAULT_TIMEOUT, OfflineError, check_http, check_reachable


def reachable(url: str, timeout: float = DEFAULT_TIMEOUT) -> bool:
    """True when a TCP connection to the URL's host (or proxy) opens within ``timeout`` seconds."""
    try:
        check_reachable(url, timeout=timeout)
    except OfflineError:
        return False
    return True


def require(url: str, service: str, hint: str, timeout: float = DEFAULT_TIMEOUT,
            probe: Mapping[str, Any] | None = None) -> None:
    """Raise :class:`OfflineError` naming ``service`` and how to work offline when it is unreachable.

    ``probe``: also send one request (``check_http`` arguments: url, method, json…) and treat an HTTP
    4xx/5xx answer (a proxy refusing everything) as "no access to <service>"."""
    try:
        check_reachable(url, timeout=timeout, what=service)
        if probe is not None:
            args = dict(probe)
            check_http(args.pop("url", url), service, **args)
    except OfflineError as exc:
        raise type(exc)(f"{exc} {hint}") from None
