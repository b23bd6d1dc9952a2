"""Refunds, manual adjustments and the hash-chained audit log, against real Postgres + Valkey."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson
import pytest

from billing import audit
from billing.debits import resume_debits
from billing.refunds import finish
from server.auth import Principal, Role
from tests.integration.money_support import (
    auth,
    balance,
    create_order,
    wait_until,
)
from tests.support import Client, RunningServer, check_invariants, make_room, make_user


async def paid_order(http: httpx.AsyncClient, u: Principal, key: str, yuan: int) -> str:
    """An order paid through the sandbox's pay page, settled by its notify."""
    o = (await create_order(http, u, key=key, pack_yuan=yuan)).json()["order"]
    await http.post(o["pay_url"])

    async def settled() -> bool:
        r = await http.get(f"/api/recharge/orders/{o['id']}", headers=auth(u))
        return bool(r.json()["order"]["status"] == "SUCCESS")
    await wait_until(settled)
    return str(o["id"])


async def refund(http: httpx.AsyncClient, admin: Principal, key: str, **body: Any
                 ) -> httpx.Response:
    return await http.post("/api/admin/refunds",
                           headers={**auth(admin), "idempotency-key": key},
                           content=orjson.dumps(body))


async def adjust(http: httpx.AsyncClient, admin: Principal, key: str, **body: Any
                 ) -> httpx.Response:
    return await http.post("/api/admin/adjustments",
                           headers={**auth(admin), "idempotency-key": key},
                           content=orjson.dumps(body))


async def test_refund_full_partial_spent_and_replayed(srv: RunningServer,
                                                      http: httpx.AsyncClient,
                                                      pool: Any, redis: Any) -> None:
    admin = await make_user(pool, redis, role=Role.ADMIN)
    u = await make_user(pool, redis)
    first = await paid_order(http, u, "a", 6)      # 60 coins + 6 bonus
    second = await paid_order(http, u, "b", 30)    # 300 coins
    assert await balance(http, u) == 366
    # A viewer cannot refund.
    r = await refund(http, u, "v1", order_id=first, reason="mine")
    assert r.status_code == 403
    # No reason: refused, nothing moves.
    r = await refund(http, admin, "r0", order_id=first, reason="  ")
    assert r.status_code == 400 and r.json()["code"] == "reason_required"
    # Partial refund of 2 of 6 yuan: 20 coins + 2 of the 6 bonus coins.
    r = await refund(http, admin, "r1", order_id=first, amount_fen=200, reason="customer asked")
    assert r.status_code == 201, r.text
    assert r.json()["refund"]["coins"] == 20 and r.json()["refund"]["bonus_coins"] == 2
    assert await balance(http, u) == 344
    # Replay of the same key: the same refund, nothing taken twice.
    r2 = await refund(http, admin, "r1", order_id=first, amount_fen=200, reason="customer asked")
    assert r2.json()["refund"]["id"] == r.json()["refund"]["id"]
    assert await balance(http, u) == 344
    r3 = await refund(http, admin, "r1", order_id=second, reason="other")
    assert r3.status_code == 409 and r3.json()["code"] == "idempotency_conflict"
    # The rest of the order: exactly the remaining 40 + 4.
    r = await refund(http, admin, "r2", order_id=first, reason="rest")
    assert r.json()["refund"]["coins"] == 40 and r.json()["refund"]["bonus_coins"] == 4
    assert await balance(http, u) == 300
    r = await refund(http, admin, "r3", order_id=first, amount_fen=100, reason="again")
    assert r.status_code == 409 and r.json()["code"] == "refund_exceeds_order"
    row = await pool.fetchrow("SELECT * FROM recharge_orders WHERE id = $1", first)
    assert row["status"] == "REFUNDED" and row["refunded_fen"] == 600
    # Spend most of the second order's coins, then try to refund it: refused, nothing moves.
    room, _ = await make_room(pool, redis)
    c = await Client.connect(srv, u)
    try:
        await c.join(room)
        ack = await c.gift(room, "rose", count=10)
        assert ack["type"] == "ack", ack
    finally:
        await c.close()
    before = await balance(http, u)
    r = await refund(http, admin, "r4", order_id=second, reason="too late")
    assert r.status_code == 409 and r.json()["code"] == "coins_spent"
    assert await balance(http, u) == before
    assert (await pool.fetchval("SELECT status FROM recharge_orders WHERE id=$1", second)
            == "SUCCESS")
    # Unpaid / unknown orders.
    pending = (await create_order(http, u, key="p", pack_yuan=6)).json()["order"]["id"]
    r = await refund(http, admin, "r5", order_id=pending, reason="x")
    assert r.json()["code"] == "order_not_refundable"
    r = await refund(http, admin, "r6", order_id="Rnope", reason="x")
    assert r.status_code == 404
    # The sandbox paid the money back for the done refunds.
    assert await pool.fetchval("SELECT sum(amount_fen) FROM sandbox_refunds") == 600
    actions = [x.action for x in await audit.load(pool)]
    assert actions.count("refund") == 2 and actions.count("refund.refused") == 1
    await check_invariants(redis, pool)


async def test_concurrent_refunds_never_exceed_the_order(srv: RunningServer,
                                                         http: httpx.AsyncClient,
                                                         pool: Any, redis: Any) -> None:
    admin = await make_user(pool, redis, role=Role.ADMIN)
    u = await make_user(pool, redis)
    oid = await paid_order(http, u, "a", 98)
    rs = await asyncio.gather(*(refund(http, admin, f"c{i}", order_id=oid, amount_fen=4900,
                                       reason="race") for i in range(6)))
    assert sorted(r.status_code for r in rs) == [201, 201, 409, 409, 409, 409]
    assert await balance(http, u) == 0
    await check_invariants(redis, pool)


async def test_adjustments_credit_debit_refuse_and_audit(srv: RunningServer,
                                                         http: httpx.AsyncClient,
                                                         pool: Any, redis: Any) -> None:
    admin = await make_user(pool, redis, role=Role.ADMIN)
    u = await make_user(pool, redis)
    r = await adjust(http, admin, "a1", user_id=u.user_id, amount=500, reason="compensation")
    assert r.status_code == 201, r.text
    assert await balance(http, u) == 500
    r = await adjust(http, admin, "a1", user_id=u.user_id, amount=500, reason="compensation")
    assert r.status_code == 201 and await balance(http, u) == 500  # replayed
    r = await adjust(http, admin, "a2", user_id=u.user_id, amount=-120, reason="clawback")
    assert r.status_code == 201 and await balance(http, u) == 380
    r = await adjust(http, admin, "a3", user_id=u.user_id, amount=-1000, reason="too much")
    assert r.status_code == 409 and r.json()["code"] == "insufficient_balance"
    assert await balance(http, u) == 380
    for body, code, status in [
        ({"user_id": u.user_id, "amount": 5}, "reason_required", 400),
        ({"user_id": u.user_id, "amount": 0, "reason": "x"}, "amount_out_of_range", 400),
        ({"user_id": u.user_id, "amount": 1.5, "reason": "x"}, "bad_field", 400),
        ({"user_id": 999999, "amount": 5, "reason": "x"}, "unknown_user", 404),
    ]:
        r = await adjust(http, admin, f"bad{code}", **body)
        assert (r.status_code, r.json()["code"]) == (status, code), body
    r = await adjust(http, u, "self", user_id=u.user_id, amount=10**6, reason="free money")
    assert r.status_code == 403
    recs = await audit.load(pool)
    assert [(x.action, x.actor, x.reason) for x in recs] == [
        ("adjustment", admin.name, "compensation"), ("adjustment", admin.name, "clawback"),
        ("adjustment.refused", admin.name, "too much")]
    report = (await http.get("/api/admin/audit/verify", headers=auth(admin))).json()
    assert report["ok"] and report["records"] == 3
    assert (await http.get("/api/admin/audit/verify", headers=auth(u))).status_code == 403
    await check_invariants(redis, pool)


async def test_a_debit_interrupted_after_redis_is_finished_once(srv: RunningServer,
                                                               http: httpx.AsyncClient,
                                                               pool: Any, redis: Any) -> None:
    """Crash between the Redis debit and the journal: resume_debits finishes it, once."""
    admin = await make_user(pool, redis, role=Role.ADMIN)
    u = await make_user(pool, redis)
    oid = await paid_order(http, u, "a", 6)
    b = srv._app.state.billing
    from billing import refunds as refunds_mod

    real_finish = refunds_mod.finish
    async def crash(*a: Any, **k: Any) -> None:
        raise ConnectionError("process died")
    refunds_mod.finish = crash  # type: ignore[assignment]
    try:
        with pytest.raises(ConnectionError):
            await refunds_mod.request_refund(b, order_id=oid, amount_fen=None, reason="crash",
                                             actor=admin, idem_key="k")
    finally:
        refunds_mod.finish = real_finish  # type: ignore[assignment]
    assert await balance(http, u) == 0  # Redis debited, journal not yet written
    await check_invariants(redis, pool)  # the pending debit is accounted for
    assert await resume_debits(pool, redis, b.debit_script, older_than_s=0) == 1
    assert await resume_debits(pool, redis, b.debit_script, older_than_s=0) == 0
    await finish(pool, (await pool.fetchval("SELECT id FROM refunds")), __import__(
        "billing.debits", fromlist=["Debit"]).Debit.OK)  # a late duplicate finish: no-op
    assert await pool.fetchval("SELECT count(*) FROM journal_entries WHERE kind='refund'") == 1
    assert await balance(http, u) == 0
    await check_invariants(redis, pool)


async def test_audit_table_refuses_changes_and_verify_finds_tampering(pool: Any) -> None:
    async with pool.acquire() as conn:
        for i in range(5):
            async with conn.transaction():
                await audit.record(conn, actor_id=None, actor="ops", action="rule.change",
                                   target=f"rule:{i}", reason=f"because {i}", detail={"i": i})
        for sql in ("UPDATE audit_log SET reason = 'x' WHERE seq = 2",
                    "DELETE FROM audit_log WHERE seq = 2", "TRUNCATE audit_log"):
            with pytest.raises(Exception, match="append-only"):
                await conn.execute(sql)
        assert audit.verify_chain(await audit.load(conn)).ok

        async def tamper(sql: str, *args: Any) -> audit.ChainReport:
            async with conn.transaction():
                await conn.execute("SET LOCAL session_replication_role = replica")  # no triggers
                for i, part in enumerate(sql.split(";")):
                    await conn.execute(part, *(args if i == 0 else ()))
                report = audit.verify_chain(await audit.load(conn))
                raise _Rollback(report)

        async def check(sql: str, *args: Any) -> audit.ChainReport:
            try:
                await tamper(sql, *args)
            except _Rollback as rb:
                return rb.report
            raise AssertionError

        altered = await check("UPDATE audit_log SET reason = 'nothing to see' WHERE seq = 3")
        assert [(p.seq, p.kind) for p in altered.problems] == [(3, "altered")]
        removed = await check("DELETE FROM audit_log WHERE seq = 2")
        assert [(p.seq, p.kind) for p in removed.problems] == [(3, "removed")]
        recs = await audit.load(conn)
        # An inserted record: renumber the tail to make room, forge a self-consistent record.
        fake_at = recs[1].at
        fake_hash = audit.record_hash(recs[1].hash, 3, fake_at, None, "mallory", "refund",
                                      "order:x", "forged", "{}")
        inserted = await check(
            """WITH shifted AS (UPDATE audit_log SET seq = seq + 1000 WHERE seq >= 3 RETURNING 1)
               INSERT INTO audit_log SELECT 3, $1, NULL, 'mallory', 'refund', 'order:x',
                                            'forged', '{}', $2, $3 FROM (SELECT count(*)
                                            FROM shifted) x;
               UPDATE audit_log SET seq = seq - 999 WHERE seq > 1000""",
            fake_at, recs[1].hash, fake_hash)
        assert (3, "inserted") in [(p.seq, p.kind) for p in inserted.problems]
        assert audit.verify_chain(await audit.load(conn)).ok  # all rolled back


class _Rollback(Exception):
    def __init__(self, report: audit.ChainReport) -> None:
        super().__init__("rollback")
        self.report = report


async def test_witness_catches_records_cut_off_the_end(pool: Any, redis: Any) -> None:
    async with pool.acquire() as conn:
        for i in range(4):
            async with conn.transaction():
                await audit.record(conn, actor_id=None, actor="ops", action="rule.change",
                                   target=f"rule:{i}", reason="r", detail={})
        assert await audit.witness(conn, redis) is not None
        wit = await audit.load_witness(redis)
        assert wit[-1][0] == 4
        assert audit.verify_chain(await audit.load(conn), wit).ok
        await conn.execute("SET session_replication_role = replica")
        await conn.execute("DELETE FROM audit_log WHERE seq = 4")  # the chain alone looks fine
        await conn.execute("SET session_replication_role = origin")
        recs = await audit.load(conn)
        assert audit.verify_chain(recs).ok
        report = audit.verify_chain(recs, wit)
        assert [(p.seq, p.kind) for p in report.problems] == [(4, "removed")]
