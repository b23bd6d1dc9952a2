"""One viewer's WebSocket, as the room sees it: write prebuilt frames, never block.

giftd runs on uvicorn's `websockets-sansio` protocol. Its protocol object owns
the asyncio transport; we reach it once at accept time and write ready-made
frame bytes straight to the transport. That skips the per-message ASGI round
trip (the tick frame is encoded once per room, not once per viewer) and it
never awaits: a viewer that does not read lets its transport buffer grow, and
once that passes `outbound_bytes_max` it is closed with CLOSE_SLOW_CONSUMER.
A room never waits for its slowest viewer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from starlette.websockets import WebSocket

from rooms.frames import ws_frame
from server.auth import Principal
from server.codec import WireFormat, encode

log = logging.getLogger("giftd.conn")

CLOSE_SLOW_CONSUMER = 4008  # fell more than outbound_bytes_max behind
CLOSE_GOING_AWAY = 1001  # server shutting down: reconnect (to another node)
CLOSE_JOIN_TIMEOUT = 4001  # connected but did not join a room within join_timeout_s
CLOSE_REVOKED = 4003  # the overlay token this connection used was revoked
ABORT_AFTER_CLOSE_S = 2.0  # a slow viewer that will not read our close frame is cut off


SCOPE_KEY = "giftd.ws_protocol"


class CaptureWsProtocol:
    """ASGI middleware: note uvicorn's protocol object in the scope of a WebSocket.

    uvicorn's `send` is a bound method of that object; by the time a handler
    runs, starlette has wrapped `send`, so it is captured here, outermost.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            scope[SCOPE_KEY] = getattr(send, "__self__", None)
        await self.app(scope, receive, send)


class Conn:
    __slots__ = ("_proto", "_transport", "closed", "fmt", "id", "outbound_bytes_max", "principal",
                 "room", "slow", "ws")

    _next_id = 0

    def __init__(self, ws: WebSocket, principal: Principal, fmt: WireFormat,
                 outbound_bytes_max: int) -> None:
        Conn._next_id += 1
        self.id = Conn._next_id
        self.ws = ws
        self.principal = principal
        self.fmt = fmt
        self.outbound_bytes_max = outbound_bytes_max
        self.room: str | None = None
        self.closed = False
        self.slow = False  # dropped for falling behind
        proto = ws.scope.get(SCOPE_KEY)
        if proto is None or not hasattr(proto, "transport") or not hasattr(proto, "conn"):
            raise RuntimeError("giftd needs uvicorn with ws='websockets-sansio'")
        self._proto: Any = proto
        self._transport: asyncio.WriteTransport = proto.transport
        # uvicorn keeps the handshake's request and response (their headers) for
        # the socket's life but never reads them once the handshake is done:
        # ~3 KiB per viewer, dropped here (memory per idle viewer).
        if getattr(proto, "handshake_complete", False):
            for attr in ("request", "response"):
                if hasattr(proto, attr):
                    setattr(proto, attr, None)

    def buffered_bytes(self) -> int:
        return self._transport.get_write_buffer_size()

    def write_frame(self, frame: bytes) -> bool:
        """Write one complete WebSocket frame. False if the viewer is gone or was dropped."""
        if self.closed:
            return False
        transport = self._transport
        if transport.is_closing() or self._proto.close_sent:
            self.closed = True
            return False
        # Behind = still holding more than the budget from earlier frames. (A
        # single frame larger than the budget is fine for a viewer who reads;
        # memory per viewer stays within budget + one frame.)
        if transport.get_write_buffer_size() > self.outbound_bytes_max:
            self.slow = True
            self.close(CLOSE_SLOW_CONSUMER, "slow consumer")
            return False
        transport.write(frame)
        return True

    def send(self, msg: dict[str, Any]) -> bool:
        """Encode one message for this viewer's wire format and write it."""
        return self.write_frame(ws_frame(encode(msg, self.fmt), self.fmt))

    def close(self, code: int, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        proto = self._proto
        if proto.close_sent or self._transport.is_closing():
            return
        try:
            proto.conn.send_close(code, reason)
            self._transport.write(b"".join(proto.conn.data_to_send()))
            proto.close_sent = True
        except Exception:  # the peer may already be gone
            log.debug("close of conn %s failed", self.id, exc_info=True)
        transport = self._transport
        asyncio.get_running_loop().call_later(ABORT_AFTER_CLOSE_S, _abort, transport)


def _abort(transport: asyncio.WriteTransport) -> None:
    with contextlib.suppress(Exception):
        if not transport.is_closing() or transport.get_write_buffer_size():
            transport.abort()
