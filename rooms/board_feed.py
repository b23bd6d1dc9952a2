"""Board subscriptions for widgets: a snapshot, then coalesced diffs.

A connection (an overlay widget, say) subscribes to one streamer's fan board
for a period. Once every `board_push_ms` this process reads each subscribed
board once (one pipeline for all of them), compares it with what it last
sent, and sends the diff to every subscriber of that board. Between two
pushes any number of gifts may land: subscribers get the latest value, not
every step. The period follows the clock, so at local midnight a day board
becomes the new day's board (and the diff says so).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, cast
from zoneinfo import ZoneInfo

from redis.asyncio import Redis

from rooms.conn import Conn
from rooms.names import NameCache
from rooms.periods import period_of
from rooms.ranking import Entry, rank_diff
from server import keys
from server.settings import Settings

log = logging.getLogger("giftd.boards")

BOARD_SUBSCRIPTIONS_PER_CONN_MAX = 8
BOARD_SPANS = ("day", "week", "month")

BoardId = tuple[int, str]  # (streamer id, span)


class BoardFeed:
    def __init__(self, redis: Redis, names: NameCache, settings: Settings,
                 clock: Callable[[], float] = time.time) -> None:
        self.redis = redis
        self.names = names
        self.settings = settings
        self.clock = clock
        self.tz = ZoneInfo(settings.timezone)
        self.subs: dict[BoardId, dict[int, Conn]] = {}
        self.last: dict[BoardId, tuple[str, list[Entry]]] = {}  # (period, top N) last sent
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="board-feed")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _period(self, span: str) -> str:
        return period_of(span, datetime.fromtimestamp(self.clock(), self.tz).date())

    def count_of(self, conn: Conn) -> int:
        return sum(1 for subs in self.subs.values() if conn.id in subs)

    async def subscribe(self, conn: Conn, streamer_id: int, span: str) -> dict[str, Any]:
        board = (streamer_id, span)
        if board not in self.last:
            period = self._period(span)
            self.last[board] = (period, (await self._read([(streamer_id, period)]))[0])
        self.subs.setdefault(board, {})[conn.id] = conn
        period, entries = self.last[board]
        return {"type": "board", "board": "fans", "streamer": streamer_id, "span": span,
                "period": period, "snapshot": True,
                "rank": [e.as_json(i + 1) for i, e in enumerate(entries)]}

    def drop(self, conn: Conn) -> None:
        for board in [b for b, subs in self.subs.items() if conn.id in subs]:
            del self.subs[board][conn.id]
            if not self.subs[board]:
                del self.subs[board]
                self.last.pop(board, None)

    async def _read(self, boards: list[tuple[int, str]]) -> list[list[Entry]]:
        n = self.settings.ranking_top_n
        pipe = self.redis.pipeline(transaction=False)
        for streamer_id, period in boards:
            pipe.zrevrange(keys.board_fans(streamer_id, period), 0, n - 1, withscores=True)
        raw = cast(list[list[tuple[bytes, float]]], await pipe.execute())
        ids = sorted({int(m) for rows in raw for m, _ in rows})
        names = await self.names.get_many(ids)
        return [[Entry(int(m), names.get(int(m), ""), int(s)) for m, s in rows] for rows in raw]

    async def push(self) -> None:
        boards = list(self.subs)
        if not boards:
            return
        periods = [self._period(span) for _, span in boards]
        tops = await self._read([(sid, p) for (sid, _), p in zip(boards, periods, strict=True)])
        for board, period, top in zip(boards, periods, tops, strict=True):
            subs = self.subs.get(board)
            if not subs:
                continue
            last_period, last_top = self.last.get(board, ("", []))
            if period == last_period and top == last_top:
                continue
            self.last[board] = (period, top)
            msg = {"type": "board", "board": "fans", "streamer": board[0], "span": board[1],
                   "period": period, "rank": rank_diff(last_top if period == last_period
                                                       else [], top)}
            if period != last_period:
                msg["snapshot"] = True  # a new period: the diff is the whole board
                msg["rank"] = [e.as_json(i + 1) for i, e in enumerate(top)]
            for conn in list(subs.values()):
                if not conn.send(msg):
                    subs.pop(conn.id, None)
        for board in boards:  # boards whose last subscriber was found gone: no more reads
            if not self.subs.get(board, True):
                del self.subs[board]
                self.last.pop(board, None)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.settings.board_push_ms / 1000)
            try:
                await self.push()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("board push: %r", exc)
