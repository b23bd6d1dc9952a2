"""The WebSocket gateway, /ws: authorize the handshake, then join and send gifts.

Everything is refused before any room state is touched when the token or the
Origin is wrong. Each inbound frame is size-capped, decoded and validated
(server/protocol.py); a bad one gets an `error` with a stable code and never
reaches Redis. Sends run concurrently per connection (at most
`SENDS_IN_FLIGHT_MAX` at once), so a client may pipeline; acks carry the id.
The socket (server/websocket.py) calls a `Session` per message; a watching
viewer has no task of its own.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import orjson
from websockets.datastructures import Headers

from gifts.catalog import Gift
from gifts.send_rule import Outcome
from gifts.sender import Overloaded, SendRequest
from rooms.board_feed import BOARD_SUBSCRIPTIONS_PER_CONN_MAX
from rooms.bus import seq_of
from rooms.conn import CLOSE_JOIN_TIMEOUT, Conn
from rooms.resume import ResumePlan, plan_resume
from server import keys
from server.auth import AuthError, Principal, Role, verify_token
from server.protocol import (
    CUSTOM_TIP,
    Join,
    Ping,
    ProtocolError,
    SendGift,
    Subscribe,
    parse,
)
from server.ratelimit import TokenBucket, admit

if TYPE_CHECKING:
    from server.context import Ctx

log = logging.getLogger("giftd.gateway")

RESUME_ATTEMPTS = 3  # history read vs. broadcast race: re-read at most this often
SENDS_IN_FLIGHT_MAX = 64  # per connection; later messages wait until one finishes
MESSAGES_WAITING_MAX = 64  # per connection, behind a join or full sends; then we stop reading


def origin_allowed(origin: str | None, host_header: str | None,
                   allowed: tuple[str, ...]) -> bool:
    """Browsers always send Origin; other clients (load testers, SDKs) may not."""
    if origin is None:
        return True
    if allowed:
        return origin in allowed or "*" in allowed
    # Default: the page must come from this very server.
    return host_header is not None and origin in (f"http://{host_header}",
                                                  f"https://{host_header}")


class Refused(Exception):
    """A handshake we answer with an HTTP error instead of 101."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _one(headers: Headers, name: str) -> str | None:
    """A header that may appear at most once (a second Origin or token is refused)."""
    values = headers.get_all(name)
    if len(values) > 1:
        raise Refused(400, "bad_request", f"the {name} header appears more than once")
    return values[0] if values else None


def _token_of(headers: Headers, query: str) -> str:
    auth = _one(headers, "authorization") or ""
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    tokens = parse_qs(query).get("token") or [""]
    if len(tokens) > 1:
        raise Refused(400, "bad_request", "the token parameter appears more than once")
    return tokens[0]


def authorize(ctx: Ctx, headers: Headers, query: str) -> Principal:
    """Origin and token, checked before any room state exists for this socket."""
    if not origin_allowed(_one(headers, "origin"), _one(headers, "host"),
                          ctx.settings.allowed_origins):
        raise Refused(403, "origin_not_allowed", "origin not allowed")
    try:
        return verify_token(ctx.secret, _token_of(headers, query))
    except AuthError as exc:
        raise Refused(401, exc.code, str(exc)) from None


def needs_async_check(principal: Principal) -> bool:
    return principal.role is Role.OVERLAY


async def check_async(ctx: Ctx, principal: Principal) -> None:
    """An overlay token must be of the streamer's current overlay version (revocation)."""
    try:
        current = int(await ctx.redis.get(keys.overlay_version(principal.user_id)) or 0)
    except Exception as exc:  # Redis away during the check
        log.warning("handshake check failed: %r", exc)
        raise Refused(503, "unavailable", "try again shortly") from None
    if principal.overlay_version != current:
        raise Refused(401, "token_revoked", "this overlay token was revoked")


_running: set[asyncio.Task[None]] = set()  # sends, joins, leaves, overlay handshakes


def spawn(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, None]
           ) -> asyncio.Task[None]:
    # The loop is passed in, not looked up: on Python 3.11 every
    # asyncio.get_running_loop() is a getpid() system call (7 % of an ingress
    # process's CPU in a py-spy --native profile, counting redis-py's calls).
    task = loop.create_task(coro)
    _running.add(task)
    task.add_done_callback(_running.discard)
    return task


class Session:
    """One connection's conversation, driven by callbacks from its socket.

    Messages are handled in arrival order. A `join` or `subscribe` runs as a
    task and later messages wait behind it (a `gift` right after a `join` must
    see the membership); sends run concurrently, at most `SENDS_IN_FLIGHT_MAX`
    at once. Messages waiting are bounded by `MESSAGES_WAITING_MAX`: past it
    the socket stops being read, so TCP pushes back on the client.
    """

    __slots__ = ("backlog", "bucket", "busy", "conn", "ctx", "gone", "in_flight", "joined_once",
                 "opened_s", "user_bucket")

    def __init__(self, ctx: Ctx, conn: Conn) -> None:
        self.ctx = ctx
        self.conn = conn
        self.opened_s = time.monotonic()
        self.joined_once = False
        self.busy = False
        self.gone = False
        self.in_flight = 0
        self.backlog: deque[bytes | str] | None = None  # made when first needed
        # made on the first send: most connections only watch (memory per viewer)
        self.bucket: TokenBucket | None = None
        self.user_bucket: TokenBucket | None = None
        ctx.connections[conn.id] = conn
        ctx.unjoined[conn.id] = self
        if conn.principal.role is Role.OVERLAY:
            ctx.overlays.setdefault(conn.principal.user_id, {})[conn.id] = conn
        ctx.metrics.connections.inc()

    @property
    def principal(self) -> Principal:
        return self.conn.principal

    # --- from the socket ---------------------------------------------------------
    def on_message(self, data: bytes | str) -> None:
        if self.busy or self.backlog or self.in_flight >= SENDS_IN_FLIGHT_MAX:
            if self.backlog is None:
                self.backlog = deque()
            self.backlog.append(data)
            if len(self.backlog) >= MESSAGES_WAITING_MAX:
                self.conn.sock.pause_reading()
            return
        self._handle(data)

    def on_close(self) -> None:
        ctx = self.ctx
        conn = self.conn
        self.gone = True
        self.backlog = None
        ctx.connections.pop(conn.id, None)
        ctx.unjoined.pop(conn.id, None)
        ctx.board_feed.drop(conn)
        if conn.principal.role is Role.OVERLAY:
            ctx.overlays.get(conn.principal.user_id, {}).pop(conn.id, None)
        ctx.metrics.connections.dec()
        if not self.busy and conn.room is not None:  # else the running join leaves after it
            spawn(ctx.loop, self.leave())

    def join_timed_out(self) -> None:
        self.ctx.unjoined.pop(self.conn.id, None)
        self.conn.close(CLOSE_JOIN_TIMEOUT, "join a room first")

    # --- handling, in order --------------------------------------------------------
    def _drain(self) -> None:
        backlog = self.backlog
        while backlog and not self.busy and self.in_flight < SENDS_IN_FLIGHT_MAX \
                and not self.gone:
            self._handle(backlog.popleft())
        if backlog is not None and len(backlog) < MESSAGES_WAITING_MAX and not self.gone:
            self.conn.sock.resume_reading()

    def _handle(self, data: bytes | str) -> None:
        ctx = self.ctx
        try:
            parsed = parse(data, self.conn.fmt, ctx.limits)
            if isinstance(parsed, SendGift):
                self._start_send(parsed)
            elif isinstance(parsed, Join):
                self._run_in_order(self.join(parsed))
            elif isinstance(parsed, Subscribe):
                self._run_in_order(self.subscribe(parsed))
            elif isinstance(parsed, Ping):
                self.conn.send({"type": "pong", "nonce": parsed.nonce})
        except ProtocolError as exc:
            ctx.metrics.errors.labels(exc.code).inc()
            self.conn.send(exc.as_message())
        except Exception:  # a bug of ours: answer, log, and keep the socket and its order
            log.exception("handling a message failed")
            ctx.metrics.errors.labels("internal_error").inc()
            self.conn.send({"type": "error", "code": "internal_error",
                            "message": "the server could not handle this message"})

    def _start_send(self, msg: SendGift) -> None:
        if self.principal.role is Role.OVERLAY:
            raise ProtocolError("read_only", "an overlay token cannot send gifts", msg.id)
        # Membership is decided now, in message order, not when the send task
        # gets to run (a `join` may follow right behind).
        if self.conn.room != msg.room:
            raise ProtocolError("not_in_room", "join the room before sending to it", msg.id)
        now = time.monotonic()
        s = self.ctx.settings
        if self.bucket is None:
            self.bucket = TokenBucket(s.send_rate_per_s, s.send_burst, now)
        if self.user_bucket is None:
            self.user_bucket = self.ctx.user_buckets.get(self.principal.user_id, now)
        wait_s = admit(self.bucket, self.user_bucket, now)
        if wait_s:
            exc = ProtocolError("rate_limited", "too many sends; slow down", msg.id)
            self.ctx.metrics.errors.labels(exc.code).inc()
            self.conn.send({**exc.as_message(), "retry_after_ms": math.ceil(wait_s * 1000)})
            return
        self.in_flight += 1
        spawn(self.ctx.loop, self.send_gift(msg)).add_done_callback(self._send_done)

    def _send_done(self, task: asyncio.Task[None]) -> None:
        self.in_flight -= 1
        if self.backlog:
            self._drain()

    def _run_in_order(self, step: Coroutine[Any, Any, None]) -> None:
        self.busy = True
        spawn(self.ctx.loop, self._in_order(step))

    async def _in_order(self, step: Coroutine[Any, Any, None]) -> None:
        try:
            await step
            self._joined()
        except ProtocolError as exc:
            self.ctx.metrics.errors.labels(exc.code).inc()
            self.conn.send(exc.as_message())
        except Exception:  # e.g. Postgres away while looking the room up
            log.exception("session step failed")
            self.ctx.metrics.errors.labels("unavailable").inc()
            self.conn.send({"type": "error", "code": "unavailable",
                            "message": "the server could not do this just now; retry"})
        finally:
            self.busy = False
        if self.gone:  # the socket closed while we were joining or subscribing
            self.ctx.board_feed.drop(self.conn)
            await self.leave()
        elif self.backlog:
            self._drain()

    def _joined(self) -> None:
        if not self.joined_once:
            self.joined_once = True
            self.ctx.unjoined.pop(self.conn.id, None)

    async def join(self, msg: Join) -> None:
        ctx = self.ctx
        room_info = await ctx.rooms.get(msg.room)
        if room_info is None:
            raise ProtocolError("unknown_room", "no such room")
        if self.principal.role is Role.OVERLAY and room_info.streamer_id != self.principal.user_id:
            raise ProtocolError("out_of_scope", "this overlay token is for another streamer")
        await self.leave()
        replay: list[Any] | None = None
        try:
            balance = await ctx.redis.get(keys.balance(self.principal.user_id))
            pk = await ctx.battles.of_room(room_info.id)  # for the score bar; events keep it fresh
            for _ in range(RESUME_ATTEMPTS):
                history = (await ctx.bus.history_since(room_info.id, msg.since + 1)
                           if msg.since is not None else [])
                room = await ctx.bus.open_room(room_info.id, room_info.streamer_id)
                if msg.since is None:
                    break
                plan = plan_resume(msg.since, room.broadcast_seq,
                                   [seq_of(raw) for raw in history])
                if plan is not ResumePlan.RETRY:
                    break
        except Exception as exc:
            log.warning("join %s failed: %r", msg.room, exc)
            raise ProtocolError("unavailable", "the room could not be opened; retry") from None
        # No await from here to the `joined` write: the snapshot is the room's
        # broadcast state at the instant we become a member, so our first tick
        # holds exactly the events after it.
        kind = "joined"
        if msg.since is not None:
            if plan is ResumePlan.REPLAY:
                replay = [orjson.loads(raw) for raw in history
                          if seq_of(raw) <= room.broadcast_seq]
            else:  # too old (or from another life of the room): start afresh
                kind = "resync"
        ctx.hub.add(room, self.conn)
        snap = ctx.hub.snapshot(room)
        if replay is not None:
            snap["replay"] = replay
        snap["pk"] = pk
        snap["node"] = ctx.settings.node_id
        self.conn.send({
            "type": kind,
            "room": room_info.id,
            "title": room_info.title,
            "streamer": {"id": room_info.streamer_id, "name": room_info.streamer_name},
            "you": {"id": self.principal.user_id, "name": self.principal.name,
                    "role": self.principal.role.value},
            "balance": int(balance or 0),
            **snap,
        })

    async def subscribe(self, msg: Subscribe) -> None:
        p = self.principal
        if p.role is Role.OVERLAY and msg.streamer != p.user_id:
            raise ProtocolError("out_of_scope", "this overlay token is for another streamer")
        feed = self.ctx.board_feed
        if feed.count_of(self.conn) >= BOARD_SUBSCRIPTIONS_PER_CONN_MAX:
            raise ProtocolError("too_many_subscriptions",
                                f"at most {BOARD_SUBSCRIPTIONS_PER_CONN_MAX} boards")
        try:
            snapshot = await feed.subscribe(self.conn, msg.streamer, msg.span)
        except Exception as exc:
            log.warning("subscribe failed: %r", exc)
            raise ProtocolError("unavailable", "the board could not be read; retry") from None
        self.conn.send(snapshot)

    async def leave(self) -> None:
        room = self.ctx.hub.remove(self.conn)
        if room is not None:
            try:
                await self.ctx.bus.close_room_if_empty(room)
            except Exception as exc:  # Redis away: the presence TTL clears our count
                log.warning("leaving room %s: %r", room.id, exc)

    async def send_gift(self, msg: SendGift) -> None:
        try:
            self.conn.send(await self._send_gift(msg))
        except ProtocolError as exc:
            self.ctx.metrics.errors.labels(exc.code).inc()
            self.conn.send(exc.as_message())

    async def _send_gift(self, msg: SendGift) -> dict[str, Any]:
        ctx = self.ctx
        gift = (Gift(CUSTOM_TIP, "Tip", msg.amount, "tip_coins", kind="tip")
                if msg.gift == CUSTOM_TIP and msg.amount is not None
                else ctx.catalog.get(msg.gift))
        if gift is None:
            raise ProtocolError("unknown_gift", f"no gift '{msg.gift[:32]}'", msg.id)
        room_info = await ctx.rooms.get(msg.room)
        if room_info is None:
            raise ProtocolError("unknown_room", "no such room", msg.id)
        if room_info.streamer_id == self.principal.user_id:
            raise ProtocolError("self_gift", "streamers cannot gift their own room", msg.id)
        req = SendRequest(self.principal.user_id, self.principal.name, msg.id, msg.room,
                          room_info.streamer_id, gift, msg.count)
        try:
            res = await ctx.sender.send(req)
        except Overloaded:
            raise ProtocolError("overloaded", "the server is busy; retry shortly", msg.id) from None
        except Exception as exc:
            log.warning("send failed: %r", exc)
            raise ProtocolError("unavailable", "the gift could not be sent; retry with the "
                                "same id", msg.id) from None
        ctx.metrics.gifts.labels(res.outcome.value).inc()
        ack: dict[str, Any] = {"type": "ack", "id": msg.id, "outcome": res.outcome.value,
                               "balance": res.balance}
        if res.outcome in (Outcome.OK, Outcome.DUPLICATE):
            ack["event_id"] = res.event_id
            ack["seq"] = res.seq
        return ack
