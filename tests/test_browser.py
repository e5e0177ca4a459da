"""The real app in a real browser: start `streamlit run app.py` on 127.0.0.1, drive Debian's Chromium with
Playwright through the demo flow (Home -> Load -> Correct -> verdict -> Explorer -> Plate maps (controls) ->
Gene clusters -> Retrieval) and the cell_injury upload flow, and save a screenshot of every step under
test-artifacts/browser/."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "test-artifacts" / "browser"
CELL_INJURY = REPO.parent / "shared" / "data" / "cell_injury" / "fs_plate_holdout.csv.gz"

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    if not CHROMIUM.exists():
        pytest.skip("Debian's Chromium is not installed at /usr/bin/chromium (apt-get install chromium)")
    pytest.importorskip("playwright.sync_api", reason="playwright (python) is not installed")
    home = tmp_path_factory.mktemp("app_home")
    port = _free_port()
    env = dict(os.environ, CPDISTILLER_HOME=str(home / "data"), CPDISTILLER_CACHE=str(home / "cache"),
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    log = open(home / "streamlit.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(REPO / "app.py"), "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false",
         "--server.fileWatcherType", "none"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            if proc.poll() is not None:
                pytest.fail(f"streamlit exited: {(home / 'streamlit.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.2)
        else:
            pytest.fail("the app did not answer /_stcore/health")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


RUNNING = ('[data-testid="stStatusWidgetRunningIcon"], [data-testid="stStatusWidgetRunningManIcon"], '
           '[data-testid="stSpinner"], [data-testid="stSkeleton"]')


def _idle(page, timeout: float = 120_000) -> None:
    """Wait until Streamlit has finished running the script (no running icon, no spinner)."""
    page.wait_for_timeout(500)
    page.wait_for_function(f"() => !document.querySelector('{RUNNING}')", timeout=timeout)
    page.wait_for_timeout(300)


def _shot(page, name: str) -> Path:
    """Screenshot the whole page: Streamlit scrolls inside its main block, so grow the viewport to fit it."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.mouse.move(5, 995)  # no tooltip over the content
    height = page.evaluate("() => { const m = document.querySelector('[data-testid=\"stMain\"]');"
                           " return m ? m.scrollHeight : document.body.scrollHeight; }")
    page.set_viewport_size({"width": 1440, "height": int(min(max(height, 1000) + 40, 7000))})
    page.wait_for_timeout(2000)  # tables draw on a canvas after the resize
    page.screenshot(path=str(path), full_page=True)
    page.set_viewport_size({"width": 1440, "height": 1000})
    return path


def _open(playwright):
    """Debian's Chromium, headless, one page; JavaScript errors on the page are collected."""
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                         args=["--headless", "--no-sandbox", "--disable-gpu",
                                               "--disable-background-networking"])
    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    return browser, page, errors


def _run_short_correction(page) -> None:
    """On the Correct page: 3 epochs, start, wait until the run has finished."""
    from playwright.sync_api import expect

    epochs = page.get_by_role("spinbutton", name="Epochs", exact=True)
    epochs.fill("3")
    epochs.press("Tab")
    page.get_by_role("button", name="Start correction").click()
    expect(page.get_by_text("Finished in")).to_be_visible(timeout=240_000)
    _idle(page)


def _check_h5ad_download(page) -> None:
    """The h5ad download is the whole run: input features in X, the embedding, the corrected profiles."""
    import anndata

    with page.expect_download(timeout=120_000) as info:
        page.get_by_role("button", name="Embedding (h5ad)").click()
    path = ARTIFACTS / "download.h5ad"
    info.value.save_as(path)
    adata = anndata.read_h5ad(path)
    assert adata.n_obs == 4608 and adata.obsm["X_cpdistiller"].shape == (4608, 50)
    assert adata.layers["cpdistiller_corrected"].shape == adata.X.shape and adata.n_vars > 0
    path.unlink()


def test_demo_flow_in_chromium(app_url):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser, page, errors = _open(p)
        page.goto(app_url, wait_until="networkidle")
        expect(page.get_by_role("heading", name="cpDistiller")).to_be_visible(timeout=60_000)
        page.get_by_role("button", name="Load the built-in demo screen").click()
        expect(page.get_by_text("demo screen (seed 0)").first).to_be_visible(timeout=90_000)
        _idle(page)
        _shot(page, "1_home")

        page.get_by_role("link", name="Load profiles").first.click()
        expect(page.get_by_text("Quality summary")).to_be_visible(timeout=60_000)
        _idle(page)
        expect(page.locator(".js-plotly-plot").first).to_be_visible(timeout=60_000)
        _shot(page, "2_load_profiles")

        page.get_by_role("link", name="Correct").first.click()
        expect(page.get_by_role("button", name="Start correction")).to_be_visible(timeout=60_000)
        # the departures on by default are named on the expander and shown inside it
        page.get_by_text("on by default: Decoder sees, Mine neighbours in").click()
        expect(page.get_by_role("combobox", name="Mine neighbours in")).to_have_value("negcon_linear")
        expect(page.get_by_role("combobox", name="Decoder sees")).to_have_value("auto")
        _shot(page, "3a_correct_departures")
        _run_short_correction(page)
        # the verdict: corrected vs uncorrected, in words
        expect(page.get_by_text("Did it help?").first).to_be_visible(timeout=60_000)
        assert page.locator('[data-testid="stAlert"]').filter(has_text="Did it help?").count() >= 1
        _shot(page, "3_correct_verdict")
        assert page.get_by_role("button", name="Embedding (parquet)").is_visible()
        # the default embedding is the corrected input: its feature-space profiles are offered too
        assert page.get_by_role("button", name="Corrected profiles (csv)").is_visible()
        _check_h5ad_download(page)
        page.get_by_role("button", name="Compute").click()  # reference methods (uncorrected PCA, Harmony)
        expect(page.get_by_text("Available: harmony, uncorrected.")).to_be_visible(timeout=120_000)
        _idle(page)

        page.get_by_role("link", name="Home").first.click()
        expect(page.locator('[data-testid="stAlert"]').filter(has_text="Did it help?").first).to_be_visible(
            timeout=60_000)
        _idle(page)
        _shot(page, "3b_home_verdict")

        page.get_by_role("link", name="Embedding explorer").first.click()
        expect(page.get_by_text("Colour by")).to_be_visible(timeout=60_000)
        _idle(page)
        expect(page.locator(".js-plotly-plot").first).to_be_visible(timeout=60_000)
        page.wait_for_timeout(1500)
        _shot(page, "4_embedding_explorer")
        page.locator('[data-testid="stSelectbox"]').filter(has_text="Colour by").locator("input").click()
        page.get_by_role("option", name="column", exact=True).click()
        _idle(page)
        expect(page.locator(".js-plotly-plot .colorbar").first).to_be_visible(timeout=60_000)  # continuous scale
        page.wait_for_timeout(1000)
        _shot(page, "4b_embedding_explorer_by_column")

        page.get_by_role("link", name="Plate maps").first.click()
        expect(page.get_by_text("Variance explained by technical labels")).to_be_visible(timeout=60_000)
        _idle(page)
        page.wait_for_timeout(1500)
        assert page.locator(".js-plotly-plot").count() >= 3
        expect(page.get_by_text("Default: all wells: treatments move between positions")).to_be_visible()
        _shot(page, "5_plate_maps")
        page.get_by_text("negative controls", exact=True).first.click()  # the switch every plot follows
        _idle(page)
        expect(page.get_by_text("(negative wells)").first).to_be_visible(timeout=60_000)
        page.wait_for_timeout(1000)
        _shot(page, "5b_plate_maps_negative_controls")

        page.get_by_role("link", name="Gene clusters").first.click()
        expect(page.get_by_role("button", name="Run analysis")).to_be_visible(timeout=60_000)
        perms = page.get_by_role("spinbutton", name="Permutations")
        perms.fill("100")
        perms.press("Tab")
        page.get_by_role("button", name="Run analysis").click()
        expect(page.get_by_text("Results for").first).to_be_visible(timeout=300_000)
        _idle(page, 300_000)
        page.wait_for_timeout(1500)
        _shot(page, "6_gene_clusters")

        page.get_by_role("link", name="Retrieval").first.click()
        expect(page.get_by_text("Scorecard of methods")).to_be_visible(timeout=60_000)
        _idle(page)
        page.wait_for_timeout(1000)
        _shot(page, "7_retrieval")
        assert not page.get_by_text("Traceback").count()
        browser.close()
    assert not errors, errors


def test_cell_injury_upload_defaults_plate_maps_to_controls(app_url):
    """A real screen whose layout ties treatments to rows: uploaded through the Load page, its plate maps
    open on the negative controls and say why."""
    if not CELL_INJURY.is_file():
        pytest.skip(f"{CELL_INJURY} is absent (the shared data sets live beside the repository)")
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser, page, errors = _open(p)
        page.goto(app_url, wait_until="networkidle")
        expect(page.get_by_role("heading", name="cpDistiller")).to_be_visible(timeout=60_000)
        _idle(page)
        page.get_by_role("link", name="Load profiles").first.click()
        expect(page.get_by_role("heading", name="Load profiles")).to_be_visible(timeout=60_000)
        page.locator('[data-testid="stFileUploaderDropzoneInput"]').first.set_input_files(str(CELL_INJURY))
        expect(page.get_by_role("button", name="Read uploaded files")).to_be_enabled(timeout=60_000)
        _idle(page)
        page.get_by_role("button", name="Read uploaded files").click()
        expect(page.get_by_text("Quality summary")).to_be_visible(timeout=120_000)
        _idle(page)
        expect(page.get_by_text("fs_plate_holdout.csv.gz").first).to_be_visible()
        _shot(page, "8_cell_injury_load")
        page.get_by_role("link", name="Plate maps").first.click()
        expect(page.get_by_text("Default: negative controls: the layout ties treatments to their row")).to_be_visible(
            timeout=60_000)
        _idle(page)
        page.wait_for_timeout(1000)
        _shot(page, "9_cell_injury_plate_maps")
        # a short correction: the page says what the fit left out and why (tied rows, the dose column), and what it did instead
        page.get_by_role("link", name="Correct").first.click()
        expect(page.get_by_role("button", name="Start correction")).to_be_visible(timeout=60_000)
        _run_short_correction(page)
        expect(page.get_by_text("sets 'Compound Concentration (microMolar)'").first).to_be_visible(timeout=60_000)
        # the tied row is not corrected by the model; the controls' additive row effect is removed instead
        expect(page.get_by_text("Instead of correcting row with the model").first).to_be_visible()
        _shot(page, "10_cell_injury_correct_notes")
        assert not page.get_by_text("Traceback").count()
        browser.close()
    assert not errors, errors
