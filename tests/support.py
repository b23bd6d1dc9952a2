"""Test helpers: an in-process giftd on a random port, a WebSocket client, invariant checks."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import asyncpg
import msgpack
import orjson
import uvicorn
import websockets
from redis.asyncio import Redis

from billing.credits import apply_pending, book_grant
from billing.flusher import Flusher
from gifts.scripts import Scripts
from server import keys
from server.auth import Principal, Role, issue_token
from server.codec import SUBPROTOCOL_MSGPACK
from server.embedded import free_port
from server.settings import Settings
from server.users import create_room, create_user

SECRET = "test-secret-not-for-production-0123456789"
_names = itertools.count()


def settings_for_tests(**overrides: Any) -> Settings:
    # Send rate limits are tested on their own; elsewhere tests send in bursts.
    # Merging cheap gifts is off unless a test turns it on (test_surge, test_merge).
    base = Settings(secret=SECRET, flusher_enabled=False, flush_claim_idle_ms=500,
                    merge_above_events=0,
                    send_rate_per_s=100_000, send_burst=100_000,
                    user_send_rate_per_s=100_000, user_send_burst=100_000)
    return replace(base, **overrides)


class RunningServer:
    """giftd's real app under uvicorn (websockets-sansio), in this process."""

    def __init__(self, redis_url: str, database_url: str, **overrides: Any) -> None:
        self.redis_url = redis_url
        self.database_url = database_url
        self.port = free_port()
        self.settings = settings_for_tests(port=self.port, **overrides)
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def ctx(self) -> Any:
        assert self._server is not None
        return self._app.state.ctx

    async def start(self) -> None:
        from server.app import create_app
        from server.cli import quiet_refused_handshakes
        from server.runner import GiftdServer, uvicorn_config

        quiet_refused_handshakes()
        self._app = create_app(self.settings, self.redis_url, self.database_url)
        config = uvicorn_config(self._app, "127.0.0.1", self.port)
        self._server = GiftdServer(config)
        self._server.capture_process_signals = False
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await asyncio.wait_for(self._task, 15)


@contextlib.asynccontextmanager
async def serving(redis_url: str, database_url: str, **overrides: Any
                  ) -> AsyncIterator[RunningServer]:
    """A RunningServer with settings overrides, stopped on exit."""
    srv = RunningServer(redis_url, database_url, **overrides)
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


async def make_user(pool: asyncpg.Pool, redis: Redis, *, coins: int = 0,
                    role: Role = Role.VIEWER, name: str = "") -> Principal:
    """A registered user with `coins` granted through the real credit path."""
    username = name or f"user{next(_names)}"
    async with pool.acquire() as conn:
        p = await create_user(conn, username=username, password="password123",
                              display_name=username.title(), role=role)
        if coins:
            await book_grant(conn, user_id=p.user_id, amount=coins, ref=f"test:{username}")
    if coins:
        scripts = Scripts()
        await apply_pending(pool, redis, scripts.credit)
    return p


async def make_room(pool: asyncpg.Pool, redis: Redis, room_id: str = "") -> tuple[str, Principal]:
    room_id = room_id or f"room{next(_names)}"
    streamer = await make_user(pool, redis, role=Role.STREAMER, name=f"s_{room_id}")
    async with pool.acquire() as conn:
        await create_room(conn, room_id=room_id, streamer_id=streamer.user_id,
                          title=f"{room_id} live")
    return room_id, streamer


def token_for(p: Principal, ttl_s: int = 3600) -> str:
    return issue_token(SECRET, p, ttl_s)


class Client:
    """A viewer's WebSocket: send messages, collect what arrives."""

    def __init__(self, ws: Any, msgpack_format: bool) -> None:
        self.ws = ws
        self.msgpack = msgpack_format
        self.received: list[dict[str, Any]] = []
        self.acks: dict[str, dict[str, Any]] = {}  # latest ack per id
        self.ack_log: list[dict[str, Any]] = []  # every ack, in arrival order
        self.errors: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []  # room events from ticks, in arrival order
        self.ticks: list[dict[str, Any]] = []
        self._new = asyncio.Condition()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, server: RunningServer, p: Principal, *, msgpack_format: bool = False,
                      **kw: Any) -> Client:
        protocols = [SUBPROTOCOL_MSGPACK] if msgpack_format else None
        ws = await websockets.connect(f"{server.ws_url}?token={token_for(p)}",
                                      subprotocols=protocols, max_size=2**24, **kw)
        return cls(ws, msgpack_format)

    async def _read(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in self.ws:
                msg = msgpack.unpackb(raw) if self.msgpack else orjson.loads(raw)
                self.received.append(msg)
                t = msg.get("type")
                if t == "ack":
                    self.acks[msg["id"]] = msg
                    self.ack_log.append(msg)
                elif t == "error":
                    self.errors.append(msg)
                elif t == "tick":
                    self.ticks.append(msg)
                    self.events.extend(msg["events"])
                async with self._new:
                    self._new.notify_all()

    @property
    def gifts(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == "gift"]

    def seqs_seen(self) -> list[int]:
        """Every seq delivered, merged events expanded into their members' seqs."""
        out: list[int] = []
        for e in self.events:
            out.extend(e.get("seqs") or [e["seq"]])
        return out

    def gift_ids_seen(self) -> list[str]:
        """Every gift event id delivered, merged events expanded."""
        out: list[str] = []
        for e in self.gifts:
            out.extend(e.get("event_ids") or [e["event_id"]])
        return out

    async def send(self, msg: dict[str, Any]) -> None:
        await self.ws.send(msgpack.packb(msg) if self.msgpack else orjson.dumps(msg).decode())

    async def send_raw(self, data: bytes | str) -> None:
        await self.ws.send(data)

    async def wait_for(self, pred: Any, timeout: float = 5.0) -> Any:
        """Wait until pred(self) is truthy; returns its value."""
        async def loop() -> Any:
            async with self._new:
                while True:
                    v = pred(self)
                    if v:
                        return v
                    await self._new.wait()
        return await asyncio.wait_for(loop(), timeout)

    async def join(self, room: str) -> dict[str, Any]:
        n = len(self.received)
        await self.send({"type": "join", "room": room})
        return await self.wait_for(lambda c: next(
            (m for m in c.received[n:] if m["type"] in ("joined", "error")), None))

    async def gift(self, room: str, gift: str, count: int = 1, cid: str | None = None
                   ) -> dict[str, Any]:
        cid = cid or f"g{next(_names)}"
        await self.send({"type": "gift", "id": cid, "room": room, "gift": gift, "count": count})
        return await self.wait_for(
            lambda c: c.acks.get(cid) or next((e for e in c.errors if e.get("id") == cid), None))

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


async def flush_all(redis: Redis, pool: asyncpg.Pool) -> int:
    f = Flusher(redis, pool, consumer="test-flusher", claim_idle_ms=0)
    return await f.run_until_drained()


async def check_invariants(redis: Redis, pool: asyncpg.Pool) -> dict[str, int]:
    """DESIGN.md's invariants, to the coin. Returns the totals it compared."""
    # Every journal entry sums to zero.
    bad = await pool.fetchval(
        "SELECT count(*) FROM (SELECT entry_id FROM postings GROUP BY entry_id "
        "HAVING sum(amount) <> 0) x")
    assert bad == 0, f"{bad} journal entries do not sum to zero"
    # Never negative: wallets in Redis, wallets and creator accounts in the ledger.
    wallets: dict[int, int] = {}
    async for key in redis.scan_iter(match=keys.PREFIX + "bal:*", count=1000):
        uid = int(key.decode().rsplit(":", 1)[1])
        wallets[uid] = int(await redis.get(key) or 0)
    assert all(v >= 0 for v in wallets.values()), wallets
    neg = await pool.fetchval(
        "SELECT count(*) FROM account_balances WHERE balance < 0 "
        "AND (account LIKE 'wallet:%' OR account LIKE 'creator_pending:%' "
        "OR account LIKE 'creator_earnings:%' OR account LIKE 'creator_frozen:%')")
    assert neg == 0
    # Redis wallet = ledger wallet - unflushed debits of that wallet.
    unflushed: dict[int, int] = {}
    for _, fields in await redis.xrange(keys.LEDGER_STREAM):
        uid = int(fields[b"s"])
        unflushed[uid] = unflushed.get(uid, 0) + int(fields[b"a"])
    ledger = {int(r["account"].split(":")[1]): r["balance"] for r in await pool.fetch(
        "SELECT account, balance FROM account_balances WHERE account LIKE 'wallet:%'")}
    pending_credits = {r["user_id"]: r["s"] for r in await pool.fetch(
        "SELECT user_id, sum(amount)::bigint AS s FROM credit_outbox WHERE applied_at IS NULL "
        "GROUP BY user_id")}
    # Refund/adjustment debits taken from Redis but not yet journaled (a crash window).
    pending_debits: dict[int, int] = {}
    for r in await pool.fetch(
            "SELECT op_id, user_id, amount FROM wallet_debits WHERE status = 'pending'"):
        if await redis.exists(keys.debit_marker(r["op_id"])):
            pending_debits[r["user_id"]] = pending_debits.get(r["user_id"], 0) + r["amount"]
    for uid in set(wallets) | set(ledger):
        expect = (ledger.get(uid, 0) - unflushed.get(uid, 0) - pending_credits.get(uid, 0)
                  - pending_debits.get(uid, 0))
        assert wallets.get(uid, 0) == expect, (uid, wallets.get(uid), ledger.get(uid),
                                               unflushed.get(uid))
    # Conservation: wallets + unflushed debits + creator earnings (unsettled, settled)
    # + platform revenue + pending (frozen) and paid withdrawals = coins that came in
    # (recharges + promotions).
    totals = {r["kind"]: r["s"] for r in await pool.fetch(
        "SELECT a.kind, coalesce(sum(b.balance), 0)::bigint AS s FROM accounts a "
        "LEFT JOIN account_balances b ON b.account = a.code GROUP BY a.kind")}
    wallets_total = sum(wallets.values())
    unflushed_total = sum(unflushed.values())
    pending_total = sum(pending_credits.values())
    # Coin sources run negative: promotion (grants, bonuses), channel_clearing (recharges);
    # refunds and adjustments are their contra accounts (coins given back / corrected).
    came_in = -(totals.get("promotion", 0) + totals.get("channel_clearing", 0)
                + totals.get("refunds", 0) + totals.get("adjustments", 0))
    held = (wallets_total + pending_total + unflushed_total + totals.get("creator_pending", 0)
            + totals.get("platform_revenue", 0) + sum(pending_debits.values())
            + totals.get("creator_earnings", 0) + totals.get("creator_frozen", 0)
            + totals.get("withdrawals_paid", 0))
    assert held == came_in, {"held": held, "came_in": came_in, **totals}
    return {"came_in": came_in, "wallets": wallets_total, "unflushed": unflushed_total}
