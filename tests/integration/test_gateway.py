"""The gift path over real WebSockets, against real Valkey and Postgres."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import httpx
import msgpack
import orjson
import pytest
import websockets
from redis.asyncio import Redis

from server import keys
from server.auth import Role
from tests.support import (
    Client,
    RunningServer,
    check_invariants,
    flush_all,
    make_room,
    make_user,
    token_for,
)


async def state_of(redis: Redis, pool: asyncpg.Pool, room: str, *uids: int) -> dict[str, Any]:
    """Everything a bad frame must leave untouched."""
    return {
        "balances": [await redis.get(keys.balance(u)) for u in uids],
        "ledger": await redis.xlen(keys.LEDGER_STREAM),
        "hist": await redis.xlen(keys.room_history(room)),
        "seq": await redis.get(keys.room_seq(room)),
        "rank": await redis.zrange(keys.room_rank(room), 0, -1, withscores=True),
        "gift_rows": await pool.fetchval("SELECT count(*) FROM gift_events"),
        "postings": await pool.fetchval("SELECT count(*) FROM postings"),
    }


async def test_gift_reaches_room_ranking_streamer_and_ledger(
        server: RunningServer, redis: Redis, pool: asyncpg.Pool) -> None:
    room, streamer = await make_room(pool, redis)
    ann = await make_user(pool, redis, coins=50_000, name="ann")
    ben = await make_user(pool, redis, coins=100, name="ben")
    a = await Client.connect(server, ann)
    b = await Client.connect(server, ben, msgpack_format=True)
    s = await Client.connect(server, streamer)
    joined = await a.join(room)
    assert joined["type"] == "joined" and joined["balance"] == 50_000
    assert joined["seq"] == 0 and joined["ranking"] == [] and joined["viewers"] >= 1
    assert (await b.join(room))["balance"] == 100
    await s.join(room)

    ack = await a.gift(room, "sports_car", 2, cid="car-1")
    assert ack == {"type": "ack", "id": "car-1", "outcome": "ok", "balance": 47_600,
                   "event_id": ack["event_id"], "seq": 1}
    for c in (a, b, s):
        ev = (await c.wait_for(lambda c: c.events))[0]
        assert ev["seq"] == 1 and ev["gift"] == "sports_car" and ev["count"] == 2
        assert ev["value_coins"] == 2400 and ev["sender"] == {"id": ann.user_id, "name": "Ann"}
        assert ev["tier"] == 3 and ev["animation"] == "car_drive"
        rank = next(t["rank"] for t in c.ticks if t.get("rank"))
        assert rank == [{"rank": 1, "id": ann.user_id, "name": "Ann", "score": 2400}]
    earnings = await s.wait_for(lambda c: [m for m in c.received if m["type"] == "earnings"])
    assert earnings[0]["room_total"] == 2400 and earnings[0]["delta_coins"] == 2400
    assert not [m for m in a.received if m["type"] == "earnings"]  # only the streamer's feed

    # ben runs out; insufficient balance is an outcome, not an error, and changes nothing
    ack = await b.gift(room, "heart", 11, cid="b1")
    assert (ack["outcome"], ack["balance"]) == ("insufficient_balance", 100)
    assert int(await redis.get(keys.balance(ben.user_id))) == 100

    # the ledger: one row, one balanced entry
    assert await flush_all(redis, pool) == 1
    row = await pool.fetchrow("SELECT * FROM gift_events")
    assert (row["sender_id"], row["streamer_id"], row["amount_coins"], row["client_id"]) == (
        ann.user_id, streamer.user_id, 2400, "car-1")
    postings = {r["account"]: r["amount"] for r in await pool.fetch("SELECT * FROM postings "
                "JOIN journal_entries j ON j.id = entry_id WHERE j.kind = 'gift'")}
    assert postings == {f"wallet:{ann.user_id}": -2400,
                        f"creator_pending:{streamer.user_id}": 2400}
    await check_invariants(redis, pool)
    for c in (a, b, s):
        await c.close()


async def test_duplicate_replays_and_conflict_refuses(
        server: RunningServer, redis: Redis, pool: asyncpg.Pool) -> None:
    room, _ = await make_room(pool, redis)
    ann = await make_user(pool, redis, coins=1000)
    a = await Client.connect(server, ann)
    await a.join(room)
    first = await a.gift(room, "heart", 3, cid="same")
    a.acks.clear()
    again = await a.gift(room, "heart", 3, cid="same")
    assert again["outcome"] == "duplicate"
    assert (again["balance"], again["event_id"], again["seq"]) == (
        first["balance"], first["event_id"], first["seq"])
    a.acks.clear()
    other = await a.gift(room, "heart", 4, cid="same")
    assert other["outcome"] == "conflict"
    assert int(await redis.get(keys.balance(ann.user_id))) == 970
    await asyncio.sleep(0.2)
    assert [e["client_id"] for e in a.events] == ["same"]  # one room event
    await a.close()


async def test_bad_input_gets_its_code_and_changes_nothing(
        server: RunningServer, redis: Redis, pool: asyncpg.Pool) -> None:
    room, streamer = await make_room(pool, redis)
    other_room, _ = await make_room(pool, redis)
    ann = await make_user(pool, redis, coins=1000)
    a = await Client.connect(server, ann)
    s = await Client.connect(server, streamer)
    await a.gift(room, "rose", 1, cid="warm")  # not joined yet
    assert a.errors[-1]["code"] == "not_in_room"
    await a.join(room)
    await s.join(room)
    before = await state_of(redis, pool, room, ann.user_id)
    limit = server.settings.frame_bytes_max
    cases: list[tuple[bytes | str, str]] = [
        ("x" * (limit + 1), "frame_too_large"),
        (b"\x00\xff", "bad_frame"),
        ("{nope", "bad_frame"),
        ("[1,2]", "bad_message"),
        ('{"type":"teleport"}', "unknown_type"),
        (f'{{"type":"gift","room":"{room}","gift":"rose"}}', "missing_field"),
        (f'{{"type":"gift","id":7,"room":"{room}","gift":"rose"}}', "bad_field"),
        (f'{{"type":"gift","id":"c1","room":"{room}","gift":"rose","count":"1"}}', "bad_field"),
        (f'{{"type":"gift","id":"c2","room":"{room}","gift":"unicorn"}}', "unknown_gift"),
        (f'{{"type":"gift","id":"c3","room":"{room}","gift":"rose","count":0}}', "bad_count"),
        (f'{{"type":"gift","id":"c4","room":"{room}","gift":"rose","count":-1}}', "bad_count"),
        (f'{{"type":"gift","id":"c5","room":"{room}","gift":"rose","count":10000}}',
         "bad_count"),
        (f'{{"type":"gift","id":"c6","room":"{other_room}","gift":"rose"}}', "not_in_room"),
        ('{"type":"gift","id":"c7","room":"nosuch","gift":"rose"}', "not_in_room"),
        ('{"type":"join","room":"nosuch"}', "unknown_room"),
    ]
    for data, code in cases:
        n = len(a.errors)
        await a.send_raw(data)
        err = await a.wait_for(lambda c, n=n: c.errors[n] if len(c.errors) > n else None)
        assert err["code"] == code, (data, err)
        assert err["message"]
    # the streamer gifting their own room
    await s.send({"type": "gift", "id": "self", "room": room, "gift": "rose", "count": 1})
    assert (await s.wait_for(lambda c: c.errors))[0]["code"] == "self_gift"
    await asyncio.sleep(0.1)
    assert await state_of(redis, pool, room, ann.user_id) == before
    # the connection is still usable after all that
    assert (await a.gift(room, "rose", 1))["outcome"] == "ok"
    await a.close()
    await s.close()


async def test_handshake_refusals_touch_no_room_state(
        server: RunningServer, redis: Redis, pool: asyncpg.Pool) -> None:
    room, _ = await make_room(pool, redis)
    ann = await make_user(pool, redis, coins=10)
    good = token_for(ann)
    expired = token_for(ann, ttl_s=-10)
    cases = [
        (server.ws_url, {}, 401, "auth_required"),
        (f"{server.ws_url}?token=garbage", {}, 401, "bad_token"),
        (f"{server.ws_url}?token={expired}", {}, 401, "token_expired"),
        (f"{server.ws_url}?token={good}", {"origin": "https://evil.example"}, 403,
         "origin_not_allowed"),
    ]
    for url, kw, status, code in cases:
        with pytest.raises(websockets.InvalidStatus) as e:
            await websockets.connect(url, **kw)
        assert e.value.response.status_code == status
        assert orjson.loads(e.value.response.body)["code"] == code
    assert server.ctx.hub.rooms == {}
    assert await redis.exists(keys.room_viewers(room)) == 0
    # the server's own origin, a header token, and the msgpack subprotocol all work
    ws = await websockets.connect(server.ws_url, origin=server.base,
                                  additional_headers={"authorization": f"Bearer {good}"},
                                  subprotocols=["giftd.msgpack"])
    assert ws.subprotocol == "giftd.msgpack"
    await ws.send(msgpack.packb({"type": "join", "room": room}))
    assert msgpack.unpackb(await ws.recv())["type"] == "joined"
    await ws.close()


async def test_http_api(server: RunningServer, redis: Redis, pool: asyncpg.Pool) -> None:
    room, _ = await make_room(pool, redis)
    async with httpx.AsyncClient(base_url=server.base) as http:
        r = await http.post("/api/register", json={"username": "zoe_1", "password": "longpassword",
                                                    "display_name": "Zoe"})
        assert r.status_code == 201
        token = r.json()["token"]
        assert (await http.post("/api/register", json={"username": "zoe_1",
                "password": "longpassword"})).json()["code"] == "username_taken"
        assert (await http.post("/api/register", json={"username": "Z!", "password": "x"})
                ).json()["code"] == "bad_username"
        assert (await http.post("/api/register", content=b"{oops")).json()["code"] == "bad_json"
        assert (await http.post("/api/login", json={"username": "zoe_1", "password": "wrong"})
                ).status_code == 401
        login = await http.post("/api/login", json={"username": "zoe_1",
                                                    "password": "longpassword"})
        assert login.status_code == 200
        auth = {"authorization": f"Bearer {token}"}
        assert (await http.get("/api/me")).json()["code"] == "auth_required"
        assert (await http.get("/api/me", headers=auth)).json()["balance"] == 0
        gifts = (await http.get("/api/gifts")).json()["gifts"]
        assert {"rose", "rocket", "tip_1", "tip_100"} <= {g["code"] for g in gifts}
        rooms = (await http.get("/api/rooms")).json()["rooms"]
        assert room in [r["id"] for r in rooms]
        assert (await http.get("/api/rooms/nosuch/leaderboard")).status_code == 404
        assert (await http.get(f"/api/rooms/{room}/leaderboard?limit=0")).status_code == 400
        health = (await http.get("/health")).json()
        assert health == {"ok": True, "redis": True, "postgres": True,
                          "node": server.settings.node_id}
        assert "giftd_connections" in (await http.get("/metrics")).text

        # transactions: pending until flushed, then flushed
        ann = await make_user(pool, redis, coins=500)
        a = await Client.connect(server, ann)
        await a.join(room)
        await a.gift(room, "donut", 2, cid="d1")
        hdr = {"authorization": f"Bearer {token_for(ann)}"}
        items = (await http.get("/api/me/transactions", headers=hdr)).json()["items"]
        assert [(i["event_id"] != "", i["amount_coins"], i["status"]) for i in items] == [
            (True, -104, "pending")]
        await flush_all(redis, pool)
        items = (await http.get("/api/me/transactions", headers=hdr)).json()["items"]
        assert [(i["amount_coins"], i["status"]) for i in items] == [(-104, "flushed")]
        board = (await http.get(f"/api/rooms/{room}/leaderboard")).json()["items"]
        assert board == [{"rank": 1, "id": ann.user_id, "name": ann.name, "score": 104}]
        await a.close()


async def test_streamer_role_needs_no_coins_to_watch(
        server: RunningServer, redis: Redis, pool: asyncpg.Pool) -> None:
    room, _streamer = await make_room(pool, redis)
    admin = await make_user(pool, redis, role=Role.ADMIN)
    c = await Client.connect(server, admin)
    assert (await c.join(room))["balance"] == 0
    await c.close()


async def test_a_burst_of_joins_waits_for_redis_instead_of_failing(
        server: RunningServer, redis: Redis, pool: asyncpg.Pool) -> None:
    """More Redis work at once than the process has Redis connections: it queues."""
    # the process's own client, 5x more concurrent calls than its pool holds
    await asyncio.gather(*(server.ctx.redis.get(f"k{i}") for i in range(320)))
    room, _ = await make_room(pool, redis)
    viewer = await make_user(pool, redis)
    clients = await asyncio.gather(*(Client.connect(server, viewer) for _ in range(160)))
    joined = await asyncio.gather(*(c.join(room) for c in clients))
    assert [j["type"] for j in joined] == ["joined"] * 160
    await asyncio.gather(*(c.close() for c in clients))


async def test_password_hashing_does_not_stall_the_event_loop(
        server: RunningServer, redis: Redis, pool: asyncpg.Pool) -> None:
    """argon2 runs in a thread: other connections keep being served meanwhile."""
    gaps: list[float] = []

    async def ticker() -> None:
        last = asyncio.get_running_loop().time()
        while True:
            await asyncio.sleep(0.005)
            now = asyncio.get_running_loop().time()
            gaps.append(now - last)
            last = now

    t = asyncio.create_task(ticker())
    async with httpx.AsyncClient(base_url=server.base) as http:
        for i in range(3):
            r = await http.post("/api/register", json={"username": f"slowhash{i}",
                                                        "password": "longpassword"})
            assert r.status_code == 201
            assert (await http.post("/api/login", json={"username": f"slowhash{i}",
                                    "password": "longpassword"})).status_code == 200
    t.cancel()
    # each hash is ~100 ms of CPU; on the loop it would show up as a gap that long
    assert max(gaps) < 0.08, f"the loop stalled for {max(gaps) * 1000:.0f} ms"
