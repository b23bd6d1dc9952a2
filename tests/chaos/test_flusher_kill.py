"""kill -9 the standalone flusher mid-batch, again and again: no ledger row lost or doubled."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import asyncpg
import pytest
from redis.asyncio import Redis

from server import keys
from tests.integration.test_flusher import send_roses
from tests.support import check_invariants

pytestmark = pytest.mark.chaos

GIFTS = 20_000


def start_flusher(redis_url: str, database_url: str, consumer: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "REDIS_URL": redis_url, "DATABASE_URL": database_url,
           "GIFTD_FLUSH_CLAIM_IDLE_MS": "300"}
    return subprocess.Popen([sys.executable, "-m", "server.cli", "flush", "--consumer", consumer,
                             "--batch", "500"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


@pytest.mark.parametrize("same_consumer", [True, False], ids=["restart", "other-consumer"])
async def test_kill_flusher_mid_batch(redis_url: str, database_url: str, redis: Redis,
                                      pool: asyncpg.Pool, same_consumer: bool) -> None:
    _, ids = await send_roses(redis, pool, GIFTS)
    kills = 0
    for round_no in range(4):
        consumer = "c0" if same_consumer else f"c{round_no}"
        proc = start_flusher(redis_url, database_url, consumer)
        # let it get going, then kill it at a point that lands inside some batch
        target = (round_no + 1) * GIFTS // 6
        for _ in range(600):
            if await pool.fetchval("SELECT count(*) FROM gift_events") >= target:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.003 * round_no)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
    assert kills == 4
    flushed = await pool.fetchval("SELECT count(*) FROM gift_events")
    assert 0 < flushed < GIFTS, "the kills should have landed mid-stream"
    # a last flusher, left alone, finishes the work
    proc = start_flusher(redis_url, database_url, "c0" if same_consumer else "final")
    try:
        for _ in range(3000):
            if await redis.xlen(keys.LEDGER_STREAM) == 0:
                break
            await asyncio.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    rows = await pool.fetch("SELECT event_id FROM gift_events")
    assert len(rows) == GIFTS
    assert {r["event_id"] for r in rows} == set(ids)
    assert await pool.fetchval("SELECT count(*) FROM journal_entries WHERE kind = 'gift'") == GIFTS
    await check_invariants(redis, pool)
