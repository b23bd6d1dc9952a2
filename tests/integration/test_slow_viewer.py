"""A viewer that stops reading is dropped with 4008; the room and the others carry on."""

from __future__ import annotations

import asyncio
import time

import asyncpg
from redis.asyncio import Redis

from gifts.catalog import Gift
from gifts.sender import GiftSender, SendRequest
from rooms.conn import CLOSE_SLOW_CONSUMER
from tests.support import Client, RawWs, RunningServer, make_room, make_user, token_for

ROSE = Gift("rose", "Rose", 1, "rose_float")
BUDGET = 64 * 1024


async def stalled_viewer(server: RunningServer, token: str, room: str
                         ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw client: handshake, join, then never read again. The stream reader
    stops the transport reading once its small buffer is full."""
    raw = await RawWs.connect(server, token, rcvbuf=4096, limit=4096)
    assert raw.status == 101
    await raw.send_json({"type": "join", "room": room})
    return raw.reader, raw.writer


async def test_slow_viewer_is_dropped_and_room_keeps_pace(
        redis_url: str, database_url: str, redis: Redis, pool: asyncpg.Pool) -> None:
    srv = RunningServer(redis_url, database_url, outbound_bytes_max=BUDGET)
    await srv.start()
    try:
        room, streamer = await make_room(pool, redis)
        ann = await make_user(pool, redis, coins=10**9)
        # (one event loop runs server, sender and both clients here: give the
        # reading client a deep queue so only the stalled one falls behind)
        fast = await Client.connect(srv, await make_user(pool, redis), max_queue=None)
        await fast.join(room)
        reader, writer = await stalled_viewer(srv, token_for(await make_user(pool, redis)), room)
        hub = srv.ctx.hub
        while len(hub.rooms[room].members) < 2:
            await asyncio.sleep(0.01)
        sender = GiftSender(redis, srv.ctx.scripts.send_gifts, srv.settings)
        sent = 0
        max_buffered = 0
        deadline = time.monotonic() + 60
        while hub.slow_closes == 0 and time.monotonic() < deadline:
            await sender.send_many([SendRequest(ann.user_id, "Ann", f"s{sent + i}", room,
                                                streamer.user_id, ROSE, 1) for i in range(200)])
            sent += 200
            for conn in hub.rooms[room].members.values():
                max_buffered = max(max_buffered, conn.buffered_bytes())
            await asyncio.sleep(0.02)
        assert hub.slow_closes == 1, (f"{hub.slow_closes} dropped after {sent} gifts",
                                      [(c.principal.name, c.slow, c.closed)
                                       for c in hub.rooms[room].members.values()])
        # memory stayed bounded: no viewer ever held more than the budget (+ one frame)
        assert max_buffered <= BUDGET + 512 * 1024
        assert len(hub.rooms[room].members) == 1  # only the fast viewer is left
        # the fast viewer got everything, and recently sent gifts arrive promptly
        await fast.wait_for(lambda c: len(c.gifts) >= sent, timeout=30)
        t0 = time.time()
        await sender.send_many([SendRequest(ann.user_id, "Ann", "last", room, streamer.user_id,
                                            ROSE, 1)])
        await fast.wait_for(lambda c: any(g["client_id"] == "last" for g in c.gifts), timeout=5)
        assert time.time() - t0 < 1.0
        # the stalled client, reading again, finds the 4008 close frame at the end
        data = b""
        try:
            while chunk := await asyncio.wait_for(reader.read(1 << 20), 5):
                data += chunk
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass
        i = data.rfind(bytes([0x88]))
        if i >= 0:  # unless the 2 s abort cut the socket before the close frame got out
            assert int.from_bytes(data[i + 2:i + 4], "big") == CLOSE_SLOW_CONSUMER
        writer.close()
        await fast.close()
    finally:
        await srv.stop()
