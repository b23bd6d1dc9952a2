"""`giftd serve --workers N`: N gateway processes on one port, one room across them."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import asyncpg
import httpx
import psutil
from redis.asyncio import Redis

from server.embedded import free_port
from tests.support import SECRET, Client, make_room, make_user


async def test_workers_share_a_port_and_a_room(redis_url: str, database_url: str, redis: Redis,
                                               pool: asyncpg.Pool, tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "REDIS_URL": redis_url, "DATABASE_URL": database_url,
           "GIFTD_SECRET": SECRET, "GIFTD_VAR_DIR": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "server.cli", "serve", "--workers", "3",
                             "--port", str(port)], env=env, start_new_session=True)
    try:
        async with httpx.AsyncClient() as http:
            for _ in range(300):
                try:
                    if (await http.get(f"http://127.0.0.1:{port}/health")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
        workers = psutil.Process(proc.pid).children()
        assert len(workers) == 3
        room, _ = await make_room(pool, redis)
        ann = await make_user(pool, redis, coins=10_000)

        class Srv:  # what Client.connect needs
            ws_url = f"ws://127.0.0.1:{port}/ws"

        clients = [await Client.connect(Srv, ann) for _ in range(24)]  # type: ignore[arg-type]
        nodes = set()
        for c in clients:
            nodes.add((await c.join(room))["node"])
        assert len(nodes) >= 2, "the kernel spread connections over the workers"
        await asyncio.gather(*(c.gift(room, "heart", 1, cid=f"w{i}")
                               for i, c in enumerate(clients[:6])))
        for c in clients:  # every viewer, whatever its worker, sees all six
            await c.wait_for(lambda c: len(c.gifts) == 6)
            assert [g["seq"] for g in c.gifts] == sorted(g["seq"] for g in c.gifts)
        for c in clients:
            await c.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    assert not [w for w in workers if w.is_running() and w.status() != psutil.STATUS_ZOMBIE]
