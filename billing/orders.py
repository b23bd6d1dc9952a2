"""Recharge orders, the pure part: packs, amounts, bonus, the state machine, idempotency.

No I/O here. Amounts are integers: yuan amounts in fen (1 yuan = 100 fen),
coin amounts in coins. A fen amount converts to coins only when it does so
exactly (amount_fen * coins_per_yuan divisible by 100); anything else is
refused rather than rounded, so no order ever creates or loses a fraction.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import string
from dataclasses import dataclass
from enum import StrEnum

import orjson

# Packs offered to every user, in yuan. A custom amount is allowed within the
# configured limits (Settings.recharge_custom_min_fen / _max_fen).
PACKS_YUAN: tuple[int, ...] = (6, 30, 98, 298, 648)
ORDER_ID_RANDOM_CHARS = 24  # 62^24 ~ 2^143: order ids cannot be guessed
IDEM_KEY = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_ALPHABET = string.ascii_letters + string.digits


class OrderState(StrEnum):
    PENDING = "PENDING"
    SUCCESS = "SUCCESS"
    FAILED = "FAILED"
    CLOSED = "CLOSED"
    REFUNDED = "REFUNDED"


# Allowed transitions. CLOSED -> SUCCESS is deliberate: a verified payment
# that lands after we closed the order took the payer's money, so it is
# credited (and shows in the order's events) rather than silently dropped.
# REFUNDED -> REFUNDED is a further partial refund.
TRANSITIONS: dict[OrderState, frozenset[OrderState]] = {
    OrderState.PENDING: frozenset({OrderState.SUCCESS, OrderState.FAILED, OrderState.CLOSED}),
    OrderState.CLOSED: frozenset({OrderState.SUCCESS}),
    OrderState.SUCCESS: frozenset({OrderState.REFUNDED}),
    OrderState.REFUNDED: frozenset({OrderState.REFUNDED}),
    OrderState.FAILED: frozenset(),
}


def can_transition(src: OrderState, dst: OrderState) -> bool:
    return dst in TRANSITIONS[src]


class AmountError(ValueError):
    """A refused amount; `code` is the stable API error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def new_id(prefix: str) -> str:
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(ORDER_ID_RANDOM_CHARS))


def coins_for_fen(amount_fen: int, coins_per_yuan: int) -> int:
    """Exact conversion or AmountError(`amount_not_convertible`)."""
    q, r = divmod(amount_fen * coins_per_yuan, 100)
    if r:
        raise AmountError("amount_not_convertible",
                          f"{amount_fen} fen is not a whole number of coins at "
                          f"{coins_per_yuan} coins per yuan")
    return q


@dataclass(frozen=True, slots=True)
class OrderRequest:
    """A validated recharge request."""

    channel: str
    amount_fen: int
    pack_yuan: int | None  # None: a custom amount

    def fingerprint(self) -> str:
        """Same body -> same fingerprint; it decides replay vs conflict for an idem key."""
        canon = orjson.dumps({"channel": self.channel, "amount_fen": self.amount_fen,
                              "pack": self.pack_yuan}, option=orjson.OPT_SORT_KEYS)
        return hashlib.sha256(canon).hexdigest()


def parse_order_request(data: dict[str, object], *, channels: frozenset[str],
                        custom_min_fen: int, custom_max_fen: int) -> OrderRequest:
    """The JSON body of POST /api/recharge/orders -> OrderRequest, or AmountError."""
    channel = data.get("channel")
    if not isinstance(channel, str) or channel not in channels:
        raise AmountError("unknown_channel", f"channel must be one of {sorted(channels)}")
    pack, amount = data.get("pack_yuan"), data.get("amount_fen")
    if (pack is None) == (amount is None):
        raise AmountError("bad_amount", "give exactly one of pack_yuan or amount_fen")
    if pack is not None:
        if type(pack) is not int or pack not in PACKS_YUAN:
            raise AmountError("unknown_pack", f"pack_yuan must be one of {list(PACKS_YUAN)}")
        return OrderRequest(channel, pack * 100, pack)
    if type(amount) is not int:  # bool and float are refused: money is an integer
        raise AmountError("bad_amount", "amount_fen must be an integer number of fen")
    if not custom_min_fen <= amount <= custom_max_fen:
        raise AmountError("amount_out_of_range",
                          f"amount_fen must be {custom_min_fen}..{custom_max_fen}")
    return OrderRequest(channel, amount, None)


def first_recharge_bonus(coins: int, *, bonus_pct: int, bonus_max_coins: int) -> int:
    """The first-recharge campaign: bonus_pct % of the coins bought, floored, capped."""
    if bonus_pct <= 0 or bonus_max_coins <= 0:
        return 0
    return min(coins * bonus_pct // 100, bonus_max_coins)


@dataclass(frozen=True, slots=True)
class RefundSplit:
    coins: int         # bought coins taken back
    bonus_coins: int   # bonus coins taken back


def refund_split(*, amount_fen: int, coins: int, bonus_coins: int, refunded_before_fen: int,
                 refund_fen: int) -> RefundSplit:
    """What a refund of `refund_fen` takes back from the wallet.

    Bought coins: exactly refund_fen's share of the order (must divide exactly).
    Bonus: reversed in proportion, floored cumulatively, so that the refunds
    of one order always add up to exactly the bonus once fully refunded.
    """
    if refund_fen <= 0:
        raise AmountError("bad_amount", "a refund must be positive")
    if refunded_before_fen + refund_fen > amount_fen:
        raise AmountError("refund_exceeds_order",
                          f"only {amount_fen - refunded_before_fen} fen are left to refund")
    q, r = divmod(coins * refund_fen, amount_fen)
    if r:
        raise AmountError("amount_not_convertible",
                          f"{refund_fen} fen is not a whole number of this order's coins")
    after = refunded_before_fen + refund_fen
    bonus = bonus_coins * after // amount_fen - bonus_coins * refunded_before_fen // amount_fen
    return RefundSplit(q, bonus)


def parse_yuan(text: str) -> int:
    """'6.00' / '6' / '6.5' -> fen. Strict: no sign, no exponent, at most 2 decimals."""
    m = re.fullmatch(r"(0|[1-9][0-9]{0,12})(?:\.([0-9]{1,2}))?", text)
    if not m:
        raise AmountError("bad_amount", f"not a yuan amount: {text[:32]!r}")
    return int(m.group(1)) * 100 + int((m.group(2) or "").ljust(2, "0"))


def format_yuan(amount_fen: int) -> str:
    return f"{amount_fen // 100}.{amount_fen % 100:02d}"
