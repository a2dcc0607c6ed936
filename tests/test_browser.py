"""What a person sees: the built report in headless Chromium (Debian packages chromium, chromium-driver).

Skipped, with the reason, where Chromium is not installed. `.ci/run` installs it and sets GADLIB_REQUIRE_BROWSER=1,
under which a missing browser fails the tests instead: a green CI run is proof that they ran.
Screenshots go to the test's folder (and, with GADLIB_SCREENSHOTS=DIR, to DIR, where the good ones are
picked for docs/screenshots/).
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from gadlib.report import COURSE, build_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
REQUIRED = os.environ.get("GADLIB_REQUIRE_BROWSER") == "1"
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER) and not REQUIRED,
    reason="browser tests need headless Chromium: apt-get install chromium chromium-driver (as .ci/run does)")


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and DRIVER):
        pytest.fail("GADLIB_REQUIRE_BROWSER=1 but chromium or chromedriver is missing: "
                    "apt-get install chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1600"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _screenshot(driver, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    driver.save_screenshot(str(path))
    if os.environ.get("GADLIB_SCREENSHOTS"):
        Path(os.environ["GADLIB_SCREENSHOTS"]).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, Path(os.environ["GADLIB_SCREENSHOTS"]) / path.name)
    return path


def test_every_report_page_loads_shows_its_images_and_links_to_pages_that_exist(browser, tmp_path):
    report = build_report(tmp_path / "report")
    assert report.broken == []
    seen_images = 0
    for name in report.pages:
        browser.get((tmp_path / "report" / name).as_uri())
        _wait(browser, lambda d: d.execute_script("return document.readyState") == "complete", timeout=60,
              what=f"{name} to load")
        assert browser.title, f"{name} has no title"
        assert browser.find_elements("css selector", "nav a"), f"{name} has no navigation"
        broken_images = browser.execute_script(
            "return Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)")
        assert broken_images == [], f"{name}: images that do not show: {broken_images}"
        seen_images += browser.execute_script("return document.images.length")
        local = browser.execute_script(
            "return Array.from(document.querySelectorAll('a[href]')).map(a => a.href)"
            ".filter(h => h.startsWith('file:'))")
        for href in local:
            target = Path(href.split("#")[0].removeprefix("file://"))
            assert target.exists(), f"{name}: link to a missing file {href}"
    assert seen_images > 10                                   # the study's figures are there, and shown
    browser.get((tmp_path / "report" / "index.html").as_uri())
    assert "The study in one table" in browser.find_element("tag name", "main").text
    assert _screenshot(browser, tmp_path, "report_index").stat().st_size > 10_000


def test_the_course_can_be_followed_page_by_page_from_the_front(browser, tmp_path):
    build_report(tmp_path / "report")
    browser.get((tmp_path / "report" / "index.html").as_uri())
    visited = ["index"]
    for _ in COURSE:
        browser.find_element("css selector", ".pager a:last-child").click()
        visited.append(Path(browser.current_url).stem)
    assert visited == ["index"] + [page.slug for page in COURSE]
    _screenshot(browser, tmp_path, f"report_{COURSE[-1].slug}")


# -- the explorer in JupyterLab -------------------------------------------------------------------------------

def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tiny_suite, tmp_path_factory):
    """JupyterLab on a local port, serving the explorer notebook with parameters for the tiny suite."""
    import subprocess
    import sys
    import urllib.request

    import papermill

    root, _ = tiny_suite
    folder = tmp_path_factory.mktemp("lab")
    spec = f"synth:{root}"
    papermill.execute_notebook(str(Path(__file__).resolve().parents[1] / "notebooks" / "15_explorer.ipynb"),
                               str(folder / "15_explorer.ipynb"), prepare_only=True, progress_bar=False,
                               parameters=dict(dataset=spec, datasets=[spec], category="tile", shots=2,
                                               max_queries=4, image_size=64))
    port, token = _free_port(), "gadlib-test"
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("jupyter")), "lab", "--no-browser", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={folder}", "--ServerApp.ip=127.0.0.1",
         "--allow-root"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ))
    url = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    else:
        server.kill()
        pytest.fail("JupyterLab did not start")
    yield url, token
    server.terminate()
    server.wait(timeout=30)


def _wait(driver, condition, timeout=180, what="the page"):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.5).until(condition)
    except TimeoutException:
        where = Path(os.environ.get("GADLIB_SCREENSHOTS", "/tmp")) / "browser_timeout.png"
        driver.save_screenshot(str(where))
        pytest.fail(f"waited {timeout} s for {what}; the screen then: {where}")


def test_the_explorer_runs_in_jupyterlab_and_a_click_changes_the_view(browser, lab, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains

    url, token = lab
    browser.get(f"{url}/lab/tree/15_explorer.ipynb?token={token}")
    _wait(browser, lambda d: d.find_elements("css selector", ".jp-Notebook .jp-Cell"), what="the notebook")
    def kernel_ready(driver):
        for button in driver.find_elements("css selector", ".jp-Dialog .jp-mod-accept"):
            button.click()                                     # "Select Kernel": the notebook's own, python3
        return "Idle" in driver.find_element("css selector", ".jp-StatusBar-Widget, #jp-main-statusbar").text

    _wait(browser, kernel_ready, what="the kernel")
    menu = _wait(browser, lambda d: [e for e in d.find_elements("css selector", ".lm-MenuBar-item")
                                     if e.text.strip() == "Run"], what="the Run menu")
    menu[0].click()
    _wait(browser, lambda d: [e for e in d.find_elements("css selector", ".lm-Menu-item")
                              if e.text.strip().startswith("Run All Cells")], what="Run All Cells")[0].click()
    def answered(driver):
        for button in driver.find_elements("css selector", ".jp-Dialog .jp-mod-accept"):
            button.click()                                     # "Select Kernel": the notebook's own, python3
        return [e for e in driver.find_elements("css selector", ".explorer-info") if "reference" in e.text]

    info = _wait(browser, answered, what="the explorer's answer")[0]
    canvas = _wait(browser, lambda d: d.find_elements("css selector", ".jupyter-matplotlib-canvas-div"),
                   what="the figure")[0]
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", canvas)
    _wait(browser, kernel_ready, what="the notebook to finish")
    time.sleep(3)                                              # the canvas shows the last drawing
    before_text = info.text
    before = _screenshot(browser, tmp_path, "explorer_before_click")
    width, height = canvas.size["width"], canvas.size["height"]
    # a patch near the query image's upper left corner (the query is the upper-left panel)
    ActionChains(browser).move_to_element_with_offset(canvas, int(-0.36 * width), int(-0.33 * height)).click().perform()
    _wait(browser, lambda d: info.text != before_text, timeout=60, what="the answer to the click")
    _wait(browser, kernel_ready, what="the click to be handled")
    time.sleep(3)                                              # the canvas redraws after the text changes
    after = _screenshot(browser, tmp_path, "explorer_after_click")
    assert "query 0, cell (" in info.text and "distance" in info.text
    assert before.read_bytes() != after.read_bytes()
