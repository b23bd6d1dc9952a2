"""The /ws socket (server/websocket.py): keepalive, deadlines, framing, order, backpressure."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import time

import asyncpg
import orjson
import pytest
from redis.asyncio import Redis

from rooms.conn import CLOSE_JOIN_TIMEOUT
from server import keys
from server.websocket import CLOSE_BAD_UTF8, CLOSE_PING_TIMEOUT, FRAGMENTS_MAX
from tests.support import Client, RawWs, RunningServer, make_room, make_user, serving, token_for

PING, PONG, CLOSE = 0x9, 0xA, 0x8


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


async def _raw_handshake(srv: RunningServer, extra_headers: str) -> bytes:
    """Send an upgrade request with `extra_headers`; what the server answered."""
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write((f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\n"
                  "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                  f"{extra_headers}\r\n").encode())
    await writer.drain()
    try:
        got = await asyncio.wait_for(reader.read(65536), 3)
    finally:
        writer.close()
    return got


async def test_a_handshake_with_two_origin_headers_is_answered_and_not_leaked(
        server: RunningServer, redis: Redis, pool: asyncpg.Pool) -> None:
    # A repeated Origin (or token) is refused with 400; nothing escapes the
    # socket's callbacks and nothing is left in uvicorn's connection set.
    token = token_for(await make_user(pool, redis))
    got = await _raw_handshake(
        server, f"Authorization: Bearer {token}\r\n"
                "Origin: http://a.example\r\nOrigin: http://b.example\r\n")
    await asyncio.sleep(0.3)
    state = server._server.server_state  # type: ignore[union-attr]
    leaked = [c for c in state.connections if type(c).__name__ == "GiftdWebSocket"]
    assert not leaked, f"{len(leaked)} GiftdWebSocket left in server_state.connections"
    assert got.startswith(b"HTTP/1.1 4"), got  # an HTTP refusal, not a silent hang-up


async def test_a_dead_peer_with_unsent_bytes_is_cut_off_after_the_keepalive_timeout(
        redis_url: str, database_url: str, redis: Redis, pool: asyncpg.Pool) -> None:
    # A peer that neither reads nor answers pings (a dead one): after the 1011
    # the server must let go of the socket even if bytes are still unsent.
    async with serving(redis_url, database_url, ws_ping_interval_ms=500,
                       outbound_bytes_max=64 << 20, frame_bytes_max=64_000) as srv:
        dead = await RawWs.connect(srv, token_for(await make_user(pool, redis)), rcvbuf=4096)
        # fill the server's send buffers (kernel ones up to 4 MiB here) with
        # pongs we never read: WebSocket pings, answered by the protocol layer
        ping = RawWs.frame(b"p" * 125, PING)
        for _ in range(16):
            await dead.send_frames(ping * 4000)
        await asyncio.sleep(0.2)
        conn = next(iter(srv.ctx.connections.values()))
        assert conn.buffered_bytes() > 0  # the kernel buffers are full: bytes wait in user space
        t0 = time.monotonic()
        # the sweeper fails it (1011) within about two intervals; 2 s later
        # (ABORT_AFTER_CLOSE_S) at the latest it must be gone
        while srv.ctx.connections and time.monotonic() - t0 < 6:
            await asyncio.sleep(0.1)
        assert conn.closed  # the 1011 was decided ...
        assert not srv.ctx.connections, (  # ... but the socket is never let go
            f"still held after {time.monotonic() - t0:.1f}s with "
            f"{conn.buffered_bytes()} bytes unsent")
        dead.abort()


async def test_a_ping_answered_within_the_interval_is_not_a_timeout_when_others_leave(
        redis_url: str, database_url: str, redis: Redis, pool: asyncpg.Pool) -> None:
    # A socket's sweep slot is fixed by its id and a ping counts as unanswered
    # only after a whole interval: others leaving must not shorten that.
    async with serving(redis_url, database_url, ws_ping_interval_ms=1000) as srv:  # 2 slots
        first = await RawWs.connect(srv, token_for(await make_user(pool, redis)))
        slow = await RawWs.connect(srv, token_for(await make_user(pool, redis)))

        async def answer_late() -> None:  # a pong 0.7 s after the ping: within the 1 s interval
            op, payload = await slow.read_frame(timeout=3)
            assert op == PING, (op, payload[:2])
            await asyncio.sleep(0.7)
            await slow.send_frames(RawWs.frame(payload, PONG))

        async def answer_at_once(raw: RawWs) -> None:
            while True:
                op, payload = await raw.read_frame(timeout=30)
                if op == PING:
                    await raw.send_frames(RawWs.frame(payload, PONG))

        polite = asyncio.create_task(answer_at_once(first))
        for _ in range(3):  # control: nobody leaves, a late-but-in-time pong is fine ...
            await answer_late()
        assert len(srv.ctx.connections) == 2
        op, payload = await slow.read_frame(timeout=3)
        assert op == PING
        polite.cancel()
        first.abort()  # ... but let the connection ahead of it leave right after a ping
        t0 = time.monotonic()
        with contextlib.suppress(TimeoutError):
            op, payload = await slow.read_frame(timeout=0.8)
            assert op != CLOSE, (
                f"closed with {int.from_bytes(payload[:2], 'big')} "
                f"{time.monotonic() - t0:.2f}s after a ping (interval 1 s)")
        slow.abort()


async def test_a_socket_gone_in_the_middle_of_its_subscribe_leaves_no_subscription(
        server: RunningServer, redis: Redis, pool: asyncpg.Pool) -> None:
    # A subscribe still reading Redis when the socket goes adds the closed Conn
    # after on_close ran: the session drops it again once the subscribe ends.
    streamer = await make_user(pool, redis)
    raw = await RawWs.connect(server, token_for(await make_user(pool, redis)))
    await redis.execute_command("CLIENT", "PAUSE", "500", "ALL")  # the board read waits
    await raw.send_json({"type": "subscribe", "board": "fans", "streamer": streamer.user_id,
                         "span": "day"})
    await asyncio.sleep(0.1)
    raw.abort()  # gone while its subscribe is reading Redis
    await asyncio.sleep(1.0)  # the pause is over, the subscribe finished
    assert not server.ctx.connections
    left = {board: [c.id for c in subs.values()]
            for board, subs in server.ctx.board_feed.subs.items() if subs}
    assert not left, f"closed connections still subscribed: {left}"


async def test_a_message_that_cannot_be_answered_does_not_kill_the_socket_silently(
        server: RunningServer, redis: Redis, pool: asyncpg.Pool) -> None:
    # A ping's nonce is echoed back; one orjson could read but not write again
    # (nested deeper than orjson.dumps allows) is refused as a bad field, and
    # whatever else a message makes fail is answered, never a dropped socket.
    raw = await RawWs.connect(server, token_for(await make_user(pool, redis)))
    deep = b'{"type":"ping","nonce":' + b"[" * 300 + b"]" * 300 + b"}"
    await raw.send_frames(RawWs.frame(deep), RawWs.frame(b'{"type":"ping","nonce":1}'))
    got = []
    with contextlib.suppress(asyncio.IncompleteReadError):
        for _ in range(2):
            got.append(await raw.next_message())
    assert got and got[-1] == {"type": "pong", "nonce": 1}, (
        f"the socket was dropped without a close frame; got {got}")
    raw.abort()


async def test_pongs_to_a_client_that_does_not_read_stay_within_the_outbound_budget(
        redis_url: str, database_url: str, redis: Redis, pool: asyncpg.Pool) -> None:
    # Pongs count against outbound_bytes_max like ticks do: a client that pings
    # and never reads is dropped (4008), not buffered for as long as it likes.
    budget = 64 * 1024
    async with serving(redis_url, database_url, outbound_bytes_max=budget) as srv:
        raw = await RawWs.connect(srv, token_for(await make_user(pool, redis)), rcvbuf=4096)
        ping = RawWs.frame(b"p" * 125, PING)
        for _ in range(16):  # ~8.4 MB of pings, past the kernel's buffers (4 MiB here)
            await raw.send_frames(ping * 4000)
        await asyncio.sleep(0.5)
        conn = next(iter(srv.ctx.connections.values()), None)
        if conn is not None and not conn.closed:
            assert conn.buffered_bytes() <= 2 * budget, (
                f"{conn.buffered_bytes()} bytes of pongs held for a client that does not read "
                f"(outbound_bytes_max {budget})")
        raw.abort()


async def test_messages_waiting_behind_a_join_are_bounded(
        server: RunningServer, redis: Redis, pool: asyncpg.Pool) -> None:
    # MESSAGES_WAITING_MAX pauses reading AND parsing: a single large read of
    # tiny frames (5,000 here) does not queue them all.
    from server.gateway import MESSAGES_WAITING_MAX
    from tests.support import make_room

    room, _ = await make_room(pool, redis)
    raw = await RawWs.connect(server, token_for(await make_user(pool, redis)))
    session = next(iter(server.ctx.unjoined.values()))
    await redis.execute_command("CLIENT", "PAUSE", "500", "ALL")  # the join waits
    await raw.send_frames(RawWs.frame(orjson.dumps({"type": "join", "room": room})),
                          *(RawWs.frame(b"{}") for _ in range(5000)))  # 40 KB, one read
    await asyncio.sleep(0.2)
    waiting = len(session.backlog or ())
    assert waiting <= 2 * MESSAGES_WAITING_MAX, f"{waiting} messages queued behind the join"
    raw.abort()


@pytest.mark.parametrize("interval_ms", [700, 1250])
async def test_a_pong_within_an_interval_that_is_not_a_multiple_of_the_sweep_is_in_time(
        interval_ms: int, redis_url: str, database_url: str, redis: Redis,
        pool: asyncpg.Pool) -> None:
    # A pass over the sweep slots must take at least one interval, whatever the
    # interval: a pong inside it is in time (700 ms and 1250 ms are not
    # multiples of the 0.5 s sweep).
    interval_s = interval_ms / 1000
    async with serving(redis_url, database_url, ws_ping_interval_ms=interval_ms) as srv:
        raw = await RawWs.connect(srv, token_for(await make_user(pool, redis)))
        for _ in range(3):
            op, payload = await raw.read_frame(timeout=3 * interval_s + 1)
            assert op == PING, (op, payload[:2])
            t_ping = time.monotonic()
            # answer at 85 % of the interval: late, but within it
            await asyncio.sleep(0.85 * interval_s)
            await raw.send_frames(RawWs.frame(payload, PONG))
            pong_after = time.monotonic() - t_ping
            op, payload = await raw.read_frame(timeout=3 * interval_s + 1)
            assert op != CLOSE, (
                f"closed with {int.from_bytes(payload[:2], 'big')} although our pong went out "
                f"{pong_after:.2f}s after the ping, within the {interval_s}s interval")
            assert op == PING
            # hand the ping we just read to the next round
            await raw.send_frames(RawWs.frame(payload, PONG))
        raw.abort()


async def test_messages_held_while_paused_are_all_handled_once_and_in_order(
        server: RunningServer, redis: Redis, pool: asyncpg.Pool) -> None:
    # Coverage for _feed/_held/resume_reading: a single large read of pings
    # queued behind a slow join (reading and parsing pause at
    # MESSAGES_WAITING_MAX, the rest of the read is held) is answered in full,
    # each exactly once and in order, after the join.
    room, _ = await make_room(pool, redis)
    raw = await RawWs.connect(server, token_for(await make_user(pool, redis)))
    n = 3000
    await redis.execute_command("CLIENT", "PAUSE", "500", "ALL")  # the join waits
    await raw.send_frames(
        RawWs.frame(orjson.dumps({"type": "join", "room": room})),
        *(RawWs.frame(orjson.dumps({"type": "ping", "nonce": i})) for i in range(n)))
    first = await raw.next_message(timeout=5)
    assert first["type"] == "joined", first
    nonces = [(await raw.next_message(timeout=5))["nonce"] for _ in range(n)]
    assert nonces == list(range(n)), [
        (i, x) for i, x in enumerate(nonces) if x != i][:5]
    raw.abort()


async def test_our_close_while_paused_still_reads_the_close_reply(
        redis_url: str, database_url: str, redis: Redis, pool: asyncpg.Pool) -> None:
    # Coverage for close() -> resume_reading(): a socket paused behind a join
    # that does not finish gets our 4001; its close reply must be read (not
    # left behind the pause until the 2 s abort) and the TCP close follows.
    async with serving(redis_url, database_url, join_timeout_s=1) as srv:
        room, _ = await make_room(pool, redis)
        raw = await RawWs.connect(srv, token_for(await make_user(pool, redis)))
        await redis.execute_command("CLIENT", "PAUSE", "3000", "ALL")  # the join hangs
        await raw.send_frames(
            RawWs.frame(orjson.dumps({"type": "join", "room": room})),
            *(RawWs.frame(orjson.dumps({"type": "ping", "nonce": i})) for i in range(1000)))
        await asyncio.sleep(0.2)
        sock = next(iter(srv.ctx.connections.values())).sock
        assert sock.paused and sock._held  # reading and parsing stopped, bytes held
        assert await raw.close_code(timeout=3) == CLOSE_JOIN_TIMEOUT
        t0 = time.monotonic()
        await raw.send_frames(RawWs.frame(CLOSE_JOIN_TIMEOUT.to_bytes(2, "big"), CLOSE))
        rest = await asyncio.wait_for(raw.reader.read(), 3)
        assert rest == b"" and time.monotonic() - t0 < 1.0, (rest[:20], time.monotonic() - t0)
        raw.abort()
