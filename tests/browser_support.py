"""Headless Debian chromium driven through chromedriver (selenium), for the report's page test.

`.ci/run` installs the `chromium` and `chromium-driver` packages when they are missing; where
they are absent the browser tests skip and say why. Network-related background services are
switched off: the page must render with no network at all.
"""
import shutil
import tempfile
from pathlib import Path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
except ImportError:  # the dev extra is not installed
    webdriver = None


def why_no_browser() -> str | None:
    if webdriver is None:
        return "selenium is not installed (pip install -e '.[dev]')"
    if not CHROMIUM or not CHROMEDRIVER:
        return "Debian's chromium and chromium-driver are not installed (.ci/run installs them)"
    return None


def open_browser(width: int = 1280, height: int = 900):
    """A headless chromium that keeps the page's console messages."""
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-quic", f"--window-size={width},{height}",
                 f"--user-data-dir={tempfile.mkdtemp(prefix='ponder-chromium-')}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=opts, service=Service(executable_path=CHROMEDRIVER))


def full_page_screenshot(driver, path: Path) -> None:
    """Screenshot of the whole page (the window resized to the page's height)."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, min(int(height), 16000))
    driver.save_screenshot(str(path))
