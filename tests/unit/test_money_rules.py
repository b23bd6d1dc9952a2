"""Pure money rules: order state machine, amounts, bonus, refund split, channel verification,
audit chain, reconciliation diff. No I/O."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from billing import audit
from billing.channels.alipay import signing_string
from billing.channels.base import Notice, Rejected, TradeStatus
from billing.orders import (
    AmountError,
    OrderState,
    can_transition,
    coins_for_fen,
    first_recharge_bonus,
    parse_order_request,
    parse_yuan,
    refund_split,
)
from tests.channel_keys import (
    WX_MCHID,
    alipay_body,
    alipay_channel,
    alipay_params,
    wechat_channel,
    wechat_notify,
)

S = OrderState


def test_state_machine() -> None:
    allowed = {(a, b) for a in S for b in S if can_transition(a, b)}
    assert allowed == {(S.PENDING, S.SUCCESS), (S.PENDING, S.FAILED), (S.PENDING, S.CLOSED),
                       (S.CLOSED, S.SUCCESS), (S.SUCCESS, S.REFUNDED),
                       (S.REFUNDED, S.REFUNDED)}


def test_amounts() -> None:
    assert coins_for_fen(600, 10) == 60
    with pytest.raises(AmountError) as e:
        coins_for_fen(1001, 10)
    assert e.value.code == "amount_not_convertible"
    assert parse_yuan("6.00") == 600 and parse_yuan("0.01") == 1 and parse_yuan("6.5") == 650
    for bad in ("", "-1", "1e3", "6.001", "06", " 6", "６", "NaN", "1,000"):
        with pytest.raises(AmountError):
            parse_yuan(bad)
    req = parse_order_request({"channel": "sandbox", "amount_fen": 1234}, channels=frozenset(
        {"sandbox"}), custom_min_fen=100, custom_max_fen=10_000)
    assert req.amount_fen == 1234 and req.fingerprint() != parse_order_request(
        {"channel": "sandbox", "amount_fen": 1235}, channels=frozenset({"sandbox"}),
        custom_min_fen=100, custom_max_fen=10_000).fingerprint()
    assert first_recharge_bonus(60, bonus_pct=10, bonus_max_coins=500) == 6
    assert first_recharge_bonus(64800, bonus_pct=10, bonus_max_coins=500) == 500
    assert first_recharge_bonus(60, bonus_pct=0, bonus_max_coins=500) == 0


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 100_000), st.integers(1, 20), st.integers(0, 500),
       st.lists(st.integers(1, 100), min_size=1, max_size=8))
def test_refunds_add_up_to_the_order_exactly(yuan: int, rate: int, bonus: int,
                                             parts: list[int]) -> None:
    amount, coins = yuan * 100, yuan * rate
    done = taken_coins = taken_bonus = 0
    for p in parts:
        fen = min(p * 100, amount - done)
        if fen <= 0:
            break
        s = refund_split(amount_fen=amount, coins=coins, bonus_coins=bonus,
                         refunded_before_fen=done, refund_fen=fen)
        done += fen
        taken_coins += s.coins
        taken_bonus += s.bonus_coins
    if done == amount:
        assert (taken_coins, taken_bonus) == (coins, bonus)
    assert taken_coins <= coins and taken_bonus <= bonus
    with pytest.raises(AmountError):
        refund_split(amount_fen=amount, coins=coins, bonus_coins=bonus,
                     refunded_before_fen=amount, refund_fen=1)


# --- alipay ------------------------------------------------------------------------
def test_alipay_signing_string_is_documented_form() -> None:
    assert signing_string({"b": "2", "a": "1", "sign": "x", "sign_type": "RSA2", "c": ""}) == \
        "a=1&b=2"


def test_alipay_accepts_a_correct_notify_and_refuses_every_wrong_one() -> None:
    ch = alipay_channel()
    now = time.time()
    ok = ch.verify_notify({}, alipay_body(alipay_params("R1", "6.00")), now)
    assert isinstance(ok, Notice) and ok.status is TradeStatus.PAID and ok.amount_fen == 600
    gbk = alipay_params("R1", "6.00", charset="gbk")
    assert isinstance(ch.verify_notify({}, alipay_body(gbk, charset="gbk"), now), Notice)
    wait = ch.verify_notify({}, alipay_body(alipay_params("R1", "6.00",
                                                          trade_status="WAIT_BUYER_PAY")), now)
    assert isinstance(wait, Notice) and wait.status is TradeStatus.NOT_PAID
    closed = ch.verify_notify({}, alipay_body(alipay_params("R1", "6.00",
                                                            trade_status="TRADE_CLOSED")), now)
    assert isinstance(closed, Notice) and closed.status is TradeStatus.CLOSED
    p = alipay_params("R1", "6.00")
    cases = {
        "bad_signature": alipay_body(p, key="someone-else"),
        "bad_signature ": alipay_body({**p, "total_amount": "0.01"}, sign_over=p),
        "wrong_app_id": alipay_body(alipay_params("R1", "6.00", app_id="2021999")),
        "wrong_seller_id": alipay_body(alipay_params("R1", "6.00", seller_id="2088999")),
        "bad_amount": alipay_body(alipay_params("R1", "6.001")),
        "bad_sign_type": alipay_body(alipay_params("R1", "6.00", sign_type="RSA")),
        "malformed": b"\xff\xfe not a form",
        "malformed ": b"a=1&a=2",
    }
    for want, body in cases.items():
        got = ch.verify_notify({}, body, now)
        assert isinstance(got, Rejected) and got.reason == want.strip(), (want, got)


# --- wechat pay --------------------------------------------------------------------
def test_wechatpay_accepts_a_correct_notify_and_refuses_every_wrong_one() -> None:
    ch = wechat_channel()
    now = time.time()
    body, h = wechat_notify("R1", 600)
    ok = ch.verify_notify(h, body, now)
    assert isinstance(ok, Notice) and ok.amount_fen == 600 and ok.status is TradeStatus.PAID
    cases: dict[str, tuple[bytes, dict[str, str]]] = {
        "bad_signature": wechat_notify("R1", 600, key="someone-else"),
        "stale_timestamp": wechat_notify("R1", 600, ts=int(now) - 301),
        "unknown_serial": wechat_notify("R1", 600, serial="OTHER"),
        "bad_ciphertext": wechat_notify("R1", 600, apiv3=b"x" * 32),
        "wrong_mchid": wechat_notify("R1", 600, mchid="1900000002"),
        "wrong_appid": wechat_notify("R1", 600, appid="wx_other"),
        "bad_amount": wechat_notify("R1", 600, amount={"total": 6.0}),
        "bad_currency": wechat_notify("R1", 600, amount={"total": 600, "currency": "USD"}),
        "missing_signature": (body, {}),
        "bad_timestamp": (body, {**h, "Wechatpay-Timestamp": "12a"}),
    }
    tampered = body.replace(b"TRANSACTION.SUCCESS", b"TRANSACTION.SUCCES_")
    cases["bad_signature "] = (tampered, h)
    for want, (b, hh) in cases.items():
        got = ch.verify_notify(hh, b, now)
        assert isinstance(got, Rejected) and got.reason == want.strip(), (want, got)
    body, h = wechat_notify("R1", 600, trade_state="NOTPAY")
    got = ch.verify_notify(h, body, now)
    assert isinstance(got, Notice) and got.status is TradeStatus.NOT_PAID
    assert WX_MCHID


# --- audit chain -----------------------------------------------------------------------
def _chain(n: int) -> list[audit.AuditRecord]:
    out, prev = [], audit.GENESIS
    for i in range(1, n + 1):
        at = datetime(2026, 11, 25, 10, i, tzinfo=UTC)
        h = audit.record_hash(prev, i, at, 1, "root", "refund", f"order:{i}", "r", "{}")
        out.append(audit.AuditRecord(i, at, 1, "root", "refund", f"order:{i}", "r", "{}", prev, h))
        prev = h
    return out


def test_audit_chain_verify() -> None:
    recs = _chain(6)
    assert audit.verify_chain(recs).ok
    altered = list(recs)
    r = altered[2]
    altered[2] = audit.AuditRecord(r.seq, r.at, r.actor_id, r.actor, r.action, r.target,
                                   "changed", r.detail, r.prev_hash, r.hash)
    assert [(p.seq, p.kind) for p in audit.verify_chain(altered).problems] == [(3, "altered")]
    removed = recs[:2] + recs[3:]
    assert [(p.seq, p.kind) for p in audit.verify_chain(removed).problems] == [(4, "removed")]


def test_money_settings_are_validated() -> None:
    from server.settings import Settings

    assert Settings().problems() == []
    bad = Settings(recharge_custom_min_fen=500, recharge_custom_max_fen=100,
                   sandbox_notify_schedule_s=(5, 1), wechatpay_mchid="1900000001",
                   alipay_public_key_path="/nonexistent.pem", first_recharge_bonus_pct=-1)
    text = "\n".join(bad.problems())
    for name in ("recharge_custom_max_fen", "sandbox_notify_schedule_s", "wechatpay_apiv3_key",
                 "alipay_public_key_path", "first_recharge_bonus_pct"):
        assert name in text
