"""The WebSocket gateway, /ws: authenticate, negotiate, then join and send gifts.

Everything is refused before any room state is touched when the token or the
Origin is wrong. Each inbound frame is size-capped, decoded and validated
(server/protocol.py); a bad one gets an `error` with a stable code and never
reaches Redis. Sends run concurrently per connection (at most
`SENDS_IN_FLIGHT_MAX` at once), so a client may pipeline; acks carry the id.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import TYPE_CHECKING, Any

import orjson
from starlette.responses import JSONResponse
from starlette.websockets import WebSocket, WebSocketDisconnect

from gifts.catalog import Gift
from gifts.send_rule import Outcome
from gifts.sender import Overloaded, SendRequest
from rooms.board_feed import BOARD_SUBSCRIPTIONS_PER_CONN_MAX
from rooms.bus import seq_of
from rooms.conn import CLOSE_JOIN_TIMEOUT, Conn
from rooms.resume import ResumePlan, plan_resume
from server import keys
from server.auth import AuthError, Principal, Role, verify_token
from server.codec import negotiate
from server.protocol import (
    CUSTOM_TIP,
    Join,
    Limits,
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
SENDS_IN_FLIGHT_MAX = 64  # per connection; beyond this we stop reading its socket


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


def _token_of(ws: WebSocket) -> str:
    auth = ws.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return ws.query_params.get("token", "")


async def ws_endpoint(ws: WebSocket) -> None:
    ctx: Ctx = ws.app.state.ctx
    s = ctx.settings
    if not origin_allowed(ws.headers.get("origin"), ws.headers.get("host"), s.allowed_origins):
        await ws.send_denial_response(
            JSONResponse({"code": "origin_not_allowed", "message": "origin not allowed"}, 403))
        return
    try:
        principal = verify_token(ctx.secret, _token_of(ws))
        if principal.role is Role.OVERLAY:
            current = int(await ctx.redis.get(keys.overlay_version(principal.user_id)) or 0)
            if principal.overlay_version != current:
                raise AuthError("token_revoked", "this overlay token was revoked")
    except AuthError as exc:
        await ws.send_denial_response(
            JSONResponse({"code": exc.code, "message": str(exc)}, 401))
        return
    except Exception as exc:  # Redis away during the overlay check
        log.warning("handshake check failed: %r", exc)
        await ws.send_denial_response(
            JSONResponse({"code": "unavailable", "message": "try again shortly"}, 503))
        return
    fmt, subprotocol = negotiate(list(ws.scope.get("subprotocols", [])))
    await ws.accept(subprotocol=subprotocol)
    conn = Conn(ws, principal, fmt, s.outbound_bytes_max)
    session = Session(ctx, conn)
    if principal.role is Role.OVERLAY:
        ctx.overlays.setdefault(principal.user_id, {})[conn.id] = conn
    ctx.connections[conn.id] = conn
    ctx.metrics.connections.inc()
    try:
        await session.run()
    finally:
        ctx.connections.pop(conn.id, None)
        ctx.board_feed.drop(conn)
        if principal.role is Role.OVERLAY:
            ctx.overlays.get(principal.user_id, {}).pop(conn.id, None)
        session._join_timer.cancel()
        ctx.metrics.connections.dec()
        await session.leave()


class Session:
    """One connection's conversation."""

    def __init__(self, ctx: Ctx, conn: Conn) -> None:
        self.ctx = ctx
        self.conn = conn
        s = ctx.settings
        self.limits = Limits(s.frame_bytes_max, s.gift_count_max, s.client_id_chars_max,
                             s.custom_tip_min_coins, s.custom_tip_max_coins)
        # made on the first send: most connections only watch (memory per viewer)
        self.in_flight: asyncio.Semaphore | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        now = time.monotonic()
        self.bucket = TokenBucket(s.send_rate_per_s, s.send_burst, now)
        self.user_bucket = ctx.user_buckets.get(conn.principal.user_id, now)
        self.joined_once = False
        self._join_timer = asyncio.get_running_loop().call_later(
            s.join_timeout_s, self._join_timeout)

    def _joined(self) -> None:
        if not self.joined_once:
            self.joined_once = True
            self._join_timer.cancel()  # one timer handle less per watching viewer

    def _join_timeout(self) -> None:
        if not self.joined_once:
            self.conn.close(CLOSE_JOIN_TIMEOUT, "join a room first")

    @property
    def principal(self) -> Principal:
        return self.conn.principal

    async def run(self) -> None:
        ws = self.conn.ws
        while True:
            try:
                msg = await ws.receive()
            except (WebSocketDisconnect, RuntimeError):
                return
            if msg["type"] == "websocket.disconnect":
                return
            data = msg.get("bytes")
            if data is None:
                data = msg.get("text", "")
            try:
                parsed = parse(data, self.conn.fmt, self.limits)
                if isinstance(parsed, SendGift) and self.principal.role is Role.OVERLAY:
                    raise ProtocolError("read_only", "an overlay token cannot send gifts",
                                        parsed.id)
                if isinstance(parsed, SendGift):
                    # Membership is decided now, in message order, not when the
                    # send task gets to run (a `join` may follow right behind).
                    if self.conn.room != parsed.room:
                        raise ProtocolError("not_in_room", "join the room before sending to it",
                                            parsed.id)
                    wait_s = admit(self.bucket, self.user_bucket, time.monotonic())
                    if wait_s:
                        exc = ProtocolError("rate_limited", "too many sends; slow down",
                                            parsed.id)
                        self.ctx.metrics.errors.labels(exc.code).inc()
                        self.conn.send({**exc.as_message(),
                                        "retry_after_ms": math.ceil(wait_s * 1000)})
                        continue
                    if self.in_flight is None:
                        self.in_flight = asyncio.Semaphore(SENDS_IN_FLIGHT_MAX)
                    await self.in_flight.acquire()
                    task = asyncio.create_task(self.send_gift(parsed))
                    self.tasks.add(task)
                    task.add_done_callback(self._send_done)
                elif isinstance(parsed, Join):
                    await self.join(parsed)
                    self._joined()
                elif isinstance(parsed, Subscribe):
                    await self.subscribe(parsed)
                    self._joined()  # a board widget need not join a room
                elif isinstance(parsed, Ping):
                    self.conn.send({"type": "pong", "nonce": parsed.nonce})
            except ProtocolError as exc:
                self.ctx.metrics.errors.labels(exc.code).inc()
                self.conn.send(exc.as_message())

    def _send_done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if self.in_flight is not None:
            self.in_flight.release()

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
