"""Who may use the dashboard and what it may read on the server (no Streamlit here).

- Serving: the dashboard binds to 127.0.0.1. Serving it to other machines (``make serve``,
  ``python -m cpdistiller_core.access``) is refused unless authentication is configured: a password
  (environment variable ``CPDISTILLER_PASSWORD``, or ``password`` in ``.streamlit/secrets.toml``),
  compared in constant time, or an identity provider for Streamlit's ``st.login`` (an ``[auth]``
  section in secrets.toml).
- Server files: the dashboard reads files typed as server paths only under the data root
  ``CPDISTILLER_DATA_ROOT`` (unset: no server paths at all, uploads and the demo only). Symlinks and
  ``..`` are resolved before the check, so neither leads out of it.
- Limits: per-session workspace quota, concurrent jobs, upload age, all overridable by environment
  variables (see :class:`Limits`).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import ipaddress
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import CpDistillerError

PASSWORD_ENV = "CPDISTILLER_PASSWORD"
DATA_ROOT_ENV = "CPDISTILLER_DATA_ROOT"
SECRETS_FILES = (Path(".streamlit") / "secrets.toml", Path.home() / ".streamlit" / "secrets.toml")


# ----- authentication -----------------------------------------------------------------------------
def password_matches(given: str | None, expected: str | None) -> bool:
    """Constant-time password check (``hmac.compare_digest`` on SHA-256 digests, so neither the
    content nor the length of the expected password leaks through timing). No password: False."""
    if not given or not expected:
        return False
    a = hashlib.sha256(given.encode("utf-8")).digest()
    b = hashlib.sha256(expected.encode("utf-8")).digest()
    return hmac.compare_digest(a, b)


def read_secrets(paths: Sequence[Path] = SECRETS_FILES) -> dict[str, Any]:
    """The first ``secrets.toml`` found (project folder, then home); {} when there is none."""
    import tomllib

    for path in paths:
        if Path(path).is_file():
            try:
                return tomllib.loads(Path(path).read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise CpDistillerError(f"{path}: unreadable secrets file ({exc}).") from None
    return {}


def configured_password(secrets: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None) -> str | None:
    """The dashboard password: ``$CPDISTILLER_PASSWORD``, else ``password`` in secrets.toml."""
    env = os.environ if env is None else env
    value = env.get(PASSWORD_ENV) or (secrets or {}).get("password")
    return str(value) if value else None


def identity_provider_configured(secrets: Mapping[str, Any] | None) -> bool:
    """Whether secrets.toml configures Streamlit's ``st.login`` (an ``[auth]`` section with a redirect
    URI, a cookie secret and a client id, directly or for a named provider)."""
    auth = (secrets or {}).get("auth")
    if not isinstance(auth, Mapping) or not auth.get("redirect_uri") or not auth.get("cookie_secret"):
        return False
    providers = [auth] + [v for v in auth.values() if isinstance(v, Mapping)]
    return any(p.get("client_id") and p.get("server_metadata_url") for p in providers)


def login_provider(secrets: Mapping[str, Any] | None) -> str | None:
    """The provider name to pass to ``st.login``: None for a provider configured directly in ``[auth]``,
    else the first ``[auth.<name>]`` section that is complete."""
    auth = (secrets or {}).get("auth") or {}
    if auth.get("client_id") and auth.get("server_metadata_url"):
        return None
    return next((k for k, v in auth.items() if isinstance(v, Mapping) and v.get("client_id")
                 and v.get("server_metadata_url")), None)


def auth_mode(secrets: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None) -> str | None:
    """'oidc' (st.login), 'password', or None when no authentication is configured."""
    if identity_provider_configured(secrets):
        return "oidc"
    if configured_password(secrets, env):
        return "password"
    return None


def is_loopback(address: str | None) -> bool:
    """Whether a bind address only accepts connections from this machine (empty = every interface)."""
    if not address:
        return False
    if address.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def check_serving(address: str, secrets: Mapping[str, Any] | None = None,
                  env: Mapping[str, str] | None = None) -> str | None:
    """Refuse to serve beyond this machine without authentication; returns the auth mode (None on loopback
    without authentication)."""
    mode = auth_mode(secrets, env)
    if not is_loopback(address) and mode is None:
        raise CpDistillerError(
            f"refusing to serve the dashboard on {address or 'every interface'} without authentication: set "
            f"{PASSWORD_ENV} (or 'password' in .streamlit/secrets.toml), or configure an identity provider "
            "in an [auth] section of .streamlit/secrets.toml. See docs/deployment.md.")
    return mode


# ----- server paths -------------------------------------------------------------------------------
def data_root(env: Mapping[str, str] | None = None) -> Path | None:
    """The folder server paths must lie in (``$CPDISTILLER_DATA_ROOT``, symlinks resolved); None: unset."""
    env = os.environ if env is None else env
    value = env.get(DATA_ROOT_ENV)
    return Path(value).expanduser().resolve() if value else None


def under_data_root(item: str, kind: str = "file", root: Path | None = None) -> Path:
    """The resolved path of ``item`` (absolute, or relative to the data root) if it lies under the root.

    ``kind``: 'file', 'dir' or 'any'. Outside the root (after resolving symlinks and ``..``), with no
    root configured, or not of the right kind: a CpDistillerError that does not say whether the path
    exists elsewhere.
    """
    root = data_root() if root is None else root
    text = str(item).strip().strip('"').strip("'")
    if root is None:
        raise CpDistillerError(
            "reading files on the server is turned off: upload the files instead, or ask the administrator "
            f"to set {DATA_ROOT_ENV} to the folder holding your data.")
    if not text:
        raise CpDistillerError("give a path under the data root.")
    candidate = Path(text).expanduser()
    if not candidate.is_absolute():
        candidate = root / candidate
    path = candidate.resolve()
    if path != root and root not in path.parents:
        raise CpDistillerError(f"{text}: outside the data root ({root}); only files under it can be read.")
    if kind == "file" and not path.is_file():
        raise CpDistillerError(f"{text}: no such file under the data root.")
    if kind == "dir" and not path.is_dir():
        raise CpDistillerError(f"{text}: no such folder under the data root.")
    if kind == "any" and not path.exists():
        raise CpDistillerError(f"{text}: not found under the data root.")
    return path


# ----- limits -------------------------------------------------------------------------------------
def _env_number(name: str, default: float, env: Mapping[str, str]) -> float:
    value = env.get(name)
    if value is None or value == "":
        return default
    try:
        return float(value)
    except ValueError:
        raise CpDistillerError(f"{name}={value!r}: expected a number.") from None


@dataclass(frozen=True)
class Limits:
    """Per-session and server-wide limits of the dashboard (environment variables in brackets).

    ``workspace_mb`` [CPDISTILLER_WORKSPACE_MB]: uploads + runs of one session; ``max_jobs``
    [CPDISTILLER_MAX_JOBS]: jobs running at once on the server; ``max_jobs_per_session``
    [CPDISTILLER_MAX_JOBS_PER_SESSION]; ``upload_max_age_h`` [CPDISTILLER_UPLOAD_MAX_AGE_H]: uploads
    older than this are deleted; ``max_cells`` [CPDISTILLER_MAX_CELLS]: wells x features of one dataset.
    """

    workspace_mb: float = 4096
    max_jobs: int = 2
    max_jobs_per_session: int = 1
    upload_max_age_h: float = 24
    max_cells: float = 200e6

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Limits:
        env = os.environ if env is None else env
        d = cls()
        return cls(workspace_mb=_env_number("CPDISTILLER_WORKSPACE_MB", d.workspace_mb, env),
                   max_jobs=int(_env_number("CPDISTILLER_MAX_JOBS", d.max_jobs, env)),
                   max_jobs_per_session=int(_env_number("CPDISTILLER_MAX_JOBS_PER_SESSION",
                                                        d.max_jobs_per_session, env)),
                   upload_max_age_h=_env_number("CPDISTILLER_UPLOAD_MAX_AGE_H", d.upload_max_age_h, env),
                   max_cells=_env_number("CPDISTILLER_MAX_CELLS", d.max_cells, env))


# ----- `make serve` -------------------------------------------------------------------------------
def serve_command(address: str, port: int, app: str = "app.py", extra: Sequence[str] = ()) -> list[str]:
    """The ``streamlit run`` command line for serving on ``address:port``.

    ``browser.serverAddress`` names this host: otherwise, on a wildcard address, Streamlit asks an
    internet service for the machine's external IP at start-up."""
    import socket

    return [sys.executable, "-m", "streamlit", "run", app, "--server.address", address, "--server.port", str(port),
            "--server.headless", "true", "--browser.gatherUsageStats", "false",
            "--browser.serverAddress", socket.gethostname() if address in ("0.0.0.0", "::", "") else address, *extra]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m cpdistiller_core.access --address 0.0.0.0 --port 8501``: check, then start Streamlit."""
    parser = argparse.ArgumentParser(prog="python -m cpdistiller_core.access",
                                     description="Serve the dashboard to other machines (authentication required).")
    parser.add_argument("--address", default="0.0.0.0", help="bind address (default 0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=8501)
    parser.add_argument("--check", action="store_true", help="only check the configuration, do not start")
    args, extra = parser.parse_known_args(argv)
    try:
        mode = check_serving(args.address, read_secrets())
    except CpDistillerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    root = data_root()
    print(f"serving on {args.address}:{args.port} with {mode or 'no'} authentication; server paths: "
          f"{root or 'off (uploads and the demo only)'}", file=sys.stderr)
    if args.check:
        return 0
    cmd = serve_command(args.address, args.port, extra=extra)
    os.execv(cmd[0], cmd)
    return 0  # pragma: no cover - execv does not return


if __name__ == "__main__":
    sys.exit(main())
