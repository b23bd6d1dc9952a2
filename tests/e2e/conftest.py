"""Browser fixtures: Debian's Chromium driven by Playwright (no browser download).

`./dev test` installs the `chromium` package when it is missing (as root, with
apt-get). Without a browser these tests are skipped with the reason shown.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("GIFTD_CHROMIUM") or shutil.which("chromium") or ""
SCREENSHOTS = Path(__file__).parent / "screenshots"  # kept out of git (.gitignore)


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    if not CHROMIUM:
        pytest.skip("no chromium on this machine (apt-get install chromium)")
    from playwright.async_api import async_playwright

    SCREENSHOTS.mkdir(exist_ok=True)
    async with async_playwright() as pw:
        # The machine has no network beyond package registries: keep Chromium
        # from trying to reach Google's services at start.
        b = await pw.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"])
        yield b
        await b.close()
