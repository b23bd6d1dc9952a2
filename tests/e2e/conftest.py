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


async def seed_demo(pool: Any, redis: Any) -> None:
    """The demo accounts and rooms (aurora, blaze; ann, ben, cat, dan; admin), coins applied."""
    from billing.credits import apply_pending
    from gifts.scripts import Scripts
    from server.demo import seed

    async with pool.acquire() as conn:
        await seed(conn)
    await apply_pending(pool, redis, Scripts().credit)


async def restart_on_same_port(old: Any, **overrides: Any) -> Any:
    """A new RunningServer on `old`'s port with the same Redis/DB and settings."""
    from dataclasses import replace

    from tests.support import RunningServer

    srv = RunningServer(old.redis_url, old.database_url, **overrides)
    srv.port = old.port
    srv.settings = replace(old.settings, port=old.port)
    await srv.start()
    return srv


async def open_page(browser: Any, url: str, *, width: int = 1280, height: int = 900) -> Any:
    # bypass_csp: Playwright polls wait_for_function predicates with eval, which the
    # pages' CSP (script-src 'self') forbids; the pages themselves never need it.
    ctx = await browser.new_context(viewport={"width": width, "height": height}, bypass_csp=True)
    page = await ctx.new_page()
    page.on("pageerror", lambda exc: print(f"[pageerror] {url}: {exc}"))
    page.on("console", lambda m: print(f"[console.{m.type}] {url}: {m.text}")
            if m.type in ("error", "warning") else None)
    await page.goto(url)
    return page
