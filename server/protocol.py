"""The client -> server messages of /ws, validated into typed values. Pure.

Every way a frame can be wrong has a stable error `code` (docs/protocol.md).
Validation happens before anything touches Redis: a bad frame changes nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from server.codec import DecodeError, WireFormat, decode

CLIENT_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]+$")
ROOM_RE = re.compile(r"^[a-z0-9_-]{1,40}$")
PING_NONCE_CHARS_MAX = 64


class ProtocolError(Exception):
    def __init__(self, code: str, message: str, ref: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.ref = ref  # the client's id of the offending send, when known

    def as_message(self) -> dict[str, Any]:
        msg: dict[str, Any] = {"type": "error", "code": self.code, "message": self.message}
        if self.ref is not None:
            msg["id"] = self.ref
        return msg


@dataclass(frozen=True, slots=True)
class Join:
    room: str
    since: int | None = None  # resume: the last seq this client saw in the room


CUSTOM_TIP = "tip_custom"  # the gift code of a custom-amount tip; `amount` says how much


@dataclass(frozen=True, slots=True)
class SendGift:
    id: str
    room: str
    gift: str
    count: int
    amount: int | None = None  # coins, only for CUSTOM_TIP


@dataclass(frozen=True, slots=True)
class Subscribe:
    board: str  # "fans": one streamer's gifters
    streamer: int
    span: str  # day | week | month


@dataclass(frozen=True, slots=True)
class Ping:
    nonce: Any = None


Message = Join | SendGift | Subscribe | Ping


@dataclass(frozen=True, slots=True)
class Limits:
    frame_bytes_max: int = 4096
    gift_count_max: int = 9999
    client_id_chars_max: int = 64
    custom_tip_min_coins: int = 10
    custom_tip_max_coins: int = 200_000


def _field(msg: dict[str, Any], name: str, typ: type, ref: str | None = None) -> Any:
    if name not in msg:
        raise ProtocolError("missing_field", f"field '{name}' is required", ref)
    value = msg[name]
    # bool is an int in Python; a count of `true` is still wrong.
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise ProtocolError("bad_field", f"field '{name}' must be {typ.__name__}", ref)
    return value


def parse(data: bytes | str, fmt: WireFormat, limits: Limits) -> Message:
    size = len(data.encode() if isinstance(data, str) else data)
    if size > limits.frame_bytes_max:
        raise ProtocolError("frame_too_large",
                            f"frames are limited to {limits.frame_bytes_max} bytes")
    try:
        msg = decode(data, fmt)
    except DecodeError:
        raise ProtocolError("bad_frame", f"the frame is not valid {fmt.value}") from None
    if not isinstance(msg, dict):
        raise ProtocolError("bad_message", "a message is an object with a 'type'")
    kind = _field(msg, "type", str)
    if kind == "gift":
        raw_id = msg.get("id")
        ref = raw_id if isinstance(raw_id, str) else None
        cid = _field(msg, "id", str)
        if not (1 <= len(cid) <= limits.client_id_chars_max) or not CLIENT_ID_RE.match(cid):
            raise ProtocolError("bad_field",
                                f"field 'id' must be 1-{limits.client_id_chars_max} of "
                                "A-Z a-z 0-9 _ . : -", ref)
        room = _field(msg, "room", str, ref)
        gift = _field(msg, "gift", str, ref)
        count = _field(msg, "count", int, ref) if "count" in msg else 1
        if count <= 0 or count > limits.gift_count_max:
            raise ProtocolError("bad_count", f"count must be 1..{limits.gift_count_max}", ref)
        if gift == CUSTOM_TIP:
            amount = _field(msg, "amount", int, ref)
            lo, hi = limits.custom_tip_min_coins, limits.custom_tip_max_coins
            if not lo <= amount <= hi:
                raise ProtocolError("bad_amount", f"a custom tip is {lo}..{hi} coins", ref)
            if count != 1:
                raise ProtocolError("bad_count", "a custom tip is sent once (count 1)", ref)
            return SendGift(cid, room, gift, 1, amount)
        if "amount" in msg:
            raise ProtocolError("bad_field", f"'amount' is only for '{CUSTOM_TIP}'", ref)
        return SendGift(cid, room, gift, count)
    if kind == "join":
        room = _field(msg, "room", str)
        if not ROOM_RE.match(room):
            raise ProtocolError("unknown_room", "no such room")
        since = None
        if msg.get("since") is not None:
            since = _field(msg, "since", int)
            if since < 0:
                raise ProtocolError("bad_field", "field 'since' must be >= 0")
        return Join(room, since)
    if kind == "ping":
        # echoed back, so it must be something small we can always encode again
        nonce = msg.get("nonce")
        if not (nonce is None or (isinstance(nonce, int) and not isinstance(nonce, bool)
                                  and -(2**63) <= nonce < 2**63)
                or (isinstance(nonce, str) and len(nonce) <= PING_NONCE_CHARS_MAX)):
            raise ProtocolError("bad_field", "field 'nonce' must be an integer or a string "
                                f"of at most {PING_NONCE_CHARS_MAX} characters")
        return Ping(nonce)
    if kind == "subscribe":
        board = _field(msg, "board", str)
        streamer = _field(msg, "streamer", int)
        span = _field(msg, "span", str)
        if board != "fans" or span not in ("day", "week", "month"):
            raise ProtocolError("unknown_board", "boards: 'fans' by day, week or month")
        return Subscribe(board, streamer, span)
    raise ProtocolError("unknown_type", f"unknown message type '{kind[:32]}'")
