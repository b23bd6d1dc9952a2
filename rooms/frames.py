"""Tick frames, pure: all events of a tick in ONE payload per wire format.

JSON frames are spliced from the events' raw JSON bytes (exactly as the Lua
script produced them) with no decode/encode round trip. msgpack frames are
packed from the parsed events, once per tick. Then the WebSocket frame header
is added once: the same bytes go to every viewer of that format.
"""

from __future__ import annotations

from typing import Any

import msgpack
import orjson
from websockets.frames import Frame, Opcode

from server.codec import WireFormat


def tick_payload_json(room: str, raw_events: list[bytes], rank: list[dict[str, Any]] | None,
                      viewers: int | None, seq: int) -> bytes:
    parts = [b'{"type":"tick","room":', orjson.dumps(room), b',"seq":', str(seq).encode(),
             b',"events":[', b",".join(raw_events), b"]"]
    if rank:
        parts += [b',"rank":', orjson.dumps(rank)]
    if viewers is not None:
        parts += [b',"viewers":', str(viewers).encode()]
    parts.append(b"}")
    return b"".join(parts)


def tick_payload_msgpack(room: str, events: list[dict[str, Any]],
                         rank: list[dict[str, Any]] | None, viewers: int | None,
                         seq: int) -> bytes:
    msg: dict[str, Any] = {"type": "tick", "room": room, "seq": seq, "events": events}
    if rank:
        msg["rank"] = rank
    if viewers is not None:
        msg["viewers"] = viewers
    return msgpack.packb(msg, use_bin_type=True)


def ws_frame(payload: bytes, fmt: WireFormat) -> bytes:
    """A complete unmasked server->client WebSocket frame around `payload`."""
    opcode = Opcode.BINARY if fmt is WireFormat.MSGPACK else Opcode.TEXT
    return Frame(opcode, payload).serialize(mask=False, extensions=[])
