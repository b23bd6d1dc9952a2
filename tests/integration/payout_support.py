"""Helpers for the money-out tests: gifts at chosen times, through the flusher's writer."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from datetime import datetime

import asyncpg
from redis.asyncio import Redis

from billing.flusher import GiftRow, write_batch
from server import keys

_ids = itertools.count(1)


async def gifts_at(pool: asyncpg.Pool, redis: Redis, *, sender_id: int, streamer_id: int,
                   room: str, items: Sequence[tuple[datetime, int]]) -> int:
    """Gifts at chosen server times, as the send path + flusher would record them: the
    sender's Redis wallet is debited (what send_gifts.lua does) and the rows go through
    billing.flusher.write_batch (the flusher's own writer). The send script stamps the
    server's clock, so simulating a past month needs this path; the rest is the real one."""
    rows = []
    for at, coins in items:
        n = next(_ids)
        rows.append(GiftRow(event_id=f"{int(at.timestamp() * 1000)}-{n}", client_id=f"sim{n}",
                            sender_id=sender_id, streamer_id=streamer_id, room_id=room,
                            gift_code="rose", count=coins, unit_price_coins=1,
                            amount_coins=coins, created_at=at))
    total = sum(c for _, c in items)
    await redis.decrby(keys.balance(sender_id), total)
    async with pool.acquire() as conn:
        assert await write_batch(conn, rows) == len(rows)
    return total
