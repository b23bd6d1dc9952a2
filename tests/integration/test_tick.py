"""Tick batching: cheap gifts wait for the tick, a high-value gift flushes its room at once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import asyncpg
import pytest
from redis.asyncio import Redis

from tests.support import Client, RunningServer, make_room, make_user, serving


@pytest.fixture
async def slow_tick_server(redis_url: str, database_url: str) -> AsyncIterator[RunningServer]:
    async with serving(redis_url, database_url, tick_ms=1000) as srv:
        yield srv


async def test_many_gifts_one_frame_and_urgent_flush(
        slow_tick_server: RunningServer, redis: Redis, pool: asyncpg.Pool) -> None:
    server = slow_tick_server
    room, _ = await make_room(pool, redis)
    ann = await make_user(pool, redis, coins=100_000)
    a = await Client.connect(server, ann)
    v = await Client.connect(server, await make_user(pool, redis))
    await a.join(room)
    await v.join(room)
    # 30 roses within one tick arrive together, in one frame
    await asyncio.gather(*(a.gift(room, "rose", 1, cid=f"r{i}") for i in range(30)))
    await v.wait_for(lambda c: len(c.events) >= 30, timeout=3)
    frames_with_events = [t for t in v.ticks if t["events"]]
    assert len(frames_with_events) <= 2  # the 30 sends may straddle one tick boundary
    # right after a tick, the next regular one is ~1 s away: a rocket must not wait for it
    for i in range(3):
        # a rose's arrival marks a tick boundary (ticks without news are not sent)
        await a.gift(room, "rose", 1, cid=f"mark{i}")
        await v.wait_for(lambda c, i=i: any(e["client_id"] == f"mark{i}" for e in c.events),
                         timeout=3)
        t0 = time.monotonic()
        await a.gift(room, "rocket", 1, cid=f"rocket{i}")
        await v.wait_for(lambda c, i=i: any(e["client_id"] == f"rocket{i}" for e in c.events),
                         timeout=3)
        assert time.monotonic() - t0 < 0.4
    await a.close()
    await v.close()
