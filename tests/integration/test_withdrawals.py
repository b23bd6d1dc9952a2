"""Withdrawals over HTTP against real Postgres + Valkey: KYC and payout methods (encrypted,
masked), the available-balance race, review by finance only, reject restores funds,
payout through the sandbox, a payout notify x20 pays once, statements and CSV. The
conservation invariant is checked after every step."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import asyncpg
import httpx
import orjson
from redis.asyncio import Redis

from billing.channels import sandbox as sb
from server.auth import Principal, Role
from tests.integration.money_support import SANDBOX_KEY, auth, wait_until
from tests.integration.payout_support import gifts_at
from tests.support import RunningServer, check_invariants, make_room, make_user

TZ = ZoneInfo("Asia/Shanghai")
ID_NUMBER = "11010519491231002X"


async def post(http: httpx.AsyncClient, url: str, p: Principal, body: dict[str, object],
               key: str | None = None) -> httpx.Response:
    h = auth(p) | ({"idempotency-key": key} if key else {})
    return await http.post(url, headers=h, content=orjson.dumps(body))


async def earnings(http: httpx.AsyncClient, p: Principal) -> dict[str, int]:
    r = await http.get("/api/creator/earnings", headers=auth(p))
    assert r.status_code == 200, r.text
    return dict(r.json())


def payout_notify(wid: str, amount_fen: int, status: str = "PAID",
                  key: str = SANDBOX_KEY) -> tuple[bytes, dict[str, str]]:
    body = sb.payout_notify_body("SPtest", wid, amount_fen, status)
    t = str(int(time.time()))
    return body, {"content-type": "application/json", "x-sandbox-timestamp": t,
                  "x-sandbox-signature": sb.sign(key.encode(), t, body)}


async def test_withdrawal_lifecycle(srv: RunningServer, http: httpx.AsyncClient,
                                    pool: asyncpg.Pool, redis: Redis) -> None:
    finance = await make_user(pool, redis, role=Role.FINANCE)
    support = await make_user(pool, redis, role=Role.SUPPORT)
    ops = await make_user(pool, redis, role=Role.OPS)
    room, creator = await make_room(pool, redis)
    fan = await make_user(pool, redis, coins=40_000)
    # 30 000 coins of gifts two local days ago, settled at the built-in 50 %, T+1.
    day = (datetime.now(TZ) - timedelta(days=2)).date()
    noon = datetime(day.year, day.month, day.day, 12, tzinfo=TZ)
    await gifts_at(pool, redis, sender_id=fan.user_id, streamer_id=creator.user_id, room=room,
                   items=[(noon, 10_000), (noon + timedelta(hours=1), 20_000)])
    r = await post(http, "/api/admin/settle", support, {"date": day.isoformat()})
    assert r.status_code == 403  # support reads only
    r = await post(http, "/api/admin/settle", finance, {"date": day.isoformat()})
    assert r.status_code == 200 and r.json()["creator_coins"] == 15_000, r.text
    r = await post(http, "/api/admin/settle", finance, {"date": day.isoformat()})
    assert r.json()["settled_count"] == 0 and r.json()["already"] == 1
    e = await earnings(http, creator)
    assert (e["available_coins"], e["pending_coins"], e["unsettled_coins"]) == (15_000, 0, 0)
    await check_invariants(redis, pool)

    # No withdrawal without a verified identity and a payout method.
    r = await post(http, "/api/creator/payout-methods", creator,
                   {"kind": "bank_card", "account": "6222 0212 3456 7890", "bank": "ICBC"})
    assert r.status_code == 201 and r.json()["method"]["account"] == "**** 7890"
    card = r.json()["method"]["id"]
    r = await post(http, "/api/creator/withdrawals", creator,
                   {"amount_coins": 10_000, "method_id": card}, key="k0")
    assert r.status_code == 409 and r.json()["code"] == "kyc_required"
    r = await post(http, "/api/creator/kyc", creator, {"real_name": "张三丰",
                                                       "id_number": ID_NUMBER})
    assert r.status_code == 201 and r.json()["kyc"]["id_number"] == "110***********002X"
    assert r.json()["kyc"]["real_name"] == "张**"
    raw = await pool.fetchrow("SELECT * FROM creator_kyc WHERE creator_id = $1",
                              creator.user_id)
    assert ID_NUMBER.encode() not in raw["id_number_enc"]
    assert "张三丰".encode() not in raw["name_enc"]
    assert b"7890" not in await pool.fetchval("SELECT account_enc FROM payout_methods")
    for who in (support, ops, creator):
        r = await post(http, f"/api/admin/kyc/{creator.user_id}/review", who,
                       {"decision": "approve", "reason": "ok"})
        assert r.status_code == 403
    r = await post(http, f"/api/admin/kyc/{creator.user_id}/review", finance,
                   {"decision": "approve", "reason": "documents match"})
    assert r.status_code == 200 and r.json()["kyc"]["status"] == "approved"

    # Limits.
    r = await post(http, "/api/creator/withdrawals", creator,
                   {"amount_coins": 999, "method_id": card}, key="small")
    assert r.status_code == 400 and r.json()["code"] == "below_minimum"
    # The race: two requests spending the same coins at once -> one succeeds.
    rs = await asyncio.gather(*(post(http, "/api/creator/withdrawals", creator,
                                     {"amount_coins": 10_000, "method_id": card}, key=f"race{i}")
                                for i in range(2)))
    assert sorted(x.status_code for x in rs) == [201, 409], [x.text for x in rs]
    won = next(x for x in rs if x.status_code == 201).json()["withdrawal"]
    assert next(x for x in rs if x.status_code == 409).json()["code"] == "insufficient_available"
    assert won["amount_fen"] == 100_000 and won["status"] == "REQUESTED"
    # A double submit (same key) is the same withdrawal.
    again = await post(http, "/api/creator/withdrawals", creator,
                       {"amount_coins": 10_000, "method_id": card},
                       key=next(f"race{i}" for i, x in enumerate(rs) if x.status_code == 201))
    assert again.status_code == 200 and again.json()["withdrawal"]["id"] == won["id"]
    e = await earnings(http, creator)
    assert (e["available_coins"], e["frozen_coins"]) == (5_000, 10_000)
    await check_invariants(redis, pool)

    # Reject restores the funds exactly.
    r = await post(http, "/api/creator/withdrawals", creator,
                   {"amount_coins": 3_000, "method_id": card}, key="to-reject")
    rejected = r.json()["withdrawal"]["id"]
    assert (await earnings(http, creator))["available_coins"] == 2_000
    r = await post(http, f"/api/admin/withdrawals/{rejected}/review", finance,
                   {"decision": "reject"})
    assert r.status_code == 400 and r.json()["code"] == "reason_required"
    r = await post(http, f"/api/admin/withdrawals/{rejected}/review", finance,
                   {"decision": "reject", "reason": "name does not match the card"})
    assert r.status_code == 200 and r.json()["withdrawal"]["status"] == "REJECTED"
    e = await earnings(http, creator)
    assert (e["available_coins"], e["frozen_coins"]) == (5_000, 10_000)
    r = await post(http, f"/api/admin/withdrawals/{rejected}/review", finance,
                   {"decision": "approve", "reason": "changed my mind"})
    assert r.status_code == 409 and r.json()["code"] == "illegal_transition"
    await check_invariants(redis, pool)

    # Support, ops and the creator cannot approve; finance approves twice at once: once.
    for who in (support, ops, creator):
        r = await post(http, f"/api/admin/withdrawals/{won['id']}/review", who,
                       {"decision": "approve", "reason": "x"})
        assert r.status_code == 403
    rs = await asyncio.gather(*(post(http, f"/api/admin/withdrawals/{won['id']}/review",
                                     finance, {"decision": "approve", "reason": "checked"})
                                for _ in range(2)))
    assert all(x.status_code == 200 for x in rs), [x.text for x in rs]
    assert sorted(x.json()["withdrawal"]["already"] for x in rs) == [False, True]
    assert await pool.fetchval("SELECT count(*) FROM sandbox_payouts") == 1
    # A forged notify changes nothing.
    body, headers = payout_notify(won["id"], 100_000, key="wrong-key")
    r = await http.post("/api/payout/notify/sandbox", content=body, headers=headers)
    assert r.status_code == 400 and r.text == "fail"
    # The sandbox's own notify and 20 more copies at once: paid exactly once.
    body, headers = payout_notify(won["id"], 100_000)
    rs = await asyncio.gather(*(http.post("/api/payout/notify/sandbox", content=body,
                                          headers=headers) for _ in range(20)))
    assert all(x.status_code == 200 and x.text == "success" for x in rs)
    w = (await http.get("/api/creator/withdrawals", headers=auth(creator))).json()["withdrawals"]
    assert {x["id"]: x["status"] for x in w}[won["id"]] == "PAID"
    assert await pool.fetchval("SELECT count(*) FROM journal_entries WHERE "
                               "kind = 'withdrawal_payout'") == 1
    assert await pool.fetchval("SELECT balance FROM account_balances WHERE "
                               "account = 'withdrawals_paid'") == 10_000
    e = await earnings(http, creator)
    assert (e["available_coins"], e["frozen_coins"], e["withdrawn_coins"]) == (5_000, 0, 10_000)
    await check_invariants(redis, pool)

    # A payout the channel fails (sandbox: an account ending in 0000) gives the coins back.
    r = await post(http, "/api/creator/payout-methods", creator,
                   {"kind": "alipay", "account": "13800000000"})
    bad = r.json()["method"]["id"]
    r = await post(http, "/api/creator/withdrawals", creator,
                   {"amount_coins": 2_000, "method_id": bad}, key="fails")
    failing = r.json()["withdrawal"]["id"]
    r = await post(http, f"/api/admin/withdrawals/{failing}/review", finance,
                   {"decision": "approve", "reason": "ok"})
    assert r.json()["withdrawal"]["status"] == "APPROVED"

    async def failed() -> bool:  # delivered by the sandbox's notifier, the real path
        return await pool.fetchval("SELECT status FROM withdrawals WHERE id = $1",
                                   failing) == "FAILED"
    await wait_until(failed, timeout=10)
    e = await earnings(http, creator)
    assert (e["available_coins"], e["frozen_coins"]) == (5_000, 0)
    await check_invariants(redis, pool)

    # Statements: the creator's own, and any creator's for staff (support reads).
    r = await http.get("/api/creator/statement", headers=auth(creator),
                       params={"from": day.isoformat()})
    st = r.json()
    assert st["daily"] == [{"day": day.isoformat(), "gifts": 2, "items": 30_000,
                            "gross_coins": 30_000}]
    assert st["by_gift"][0]["gift_code"] == "rose"
    assert st["settlements"][0]["platform_coins"] == 15_000
    assert {x["status"] for x in st["withdrawals"]} == {"PAID", "REJECTED", "FAILED"}
    r = await http.get(f"/api/admin/creators/{creator.user_id}/statement.csv",
                       headers=auth(support),
                       params={"from": day.isoformat(), "kind": "withdrawals"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    lines = r.text.splitlines()
    assert lines[0].startswith("id,created_at,amount_coins") and len(lines) == 4
    assert "**** 7890" in r.text and "6222" not in r.text
    r = await http.get("/api/creator/statement", headers=auth(fan))
    assert r.status_code == 403  # viewers have no statement
    r = await http.get("/api/admin/withdrawals", headers=auth(fan))
    assert r.status_code == 403

    # Every decision is in the audit log, and the chain verifies.
    actions = [x["action"] for x in (await http.get("/api/admin/audit",
                                                     headers=auth(support))).json()["records"]]
    for a in ("settlement.run", "kyc.approve", "withdrawal.request", "withdrawal.reject",
              "withdrawal.approve", "withdrawal.paid", "withdrawal.failed"):
        assert a in actions, a
    assert actions.count("withdrawal.paid") == 1
    assert (await http.get("/api/admin/audit/verify", headers=auth(finance))).json()["ok"]


async def test_revenue_rules_over_http_need_ops(srv: RunningServer, http: httpx.AsyncClient,
                                                pool: asyncpg.Pool, redis: Redis) -> None:
    ops = await make_user(pool, redis, role=Role.OPS)
    finance = await make_user(pool, redis, role=Role.FINANCE)
    _, creator = await make_room(pool, redis)
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
    rule = {"creator_id": creator.user_id, "effective_from": tomorrow, "kind": "tiered",
            "tiers": [[0, 5000], [10_000, 4000], [100_000, 3000]], "reason": "new contract"}
    for who in (finance, creator):
        assert (await post(http, "/api/admin/revenue-rules", who, rule)).status_code == 403
    r = await post(http, "/api/admin/revenue-rules", ops, {**rule, "reason": ""})
    assert r.status_code == 400 and r.json()["code"] == "reason_required"
    r = await post(http, "/api/admin/revenue-rules", ops, {**rule, "tiers": [[5, 1]]})
    assert r.status_code == 400 and r.json()["code"] == "bad_rule"
    r = await post(http, "/api/admin/revenue-rules", ops, rule)
    assert r.status_code == 201, r.text
    r = await http.get("/api/admin/revenue-rules", headers=auth(finance),
                       params={"creator_id": creator.user_id})
    assert r.json()["rules"][0]["tiers"] == rule["tiers"]
    audit = (await http.get("/api/admin/audit", headers=auth(finance))).json()["records"]
    assert audit[-1]["action"] == "revenue_rule.set" and audit[-1]["reason"] == "new contract"
