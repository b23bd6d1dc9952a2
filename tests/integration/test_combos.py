"""Streaks (combos) are decided on the server: one growing combo, one end, exact totals."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest
from redis.asyncio import Redis

from tests.support import Client, RunningServer, make_room, make_user, serving

WINDOW_MS = 600


@pytest.fixture
async def combo_server(redis_url: str, database_url: str) -> AsyncIterator[RunningServer]:
    async with serving(redis_url, database_url, combo_window_ms=WINDOW_MS) as srv:
        yield srv


async def test_hundred_rapid_sends_make_one_combo(
        combo_server: RunningServer, redis: Redis, pool: asyncpg.Pool) -> None:
    room, _ = await make_room(pool, redis)
    ann = await make_user(pool, redis, coins=10_000)
    a = await Client.connect(combo_server, ann)
    v = await Client.connect(combo_server, await make_user(pool, redis))
    await a.join(room)
    await v.join(room)
    acks = await asyncio.gather(*(a.gift(room, "heart", 1 + i % 3, cid=f"h{i}")
                                  for i in range(100)))
    assert {x["outcome"] for x in acks} == {"ok"}
    total_count = sum(1 + i % 3 for i in range(100))
    ends = await v.wait_for(lambda c: [e for e in c.events if e["type"] == "combo_end"],
                            timeout=WINDOW_MS / 1000 + 3)
    await asyncio.sleep(WINDOW_MS / 1000 + 0.5)  # no second end arrives later
    ends = [e for e in v.events if e["type"] == "combo_end"]
    assert len(ends) == 1
    gifts = v.gifts
    assert len({g["combo_id"] for g in gifts}) == 1 == len(gifts) // 100
    assert [g["combo_count"] for g in gifts] == sorted(g["combo_count"] for g in gifts)
    assert gifts[-1]["combo_count"] == total_count
    end = ends[0]
    assert end["combo_id"] == gifts[0]["combo_id"] == gifts[0]["event_id"]
    assert (end["count"], end["value_coins"]) == (total_count, total_count * 10)
    assert end["sender"] == {"id": ann.user_id, "name": ann.name}
    assert end["gift"] == "heart" and end["tier"] == 3
    assert end["seq"] == gifts[-1]["seq"] + 1
    await a.close()
    await v.close()


async def test_interleaved_senders_and_gifts_never_merge(
        combo_server: RunningServer, redis: Redis, pool: asyncpg.Pool) -> None:
    room, _ = await make_room(pool, redis)
    ann = await make_user(pool, redis, coins=10_000)
    ben = await make_user(pool, redis, coins=10_000)
    a = await Client.connect(combo_server, ann)
    b = await Client.connect(combo_server, ben)
    await a.join(room)
    await b.join(room)
    for i in range(10):
        await a.gift(room, "rose", 1, cid=f"a{i}")
        await b.gift(room, "rose", 1, cid=f"b{i}")
        await a.gift(room, "heart", 1, cid=f"ah{i}")
    ends = await b.wait_for(lambda c: (lambda e: e if len(e) >= 3 else None)(
        [e for e in c.events if e["type"] == "combo_end"]), timeout=WINDOW_MS / 1000 + 3)
    by = {(e["sender"]["id"], e["gift"]): e for e in ends}
    assert len(ends) == 3 and len(by) == 3
    assert by[(ann.user_id, "rose")]["count"] == 10
    assert by[(ben.user_id, "rose")]["count"] == 10
    assert by[(ann.user_id, "heart")]["value_coins"] == 100
    await a.close()
    await b.close()


async def test_a_pause_longer_than_the_window_starts_a_new_combo(
        combo_server: RunningServer, redis: Redis, pool: asyncpg.Pool) -> None:
    room, _ = await make_room(pool, redis)
    ann = await make_user(pool, redis, coins=10_000)
    a = await Client.connect(combo_server, ann)
    await a.join(room)
    await a.gift(room, "rose", 5, cid="x1")
    await asyncio.sleep(WINDOW_MS / 1000 + 0.4)
    await a.gift(room, "rose", 7, cid="x2")
    await a.wait_for(lambda c: len(c.gifts) == 2)
    first, second = a.gifts
    assert first["combo_id"] != second["combo_id"] and second["combo_count"] == 7
    ends = await a.wait_for(lambda c: (lambda e: e if len(e) == 2 else None)(
        [e for e in c.events if e["type"] == "combo_end"]), timeout=5)
    assert [e["count"] for e in ends] == [5, 7]
    await a.close()
