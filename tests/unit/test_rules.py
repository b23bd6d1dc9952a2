"""Pure rules: send decision, catalog tiers, periods, ranking diffs, frames, auth."""

from __future__ import annotations

from zoneinfo import ZoneInfo

import msgpack
import orjson
import pytest

from gifts.catalog import Catalog, default_catalog, tier_for
from gifts.send_rule import Outcome, Remembered, decide, fingerprint
from rooms.frames import tick_payload_json, tick_payload_msgpack, ws_frame
from rooms.periods import periods
from rooms.ranking import Entry, TopN, apply_diff, rank_diff
from server.auth import (
    AuthError,
    Principal,
    Role,
    hash_password,
    issue_token,
    verify_password,
    verify_token,
)
from server.codec import WireFormat

SH = ZoneInfo("Asia/Shanghai")
KEY = "s3cret-s3cret-s3cret-s3cret-s3cret"


def test_decide_order_id_then_balance_then_backlog() -> None:
    fp = fingerprint("r", "rose", 1, 1)
    seen = Remembered(fp, 90, "1-0", 4)
    common = {"amount": 10, "fp": fp, "backlog": 0, "backlog_max": 5}
    assert decide(balance=100, remembered=None, **common).outcome is Outcome.OK
    assert decide(balance=100, remembered=None, **common).balance == 90
    dup = decide(balance=0, remembered=seen, **common)  # replay even when broke now
    assert (dup.outcome, dup.balance, dup.debit_coins) == (Outcome.DUPLICATE, 90, 0)
    other = Remembered(fingerprint("r", "rose", 2, 1), 90, "1-0", 4)
    assert decide(balance=100, remembered=other, **common).outcome is Outcome.CONFLICT
    assert decide(balance=9, remembered=None, **common).outcome is Outcome.INSUFFICIENT_BALANCE
    assert decide(balance=10, remembered=None, **common).outcome is Outcome.OK  # exactly enough
    full = {**common, "backlog": 5}
    assert decide(balance=100, remembered=None, **full).outcome is Outcome.BACKLOG_FULL
    assert decide(balance=1, remembered=None, **full).outcome is Outcome.INSUFFICIENT_BALANCE


def test_tiers_and_catalog() -> None:
    assert [tier_for(v) for v in (0, 1, 99, 100, 999, 1000, 9999, 10_000, 10**9)] == [
        1, 1, 1, 2, 2, 3, 3, 4, 4]
    cat = Catalog(default_catalog(coins_per_yuan=10))
    assert cat.get("rose") is not None and cat.get("rose").price_coins == 1  # type: ignore[union-attr]
    tips = [g for g in cat.gifts if g.kind == "tip"]
    assert [t.price_coins for t in tips] == [10, 60, 100, 500, 1000]  # 1/6/10/50/100 yuan
    assert cat.get("nope") is None
    assert all(isinstance(g.price_coins, int) and g.price_coins > 0 for g in cat.gifts)


@pytest.mark.parametrize(
    ("local", "expect"),
    [
        ("2026-11-25T23:59:59", ("d20261125", "w2026-48", "m202611")),
        ("2026-11-26T00:00:00", ("d20261126", "w2026-48", "m202611")),
        ("2026-11-29T23:59:59", ("d20261129", "w2026-48", "m202611")),  # Sunday
        ("2026-11-30T00:00:00", ("d20261130", "w2026-49", "m202611")),  # Monday: new week
        ("2026-11-30T23:59:59", ("d20261130", "w2026-49", "m202611")),
        ("2026-12-01T00:00:00", ("d20261201", "w2026-49", "m202612")),  # new month
        ("2026-12-31T23:59:59", ("d20261231", "w2026-53", "m202612")),
        ("2027-01-01T00:00:00", ("d20270101", "w2026-53", "m202701")),  # ISO week of 2026
    ],
)
def test_periods_roll_over_in_local_time(local: str, expect: tuple[str, str, str]) -> None:
    from datetime import datetime

    ms = int(datetime.fromisoformat(local).replace(tzinfo=SH).timestamp() * 1000)
    assert periods(ms, SH) == expect
    # 16:00 UTC is already tomorrow in Shanghai
    assert periods(ms - 1, SH) != expect or local.endswith("59")


def test_topn_and_diff_round_trip() -> None:
    top = TopN(3)
    board: list[dict[str, object]] = []
    steps = [(1, 10), (2, 5), (3, 7), (4, 1), (2, 20), (4, 8), (5, 100)]
    for uid, total in steps:
        before = top.entries()
        top.update(uid, f"u{uid}", total)
        board = apply_diff(board, rank_diff(before, top.entries()))
        assert board == top.as_json()
    assert [e["id"] for e in board] == [5, 2, 1]
    # totals only grow: a stale lower total is ignored
    top.update(5, "u5", 50)
    assert top.entries()[0].score == 100


def test_rank_diff_reports_emptied_ranks() -> None:
    a = [Entry(1, "a", 5), Entry(2, "b", 3)]
    assert rank_diff(a, a[:1]) == [{"rank": 2, "id": None}]
    assert rank_diff(a, a) == []


def test_tick_payloads_match_across_formats() -> None:
    ev = {"seq": 3, "type": "gift", "sender": {"id": 1, "name": "Ann"}, "value_coins": 5}
    rank = [{"rank": 1, "id": 1, "name": "Ann", "score": 5}]
    j = orjson.loads(tick_payload_json("r1", [orjson.dumps(ev)], rank, 7, 3))
    m = msgpack.unpackb(tick_payload_msgpack("r1", [ev], rank, 7, 3))
    assert j == m == {"type": "tick", "room": "r1", "seq": 3, "events": [ev], "rank": rank,
                      "viewers": 7}
    empty = orjson.loads(tick_payload_json("r1", [], None, None, 3))
    assert empty == {"type": "tick", "room": "r1", "seq": 3, "events": []}


def test_ws_frame_headers() -> None:
    small = ws_frame(b"x" * 5, WireFormat.JSON)
    assert small[:2] == bytes([0x81, 5])  # FIN + text, unmasked, 7-bit length
    mid = ws_frame(b"x" * 300, WireFormat.MSGPACK)
    assert mid[:4] == bytes([0x82, 126, 1, 44])  # FIN + binary, 16-bit length
    big = ws_frame(b"x" * 70_000, WireFormat.JSON)
    assert big[1] == 127 and int.from_bytes(big[2:10], "big") == 70_000


def test_passwords_and_tokens() -> None:
    h = hash_password("correct horse")
    assert verify_password(h, "correct horse") and not verify_password(h, "wrong")
    assert not verify_password("not-a-hash", "x")
    p = Principal(7, "Ann", Role.VIEWER)
    tok = issue_token(KEY, p, ttl_s=60)
    assert verify_token(KEY, tok) == p
    other = issue_token("other-other-other-other-other-other", p, 60)
    old = issue_token(KEY, p, 60, now_s=0)
    for bad, code in [("", "auth_required"), ("garbage", "bad_token"), (other, "bad_token"),
                      (old, "token_expired")]:
        with pytest.raises(AuthError) as e:
            verify_token(KEY, bad)
        assert e.value.code == code


def test_resume_plans() -> None:
    from rooms.resume import ResumePlan, plan_resume

    assert plan_resume(10, 10, []) is ResumePlan.REPLAY  # nothing missed
    assert plan_resume(10, 13, [11, 12, 13]) is ResumePlan.REPLAY
    assert plan_resume(10, 13, [11, 12, 13, 14]) is ResumePlan.REPLAY  # extra is filtered
    assert plan_resume(10, 13, [11, 12]) is ResumePlan.RETRY  # read before 13 was written
    assert plan_resume(10, 13, []) is ResumePlan.RETRY
    assert plan_resume(10, 13, [12, 13]) is ResumePlan.RESYNC  # 11 was trimmed
    assert plan_resume(20, 13, []) is ResumePlan.RESYNC  # from another life of the room


def test_merge_cheap_keeps_costly_gifts_and_every_id() -> None:
    from rooms.merge import merge_cheap

    def ev(seq: int, sender: int, gift: str, value: int, combo: str = "c") -> tuple[bytes, dict]:
        d = {"type": "gift", "seq": seq, "event_id": f"e{seq}", "sender": {"id": sender},
             "gift": gift, "count": 1, "value_coins": value, "tier": tier_for(value),
             "combo_id": combo, "client_id": f"x{seq}"}
        return orjson.dumps(d), d

    events = [ev(1, 1, "rose", 1), ev(2, 2, "rose", 1), ev(3, 1, "rose", 1),
              ev(4, 1, "rocket", 10_001), ev(5, 1, "rose", 1), ev(6, 2, "heart", 10),
              ev(7, 1, "rose", 1, combo="d"), (b"{}", {"type": "combo_end", "seq": 8})]
    out = [d for _, d in merge_cheap(events)]
    assert [d["seq"] for d in out] == [2, 4, 5, 6, 7, 8]  # rising seqs, members folded
    roses = out[2]
    assert (roses["count"], roses["value_coins"], roses["merged"]) == (3, 3, 3)
    assert roses["seqs"] == [1, 3, 5] and roses["event_ids"] == ["e1", "e3", "e5"]
    assert out[1]["gift"] == "rocket" and "merged" not in out[1]  # never merged away
    assert "merged" not in out[4]  # another streak stays apart
    ids = [i for d in out if d["type"] == "gift" for i in d.get("event_ids", [d["event_id"]])]
    assert sorted(ids) == [f"e{i}" for i in range(1, 8)]
    merged_raw = next(raw for raw, d in merge_cheap(events) if d.get("merged"))
    assert orjson.loads(merged_raw)["seqs"] == [1, 3, 5]


def test_json_log_lines() -> None:
    import logging

    from server.logs import JsonFormatter

    rec = logging.makeLogRecord({"name": "giftd.x", "levelname": "WARNING", "msg": "a %s",
                                 "args": ("b",), "room": "r1"})
    line = orjson.loads(JsonFormatter("n1").format(rec))
    assert (line["level"], line["logger"], line["msg"], line["node"], line["room"]) == (
        "warning", "giftd.x", "a b", "n1", "r1")
