"""The Streamlit dashboard's own code: session state, uploads and widgets shared by the pages (app side)."""
