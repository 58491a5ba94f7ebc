"""A real browser for page tests: Debian's chromium, driven headless by playwright.

playwright's own browser download needs the internet; `executable_path` points it at the
distribution's chromium instead (root needs --no-sandbox). A missing chromium fails the test
with the command that installs it, never skips it.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, sync_playwright

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@contextlib.contextmanager
def chromium() -> Iterator[Browser]:
    if not shutil.which(CHROMIUM):
        pytest.fail(
            "chromium is not installed: apt-get install -y --no-install-recommends chromium"
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox"]
        )
        try:
            yield browser
        finally:
            browser.close()
