"""`giftd serve` as a user runs it: embedded Valkey + Postgres, demo data, clean stops."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import psutil
import pytest
import websockets
from redis.asyncio import Redis

from server.embedded import free_port


async def wait_up(port: int, proc: subprocess.Popen[bytes]) -> None:
    async with httpx.AsyncClient() as http:
        for _ in range(600):
            assert proc.poll() is None, f"giftd serve exited {proc.returncode}"
            try:
                if (await http.get(f"http://127.0.0.1:{port}/health")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError("giftd serve did not come up")


def serve(var: Path, port: int, *extra: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    env["GIFTD_VAR_DIR"] = str(var)
    return subprocess.Popen([sys.executable, "-m", "server.cli", "serve", "--demo", "--port",
                             str(port), *extra], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)


def children(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


@pytest.fixture
def reaper() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a failing test must not leave behind, with their embedded servers."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            try:
                kids = psutil.Process(p.pid).children(recursive=True)
            except psutil.Error:
                kids = []
            p.kill()
            p.wait()
            for k in kids:
                with contextlib.suppress(psutil.Error):
                    k.kill()


async def test_serve_embedded_demo_restart_and_clean_stop(
        tmp_path: Path, reaper: list[subprocess.Popen[bytes]]) -> None:
    var = tmp_path / "var"
    os.chmod(tmp_path, 0o755)
    port = free_port()
    proc = serve(var, port)
    reaper.append(proc)
    await wait_up(port, proc)
    kids = children(proc.pid)
    names = {k.name() for k in kids}
    assert "valkey-server" in names and "postgres" in names
    run = orjson.loads((var / "run.json").read_bytes())
    r = Redis.from_url(run["redis_url"])
    conf = await r.config_get("append*")
    assert conf["appendonly"] == "yes" and conf["appendfsync"] == "always"  # the default mode
    # a second serve on the same data dir is refused, not a fight over the servers
    second = serve(var, free_port())
    reaper.append(second)
    assert second.wait(timeout=60) == 1
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
        page = await http.get("/")
        assert page.status_code == 200 and "<html" in page.text.lower()
        demo = (await http.get("/api/demo")).json()
        login = (await http.post("/api/login", json={"username": "ann",
                                                     "password": demo["password"]})).json()
        before = (await http.get("/api/me", headers={
            "authorization": f"Bearer {login['token']}"})).json()["balance"]
    async with websockets.connect(f"ws://127.0.0.1:{port}/ws?token={login['token']}") as ws:
        await ws.send(orjson.dumps({"type": "join", "room": "aurora"}).decode())
        assert orjson.loads(await ws.recv())["type"] == "joined"
        await ws.send(orjson.dumps({"type": "gift", "id": "persist-1", "room": "aurora",
                                    "gift": "heart", "count": 1}).decode())
        while True:
            msg = orjson.loads(await ws.recv())
            if msg["type"] == "ack":
                assert msg["outcome"] == "ok" and msg["balance"] == before - 10
                break
    await r.aclose()
    # SIGTERM: the server stops, then its embedded servers, and exits 0
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == 0, out
    assert f"http://127.0.0.1:{port}/" in out
    assert not [k for k in kids if k.is_running() and k.status() != psutil.STATUS_ZOMBIE]
    # restart on the same data: the balance and the flushed ledger row are still there
    port2 = free_port()
    proc = serve(var, port2)
    reaper.append(proc)
    await wait_up(port2, proc)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port2}") as http:
        login = (await http.post("/api/login", json={"username": "ann",
                                                     "password": demo["password"]})).json()
        hdr = {"authorization": f"Bearer {login['token']}"}
        assert (await http.get("/api/me", headers=hdr)).json()["balance"] == before - 10
        items = (await http.get("/api/me/transactions", headers=hdr)).json()["items"]
        assert [(i["gift"], i["status"]) for i in items] == [("heart", "flushed")]
    kids = children(proc.pid)
    proc.send_signal(signal.SIGINT)  # Ctrl-C stops cleanly too
    proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert not [k for k in kids if k.is_running() and k.status() != psutil.STATUS_ZOMBIE]
