"""Acked means durable: kill -9 Valkey right after acks, restart it, every acked gift is there.

With appendfsync always, Valkey writes and fsyncs the AOF before it answers,
so a gift whose ack the client saw is in the AOF; a restart replays it. (A
process kill does not drop the page cache, so this proves the AOF path, not
the fsync itself; see README, Durability.)
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from redis.asyncio import Redis

from gifts.catalog import Gift
from gifts.scripts import Scripts
from gifts.send_rule import Outcome
from gifts.sender import GiftSender, SendRequest
from server import keys
from server.embedded import EmbeddedValkey
from tests.support import settings_for_tests

pytestmark = pytest.mark.chaos

ROSE = Gift("rose", "Rose", 1, "rose_float")


async def test_acked_gifts_survive_kill_9(tmp_path: Path) -> None:
    v = EmbeddedValkey(tmp_path / "valkey", appendfsync="always")
    v.start()
    try:
        r = Redis.from_url(v.url)
        await r.set(keys.balance(1), 1_000_000)
        sender = GiftSender(r, Scripts().send_gifts, settings_for_tests(send_batch_max=64))
        sender.start()
        acked: list[str] = []

        async def gifter(k: int) -> None:
            i = 0
            while True:
                res = await sender.send(SendRequest(1, "Ann", f"k{k}-{i}", "r1", 9, ROSE, 1))
                assert res.outcome is Outcome.OK
                acked.append(res.event_id)
                i += 1

        tasks = [asyncio.create_task(gifter(k)) for k in range(8)]
        while len(acked) < 3000:
            await asyncio.sleep(0.01)
        v.kill()  # mid-surge, sends in flight
        await asyncio.gather(*tasks, return_exceptions=True)
        await sender.stop()
        await r.aclose()
        seen = list(acked)

        v.start()  # same dir, same port: replays the AOF
        r = Redis.from_url(v.url)
        ledger = {eid.decode() for eid, _ in await r.xrange(keys.LEDGER_STREAM)}
        assert set(seen) <= ledger, f"{len(set(seen) - ledger)} acked gifts lost"
        balance = int(await r.get(keys.balance(1)))
        # the balance matches the ledger exactly: every write of a gift or none of it
        assert balance == 1_000_000 - len(ledger)
        assert int(await r.get(keys.room_seq("r1"))) == len(ledger)
        await r.aclose()
    finally:
        v.stop()
