"""Daily reconciliation finds every seeded fault, and nothing on clean books.

Books are made through the real paths: sandbox payments (pay page + notify),
gifts over WebSocket left unflushed in the stream (in flight at the cut),
a refund, an adjustment. Then faults are seeded one at a time.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import orjson
import pytest

from billing import reconcile
from billing.channels.sandbox import StatementRow, parse_statement, statement_csv
from server import keys
from server.auth import Role
from tests.integration.money_support import auth, create_order, money_server, wait_until
from tests.support import Client, check_invariants, make_room, make_user

TZ = "Asia/Shanghai"


@pytest.fixture
async def books(redis_url: str, database_url: str, pool: Any, redis: Any
                ) -> AsyncIterator[dict[str, Any]]:
    srv = money_server(redis_url, database_url)
    await srv.start()
    try:
        async with httpx.AsyncClient(base_url=srv.base, timeout=10) as http:
            admin = await make_user(pool, redis, role=Role.ADMIN)
            users = [await make_user(pool, redis) for _ in range(3)]
            orders = []
            for i, u in enumerate(users):
                o = (await create_order(http, u, key="k", pack_yuan=[6, 30, 98][i])).json()
                orders.append(o["order"]["id"])
                await http.post(o["order"]["pay_url"])
            for oid, u in zip(orders, users, strict=True):
                async def paid(oid: str = oid, u: Any = u) -> bool:
                    r = await http.get(f"/api/recharge/orders/{oid}", headers=auth(u))
                    return bool(r.json()["order"]["status"] == "SUCCESS")
                await wait_until(paid)
            r = await http.post("/api/admin/refunds", headers={**auth(admin),
                                                                "idempotency-key": "f1"},
                                content=orjson.dumps({"order_id": orders[0], "amount_fen": 300,
                                                      "reason": "asked"}))
            assert r.status_code == 201, r.text
            r = await http.post("/api/admin/adjustments", headers={**auth(admin),
                                                                    "idempotency-key": "a1"},
                                content=orjson.dumps({"user_id": users[1].user_id,
                                                      "amount": 7, "reason": "goodwill"}))
            assert r.status_code == 201
            room, _ = await make_room(pool, redis)
            c = await Client.connect(srv, users[2])
            await c.join(room)
            for _ in range(5):
                assert (await c.gift(room, "rose", 2))["type"] == "ack"
            await c.close()
            assert await redis.xlen(keys.LEDGER_STREAM) == 5  # in flight: unflushed
            await check_invariants(redis, pool)
            day = datetime.now(ZoneInfo(TZ)).date()
            sb = srv._app.state.billing.sandbox
            yield {"srv": srv, "day": day, "orders": orders, "users": users,
                   "statement": await sb.statement(day), "sandbox": sb}
    finally:
        await srv.stop()


async def run(pool: Any, redis: Any, b: dict[str, Any],
              statement: list[StatementRow] | None = None) -> reconcile.Report:
    return await reconcile.reconcile(pool, redis, day=b["day"], tz=TZ, channel="sandbox",
                                     statement=b["statement"] if statement is None
                                     else statement)


def kinds(rep: reconcile.Report) -> set[tuple[str, str]]:
    return {(d.kind, d.key) for d in rep.differences}


async def giftd_cli(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    exe = str(Path(sys.executable).with_name("giftd"))
    p = await asyncio.create_subprocess_exec(exe, *args, env={**os.environ, **env},
                                             stdout=asyncio.subprocess.PIPE,
                                             stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(p.communicate(), 60)
    assert p.returncode is not None
    return p.returncode, out.decode(), err.decode()


async def test_clean_books_reconcile_and_every_seeded_fault_is_found(
        books: dict[str, Any], pool: Any, redis: Any, redis_url: str, database_url: str,
        tmp_path: Path) -> None:
    b = books
    _o0, o1, o2 = b["orders"]
    rep = await run(pool, redis, b)
    assert rep.ok, rep.differences
    assert rep.counts["statement_rows"] == 4 and rep.counts["our_payments"] == 3
    assert rep.cut_position != "0-0"

    # The CLI: progress bar on stderr, JSON report, exit 0 on clean books.
    env = {"REDIS_URL": redis_url, "DATABASE_URL": database_url, "GIFTD_TIMEZONE": TZ,
           "GIFTD_VAR_DIR": str(tmp_path / "var")}
    code, out, err = await giftd_cli("reconcile", "--date", b["day"].isoformat(), env=env)
    assert code == 0, (out, err)
    assert json.loads(out)["ok"] is True and "reconcile" in err
    assert (tmp_path / "var" / "statements" / f"sandbox-{b['day']}.csv").exists()

    # Faults in the channel's statement file.
    st: list[StatementRow] = b["statement"]
    pay = [r for r in st if r.type == "PAY"]
    deleted = [r for r in st if r is not pay[1]]
    assert ("missing_in_channel", pay[1].out_trade_no) in kinds(await run(pool, redis, b,
                                                                          deleted))
    duplicated = [*st, pay[2]]
    assert ("duplicate_in_channel", pay[2].out_trade_no) in kinds(await run(pool, redis, b,
                                                                            duplicated))
    altered = [r if r is not pay[0] else StatementRow(r.type, r.trade_no, r.out_trade_no, "",
                                                      r.amount_fen + 1, r.time) for r in st]
    assert ("amount_mismatch", pay[0].out_trade_no) in kinds(await run(pool, redis, b, altered))
    orphan = [*st, StatementRow("PAY", "Sorphan", "Rorphan0000000000000000000", "", 64800,
                                pay[0].time)]
    assert ("missing_in_ours", "Rorphan0000000000000000000") in kinds(
        await run(pool, redis, b, orphan))
    refund_row = next(r for r in st if r.type == "REFUND")
    no_refund = [r for r in st if r is not refund_row]
    assert ("refund_missing_in_channel", refund_row.out_refund_no) in kinds(
        await run(pool, redis, b, no_refund))

    # The CLI exits 1 on a faulty statement file and lists the difference.
    f = tmp_path / "statement.csv"
    f.write_text(statement_csv(orphan))
    assert parse_statement(f.read_text()) == orphan
    code, out, _ = await giftd_cli("reconcile", "--date", b["day"].isoformat(), "--statement",
                                   str(f), "--quiet", env=env)
    assert code == 1 and json.loads(out)["differences"][0]["kind"] == "missing_in_ours"
    code, _, _ = await giftd_cli("reconcile", "--date", "yesterday", env=env)
    assert code == 2

    # Faults on our side: an altered amount, a deleted order row.
    await pool.execute("UPDATE recharge_orders SET amount_fen = amount_fen + 100 WHERE id = $1",
                       o1)
    assert ("amount_mismatch", o1) in kinds(await run(pool, redis, b))
    await pool.execute("UPDATE recharge_orders SET amount_fen = amount_fen - 100 WHERE id = $1",
                       o1)
    assert (await run(pool, redis, b)).ok
    await pool.execute("DELETE FROM first_recharge_bonus WHERE order_id = $1", o2)
    await pool.execute("DELETE FROM recharge_orders WHERE id = $1", o2)
    got = kinds(await run(pool, redis, b))
    assert ("missing_in_ours", o2) in got and ("entry_without_order", o2) in got

    # A Redis wallet that drifted from the journal (in-flight gifts do not count as drift).
    uid = b["users"][1].user_id
    await redis.incrby(keys.balance(uid), 3)
    got = kinds(await run(pool, redis, b))
    assert ("wallet_mismatch", f"wallet:{uid}") in got


async def test_gifts_in_flight_at_the_cut_are_not_differences(books: dict[str, Any],
                                                              pool: Any, redis: Any) -> None:
    """Flush half of the stream between reads: still no difference, to the coin."""
    from tests.support import flush_all

    b = books
    cut, expected = await reconcile.take_cut(pool, redis)
    assert cut.unflushed and reconcile.diff_wallets(cut.balances, expected) == []
    await flush_all(redis, pool)
    cut2, expected2 = await reconcile.take_cut(pool, redis)
    assert not cut2.unflushed and reconcile.diff_wallets(cut2.balances, expected2) == []
    assert (await run(pool, redis, b)).ok
    await check_invariants(redis, pool)


async def test_giftd_audit_verify_cli(books: dict[str, Any], pool: Any, redis_url: str,
                                      database_url: str, tmp_path: Path) -> None:
    env = {"REDIS_URL": redis_url, "DATABASE_URL": database_url,
           "GIFTD_VAR_DIR": str(tmp_path / "var")}
    code, out, _ = await giftd_cli("audit", "verify", env=env)
    assert code == 0 and json.loads(out)["records"] == 2  # the refund and the adjustment
    async with pool.acquire() as conn:
        await conn.execute("SET session_replication_role = replica")
        await conn.execute("UPDATE audit_log SET reason = 'nobody asked' WHERE seq = 1")
        await conn.execute("SET session_replication_role = origin")
    code, out, _ = await giftd_cli("audit", "verify", env=env)
    assert code == 1 and json.loads(out)["problems"][0] == {
        "seq": 1, "kind": "altered", "detail": "the record does not match its hash"}


async def test_wallet_cut_is_exact_while_gifts_flush_and_credits_land(
        redis_url: str, database_url: str, pool: Any, redis: Any) -> None:
    """Reconcile in the middle of traffic: gifts being debited, the flusher committing,
    recharges settling. Gifts in flight must never show as differences, not even at a
    single cut; a rare credit landing between the two reads is allowed at one cut and must
    be gone after the confirmation cuts."""
    from billing.flusher import Flusher
    from billing.orders import OrderRequest
    from gifts.sender import SendRequest

    srv = money_server(redis_url, database_url)
    await srv.start()
    flusher = Flusher(redis, pool, consumer="cut-test", batch_max=50, block_ms=5,
                      claim_idle_ms=0)
    flush_task = asyncio.create_task(flusher.run())
    try:
        b, ctx = srv._app.state.billing, srv.ctx
        users = [await make_user(pool, redis, coins=100_000) for _ in range(4)]
        room, streamer = await make_room(pool, redis)
        rose = ctx.catalog.get("rose")
        assert rose is not None
        stop = asyncio.Event()

        async def gifts(u: Any) -> None:
            n = 0
            while not stop.is_set():
                n += 1
                await ctx.sender.send(SendRequest(u.user_id, "u", f"c{u.user_id}-{n}", room,
                                                  streamer.user_id, rose, 1 + n % 3))

        async def recharges() -> None:
            n = 0
            while not stop.is_set():
                n += 1
                order, _ = await b.create_order(users[n % 4].user_id,
                                                OrderRequest("sandbox", 600, 6), f"cut{n}")
                await b.sandbox.pay(order["id"])
                notice = await b.sandbox.query(order["id"])
                await b.settle("sandbox", notice, "query")
                await asyncio.sleep(0.01)

        workers = [asyncio.create_task(gifts(u)) for u in users]
        workers.append(asyncio.create_task(recharges()))
        single_cut_diffs = in_flight = 0
        try:
            for _ in range(15):
                await asyncio.sleep(0.05)
                cut, expected = await reconcile.take_cut(pool, redis)
                diffs = reconcile.diff_wallets(cut.balances, expected)
                single_cut_diffs += len(diffs)
                in_flight += len(cut.unflushed)
                _, confirmed = await reconcile.reconcile_wallets(pool, redis)
                assert confirmed == [], confirmed
        finally:
            stop.set()
            await asyncio.gather(*workers)
        print("cut test: single-cut diffs", single_cut_diffs, "in-flight seen", in_flight,
              "recharges", await pool.fetchval("SELECT count(*) FROM recharge_orders"))
        assert single_cut_diffs <= 2, single_cut_diffs
        assert in_flight > 0  # the cuts really were taken with gifts in flight
        await flush_all_and_check(redis, pool)
    finally:
        flusher.stop()
        await flush_task
        await srv.stop()


async def flush_all_and_check(redis: Any, pool: Any) -> None:
    from tests.support import flush_all

    await flush_all(redis, pool)
    await check_invariants(redis, pool)
    _, diffs = await reconcile.reconcile_wallets(pool, redis)
    assert diffs == []
