"""Recharge orders and payment notifies against real Postgres and Valkey.

Exactly one credit per paid order whatever arrives; forged notifies credit
nothing and never 5xx; the query fallback settles a paid order whose notify
never came; expired orders close.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson

from server import keys
from server.auth import Role
from tests.integration.money_support import (
    auth,
    balance,
    create_order,
    money_server,
    sandbox_notify,
    wait_until,
)
from tests.support import RunningServer, check_invariants, make_user


async def _notify(http: httpx.AsyncClient, body: bytes, headers: dict[str, str],
                  channel: str = "sandbox") -> httpx.Response:
    return await http.post(f"/api/pay/notify/{channel}", content=body, headers=headers)


async def _recharge_entries(pool: Any, order_id: str) -> int:
    return int(await pool.fetchval(
        "SELECT count(*) FROM journal_entries WHERE kind = 'recharge' AND ref = $1", order_id))


async def test_order_idempotency_key_replays_and_conflicts(srv: RunningServer,
                                                           http: httpx.AsyncClient,
                                                           pool: Any, redis: Any) -> None:
    u = await make_user(pool, redis)
    r1 = await create_order(http, u, key="k1", pack_yuan=30)
    assert r1.status_code == 201, r1.text
    o = r1.json()["order"]
    assert o["amount_fen"] == 3000 and o["coins"] == 300 and o["status"] == "PENDING"
    assert o["pay_url"] == f"/sandbox/pay/{o['id']}"
    assert len(o["id"]) >= 21
    r2 = await create_order(http, u, key="k1", pack_yuan=30)
    assert r2.status_code == 200 and r2.json()["replayed"] and r2.json()["order"]["id"] == o["id"]
    r3 = await create_order(http, u, key="k1", pack_yuan=98)
    assert r3.status_code == 409 and r3.json()["code"] == "idempotency_conflict"
    # Bad input: stable codes, no order created.
    for body, code in [({"pack_yuan": 7}, "unknown_pack"),
                       ({"amount_fen": 12.5}, "bad_amount"),
                       ({"amount_fen": True}, "bad_amount"),
                       ({"amount_fen": 50}, "amount_out_of_range"),
                       ({"amount_fen": 10**12}, "amount_out_of_range"),
                       ({"amount_fen": 1001}, "amount_not_convertible"),
                       ({"pack_yuan": 6, "amount_fen": 600}, "bad_amount")]:
        r = await create_order(http, u, key=f"bad{code}{len(str(body))}", **body)
        assert r.status_code == 400 and r.json()["code"] == code, (body, r.text)
    r = await create_order(http, u, key="x", channel="bitcoin", pack_yuan=6)
    assert r.json()["code"] == "unknown_channel"
    r = await http.post("/api/recharge/orders", headers=auth(u),
                        content=orjson.dumps({"channel": "sandbox", "pack_yuan": 6}))
    assert r.json()["code"] == "bad_idempotency_key"
    assert await pool.fetchval("SELECT count(*) FROM recharge_orders") == 1
    # Someone else's order is not visible.
    other = await make_user(pool, redis)
    r = await http.get(f"/api/recharge/orders/{o['id']}", headers=auth(other))
    assert r.status_code == 404


async def test_sandbox_end_to_end_with_first_recharge_bonus(srv: RunningServer,
                                                            http: httpx.AsyncClient,
                                                            pool: Any, redis: Any) -> None:
    u = await make_user(pool, redis)
    o = (await create_order(http, u, key="a", pack_yuan=6)).json()["order"]
    page = await http.get(o["pay_url"])
    assert page.status_code == 200 and "6.00" in page.text
    paid = await http.post(o["pay_url"], headers={"accept": "application/json"})
    assert paid.json()["status"] == "PAID"
    # The sandbox notifies asynchronously; the balance rises by 60 coins + 10 % bonus.
    await wait_until(lambda: _eq(balance(http, u), 66))
    got = (await http.get(f"/api/recharge/orders/{o['id']}", headers=auth(u))).json()["order"]
    assert got["status"] == "SUCCESS" and got["bonus_coins"] == 6
    # A second recharge gets no bonus.
    o2 = (await create_order(http, u, key="b", pack_yuan=30)).json()["order"]
    await http.post(o2["pay_url"])
    await wait_until(lambda: _eq(balance(http, u), 366))
    await wait_until(lambda: _sandbox_acked(pool, o2["id"]))
    totals = await check_invariants(redis, pool)
    assert totals["came_in"] == 366


async def _eq(coro: Any, want: int) -> bool:
    return bool(await coro == want)


async def _sandbox_acked(pool: Any, order_id: str) -> bool:
    return bool(await pool.fetchval(
        "SELECT notified_ok_at IS NOT NULL FROM sandbox_trades WHERE out_trade_no = $1",
        order_id))


async def test_twenty_identical_notifies_at_once_credit_once(srv: RunningServer,
                                                             http: httpx.AsyncClient,
                                                             pool: Any, redis: Any) -> None:
    u = await make_user(pool, redis)
    o = (await create_order(http, u, key="k", pack_yuan=98)).json()["order"]
    body, headers = sandbox_notify(o["id"], 9800)
    answers = await asyncio.gather(*(_notify(http, body, headers) for _ in range(20)))
    assert [a.status_code for a in answers] == [200] * 20
    assert all(a.text == "success" for a in answers)
    assert await _recharge_entries(pool, o["id"]) == 1
    assert await balance(http, u) == 980 + 98
    verdicts = [r["verdict"] for r in await pool.fetch(
        "SELECT verdict FROM payment_notifies WHERE order_id = $1", o["id"])]
    assert verdicts.count("credited") == 1 and verdicts.count("already") == 19
    # Days later: the Redis markers have expired (simulated), the notify is resent.
    async for k in redis.scan_iter(match=keys.PREFIX + "credit:*"):
        await redis.delete(k)
    body, headers = sandbox_notify(o["id"], 9800)
    r = await _notify(http, body, headers)
    assert r.text == "success"
    assert await _recharge_entries(pool, o["id"]) == 1
    assert await balance(http, u) == 1078
    await check_invariants(redis, pool)


async def test_notifies_in_any_order(srv: RunningServer, http: httpx.AsyncClient,
                                     pool: Any, redis: Any) -> None:
    u = await make_user(pool, redis)
    o = (await create_order(http, u, key="k", pack_yuan=6)).json()["order"]
    # WAIT_PAY first: acknowledged, nothing moves.
    r = await _notify(http, *sandbox_notify(o["id"], 600, status="WAIT_PAY"))
    assert r.text == "success"
    assert (await pool.fetchval("SELECT status FROM recharge_orders WHERE id=$1", o["id"])
            == "PENDING")
    r = await _notify(http, *sandbox_notify(o["id"], 600))
    assert r.text == "success"
    # A late CLOSED or WAIT_PAY after SUCCESS changes nothing.
    for status in ("CLOSED", "WAIT_PAY"):
        await _notify(http, *sandbox_notify(o["id"], 600, status=status))
    row = await pool.fetchrow("SELECT * FROM recharge_orders WHERE id=$1", o["id"])
    assert row["status"] == "SUCCESS"
    # A payment arriving after we closed an expired order is credited (money was taken).
    o2 = (await create_order(http, u, key="k2", pack_yuan=6)).json()["order"]
    await pool.execute("UPDATE recharge_orders SET expires_at = now() - interval '1 s', "
                       "created_at = now() - interval '1 hour' WHERE id = $1", o2["id"])
    await srv._app.state.billing.sweep_pending()
    assert (await pool.fetchval("SELECT status FROM recharge_orders WHERE id=$1", o2["id"])
            == "CLOSED")
    r = await _notify(http, *sandbox_notify(o2["id"], 600, trade_no="Slate"))
    assert r.text == "success"
    assert (await pool.fetchval("SELECT status FROM recharge_orders WHERE id=$1", o2["id"])
            == "SUCCESS")
    # A second, different payment for a paid order: acknowledged, logged, not credited.
    r = await _notify(http, *sandbox_notify(o2["id"], 600, trade_no="Sother"))
    assert r.text == "success"
    assert await _recharge_entries(pool, o2["id"]) == 1
    assert await pool.fetchval("SELECT count(*) FROM order_events WHERE order_id=$1 "
                               "AND NOT accepted", o2["id"]) == 1
    assert await balance(http, u) == 66 + 60
    await check_invariants(redis, pool)


async def test_forged_and_wrong_notifies_credit_nothing(srv: RunningServer,
                                                        http: httpx.AsyncClient,
                                                        pool: Any, redis: Any) -> None:
    u = await make_user(pool, redis)
    o = (await create_order(http, u, key="k", pack_yuan=6)).json()["order"]
    body, headers = sandbox_notify(o["id"], 600)
    cases: list[tuple[str, bytes, dict[str, str]]] = [
        ("bad signature", body, {**headers, "x-sandbox-signature": "0" * 64}),
        ("wrong key", *sandbox_notify(o["id"], 600, key="not-the-key")),
        ("tampered body", body.replace(b"600", b"601"), headers),
        ("wrong amount", *sandbox_notify(o["id"], 60000)),
        ("unknown order", *sandbox_notify("R" + "x" * 24, 600)),
        ("stale timestamp", *sandbox_notify(o["id"], 600, ts=1_000_000_000)),
        ("future timestamp", *sandbox_notify(o["id"], 600, ts=4_000_000_000)),
        ("non-success status", *sandbox_notify(o["id"], 600, status="WAIT_PAY")),
        ("no signature", body, {"content-type": "application/json"}),
    ]
    for name, b, h in cases:
        r = await _notify(http, b, h)
        assert r.status_code < 500, name
        assert await balance(http, u) == 0, name
    r = await _notify(http, body, headers, channel="alipay")  # channel not configured
    assert r.status_code == 404
    assert await _recharge_entries(pool, o["id"]) == 0
    verdicts = {r["verdict"] for r in await pool.fetch("SELECT verdict FROM payment_notifies")}
    assert {"rejected:bad_signature", "rejected:stale_timestamp", "amount_mismatch",
            "unknown_order", "not_paid", "rejected:missing_signature"} <= verdicts
    await check_invariants(redis, pool)


async def test_query_fallback_settles_a_paid_order_without_notify(
        redis_url: str, database_url: str, pool: Any, redis: Any) -> None:
    # The sandbox's notifies go to a dead port: only the query fallback can settle.
    srv = money_server(redis_url, database_url, order_query_after_s=0,
                       public_base_url="http://127.0.0.1:9")
    await srv.start()
    try:
        async with httpx.AsyncClient(base_url=srv.base, timeout=10) as http:
            u = await make_user(pool, redis)
            o = (await create_order(http, u, key="k", pack_yuan=6)).json()["order"]
            await http.post(o["pay_url"])
            counts = await srv._app.state.billing.sweep_pending()
            assert counts["credited"] == 1
            assert await balance(http, u) == 66
            counts = await srv._app.state.billing.sweep_pending()
            assert counts["credited"] == 0
            assert await _recharge_entries(pool, o["id"]) == 1
            ev = await pool.fetchval("SELECT source FROM order_events WHERE order_id=$1 "
                                     "AND to_state='SUCCESS'", o["id"])
            assert ev == "query"
            await check_invariants(redis, pool)
    finally:
        await srv.stop()


async def test_pending_orders_per_user_are_capped(redis_url: str, database_url: str,
                                                  pool: Any, redis: Any) -> None:
    srv = money_server(redis_url, database_url, orders_pending_max=2)
    await srv.start()
    try:
        async with httpx.AsyncClient(base_url=srv.base, timeout=10) as http:
            u = await make_user(pool, redis, role=Role.VIEWER)
            for i in range(2):
                assert (await create_order(http, u, key=f"k{i}")).status_code == 201
            r = await create_order(http, u, key="k9")
            assert r.status_code == 429 and r.json()["code"] == "too_many_pending_orders"
    finally:
        await srv.stop()


async def test_alipay_and_wechatpay_notifies_over_http(redis_url: str, database_url: str,
                                                       pool: Any, redis: Any,
                                                       tmp_path: Any) -> None:
    from tests import channel_keys as ck

    (tmp_path / "alipay.pem").write_bytes(ck.public_pem("alipay"))
    (tmp_path / "wx.pem").write_bytes(ck.public_pem("wechat"))
    srv = money_server(redis_url, database_url, alipay_app_id=ck.ALIPAY_APP_ID,
                       alipay_seller_id=ck.ALIPAY_SELLER,
                       alipay_public_key_path=str(tmp_path / "alipay.pem"),
                       wechatpay_mchid=ck.WX_MCHID, wechatpay_appid=ck.WX_APPID,
                       wechatpay_apiv3_key=ck.WX_APIV3.decode(),
                       wechatpay_platform_key_path=str(tmp_path / "wx.pem"),
                       wechatpay_platform_serial=ck.WX_SERIAL)
    await srv.start()
    try:
        async with httpx.AsyncClient(base_url=srv.base, timeout=10) as http:
            u = await make_user(pool, redis)
            a = (await create_order(http, u, key="a", channel="alipay",
                                    pack_yuan=6)).json()["order"]
            w = (await create_order(http, u, key="w", channel="wechatpay",
                                    pack_yuan=30)).json()["order"]
            form = {"content-type": "application/x-www-form-urlencoded"}
            # Forged / wrong first: nothing credited, never 5xx.
            bad = [ck.alipay_body(ck.alipay_params(a["id"], "6.00"), key="mallory"),
                   ck.alipay_body(ck.alipay_params(a["id"], "0.01")),
                   ck.alipay_body(ck.alipay_params(a["id"], "6.00", app_id="x"))]
            for body in bad:
                r = await http.post("/api/pay/notify/alipay", content=body, headers=form)
                assert (r.status_code, r.text) == (200, "fail")
            body, h = ck.wechat_notify(w["id"], 3000, ts=int(__import__("time").time()) - 3600)
            r = await http.post("/api/pay/notify/wechatpay", content=body, headers=h)
            assert r.status_code == 400 and r.json()["code"] == "FAIL"
            body, h = ck.wechat_notify(w["id"], 300)  # wrong amount, correctly signed
            r = await http.post("/api/pay/notify/wechatpay", content=body, headers=h)
            assert r.status_code == 400
            # A notify for the other channel's order is not accepted either.
            body, h = ck.wechat_notify(a["id"], 600)
            r = await http.post("/api/pay/notify/wechatpay", content=body, headers=h)
            assert r.status_code == 400
            assert await balance(http, u) == 0
            # The real ones, twice each.
            for _ in range(2):
                r = await http.post("/api/pay/notify/alipay", headers=form,
                                    content=ck.alipay_body(ck.alipay_params(a["id"], "6.00")))
                assert (r.status_code, r.text) == (200, "success")
                body, h = ck.wechat_notify(w["id"], 3000)
                r = await http.post("/api/pay/notify/wechatpay", content=body, headers=h)
                assert r.status_code == 200
            assert await balance(http, u) == 60 + 6 + 300
            assert await _recharge_entries(pool, a["id"]) == 1
            assert await _recharge_entries(pool, w["id"]) == 1
            await check_invariants(redis, pool)
    finally:
        await srv.stop()


async def test_sandbox_retries_on_schedule_and_duplicates_credit_once(
        redis_url: str, database_url: str, pool: Any, redis: Any) -> None:
    """Our callback is down: the sandbox retries on its schedule; once we answer, it stops.
    Every notify is sent twice (duplicate_pct=100): still one credit."""
    srv = money_server(redis_url, database_url, sandbox_duplicate_pct=100,
                       sandbox_notify_schedule_s=(0, 2, 4))
    await srv.start()
    try:
        sandbox = srv._app.state.billing.sandbox
        async with httpx.AsyncClient(base_url=srv.base, timeout=10) as http:
            u = await make_user(pool, redis)
            o = (await create_order(http, u, key="k", pack_yuan=6)).json()["order"]
            real_url = sandbox.notify_url
            await pool.execute("UPDATE sandbox_trades SET notify_url = 'http://127.0.0.1:9/x'")
            await http.post(o["pay_url"])
            await wait_until(lambda: pool.fetchval(
                "SELECT attempts >= 1 FROM sandbox_trades WHERE out_trade_no = $1", o["id"]))
            t = await pool.fetchrow("SELECT * FROM sandbox_trades WHERE out_trade_no = $1",
                                    o["id"])
            assert t["notified_ok_at"] is None
            assert (t["next_notify_at"] - t["paid_at"]).total_seconds() == 2 * t["attempts"]
            assert await balance(http, u) == 0
            await pool.execute("UPDATE sandbox_trades SET notify_url = $1", real_url)
            await wait_until(lambda: _sandbox_acked(pool, o["id"]), timeout=15)
            assert await balance(http, u) == 66
            sent = sandbox.notifies_sent
            await asyncio.sleep(1.5)
            assert sandbox.notifies_sent == sent  # acknowledged: no more notifies
            verdicts = [r["verdict"] for r in await pool.fetch(
                "SELECT verdict FROM payment_notifies WHERE order_id = $1", o["id"])]
            assert verdicts.count("credited") == 1 and len(verdicts) >= 2
            assert await _recharge_entries(pool, o["id"]) == 1
            await check_invariants(redis, pool)
    finally:
        await srv.stop()


async def test_a_credit_that_cannot_reach_redis_is_applied_from_the_outbox(
        srv: RunningServer, http: httpx.AsyncClient, pool: Any, redis: Any) -> None:
    """Postgres commits the credit; Redis refuses it (script error); the notify is still
    answered `success` (the money is booked) and the outbox loop applies it later, once."""
    b = srv._app.state.billing
    u = await make_user(pool, redis)
    o = (await create_order(http, u, key="k", pack_yuan=6)).json()["order"]
    real = b.credit_script

    class Down:
        async def __call__(self, *a: Any) -> Any:
            raise ConnectionError("redis away")
    b.credit_script = Down()
    try:
        r = await http.post("/api/pay/notify/sandbox", content=sandbox_notify(o["id"], 600)[0],
                            headers=sandbox_notify(o["id"], 600)[1])
        assert r.text == "success"
        assert await balance(http, u) == 0
        assert await pool.fetchval("SELECT applied_at IS NULL FROM credit_outbox "
                                   "WHERE op_id = $1", f"recharge:{o['id']}")
        await check_invariants(redis, pool)  # booked, pending: still conserved
    finally:
        b.credit_script = real
    await wait_until(lambda: _eq(balance(http, u), 66), timeout=5)
    assert await pool.fetchval("SELECT applied_at IS NOT NULL FROM credit_outbox "
                               "WHERE op_id = $1", f"recharge:{o['id']}")
    await check_invariants(redis, pool)
