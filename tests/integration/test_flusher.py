"""The write-behind flusher: idempotent writes, claiming a dead consumer's entries."""

from __future__ import annotations

import asyncio

import asyncpg
from redis.asyncio import Redis

from billing.flusher import DEAD_LETTER_STREAM, Flusher, parse_entry, write_batch
from gifts.catalog import Gift
from gifts.scripts import Scripts
from gifts.sender import GiftSender, SendRequest
from server import keys
from tests.support import check_invariants, make_room, make_user, settings_for_tests

ROSE = Gift("rose", "Rose", 1, "rose_float")


async def send_roses(redis: Redis, pool: asyncpg.Pool, n: int) -> tuple[int, list[str]]:
    room, streamer = await make_room(pool, redis)
    ann = await make_user(pool, redis, coins=n)
    sender = GiftSender(redis, Scripts().send_gifts, settings_for_tests())
    ids: list[str] = []
    for start in range(0, n, 200):
        res = await sender.send_many([
            SendRequest(ann.user_id, "Ann", f"r{i}", room, streamer.user_id, ROSE, 1)
            for i in range(start, min(n, start + 200))])
        ids += [r.event_id for r in res]
    return ann.user_id, ids


async def test_rewriting_a_batch_adds_nothing(redis: Redis, pool: asyncpg.Pool) -> None:
    _, _ids = await send_roses(redis, pool, 30)
    rows = [parse_entry(eid, f) for eid, f in await redis.xrange(keys.LEDGER_STREAM)]
    async with pool.acquire() as conn:
        assert await write_batch(conn, rows) == 30  # type: ignore[arg-type]
        assert await write_batch(conn, rows) == 0  # type: ignore[arg-type]
        assert await write_batch(conn, rows[5:10]) == 0  # type: ignore[arg-type]
    assert await pool.fetchval("SELECT count(*) FROM gift_events") == 30
    assert await pool.fetchval("SELECT count(*) FROM journal_entries WHERE kind='gift'") == 30
    assert await pool.fetchval("SELECT count(*) FROM postings p JOIN journal_entries j "
                               "ON j.id = p.entry_id WHERE j.kind='gift'") == 60


async def test_dead_consumers_entries_are_claimed(redis: Redis, pool: asyncpg.Pool) -> None:
    _, ids = await send_roses(redis, pool, 50)
    dead = Flusher(redis, pool, consumer="dead")
    await dead.ensure_group()
    # "dead" reads everything and dies before writing or acknowledging
    got = await redis.xreadgroup(keys.FLUSHER_GROUP, "dead", {keys.LEDGER_STREAM: ">"}, count=100)
    assert len(got[0][1]) == 50
    alive = Flusher(redis, pool, consumer="alive", claim_idle_ms=0)
    assert await alive.run_until_drained() == 50
    assert await redis.xlen(keys.LEDGER_STREAM) == 0  # flushed entries are deleted
    pending = await redis.xpending(keys.LEDGER_STREAM, keys.FLUSHER_GROUP)
    assert pending["pending"] == 0
    rows = {r["event_id"] for r in await pool.fetch("SELECT event_id FROM gift_events")}
    assert rows == set(ids)
    await check_invariants(redis, pool)


async def test_unacknowledged_entries_are_never_trimmed(redis: Redis, pool: asyncpg.Pool) -> None:
    """Nothing but the flusher's post-commit XDEL removes ledger entries."""
    _, _ids = await send_roses(redis, pool, 40)
    assert await redis.xlen(keys.LEDGER_STREAM) == 40  # 40 more sends did not trim
    f = Flusher(redis, pool, consumer="f")
    await f.ensure_group()
    assert await redis.xlen(keys.LEDGER_STREAM) == 40
    await f.run_until_drained()
    assert await redis.xlen(keys.LEDGER_STREAM) == 0


async def test_malformed_entry_goes_to_dead_letter(redis: Redis, pool: asyncpg.Pool) -> None:
    await send_roses(redis, pool, 3)
    await redis.xadd(keys.LEDGER_STREAM, {"k": "gift", "s": "not-a-number"})
    f = Flusher(redis, pool, consumer="f")
    assert await f.run_until_drained() == 3
    assert await redis.xlen(DEAD_LETTER_STREAM) == 1
    assert await redis.xlen(keys.LEDGER_STREAM) == 0


async def test_database_refuses_unbalanced_and_changed_entries(pool: asyncpg.Pool) -> None:
    import pytest

    async with pool.acquire() as conn:
        eid = await conn.fetchval(
            "INSERT INTO journal_entries (kind, ref) VALUES ('grant', 'x') RETURNING id")
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute("INSERT INTO postings VALUES ($1, 'promotion', -5), "
                               "($1, 'platform_revenue', 4)", eid)
        await conn.execute("INSERT INTO postings VALUES ($1, 'promotion', -5), "
                           "($1, 'platform_revenue', 5)", eid)
        for sql in ("UPDATE postings SET amount = 6 WHERE entry_id = $1",
                    "DELETE FROM postings WHERE entry_id = $1",
                    "UPDATE journal_entries SET ref = 'y' WHERE id = $1",
                    "DELETE FROM journal_entries WHERE id = $1"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(sql, eid)
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("TRUNCATE postings CASCADE")
        with pytest.raises(asyncpg.CheckViolationError):  # a float or zero amount cannot sneak in
            await conn.execute("INSERT INTO postings VALUES ($1, 'channel_clearing', 0)", eid)


async def test_flush_lag_metric_is_the_oldest_unflushed_debit(
        redis: Redis, pool: asyncpg.Pool, redis_url: str, database_url: str) -> None:
    import re

    import httpx

    from tests.support import serving

    async with serving(redis_url, database_url) as srv:
        await send_roses(redis, pool, 5)
        await asyncio.sleep(0.3)
        async with httpx.AsyncClient(base_url=srv.base) as http:
            text = (await http.get("/metrics")).text
            lag = float(re.search(r"^giftd_flush_lag_ms (\S+)$", text, re.M).group(1))
            assert lag >= 250  # five debits waiting ~0.3 s (the test server has no flusher)
            await Flusher(redis, pool, consumer="t").run_until_drained()
            text = (await http.get("/metrics")).text
            assert re.search(r"^giftd_flush_lag_ms 0\.0$", text, re.M)  # empty: no lag
