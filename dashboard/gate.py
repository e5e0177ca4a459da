"""Every page runs through app.py, so its access check and workspace set-up always come first.

Streamlit runs a file of ``pages/`` on its own when a browser opens that page's address directly
(its older multipage mode), which would skip ``app.py``'s password or login gate. app.py marks each of
its runs; a page run without the mark is sent to app.py instead of being drawn.
"""

from __future__ import annotations

import streamlit as st

VIA_APP_KEY = "_cpd_via_app"


def through_app() -> None:
    """Call first on every page: go to app.py (and its access check) unless this run came through it."""
    if not st.session_state.get(VIA_APP_KEY):
        st.switch_page("app.py")
