"""Settlement: a month of gifts crossing tier boundaries and a mid-month rule change
settles to exact shares; re-running changes nothing; T+N in the configured zone."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import asyncpg
import orjson
import pytest
from redis.asyncio import Redis

from billing.revenue import RuleError
from billing.settlement import SettleError, add_rule, balances, settle_day
from server import keys
from server.auth import Role
from tests.integration.payout_support import gifts_at
from tests.support import check_invariants, make_room, make_user, settings_for_tests

TZ = ZoneInfo("Asia/Shanghai")
JULY_2 = datetime(2025, 7, 2, 12, 0, tzinfo=TZ)


def local(d: int, h: int = 12, m: int = 0, s: int = 0) -> datetime:
    return datetime(2025, 6, d, h, m, s, tzinfo=TZ)


async def _snapshot(pool: asyncpg.Pool) -> tuple[object, ...]:
    return (await pool.fetchval("SELECT count(*) FROM journal_entries"),
            await pool.fetchval("SELECT count(*) FROM postings"),
            await pool.fetchval("SELECT count(*) FROM settlements"),
            await pool.fetchval("SELECT count(*) FROM audit_log"),
            tuple(await pool.fetch("SELECT * FROM account_balances ORDER BY account")))


async def test_a_month_settles_to_exact_shares_and_rerunning_changes_nothing(
        pool: asyncpg.Pool, redis: Redis) -> None:
    settings = settings_for_tests(timezone="Asia/Shanghai", settlement_hold_days=1)
    ops = await make_user(pool, redis, role=Role.OPS)
    room_a, a = await make_room(pool, redis)
    room_b, b = await make_room(pool, redis)
    fan = await make_user(pool, redis, coins=200_000)
    # The platform default from June 1: tiered on the month's income.
    await add_rule(pool, creator_id=None, effective_from=date(2025, 6, 1), kind="tiered",
                   tiers=[[0, 5000], [10_000, 6000], [100_000, 7000]], hold_days=None,
                   reason="June tiers", actor=ops)
    # B gets its own fixed 45 % with T+3 from June 15 (mid-month).
    await add_rule(pool, creator_id=b.user_id, effective_from=date(2025, 6, 15), kind="fixed",
                   tiers=4500, hold_days=3, reason="contract B", actor=ops)
    # A: 3 700 coins every day of June, in two gifts (crosses 10 000 on the 3rd, 100 000
    # on the 28th).
    await gifts_at(pool, redis, sender_id=fan.user_id, streamer_id=a.user_id, room=room_a,
                   items=[(local(d, h), c) for d in range(1, 31)
                          for h, c in ((0, 1), (23, 3699))])
    # B: 1 001 coins on the 14th, 15th and 16th, at the edges of the local day.
    await gifts_at(pool, redis, sender_id=fan.user_id, streamer_id=b.user_id, room=room_b,
                   items=[(local(14, 23, 59, 59), 1001), (local(15, 0, 0, 0), 1000),
                          (local(15, 23, 59, 59), 1), (local(16, 0, 0, 1), 1001)])
    await check_invariants(redis, pool)

    # Settle the month backwards (late, out of order): results depend only on the gifts.
    for d in range(30, 0, -1):
        await settle_day(pool, redis, day=date(2025, 6, d), settings=settings, now=JULY_2)
    await check_invariants(redis, pool)
    rows = {(r["creator_id"], r["day"].day): r for r in await pool.fetch(
        "SELECT * FROM settlements")}
    ra = {d: rows[(a.user_id, d)] for d in range(1, 31)}
    assert (ra[1]["creator_coins"], ra[1]["platform_coins"]) == (1850, 1850)
    # the 3rd: 2 600 at 50 % + 1 100 at 60 %
    assert (ra[3]["creator_coins"], ra[3]["platform_coins"]) == (1300 + 660, 3700 - 1960)
    assert ra[3]["month_before_coins"] == 7400
    # the 28th: 100 at 60 % + 3 600 at 70 %
    assert ra[28]["creator_coins"] == 60 + 2520
    assert sum(r["creator_coins"] for r in ra.values()) == 5000 + 54_000 + 7700  # of 111 000
    assert sum(r["platform_coins"] for r in ra.values()) == 111_000 - 66_700
    assert all(r["available_on"] == r["day"] + timedelta(days=1) for r in ra.values())
    rb = {d: rows[(b.user_id, d)] for d in (14, 15, 16)}
    assert (rb[14]["creator_coins"], rb[14]["platform_coins"]) == (500, 501)  # default tiers
    assert orjson.loads(rb[14]["rule"])["kind"] == "tiered"
    assert (rb[15]["creator_coins"], rb[15]["platform_coins"]) == (450, 551)  # 45 %: 900-450
    assert (rb[16]["creator_coins"], rb[16]["platform_coins"]) == (451, 550)  # 1351-900
    assert orjson.loads(rb[16]["rule"])["kind"] == "fixed"
    assert rb[16]["available_on"] == date(2025, 6, 19)
    assert (a.user_id, 13) in rows and (b.user_id, 13) not in rows

    # T+N on the right local day: B's 16th becomes available at midnight starting the 19th.
    before = await balances(pool, b.user_id, settings,
                            datetime(2025, 6, 19, 0, 0, tzinfo=TZ) - timedelta(seconds=1))
    at = await balances(pool, b.user_id, settings, datetime(2025, 6, 18, 16, 0, tzinfo=UTC))
    earlier = await balances(pool, b.user_id, settings, datetime(2025, 6, 17, 23, 59,
                                                                    tzinfo=TZ))
    assert earlier["pending_coins"] == 901 and earlier["available_coins"] == 500  # 15th, 16th
    assert before["pending_coins"] == 451 and before["available_coins"] == 950  # 16th
    assert at["pending_coins"] == 0 and at["available_coins"] == 1401
    assert at["unsettled_coins"] == 0

    # Re-running every day changes nothing at all.
    snap = await _snapshot(pool)
    for d in range(1, 31):
        rep = await settle_day(pool, redis, day=date(2025, 6, d), settings=settings, now=JULY_2)
        assert rep.settled == [] and rep.late == []
    assert await _snapshot(pool) == snap
    await check_invariants(redis, pool)

    # A rule that would change settled days is refused; one after them is fine.
    with pytest.raises(RuleError) as e:
        await add_rule(pool, creator_id=a.user_id, effective_from=date(2025, 6, 20),
                       kind="fixed", tiers=9000, hold_days=None, reason="late", actor=ops)
    assert e.value.code == "already_settled"
    await add_rule(pool, creator_id=a.user_id, effective_from=date(2025, 7, 1),
                   kind="fixed", tiers=9000, hold_days=None, reason="July", actor=ops)
    actions = [r["action"] for r in await pool.fetch("SELECT action FROM audit_log")]
    assert actions.count("revenue_rule.set") == 3 and "settlement.run" in actions


async def test_settlement_waits_for_the_day_and_the_flusher(pool: asyncpg.Pool,
                                                            redis: Redis) -> None:
    settings = settings_for_tests(timezone="Asia/Shanghai")
    with pytest.raises(SettleError) as e:
        await settle_day(pool, redis, day=date(2025, 6, 10), settings=settings,
                         now=datetime(2025, 6, 10, 23, 59, tzinfo=TZ))
    assert e.value.code == "day_not_over"
    ms = int(local(10).timestamp() * 1000)
    await redis.xadd(keys.LEDGER_STREAM, {"k": "gift"}, id=f"{ms}-0")
    with pytest.raises(SettleError) as e:
        await settle_day(pool, redis, day=date(2025, 6, 10), settings=settings, now=JULY_2)
    assert e.value.code == "unflushed_gifts"
    await redis.xdel(keys.LEDGER_STREAM, f"{ms}-0")
    rep = await settle_day(pool, redis, day=date(2025, 6, 10), settings=settings, now=JULY_2)
    assert rep.settled == []


async def test_giftd_settle_cli(pool: asyncpg.Pool, redis: Redis, redis_url: str,
                                database_url: str, tmp_path: Path) -> None:
    from tests.integration.test_reconcile import giftd_cli

    room, creator = await make_room(pool, redis)
    fan = await make_user(pool, redis, coins=1000)
    await gifts_at(pool, redis, sender_id=fan.user_id, streamer_id=creator.user_id, room=room,
                   items=[(local(5, 9), 333)])
    env = {"REDIS_URL": redis_url, "DATABASE_URL": database_url,
           "GIFTD_TIMEZONE": "Asia/Shanghai", "GIFTD_VAR_DIR": str(tmp_path / "var"),
           "GIFTD_REVENUE_DEFAULT_CREATOR_BPS": "7000"}
    code, out, err = await giftd_cli("settle", "--date", "2025-06-01", "--to", "2025-06-30",
                                     env=env)
    assert code == 0, err
    days = json.loads(out)
    assert len(days) == 30 and days[4]["settled"][0]["creator_coins"] == 233  # 233.1
    assert days[4]["settled"][0]["platform_coins"] == 100
    code, out, err = await giftd_cli("settle", "--date", "2025-06-05", env=env)
    assert code == 0 and json.loads(out)["already"] == 1 and json.loads(out)["settled"] == []
    future = (datetime.now(TZ) + timedelta(days=2)).date().isoformat()
    code, out, err = await giftd_cli("settle", "--date", future, env=env)
    assert code == 2 and "day_not_over" in err
    await check_invariants(redis, pool)
