"""Access and workspace, for app.py and for every page, so no page is reachable without them.

app.py runs them first and then the chosen page. Streamlit also runs a file of ``pages/`` on its own
when a browser opens that page's address directly (its older multipage mode), which would skip
app.py: :func:`through_app`, called first on every page, then runs the same checks itself.
Access (docs/deployment.md): bound to 127.0.0.1 the app is open to that machine; on any other address
it stops unless a password (``CPDISTILLER_PASSWORD`` or ``password`` in secrets.toml) or an identity
provider (``[auth]`` in secrets.toml) is configured.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import streamlit as st

from cpdistiller_core import access

from . import state as ds

VIA_APP_KEY = "_cpd_via_app"
AUTH_KEY = "cpd_authenticated"
ROOT = Path(__file__).resolve().parents[1]
PAGE_ICON = ROOT / "assets" / "icon.png"  # served by this app: no icon fetched from a font CDN


def configure_page() -> None:
    st.set_page_config(page_title="cpDistiller", page_icon=str(PAGE_ICON) if PAGE_ICON.is_file() else None,
                       layout="wide")


def through_app() -> None:
    """Call first on every page: unless app.py is running it, check access and set up the workspace here."""
    if st.session_state.get(VIA_APP_KEY):
        return
    configure_page()
    require_access()
    session_workspace()


def _secrets() -> dict:
    """secrets.toml as Streamlit sees it ({} when there is none)."""
    try:
        return st.secrets.to_dict()
    except Exception:  # noqa: BLE001 - no secrets file: Streamlit raises on access
        return {}


def require_access() -> None:
    """Stop the script unless this session may use the app (see the module docstring)."""
    secrets = _secrets()
    mode = access.auth_mode(secrets)
    address = st.get_option("server.address")
    if mode is None:
        if not access.is_loopback(address):
            st.error(f"This dashboard is bound to {address or 'every interface'} without authentication, so it "
                     "refuses to run. Set CPDISTILLER_PASSWORD or configure a login (docs/deployment.md).")
            st.stop()
        return
    if mode == "oidc":
        if not st.user.is_logged_in:
            st.title("cpDistiller")
            provider = access.login_provider(secrets)
            st.button("Log in", on_click=st.login, args=(provider,) if provider else (), type="primary",
                      key="auth_login")
            st.stop()
        return
    if st.session_state.get(AUTH_KEY):
        return
    st.title("cpDistiller")
    with st.form("auth_form"):
        given = st.text_input("Password", type="password", key="auth_password")
        ok = st.form_submit_button("Enter", type="primary")
    if ok and access.password_matches(given, access.configured_password(secrets)):
        st.session_state[AUTH_KEY] = True
        st.session_state.pop("auth_password", None)
        st.rerun()
    if ok:
        st.error("Wrong password.")
    st.stop()


def session_workspace() -> str:
    """This session's workspace id: from the logged-in identity, else carried in the URL (?ws=) so a
    reload keeps the session's uploads and runs."""
    if st.session_state.get(ds.SESSION_ID_KEY):
        return st.session_state[ds.SESSION_ID_KEY]
    sid = None
    try:
        if st.user.is_logged_in:
            who = str(st.user.get("sub") or st.user.get("email") or "")
            sid = hashlib.sha256(who.encode()).hexdigest()[:32] if who else None
    except Exception:  # noqa: BLE001 - no identity provider configured
        sid = None
    if sid is None:
        given = st.query_params.get("ws")
        sid = given if ds.valid_session_id(given) else ds.new_session_id()
        st.query_params["ws"] = sid
    st.session_state[ds.SESSION_ID_KEY] = sid
    ds.cleanup_old_uploads()
    return sid
