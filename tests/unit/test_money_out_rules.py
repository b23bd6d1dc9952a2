"""Money out, the pure parts: revenue share and its rounding rule, tiers, T+N, the
withdrawal state machine, limits, identity checks and masking, encryption at rest."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from billing.crypto import Sealer, data_key
from billing.identity import (
    IdentityError,
    check_account,
    check_kyc,
    mask_account,
    mask_id_number,
    mask_name,
    valid_id_number,
)
from billing.revenue import (
    BPS,
    Rule,
    RuleError,
    Tier,
    WEvent,
    WithdrawLimits,
    WState,
    available_on,
    check_withdraw,
    coins_to_fen,
    creator_cumulative,
    fixed_rule,
    is_available,
    parse_rule,
    pick_rule,
    settle_ready,
    share,
    tier_at,
    w_transition,
)

TIERED = parse_rule("tiered", [[0, 5000], [10_000, 6000], [100_000, 7000]])


def test_fixed_share_rounds_the_creator_down() -> None:
    s = share(fixed_rule(5000), 0, 7)
    assert (s.creator, s.platform) == (3, 4)  # 3.5 -> 3; the platform keeps the half coin
    s = share(fixed_rule(3333), 0, 100)
    assert (s.creator, s.platform) == (33, 67)


def test_remainders_do_not_pile_up_day_after_day() -> None:
    # 7 coins a day at 50 %: per day alone the creator would get 3 every day (21 of 49);
    # on the cumulative position they get floor(24.5) = 24 over the week.
    rule = fixed_rule(5000)
    total = sum(share(rule, 7 * d, 7).creator for d in range(7))
    assert total == 24 == creator_cumulative(rule, 49)


def test_tier_lookup_by_cumulative_monthly_income() -> None:
    assert tier_at(TIERED, 0).creator_bps == 5000
    assert tier_at(TIERED, 9_999).creator_bps == 5000
    assert tier_at(TIERED, 10_000).creator_bps == 6000
    assert tier_at(TIERED, 10**9).creator_bps == 7000


def test_a_day_crossing_a_tier_boundary_is_split_at_the_boundary() -> None:
    s = share(TIERED, 8_000, 4_000)  # 2 000 at 50 %, 2 000 at 60 %
    assert (s.creator, s.platform) == (1000 + 1200, 4000 - 2200)
    s = share(TIERED, 95_000, 10_001)  # 5 000 at 60 %, 5 001 at 70 % = 3000 + 3500.7
    assert s.creator == 6500 and s.creator + s.platform == 10_001


def test_rules_are_validated() -> None:
    assert parse_rule("fixed", 4000).tiers == (Tier(0, 4000),)
    for kind, tiers in (("fixed", [[0, 10_001]]), ("tiered", [[5, 100]]),
                        ("tiered", [[0, 1], [0, 2]]), ("fixed", [[0, 1], [9, 2]]),
                        ("weird", 1), ("tiered", []), ("tiered", [[0, 1.5]])):
        with pytest.raises(RuleError):
            parse_rule(kind, tiers)
    with pytest.raises(RuleError):
        parse_rule("fixed", 5000, hold_days=91)


def test_pick_rule_uses_the_latest_effective_date() -> None:
    a, b, c = fixed_rule(1), fixed_rule(2), fixed_rule(3)
    eff = [date(2025, 1, 1), date(2025, 3, 1), date(2025, 3, 1)]
    assert pick_rule([a, b, c], eff, date(2024, 12, 31)) is None
    assert pick_rule([a, b, c], eff, date(2025, 2, 28)) is a
    assert pick_rule([a, b, c], eff, date(2025, 3, 1)) is c  # same day: the later row


def test_t_plus_n_in_the_configured_zone() -> None:
    tz = "Asia/Shanghai"
    day = date(2025, 6, 10)
    assert available_on(day, 1) == date(2025, 6, 11)
    # 2025-06-10T15:59:59Z is 23:59:59 on the 10th in Shanghai: not yet; 16:00Z is the 11th.
    assert not is_available(date(2025, 6, 11), datetime(2025, 6, 10, 15, 59, 59, tzinfo=UTC), tz)
    assert is_available(date(2025, 6, 11), datetime(2025, 6, 10, 16, 0, 0, tzinfo=UTC), tz)
    assert not settle_ready(day, datetime(2025, 6, 10, 15, 59, tzinfo=UTC), tz)
    assert settle_ready(day, datetime(2025, 6, 10, 16, 0, tzinfo=UTC), tz)


def test_withdrawal_state_machine() -> None:
    R, A, P, F, X = (WState.REQUESTED, WState.APPROVED, WState.PAID, WState.FAILED,
                     WState.REJECTED)
    assert w_transition(R, WEvent.APPROVE).to is A
    assert w_transition(R, WEvent.REJECT).to is X
    assert w_transition(A, WEvent.PAID).to is P
    assert w_transition(A, WEvent.FAILED).to is F
    assert w_transition(A, WEvent.APPROVE).already
    assert w_transition(P, WEvent.PAID).already
    for state, event in ((R, WEvent.PAID), (A, WEvent.REJECT), (X, WEvent.APPROVE),
                         (P, WEvent.FAILED), (F, WEvent.PAID), (X, WEvent.PAID)):
        out = w_transition(state, event)
        assert out.to is None and not out.already and out.reason


def test_withdraw_limits() -> None:
    lim = WithdrawLimits(100, 1000, 1500)
    assert check_withdraw(99, available=10**6, today_coins=0, limits=lim) == "below_minimum"
    assert check_withdraw(1001, available=10**6, today_coins=0, limits=lim) == "above_maximum"
    assert check_withdraw(600, available=10**6, today_coins=1000, limits=lim) == "daily_limit"
    assert check_withdraw(500, available=499, today_coins=0, limits=lim) == "insufficient_available"
    assert check_withdraw(500, available=500, today_coins=1000, limits=lim) is None


def test_coins_to_fen_floors() -> None:
    assert coins_to_fen(1000, 10_000) == 10_000
    assert coins_to_fen(1, 333) == 0 and coins_to_fen(7, 333) == 2


def test_identity_checks_and_masks() -> None:
    assert valid_id_number("11010519491231002X")
    assert not valid_id_number("110105194912310021")
    with pytest.raises(IdentityError):
        check_kyc("", "11010519491231002X")
    assert check_kyc(" 张三 ", "11010519491231002x") == ("张三", "11010519491231002X")
    assert mask_name("张三丰") == "张**" and mask_id_number("11010519491231002X") == \
        "110***********002X"
    assert mask_account("bank_card", check_account("bank_card", "6222 0212 3456 7890")) == \
        "**** 7890"
    assert mask_account("alipay", "13812345678") == "138****5678"
    assert mask_account("alipay", "ann@example.com") == "a***@example.com"
    assert mask_account("wechat", "wxid_abcdef") == "wx***ef"
    for kind, acct in (("bank_card", "12ab"), ("alipay", "nope"), ("wechat", "1"),
                       ("paypal", "x@y.com")):
        with pytest.raises(IdentityError):
            check_account(kind, acct)


def test_sealed_values_open_only_in_their_place() -> None:
    s = Sealer(data_key("", "secret"))
    blob = s.seal("11010519491231002X", "kyc:id:7")
    assert b"11010519491231002X" not in blob
    assert s.open(blob, "kyc:id:7") == "11010519491231002X"
    with pytest.raises(Exception):  # noqa: B017 - InvalidTag
        s.open(blob, "kyc:id:8")
    with pytest.raises(Exception):  # noqa: B017
        Sealer(data_key("", "other")).open(blob, "kyc:id:7")
    assert data_key("ab" * 32, "x") == bytes.fromhex("ab" * 32)


# --- the property: creator + platform = value, over random values and tiers ---------------
@st.composite
def rules(draw: st.DrawFn) -> Rule:
    n = draw(st.integers(1, 6))
    starts = sorted(set(draw(st.lists(st.integers(1, 10**7), min_size=n - 1, max_size=n - 1))))
    bps = draw(st.lists(st.integers(0, BPS), min_size=len(starts) + 1,
                        max_size=len(starts) + 1))
    return parse_rule("tiered", [[0, bps[0]], *[[s, b] for s, b in zip(starts, bps[1:],
                                                                        strict=True)]])


@settings(max_examples=400, deadline=None)
@given(rule=rules(), before=st.integers(0, 10**9), gross=st.integers(0, 10**9))
def test_property_creator_plus_platform_is_the_value(rule: Rule, before: int, gross: int) -> None:
    s = share(rule, before, gross)
    assert s.creator + s.platform == gross
    assert 0 <= s.creator <= gross and s.platform >= 0
    # The creator never gets more than the exact (unrounded) share, and loses < 1 coin
    # against it over the month so far.
    exact_num = sum(max(0, min(before + gross, nxt) - max(before, t.from_coins)) * t.creator_bps
                    for t, nxt in zip(rule.tiers, [*(x.from_coins for x in rule.tiers[1:]),
                                                   10**19], strict=True))
    assert s.creator * BPS <= exact_num + BPS  # at most the remainder carried in
    assert s.creator * BPS >= exact_num - BPS


@settings(max_examples=200, deadline=None)
@given(rule=rules(), days=st.lists(st.integers(0, 10**6), min_size=1, max_size=31))
def test_property_daily_shares_add_up_to_the_month(rule: Rule, days: list[int]) -> None:
    pos, creator = 0, 0
    for g in days:
        s = share(rule, pos, g)
        assert s.creator + s.platform == g
        creator += s.creator
        pos += g
    assert creator == creator_cumulative(rule, pos)  # floor of the exact month, once
