"""One viewer's WebSocket, as the room sees it: write prebuilt frames, never block.

The socket itself is server/websocket.py (websockets' sans-I/O protocol on the
asyncio transport). A room writes ready-made frame bytes straight to the
transport: the tick frame is encoded once per room, not once per viewer, and
writing never awaits. A viewer that does not read lets its transport buffer
grow, and once that passes `outbound_bytes_max` it is closed with
CLOSE_SLOW_CONSUMER. A room never waits for its slowest viewer.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from rooms.frames import ws_frame
from server.auth import Principal
from server.codec import WireFormat, encode

if TYPE_CHECKING:
    from server.websocket import GiftdWebSocket

CLOSE_SLOW_CONSUMER = 4008  # fell more than outbound_bytes_max behind
CLOSE_GOING_AWAY = 1001  # server shutting down: reconnect (to another node)
CLOSE_JOIN_TIMEOUT = 4001  # connected but did not join a room within join_timeout_s
CLOSE_REVOKED = 4003  # the overlay token this connection used was revoked
ABORT_AFTER_CLOSE_S = 2.0  # a slow viewer that will not read our close frame is cut off


class Conn:
    __slots__ = ("closed", "fmt", "id", "outbound_bytes_max", "principal", "room", "slow",
                 "sock", "transport")

    _next_id = 0

    def __init__(self, sock: GiftdWebSocket, transport: asyncio.Transport, principal: Principal,
                 fmt: WireFormat, outbound_bytes_max: int) -> None:
        Conn._next_id += 1
        self.id = Conn._next_id
        self.sock = sock
        self.transport = transport
        self.principal = principal
        self.fmt = fmt
        self.outbound_bytes_max = outbound_bytes_max
        self.room: str | None = None
        # True once a close is under way (ours or the peer's) or the socket is
        # gone: nothing more is written.
        self.closed = False
        self.slow = False  # dropped for falling behind

    def buffered_bytes(self) -> int:
        return self.transport.get_write_buffer_size()

    def write_frame(self, frame: bytes) -> bool:
        """Write one complete WebSocket frame. False if the viewer is gone or was dropped."""
        if self.closed:
            return False
        transport = self.transport
        # Behind = still holding more than the budget from earlier frames. (A
        # single frame larger than the budget is fine for a viewer who reads;
        # memory per viewer stays within budget + one frame.)
        if transport.get_write_buffer_size() > self.outbound_bytes_max:
            self.drop_slow()
            return False
        transport.write(frame)
        return True

    def drop_slow(self) -> None:
        self.slow = True
        self.close(CLOSE_SLOW_CONSUMER, "slow consumer")

    def send(self, msg: dict[str, Any]) -> bool:
        """Encode one message for this viewer's wire format and write it."""
        return self.write_frame(ws_frame(encode(msg, self.fmt), self.fmt))

    def close(self, code: int, reason: str) -> None:
        if self.closed:
            return
        self.sock.close(code, reason)
        self.closed = True

