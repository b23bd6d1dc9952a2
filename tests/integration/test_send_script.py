"""One table of cases, run against the pure rule AND the Lua script."""

from __future__ import annotations

from dataclasses import dataclass

import msgpack
import pytest
from redis.asyncio import Redis

from gifts.catalog import Gift
from gifts.scripts import Scripts
from gifts.send_rule import Outcome, Remembered, decide, fingerprint
from gifts.sender import GiftSender, SendRequest
from server import keys
from tests.support import settings_for_tests

ROSE = Gift("rose", "Rose", 1, "rose_float")
CAR = Gift("sports_car", "Sports car", 1200, "car_drive")


@dataclass
class Case:
    name: str
    balance: int
    gift: Gift
    count: int
    prior: tuple[str, int] | None  # an earlier accepted send with the same id: (gift code, count)
    backlog: int
    backlog_max: int
    outcome: Outcome


CASES = [
    Case("plain ok", 100, ROSE, 3, None, 0, 10, Outcome.OK),
    Case("exact balance", 1200, CAR, 1, None, 0, 10, Outcome.OK),
    Case("one short", 1199, CAR, 1, None, 0, 10, Outcome.INSUFFICIENT_BALANCE),
    Case("zero balance", 0, ROSE, 1, None, 0, 10, Outcome.INSUFFICIENT_BALANCE),
    Case("resend same", 100, ROSE, 3, ("rose", 3), 0, 10, Outcome.DUPLICATE),
    Case("reuse id, other count", 100, ROSE, 4, ("rose", 3), 0, 10, Outcome.CONFLICT),
    Case("reuse id, other gift", 5000, CAR, 3, ("rose", 3), 0, 10, Outcome.CONFLICT),
    Case("backlog full", 100, ROSE, 1, None, 10, 10, Outcome.BACKLOG_FULL),
    Case("broke beats backlog", 0, ROSE, 1, None, 10, 10, Outcome.INSUFFICIENT_BALANCE),
    Case("duplicate beats backlog", 100, ROSE, 3, ("rose", 3), 10, 10, Outcome.DUPLICATE),
]


def req(gift: Gift, count: int) -> SendRequest:
    return SendRequest(1, "Ann", "cid-1", "r1", 9, gift, count)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
async def test_script_matches_pure_rule(case: Case, redis: Redis) -> None:
    scripts = Scripts()
    start_balance = case.balance
    remembered = None
    if case.prior:
        prior_gift = ROSE if case.prior[0] == "rose" else CAR
        # the prior send happened with enough coins; then the balance is set to the case's
        await redis.set(keys.balance(1), prior_gift.price_coins * case.prior[1])
        s0 = GiftSender(redis, scripts.send_gifts, settings_for_tests(ledger_backlog_max=10**6))
        first = (await s0.send_many([req(prior_gift, case.prior[1])]))[0]
        assert first.outcome is Outcome.OK
        remembered = Remembered(fingerprint("r1", prior_gift.code, case.prior[1],
                                            prior_gift.price_coins),
                                first.balance, first.event_id, first.seq)
    await redis.set(keys.balance(1), start_balance)
    for i in range(case.backlog):
        await redis.xadd(keys.LEDGER_STREAM, {"k": "filler", "i": i})
    before = {
        "ledger": await redis.xlen(keys.LEDGER_STREAM),
        "hist": await redis.xlen(keys.room_history("r1")),
        "seq": await redis.get(keys.room_seq("r1")),
    }
    sender = GiftSender(redis, scripts.send_gifts,
                        settings_for_tests(ledger_backlog_max=case.backlog_max))
    got = (await sender.send_many([req(case.gift, case.count)]))[0]
    want = decide(balance=start_balance, amount=case.gift.price_coins * case.count,
                  fp=fingerprint("r1", case.gift.code, case.count, case.gift.price_coins),
                  remembered=remembered, backlog=case.backlog, backlog_max=case.backlog_max)
    assert got.outcome is want.outcome is case.outcome
    assert got.balance == want.balance
    after_balance = int(await redis.get(keys.balance(1)) or 0)
    assert after_balance == start_balance - want.debit_coins
    after = {
        "ledger": await redis.xlen(keys.LEDGER_STREAM),
        "hist": await redis.xlen(keys.room_history("r1")),
        "seq": await redis.get(keys.room_seq("r1")),
    }
    if want.outcome is Outcome.OK:
        assert after["ledger"] == before["ledger"] + 1
        assert after["hist"] == before["hist"] + 1
        assert int(after["seq"]) == int(before["seq"] or 0) + 1
    else:
        assert after == before, "a refused send must change nothing"
    if want.outcome is Outcome.DUPLICATE:
        assert remembered is not None
        assert (got.event_id, got.seq) == (remembered.event_id, remembered.seq)


async def test_batch_decides_each_gift_in_order(redis: Redis) -> None:
    """Within one script call, a later gift sees the earlier gift's debit."""
    scripts = Scripts()
    await redis.set(keys.balance(1), 5)
    sender = GiftSender(redis, scripts.send_gifts, settings_for_tests())
    reqs = [SendRequest(1, "Ann", f"c{i}", "r1", 9, ROSE, 2) for i in range(4)]
    reqs.append(SendRequest(1, "Ann", "c0", "r1", 9, ROSE, 2))  # resend of the first
    out = await sender.send_many(reqs)
    assert [o.outcome for o in out] == [Outcome.OK, Outcome.OK, Outcome.INSUFFICIENT_BALANCE,
                                        Outcome.INSUFFICIENT_BALANCE, Outcome.DUPLICATE]
    assert [o.balance for o in out] == [3, 1, 1, 1, 3]
    assert int(await redis.get(keys.balance(1))) == 1
    assert [o.seq for o in out] == [1, 2, 0, 0, 1]


async def test_bad_arguments_change_nothing(redis: Redis) -> None:
    """A malformed batch is refused whole, before the first write."""
    from redis.exceptions import ResponseError

    scripts = Scripts()
    await redis.set(keys.balance(1), 100)
    good = SendRequest(1, "Ann", "ok1", "r1", 9, ROSE, 1).packed()
    fields = msgpack.unpackb(good)
    fields[8] = "5"  # amount != count * unit
    bad = msgpack.packb(fields)
    header = [keys.PREFIX, 60, 100, 100, "d1", "w1", "m1", 60, 3000, 100, 1000, 10000, 2]
    with pytest.raises(ResponseError, match="BAD_ARGS"):
        await scripts.send_gifts(redis, [*header, good, bad])
    assert int(await redis.get(keys.balance(1))) == 100
    assert await redis.xlen(keys.LEDGER_STREAM) == 0
    with pytest.raises(ResponseError, match="BAD_ARGS"):
        await scripts.send_gifts(redis, [*header[:-1], 3, good, good])  # wrong length
    for junk in (b"\xc1", msgpack.packb([1, 2]), msgpack.packb(["1"] * 10 + [5])):
        with pytest.raises(ResponseError, match="BAD_ARGS"):  # not a packed gift
            await scripts.send_gifts(redis, [*header[:-1], 2, good, junk])
    assert int(await redis.get(keys.balance(1))) == 100


async def test_credit_is_applied_once(redis: Redis) -> None:
    scripts = Scripts()
    args = [keys.PREFIX, "order-1", 5, 600, 3600]
    assert await scripts.credit(redis, args) == [b"ok", b"600"]
    assert await scripts.credit(redis, args) == [b"duplicate", b"600"]
    assert int(await redis.get(keys.balance(5))) == 600
