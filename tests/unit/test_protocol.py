"""The wire codec and message validation: every bad frame has its stable code."""

from __future__ import annotations

import msgpack
import orjson
import pytest

from server.codec import (
    SUBPROTOCOL_JSON,
    SUBPROTOCOL_MSGPACK,
    WireFormat,
    decode,
    encode,
    negotiate,
)
from server.protocol import Join, Limits, Ping, ProtocolError, SendGift, parse

LIMITS = Limits(frame_bytes_max=256, gift_count_max=99, client_id_chars_max=16)
J = WireFormat.JSON
M = WireFormat.MSGPACK


def code_of(data: bytes | str, fmt: WireFormat = J) -> str:
    with pytest.raises(ProtocolError) as e:
        parse(data, fmt, LIMITS)
    return e.value.code


def test_negotiate_prefers_first_known() -> None:
    assert negotiate([]) == (J, None)
    assert negotiate(["x", SUBPROTOCOL_MSGPACK, SUBPROTOCOL_JSON]) == (M, SUBPROTOCOL_MSGPACK)
    assert negotiate([SUBPROTOCOL_JSON]) == (J, SUBPROTOCOL_JSON)


@pytest.mark.parametrize("fmt", [J, M])
def test_round_trip(fmt: WireFormat) -> None:
    msg = {"type": "gift", "id": "a1", "room": "r", "gift": "rose", "count": 3}
    assert decode(encode(msg, fmt), fmt) == msg


@pytest.mark.parametrize("fmt", [J, M])
def test_valid_messages(fmt: WireFormat) -> None:
    enc = lambda m: encode(m, fmt)
    assert parse(enc({"type": "join", "room": "aurora"}), fmt, LIMITS) == Join("aurora")
    assert parse(enc({"type": "ping", "nonce": 7}), fmt, LIMITS) == Ping(7)
    assert parse(enc({"type": "gift", "id": "x:1", "room": "r", "gift": "rose", "count": 99}),
                 fmt, LIMITS) == SendGift("x:1", "r", "rose", 99)
    # count defaults to 1
    assert parse(enc({"type": "gift", "id": "x", "room": "r", "gift": "rose"}), fmt,
                 LIMITS).count == 1


@pytest.mark.parametrize(
    ("msg", "code"),
    [
        ([1, 2], "bad_message"),
        ("hello", "bad_message"),
        ({"no": "type"}, "missing_field"),
        ({"type": 5}, "bad_field"),
        ({"type": "dance"}, "unknown_type"),
        ({"type": "join"}, "missing_field"),
        ({"type": "join", "room": 5}, "bad_field"),
        ({"type": "join", "room": "NO SUCH/ROOM"}, "unknown_room"),
        ({"type": "gift", "room": "r", "gift": "rose"}, "missing_field"),
        ({"type": "gift", "id": "", "room": "r", "gift": "rose"}, "bad_field"),
        ({"type": "gift", "id": "a" * 17, "room": "r", "gift": "rose"}, "bad_field"),
        ({"type": "gift", "id": "sp ace", "room": "r", "gift": "rose"}, "bad_field"),
        ({"type": "gift", "id": 12, "room": "r", "gift": "rose"}, "bad_field"),
        ({"type": "gift", "id": "a", "gift": "rose"}, "missing_field"),
        ({"type": "gift", "id": "a", "room": "r"}, "missing_field"),
        ({"type": "gift", "id": "a", "room": "r", "gift": 1}, "bad_field"),
        ({"type": "gift", "id": "a", "room": "r", "gift": "rose", "count": "2"}, "bad_field"),
        ({"type": "gift", "id": "a", "room": "r", "gift": "rose", "count": 1.0}, "bad_field"),
        ({"type": "gift", "id": "a", "room": "r", "gift": "rose", "count": True}, "bad_field"),
        ({"type": "gift", "id": "a", "room": "r", "gift": "rose", "count": 0}, "bad_count"),
        ({"type": "gift", "id": "a", "room": "r", "gift": "rose", "count": -3}, "bad_count"),
        ({"type": "gift", "id": "a", "room": "r", "gift": "rose", "count": 100}, "bad_count"),
    ],
)
@pytest.mark.parametrize("fmt", [J, M])
def test_bad_messages(msg: object, code: str, fmt: WireFormat) -> None:
    assert code_of(encode(msg, fmt), fmt) == code


def test_gift_errors_carry_the_id_when_known() -> None:
    with pytest.raises(ProtocolError) as e:
        parse(orjson.dumps({"type": "gift", "id": "abc", "room": "r", "gift": "rose",
                            "count": 0}), J, LIMITS)
    assert e.value.as_message() == {"type": "error", "code": "bad_count",
                                    "message": "count must be 1..99", "id": "abc"}


def test_undecodable_frames() -> None:
    assert code_of(b"{not json") == "bad_frame"
    assert code_of(b"\xff\xfe") == "bad_frame"
    assert code_of(b"\xc1", M) == "bad_frame"  # reserved msgpack byte
    assert code_of("text is not msgpack", M) == "bad_frame"
    assert code_of(msgpack.packb({"type": "ping"}) + b"\x00", M) == "bad_frame"  # trailing data
    assert code_of(msgpack.packb({1: "int keys"}), M) == "bad_frame"


def test_size_limit_is_checked_before_decoding() -> None:
    big = orjson.dumps({"type": "ping", "pad": "x" * 300})
    assert code_of(big) == "frame_too_large"
    assert code_of(b"{" * 300) == "frame_too_large"  # never parsed
    # a multi-byte text frame is measured in bytes, not characters
    assert code_of('{"type":"ping","p":"' + "é" * 120 + '"}') == "frame_too_large"
