"""Test helpers: an in-process giftd on a random port, a WebSocket client, invariant checks."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import os
import socket
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
        from server.runner import GiftdServer, uvicorn_config

        self._app = create_app(self.settings, self.redis_url, self.database_url)
        config = uvicorn_config(self._app, "127.0.0.1", self.port)
        self._server = GiftdServer(config)
        self._server.capture_process_signals = False
        self._server.freeze_gc = False
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


class RawWs:
    """A WebSocket client that does only what the test tells it: frames by hand.

    It never answers pings by itself and can send what no polite client would
    (fragments, bad UTF-8, several frames in one write).
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 head: bytes) -> None:
        self.reader = reader
        self.writer = writer
        self.head = head  # the HTTP answer to the handshake, headers and body

    @property
    def status(self) -> int:
        return int(self.head.split(b" ", 2)[1])

    @classmethod
    async def connect(cls, server: RunningServer, token: str, *, path: str = "/ws",
                      rcvbuf: int | None = None, limit: int = 1 << 20) -> RawWs:
        s = socket.socket()
        if rcvbuf is not None:  # a small receive window makes a stalled reader stall fast
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.setblocking(False)
        await asyncio.get_running_loop().sock_connect(s, ("127.0.0.1", server.port))
        reader, writer = await asyncio.open_connection(sock=s, limit=limit)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write((f"GET {path}?token={token} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
                      "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                      f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                      ).encode())
        head = await reader.readuntil(b"\r\n\r\n")
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            head += await reader.readexactly(length)
        return cls(reader, writer, head)

    @staticmethod
    def frame(payload: bytes, opcode: int = 0x1, fin: bool = True) -> bytes:
        """One client frame (masked, as RFC 6455 requires of clients)."""
        mask = os.urandom(4)
        n = len(payload)
        head = bytes([(0x80 if fin else 0) | opcode])
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 1 << 16:
            head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
        else:
            head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
        return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))

    async def send_frames(self, *frames: bytes) -> None:
        self.writer.write(b"".join(frames))  # one write: they arrive together
        await self.writer.drain()

    async def send_json(self, msg: dict[str, Any]) -> None:
        await self.send_frames(self.frame(orjson.dumps(msg)))

    async def read_frame(self, timeout: float = 5.0) -> tuple[int, bytes]:
        """(opcode, payload) of the next server frame; EOF raises IncompleteReadError."""
        async def read() -> tuple[int, bytes]:
            b0, b1 = await self.reader.readexactly(2)
            n = b1 & 0x7F
            if n == 126:
                n = int.from_bytes(await self.reader.readexactly(2), "big")
            elif n == 127:
                n = int.from_bytes(await self.reader.readexactly(8), "big")
            return b0 & 0x0F, await self.reader.readexactly(n)
        return await asyncio.wait_for(read(), timeout)

    async def next_message(self, timeout: float = 5.0) -> dict[str, Any]:
        """The next text message, skipping control frames."""
        while True:
            op, payload = await self.read_frame(timeout)
            if op == 0x1:
                return dict(orjson.loads(payload))

    async def close_code(self, timeout: float = 5.0) -> int:
        """Read until the server's close frame; its code."""
        while True:
            op, payload = await self.read_frame(timeout)
            if op == 0x8:
                return int.from_bytes(payload[:2], "big")

    def abort(self) -> None:
        self.writer.transport.abort()


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
