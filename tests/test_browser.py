"""What a person sees: the built report in headless Chromium (Debian packages chromium, chromium-driver).

Skipped, with the reason, where Chromium is not installed; `.ci/run` installs it, so CI always runs them.
Screenshots go to the test's folder (and, with GADLIB_SCREENSHOTS=DIR, to DIR, where the good ones are
picked for docs/screenshots/).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from gadlib.report import COURSE, build_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER),
    reason="browser tests need headless Chromium: apt-get install chromium chromium-driver (as .ci/run does)")


@pytest.fixture(scope="module")
def browser():
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
        assert browser.execute_script("return document.readyState") == "complete", name
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
