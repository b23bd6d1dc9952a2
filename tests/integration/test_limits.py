"""Custom tips, send rate limits, the join timeout, the goodbye on shutdown."""

from __future__ import annotations

import asyncio

import asyncpg
import websockets
from redis.asyncio import Redis

from server import keys
from tests.support import Client, RunningServer, make_room, make_user, token_for


async def test_custom_tip_amounts(redis_url: str, database_url: str, redis: Redis,
                                  pool: asyncpg.Pool) -> None:
    srv = RunningServer(redis_url, database_url, custom_tip_min_coins=10,
                        custom_tip_max_coins=5000)
    await srv.start()
    try:
        room, _ = await make_room(pool, redis)
        ann = await make_user(pool, redis, coins=10_000)
        a = await Client.connect(srv, ann)
        await a.join(room)
        ok = await a.send({"type": "gift", "id": "t1", "room": room, "gift": "tip_custom",
                           "amount": 1234})
        ack = await a.wait_for(lambda c: c.acks.get("t1"))
        assert ack["outcome"] == "ok" and ack["balance"] == 10_000 - 1234
        ev = (await a.wait_for(lambda c: c.gifts))[0]
        assert (ev["gift"], ev["kind"], ev["value_coins"], ev["tier"]) == (
            "tip_custom", "tip", 1234, 3)
        # the same id with another amount is a different tip: conflict, not a replay
        await a.send({"type": "gift", "id": "t1", "room": room, "gift": "tip_custom",
                      "amount": 99})
        assert (await a.wait_for(lambda c: c.acks["t1"]["outcome"] != "ok" and c.acks["t1"])
                )["outcome"] == "conflict"
        before = await redis.get(keys.balance(ann.user_id))
        for msg, code in [
            ({"amount": 9}, "bad_amount"), ({"amount": 5001}, "bad_amount"),
            ({}, "missing_field"), ({"amount": "50"}, "bad_field"),
            ({"amount": 50, "count": 2}, "bad_count"),
        ]:
            n = len(a.errors)
            await a.send({"type": "gift", "id": "t2", "room": room, "gift": "tip_custom", **msg})
            assert (await a.wait_for(lambda c, n=n: c.errors[n:]))[0]["code"] == code
        n = len(a.errors)
        await a.send({"type": "gift", "id": "t3", "room": room, "gift": "rose", "amount": 5})
        assert (await a.wait_for(lambda c, n=n: c.errors[n:]))[0]["code"] == "bad_field"
        assert await redis.get(keys.balance(ann.user_id)) == before
        del ok
        await a.close()
    finally:
        await srv.stop()


async def test_rate_limits_per_connection_and_per_user(
        redis_url: str, database_url: str, redis: Redis, pool: asyncpg.Pool) -> None:
    srv = RunningServer(redis_url, database_url, send_rate_per_s=5, send_burst=10,
                        user_send_rate_per_s=8, user_send_burst=15)
    await srv.start()
    try:
        room, _ = await make_room(pool, redis)
        ann = await make_user(pool, redis, coins=10_000)
        a = await Client.connect(srv, ann)
        await a.join(room)
        for i in range(30):
            await a.send({"type": "gift", "id": f"r{i}", "room": room, "gift": "rose"})
        await a.wait_for(lambda c: len(c.acks) + len(c.errors) >= 30)
        limited = [e for e in a.errors if e["code"] == "rate_limited"]
        assert len(a.acks) == 10 and len(limited) == 20  # the burst, then refusals
        assert all(e["retry_after_ms"] > 0 and e["id"].startswith("r") for e in limited)
        assert int(await redis.get(keys.balance(ann.user_id))) == 10_000 - 10
        # a second connection of the same user shares the user's bucket (15 burst)
        b = await Client.connect(srv, ann)
        await b.join(room)
        for i in range(10):
            await b.send({"type": "gift", "id": f"s{i}", "room": room, "gift": "rose"})
        await b.wait_for(lambda c: len(c.acks) + len(c.errors) >= 10)
        assert len(b.acks) <= 6  # 15 - 10 already used, plus a little refill
        await asyncio.sleep(1.0)  # tokens come back with time
        assert (await a.gift(room, "rose", 1, cid="later"))["outcome"] == "ok"
        await a.close()
        await b.close()
    finally:
        await srv.stop()


async def test_join_timeout_and_goodbye_on_shutdown(
        redis_url: str, database_url: str, redis: Redis, pool: asyncpg.Pool) -> None:
    srv = RunningServer(redis_url, database_url, join_timeout_s=1)
    await srv.start()
    room, _ = await make_room(pool, redis)
    ann = await make_user(pool, redis)
    idle = await websockets.connect(f"{srv.ws_url}?token={token_for(ann)}")
    try:
        await asyncio.wait_for(idle.recv(), 5)
    except websockets.ConnectionClosed as exc:
        assert exc.rcvd is not None and exc.rcvd.code == 4001
    watcher = await Client.connect(srv, ann)
    await watcher.join(room)
    await srv.stop()
    bye = await watcher.wait_for(lambda c: [m for m in c.received if m["type"] == "bye"])
    assert bye[0]["reason"] == "shutdown"
    await asyncio.wait_for(watcher.ws.wait_closed(), 5)
    assert watcher.ws.close_code == 1001
