"""Dashboard responsiveness on a large screen: Load, Embedding explorer (PCA) and Plate maps.

    .venv/bin/python benchmarks/bench_dashboard.py [--wells 100000] [--features 1446]

Writes a JUMP-sized screen (``make_scale_screen.py``) and drives the real app with Streamlit's
``AppTest`` (the page scripts as the server runs them, figures built and serialised, no browser):
Load page → "Server path" → Read files; Embedding explorer (PCA, the default projection, density
view above 50,000 wells); Plate maps. Each step is timed from the click or page switch to the end of
the script run; the second visit of each page shows what its caches save. Browser rendering (plotly
WebGL) is not included. Issue 18's targets: Load ≤ 30 s, Explorer PCA ≤ 5 s, plate maps ≤ 5 s.
Prints a markdown table; nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from make_scale_screen import write_screen  # noqa: E402

APP = str(REPO / "app.py")
PAGES = {"explorer": "pages/3_Embedding_explorer.py", "plates": "pages/4_Plate_maps.py"}


def _timed(step: str, action, rows: list[tuple[str, float, str]]) -> object:
    t = time.perf_counter()
    at = action()
    seconds = time.perf_counter() - t
    problems = [e.value for e in at.error] + ([str(at.exception)] if at.exception else [])
    rows.append((step, seconds, "; ".join(str(p)[:120] for p in problems) or "ok"))
    print(f"{step}: {seconds:.1f} s {rows[-1][2]}", flush=True)
    return at


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wells", type=int, default=100_000)
    ap.add_argument("--features", type=int, default=1446)
    args = ap.parse_args(argv)
    from streamlit.testing.v1 import AppTest

    with tempfile.TemporaryDirectory() as tmp:
        screen = Path(tmp) / "screen.parquet"
        info = write_screen(screen, args.wells, args.features)
        os.environ["CPDISTILLER_DATA_ROOT"] = tmp
        os.environ["CPDISTILLER_CACHE"] = str(Path(tmp) / "cache")
        rows: list[tuple[str, float, str]] = []
        at = AppTest.from_file(APP, default_timeout=1800)
        at.run()
        at.switch_page("pages/1_Load_profiles.py").run()
        at.text_area(key="load_paths").set_value(str(screen))
        _timed("Load: read files", at.button(key="load_read_paths").click().run, rows)
        for visit in ("first", "second"):  # AppTest runs in place: the same ``at`` throughout
            _timed(f"Embedding explorer, PCA ({visit} visit)", at.switch_page(PAGES["explorer"]).run, rows)
            _timed(f"Plate maps ({visit} visit)", at.switch_page(PAGES["plates"]).run, rows)
    wells = info.get("wells", args.wells) if isinstance(info, dict) else args.wells
    print(f"\n{wells:,} wells x {args.features} features (AppTest, server side; no browser rendering)\n")
    print("| step | seconds | result |\n|---|---|---|")
    for step, seconds, result in rows:
        print(f"| {step} | {seconds:.1f} | {result} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
