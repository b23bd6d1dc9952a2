"""/ws sockets without a task each: websockets' sans-I/O core on uvicorn's transport.

uvicorn parses HTTP and, on an `Upgrade: websocket`, hands the socket to the
WebSocket protocol class named in its config (`ws=`). giftd's is this one. It
drives websockets' `ServerProtocol` (the library's sans-I/O implementation of
RFC 6455: handshake checks, framing, masking, close and ping rules) from
asyncio's callbacks, and gives each message to the connection's `Session`
(server/gateway.py) as a plain call.

Why not uvicorn's own WebSocket protocols with an ASGI endpoint: each socket
would then hold an ASGI task blocked in `receive()` with its coroutine chain,
an `asyncio.Queue`, an `Event`, the scope, per-socket ping timers — ~27 KiB per
idle viewer (loadtest/RESULTS.md). Here a watching viewer is a few small
objects and no coroutine at all. Keepalive pings and join deadlines are one
sweep per process (`Sweeper`), not timers per socket.

Writes to viewers do not pass through websockets: room frames are built once
per tick and written as ready-made bytes (rooms/conn.py). Control frames
(pong, close) do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import orjson
from websockets.datastructures import Headers
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

from rooms.conn import ABORT_AFTER_CLOSE_S, Conn
from server.codec import negotiate
from server.settings import WS_MESSAGE_BYTES_HARD_MAX

if TYPE_CHECKING:
    from server.context import Ctx
    from server.gateway import Session

log = logging.getLogger("giftd.ws")
# websockets logs every open and close at INFO; per socket that is noise.
_quiet = logging.getLogger("giftd.ws.frames")
_quiet.setLevel(logging.WARNING)

WS_PATH = "/ws"
CLOSE_PING_TIMEOUT = 1011  # a keepalive ping went unanswered for a whole interval
CLOSE_BAD_UTF8 = 1007
CLOSE_SHUTDOWN = 1012  # uvicorn's shutdown, when our own `bye` + 1001 did not happen first
FRAGMENTS_MAX = 64  # a message in more pieces than this is refused (1009), whatever its size
# Bytes handed to websockets' parser at a time. A session that stops reading
# (too many messages waiting) stops the parsing too, so a single large read
# cannot queue more than this much more: at most ~170 tiny (6-byte) frames.
FEED_BYTES = 1024



def _select_subprotocol(protocol: ServerProtocol, offered: Sequence[Subprotocol]
                        ) -> Subprotocol | None:
    chosen = negotiate(list(offered))[1]
    return Subprotocol(chosen) if chosen else None


def _ctx_of(config: Any) -> Ctx | None:
    app = config.loaded_app
    while app is not None and not hasattr(app, "state"):
        app = getattr(app, "app", None)  # through uvicorn's middleware wrappers
    return getattr(getattr(app, "state", None), "ctx", None)


def refusal(status: int, code: str, message: str) -> Response:
    """An HTTP answer to a handshake we refuse: JSON with a stable code, as the HTTP API."""
    body = orjson.dumps({"code": code, "message": message})
    headers = Headers([("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                       ("Connection", "close")])
    return Response(status, HTTPStatus(status).phrase, headers, body)


class GiftdWebSocket(asyncio.Protocol):
    """One /ws socket. uvicorn builds it with (config, server_state, app_state)."""

    __slots__ = ("_cut_off", "_fragments", "_held", "close_sent", "conn", "ctx", "paused",
                 "ping_sent_s", "server_state", "session", "transport", "ws")

    def __init__(self, config: Any, server_state: Any, app_state: Any,
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.ctx = _ctx_of(config)
        self.server_state = server_state
        self.ws = ServerProtocol(select_subprotocol=_select_subprotocol,
                                 max_size=WS_MESSAGE_BYTES_HARD_MAX, logger=_quiet)
        self.transport: asyncio.Transport | None = None
        self.conn: Conn | None = None  # once the handshake is accepted
        self.session: Session | None = None
        self.close_sent = False
        self.ping_sent_s = 0.0  # when the unanswered keepalive ping went out; 0: none
        self.paused = False  # the session asked us to stop reading
        self._held: bytes = b""  # received while paused, not yet parsed
        self._cut_off = False  # the abort timer is set
        self._fragments: list[bytes] | None = None  # a message arriving in pieces

    # --- asyncio callbacks ---------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server_state.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server_state.connections.discard(self)
        conn = self.conn
        if conn is not None:
            conn.closed = True
        session, self.session = self.session, None
        if session is not None:
            session.on_close()

    def data_received(self, data: bytes) -> None:
        if self.paused:  # a read already under way when the session paused us
            self._held += data
            return
        try:
            self._feed(data)
        except Exception:  # never let a bug escape into the event loop's callback
            log.exception("handling a WebSocket read failed")
            if self.ws.state.name == "CONNECTING":
                self._refuse(refusal(500, "internal_error", "the handshake failed"))
            else:
                self.fail(1011, "internal error")

    def _feed(self, data: bytes) -> None:
        ws = self.ws
        for start in range(0, len(data), FEED_BYTES):
            ws.receive_data(data[start:start + FEED_BYTES] if len(data) > FEED_BYTES else data)
            for event in ws.events_received():
                if isinstance(event, Frame):
                    self._on_frame(event)
                elif isinstance(event, Request):
                    self._on_request(event)
            if self.paused:  # keep the rest unparsed until the session resumes us
                self._held = data[start + FEED_BYTES:]
                break
        self._flush()

    def eof_received(self) -> bool | None:
        self.ws.receive_eof()
        self._flush()
        return None

    def pause_writing(self) -> None:
        """Ignored: a viewer's backlog is bounded by Conn.write_frame's budget instead."""

    def resume_writing(self) -> None:
        pass

    # --- uvicorn's shutdown ------------------------------------------------------
    def shutdown(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        if self.conn is not None and not self.close_sent:
            self.close(CLOSE_SHUTDOWN, "server shutting down")
        self._mark_closed()
        self.transport.close()
        if self.transport.get_write_buffer_size():
            self._cut_off_later()  # close() waits for unsent bytes a dead peer never takes

    # --- the handshake -----------------------------------------------------------
    def _on_request(self, request: Request) -> None:
        from server import gateway  # gateway imports rooms and gifts; keep this module light

        ctx = self.ctx
        path, _, query = request.path.partition("?")
        if ctx is None:
            self._refuse(refusal(503, "unavailable", "the server is starting; retry shortly"))
            return
        if path != WS_PATH:
            self._refuse(refusal(404, "not_found", f"WebSockets are served at {WS_PATH}"))
            return
        try:
            principal = gateway.authorize(ctx, request.headers, query)
        except gateway.Refused as r:
            self._refuse(refusal(r.status, r.code, r.message))
            return
        if gateway.needs_async_check(principal):
            # An overlay token's version lives in Redis. Nothing else arrives
            # before our answer, so there is nothing to hold meanwhile.
            gateway.spawn(ctx.loop, self._check_then_open(request, principal))
            return
        self._open(request, principal)

    async def _check_then_open(self, request: Request, principal: Any) -> None:
        from server import gateway

        assert self.ctx is not None
        try:
            await gateway.check_async(self.ctx, principal)
            if self.transport is not None and not self.transport.is_closing():
                self._open(request, principal)
        except gateway.Refused as r:
            self._refuse(refusal(r.status, r.code, r.message))
        except Exception:
            log.exception("overlay handshake failed")
            if self.conn is None:
                self._refuse(refusal(500, "internal_error", "the handshake failed"))

    def _refuse(self, response: Response) -> None:
        self.ws.send_response(response)
        self._flush()
        self._mark_closed()
        if self.transport is not None:
            self.transport.close()

    def _open(self, request: Request, principal: Any) -> None:
        from server import gateway

        assert self.ctx is not None
        response = self.ws.accept(request)  # checks the handshake headers itself
        if response.status_code != 101:
            self._refuse(response)
            return
        self.ws.send_response(response)
        self._flush()  # the 101 goes out before anything the session writes
        fmt = negotiate([self.ws.subprotocol] if self.ws.subprotocol else [])[0]
        assert self.transport is not None
        self.conn = Conn(self, self.transport, principal, fmt, self.ctx.settings.outbound_bytes_max)
        self.session = gateway.Session(self.ctx, self.conn)

    # --- frames ----------------------------------------------------------------------
    def _on_frame(self, frame: Frame) -> None:
        op = frame.opcode
        if op is Opcode.TEXT or op is Opcode.BINARY:
            if frame.fin:
                self._deliver(op, bytes(frame.data))
            else:
                self._fragments = [op.value.to_bytes(1, "big"), bytes(frame.data)]
        elif op is Opcode.CONT:
            parts = self._fragments
            if parts is None:
                return  # websockets refuses a CONT without a start; nothing to deliver
            parts.append(bytes(frame.data))
            if len(parts) > FRAGMENTS_MAX + 1:
                self._fragments = None
                self.fail(1009, "too many fragments")
            elif frame.fin:
                self._fragments = None
                self._deliver(Opcode(parts[0][0]), b"".join(parts[1:]))
        elif op is Opcode.PONG:
            self.ping_sent_s = 0.0
        # PING: websockets has queued the pong; CLOSE: it has queued the reply
        # (both written by _flush).

    def _deliver(self, op: Opcode, data: bytes) -> None:
        session = self.session
        if session is None or self.close_sent:
            return  # past our close: the peer's late messages are dropped
        self._flush()  # pongs queued by websockets go out before our answers, in order
        if self.close_sent:
            return  # that flush found us over budget and closed us (4008)
        if op is Opcode.TEXT:
            try:
                text = data.decode()
            except UnicodeDecodeError:
                self.fail(CLOSE_BAD_UTF8, "invalid UTF-8")
                return
            session.on_message(text)
        else:
            session.on_message(data)

    # --- writes ---------------------------------------------------------------------
    def _flush(self) -> None:
        """Write what websockets has queued (pongs, close replies, handshake answers)."""
        transport = self.transport
        if transport is None:
            return
        for data in self.ws.data_to_send():
            if data:
                transport.write(data)
            else:  # websockets' end-of-stream marker: the closing handshake is done
                self._mark_closed()
                transport.close()
                if transport.get_write_buffer_size():  # (a clean close needs no timer)
                    self._cut_off_later()
                return
        conn = self.conn
        # Control frames (pongs) count against the same budget as ticks: a
        # client that pings and never reads is dropped, not buffered forever.
        if conn is not None and not conn.closed and \
                transport.get_write_buffer_size() > conn.outbound_bytes_max:
            conn.drop_slow()

    def _cut_off_later(self) -> None:
        """Abort the socket if it still holds unsent bytes ABORT_AFTER_CLOSE_S from now.

        transport.close() waits for the buffer to drain, which for a dead peer
        is when the kernel gives up, many minutes later.
        """
        transport = self.transport
        if transport is not None and not self._cut_off:
            self._cut_off = True
            asyncio.get_running_loop().call_later(ABORT_AFTER_CLOSE_S, _abort, transport)

    def _mark_closed(self) -> None:
        if self.conn is not None:
            self.conn.closed = True

    def close(self, code: int, reason: str) -> None:
        """Start the closing handshake; a peer that never answers is cut off later."""
        if self.close_sent or self.transport is None or self.transport.is_closing():
            return
        self.close_sent = True
        try:
            self.ws.send_close(code, reason)
        except Exception:  # already closing from the peer's side
            log.debug("close %s failed", code, exc_info=True)
        self._flush()
        self._mark_closed()
        self._cut_off_later()
        # Read again, whatever the session wanted: the peer's close reply (and
        # its pongs) must get through; messages after our close are dropped.
        self.resume_reading()

    def fail(self, code: int, reason: str) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.close_sent = True
        self.ws.fail(code, reason)  # a server fails by closing TCP right after its close frame
        self._flush()
        self._mark_closed()
        self._cut_off_later()

    def ping(self, now_s: float) -> None:
        """One keepalive ping; the sweeper drops us if it is still unanswered an interval later."""
        if self.close_sent:
            return
        self.ping_sent_s = now_s
        with contextlib.suppress(Exception):
            self.ws.send_ping(b"")
            self._flush()

    def pause_reading(self) -> None:
        """Stop reading and parsing (the session has enough messages waiting)."""
        if self.paused:
            return
        self.paused = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if not self.paused:
            return
        self.paused = False
        held, self._held = self._held, b""
        if held:
            self.data_received(held)  # may pause us again
        if not self.paused and self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()


def _abort(transport: asyncio.BaseTransport) -> None:
    with contextlib.suppress(Exception):
        if not transport.is_closing() or getattr(transport, "get_write_buffer_size",
                                                 lambda: 0)():
            transport.abort()  # type: ignore[attr-defined]


class Sweeper:
    """Keepalive pings and join deadlines for every socket of the process, in one loop.

    Each socket is pinged once per ping interval, in the sweep slot of its
    connection id (so the pings of a process are spread over the interval and a
    socket's turn does not move when others leave), and closed with 1011 if its
    previous ping has gone unanswered for a whole interval: a dead peer is found
    within two intervals. A socket that has not joined a room (or subscribed to
    a board) `join_timeout_s` after opening is closed with 4001.
    """

    SWEEP_S = 0.5

    def __init__(self, ctx: Ctx) -> None:
        self.ctx = ctx
        # Rounded up: one pass over the slots must take at least one interval, or a
        # pong that comes in time would be checked (and failed) too early.
        sweep_ms = round(self.SWEEP_S * 1000)
        self.slots = max(1, -(-ctx.settings.ws_ping_interval_ms // sweep_ms))
        self.slot = 0

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.SWEEP_S)
            try:
                self.sweep(time.monotonic())
            except Exception:
                log.exception("keepalive sweep failed")

    def sweep(self, now_s: float) -> None:
        ctx = self.ctx
        deadline = now_s - ctx.settings.join_timeout_s
        for session in list(ctx.unjoined.values()):
            if session.opened_s <= deadline:
                session.join_timed_out()
        self.slot = slot = (self.slot + 1) % self.slots
        slots = self.slots
        interval_s = ctx.settings.ws_ping_interval_ms / 1000
        # A pass over every connection (~27 ns each: ~0.5 ms per sweep at the
        # 20,000 sockets a process can hold) keeps the slot stable without
        # bookkeeping on every open and close.
        for conn in [c for c in ctx.connections.values() if c.id % slots == slot]:
            sock = conn.sock
            if sock.close_sent:
                continue
            if sock.ping_sent_s == 0.0:
                sock.ping(now_s)
            elif now_s - sock.ping_sent_s >= interval_s - self.SWEEP_S / 2:
                sock.fail(CLOSE_PING_TIMEOUT, "keepalive ping timeout")
