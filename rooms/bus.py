"""The cross-node room bus: Redis pub/sub in, the local hub out.

One pub/sub connection per process. A room is subscribed while this process
hosts at least one of its viewers. Order: Lua scripts run one at a time and
publish as they go, so a channel delivers a room's events in seq order. A
gap (the pub/sub connection dropped, say) is repaired from the room's
history stream before later events are released.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, cast

from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from rooms.hub import Hub, LocalRoom
from rooms.names import NameCache
from rooms.ranking import Entry
from server import keys

log = logging.getLogger("giftd.bus")

PRESENCE_EVERY_S = 1.0  # viewer counts are pushed and summed this often
PRESENCE_TTL_MS = 5000  # a node's count is ignored once this old (a crashed node)
SUBSCRIBE_TIMEOUT_S = 5.0  # a room subscription not confirmed by then fails the join


class RoomBus:
    def __init__(self, redis: Redis, hub: Hub, names: NameCache, node_id: str) -> None:
        self.redis = redis
        self.hub = hub
        self.names = names
        self.node_id = node_id
        self.pubsub: PubSub = redis.pubsub(ignore_subscribe_messages=False)
        self._subscribed: dict[bytes, asyncio.Event] = {}
        self._channels: dict[bytes, str] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.gaps_repaired = 0
        self._control = keys.CONTROL_CHANNEL.encode()
        self.on_control: Callable[[bytes], None] | None = None

    async def start(self) -> None:
        # The control channel (revocations etc.) is always subscribed; it also
        # opens the connection, which `listen` needs.
        await self.pubsub.subscribe(keys.CONTROL_CHANNEL)
        self._tasks = [asyncio.create_task(self._listen(), name="room-bus"),
                       asyncio.create_task(self._presence(), name="room-presence")]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        with contextlib.suppress(Exception):
            pipe = self.redis.pipeline(transaction=False)
            for room_id in self.hub.rooms:
                pipe.hdel(keys.room_viewers(room_id), self.node_id)
            await pipe.execute()
        with contextlib.suppress(Exception):
            await self.pubsub.aclose()

    async def open_room(self, room_id: str, streamer_id: int) -> LocalRoom:
        """The local room, subscribed and initialised from an atomic Redis snapshot."""
        room = self.hub.rooms.get(room_id)
        if room is not None and room.ready.is_set():
            return room
        lock = self._locks.setdefault(room_id, asyncio.Lock())
        async with lock:
            room = self.hub.rooms.get(room_id)
            if room is not None and room.ready.is_set():
                return room
            room = self.hub.create(room_id, streamer_id)
            channel = keys.room_channel(room_id)
            self._channels[channel.encode()] = room_id
            # Subscribe first, snapshot second: every event after the snapshot's
            # seq is then certain to arrive on the channel (or be in history).
            confirmed = self._subscribed[channel.encode()] = asyncio.Event()
            try:
                await self.pubsub.subscribe(channel)
                await asyncio.wait_for(confirmed.wait(), SUBSCRIBE_TIMEOUT_S)
                snap = await self._snapshot(room_id)
            except BaseException:
                # Leave nothing half-open behind: the next join starts afresh.
                if self.hub.rooms.get(room_id) is room:
                    del self.hub.rooms[room_id]
                self._channels.pop(channel.encode(), None)
                with contextlib.suppress(Exception):
                    await self.pubsub.unsubscribe(channel)
                raise
            finally:
                self._subscribed.pop(channel.encode(), None)
            self.hub.init_from_snapshot(room, *snap)
            return room

    async def close_room_if_empty(self, room: LocalRoom) -> None:
        if room.members:
            return
        lock = self._locks.setdefault(room.id, asyncio.Lock())
        async with lock:
            if room.members or self.hub.rooms.get(room.id) is not room:
                return
            del self.hub.rooms[room.id]
            self._locks.pop(room.id, None)
            channel = keys.room_channel(room.id)
            self._channels.pop(channel.encode(), None)
            await self.pubsub.unsubscribe(channel)
            await self.redis.hdel(keys.room_viewers(room.id), self.node_id)

    async def _snapshot(self, room_id: str) -> tuple[int, list[Entry], int, int, int]:
        top_n = self.hub.settings.ranking_top_n
        pipe = self.redis.pipeline(transaction=True)  # MULTI: one consistent cut
        pipe.get(keys.room_seq(room_id))
        pipe.zrevrange(keys.room_rank(room_id), 0, top_n - 1, withscores=True)
        pipe.get(keys.room_earnings(room_id))
        pipe.hgetall(keys.room_viewers(room_id))
        pipe.get(keys.room_epoch(room_id))
        seq, rank, earn, viewers, epoch = await pipe.execute()
        ids = [int(m) for m, _ in rank]
        names = await self.names.get_many(ids)
        entries = [Entry(int(m), names.get(int(m), ""), int(s)) for m, s in rank]
        return (int(seq or 0), entries, int(earn or 0), _sum_viewers(viewers, self.node_id),
                int(epoch or 0))

    async def _listen(self) -> None:
        while True:
            try:
                async for msg in self.pubsub.listen():
                    kind = msg.get("type")
                    if kind == "subscribe":
                        waiter = self._subscribed.get(msg["channel"])
                        if waiter is not None:
                            waiter.set()
                        continue
                    if kind != "message":
                        continue
                    if msg["channel"] == self._control and self.on_control is not None:
                        self.on_control(msg["data"])
                        continue
                    room_id = self._channels.get(msg["channel"])
                    if room_id is not None:
                        # one message holds a script call's events for the room
                        for raw in msg["data"].split(b"\n"):
                            await self._offer(room_id, raw)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("room bus: %r; resubscribing", exc)
                await asyncio.sleep(0.5)
                # After a reconnect redis-py resubscribes; events published
                # meanwhile are repaired from history on the next gap.

    async def _offer(self, room_id: str, raw: bytes) -> None:
        gap_from = self.hub.on_event(room_id, raw)
        if gap_from is None:
            return
        for missed in await self.history_since(room_id, gap_from):
            self.hub.on_event(room_id, missed, accept_gap=True)
        self.gaps_repaired += 1
        self.hub.on_event(room_id, raw, accept_gap=True)

    async def history_since(self, room_id: str, from_seq: int) -> list[bytes]:
        """Events with seq >= from_seq from the room's history, oldest first."""
        out: list[bytes] = []
        last = "+"
        while True:
            chunk: list[tuple[bytes, dict[bytes, bytes]]] = cast(Any, await self.redis.xrevrange(
                keys.room_history(room_id), max=last, min="-", count=200))
            if not chunk:
                break
            done = False
            for _entry_id, fields in chunk:
                payload = fields[b"p"]
                seq = seq_of(payload)
                if seq < from_seq:
                    done = True
                    break
                out.append(payload)
            if done or len(chunk) < 200:
                break
            last = "(" + chunk[-1][0].decode()
        out.reverse()
        return out

    async def _presence(self) -> None:
        while True:
            await asyncio.sleep(PRESENCE_EVERY_S)
            try:
                await self.push_presence()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("presence: %r", exc)

    async def push_presence(self) -> None:
        rooms = list(self.hub.rooms.values())
        if not rooms:
            return
        expires = int(time.time() * 1000) + PRESENCE_TTL_MS
        pipe = self.redis.pipeline(transaction=False)
        for room in rooms:
            pipe.hset(keys.room_viewers(room.id), self.node_id, f"{len(room.members)}:{expires}")
            pipe.hgetall(keys.room_viewers(room.id))
        res = await pipe.execute()
        for i, room in enumerate(rooms):
            room.viewers_total = _sum_viewers(res[2 * i + 1], None)


def seq_of(payload: bytes) -> int:
    # payload starts with {"seq":N, — cheap to read without a full parse
    head = payload[7:32]
    return int(head[: head.index(b",")])


def _sum_viewers(raw: dict[Any, Any], skip_node: str | None) -> int:
    now = int(time.time() * 1000)
    total = 0
    for node, value in raw.items():
        node_s = node.decode() if isinstance(node, bytes) else node
        if node_s == skip_node:
            continue
        v = value.decode() if isinstance(value, bytes) else value
        count, _, exp = v.partition(":")
        if exp and int(exp) >= now:
            total += int(count)
    return total
