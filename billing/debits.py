"""Taking coins out of a Redis wallet for refunds and negative adjustments, exactly once.

Three steps, each safe to repeat:
1. Postgres: a `wallet_debits` row 'pending' (with the operation's own row),
   committed before Redis is touched;
2. Redis: debit.lua, keyed by the op id: `ok` the first time, `duplicate`
   after, `insufficient_balance` when the coins were spent meanwhile;
3. Postgres: the journal entry and 'done' in one transaction (or 'refused').

A crash between the steps leaves a 'pending' row; `resume_debits` runs the
script again (a no-op if it had debited: the marker answers `duplicate`)
and finishes the operation the same way.
"""

from __future__ import annotations

import logging
from enum import StrEnum

import asyncpg
from redis.asyncio import Redis

from gifts.scripts import Script
from server import keys

log = logging.getLogger("giftd.debits")

DEBIT_MARKER_TTL_S = 90 * 24 * 3600  # pending debits are resumed long before this
RESUME_AFTER_S = 30  # a debit pending this long is taken over by resume_debits


class Debit(StrEnum):
    OK = "ok"                        # debited now, or by an earlier attempt
    INSUFFICIENT = "insufficient_balance"


async def debit(redis: Redis, script: Script, op_id: str, user_id: int, amount: int) -> Debit:
    res = await script(redis, [keys.PREFIX, op_id, user_id, amount, DEBIT_MARKER_TTL_S])
    outcome = res[0].decode() if isinstance(res[0], bytes) else str(res[0])
    return Debit.INSUFFICIENT if outcome == "insufficient_balance" else Debit.OK


async def resume_debits(pool: asyncpg.Pool, redis: Redis, script: Script,
                        older_than_s: int = RESUME_AFTER_S) -> int:
    """Finish debits left pending by a crash; returns how many were finished."""
    from billing import adjustments, refunds

    rows = await pool.fetch(
        """SELECT op_id, user_id, amount, kind FROM wallet_debits
            WHERE status = 'pending' AND created_at <= now() - $1 * interval '1 s'
            ORDER BY created_at LIMIT 200""", older_than_s)
    for r in rows:
        outcome = await debit(redis, script, r["op_id"], r["user_id"], r["amount"])
        ref = r["op_id"].split(":", 1)[1]
        if r["kind"] == "refund":
            await refunds.finish(pool, ref, outcome)
        else:
            await adjustments.finish(pool, ref, outcome)
    return len(rows)
