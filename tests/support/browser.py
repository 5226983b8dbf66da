"""Headless Chromium (Debian's chromium + chromium-driver) driven by selenium, for page tests.

The binaries are found at fixed paths (or on PATH) and passed to selenium explicitly, so
selenium never tries to download a driver. A missing browser fails the test -- never skips it:
scripts/test.sh installs both packages.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

INSTALL_HINT = "install chromium and chromium-driver (apt-get install chromium chromium-driver)"


def find_binary(name: str, fallback: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    if Path(fallback).is_file():
        return fallback
    pytest.fail(f"{name} not found: {INSTALL_HINT}", pytrace=False)


def headless_chromium(width: int = 1400, height: int = 1000):
    """A selenium WebDriver on a fresh headless Chromium profile; call ``quit()`` when done."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = find_binary("chromium", "/usr/bin/chromium")
    for arg in (
        "--headless=new",
        "--no-sandbox",  # tests run as root in a container
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-extensions",
        "--no-first-run",
        f"--window-size={width},{height}",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(find_binary("chromedriver", "/usr/bin/chromedriver"))
    return webdriver.Chrome(service=service, options=options)
