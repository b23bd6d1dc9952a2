"""The /ws socket (server/websocket.py): keepalive, deadlines, framing, order, backpressure."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import orjson
from redis.asyncio import Redis

from rooms.conn import CLOSE_JOIN_TIMEOUT
from server import keys
from server.websocket import CLOSE_BAD_UTF8, CLOSE_PING_TIMEOUT, FRAGMENTS_MAX
from tests.support import Client, RawWs, RunningServer, make_room, make_user, serving, token_for

PING, PONG = 0x9, 0xA


async def test_unanswered_pings_close_the_socket_answered_ones_keep_it(
        redis_url: str, database_url: str, redis: Redis, pool: asyncpg.Pool) -> None:
    async with serving(redis_url, database_url, ws_ping_interval_ms=500) as srv:
        room, _ = await make_room(pool, redis)
        polite = await Client.connect(srv, await make_user(pool, redis))  # answers pings
        await polite.join(room)
        mute = await RawWs.connect(srv, token_for(await make_user(pool, redis)))
        await mute.send_json({"type": "join", "room": room})
        t0 = time.monotonic()
        pings = 0
        while True:  # the mute client never answers: pinged, then closed with 1011
            op, payload = await mute.read_frame(timeout=3)
            if op == PING:
                pings += 1
            if op == 0x8:
                assert int.from_bytes(payload[:2], "big") == CLOSE_PING_TIMEOUT
                break
        elapsed = time.monotonic() - t0
        assert pings == 1 and 0.4 < elapsed < 1.6, (pings, elapsed)  # within two intervals
        # the server does not wait for our close reply: it hangs up
        assert await asyncio.wait_for(mute.reader.read(), 3) == b""
        # the client that answers stays, pinged meanwhile, and still gets the room
        await asyncio.sleep(1.5)
        assert polite.ws.state.name == "OPEN"
        assert srv.ctx.hub.rooms[room].members.keys() == {
            c.id for c in srv.ctx.connections.values()}
        assert len(srv.ctx.connections) == 1


async def test_a_socket_that_never_joins_is_closed_with_4001(
        redis_url: str, database_url: str, redis: Redis, pool: asyncpg.Pool) -> None:
    async with serving(redis_url, database_url, join_timeout_s=1) as srv:
        room, _ = await make_room(pool, redis)
        idle = await RawWs.connect(srv, token_for(await make_user(pool, redis)))
        joiner = await RawWs.connect(srv, token_for(await make_user(pool, redis)))
        await joiner.send_json({"type": "join", "room": room})
        assert (await joiner.next_message())["type"] == "joined"
        t0 = time.monotonic()
        assert await idle.close_code(timeout=4) == CLOSE_JOIN_TIMEOUT
        assert time.monotonic() - t0 < 2.5
        # we answer the close: the server completes the handshake and hangs up
        await idle.send_frames(RawWs.frame(CLOSE_JOIN_TIMEOUT.to_bytes(2, "big"), 0x8))
        assert await asyncio.wait_for(idle.reader.read(), 3) == b""
        await asyncio.sleep(1.2)  # the one that joined is left alone
        assert len(srv.ctx.connections) == 1 and not srv.ctx.unjoined


async def test_messages_behind_a_join_wait_for_it_in_order(
        server: RunningServer, redis: Redis, pool: asyncpg.Pool) -> None:
    room, _ = await make_room(pool, redis)
    ann = await make_user(pool, redis, coins=100)
    raw = await RawWs.connect(server, token_for(ann))
    # join, three gifts and a ping in ONE write: the gifts must see the membership
    msgs = [{"type": "join", "room": room},
            *({"type": "gift", "id": f"g{i}", "room": room, "gift": "rose"} for i in range(3)),
            {"type": "ping", "nonce": 7}]
    await raw.send_frames(*(RawWs.frame(orjson.dumps(m)) for m in msgs))
    got = [await raw.next_message() for _ in range(5)]
    kinds = [m["type"] for m in got]
    assert kinds[0] == "joined"  # answered before anything behind it
    acks = [m for m in got if m["type"] == "ack"]
    assert sorted(a["id"] for a in acks) == ["g0", "g1", "g2"], got
    assert all(a["outcome"] == "ok" for a in acks)
    assert any(m == {"type": "pong", "nonce": 7} for m in got)
    assert int(await redis.get(keys.balance(ann.user_id))) == 100 - 3
    raw.abort()


async def test_a_pipelined_burst_past_every_limit_gets_every_ack(
        redis_url: str, database_url: str, redis: Redis, pool: asyncpg.Pool) -> None:
    # 500 sends in one write: past SENDS_IN_FLIGHT_MAX (64) in flight and
    # MESSAGES_WAITING_MAX (64) waiting, so the socket is paused and resumed.
    async with serving(redis_url, database_url, send_rate_per_s=100_000, send_burst=100_000,
                       user_send_rate_per_s=100_000, user_send_burst=100_000) as srv:
        room, _ = await make_room(pool, redis)
        ann = await make_user(pool, redis, coins=10_000)
        raw = await RawWs.connect(srv, token_for(ann))
        await raw.send_json({"type": "join", "room": room})
        assert (await raw.next_message())["type"] == "joined"
        n = 500
        await raw.send_frames(*(RawWs.frame(orjson.dumps(
            {"type": "gift", "id": f"b{i}", "room": room, "gift": "rose"})) for i in range(n)))
        acks: dict[str, str] = {}
        while len(acks) < n:
            m = await raw.next_message(timeout=10)
            if m["type"] == "ack":
                acks[m["id"]] = m["outcome"]
            assert m["type"] != "error", m
        assert set(acks) == {f"b{i}" for i in range(n)}
        assert set(acks.values()) == {"ok"}
        assert int(await redis.get(keys.balance(ann.user_id))) == 10_000 - n
        raw.abort()


async def test_frames_fragments_and_refusals(
        server: RunningServer, redis: Redis, pool: asyncpg.Pool) -> None:
    room, _ = await make_room(pool, redis)
    token = token_for(await make_user(pool, redis))
    # a message in three fragments is one message
    raw = await RawWs.connect(server, token)
    data = orjson.dumps({"type": "join", "room": room})
    await raw.send_frames(RawWs.frame(data[:5], 0x1, fin=False),
                          RawWs.frame(data[5:12], 0x0, fin=False),
                          RawWs.frame(data[12:], 0x0, fin=True))
    assert (await raw.next_message())["type"] == "joined"
    # control frames may come between fragments; a ping is answered with its payload
    await raw.send_frames(RawWs.frame(b'{"type":', 0x1, fin=False), RawWs.frame(b"hi", PING),
                          RawWs.frame(b'"ping"}', 0x0))
    assert await raw.read_frame() == (PONG, b"hi")
    assert (await raw.next_message())["type"] == "pong"
    raw.abort()
    # text that is not UTF-8 closes with 1007
    bad = await RawWs.connect(server, token)
    await bad.send_frames(RawWs.frame(b'{"type":"\xff"}'))
    assert await bad.close_code() == CLOSE_BAD_UTF8
    # a message in too many pieces closes with 1009, however small
    many = await RawWs.connect(server, token)
    await many.send_frames(RawWs.frame(b"{", 0x1, fin=False),
                           *(RawWs.frame(b" ", 0x0, fin=False) for _ in range(FRAGMENTS_MAX + 1)))
    assert await many.close_code() == 1009
    # a message over the hard size cap closes with 1009 (websockets' max_size)
    big = await RawWs.connect(server, token)
    await big.send_frames(RawWs.frame(b" " * (2 << 20)))
    assert await big.close_code() == 1009
    # WebSockets live at /ws only: elsewhere a 404 with a stable code, nothing opened
    other = await RawWs.connect(server, token, path="/elsewhere")
    assert other.status == 404 and orjson.loads(other.head.split(b"\r\n\r\n", 1)[1]) == {
        "code": "not_found", "message": "WebSockets are served at /ws"}
    await asyncio.sleep(0.2)
    assert not server.ctx.connections and not server.ctx.unjoined
    assert server.ctx.hub.rooms.get(room) is None or not server.ctx.hub.rooms[room].members


async def test_a_socket_gone_in_the_middle_of_its_join_leaves_the_room(
        server: RunningServer, redis: Redis, pool: asyncpg.Pool) -> None:
    room, _ = await make_room(pool, redis)
    for _ in range(5):
        raw = await RawWs.connect(server, token_for(await make_user(pool, redis)))
        await raw.send_json({"type": "join", "room": room})
        raw.abort()  # before the join's Redis round trips are done
    stay = await Client.connect(server, await make_user(pool, redis))
    await stay.join(room)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        members = server.ctx.hub.rooms[room].members
        if len(members) == 1 and len(server.ctx.connections) == 1:
            break
        await asyncio.sleep(0.05)
    assert len(server.ctx.hub.rooms[room].members) == 1
    assert len(server.ctx.connections) == 1 and not server.ctx.unjoined
    await stay.close()
