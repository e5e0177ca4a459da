"""Reachability of Enrichr / ARCHS4 before a library call that would retry for tens of seconds.

gseapy and gget retry or wait when offline; this asks :func:`cpdistiller_core.net.check_reachable`
(one TCP connection, name lookup included, hard deadline) so callers fail in well under 2 seconds
with a message that says how to work with local files instead.
"""

from __future__ import annotations

from ..net import DEFAULT_TIMEOUT, OfflineError, check_reachable


def reachable(url: str, timeout: float = DEFAULT_TIMEOUT) -> bool:
    """True when a TCP connection to the URL's host (or proxy) opens within ``timeout`` seconds."""
    try:
        check_reachable(url, timeout=timeout)
    except OfflineError:
        return False
    return True


def require(url: str, service: str, hint: str, timeout: float = DEFAULT_TIMEOUT) -> None:
    """Raise :class:`OfflineError` naming ``service`` and how to work offline when it is unreachable."""
    try:
        check_reachable(url, timeout=timeout, what=service)
    except OfflineError as exc:
        raise OfflineError(f"{exc} {hint}") from None
