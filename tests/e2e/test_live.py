"""More of the pages in a real browser: a PK battle between two consoles, revoking an
overlay, a custom tip, the insufficient-balance message, the gift panel by keyboard only,
and an overlay speaking msgpack.

Like test_pages.py: giftd in-process (RunningServer) with the demo seed, each page in its
own browser context, screenshots under tests/e2e/screenshots/ (kept out of git).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis

from tests.e2e.conftest import SCREENSHOTS, open_page, seed_demo
from tests.e2e.test_pages import LIVE, console_and_overlay, principal
from tests.support import Client, RunningServer

pytestmark = pytest.mark.e2e

Site = Callable[..., Awaitable[RunningServer]]


@pytest.fixture
async def make_site(redis_url: str, database_url: str, redis: Redis,
                    pool: asyncpg.Pool) -> AsyncIterator[Site]:
    """Start giftd with the demo seed and the given settings overrides (stopped at the end)."""
    started: list[RunningServer] = []

    async def make(**overrides: Any) -> RunningServer:
        await seed_demo(pool, redis)
        srv = RunningServer(redis_url, database_url, demo=True, first_recharge_bonus_pct=0,
                            **overrides)
        await srv.start()
        started.append(srv)
        return srv

    yield make
    for srv in started:
        await srv.stop()


def digits(selector: str, value: int) -> str:
    """A wait_for_function predicate: the element's number (thousands separators dropped)."""
    return (f"(document.querySelector({selector!r})?.textContent || '').replace(/[^0-9]/g, '')"
            f" === '{value}'")


async def balance_of(page: Any) -> int:
    await page.wait_for_function(
        "/^[0-9,]+$/.test(document.querySelector('#balance').innerText)")
    return int((await page.inner_text("#balance")).replace(",", ""))


async def test_pk_battle_from_two_consoles(make_site: Site, browser: Any,
                                           pool: asyncpg.Pool) -> None:
    site = await make_site(pk_round_ms=4000, pk_punish_ms=1000, pk_tick_ms=200)
    aurora, overlay = await console_and_overlay(browser, site.base)
    blaze = await open_page(browser, f"{site.base}/console/?as=blaze", width=1280, height=900)
    room = await open_page(browser, f"{site.base}/room/?as=ann&room=aurora", width=1280,
                           height=900)
    for page in (blaze, room):
        await page.wait_for_selector(LIVE, timeout=10_000)
    ben = await Client.connect(site, await principal(pool, "ben"))
    try:
        await ben.join("blaze")
        # Aurora invites Blaze from her console; Blaze accepts on his.
        await aurora.select_option("#pk-room", "blaze")
        await aurora.click("#pk-invite")
        await blaze.wait_for_selector("#pk-incoming:not([hidden])", timeout=3000)
        assert "invites you" in await blaze.inner_text("#pk-incoming-text")
        await blaze.screenshot(path=str(SCREENSHOTS / "console-pk-invited.png"), full_page=True)
        await blaze.click("#pk-accept")
        for page in (overlay, room, aurora, blaze):
            await page.wait_for_selector("#pk:not([hidden])", timeout=2000)
        assert await overlay.inner_text("#pk-score-us") == "0"
        assert await overlay.inner_text("#pk-phase") == "PK"  # no "×1 time!" without a multiplier
        assert "against Blaze is on" in await aurora.inner_text("#pk-status")
        # A gift in each room moves that side's score on the overlay and in the viewer room.
        await room.click("#gift-list button[data-code=heart]")  # 10 coins for Aurora
        for page in (overlay, room):
            await page.wait_for_function(digits("#pk-score-us", 10), timeout=1500)
        assert (await ben.gift("blaze", "rose", 3))["outcome"] == "ok"  # 3 coins for Blaze
        for page in (overlay, room):
            await page.wait_for_function(digits("#pk-score-them", 3), timeout=1500)
        await blaze.wait_for_function(digits("#pk-score-us", 3), timeout=1500)
        await blaze.wait_for_function(digits("#pk-score-them", 10), timeout=1500)
        assert (await overlay.inner_text("#pk-them")) == "Blaze"
        width = await overlay.evaluate(
            "parseFloat(document.querySelector('#pk-fill-a').style.width)")
        assert 70 < width < 85, width  # 10 : 3
        await overlay.screenshot(path=str(SCREENSHOTS / "overlay-pk-running.png"))
        await room.screenshot(path=str(SCREENSHOTS / "room-pk-running.png"))
        # The round (4 s) ends: the result shows everywhere during the punishment phase.
        await overlay.wait_for_function(
            "document.querySelector('#pk-phase').textContent === 'We won!'", timeout=6000)
        await overlay.screenshot(path=str(SCREENSHOTS / "overlay-pk-result.png"))
        await room.wait_for_function(
            "document.querySelector('#pk-phase').textContent === 'We won!'", timeout=1000)
        await room.screenshot(path=str(SCREENSHOTS / "room-pk-result.png"))
        await blaze.wait_for_function(
            "document.querySelector('#pk-phase').textContent === 'You lost'", timeout=1000)
        await aurora.wait_for_function(
            "document.querySelector('#pk-phase').textContent === 'You won!'", timeout=1000)
        await aurora.screenshot(path=str(SCREENSHOTS / "console-pk-result-phone.png"),
                                full_page=True)
        assert "we won (10 : 3)" in await room.inner_text("#feed")
        assert "you won (10 : 3)" in await aurora.inner_text("#feed")
        assert "you lost (3 : 10)" in await blaze.inner_text("#feed")
        assert "is over" in await blaze.inner_text("#pk-status")
        # The punishment phase (1 s) ends: the bar goes away and a new invite is possible.
        await overlay.wait_for_selector("#pk", state="hidden", timeout=4000)
        await aurora.wait_for_function("!document.querySelector('#pk-invite').disabled",
                                       timeout=4000)
        assert await aurora.inner_text("#pk-status") == ""  # no stale "waiting…" line
    finally:
        await ben.close()


async def test_revoking_the_overlay_closes_it_for_good(make_site: Site, browser: Any) -> None:
    site = await make_site()
    console, overlay = await console_and_overlay(browser, site.base)
    sockets: list[str] = []
    overlay.on("websocket", lambda ws: sockets.append(ws.url))
    console.on("dialog", lambda d: asyncio.ensure_future(d.accept()))  # the confirm()
    await console.click("#overlay-revoke")
    await overlay.wait_for_selector("#conn[data-state=revoked]", timeout=3000)
    assert "revoked" in (await overlay.inner_text("#problem")).lower()
    assert await overlay.is_visible("#problem")
    assert not await overlay.is_visible("#board")  # no stale board on a dead overlay
    await console.wait_for_function(
        "document.querySelector('#overlay-status').textContent.includes('revoked')")
    assert await console.input_value("#overlay-url") == ""
    # It does not try again: the overlay client's back-off is 0.3-3 s, so 3.5 s is enough
    # for a reconnect to have happened if it were going to.
    await overlay.wait_for_timeout(3500)
    assert sockets == []
    assert await overlay.get_attribute("#conn", "data-state") == "revoked"
    await overlay.screenshot(path=str(SCREENSHOTS / "overlay-revoked.png"))
    await console.screenshot(path=str(SCREENSHOTS / "console-revoked-phone.png"),
                             full_page=True)


async def test_custom_tip_lands_with_its_amount(make_site: Site, browser: Any) -> None:
    site = await make_site()
    console = await open_page(browser, f"{site.base}/console/?as=aurora")
    room = await open_page(browser, f"{site.base}/room/?as=cat&room=aurora", width=390,
                           height=844)
    for page in (console, room):
        await page.wait_for_selector(LIVE, timeout=10_000)
    before = await balance_of(room)
    # Out of range: refused on the page, nothing sent.
    await room.fill("#custom-amount", "5")
    await room.click("#custom-send")
    await room.wait_for_function("document.querySelector('#send-status').dataset.kind === 'error'")
    assert "between 10 and 200,000" in await room.inner_text("#send-status")
    await room.fill("#custom-amount", "88")
    await room.click("#custom-send")
    await room.wait_for_function("document.querySelector('#send-status').dataset.kind === 'ok'",
                                 timeout=3000)
    assert (await room.inner_text("#send-status")).startswith("Sent a custom tip (88 coins).")
    await room.wait_for_function(digits("#balance", before - 88), timeout=3000)
    tip = room.locator("#feed li[data-gift=tip_custom]")
    await tip.wait_for(timeout=3000)
    assert "88 coins" in await tip.inner_text()
    line = console.locator("#feed li[data-gift=tip_custom]")
    await line.wait_for(timeout=3000)
    assert "+88 coins" in await line.inner_text()
    await console.wait_for_function(digits("#earn-session", 88), timeout=3000)
    await room.screenshot(path=str(SCREENSHOTS / "room-custom-tip-phone.png"), full_page=True)


async def test_too_few_coins_shows_the_insufficient_balance_sentence(make_site: Site,
                                                                     browser: Any) -> None:
    site = await make_site()
    room = await open_page(browser, f"{site.base}/room/?as=dan&room=aurora")
    await room.wait_for_selector(LIVE, timeout=10_000)
    assert await balance_of(room) == 30
    crown = room.locator("#gift-list button[data-code=crown]")
    assert "more than your balance" in (await crown.get_attribute("aria-label") or "")
    await crown.click()
    await room.wait_for_function(
        "document.querySelector('#send-status').dataset.kind === 'error'", timeout=3000)
    text = await room.inner_text("#send-status")
    assert text == ("Not enough coins: Crown costs 520 coins and you have 30 coins."
                    " Nothing was charged — recharge to continue."), text
    assert await room.get_attribute("#send-status", "role") == "status"
    assert await balance_of(room) == 30
    assert await room.locator("#feed li[data-gift=crown]").count() == 0
    await room.screenshot(path=str(SCREENSHOTS / "room-insufficient-balance.png"))


async def test_gift_panel_by_keyboard_only(make_site: Site, browser: Any) -> None:
    site = await make_site()
    room = await open_page(browser, f"{site.base}/room/?as=ann&room=aurora")
    await room.wait_for_selector(LIVE, timeout=10_000)
    before = await balance_of(room)

    async def focused() -> dict[str, Any]:
        return await room.evaluate(
            "(() => { const e = document.activeElement;"
            " return { tag: e.tagName, id: e.id, code: e.dataset.code || null,"
            " text: e.textContent.trim(), name: e.name || null, value: e.value || null }; })()")

    # Tab from the top of the page: the skip link comes first and jumps to the gifts.
    await room.keyboard.press("Tab")
    first = await focused()
    assert first["tag"] == "A" and "Skip to the gifts" in first["text"], first
    await room.keyboard.press("Enter")
    assert (await focused())["id"] == "main"
    # Into the count group (a radio group: arrows pick the count), then on to the gifts.
    await room.keyboard.press("Tab")
    assert (await focused())["name"] == "count"
    await room.keyboard.press("ArrowRight")
    now = await focused()
    assert now["name"] == "count" and now["value"] == "10", now
    await room.keyboard.press("Tab")
    assert (await focused())["code"] == "rose"
    await room.keyboard.press("Tab")
    assert (await focused())["code"] == "heart"
    await room.screenshot(path=str(SCREENSHOTS / "room-keyboard-focus.png"))
    await room.keyboard.press("Enter")  # ten hearts
    await room.wait_for_function("document.querySelector('#send-status').dataset.kind === 'ok'",
                                 timeout=3000)
    assert "Heart ×10" in await room.inner_text("#send-status")
    await room.wait_for_function(digits("#balance", before - 100), timeout=3000)
    assert (await focused())["code"] == "heart"  # focus stays where it was
    # Space sends too.
    await room.keyboard.press("Space")
    await room.wait_for_function(digits("#balance", before - 200), timeout=3000)
    await room.wait_for_selector("#feed li[data-gift=heart]", timeout=3000)


async def test_msgpack_overlay_shows_the_rocket(make_site: Site, browser: Any,
                                                pool: asyncpg.Pool) -> None:
    site = await make_site()
    console = await open_page(browser, f"{site.base}/console/?as=aurora", width=390, height=844)
    await console.wait_for_function(
        "document.querySelector('#overlay-url').value.includes('token=')", timeout=10_000)
    url = await console.input_value("#overlay-url") + "&format=msgpack"
    ctx = await browser.new_context(viewport={"width": 1920, "height": 1080}, bypass_csp=True)
    overlay = await ctx.new_page()
    overlay.on("pageerror", lambda exc: print(f"[pageerror] overlay: {exc}"))
    frames: dict[str, int] = {"binary": 0, "text": 0}
    protocols: list[str] = []

    def on_ws(ws: Any) -> None:
        def count(payload: str | bytes) -> None:
            frames["binary" if isinstance(payload, bytes) else "text"] += 1
        ws.on("framereceived", count)
        ws.on("framesent", count)

    overlay.on("websocket", on_ws)
    overlay.on("response", lambda r: protocols.append(r.url) if "/vendor/msgpack/" in r.url
               else None)
    await overlay.goto(url)
    await overlay.wait_for_selector(LIVE, timeout=10_000)
    assert await overlay.evaluate("document.body.dataset.format") == "msgpack"
    assert await overlay.evaluate("window.giftdOverlay.client.ws.protocol") == "giftd.msgpack"
    assert any(u.endswith("/index.mjs") for u in protocols)
    ann = await Client.connect(site, await principal(pool, "ann"))
    try:
        await ann.join("aurora")
        assert (await ann.gift("aurora", "heart", 3, cid="ann-hearts"))["outcome"] == "ok"
        assert (await ann.gift("aurora", "rocket", cid="ann-rocket"))["outcome"] == "ok"
    finally:
        await ann.close()
    await overlay.wait_for_selector(
        ".stage-item.tier-4.anim-rocket_launch[data-gift=rocket][data-client-id=ann-rocket]",
        timeout=1500)
    await overlay.wait_for_selector(".gift-card[data-gift=heart][data-count='3']", timeout=1500)
    await overlay.wait_for_function(
        "document.querySelector('.board-row[data-rank=\"1\"] .board-name')?.textContent"
        " === 'Ann'", timeout=1500)
    await overlay.wait_for_function(digits(".board-row[data-rank='1'] .board-score", 10_031))
    assert frames["binary"] >= 3 and frames["text"] == 0, frames  # join, joined, ticks
    await overlay.wait_for_timeout(1400)  # the rocket has risen into place
    await overlay.screenshot(path=str(SCREENSHOTS / "overlay-msgpack-rocket.png"))
    await ctx.close()
