"""Two giftd processes on one Redis: a gift sent on one reaches viewers on the other."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from redis.asyncio import Redis

from server.embedded import free_port
from tests.support import SECRET, Client, RunningServer, make_room, make_user


class ServeProcess:
    """`giftd serve` as a real child process, on the given Redis and Postgres."""

    def __init__(self, redis_url: str, database_url: str, var_dir: Path) -> None:
        self.port = free_port()
        self.env = {**os.environ, "REDIS_URL": redis_url, "DATABASE_URL": database_url,
                    "GIFTD_SECRET": SECRET, "GIFTD_VAR_DIR": str(var_dir),
                    "GIFTD_FLUSHER": "0"}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    async def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "serve", "--port", str(self.port)],
            env=self.env, start_new_session=True)
        async with httpx.AsyncClient() as http:
            for _ in range(300):
                if self.proc.poll() is not None:
                    raise RuntimeError(f"giftd serve exited {self.proc.returncode}")
                try:
                    if (await http.get(f"http://127.0.0.1:{self.port}/health")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
        raise RuntimeError("giftd serve did not come up")

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=20)


@pytest.fixture
async def second(redis_url: str, database_url: str, tmp_path: Path) -> AsyncIterator[ServeProcess]:
    p = ServeProcess(redis_url, database_url, tmp_path)
    await p.start()
    yield p
    assert p.stop() == 0  # SIGTERM is a clean stop


async def test_gift_crosses_processes(server: RunningServer, second: ServeProcess,
                                      redis: Redis, pool: asyncpg.Pool) -> None:
    room, _ = await make_room(pool, redis)
    ann = await make_user(pool, redis, coins=100_000)
    ben = await make_user(pool, redis, coins=100_000)
    here = await Client.connect(server, ann)
    there = await Client.connect(second, ben)  # type: ignore[arg-type]
    await here.join(room)
    await there.join(room)
    # both directions, a burst each way
    sends = [here.gift(room, "heart", 1, cid=f"a{i}") for i in range(20)]
    sends += [there.gift(room, "rose", 2, cid=f"b{i}") for i in range(20)]
    acks = await asyncio.gather(*sends)
    assert {a["outcome"] for a in acks} == {"ok"}
    for c in (here, there):
        await c.wait_for(lambda c: len(c.events) >= 40, timeout=10)
        assert [e["seq"] for e in c.events] == list(range(1, 41))
    assert [e["event_id"] for e in here.events] == [e["event_id"] for e in there.events]
    # the ranking both sides show is the same
    def board(c: Client) -> dict[int, int]:
        out: dict[int, int] = {}
        for t in c.ticks:
            for d in t.get("rank", []):
                if d.get("id") is not None:
                    out[d["id"]] = d["score"]
        return out
    assert board(here) == board(there) == {ann.user_id: 200, ben.user_id: 40}
    await here.close()
    await there.close()
