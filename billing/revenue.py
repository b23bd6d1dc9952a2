"""Money out, the pure decisions: revenue share, tiers, T+N dates, the withdrawal
state machine, coins -> fen. No I/O; billing/settlement.py and billing/payouts.py
do the reading and writing.

THE ROUNDING RULE (one rule, used everywhere money is divided):

    the creator's part is rounded DOWN to a whole minor unit; the platform
    keeps the indivisible remainder:  creator = floor(exact), platform = value - creator.

Revenue share applies it to the creator's cumulative monthly position, not to
each day on its own: with F(x) = floor(sum over tiers of coins_in_tier(x) *
creator_bps / 10_000) for month-to-date gross x, a day that moves the month
from a to a + g gives the creator F(a + g) - F(a) and the platform the rest.
So creator + platform = gross exactly for every day, 0 <= creator <= gross,
and the month's creator total is floor of the exact month amount: remainders
never pile up day after day. Tiers are marginal (like tax brackets): each
coin is shared at the rate of the tier its place in the month falls into, so
a day that crosses a tier boundary is split at the boundary.

Coins -> fen for payouts: fen = floor(coins * fen_per_kcoin / 1000) (the same
rule: the creator never gets a fraction that was not there).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo

BPS = 10_000  # basis points: 10 000 = 100 %


class RuleError(ValueError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Tier:
    from_coins: int   # the tier starts at this month-to-date gross (inclusive)
    creator_bps: int  # the creator's share of each coin in the tier


@dataclass(frozen=True, slots=True)
class Rule:
    kind: str                     # fixed | tiered
    tiers: tuple[Tier, ...]       # sorted, the first from 0
    hold_days: int | None = None  # T+N; None: the configured default
    id: int | None = None         # revenue_rules.id; None: the built-in default

    def as_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "tiers": [[t.from_coins, t.creator_bps] for t in self.tiers],
                "hold_days": self.hold_days, "id": self.id}


def fixed_rule(creator_bps: int, hold_days: int | None = None) -> Rule:
    return Rule("fixed", (Tier(0, creator_bps),), hold_days)


def parse_rule(kind: Any, tiers: Any, hold_days: Any = None, rule_id: int | None = None) -> Rule:
    """Validate a rule from JSON: kind 'fixed' with `tiers` = creator_bps (int) or [[0, bps]],
    or 'tiered' with [[from_coins, creator_bps], ...] rising from 0."""
    if kind not in ("fixed", "tiered"):
        raise RuleError("bad_rule", "kind must be 'fixed' or 'tiered'")
    if kind == "fixed" and type(tiers) is int:
        tiers = [[0, tiers]]
    if not isinstance(tiers, list) or not tiers or len(tiers) > 20:
        raise RuleError("bad_rule", "tiers must be a list of 1..20 [from_coins, creator_bps]")
    out: list[Tier] = []
    for t in tiers:
        if (not isinstance(t, list | tuple) or len(t) != 2
                or type(t[0]) is not int or type(t[1]) is not int):
            raise RuleError("bad_rule", "each tier is [from_coins, creator_bps] (integers)")
        if not 0 <= t[1] <= BPS:
            raise RuleError("bad_rule", f"creator_bps must be 0..{BPS}")
        if t[0] < 0 or t[0] > 10**15:
            raise RuleError("bad_rule", "from_coins must be 0..10^15")
        out.append(Tier(t[0], t[1]))
    if out[0].from_coins != 0:
        raise RuleError("bad_rule", "the first tier starts at 0")
    if any(b.from_coins <= a.from_coins for a, b in itertools.pairwise(out)):
        raise RuleError("bad_rule", "tiers must rise strictly")
    if kind == "fixed" and len(out) != 1:
        raise RuleError("bad_rule", "a fixed rule has one tier")
    if hold_days is not None and (type(hold_days) is not int or not 0 <= hold_days <= 90):
        raise RuleError("bad_rule", "hold_days must be 0..90")
    return Rule(kind, tuple(out), hold_days, rule_id)


def tier_at(rule: Rule, month_coins: int) -> Tier:
    """The tier a month-to-date gross of `month_coins` is in (lookup by cumulative income)."""
    current = rule.tiers[0]
    for t in rule.tiers:
        if t.from_coins <= month_coins:
            current = t
    return current


def creator_cumulative(rule: Rule, month_coins: int) -> int:
    """F(x): the creator's share of the month's first `month_coins`, rounded down."""
    num = 0  # exact share * BPS, an integer
    tiers = rule.tiers
    for i, t in enumerate(tiers):
        if month_coins <= t.from_coins:
            break
        end = tiers[i + 1].from_coins if i + 1 < len(tiers) else month_coins
        num += (min(month_coins, end) - t.from_coins) * t.creator_bps
    return num // BPS


@dataclass(frozen=True, slots=True)
class Share:
    gross: int
    creator: int
    platform: int


def share(rule: Rule, month_before: int, gross: int) -> Share:
    """Split `gross` coins that move the month from `month_before` to `month_before + gross`."""
    if gross < 0 or month_before < 0:
        raise ValueError("amounts are >= 0")
    creator = creator_cumulative(rule, month_before + gross) - creator_cumulative(rule,
                                                                                  month_before)
    return Share(gross, creator, gross - creator)


def pick_rule(rules: Sequence[Rule], effective: Sequence[date], day: date) -> Rule | None:
    """The rule in force on `day`: the latest effective_from <= day (ties: the later row).
    `rules` and `effective` are parallel, in insertion order."""
    best: tuple[date, int] | None = None
    chosen: Rule | None = None
    for i, (r, d) in enumerate(zip(rules, effective, strict=True)):
        if d <= day and (best is None or (d, i) >= best):
            best, chosen = (d, i), r
    return chosen


# --- days and T+N -----------------------------------------------------------------------
def day_bounds(day: date, tz: str) -> tuple[datetime, datetime]:
    """[start, end) of a local calendar day as aware datetimes (23 or 25 h across DST)."""
    z = ZoneInfo(tz)
    start = datetime.combine(day, time.min, z)
    end = datetime.combine(day + timedelta(days=1), time.min, z)
    return start, end


def month_start(day: date) -> date:
    return day.replace(day=1)


def local_day(at: datetime, tz: str) -> date:
    return at.astimezone(ZoneInfo(tz)).date()


def available_on(day: date, hold_days: int) -> date:
    """T+N: income of local day T becomes withdrawable at local midnight starting T+N."""
    return day + timedelta(days=hold_days)


def is_available(avail_on: date, now: datetime, tz: str) -> bool:
    return local_day(now, tz) >= avail_on


def settle_ready(day: date, now: datetime, tz: str) -> bool:
    """A day can be settled once it is over in the configured zone."""
    return now >= day_bounds(day, tz)[1]


# --- coins -> money -----------------------------------------------------------------------
def coins_to_fen(coins: int, fen_per_kcoin: int) -> int:
    """The rounding rule again: the creator gets the whole fen, the remainder stays."""
    return coins * fen_per_kcoin // 1000


# --- withdrawals ----------------------------------------------------------------------------
class WState(StrEnum):
    REQUESTED = "REQUESTED"
    APPROVED = "APPROVED"
    PAID = "PAID"
    FAILED = "FAILED"
    REJECTED = "REJECTED"


class WEvent(StrEnum):
    APPROVE = "approve"
    REJECT = "reject"
    PAID = "paid"
    FAILED = "failed"


_W_NEXT: dict[tuple[WState, WEvent], WState] = {
    (WState.REQUESTED, WEvent.APPROVE): WState.APPROVED,
    (WState.REQUESTED, WEvent.REJECT): WState.REJECTED,
    (WState.APPROVED, WEvent.PAID): WState.PAID,
    (WState.APPROVED, WEvent.FAILED): WState.FAILED,
}

# What moves in the ledger on each transition (frozen coins go out, or back).
LEDGER_ON: dict[WState, str] = {WState.PAID: "withdrawal_payout",
                                WState.FAILED: "withdrawal_release",
                                WState.REJECTED: "withdrawal_release"}


@dataclass(frozen=True, slots=True)
class WOutcome:
    """`to` is the new state, or None when refused; `already` when the event had happened."""

    to: WState | None
    already: bool = False
    reason: str = ""


def w_transition(state: WState, event: WEvent) -> WOutcome:
    nxt = _W_NEXT.get((state, event))
    if nxt is not None:
        return WOutcome(nxt)
    # The same event again (a double click, a duplicated notify): a no-op, not an error.
    if (event, state) in ((WEvent.APPROVE, WState.APPROVED), (WEvent.REJECT, WState.REJECTED),
                          (WEvent.PAID, WState.PAID), (WEvent.FAILED, WState.FAILED)):
        return WOutcome(None, already=True)
    return WOutcome(None, reason=f"cannot {event.value} a withdrawal that is {state.value}")


@dataclass(frozen=True, slots=True)
class WithdrawLimits:
    min_coins: int
    max_coins: int
    daily_max_coins: int


def check_withdraw(amount: int, *, available: int, today_coins: int,
                   limits: WithdrawLimits) -> str | None:
    """None if a withdrawal of `amount` may be requested, else a stable refusal code.
    `today_coins`: what this creator already requested today (not rejected)."""
    if amount < limits.min_coins:
        return "below_minimum"
    if amount > limits.max_coins:
        return "above_maximum"
    if today_coins + amount > limits.daily_max_coins:
        return "daily_limit"
    if amount > available:
        return "insufficient_available"
    return None
