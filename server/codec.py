"""The wire codec: JSON (orjson) by default, msgpack for the `giftd.msgpack` subprotocol.

Pure: bytes in, dicts out, and back. Size limits are checked by the caller
before decoding (a frame over the limit is never parsed).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import msgpack
import orjson

SUBPROTOCOL_JSON = "giftd.json"
SUBPROTOCOL_MSGPACK = "giftd.msgpack"


class WireFormat(StrEnum):
    JSON = "json"  # text frames
    MSGPACK = "msgpack"  # binary frames


class DecodeError(Exception):
    pass


def negotiate(offered: list[str]) -> tuple[WireFormat, str | None]:
    """Pick the wire format from the client's offered subprotocols (first known wins)."""
    for p in offered:
        if p == SUBPROTOCOL_MSGPACK:
            return WireFormat.MSGPACK, p
        if p == SUBPROTOCOL_JSON:
            return WireFormat.JSON, p
    return WireFormat.JSON, None


def decode(data: bytes | str, fmt: WireFormat) -> Any:
    try:
        if fmt is WireFormat.MSGPACK:
            if isinstance(data, str):
                raise DecodeError("msgpack frames are binary")
            # The frame is already size-capped, and unpackb bounds every length
            # by the input size; map keys must be str (strict_map_key).
            return msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
        return orjson.loads(data)
    except (orjson.JSONDecodeError, ValueError, msgpack.ExtraData, msgpack.FormatError,
            msgpack.StackError, TypeError) as exc:
        raise DecodeError(str(exc)) from exc


def encode(obj: Any, fmt: WireFormat) -> bytes:
    if fmt is WireFormat.MSGPACK:
        return msgpack.packb(obj, use_bin_type=True)
    return orjson.dumps(obj)
