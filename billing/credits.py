"""Credits to wallets: decided in Postgres first, then applied to Redis exactly once.

A credit (demo grant now; recharges and refunds reuse the same path) is one
transaction: a balanced journal entry plus a credit_outbox row. Only after
the commit is the idempotent credit script called; `apply_pending` retries
every row the script has not confirmed, so a Redis outage delays a credit
but never loses or doubles it.
"""

from __future__ import annotations

import logging

import asyncpg
from redis.asyncio import Redis

from billing.db import Db
from gifts.scripts import Script
from server import keys

log = logging.getLogger("giftd.credits")

CREDIT_MARKER_TTL_S = 90 * 24 * 3600  # outbox retries stop long before the marker expires


async def book_grant(conn: Db, *, user_id: int, amount: int, ref: str,
                     memo: str = "") -> bool:
    """Journal a promotional grant and queue its Redis credit. False if `ref` was booked."""
    if amount <= 0:
        raise ValueError("a grant must be positive")
    async with conn.transaction():
        entry_id = await conn.fetchval(
            """INSERT INTO journal_entries (kind, ref, memo) VALUES ('grant', $1, $2)
               ON CONFLICT (kind, ref) DO NOTHING RETURNING id""",
            ref, memo or None,
        )
        if entry_id is None:
            return False
        await conn.execute(
            """INSERT INTO postings (entry_id, account, amount)
               VALUES ($1, 'promotion', $2), ($1, 'wallet:' || $3::bigint, $4)""",
            entry_id, -amount, user_id, amount,
        )
        await conn.execute(
            "INSERT INTO credit_outbox (op_id, user_id, amount) VALUES ($1, $2, $3)",
            f"grant:{ref}", user_id, amount,
        )
    return True


async def apply_pending(pool: asyncpg.Pool, redis: Redis, script: Script, limit: int = 500) -> int:
    """Apply unapplied outbox credits to Redis; returns how many were confirmed."""
    rows = await pool.fetch(
        """SELECT op_id, user_id, amount FROM credit_outbox
            WHERE applied_at IS NULL ORDER BY created_at LIMIT $1""",
        limit,
    )
    done = 0
    for r in rows:
        await script(redis, [keys.PREFIX, r["op_id"], r["user_id"], r["amount"],
                             CREDIT_MARKER_TTL_S])
        await pool.execute("UPDATE credit_outbox SET applied_at = now() WHERE op_id = $1",
                           r["op_id"])
        done += 1
    return done
