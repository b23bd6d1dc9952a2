"""The debit batcher: many sends, one script call.

Every gateway connection hands its priced send to one `GiftSender`. While a
script call is in flight, new sends queue up; the next call takes up to
`send_batch_max` of them at once. Under light load a batch is one gift and
adds no delay; under a surge the cost per gift falls with the batch size.
Each gift in a batch is still decided and applied atomically on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from zoneinfo import ZoneInfo

import msgpack
import orjson
from redis.asyncio import Redis

from gifts.catalog import TIER_FLOORS_COINS, Gift, tier_for
from gifts.scripts import Script
from gifts.send_rule import Outcome, fingerprint
from rooms.periods import BOARD_TTL_S, periods
from server import keys
from server.settings import Settings

log = logging.getLogger("giftd.sender")


@dataclass(frozen=True, slots=True)
class SendRequest:
    user_id: int
    user_name: str
    client_id: str
    room: str
    streamer_id: int
    gift: Gift
    count: int

    @property
    def amount(self) -> int:
        return self.gift.price_coins * self.count

    def json_tail(self) -> bytes:
        """The room event's JSON after its opening brace; the script prepends seq etc."""
        body = orjson.dumps(
            {
                "type": "gift",
                "room": self.room,
                "gift": self.gift.code,
                "gift_name": self.gift.name,
                "kind": self.gift.kind,
                "animation": self.gift.animation,
                "count": self.count,
                "value_coins": self.amount,
                "tier": tier_for(self.amount),
                "client_id": self.client_id,
            }
        )
        return body[1:]

    def sender_json(self) -> bytes:
        return orjson.dumps({"id": self.user_id, "name": self.user_name})

    def packed(self) -> bytes:
        """This gift as the script's one argument: a msgpack array of strings."""
        return msgpack.packb([
            str(self.user_id),
            self.client_id,
            fingerprint(self.room, self.gift.code, self.count, self.gift.price_coins),
            self.room,
            str(self.streamer_id),
            self.gift.code,
            str(self.count),
            str(self.gift.price_coins),
            str(self.amount),
            self.sender_json().decode(),
            self.json_tail().decode(),
        ])


@dataclass(frozen=True, slots=True)
class SendResult:
    outcome: Outcome
    balance: int
    event_id: str
    seq: int


class Overloaded(Exception):
    """The send queue is at `send_queue_max`: the caller answers `overloaded`."""


class GiftSender:
    def __init__(self, redis: Redis, script: Script, settings: Settings,
                 workers: int = 2, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock  # picks the leaderboard periods; tests stand it at 23:59:59
        self._redis = redis
        self._script = script
        self._settings = settings
        self._tz = ZoneInfo(settings.timezone)
        self._queue: asyncio.Queue[tuple[SendRequest, asyncio.Future[SendResult]]] = (
            asyncio.Queue(maxsize=settings.send_queue_max)
        )
        self._workers_n = workers  # >1 overlaps one call's round trip with the next batch
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None  # kept: see server/gateway.py spawn
        self.batches = 0
        self.sent = 0

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for i in range(self._workers_n):
            self._tasks.append(asyncio.create_task(self._run(), name=f"gift-sender-{i}"))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks.clear()

    def queued(self) -> int:
        return self._queue.qsize()

    async def send(self, req: SendRequest) -> SendResult:
        loop = self._loop or asyncio.get_running_loop()
        fut: asyncio.Future[SendResult] = loop.create_future()
        try:
            self._queue.put_nowait((req, fut))
        except asyncio.QueueFull:
            raise Overloaded from None
        return await fut

    async def send_many(self, reqs: list[SendRequest]) -> list[SendResult]:
        """Debit a list directly in one call (benchmarks, tools); bypasses the queue."""
        return await self._call(reqs)

    async def _run(self) -> None:
        q = self._queue
        max_batch = self._settings.send_batch_max
        while True:
            first = await q.get()
            batch = [first]
            while len(batch) < max_batch and not q.empty():
                batch.append(q.get_nowait())
            try:
                results = await self._call([r for r, _ in batch])
            except Exception as exc:  # Redis down, script error: every caller hears it
                log.warning("send batch of %d failed: %r", len(batch), exc)
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for (_, fut), res in zip(batch, results, strict=True):
                if not fut.done():
                    fut.set_result(res)

    async def _call(self, reqs: list[SendRequest]) -> list[SendResult]:
        s = self._settings
        day, week, month = periods(int(self._clock() * 1000), self._tz)
        args: list[bytes | str | int] = [
            keys.PREFIX, s.idempotency_ttl_s, s.ledger_backlog_max, s.room_history_max,
            day, week, month, BOARD_TTL_S, s.combo_window_ms, *TIER_FLOORS_COINS[1:], len(reqs),
        ]
        args.extend(r.packed() for r in reqs)
        raw = await self._script(self._redis, args)
        self.batches += 1
        self.sent += len(reqs)
        out = []
        for outcome, balance, event_id, seq in raw:
            out.append(SendResult(Outcome(_s(outcome)), int(balance), _s(event_id), int(seq)))
        return out


def _s(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v
