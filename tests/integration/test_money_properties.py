"""Properties of the money paths against real Postgres + Valkey, driven by hypothesis.

1. Random sequences of recharges (with duplicate notifies), gifts, flushes,
   refunds and adjustments keep every invariant of DESIGN.md to the coin,
   and the reconciliation's Redis-vs-journal cut finds no difference.
2. A fuzz of the notify endpoints (random bytes, huge bodies, wrong
   encodings, random signature headers) credits nothing and never answers 5xx.

Hypothesis runs in a worker thread; each step is submitted to the test's
event loop, where the server lives.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Coroutine
from typing import Any, TypeVar

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing import adjustments, reconcile, refunds
from billing.channels.base import TradeStatus
from billing.orders import OrderRequest
from billing.recharge import OrderError
from gifts.sender import SendRequest
from server.auth import Role
from tests import channel_keys as ck
from tests.integration.money_support import money_server, sandbox_notify
from tests.support import RunningServer, check_invariants, flush_all, make_room, make_user

T = TypeVar("T")
_ids = itertools.count()

op = st.one_of(
    st.tuples(st.just("recharge"), st.integers(0, 2), st.sampled_from([6, 30, 98]),
              st.integers(1, 3)),
    st.tuples(st.just("gift"), st.integers(0, 2), st.integers(1, 40), st.just(0)),
    st.tuples(st.just("flush"), st.just(0), st.just(0), st.just(0)),
    st.tuples(st.just("refund"), st.integers(0, 30), st.integers(0, 3), st.just(0)),
    st.tuples(st.just("adjust"), st.integers(0, 2), st.integers(-300, 300), st.just(0)),
)


@pytest.fixture
async def srv(redis_url: str, database_url: str, tmp_path: Any
              ) -> AsyncIterator[RunningServer]:
    (tmp_path / "alipay.pem").write_bytes(ck.public_pem("alipay"))
    (tmp_path / "wx.pem").write_bytes(ck.public_pem("wechat"))
    s = money_server(redis_url, database_url, alipay_app_id=ck.ALIPAY_APP_ID,
                     alipay_public_key_path=str(tmp_path / "alipay.pem"),
                     wechatpay_mchid=ck.WX_MCHID, wechatpay_appid=ck.WX_APPID,
                     wechatpay_apiv3_key=ck.WX_APIV3.decode(),
                     wechatpay_platform_key_path=str(tmp_path / "wx.pem"),
                     wechatpay_platform_serial=ck.WX_SERIAL)
    await s.start()
    yield s
    await s.stop()


async def test_random_money_sequences_keep_every_invariant(srv: RunningServer, pool: Any,
                                                           redis: Any) -> None:
    loop = asyncio.get_running_loop()
    b = srv._app.state.billing
    ctx = srv.ctx
    admin = await make_user(pool, redis, role=Role.ADMIN)
    users = [await make_user(pool, redis) for _ in range(3)]
    room, streamer = await make_room(pool, redis)
    rose = ctx.catalog.get("rose")
    assert rose is not None
    paid: list[str] = []
    counts = {"credited": 0, "refunded": 0, "refused": 0, "gifts": 0}

    def call(coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(60)

    async def step(kind: str, a: int, x: int, y: int) -> None:
        n = next(_ids)
        if kind == "recharge":
            order, _ = await b.create_order(users[a].user_id, OrderRequest("sandbox", x * 100, x),
                                            f"p{n}")
            await b.sandbox.pay(order["id"])
            notice = await b.sandbox.query(order["id"])
            assert notice is not None and notice.status is TradeStatus.PAID
            outcomes = await asyncio.gather(*(b.settle("sandbox", notice, "notify:sandbox")
                                              for _ in range(y)))
            assert sum(o.value == "credited" for o in outcomes) == 1
            paid.append(order["id"])
            counts["credited"] += 1
        elif kind == "gift":
            res = await ctx.sender.send(SendRequest(users[a].user_id, "u", f"g{n}", room,
                                                    streamer.user_id, rose, x))
            counts["gifts"] += res.outcome.value == "ok"
        elif kind == "flush":
            await flush_all(redis, pool)
        elif kind == "refund" and paid:
            oid = paid[a % len(paid)]
            amount = None if x == 0 else x * 100
            try:
                await refunds.request_refund(b, order_id=oid, amount_fen=amount, reason="prop",
                                             actor=admin, idem_key=f"f{n}")
                counts["refunded"] += 1
            except OrderError as exc:
                assert exc.code in ("coins_spent", "refund_exceeds_order",
                                    "amount_not_convertible"), exc.code
                counts["refused"] += 1
        elif kind == "adjust" and x != 0:
            try:
                await adjustments.adjust(b, user_id=users[a].user_id, amount=x, reason="prop",
                                         actor=admin, idem_key=f"a{n}")
            except OrderError as exc:
                assert exc.code == "insufficient_balance"

    async def check() -> None:
        await check_invariants(redis, pool)
        _, diffs = await reconcile.reconcile_wallets(pool, redis)
        assert diffs == []

    @settings(max_examples=25, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.lists(op, min_size=1, max_size=14))
    def sequences(ops: list[tuple[str, int, int, int]]) -> None:
        for o in ops:
            call(step(*o))
        call(check())

    await asyncio.to_thread(sequences)
    await flush_all(redis, pool)
    await check()
    print("money property counts:", counts)
    assert counts["credited"] > 0 and counts["gifts"] > 0, counts


fuzz_headers = st.dictionaries(
    st.sampled_from(["x-sandbox-timestamp", "x-sandbox-signature", "wechatpay-timestamp",
                     "wechatpay-nonce", "wechatpay-signature", "wechatpay-serial",
                     "content-type"]),
    st.one_of(st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=40),
              st.sampled_from([ck.WX_SERIAL, "1700000000", "0"])), max_size=7)
fuzz_bodies = st.one_of(
    st.binary(max_size=2000),
    st.text(max_size=500).map(lambda t: t.encode("utf-8")),
    st.text(max_size=200).map(lambda t: t.encode("utf-16")),
    st.dictionaries(st.text(max_size=12), st.text(max_size=30), max_size=12).map(
        lambda d: "&".join(f"{k}={v}" for k, v in d.items()).encode("utf-8", "replace")),
    st.just(b'{"resource": {"algorithm": "AEAD_AES_256_GCM", "ciphertext": "!!", '
            b'"nonce": 1}}'),
    st.just(b"sign_type=RSA2&sign=%%%&charset=klingon&out_trade_no=R1"),
)


async def test_fuzzed_notifies_credit_nothing_and_never_5xx(srv: RunningServer, pool: Any,
                                                            redis: Any) -> None:
    loop = asyncio.get_running_loop()
    statuses: list[int] = []

    async def post(http: httpx.AsyncClient, channel: str, body: bytes,
                   headers: dict[str, str]) -> None:
        r = await http.post(f"/api/pay/notify/{channel}", content=body, headers=headers)
        statuses.append(r.status_code)
        assert r.status_code < 500, (channel, body[:80], headers, r.status_code, r.text)

    async with httpx.AsyncClient(base_url=srv.base, timeout=10) as http:
        u = await make_user(pool, redis)
        order, _ = await srv._app.state.billing.create_order(
            u.user_id, OrderRequest("sandbox", 600, 6), "fuzz")

        @settings(max_examples=150, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(st.sampled_from(["sandbox", "alipay", "wechatpay", "nope"]), fuzz_bodies,
               fuzz_headers)
        def fuzz(channel: str, body: bytes, headers: dict[str, str]) -> None:
            asyncio.run_coroutine_threadsafe(post(http, channel, body, headers), loop).result(30)

        await asyncio.to_thread(fuzz)
        # Huge bodies, declared or streamed without a length: 413, nothing read into memory.
        for ch in ("sandbox", "alipay", "wechatpay"):
            await post(http, ch, b"a" * (1 << 20), {})

            async def chunks() -> AsyncIterator[bytes]:
                for _ in range(100):
                    yield b"x" * 4096
            r = await http.post(f"/api/pay/notify/{ch}", content=chunks())
            assert r.status_code == 413
        # A correctly signed notify wrapped in the wrong encoding is refused.
        body, h = sandbox_notify(order["id"], 600)
        await post(http, "sandbox", body.decode().encode("utf-16"), h)
        r = await http.post("/api/pay/notify/sandbox", content=body,
                            headers={**h, "x-sandbox-signature": h["x-sandbox-signature"]
                                     .upper()})
        assert r.status_code < 500
    assert 413 in statuses
    assert await pool.fetchval("SELECT count(*) FROM journal_entries WHERE kind = 'recharge'") == 0
    assert await pool.fetchval("SELECT count(*) FROM credit_outbox WHERE op_id LIKE "
                               "'recharge:%'") == 0
    await check_invariants(redis, pool)
