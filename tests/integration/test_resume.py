"""Resume: a viewer that reconnects with its last seq gets exactly what it missed."""

from __future__ import annotations

import asyncio

import asyncpg
from redis.asyncio import Redis

from tests.support import Client, RunningServer, make_room, make_user


async def test_resume_replays_exactly_the_missed_events(
        server: RunningServer, redis: Redis, pool: asyncpg.Pool) -> None:
    room, _ = await make_room(pool, redis)
    ann = await make_user(pool, redis, coins=100_000)
    viewer = await make_user(pool, redis)
    a = await Client.connect(server, ann)
    v = await Client.connect(server, viewer)
    await a.join(room)
    await v.join(room)
    for i in range(5):
        await a.gift(room, "rose", 1, cid=f"pre{i}")
    await v.wait_for(lambda c: len(c.gifts) == 5)
    last_seen = v.events[-1]["seq"]
    await v.close()
    for i in range(50):
        await a.gift(room, "heart", 1, cid=f"miss{i}")
    v2 = await Client.connect(server, viewer)
    await v2.send({"type": "join", "room": room, "since": last_seen})
    joined = await v2.wait_for(lambda c: next((m for m in c.received
                                               if m["type"] in ("joined", "resync")), None))
    assert joined["type"] == "joined"
    replay = joined["replay"]
    assert [e["seq"] for e in replay] == list(range(last_seen + 1, joined["seq"] + 1))
    # gifts still in flight when we rejoined arrive as ticks, right after the replay
    await a.gift(room, "rose", 1, cid="after")
    await v2.wait_for(lambda c: any(g["client_id"] == "after" for g in c.gifts))
    seen = replay + v2.events
    assert [e["seq"] for e in seen] == list(range(last_seen + 1, seen[-1]["seq"] + 1))
    ids = [e["client_id"] for e in seen if e["type"] == "gift"]
    assert ids == [f"miss{i}" for i in range(50)] + ["after"]  # all missed, none twice
    await a.close()
    await v2.close()


async def test_too_old_a_gap_gets_a_resync(redis_url: str, database_url: str, redis: Redis,
                                            pool: asyncpg.Pool) -> None:
    srv = RunningServer(redis_url, database_url, room_history_max=100)
    await srv.start()
    try:
        room, _ = await make_room(pool, redis)
        ann = await make_user(pool, redis, coins=100_000)
        a = await Client.connect(srv, ann)
        await a.join(room)
        await asyncio.gather(*(a.gift(room, "rose", 1, cid=f"g{i}") for i in range(400)))
        v = await Client.connect(srv, await make_user(pool, redis))
        await v.send({"type": "join", "room": room, "since": 1})
        msg = await v.wait_for(lambda c: next((m for m in c.received
                                               if m["type"] in ("joined", "resync")), None))
        assert msg["type"] == "resync" and "replay" not in msg
        assert msg["seq"] >= 400 and msg["ranking"][0]["score"] == 400
        # a client from "the future" (e.g. Redis was reset) also resyncs
        await v.send({"type": "join", "room": room, "since": 10**9})
        await v.wait_for(lambda c: len([m for m in c.received if m["type"] == "resync"]) == 2)
        await a.close()
        await v.close()
    finally:
        await srv.stop()
