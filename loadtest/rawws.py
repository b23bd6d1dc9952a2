"""The raw WebSocket client side shared by the load generators.

bench_fanout, surge and bench drive thousands of sockets per process; the
`websockets` client costs too much CPU per frame for that. Each of their
asyncio protocols does its own HTTP upgrade and reads its own frames; this
module holds what they share: the upgrade request and the in-place splitting
of received bytes into server frames (never copying a frame out).
"""

from __future__ import annotations

import base64
import os


def upgrade_request(host: str, path: str, subprotocol: str | None = None) -> bytes:
    """The HTTP/1.1 request that opens a WebSocket at `path`."""
    key = base64.b64encode(os.urandom(16)).decode()
    proto = f"Sec-WebSocket-Protocol: {subprotocol}\r\n" if subprotocol else ""
    return (f"GET {path} HTTP/1.1\r\nHost: {host}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"{proto}\r\n").encode()


class FrameReader:
    """Mixin: feed received bytes, get `_frame(opcode, data, start, end, now)` calls.

    The class using it keeps `buf` (a bytearray), `need` (bytes still missing
    for the frame at the head of `buf`) and `state` (2 = closed: stop reading),
    and defines `_frame`. Frames are read in place (offsets into the bytes):
    at hundreds of MB/s, copies are what would load the load generator.
    """

    __slots__ = ()
    buf: bytearray
    need: int
    state: int

    def _frame(self, op: int, d: bytes | bytearray, s: int, e: int, now: float) -> None:
        raise NotImplementedError

    def _feed(self, data: bytes, now: float) -> None:
        buf = self.buf
        d: bytes | bytearray = data
        if buf:
            buf += data
            if len(buf) < self.need:
                return
            d = buf
        n, pos, need = len(d), 0, 0
        while n - pos >= 2:
            ln = d[pos + 1] & 0x7F
            h = 2
            if ln == 126:
                if n - pos < 4:
                    break
                ln = int.from_bytes(d[pos + 2:pos + 4], "big")
                h = 4
            elif ln == 127:
                if n - pos < 10:
                    break
                ln = int.from_bytes(d[pos + 2:pos + 10], "big")
                h = 10
            end = pos + h + ln
            if end > n:
                need = end - pos
                break
            self._frame(d[pos] & 0x0F, d, pos + h, end, now)
            if self.state == 2:
                return
            pos = end
        if d is buf:
            del buf[:pos]
        elif pos < n:
            buf += memoryview(d)[pos:]
        self.need = need
