"""The rooms this process hosts viewers of, and their tick-batched broadcast.

Events reach a room from the room bus (Redis pub/sub, every node) in seq
order. They wait in the room's buffer; once per tick the room builds ONE
frame per wire format with every buffered event, the ranking diff and the
viewer count, and writes those bytes to each viewer. A gift worth at least
`urgent_value_coins` flushes its room at once. Cost per tick is frames, not
gifts.

The snapshot a joiner gets is the room's *broadcast* state (the seq of the
last event already sent out, the ranking as of that event), so the joiner's
first tick frame carries exactly the events after its snapshot: nothing
missed, nothing twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from rooms.conn import Conn
from rooms.frames import tick_payload_json, tick_payload_msgpack, ws_frame
from rooms.merge import merge_cheap
from rooms.ranking import Entry, TopN, rank_diff
from server.codec import WireFormat
from server.settings import Settings

log = logging.getLogger("giftd.hub")


@dataclass
class LocalRoom:
    id: str
    streamer_id: int
    top: TopN
    broadcast_seq: int  # seq of the last event written to viewers (or of the snapshot)
    room_total: int  # streamer's earnings this broadcast, as of broadcast_seq
    viewers_total: int = 0  # across all nodes, refreshed by the presence task
    members: dict[int, Conn] = field(default_factory=dict)
    streamer_conns: dict[int, Conn] = field(default_factory=dict)  # members who are its streamer
    pending: list[tuple[bytes, dict[str, Any]]] = field(default_factory=list)
    received_seq: int = 0  # highest seq accepted into `pending`
    viewers_sent: int = -1
    urgent: bool = False
    epoch: int = 0  # broadcast session
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    early: list[bytes] = field(default_factory=list)  # events that arrived before the snapshot


class Hub:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.rooms: dict[str, LocalRoom] = {}
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        # counters for /metrics
        self.frames_written = 0
        self.events_delivered = 0  # logical gift deliveries (events × viewers)
        self.slow_closes = 0
        self.ticks = 0
        self.tick_lag_ms = 0.0
        self.gaps_unrepaired = 0
        self.merged_frames = 0

    # --- lifecycle --------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._tick_loop(), name="room-ticks")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # --- membership -------------------------------------------------------
    def create(self, room_id: str, streamer_id: int) -> LocalRoom:
        room = LocalRoom(room_id, streamer_id, TopN(self.settings.ranking_top_n), 0, 0)
        self.rooms[room_id] = room
        return room

    def init_from_snapshot(self, room: LocalRoom, seq: int, ranking: list[Entry],
                           room_total: int, viewers_total: int, epoch: int = 0) -> None:
        room.epoch = epoch
        room.broadcast_seq = room.received_seq = seq
        room.top = TopN(self.settings.ranking_top_n, ranking)
        room.room_total = room_total
        room.viewers_total = viewers_total
        early, room.early = room.early, []
        room.ready.set()
        for raw in early:
            self.on_event(room.id, raw)

    def add(self, room: LocalRoom, conn: Conn) -> None:
        room.members[conn.id] = conn
        if conn.principal.user_id == room.streamer_id:  # gets the earnings feed
            room.streamer_conns[conn.id] = conn
        conn.room = room.id

    def remove(self, conn: Conn) -> LocalRoom | None:
        if conn.room is None:
            return None
        room = self.rooms.get(conn.room)
        conn.room = None
        if room is not None:
            room.members.pop(conn.id, None)
            room.streamer_conns.pop(conn.id, None)
        return room

    def snapshot(self, room: LocalRoom) -> dict[str, Any]:
        return {
            "seq": room.broadcast_seq,
            "ranking": room.top.as_json(),
            "room_total": room.room_total,
            "epoch": room.epoch,
            "viewers": max(room.viewers_total, len(room.members)),
        }

    # --- events in --------------------------------------------------------
    def on_event(self, room_id: str, raw: bytes, *, accept_gap: bool = False) -> int | None:
        """Queue one event (raw JSON from the bus). Returns a seq gap start, if any.

        Events at or below the last accepted seq are repeats and are dropped.
        With `accept_gap`, an event after a gap that history could not fill is
        taken anyway (and counted): better a hole than a room that stops.
        """
        room = self.rooms.get(room_id)
        if room is None:
            return None
        if not room.ready.is_set():
            room.early.append(raw)
            return None
        ev = orjson.loads(raw)
        seq = int(ev["seq"])
        if seq <= room.received_seq:
            return None
        if seq != room.received_seq + 1:
            if not accept_gap:
                return room.received_seq + 1  # caller fills the gap from history, re-offers
            self.gaps_unrepaired += 1
            log.error("room %s: events %d..%d are lost to this node", room_id,
                      room.received_seq + 1, seq - 1)
        room.received_seq = seq
        room.pending.append((raw, ev))
        if ev.get("type") == "gift" and (
                int(ev.get("value_coins", 0)) >= self.settings.urgent_value_coins):
            room.urgent = True
            self._wake.set()
        return None

    # --- the tick ---------------------------------------------------------
    async def _tick_loop(self) -> None:
        tick_s = self.settings.tick_ms / 1000
        next_at = time.monotonic() + tick_s
        while True:
            timeout = max(0.0, next_at - time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            now = time.monotonic()
            if now >= next_at:
                self.tick_lag_ms = (now - next_at) * 1000
                next_at = max(next_at + tick_s, now)  # never a burst of catch-up ticks
                self.ticks += 1
                self.flush_all()
            else:  # woken early by an urgent gift
                for room in list(self.rooms.values()):
                    if room.urgent:
                        self.flush(room)

    def flush_all(self) -> None:
        for room in list(self.rooms.values()):
            try:
                self.flush(room)
            except Exception:
                log.exception("tick of room %s failed", room.id)

    def flush(self, room: LocalRoom) -> None:
        """Write everything the room has buffered: one frame per wire format per chunk.

        A chunk holds at most `tick_events_max` events, so a frame's size is
        bounded; a tick that received more sends several frames. The buffer
        therefore never holds more than one tick's arrivals.
        """
        room.urgent = False
        viewers = max(room.viewers_total, len(room.members))
        if not room.pending and viewers == room.viewers_sent:
            return
        limit = self.settings.tick_events_max
        while True:
            chunk, room.pending = room.pending[:limit], room.pending[limit:]
            self._broadcast(room, chunk, viewers)
            if not room.pending:
                break

    def _broadcast(self, room: LocalRoom, chunk: list[tuple[bytes, dict[str, Any]]],
                   viewers: int) -> None:
        before = room.top.entries()
        earnings_delta = 0
        for _, ev in chunk:
            if ev.get("type") == "session_start":  # a new broadcast: boards start empty
                room.top = TopN(self.settings.ranking_top_n)
                room.room_total = 0
                room.epoch = int(ev.get("epoch", room.epoch))
                continue
            if ev.get("type") != "gift":
                continue  # streak ends and other room events move no totals
            sender = ev.get("sender") or {}
            room.top.update(int(sender.get("id", 0)), str(sender.get("name", "")),
                            int(ev.get("sender_total", 0)))
            room.room_total = max(room.room_total, int(ev.get("room_total", 0)))
            earnings_delta += int(ev.get("value_coins", 0))
        if chunk:
            room.broadcast_seq = int(chunk[-1][1]["seq"])
        diff = rank_diff(before, room.top.entries())
        room.viewers_sent = viewers
        logical = len(chunk)  # event deliveries per viewer, merged or not
        gifts_in_chunk = sum(1 for _, ev in chunk if ev.get("type") == "gift")
        if len(chunk) > self.settings.merge_above_events > 0:
            chunk = merge_cheap(chunk)
            self.merged_frames += 1
        seq = room.broadcast_seq
        json_frame: bytes | None = None
        msgpack_frame: bytes | None = None
        dead: list[Conn] = []
        # The hot loop of a surge: one prebuilt frame per wire format, written to
        # every member; per member only the format test and one write_frame call.
        for conn in room.members.values():
            if conn.fmt is WireFormat.JSON:
                frame = json_frame
                if frame is None:
                    frame = json_frame = ws_frame(tick_payload_json(
                        room.id, [raw for raw, _ in chunk], diff, viewers, seq), WireFormat.JSON)
            else:
                frame = msgpack_frame
                if frame is None:
                    frame = msgpack_frame = ws_frame(tick_payload_msgpack(
                        room.id, [ev for _, ev in chunk], diff, viewers, seq), WireFormat.MSGPACK)
            if not conn.write_frame(frame):  # gone, or dropped now for falling behind
                dead.append(conn)
                if conn.slow:
                    self.slow_closes += 1
        written = len(room.members) - len(dead)
        self.frames_written += written
        self.events_delivered += written * logical
        if chunk and earnings_delta:
            feed = {"type": "earnings", "room": room.id, "room_total": room.room_total,
                    "delta_coins": earnings_delta, "gifts": gifts_in_chunk, "seq": seq}
            for conn in room.streamer_conns.values():
                conn.send(feed)
        for conn in dead:
            room.members.pop(conn.id, None)
            room.streamer_conns.pop(conn.id, None)
