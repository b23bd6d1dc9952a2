"""Helpers for the money-in tests: a server with the sandbox on, signed notifies, HTTP."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import orjson

from billing.channels import sandbox as sb
from server.auth import Principal
from tests.support import RunningServer, token_for

SANDBOX_KEY = "sandbox-test-key-0123456789"


def money_server(redis_url: str, database_url: str, **overrides: Any) -> RunningServer:
    opts: dict[str, Any] = {"sandbox_enabled": True, "sandbox_key": SANDBOX_KEY,
                            "sandbox_duplicate_pct": 0, "sandbox_notify_schedule_s": (0, 1, 2, 5)}
    opts.update(overrides)
    return RunningServer(redis_url, database_url, **opts)


def auth(p: Principal) -> dict[str, str]:
    return {"authorization": f"Bearer {token_for(p)}"}


def sandbox_notify(order_id: str, amount_fen: int, *, trade_no: str = "Strade1",
                   status: str = "PAID", ts: int | None = None,
                   key: str = SANDBOX_KEY) -> tuple[bytes, dict[str, str]]:
    body = sb.notify_body(trade_no, order_id, amount_fen, status)
    t = str(int(time.time()) if ts is None else ts)
    return body, {"content-type": "application/json", "x-sandbox-timestamp": t,
                  "x-sandbox-signature": sb.sign(key.encode(), t, body)}


async def create_order(http: httpx.AsyncClient, p: Principal, *, key: str,
                       channel: str = "sandbox", **body: Any) -> httpx.Response:
    if not body:
        body = {"pack_yuan": 6}
    return await http.post("/api/recharge/orders", headers={**auth(p), "idempotency-key": key},
                           content=orjson.dumps({"channel": channel, **body}))


async def balance(http: httpx.AsyncClient, p: Principal) -> int:
    r = await http.get("/api/me/balance", headers=auth(p))
    return int(r.json()["balance"])


async def wait_until(pred: Any, timeout: float = 10.0, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = await pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(every)
