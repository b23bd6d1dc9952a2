"""The channel interface: verify a notify (pure), answer it, query a trade.

A channel turns the bytes a payment provider sent us into a `Notice` (a
verified statement about one trade) or a `Rejected` (why we do not believe
it). Checks that need our orders (is the order ours, is the amount right)
are done once for every channel in billing/recharge.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


class TradeStatus(StrEnum):
    PAID = "PAID"          # money received: credit the order
    NOT_PAID = "NOT_PAID"  # still waiting for the payer
    CLOSED = "CLOSED"      # closed or failed on the channel's side: never paid


@dataclass(frozen=True, slots=True)
class Notice:
    """A verified statement from the channel about one trade."""

    order_id: str      # our order id (out_trade_no)
    amount_fen: int    # what the channel says was paid
    trade_no: str      # the channel's own id for the trade
    status: TradeStatus
    raw_status: str    # the channel's word for it, for the logs


@dataclass(frozen=True, slots=True)
class Rejected:
    """Why a notify was not believed; `reason` is a stable code."""

    reason: str
    order_id: str | None = None


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: bytes
    content_type: str


class Channel(Protocol):
    name: str

    def verify_notify(self, headers: Mapping[str, str], body: bytes,
                      now_s: float) -> Notice | Rejected:
        """Pure: signature, freshness, merchant ids, format. No order lookup."""
        ...

    def reply(self, ok: bool) -> Reply:
        """What to answer the channel: `ok` stops its retries."""
        ...

    async def query(self, order_id: str) -> Notice | None:
        """Ask the channel about a trade; None if it cannot be asked or does not know it."""
        ...


# --- payouts (money out to creators) ---------------------------------------------------
class PayoutStatus(StrEnum):
    PAID = "PAID"      # the money reached the creator's account
    FAILED = "FAILED"  # it did not (closed account, wrong name, ...): the coins go back


@dataclass(frozen=True, slots=True)
class PayoutNotice:
    """A verified statement from the channel about one payout."""

    withdrawal_id: str  # our id (out_payout_no)
    payout_no: str      # the channel's id
    amount_fen: int
    status: PayoutStatus
    detail: str = ""


class PayoutChannel(Protocol):
    name: str

    async def payout(self, withdrawal_id: str, amount_fen: int, method: str, account: str,
                     account_masked: str) -> str:
        """Ask the channel to pay; idempotent on withdrawal_id. Returns the channel's payout
        number. The result arrives later as a signed payout notify."""
        ...

    def verify_payout_notify(self, headers: Mapping[str, str], body: bytes,
                             now_s: float) -> PayoutNotice | Rejected:
        ...

    def reply(self, ok: bool) -> Reply:
        ...
