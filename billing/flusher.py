"""The write-behind flusher: Redis stream of debits -> Postgres ledger, exactly once.

Loop: read a batch with the consumer group -> one Postgres transaction (COPY
into a temp table, then INSERT ... ON CONFLICT (event_id) DO NOTHING into
gift_events and the journal) -> commit -> XACK + XDEL. A crash anywhere
before the XACK leaves the entries pending; they are read again (our own
pending list first on restart, XAUTOCLAIM for a dead consumer's), and the
ON CONFLICT makes the second write a no-op. Unacknowledged entries are never
trimmed: XDEL only follows a commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import asyncpg
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from billing.db import Db
from server import keys

log = logging.getLogger("giftd.flusher")

# Entries that cannot be parsed go here, never silently dropped.
DEAD_LETTER_STREAM = keys.PREFIX + "ledger:dead"


@dataclass(frozen=True, slots=True)
class GiftRow:
    event_id: str
    client_id: str
    sender_id: int
    streamer_id: int
    room_id: str
    gift_code: str
    count: int
    unit_price_coins: int
    amount_coins: int
    created_at: datetime

    def as_tuple(self) -> tuple[object, ...]:
        return (self.event_id, self.client_id, self.sender_id, self.streamer_id, self.room_id,
                self.gift_code, self.count, self.unit_price_coins, self.amount_coins,
                self.created_at)


COLUMNS = ("event_id", "client_id", "sender_id", "streamer_id", "room_id", "gift_code", "count",
           "unit_price_coins", "amount_coins", "created_at")


def parse_entry(entry_id: bytes | str, fields: dict[bytes, bytes]) -> GiftRow:
    """One stream entry -> a row. Raises ValueError on anything malformed."""
    eid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    try:
        f = {k.decode(): v.decode() for k, v in fields.items()}
        if f.get("k") != "gift":
            raise ValueError(f"unknown ledger kind {f.get('k')!r}")
        row = GiftRow(
            event_id=eid,
            client_id=f["c"],
            sender_id=int(f["s"]),
            streamer_id=int(f["st"]),
            room_id=f["r"],
            gift_code=f["g"],
            count=int(f["n"]),
            unit_price_coins=int(f["u"]),
            amount_coins=int(f["a"]),
            created_at=datetime.fromtimestamp(int(f["t"]) / 1000, UTC),
        )
    except (KeyError, UnicodeDecodeError) as exc:
        raise ValueError(f"malformed ledger entry {eid}: {exc!r}") from exc
    if row.count <= 0 or row.amount_coins != row.count * row.unit_price_coins:
        raise ValueError(f"inconsistent ledger entry {eid}")
    return row


# One statement: new gift events -> their journal entries -> two postings each.
# ON CONFLICT makes a re-delivered event a no-op all the way down.
_WRITE_SQL = """
WITH new_events AS (
    INSERT INTO gift_events (event_id, client_id, sender_id, streamer_id, room_id, gift_code,
                             count, unit_price_coins, amount_coins, created_at)
    SELECT event_id, client_id, sender_id, streamer_id, room_id, gift_code,
           count, unit_price_coins, amount_coins, created_at
      FROM flush_batch
    ON CONFLICT (event_id) DO NOTHING
    RETURNING event_id, sender_id, streamer_id, amount_coins, created_at
), entries AS (
    INSERT INTO journal_entries (kind, ref, created_at)
    SELECT 'gift', event_id, created_at FROM new_events
    RETURNING id, ref
)
INSERT INTO postings (entry_id, account, amount)
SELECT e.id, x.account, x.amount
  FROM entries e
  JOIN new_events n ON n.event_id = e.ref
 CROSS JOIN LATERAL (VALUES ('wallet:' || n.sender_id, -n.amount_coins),
                            ('creator_pending:' || n.streamer_id, n.amount_coins))
       AS x(account, amount)
"""

_ACCOUNTS_SQL = """
INSERT INTO accounts (code, kind, owner_id)
SELECT DISTINCT x.code, x.kind, x.owner
  FROM flush_batch b
 CROSS JOIN LATERAL (VALUES ('wallet:' || b.sender_id, 'wallet', b.sender_id),
                            ('creator_pending:' || b.streamer_id, 'creator_pending', b.streamer_id))
       AS x(code, kind, owner)
ON CONFLICT (code) DO NOTHING
"""


async def write_batch(conn: Db, rows: list[GiftRow]) -> int:
    """Write rows in one transaction; returns how many were new. Idempotent."""
    async with conn.transaction():
        await conn.execute(
            """CREATE TEMP TABLE IF NOT EXISTS flush_batch
                   (LIKE gift_events INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"""
        )
        await conn.copy_records_to_table("flush_batch", records=[r.as_tuple() for r in rows],
                                         columns=COLUMNS)
        await conn.execute(_ACCOUNTS_SQL)
        status = await conn.execute(_WRITE_SQL)
    # status is 'INSERT 0 <postings>'; two postings per new event
    return int(status.split()[-1]) // 2


class Flusher:
    """Runs the loop; one per process is enough, several share the work."""

    def __init__(self, redis: Redis, pool: asyncpg.Pool, *, consumer: str, batch_max: int = 1000,
                 block_ms: int = 200, claim_idle_ms: int = 30_000, linger_ms: int = 0) -> None:
        self.redis = redis
        self.pool = pool
        self.consumer = consumer
        self.batch_max = batch_max  # stream entries per Postgres transaction
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms
        # After a batch smaller than batch_max, wait this long before reading
        # again, so that moderate load makes few large transactions instead of
        # one small one per read: a 20-row transaction cost Postgres about as
        # much as a 1,000-row one, and at half the peak Postgres took more CPU
        # than at the peak (loadtest/RESULTS.md). Adds at most this to the lag.
        self.linger_ms = linger_ms
        self.flushed = 0  # new rows written by this flusher
        self.batches = 0
        self._stop = asyncio.Event()

    async def ensure_group(self) -> None:
        with contextlib.suppress(ResponseError):  # BUSYGROUP: it exists
            await self.redis.xgroup_create(keys.LEDGER_STREAM, keys.FLUSHER_GROUP, id="0",
                                           mkstream=True)

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        await self.ensure_group()
        # Our own pending entries first: a restart with the same consumer name
        # re-reads what the previous run read but did not acknowledge.
        while not self._stop.is_set():
            n = await self._read_and_flush("0")
            if n == 0:
                break
        last_claim = 0.0
        while not self._stop.is_set():
            try:
                if time.monotonic() - last_claim > self.claim_idle_ms / 2000:
                    last_claim = time.monotonic()
                    await self._claim_abandoned()
                n = await self._read_and_flush(">")
                if 0 < n < self.batch_max and self.linger_ms > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), self.linger_ms / 1000)
            except (OSError, asyncpg.PostgresError, ConnectionError) as exc:
                log.warning("flusher: %r; retrying in 1 s", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), 1.0)

    async def run_until_drained(self, idle_polls: int = 2) -> int:
        """Flush until the stream is empty (tests, `giftd flush --once`); returns rows written."""
        await self.ensure_group()
        before = self.flushed
        await self._read_and_flush("0")
        await self._claim_abandoned()
        quiet = 0
        while quiet < idle_polls:
            n = await self._read_and_flush(">", block=False)
            n += await self._read_and_flush("0")
            quiet = quiet + 1 if n == 0 else 0
        return self.flushed - before

    async def _claim_abandoned(self) -> None:
        """Take over entries a dead consumer read but never acknowledged."""
        start = "0-0"
        while True:
            res = await self.redis.xautoclaim(keys.LEDGER_STREAM, keys.FLUSHER_GROUP,
                                              self.consumer, self.claim_idle_ms, start_id=start,
                                              count=self.batch_max)
            next_start, claimed = res[0], res[1]
            if claimed:
                log.info("flusher %s claimed %d abandoned entries", self.consumer, len(claimed))
                await self._flush_entries(claimed)
            nxt = next_start.decode() if isinstance(next_start, bytes) else next_start
            if nxt == "0-0" or not claimed:
                return
            start = nxt

    async def _read_and_flush(self, from_id: str, block: bool = True) -> int:
        resp = await self.redis.xreadgroup(
            keys.FLUSHER_GROUP, self.consumer, {keys.LEDGER_STREAM: from_id},
            count=self.batch_max, block=(self.block_ms if block and from_id == ">" else None),
        )
        if not resp:
            return 0
        entries: list[tuple[bytes, dict[bytes, bytes]]] = cast(Any, resp)[0][1]
        return await self._flush_entries(entries)

    async def _flush_entries(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> int:
        gone = [eid for eid, f in entries if not f]  # deleted entries come back empty
        if gone:
            await self._ack(gone)
        entries = [(eid, f) for eid, f in entries if f]
        if not entries:
            return 0
        rows: list[GiftRow] = []
        ids: list[bytes] = []
        for eid, fields in entries:
            try:
                rows.append(parse_entry(eid, fields))
                ids.append(eid)
            except ValueError as exc:
                log.error("flusher: %s; moved to %s", exc, DEAD_LETTER_STREAM)
                dead: dict[Any, Any] = {**fields, b"_id": eid}
                await self.redis.xadd(DEAD_LETTER_STREAM, dead)
                await self._ack([eid])
        if rows:
            async with self.pool.acquire() as conn:
                new = await write_batch(conn, rows)
            self.flushed += new
            self.batches += 1
            await self._ack(ids)
        return len(entries)

    async def _ack(self, ids: list[bytes]) -> None:
        # Only after the commit above: ack, then delete so XLEN = unflushed.
        pipe = self.redis.pipeline(transaction=True)
        pipe.xack(keys.LEDGER_STREAM, keys.FLUSHER_GROUP, *ids)
        pipe.xdel(keys.LEDGER_STREAM, *ids)
        await pipe.execute()
