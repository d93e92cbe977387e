"""End to end in a real browser: Debian chromium driven by Playwright against `streamlit run app.py`.

Uploads an image, a video with sound and a table, visits every page through the sidebar (one browser
session, so the uploaded product stays in session state), fails on any exception element, and saves
screenshots under test-output/. Skipped only when no chromium binary is found.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from app_fixtures import tiny_setup

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "test-output"
CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium") or "", shutil.which("chromium-browser") or "")
                 if p and Path(p).is_file()), None)
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PAGES = [("Modality scores", "Modality scores S and S′"), ("Masked prediction", "Masked prediction"),
         ("Embedding map", "Embedding map"), ("Modality contributions", "Modality contributions"),
         ("Retrieval", "Retrieval"), ("Training", "Training"), ("Catalog check", "Catalog check")]

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary found (/usr/bin/chromium); "
                                                         "install Debian's chromium to run the browser test")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _serve(featurizer, tmp_path_factory):
    """A new Streamlit server on the tiny checkpoint; yields (url, setup)."""
    setup = tiny_setup(featurizer)
    port = _free_port()
    env = dict(os.environ, SCALE_CHECKPOINT=str(setup.checkpoint), SCALE_CATALOG=str(setup.catalog),
               SCALE_MANIFEST=str(setup.manifest), SCALE_ROOTS=str(setup.checkpoint.parent), HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", SCALE_WORK=str(tmp_path_factory.mktemp("my-catalogs")))
    log = open(tmp_path_factory.mktemp("server") / "streamlit.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
                             "--server.port", str(port), "--server.address", "127.0.0.1",
                             "--browser.gatherUsageStats", "false"], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if urllib.request.urlopen(url + "/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                time.sleep(0.3)
        else:
            pytest.fail(f"streamlit did not start; see {log.name}")
        yield url, setup
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server's own process group, started above
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


@pytest.fixture(scope="module")
def server(featurizer, tmp_path_factory):
    with _serve(featurizer, tmp_path_factory) as served:
        yield served


@contextlib.contextmanager
def _browser_page(height: int, timeout: float):
    """One headless Chromium page (screenshots go to test-output/), closed afterwards."""
    from playwright.sync_api import sync_playwright

    OUT.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": height})
            page.set_default_timeout(timeout)
            yield page
        finally:
            browser.close()


def _wait_idle(page, timeout: float = 60_000) -> None:
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]', timeout=timeout)
    page.wait_for_timeout(300)


def _no_exception(page, where: str) -> None:
    print(f"[browser] {where} ok at {time.time():.1f}")
    n = page.locator('[data-testid="stException"]').count()
    assert n == 0, f"{where}: {page.locator('[data-testid=stException]').first.inner_text()}"


def test_browser_upload_and_every_page(server, tmp_path):
    from playwright.sync_api import sync_playwright

    from core.data.synth import COLORS, spin_frames, tone, write_image, write_video, draw_shape

    url, _ = server
    OUT.mkdir(exist_ok=True)
    img = write_image(tmp_path / "badge.png", draw_shape("circle", COLORS["red"], 200))
    vid = write_video(tmp_path / "spin.mp4", spin_frames("circle", COLORS["red"], 2.0), audio=tone(330.0, 2.0))
    table = tmp_path / "attrs.csv"
    table.write_text("key,value\ncolor,Red\nshape,circle\nsize,M\n")
    t0 = time.time()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 2000})
            page.set_default_timeout(90_000)  # generous: CI cores may be shared; the waits guard hangs, not speed
            page.goto(url, timeout=60_000)
            page.get_by_role("heading", name="SCALE Explorer").wait_for(timeout=60_000)
            _wait_idle(page, 90_000)
            _no_exception(page, "home")
            page.screenshot(path=str(OUT / "0_home.png"))

            page.get_by_role("link", name="Upload and inspect").first.click()
            page.get_by_role("heading", name="Upload and inspect").wait_for()
            _wait_idle(page)
            page.get_by_label("Title", exact=True).fill("Red round badge")
            page.keyboard.press("Enter")
            _wait_idle(page)
            for label, path in (("Image(s)", img), ("Video", vid), ("Table file", table)):
                box = page.locator('[data-testid="stFileUploader"]').filter(has_text=label).first
                box.locator('input[type="file"]').set_input_files(str(path))
                _wait_idle(page)
            page.get_by_role("button", name="Analyze this product").click()
            page.get_by_text("Analyzed").wait_for(timeout=60_000)
            _wait_idle(page)
            _no_exception(page, "upload")
            assert page.locator('[data-testid="stAlertContentError"]').count() == 0
            page.screenshot(path=str(OUT / "1_upload_and_inspect.png"))

            for i, (link, heading) in enumerate(PAGES, start=2):
                page.locator('[data-testid="stSidebarNav"]').get_by_role("link", name=link).click()
                page.get_by_role("heading", name=heading).first.wait_for(timeout=60_000)
                _wait_idle(page, 90_000)
                _no_exception(page, link)
                page.screenshot(path=str(OUT / f"{i}_{link.replace(' ', '_').lower()}.png"))
        finally:
            browser.close()
    print(f"[browser] home + upload + 6 pages in {time.time() - t0:.0f} s")  # about 75-90 s on 2 busy cores


def test_browser_gallery_click_opens_scores(server):
    """The demo path: Home -> click a gallery product -> its modality scores with the takeaway -> every page
    (the Catalog check listing products), with a screenshot of each for that product."""
    url, _ = server
    with _browser_page(2000, 90_000) as page:
        page.goto(url, timeout=60_000)
        page.get_by_role("heading", name="Try a product").wait_for(timeout=60_000)
        _wait_idle(page, 90_000)
        nav = page.locator('[data-testid="stSidebarNav"]')
        assert nav.get_by_role("link", name="Home").count() == 1  # the home entry says Home, not "app"
        page.screenshot(path=str(OUT / "gallery_0_home.png"))
        page.get_by_role("button", name="Open").first.click()
        page.get_by_role("heading", name="Modality scores").first.wait_for(timeout=90_000)
        _wait_idle(page, 90_000)
        _no_exception(page, "scores after a gallery click")
        page.locator('[data-testid="stPlotlyChart"]').first.wait_for(timeout=90_000)  # S is drawn
        # the takeaway line places the product's weakest pair among the catalog's products
        page.get_by_text("catalog products with both", exact=False).first.wait_for(timeout=60_000)
        page.screenshot(path=str(OUT / "gallery_2_modality_scores.png"))
        for i, (link, heading) in enumerate([("Upload and inspect", "Upload and inspect"), *PAGES[1:]], start=1):
            nav.get_by_role("link", name=link).click()
            page.get_by_role("heading", name=heading).first.wait_for(timeout=60_000)
            _wait_idle(page, 90_000)
            _no_exception(page, f"gallery product on {link}")
            if link == "Catalog check":  # it lists the catalog's products, weakest agreement first
                page.locator('[data-testid="stDataFrame"]').first.wait_for(timeout=60_000)
            page.screenshot(path=str(OUT / f"gallery_{i}_{link.replace(' ', '_').lower()}.png"))


def test_browser_use_my_catalog_opened_by_its_url(server):
    """A new session opens "Use my catalog" by its URL (the sidebar's first entry still says Home), picks the
    test manifest by typing its name into the picker, embeds it, and Retrieval then searches that catalog."""
    url, setup = server
    with _browser_page(1600, 120_000) as page:
        page.goto(url + "/Use_my_catalog", timeout=60_000)
        page.get_by_role("heading", name="Use my catalog").first.wait_for()
        _wait_idle(page, 120_000)
        nav = page.locator('[data-testid="stSidebarNav"]')
        assert nav.get_by_role("link", name="Home").count() == 1
        assert nav.get_by_role("link", name="app").count() == 0
        picker = page.locator('[data-testid="stMain"]').get_by_role("combobox", name="Manifest")
        picker.click()
        picker.fill(setup.manifest.parent.name)  # the options are root-relative names; typing filters them
        page.get_by_role("option").filter(has_text=setup.manifest.parent.name).first.click()
        _wait_idle(page, 120_000)
        assert setup.manifest.parent.name in picker.input_value()
        page.get_by_role("button", name="Use my catalog").click()
        page.get_by_text("In use:", exact=False).first.wait_for(timeout=180_000)
        _wait_idle(page, 120_000)
        _no_exception(page, "use my catalog")
        shown = page.locator('[data-testid="stAlert"]').filter(has_text="In use:").first.inner_text()
        assert f"{len(setup.products):,} products embedded" in shown, shown
        page.screenshot(path=str(OUT / "my_catalog_in_use.png"))
        nav.get_by_role("link", name="Retrieval").click()
        page.get_by_role("heading", name="Retrieval").first.wait_for()
        _wait_idle(page, 120_000)
        _no_exception(page, "retrieval over my catalog")
        side = page.locator('[data-testid="stSidebar"]').inner_text()
        assert "my catalog" in side and f"{len(setup.products)} products" in side, side  # every page reads it
        page.screenshot(path=str(OUT / "my_catalog_retrieval.png"))


def test_eight_browser_sessions_at_once_each_get_their_own_S(server, tmp_path):
    """Load: 8 browser sessions on one server, each uploading a different product; every submit is sent
    before any result is awaited, so the server analyzes them side by side on its one shared model. Each
    session's takeaway (its least typical pair, S and percentile against the catalog) must equal the one
    computed for the same upload alone, and the server's peak RSS must stay under 3 GB."""
    from playwright.sync_api import sync_playwright

    from core.model.catalog import Catalog
    from core.explore.catalog_check import catalog_scores, s_centred, takeaway
    from core.explore.explorer import Explorer
    from core.data.synth import COLORS, draw_shape, write_image

    url, setup = server
    shapes = [(s, c) for s in ("circle", "square", "triangle", "star") for c in ("red", "blue")]
    uploads = []
    for k, (shape, colour) in enumerate(shapes):
        path = write_image(tmp_path / f"p{k}.png", draw_shape(shape, COLORS[colour], 200))
        uploads.append((f"{colour.title()} {shape} badge {k}", path))
    ex = Explorer.load(setup.checkpoint, "cpu")
    cs = catalog_scores(Catalog.load(setup.catalog), s_centred(ex.model.cfg))
    want = []
    for title, path in uploads:  # the reference: the same upload, analyzed alone
        product, decoded, errors = ex.product_from_inputs(title=title, images=[(path.name, path.read_bytes())])
        want.append(takeaway(ex.analyze(ex.features(decoded)).S, cs))
    assert len(set(want)) > 1  # the products differ, so a mixed-up session could not pass
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            pages = []
            for title, path in uploads:
                page = browser.new_context(viewport={"width": 1200, "height": 1400}).new_page()
                page.set_default_timeout(240_000)
                page.goto(url + "/Upload_and_inspect", timeout=120_000)
                page.get_by_role("heading", name="Upload and inspect").wait_for()
                _wait_idle(page, 240_000)
                page.get_by_label("Title", exact=True).fill(title)
                page.keyboard.press("Enter")
                _wait_idle(page, 240_000)
                box = page.locator('[data-testid="stFileUploader"]').filter(has_text="Image(s)").first
                box.locator('input[type="file"]').set_input_files(str(path))
                _wait_idle(page, 240_000)
                pages.append(page)
            for page in pages:  # all eight submits first
                page.get_by_role("button", name="Analyze this product").click()
            for k, page in enumerate(pages):
                page.get_by_text("Analyzed").wait_for()
                _wait_idle(page, 240_000)
                _no_exception(page, f"session {k} upload")
                page.locator('[data-testid="stSidebarNav"]').get_by_role("link", name="Modality scores").click()
                page.get_by_text("catalog products with both", exact=False).first.wait_for()
                _wait_idle(page, 240_000)
                shown = page.get_by_text("catalog products with both", exact=False).first.inner_text()
                assert want[k] in shown, (k, want[k], shown)
        finally:
            browser.close()
    pid = int(subprocess.run(["pgrep", "-f", "--", f"server.port {url.rsplit(':', 1)[1]}"], capture_output=True,
                             text=True).stdout.split()[0])
    hwm_kb = next(int(l.split()[1]) for l in open(f"/proc/{pid}/status") if l.startswith("VmHWM:"))
    print(f"[browser] 8 sessions: server peak RSS {hwm_kb / 2**20:.2f} GB")
    assert hwm_kb / 2**20 < 3.0, f"server peak RSS {hwm_kb / 2**20:.2f} GB"


def test_browser_the_first_click_on_a_page_url_opened_in_a_new_server_counts(featurizer, tmp_path_factory):
    """The first session of a new server opens a page by its URL and clicks a button first: the click must
    not be lost while the app's navigation replaces Streamlit's pages/-folder router (appkit._through_router).
    The build it starts shows its progress bar (or finishes at once on a small manifest)."""
    with _serve(featurizer, tmp_path_factory) as (url, setup), _browser_page(1600, 120_000) as page:
        page.goto(url + "/Use_my_catalog", timeout=60_000)
        page.get_by_role("heading", name="Use my catalog").first.wait_for()
        _wait_idle(page, 120_000)
        page.get_by_role("button", name="Use my catalog").click()
        started = page.locator('[data-testid="stProgress"], [data-testid="stAlert"]:has-text("In use:")')
        started.first.wait_for(timeout=30_000)
        _no_exception(page, "first click in a new server")
