"""The demo page at / in a real browser: a viewer sends a rocket, the streamer sees it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis

from billing.credits import apply_pending
from gifts.scripts import Scripts
from server.demo import seed
from tests.e2e.conftest import SCREENSHOTS
from tests.support import RunningServer

pytestmark = pytest.mark.e2e


@pytest.fixture
async def demo_server(redis_url: str, database_url: str, redis: Redis,
                      pool: asyncpg.Pool) -> AsyncIterator[RunningServer]:
    async with pool.acquire() as conn:
        await seed(conn)
    await apply_pending(pool, redis, Scripts().credit)
    srv = RunningServer(redis_url, database_url, demo=True)
    await srv.start()
    yield srv
    await srv.stop()


async def test_viewer_sends_rocket_streamer_sees_it(demo_server: RunningServer,
                                                    browser: Any) -> None:
    base = demo_server.base
    viewer = await (await browser.new_context(viewport={"width": 1280, "height": 900})).new_page()
    streamer = await (await browser.new_context(viewport={"width": 390, "height": 844})
                      ).new_page()
    await viewer.goto(f"{base}/?as=ann")
    await streamer.goto(f"{base}/?as=aurora")
    for page in (viewer, streamer):
        await page.wait_for_selector("#conn[data-state=open]", timeout=10_000)
        await page.wait_for_function(
            "/^[0-9,]+$/.test(document.querySelector('#balance').innerText)", timeout=10_000)
    before = int((await viewer.inner_text("#balance")).replace(",", ""))
    await viewer.click("#gift-list button[data-code=rocket]")
    # within a second the streamer's page shows the rocket in the feed and in earnings
    await streamer.wait_for_function(
        "document.querySelector('#feed').innerText.includes('Rocket')", timeout=1000)
    await streamer.wait_for_function(
        "document.querySelector('#earn-total').innerText.replace(/,/g,'') === '10001'",
        timeout=1000)
    await viewer.wait_for_function(
        f"document.querySelector('#balance').innerText.replace(/,/g,'') === '{before - 10001}'",
        timeout=2000)
    assert "Ann" in await streamer.inner_text("#ranking")
    await viewer.screenshot(path=str(SCREENSHOTS / "demo-viewer.png"))
    await streamer.screenshot(path=str(SCREENSHOTS / "demo-streamer-phone.png"))
