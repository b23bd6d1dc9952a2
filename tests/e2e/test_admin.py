"""The admin console in a real browser: charts from the real ledger; a viewer is refused."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis

from tests.e2e.conftest import SCREENSHOTS, open_page
from tests.e2e.test_pages import principal, site  # noqa: F401  (the fixture)
from tests.support import Client, RunningServer, flush_all

pytestmark = pytest.mark.e2e


async def test_dashboard_charts_real_data_and_a_viewer_cannot_open_it(
        site: RunningServer, browser: Any, pool: asyncpg.Pool,  # noqa: F811
        redis: Redis) -> None:
    sent = {"rocket": 10_001, "rose": 5, "crown": 520 * 2}
    for user, room, gift, count in (("ann", "aurora", "rocket", 1), ("ben", "aurora", "rose", 5),
                                    ("cat", "blaze", "crown", 2)):
        c = await Client.connect(site, await principal(pool, user))
        await c.join(room)
        assert (await c.gift(room, gift, count))["outcome"] == "ok"
        await c.close()
    await flush_all(redis, pool)  # the dashboard reads the Postgres ledger
    gmv = sum(sent.values())

    admin = await open_page(browser, f"{site.base}/admin/?as=admin")
    await admin.wait_for_selector("body[data-dashboard=ready]", timeout=10_000)
    assert await admin.get_attribute("#chart-gmv", "data-total") == str(gmv)
    assert await admin.get_attribute("#chart-gifts", "data-total") == str(1 + 5 + 2)
    assert await admin.get_attribute("#chart-creators", "data-total") == "2"  # both today
    assert await admin.get_attribute("#chart-hot", "data-points") == "3"
    tall = await admin.eval_on_selector_all(
        "#chart-gmv rect.bar", "rs => rs.filter(r => +r.getAttribute('height') > 0).length")
    assert tall >= 1
    assert f"{gmv:,}" in await admin.inner_text("#kpi-gmv")
    await admin.wait_for_selector("#audit-verify.ok", timeout=5000)
    await admin.screenshot(path=str(SCREENSHOTS / "admin-dashboard.png"), full_page=True)
    # the hour view draws from the same data
    await admin.select_option("#bucket", "hour:24")
    await admin.wait_for_function(
        f"document.querySelector('#chart-gmv').dataset.points === '24' &&"
        f" document.querySelector('#chart-gmv').dataset.total === '{gmv}'")
    # search and reconciliation work from the page
    await admin.fill("#tx-form input[name=user]", "ann")
    await admin.click("#tx-form button[type=submit]")
    await admin.wait_for_selector("#tx-table td:has-text('rocket ×1')")
    await admin.click("#recon-form button[type=submit]")
    await admin.wait_for_selector("#recon-badge", timeout=10_000)

    viewer = await open_page(browser, f"{site.base}/admin/?as=ann", width=390, height=844)
    await viewer.wait_for_selector("#forbidden:not([hidden])", timeout=10_000)
    assert "cannot open it" in await viewer.inner_text("#forbidden")
    assert await viewer.is_hidden("#app")
    assert await viewer.locator("#chart-gmv rect").count() == 0
    login = await viewer.request.post(f"{site.base}/api/login",
                                      data={"username": "ann", "password": "giftd-demo"})
    token = (await login.json())["token"]
    for path in ("dashboard", "transactions", "users", "reconcile", "whoami"):
        r = await viewer.request.get(f"{site.base}/api/admin/{path}",
                                     headers={"authorization": f"Bearer {token}"})
        assert r.status == 403, path
    await viewer.screenshot(path=str(SCREENSHOTS / "admin-refused-viewer.png"))
